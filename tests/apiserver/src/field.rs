//! Field errors as `k8s.io/apimachinery/pkg/util/validation/field` renders them, and the 422 Invalid
//! Status `errors.NewInvalid` builds from a list of them (one cause per error, typed reasons).

use crate::status::ApiError;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Required,
    Invalid,
    Duplicate,
    NotSupported,
    Forbidden,
}

impl Type {
    /// `field.ErrorType` as the `reason` of a StatusCause.
    fn reason(self) -> &'static str {
        match self {
            Type::Required => "FieldValueRequired",
            Type::Invalid => "FieldValueInvalid",
            Type::Duplicate => "FieldValueDuplicate",
            Type::NotSupported => "FieldValueNotSupported",
            Type::Forbidden => "FieldValueForbidden",
        }
    }

    fn text(self) -> &'static str {
        match self {
            Type::Required => "Required value",
            Type::Invalid => "Invalid value",
            Type::Duplicate => "Duplicate value",
            Type::NotSupported => "Unsupported value",
            Type::Forbidden => "Forbidden",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub kind: Type,
    pub field: String,
    /// The bad value as Go's `%v`/`%q`/`%#v` prints it (None for Required/Forbidden).
    pub value: Option<String>,
    pub detail: String,
}

impl FieldError {
    /// `field.Error.ErrorBody()`.
    pub fn body(&self) -> String {
        let mut s = self.kind.text().to_string();
        if let Some(v) = &self.value {
            s.push_str(": ");
            s.push_str(v);
        }
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }
}

pub fn required(field: impl Into<String>, detail: &str) -> FieldError {
    FieldError {
        kind: Type::Required,
        field: field.into(),
        value: None,
        detail: detail.into(),
    }
}

pub fn forbidden(field: impl Into<String>, detail: &str) -> FieldError {
    FieldError {
        kind: Type::Forbidden,
        field: field.into(),
        value: None,
        detail: detail.into(),
    }
}

/// `value` is already rendered (see [`q`], [`strs`]).
pub fn invalid(field: impl Into<String>, value: impl Into<String>, detail: &str) -> FieldError {
    FieldError {
        kind: Type::Invalid,
        field: field.into(),
        value: Some(value.into()),
        detail: detail.into(),
    }
}

pub fn duplicate(field: impl Into<String>, value: impl Into<String>) -> FieldError {
    FieldError {
        kind: Type::Duplicate,
        field: field.into(),
        value: Some(value.into()),
        detail: String::new(),
    }
}

/// `field.NotSupported`: `Unsupported value: "X": supported values: "A", "B"`.
pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> FieldError {
    let list: Vec<String> = supported.iter().map(|s| q(s)).collect();
    FieldError {
        kind: Type::NotSupported,
        field: field.into(),
        value: Some(q(value)),
        detail: format!("supported values: {}", list.join(", ")),
    }
}

/// Go's `%q` of a string (JSON escaping agrees with it for the printable text seen here).
pub fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

/// Go's `%#v` of a `[]string`.
pub fn strs(v: &[String]) -> String {
    let inner: Vec<String> = v.iter().map(|s| q(s)).collect();
    format!("[]string{{{}}}", inner.join(", "))
}

/// `errors.NewInvalid(kind, name, errs)`: the aggregate message (duplicates folded as
/// `utilerrors.NewAggregate` does) and one cause per error.
pub fn to_api_error(kind: &str, group: &str, name: &str, errs: &[FieldError]) -> ApiError {
    let qualified = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    let mut msgs: Vec<String> = Vec::new();
    for e in errs {
        let m = format!("{}: {}", e.field, e.body());
        if !msgs.contains(&m) {
            msgs.push(m);
        }
    }
    let message = match msgs.len() {
        0 => format!("{qualified} {name:?} is invalid"),
        1 => format!("{qualified} {name:?} is invalid: {}", msgs[0]),
        _ => format!("{qualified} {name:?} is invalid: [{}]", msgs.join(", ")),
    };
    let causes: Vec<Value> = errs
        .iter()
        .map(|e| json!({"reason": e.kind.reason(), "message": e.body(), "field": e.field}))
        .collect();
    let mut details = json!({"name": name, "kind": kind, "causes": causes});
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    ApiError {
        details: Some(details),
        ..ApiError::new(422, "Invalid", message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_match_apimachinery() {
        let e = to_api_error(
            "Service",
            "",
            "web",
            &[invalid(
                "spec.ports[0].nodePort",
                "31000",
                "provided port is already allocated",
            )],
        );
        assert_eq!(
            e.message,
            "Service \"web\" is invalid: spec.ports[0].nodePort: Invalid value: 31000: provided port is already allocated"
        );
        let d = e.details.unwrap();
        assert_eq!(d["causes"][0]["reason"], "FieldValueInvalid");
        assert_eq!(d["causes"][0]["field"], "spec.ports[0].nodePort");
        let e = to_api_error(
            "Service",
            "",
            "web",
            &[
                required("spec.ports[1].name", ""),
                not_supported("spec.type", "Foo", &["ClusterIP", "NodePort"]),
            ],
        );
        assert_eq!(
            e.message,
            "Service \"web\" is invalid: [spec.ports[1].name: Required value, spec.type: Unsupported value: \"Foo\": supported values: \"ClusterIP\", \"NodePort\"]"
        );
        assert_eq!(
            e.details.unwrap()["causes"][1]["reason"],
            "FieldValueNotSupported"
        );
        assert_eq!(
            strs(&["10.96.0.10".to_string()]),
            "[]string{\"10.96.0.10\"}"
        );
    }
}
