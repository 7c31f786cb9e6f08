//! Object validation on create/update (422 `Invalid`), with upstream's field paths and messages:
//! `ValidateObjectMeta`/`ValidateObjectMetaUpdate` (staging/src/k8s.io/apimachinery/pkg/api/validation/
//! objectmeta.go), the name, label and qualified-name rules (apimachinery/pkg/util/validation/
//! validation.go), field errors (apimachinery/pkg/util/validation/field/errors.go), and the per-kind
//! checks of pkg/apis/core/validation, pkg/apis/coordination/validation and
//! pkg/apis/certificates/validation that the served kinds have. Service specifics (ports, clusterIP,
//! nodePort) are not here.

use crate::resources::ResourceDef;
use crate::status::ApiError;
use crate::store::meta_str;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// `field.ErrorType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrType {
    Required,
    Invalid,
    NotSupported,
    Duplicate,
    Forbidden,
    TooLong,
}

impl ErrType {
    fn reason(self) -> &'static str {
        match self {
            ErrType::Required => "FieldValueRequired",
            ErrType::Invalid => "FieldValueInvalid",
            ErrType::NotSupported => "FieldValueNotSupported",
            ErrType::Duplicate => "FieldValueDuplicate",
            ErrType::Forbidden => "FieldValueForbidden",
            ErrType::TooLong => "FieldValueTooLong",
        }
    }

    fn text(self) -> &'static str {
        match self {
            ErrType::Required => "Required value",
            ErrType::Invalid => "Invalid value",
            ErrType::NotSupported => "Unsupported value",
            ErrType::Duplicate => "Duplicate value",
            ErrType::Forbidden => "Forbidden",
            ErrType::TooLong => "Too long",
        }
    }
}

/// One `field.Error`. `value` is the bad value as Go prints it (`%q` for strings, `%v` for
/// numbers, `%#v` for structs); Required/Forbidden/TooLong never print it.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldErr {
    pub typ: ErrType,
    pub field: String,
    pub value: String,
    pub detail: String,
}

impl FieldErr {
    pub fn new(
        typ: ErrType,
        field: impl Into<String>,
        value: String,
        detail: impl Into<String>,
    ) -> Self {
        FieldErr {
            typ,
            field: field.into(),
            value,
            detail: detail.into(),
        }
    }

    /// `field.Invalid(path, "<string>", detail)`.
    pub fn invalid(field: impl Into<String>, value: &str, detail: impl Into<String>) -> Self {
        Self::new(ErrType::Invalid, field, quote(value), detail)
    }

    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(ErrType::Required, field, String::new(), detail)
    }

    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(ErrType::Forbidden, field, String::new(), detail)
    }

    /// `field.TooLong`: upstream's message since 1.32 ("may not be more than N bytes").
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        let unit = if max == 1 { "byte" } else { "bytes" };
        Self::new(
            ErrType::TooLong,
            field,
            String::new(),
            format!("may not be more than {max} {unit}"),
        )
    }

    /// `field.NotSupported`: the valid values quoted, in the order given.
    pub fn not_supported(field: impl Into<String>, value: &str, valid: &[&str]) -> Self {
        let list: Vec<String> = valid.iter().map(|v| quote(v)).collect();
        Self::new(
            ErrType::NotSupported,
            field,
            quote(value),
            format!("supported values: {}", list.join(", ")),
        )
    }

    /// `ErrorBody()`: the message without the field path.
    pub fn body(&self) -> String {
        let mut s = match self.typ {
            ErrType::Required | ErrType::Forbidden | ErrType::TooLong => {
                self.typ.text().to_string()
            }
            _ => format!("{}: {}", self.typ.text(), self.value),
        };
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }

    /// `Error()`: `field: body`.
    pub fn message(&self) -> String {
        format!("{}: {}", self.field, self.body())
    }
}

/// Go's `%q` of a string (strconv.Quote) for the characters that occur in practice.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `errors.NewInvalid(GroupKind, name, errs)`: causes keep every error, the message drops repeats.
pub fn invalid_error(kind: &str, group: &str, name: &str, errs: &[FieldErr]) -> ApiError {
    let qualified = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    let mut msgs: Vec<String> = Vec::new();
    for e in errs {
        let m = e.message();
        if !msgs.contains(&m) {
            msgs.push(m);
        }
    }
    let message = match msgs.len() {
        0 => format!("{qualified} {} is invalid", quote(name)),
        1 => format!("{qualified} {} is invalid: {}", quote(name), msgs[0]),
        _ => format!(
            "{qualified} {} is invalid: [{}]",
            quote(name),
            msgs.join(", ")
        ),
    };
    let causes: Vec<Value> = errs
        .iter()
        .map(|e| json!({"reason": e.typ.reason(), "message": e.body(), "field": e.field}))
        .collect();
    let mut details = Map::new();
    if !name.is_empty() {
        details.insert("name".into(), json!(name));
    }
    if !group.is_empty() {
        details.insert("group".into(), json!(group));
    }
    details.insert("kind".into(), json!(kind));
    details.insert("causes".into(), Value::Array(causes));
    ApiError {
        details: Some(Value::Object(details)),
        ..ApiError::new(422, "Invalid", message)
    }
}

// ---- apimachinery/pkg/util/validation/validation.go ----

const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_ERR: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_ERR: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const DNS1035_LABEL_ERR: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";

/// `MaxLenError`.
fn max_len(n: usize) -> String {
    format!("must be no more than {n} characters")
}

/// `RegexError(msg, fmt, examples...)`, with upstream's odd `', ` + ` or ` spacing.
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{fmt}')");
    }
    let mut s = format!("{msg} (e.g. ");
    for (i, e) in examples.iter().enumerate() {
        if i > 0 {
            s.push_str(" or ");
        }
        s.push_str(&format!("'{e}', "));
    }
    s.push_str(&format!("regex used for validation is '{fmt}')"));
    s
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?` (qualifiedNameFmt).
fn is_qualified_token(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn is_dns1123_label_re(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn is_dns1123_subdomain_re(s: &str) -> bool {
    s.split('.').all(is_dns1123_label_re)
}

/// `IsQualifiedName`.
pub fn is_qualified_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [n] => *n,
        [prefix, n] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                for m in is_dns1123_subdomain(prefix) {
                    errs.push(format!("prefix part {m}"));
                }
            }
            *n
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QUALIFIED_NAME_ERR, QUALIFIED_NAME_FMT, &["MyName", "my.name", "123-abc"])
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push(format!("name part {}", max_len(63)));
    }
    if !is_qualified_token(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_ERR,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// `IsValidLabelValue`.
pub fn is_valid_label_value(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push(max_len(63));
    }
    if !value.is_empty() && !is_qualified_token(value) {
        errs.push(regex_error(
            LABEL_VALUE_ERR,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// `IsDNS1123Label`.
pub fn is_dns1123_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push(max_len(63));
    }
    if !is_dns1123_label_re(value) {
        if is_dns1123_subdomain_re(value) {
            errs.push("must not contain dots".to_string());
        } else {
            errs.push(regex_error(
                DNS1123_LABEL_ERR,
                DNS1123_LABEL_FMT,
                &["my-name", "123-abc"],
            ));
        }
    }
    errs
}

/// `IsDNS1123Subdomain`.
pub fn is_dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 253 {
        errs.push(max_len(253));
    }
    if !is_dns1123_subdomain_re(value) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_ERR,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

/// `IsDNS1035Label`.
pub fn is_dns1035_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push(max_len(63));
    }
    let b = value.as_bytes();
    let ok = !b.is_empty()
        && b[0].is_ascii_lowercase()
        && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if !ok {
        errs.push(regex_error(
            DNS1035_LABEL_ERR,
            DNS1035_LABEL_FMT,
            &["my-name", "abc-123"],
        ));
    }
    errs
}

/// The kind's `ValidateXName`: which name rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    Subdomain,
    /// Namespaces (`ValidateNamespaceName = NameIsDNSLabel`).
    Label,
    /// Services (`ValidateServiceName = NameIsDNS1035Label`).
    Dns1035,
    /// CertificateSigningRequests (`ValidateCertificateRequestName` accepts any name).
    Any,
    /// RBAC roles and bindings (`ValidateRBACName = path.IsValidPathSegmentName`).
    PathSegment,
}

pub fn name_rule(def: &ResourceDef) -> NameRule {
    match (def.group, def.resource) {
        ("", "namespaces") => NameRule::Label,
        ("", "services") => NameRule::Dns1035,
        ("certificates.k8s.io", "certificatesigningrequests") => NameRule::Any,
        ("rbac.authorization.k8s.io", _) => NameRule::PathSegment,
        _ => NameRule::Subdomain,
    }
}

/// `NameIsDNSSubdomain` & co.: with `prefix` (generateName) a trailing '-' is allowed.
pub fn validate_name(rule: NameRule, name: &str, prefix: bool) -> Vec<String> {
    let masked;
    let name = if prefix && name.ends_with('-') {
        masked = format!("{}a", &name[..name.len() - 1]);
        masked.as_str()
    } else {
        name
    };
    match rule {
        NameRule::Subdomain => is_dns1123_subdomain(name),
        NameRule::Label => is_dns1123_label(name),
        NameRule::Dns1035 => is_dns1035_label(name),
        NameRule::Any => Vec::new(),
        NameRule::PathSegment => is_valid_path_segment_name(name),
    }
}

/// `path.IsValidPathSegmentName` (apimachinery/pkg/api/validation/path).
pub fn is_valid_path_segment_name(name: &str) -> Vec<String> {
    for bad in [".", ".."] {
        if name == bad {
            return vec![format!("may not be '{bad}'")];
        }
    }
    ["/", "%"]
        .iter()
        .filter(|c| name.contains(*c))
        .map(|c| format!("may not contain '{c}'"))
        .collect()
}

// ---- objectmeta.go ----

const TOTAL_ANNOTATION_SIZE: usize = 256 * 1024;
const STANDARD_FINALIZERS: &[&str] = &["kubernetes", "orphan", "foregroundDeletion"];

fn string_map(meta: &Value, field: &str) -> Vec<(String, String)> {
    meta.get(field)
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// `ValidateLabels`: errors are reported on `metadata.labels`, not on the key.
pub fn validate_labels(labels: &[(String, String)], path: &str, errs: &mut Vec<FieldErr>) {
    for (k, v) in labels {
        for m in is_qualified_name(k) {
            errs.push(FieldErr::invalid(path, k, m));
        }
        for m in is_valid_label_value(v) {
            errs.push(FieldErr::invalid(path, v, m));
        }
    }
}

/// `ValidateAnnotations`: keys are qualified names (checked lower-cased), total size 256 KiB.
pub fn validate_annotations(ann: &[(String, String)], path: &str, errs: &mut Vec<FieldErr>) {
    let mut total = 0usize;
    for (k, v) in ann {
        for m in is_qualified_name(&k.to_lowercase()) {
            errs.push(FieldErr::invalid(path, k, m));
        }
        total += k.len() + v.len();
    }
    if total > TOTAL_ANNOTATION_SIZE {
        errs.push(FieldErr::too_long(path, TOTAL_ANNOTATION_SIZE));
    }
}

fn finalizers(meta: &Value) -> Vec<String> {
    meta.get("finalizers")
        .and_then(|f| f.as_array())
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Go's `%#v` of a `[]string`.
fn go_string_slice(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| quote(s)).collect();
    format!("[]string{{{}}}", items.join(", "))
}

/// The core group's extra finalizer rule (`validateKubeFinalizerName` in pkg/apis/core/validation):
/// an unqualified name must be one of the standard ones.
fn kube_finalizer_names(fins: &[String], errs: &mut Vec<FieldErr>) {
    for (i, f) in fins.iter().enumerate() {
        let path = format!("metadata.finalizers[{i}]");
        let q = is_qualified_name(f);
        if !q.is_empty() {
            for m in q {
                errs.push(FieldErr::invalid(&path, f, m));
            }
        } else if !f.contains('/') && !STANDARD_FINALIZERS.contains(&f.as_str()) {
            errs.push(FieldErr::invalid(
                &path,
                f,
                "name is neither a standard finalizer name nor is it fully qualified",
            ));
        }
    }
}

fn validate_owner_references(meta: &Value, errs: &mut Vec<FieldErr>) {
    let Some(refs) = meta.get("ownerReferences").and_then(|r| r.as_array()) else {
        return;
    };
    let path = "metadata.ownerReferences";
    for r in refs {
        let s = |f: &str| r.get(f).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let av = s("apiVersion");
        let version = av.rsplit('/').next().unwrap_or("");
        if version.is_empty() {
            errs.push(FieldErr::invalid(
                format!("{path}.apiVersion"),
                &av,
                "version must not be empty",
            ));
        }
        for (f, what) in [("kind", "kind"), ("name", "name"), ("uid", "uid")] {
            if s(f).is_empty() {
                errs.push(FieldErr::invalid(
                    format!("{path}.{f}"),
                    "",
                    format!("{what} must not be empty"),
                ));
            }
        }
    }
}

/// `ValidateObjectMeta` (create) or `ValidateObjectMetaUpdate` (update), with the core group's
/// finalizer check.
fn validate_meta(def: &ResourceDef, obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldErr>) {
    let empty = json!({});
    let meta = obj.get("metadata").unwrap_or(&empty);
    let fins = finalizers(meta);
    match old {
        None => {
            let rule = name_rule(def);
            let name = meta_str(obj, "name");
            let gen = meta_str(obj, "generateName");
            if !gen.is_empty() {
                for m in validate_name(rule, gen, true) {
                    errs.push(FieldErr::invalid("metadata.generateName", gen, m));
                }
            }
            if name.is_empty() {
                errs.push(FieldErr::required(
                    "metadata.name",
                    "name or generateName is required",
                ));
            } else {
                for m in validate_name(rule, name, false) {
                    errs.push(FieldErr::invalid("metadata.name", name, m));
                }
            }
        }
        Some(old) => {
            if old["metadata"].get("deletionTimestamp").is_some() {
                let before = finalizers(&old["metadata"]);
                let mut extra: Vec<String> = fins
                    .iter()
                    .filter(|f| !before.contains(f))
                    .cloned()
                    .collect();
                extra.sort();
                extra.dedup();
                if !extra.is_empty() {
                    errs.push(FieldErr::forbidden(
                        "metadata.finalizers",
                        format!(
                            "no new finalizers can be added if the object is being deleted, found new finalizers {}",
                            go_string_slice(&extra)
                        ),
                    ));
                }
            }
            // rest.BeforeUpdate keeps an empty uid; a different one is refused (validateCommonFields).
            let (uid, old_uid) = (meta_str(obj, "uid"), meta_str(old, "uid"));
            if !uid.is_empty() && uid != old_uid {
                errs.push(FieldErr::invalid("metadata.uid", uid, "field is immutable"));
            }
        }
    }
    validate_labels(&string_map(meta, "labels"), "metadata.labels", errs);
    validate_annotations(
        &string_map(meta, "annotations"),
        "metadata.annotations",
        errs,
    );
    validate_owner_references(meta, errs);
    if old.is_none() {
        // Only the create path runs apimachinery's ValidateFinalizers.
        for f in &fins {
            for m in is_qualified_name(f) {
                errs.push(FieldErr::invalid("metadata.finalizers", f, m));
            }
        }
        if fins.iter().any(|f| f == "orphan") && fins.iter().any(|f| f == "foregroundDeletion") {
            errs.push(FieldErr::new(
                ErrType::Invalid,
                "metadata.finalizers",
                go_string_slice(&fins),
                "finalizer orphan and foregroundDeletion cannot be both set",
            ));
        }
    }
    validate_managed_fields(meta, errs);
    // The core group's wrapper appends its finalizer-name check last.
    kube_finalizer_names(&fins, errs);
}

/// `ValidateManagedFields` (apimachinery pkg/apis/meta/v1/validation).
fn validate_managed_fields(meta: &Value, errs: &mut Vec<FieldErr>) {
    let Some(list) = meta.get("managedFields").and_then(|m| m.as_array()) else {
        return;
    };
    for (i, e) in list.iter().enumerate() {
        let path = format!("metadata.managedFields[{i}]");
        let s = |f: &str| e.get(f).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let op = s("operation");
        if op != "Apply" && op != "Update" {
            errs.push(FieldErr::invalid(
                format!("{path}.operation"),
                &op,
                "must be `Apply` or `Update`",
            ));
        }
        let ft = s("fieldsType");
        if !ft.is_empty() && ft != "FieldsV1" {
            errs.push(FieldErr::invalid(
                format!("{path}.fieldsType"),
                &ft,
                "must be `FieldsV1`",
            ));
        }
        if s("manager").len() > 128 {
            errs.push(FieldErr::too_long(format!("{path}.manager"), 128));
        }
    }
}

// ---- per-kind ----

const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// `validateNodeTaints`. Upstream passes `metadata` as the parent path, so its errors read
/// `metadata.taints[i]...` (pkg/apis/core/validation ValidateNode); kept as is.
fn validate_taints(taints: &[Value], errs: &mut Vec<FieldErr>) {
    let mut seen: Vec<(String, String)> = Vec::new();
    for (i, t) in taints.iter().enumerate() {
        let path = format!("metadata.taints[{i}]");
        let s = |f: &str| t.get(f).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let (key, value, effect) = (s("key"), s("value"), s("effect"));
        for m in is_qualified_name(&key) {
            errs.push(FieldErr::invalid(format!("{path}.key"), &key, m));
        }
        let v = is_valid_label_value(&value);
        if !v.is_empty() {
            errs.push(FieldErr::invalid(
                format!("{path}.value"),
                &value,
                v.join(";"),
            ));
        }
        if effect.is_empty() {
            errs.push(FieldErr::required(format!("{path}.effect"), ""));
        } else if !TAINT_EFFECTS.contains(&effect.as_str()) {
            errs.push(FieldErr::not_supported(
                format!("{path}.effect"),
                &effect,
                TAINT_EFFECTS,
            ));
        }
        if seen.contains(&(effect.clone(), key.clone())) {
            let added = match t.get("timeAdded").and_then(|v| v.as_str()) {
                Some(ts) => format!("time.Date({ts})"),
                None => "<nil>".to_string(),
            };
            errs.push(FieldErr::new(
                ErrType::Duplicate,
                path,
                format!(
                    "core.Taint{{Key:{}, Value:{}, Effect:{}, TimeAdded:{added}}}",
                    quote(&key),
                    quote(&value),
                    quote(&effect)
                ),
                "taints must be unique by key and effect pair",
            ));
            continue;
        }
        seen.push((effect, key));
    }
}

/// Parses an IPv4 or IPv6 CIDR the way net.ParseCIDR accepts it.
fn parse_cidr(s: &str) -> Option<bool> {
    let (ip, bits) = s.split_once('/')?;
    if bits.is_empty() || !bits.bytes().all(|b| b.is_ascii_digit()) || bits.len() > 3 {
        return None;
    }
    let bits: u32 = bits.parse().ok()?;
    match ip.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(_) if !ip.contains(':') && bits <= 32 => Some(false),
        std::net::IpAddr::V6(_) if bits <= 128 => Some(true),
        _ => None,
    }
}

/// `ValidateNode`/`ValidateNodeUpdate`: taints, podCIDRs (valid, one per family, immutable once set).
fn validate_node(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldErr>) {
    if let Some(t) = obj.pointer("/spec/taints").and_then(|t| t.as_array()) {
        validate_taints(t, errs);
    }
    let cidrs = pod_cidrs(obj);
    let mut families = Vec::new();
    for (i, c) in cidrs.iter().enumerate() {
        match parse_cidr(c) {
            Some(v6) => families.push(v6),
            None => errs.push(FieldErr::invalid(
                format!("spec.podCIDRs[{i}]"),
                c,
                "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            )),
        }
    }
    if cidrs.len() > 1 {
        let dual = families.len() == 2 && families[0] != families[1];
        if !dual || cidrs.len() > 2 {
            errs.push(FieldErr::new(
                ErrType::Invalid,
                "spec.podCIDRs",
                go_string_slice(&cidrs),
                "may specify no more than one CIDR for each IP family",
            ));
        }
    }
    if let Some(old) = old {
        // pkg/apis/core/validation ValidateNodeUpdate: podCIDRs and providerID may only go from
        // unset to set; status addresses may not repeat.
        let before = pod_cidrs(old);
        if !before.is_empty() && before != cidrs {
            errs.push(FieldErr::forbidden(
                "spec.podCIDRs",
                "node updates may not change podCIDR except from \"\" to valid",
            ));
        }
        let pid = |o: &Value| {
            o.pointer("/spec/providerID")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        if !pid(old).is_empty() && pid(old) != pid(obj) {
            errs.push(FieldErr::forbidden(
                "spec.providerID",
                "node updates may not change providerID except from \"\" to valid",
            ));
        }
        let addrs = obj
            .pointer("/status/addresses")
            .and_then(|a| a.as_array())
            .cloned()
            .unwrap_or_default();
        for (i, a) in addrs.iter().enumerate() {
            if addrs[..i].contains(a) {
                let s = |f: &str| a.get(f).and_then(|v| v.as_str()).unwrap_or("").to_string();
                errs.push(FieldErr::new(
                    ErrType::Duplicate,
                    format!("status.addresses[{i}]"),
                    format!(
                        "core.NodeAddress{{Type:{}, Address:{}}}",
                        quote(&s("type")),
                        quote(&s("address"))
                    ),
                    "",
                ));
            }
        }
    }
}

/// The internal type's `podCIDRs`: v1's `podCIDR` converts to the first entry when the list is unset.
fn pod_cidrs(obj: &Value) -> Vec<String> {
    let list: Vec<String> = obj
        .pointer("/spec/podCIDRs")
        .and_then(|c| c.as_array())
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    if !list.is_empty() {
        return list;
    }
    match obj.pointer("/spec/podCIDR").and_then(|v| v.as_str()) {
        Some(c) if !c.is_empty() => vec![c.to_string()],
        _ => Vec::new(),
    }
}

/// `ValidateLeaseSpec` (pkg/apis/coordination/validation).
fn validate_lease(obj: &Value, errs: &mut Vec<FieldErr>) {
    let spec = &obj["spec"];
    if let Some(d) = spec.get("leaseDurationSeconds").and_then(|v| v.as_i64()) {
        if d <= 0 {
            errs.push(FieldErr::new(
                ErrType::Invalid,
                "spec.leaseDurationSeconds",
                d.to_string(),
                "must be greater than 0",
            ));
        }
    }
    if let Some(t) = spec.get("leaseTransitions").and_then(|v| v.as_i64()) {
        if t < 0 {
            errs.push(FieldErr::new(
                ErrType::Invalid,
                "spec.leaseTransitions",
                t.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
    let strategy = spec.get("strategy").and_then(|v| v.as_str()).unwrap_or("");
    if !strategy.is_empty() && strategy != "OldestEmulationVersion" {
        errs.push(FieldErr::not_supported(
            "spec.strategy",
            strategy,
            &["OldestEmulationVersion"],
        ));
    }
    let preferred = spec
        .get("preferredHolder")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if !preferred.is_empty() && strategy.is_empty() {
        errs.push(FieldErr::forbidden(
            "spec.preferredHolder",
            "may only be specified if `strategy` is defined",
        ));
    }
}

/// The JSON decoder's type check of a Lease's spec (json: cannot unmarshal ... into Go struct field):
/// upstream rejects these before validation with 400 BadRequest.
fn lease_types(obj: &Value) -> Result<(), ApiError> {
    let Some(spec) = obj.get("spec") else {
        return Ok(());
    };
    if !spec.is_object() && !spec.is_null() {
        return Err(decode_error(
            "Lease",
            "v1",
            &format!(
                "json: cannot unmarshal {} into Go struct field Lease.spec of type v1.LeaseSpec",
                json_kind(spec)
            ),
        ));
    }
    let fields: &[(&str, &str)] = &[
        ("holderIdentity", "string"),
        ("leaseDurationSeconds", "int32"),
        ("acquireTime", "string"),
        ("renewTime", "string"),
        ("leaseTransitions", "int32"),
        ("strategy", "string"),
        ("preferredHolder", "string"),
    ];
    for (f, ty) in fields {
        let Some(v) = spec.get(*f) else { continue };
        let ok = match *ty {
            "string" => v.is_string() || v.is_null(),
            _ => {
                v.is_null()
                    || v.as_i64()
                        .is_some_and(|n| n >= i32::MIN as i64 && n <= i32::MAX as i64)
            }
        };
        if !ok {
            let go_ty = match *f {
                "acquireTime" | "renewTime" => "v1.MicroTime",
                "strategy" => "v1.CoordinatedLeaseStrategy",
                _ => ty,
            };
            // encoding/json names a number with its text only when the target is numeric.
            let what = match v {
                Value::Number(n) if *ty == "int32" => format!("number {n}"),
                other => json_kind(other).to_string(),
            };
            return Err(decode_error(
                "Lease",
                "v1",
                &format!("json: cannot unmarshal {what} into Go struct field LeaseSpec.spec.{f} of type {go_ty}"),
            ));
        }
    }
    Ok(())
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The serializer's decode failure (`<Kind> in version "<v>" cannot be handled as a <Kind>: ...`).
fn decode_error(kind: &str, version: &str, err: &str) -> ApiError {
    ApiError::bad_request(format!(
        "{kind} in version \"{version}\" cannot be handled as a {kind}: {err}"
    ))
}

/// `ValidateCertificateSigningRequestCreate`: the parts the clients here exercise.
fn validate_csr(obj: &Value, errs: &mut Vec<FieldErr>) {
    use base64::Engine;
    let req = obj
        .pointer("/spec/request")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let pem_ok = base64::engine::general_purpose::STANDARD
        .decode(req)
        .ok()
        .is_some_and(|b| crate::pki::parse_csr(&b).is_ok());
    if !pem_ok {
        errs.push(FieldErr::new(
            ErrType::Invalid,
            "spec.request",
            "[]byte{...}".into(),
            "PEM block type must be CERTIFICATE REQUEST",
        ));
    }
    if obj
        .pointer("/spec/signerName")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .is_empty()
    {
        errs.push(FieldErr::required("spec.signerName", ""));
    }
    if obj
        .pointer("/spec/usages")
        .and_then(|v| v.as_array())
        .is_none_or(|u| u.is_empty())
    {
        errs.push(FieldErr::required("spec.usages", ""));
    }
    if let Some(e) = obj
        .pointer("/spec/expirationSeconds")
        .and_then(|v| v.as_i64())
    {
        if e < 600 {
            errs.push(FieldErr::new(
                ErrType::Invalid,
                "spec.expirationSeconds",
                e.to_string(),
                "may not specify a duration less than 600 seconds (10 minutes)",
            ));
        }
    }
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(|x| x.as_array())
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// `ValidatePolicyRule` (pkg/apis/rbac/validation) of each of `rules[*]`.
fn validate_rules(obj: &Value, namespaced: bool, errs: &mut Vec<FieldErr>) {
    let rules = obj.get("rules").and_then(|r| r.as_array());
    for (i, r) in rules.into_iter().flatten().enumerate() {
        let path = format!("rules[{i}]");
        if strings(r, "verbs").is_empty() {
            errs.push(FieldErr::required(
                format!("{path}.verbs"),
                "verbs must contain at least one value",
            ));
        }
        let urls = strings(r, "nonResourceURLs");
        if !urls.is_empty() {
            if namespaced {
                errs.push(FieldErr::new(
                    ErrType::Invalid,
                    format!("{path}.nonResourceURLs"),
                    go_string_slice(&urls),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if ["apiGroups", "resources", "resourceNames"]
                .iter()
                .any(|k| !strings(r, k).is_empty())
            {
                errs.push(FieldErr::new(
                    ErrType::Invalid,
                    format!("{path}.nonResourceURLs"),
                    go_string_slice(&urls),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if strings(r, "apiGroups").is_empty() {
            errs.push(FieldErr::required(
                format!("{path}.apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if strings(r, "resources").is_empty() {
            errs.push(FieldErr::required(
                format!("{path}.resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
}

/// `ValidateRoleBinding`/`ValidateClusterRoleBinding` (+ `…Update`: the roleRef is immutable) with
/// `ValidateRoleBindingSubject`.
fn validate_binding(obj: &Value, old: Option<&Value>, namespaced: bool, errs: &mut Vec<FieldErr>) {
    const RBAC: &str = "rbac.authorization.k8s.io";
    let rr = |v: &Value, k: &str| {
        v.pointer(&format!("/roleRef/{k}"))
            .and_then(|x| x.as_str())
            .unwrap_or("")
            .to_string()
    };
    let (group, kind, name) = (rr(obj, "apiGroup"), rr(obj, "kind"), rr(obj, "name"));
    if group != RBAC {
        errs.push(FieldErr::not_supported("roleRef.apiGroup", &group, &[RBAC]));
    }
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if !kinds.contains(&kind.as_str()) {
        errs.push(FieldErr::not_supported("roleRef.kind", &kind, kinds));
    }
    if name.is_empty() {
        errs.push(FieldErr::required("roleRef.name", ""));
    } else {
        for m in is_valid_path_segment_name(&name) {
            errs.push(FieldErr::invalid("roleRef.name", &name, m));
        }
    }
    let subjects = obj.get("subjects").and_then(|s| s.as_array());
    for (i, sub) in subjects.into_iter().flatten().enumerate() {
        let path = format!("subjects[{i}]");
        let f = |k: &str| {
            sub.get(k)
                .and_then(|x| x.as_str())
                .unwrap_or("")
                .to_string()
        };
        let (kind, name, group, ns) = (f("kind"), f("name"), f("apiGroup"), f("namespace"));
        if name.is_empty() {
            errs.push(FieldErr::required(format!("{path}.name"), ""));
        }
        match kind.as_str() {
            "ServiceAccount" => {
                if !name.is_empty() {
                    for m in is_dns1123_subdomain(&name) {
                        errs.push(FieldErr::invalid(format!("{path}.name"), &name, m));
                    }
                }
                if !group.is_empty() {
                    errs.push(FieldErr::not_supported(
                        format!("{path}.apiGroup"),
                        &group,
                        &[""],
                    ));
                }
                if !namespaced && ns.is_empty() {
                    errs.push(FieldErr::required(format!("{path}.namespace"), ""));
                }
            }
            "User" | "Group" => {
                if group != RBAC {
                    errs.push(FieldErr::not_supported(
                        format!("{path}.apiGroup"),
                        &group,
                        &[RBAC],
                    ));
                }
            }
            _ => errs.push(FieldErr::not_supported(
                format!("{path}.kind"),
                &kind,
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
    if let Some(old) = old {
        let before = (rr(old, "apiGroup"), rr(old, "kind"), rr(old, "name"));
        if before != (group.clone(), kind.clone(), name.clone()) {
            errs.push(FieldErr::new(
                ErrType::Invalid,
                "roleRef",
                format!(
                    "rbac.RoleRef{{APIGroup:{}, Kind:{}, Name:{}}}",
                    quote(&group),
                    quote(&kind),
                    quote(&name)
                ),
                "cannot change roleRef",
            ));
        }
    }
}

/// Validation of a create (`old` = None) or update of `obj`; the one hook the write paths call.
pub fn validate(def: &ResourceDef, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    if def.resource == "leases" {
        lease_types(obj)?;
    }
    let mut errs = Vec::new();
    validate_meta(def, obj, old, &mut errs);
    match (def.group, def.resource) {
        ("", "nodes") => validate_node(obj, old, &mut errs),
        ("coordination.k8s.io", "leases") => validate_lease(obj, &mut errs),
        ("certificates.k8s.io", "certificatesigningrequests") if old.is_none() => {
            validate_csr(obj, &mut errs)
        }
        ("rbac.authorization.k8s.io", "roles") => validate_rules(obj, true, &mut errs),
        ("rbac.authorization.k8s.io", "clusterroles") => validate_rules(obj, false, &mut errs),
        ("rbac.authorization.k8s.io", "rolebindings") => {
            validate_binding(obj, old, true, &mut errs)
        }
        ("rbac.authorization.k8s.io", "clusterrolebindings") => {
            validate_binding(obj, old, false, &mut errs)
        }
        _ => {}
    }
    if errs.is_empty() {
        return Ok(());
    }
    Err(invalid_error(
        def.kind,
        def.group,
        meta_str(obj, "name"),
        &errs,
    ))
}

/// `ValidateCreateOptions`/`ValidateUpdateOptions`/`ValidatePatchOptions` (apimachinery
/// pkg/apis/meta/v1/validation): fieldManager length and characters, required for apply, `force`
/// only with apply. `options_kind` is `CreateOptions`, `UpdateOptions` or `PatchOptions`.
pub fn validate_options(
    options_kind: &str,
    q: &HashMap<String, String>,
    apply: bool,
) -> Result<(), ApiError> {
    let mut errs = Vec::new();
    let fm = q.get("fieldManager").map(|s| s.as_str()).unwrap_or("");
    if options_kind == "PatchOptions" {
        if apply {
            if fm.is_empty() {
                errs.push(FieldErr::required(
                    "fieldManager",
                    "is required for apply patch",
                ));
            }
        } else if q.contains_key("force") {
            errs.push(FieldErr::forbidden(
                "force",
                "may not be specified for non-apply patch",
            ));
        }
    }
    if fm.len() > 128 {
        errs.push(FieldErr::too_long("fieldManager", 128));
    }
    for (i, c) in fm.char_indices() {
        if c.is_control() {
            errs.push(FieldErr::invalid(
                "fieldManager",
                fm,
                format!("invalid character U+{:04X} (at position {i})", c as u32),
            ));
        }
    }
    if errs.is_empty() {
        return Ok(());
    }
    Err(invalid_error(options_kind, "meta.k8s.io", "", &errs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn label_value_message_matches_upstream() {
        let nodes = find("", "v1", "nodes").unwrap();
        let n = json!({"metadata": {"name": "n1", "labels": {"bad": "va lue"}}});
        let e = validate(nodes, &n, None).unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(e.message, "Node \"n1\" is invalid: metadata.labels: Invalid value: \"va lue\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')");
        let d = e.details.unwrap();
        assert_eq!(d["kind"], "Node");
        assert_eq!(d["name"], "n1");
        assert_eq!(d["causes"][0]["reason"], "FieldValueInvalid");
        assert_eq!(d["causes"][0]["field"], "metadata.labels");
    }

    #[test]
    fn qualified_names() {
        assert!(is_qualified_name("example.com/a_b.c").is_empty());
        assert_eq!(
            is_qualified_name("/a"),
            vec!["prefix part must be non-empty"]
        );
        assert!(is_qualified_name("a/b/c")[0].starts_with("a qualified name must consist"));
        assert!(is_qualified_name("Ex.com/a")[0]
            .starts_with("prefix part a lowercase RFC 1123 subdomain"));
        let long = "a".repeat(64);
        let e = is_qualified_name(&long);
        assert_eq!(e, vec!["name part must be no more than 63 characters"]);
        assert_eq!(is_qualified_name("-a").len(), 1);
    }

    #[test]
    fn names_per_kind() {
        let ns = find("", "v1", "namespaces").unwrap();
        let e = validate(ns, &json!({"metadata": {"name": "a.b"}}), None).unwrap_err();
        assert_eq!(
            e.message,
            "Namespace \"a.b\" is invalid: metadata.name: Invalid value: \"a.b\": must not contain dots"
        );
        let svc = find("", "v1", "services").unwrap();
        let e = validate(svc, &json!({"metadata": {"name": "1abc"}}), None).unwrap_err();
        assert!(
            e.message.contains("a DNS-1035 label must consist"),
            "{}",
            e.message
        );
        let nodes = find("", "v1", "nodes").unwrap();
        assert!(validate(nodes, &json!({"metadata": {"name": "a.b-c"}}), None).is_ok());
        let e = validate(nodes, &json!({"metadata": {"name": "Bad_Name"}}), None).unwrap_err();
        assert_eq!(e.message, "Node \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')");
        let e = validate(nodes, &json!({"metadata": {}}), None).unwrap_err();
        assert_eq!(
            e.message,
            "Node \"\" is invalid: metadata.name: Required value: name or generateName is required"
        );
        assert_eq!(
            e.details.unwrap()["causes"][0]["reason"],
            "FieldValueRequired"
        );
        // generateName may end in '-'.
        assert!(validate_name(NameRule::Subdomain, "web-", true).is_empty());
        let csr = find("certificates.k8s.io", "v1", "certificatesigningrequests").unwrap();
        assert!(validate_name(name_rule(csr), "node-csr:Any_Thing", false).is_empty());
    }

    #[test]
    fn taints() {
        let nodes = find("", "v1", "nodes").unwrap();
        let n = json!({"metadata": {"name": "n1"}, "spec": {"taints": [
            {"key": "a", "effect": "Sometimes"},
            {"key": "b", "value": "x", "effect": "NoSchedule"},
            {"key": "b", "value": "y", "effect": "NoSchedule"},
            {"key": "c"}]}});
        let e = validate(nodes, &n, None).unwrap_err();
        let causes = e.details.unwrap()["causes"].clone();
        assert_eq!(causes[0]["reason"], "FieldValueNotSupported");
        assert_eq!(causes[0]["field"], "metadata.taints[0].effect");
        assert_eq!(
            causes[0]["message"],
            "Unsupported value: \"Sometimes\": supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\""
        );
        assert_eq!(causes[1]["reason"], "FieldValueDuplicate");
        assert_eq!(causes[1]["field"], "metadata.taints[2]");
        assert_eq!(causes[1]["message"], "Duplicate value: core.Taint{Key:\"b\", Value:\"y\", Effect:\"NoSchedule\", TimeAdded:<nil>}: taints must be unique by key and effect pair");
        assert_eq!(causes[2]["reason"], "FieldValueRequired");
        assert_eq!(causes[2]["field"], "metadata.taints[3].effect");
        assert!(
            e.message.starts_with("Node \"n1\" is invalid: ["),
            "{}",
            e.message
        );
    }

    #[test]
    fn annotations_finalizers_and_cidrs() {
        let cms = find("", "v1", "configmaps").unwrap();
        let big = "x".repeat(256 * 1024);
        let e = validate(
            cms,
            &json!({"metadata": {"name": "c", "annotations": {"a": big}}}),
            None,
        )
        .unwrap_err();
        assert_eq!(e.message, "ConfigMap \"c\" is invalid: metadata.annotations: Too long: may not be more than 262144 bytes");
        let e = validate(
            cms,
            &json!({"metadata": {"name": "c", "finalizers": ["bad finalizer", "mine"]}}),
            None,
        )
        .unwrap_err();
        let causes = e.details.unwrap()["causes"].clone();
        assert_eq!(causes[0]["field"], "metadata.finalizers");
        assert_eq!(causes[1]["field"], "metadata.finalizers[0]");
        assert_eq!(causes[2]["message"], "Invalid value: \"mine\": name is neither a standard finalizer name nor is it fully qualified");
        let nodes = find("", "v1", "nodes").unwrap();
        let e = validate(
            nodes,
            &json!({"metadata": {"name": "n"}, "spec": {"podCIDRs": ["10.0.0.0/33"]}}),
            None,
        )
        .unwrap_err();
        assert!(e.message.contains(
            "spec.podCIDRs[0]: Invalid value: \"10.0.0.0/33\": must be a valid CIDR value"
        ));
        let old = json!({"metadata": {"name": "n"}, "spec": {"podCIDRs": ["10.0.0.0/24"]}});
        let new = json!({"metadata": {"name": "n"}, "spec": {"podCIDRs": ["10.0.1.0/24"]}});
        assert!(validate(nodes, &new, Some(&old)).is_err());
        assert!(validate(nodes, &new, Some(&new.clone())).is_ok());
        let single = json!({"metadata": {"name": "n"}, "spec": {"podCIDR": "10.0.1.0/24"}});
        assert!(validate(nodes, &single, Some(&old)).is_err());
        let with_pid = json!({"metadata": {"name": "n"}, "spec": {"providerID": "a://1"}});
        let e = validate(
            nodes,
            &json!({"metadata": {"name": "n"}, "spec": {"providerID": "a://2"}}),
            Some(&with_pid),
        )
        .unwrap_err();
        assert_eq!(e.message, "Node \"n\" is invalid: spec.providerID: Forbidden: node updates may not change providerID except from \"\" to valid");
        let dup = json!({"metadata": {"name": "n"}, "spec": {"providerID": "a://1"}, "status": {"addresses": [{"type": "Hostname", "address": "n"}, {"type": "Hostname", "address": "n"}]}});
        let e = validate(nodes, &dup, Some(&with_pid)).unwrap_err();
        assert!(e.message.contains("status.addresses[1]: Duplicate value: core.NodeAddress{Type:\"Hostname\", Address:\"n\"}"), "{}", e.message);
    }

    #[test]
    fn managed_fields_and_uid_on_update() {
        let cms = find("", "v1", "configmaps").unwrap();
        let old = json!({"metadata": {"name": "c", "uid": "u1"}});
        let new = json!({"metadata": {"name": "c", "uid": "u2", "managedFields": [{"manager": "m", "operation": "Patch", "fieldsType": "FieldsV1"}]}});
        let e = validate(cms, &new, Some(&old)).unwrap_err();
        assert_eq!(e.message, "ConfigMap \"c\" is invalid: [metadata.uid: Invalid value: \"u2\": field is immutable, metadata.managedFields[0].operation: Invalid value: \"Patch\": must be `Apply` or `Update`]");
    }

    #[test]
    fn lease_fields() {
        let leases = find("coordination.k8s.io", "v1", "leases").unwrap();
        let e = validate(
            leases,
            &json!({"metadata": {"name": "l"}, "spec": {"leaseDurationSeconds": 0, "leaseTransitions": -1}}),
            None,
        )
        .unwrap_err();
        assert_eq!(e.message, "Lease.coordination.k8s.io \"l\" is invalid: [spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0, spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0]");
        let e = validate(
            leases,
            &json!({"metadata": {"name": "l"}, "spec": {"leaseDurationSeconds": "40"}}),
            None,
        )
        .unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(e.message, "Lease in version \"v1\" cannot be handled as a Lease: json: cannot unmarshal string into Go struct field LeaseSpec.spec.leaseDurationSeconds of type int32");
    }

    #[test]
    fn options() {
        let mut q = HashMap::new();
        assert!(validate_options("PatchOptions", &q, true).is_err());
        q.insert("fieldManager".to_string(), "m".repeat(129));
        let e = validate_options("PatchOptions", &q, true).unwrap_err();
        assert_eq!(e.message, "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Too long: may not be more than 128 bytes");
        q.insert("fieldManager".to_string(), "m".into());
        q.insert("force".to_string(), "true".into());
        assert!(validate_options("PatchOptions", &q, true).is_ok());
        assert!(validate_options("PatchOptions", &q, false).is_err());
    }
}
