//! `metav1.Status` errors with the messages `k8s.io/apimachinery/pkg/api/errors` produces.

use serde_json::{json, Map, Value};

/// A failed request: HTTP code plus the Status body the real API server would send.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// `Retry-After` header value (seconds), as 429/503 from the real server carry it.
    pub retry_after: Option<u64>,
}

/// Group-qualified resource as `schema.GroupResource.String()` prints it: `nodes`, `leases.coordination.k8s.io`.
pub fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

fn details(group: &str, resource: &str, name: &str) -> Value {
    let mut m = Map::new();
    if !name.is_empty() {
        m.insert("name".into(), json!(name));
    }
    if !group.is_empty() {
        m.insert("group".into(), json!(group));
    }
    if !resource.is_empty() {
        m.insert("kind".into(), json!(resource));
    }
    Value::Object(m)
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// `errors.NewForbidden`.
    pub fn forbidden(group: &str, resource: &str, name: &str, err: &str) -> Self {
        let message = if resource.is_empty() && group.is_empty() {
            format!("forbidden: {err}")
        } else if name.is_empty() {
            format!("{} is forbidden: {err}", qualified(group, resource))
        } else {
            format!(
                "{} {name:?} is forbidden: {err}",
                qualified(group, resource)
            )
        };
        ApiError {
            details: Some(details(group, resource, name)),
            ..Self::new(403, "Forbidden", message)
        }
    }

    /// `errors.NewNotFound`.
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        let message = format!("{} {name:?} not found", qualified(group, resource));
        ApiError {
            details: Some(details(group, resource, name)),
            ..Self::new(404, "NotFound", message)
        }
    }

    /// `errors.NewAlreadyExists`.
    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        let message = format!("{} {name:?} already exists", qualified(group, resource));
        ApiError {
            details: Some(details(group, resource, name)),
            ..Self::new(409, "AlreadyExists", message)
        }
    }

    /// `errors.NewConflict` with `storage.ErrConflict`'s optimistic-lock text.
    pub fn conflict(group: &str, resource: &str, name: &str) -> Self {
        let message = format!(
            "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
            qualified(group, resource)
        );
        ApiError {
            details: Some(details(group, resource, name)),
            ..Self::new(409, "Conflict", message)
        }
    }

    /// `errors.NewInvalid`: `Kind.group "name" is invalid: field: reason`.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: &[(&str, String)]) -> Self {
        let qualified_kind = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let msgs: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let message = if msgs.len() == 1 {
            format!("{qualified_kind} {name:?} is invalid: {}", msgs[0])
        } else {
            format!(
                "{qualified_kind} {name:?} is invalid: [{}]",
                msgs.join(", ")
            )
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": f}))
            .collect();
        let mut d = details(group, kind, name);
        d["causes"] = Value::Array(causes);
        ApiError {
            details: Some(d),
            ..Self::new(422, "Invalid", message)
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    pub fn unsupported_media_type(ct: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct:?})"),
        )
    }

    /// `errors.NewTooManyRequests(message, retryAfterSeconds)`.
    pub fn too_many_requests(message: impl Into<String>, retry_after: u64) -> Self {
        let mut d = json!({});
        if retry_after > 0 {
            d["retryAfterSeconds"] = json!(retry_after);
        }
        ApiError {
            details: Some(d),
            retry_after: (retry_after > 0).then_some(retry_after),
            ..Self::new(429, "TooManyRequests", message)
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        let message = format!("Internal error occurred: {}", message.into());
        ApiError {
            details: Some(json!({"causes": [{"message": message}]})),
            ..Self::new(500, "InternalError", message)
        }
    }

    /// `errors.NewResourceExpired` (watch from a compacted resourceVersion).
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn to_status(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if self.reason.is_empty() {
            // Errors that are not API statuses (ErrorToAPIStatus) carry no reason.
            if let Some(m) = v.as_object_mut() {
                m.remove("reason");
            }
        }
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

/// `Status{Status: Success}` as returned by deletes of most resources.
pub fn success(group: &str, resource: &str, name: &str, uid: &str) -> Value {
    let mut d = details(group, resource, name);
    if !uid.is_empty() {
        d["uid"] = json!(uid);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_messages_match_apimachinery() {
        let e = ApiError::forbidden(
            "",
            "nodes",
            "n2",
            "node \"n1\" is not allowed to modify node \"n2\"",
        );
        assert_eq!(
            e.message,
            "nodes \"n2\" is forbidden: node \"n1\" is not allowed to modify node \"n2\""
        );
        let e = ApiError::forbidden(
            "",
            "",
            "",
            "User \"system:anonymous\" cannot get path \"/api\"",
        );
        assert_eq!(
            e.message,
            "forbidden: User \"system:anonymous\" cannot get path \"/api\""
        );
        assert_eq!(e.to_status()["details"], json!({}));
    }

    #[test]
    fn conflict_message_matches_apimachinery() {
        let e = ApiError::conflict("coordination.k8s.io", "leases", "n1");
        assert_eq!(e.message, "Operation cannot be fulfilled on leases.coordination.k8s.io \"n1\": the object has been modified; please apply your changes to the latest version and try again");
        assert_eq!(e.to_status()["details"]["group"], "coordination.k8s.io");
    }
}
