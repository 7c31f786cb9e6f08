//! Authentication (anonymous, bearer tokens, service-account tokens, bootstrap tokens, client
//! certificates) and the authorizer chain (Node authorizer, RBAC over fixed data and stored objects).

use crate::clock;
use crate::resources::find;
use crate::status::ApiError;
use crate::store::Store;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn anonymous() -> User {
        User {
            name: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
        }
    }

    pub(crate) fn authenticated(name: &str, groups: Vec<String>) -> User {
        let mut groups = groups;
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        User {
            name: name.into(),
            uid: String::new(),
            groups,
        }
    }

    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }

    /// `system:node:<name>` in group `system:nodes` (NodeIdentifier).
    pub fn node_name(&self) -> Option<&str> {
        if !self.in_group("system:nodes") {
            return None;
        }
        self.name.strip_prefix("system:node:")
    }
}

pub const PRIVILEGED_USER: &str = "system:serviceaccount:kube-system:keel-taint-manager";

pub struct Tokens {
    pub admin: String,
    pub privileged: String,
    /// Service-account tokens from TokenRequests (serviceaccounts.rs).
    pub issued: crate::serviceaccounts::Issued,
}

fn bootstrap_token_valid_format(t: &str) -> Option<(&str, &str)> {
    let (id, secret) = t.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

fn secret_data(secret: &Value, key: &str) -> Option<String> {
    use base64::Engine;
    let b64 = secret.get("data")?.get(key)?.as_str()?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(raw).ok()
}

/// A bootstrap token Secret's fields, as the bootstrap authenticator and signer read them.
pub struct BootstrapSecret {
    pub id: String,
    pub secret: String,
    pub expired: bool,
    pub usage_auth: bool,
    pub usage_signing: bool,
    pub extra_groups: Vec<String>,
}

pub fn read_bootstrap_secret(obj: &Value) -> Option<BootstrapSecret> {
    if obj.get("type").and_then(|t| t.as_str()) != Some("bootstrap.kubernetes.io/token") {
        return None;
    }
    if obj["metadata"].get("deletionTimestamp").is_some() {
        return None;
    }
    let name = obj["metadata"]["name"].as_str()?;
    let id = secret_data(obj, "token-id")?;
    if name != format!("bootstrap-token-{id}") {
        return None;
    }
    let expired = match secret_data(obj, "expiration") {
        Some(e) => match clock::parse_rfc3339(&e) {
            Some(t) => t <= clock::now(),
            None => true,
        },
        None => false,
    };
    Some(BootstrapSecret {
        id,
        secret: secret_data(obj, "token-secret")?,
        expired,
        usage_auth: secret_data(obj, "usage-bootstrap-authentication").as_deref() == Some("true"),
        usage_signing: secret_data(obj, "usage-bootstrap-signing").as_deref() == Some("true"),
        extra_groups: secret_data(obj, "auth-extra-groups")
            .map(|g| {
                g.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who is asking. `Err` is a 401: credentials were presented and none were valid.
pub fn authenticate(
    bearer: Option<&str>,
    peer_cert: Option<&[u8]>,
    tokens: &Tokens,
    store: &Store,
) -> Result<User, ApiError> {
    if let Some(der) = peer_cert {
        // The TLS layer has verified the chain against our CA.
        if let Some((cn, orgs)) = crate::pki::cert_identity(der) {
            return Ok(User::authenticated(&cn, orgs));
        }
        return Err(ApiError::unauthorized());
    }
    let Some(token) = bearer else {
        return Ok(User::anonymous());
    };
    if constant_time_eq(token.as_bytes(), tokens.admin.as_bytes()) {
        return Ok(User::authenticated(
            "kubernetes-admin",
            vec!["system:masters".into()],
        ));
    }
    if constant_time_eq(token.as_bytes(), tokens.privileged.as_bytes()) {
        return Ok(User::authenticated(
            PRIVILEGED_USER,
            vec![
                "system:serviceaccounts".into(),
                "system:serviceaccounts:kube-system".into(),
            ],
        ));
    }
    if let Some(r) = tokens.issued.authenticate(token, store) {
        return r;
    }
    if let Some((id, secret)) = bootstrap_token_valid_format(token) {
        let secrets = find("", "v1", "secrets").ok_or_else(ApiError::unauthorized)?;
        let s = store
            .get(secrets, "kube-system", &format!("bootstrap-token-{id}"))
            .and_then(read_bootstrap_secret)
            .ok_or_else(ApiError::unauthorized)?;
        if !constant_time_eq(s.secret.as_bytes(), secret.as_bytes()) || s.expired || !s.usage_auth {
            return Err(ApiError::unauthorized());
        }
        let mut groups = vec!["system:bootstrappers".to_string()];
        for g in s.extra_groups {
            // Only `system:bootstrappers:*` extra groups are honoured, as upstream.
            if g.starts_with("system:bootstrappers:") && !groups.contains(&g) {
                groups.push(g);
            }
        }
        return Ok(User::authenticated(
            &format!("system:bootstrap:{id}"),
            groups,
        ));
    }
    Err(ApiError::unauthorized())
}

/// Authorization attributes of a request (`authorizer.Attributes`).
#[derive(Debug, Clone, Default)]
pub struct Attrs {
    pub verb: String,
    pub is_resource: bool,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub path: String,
    /// `fieldSelector` requirements `(field, is_equality, value)` of list/watch/deletecollection
    /// requests (`AuthorizeWithSelectors`), which the Node authorizer reads.
    pub field_selector: Vec<(String, bool, String)>,
}

impl Attrs {
    /// `responsewriters.forbiddenMessage` + `errors.NewForbidden`.
    pub fn forbidden(&self, user: &User, reason: &str) -> ApiError {
        let msg = if !self.is_resource {
            format!(
                "User {:?} cannot {} path {:?}",
                user.name, self.verb, self.path
            )
        } else {
            let res = if self.subresource.is_empty() {
                self.resource.clone()
            } else {
                format!("{}/{}", self.resource, self.subresource)
            };
            if self.namespace.is_empty() {
                format!(
                    "User {:?} cannot {} resource {res:?} in API group {:?} at the cluster scope",
                    user.name, self.verb, self.group
                )
            } else {
                format!(
                    "User {:?} cannot {} resource {res:?} in API group {:?} in the namespace {:?}",
                    user.name, self.verb, self.group, self.namespace
                )
            }
        };
        let msg = if reason.is_empty() {
            msg
        } else {
            format!("{msg}: {reason}")
        };
        if self.is_resource {
            ApiError::forbidden(&self.group, &self.resource, &self.name, &msg)
        } else {
            ApiError::forbidden("", "", "", &msg)
        }
    }
}

/// The authorizer chain of a kubeadm API server (`--authorization-mode=Node,RBAC` behind the
/// `system:masters` privileged-group authorizer), as `union.go` combines them: the first allow
/// wins with its reason; otherwise the non-empty "no opinion" reasons joined by newlines.
/// `store` holds the RBAC objects and is what the Node authorizer's graph is computed from.
pub fn decide(user: &User, a: &Attrs, store: &Store, node_selectors: bool) -> (bool, String) {
    if user.in_group("system:masters") {
        return (true, String::new());
    }
    let mut reasons = Vec::new();
    if let Some(node) = user.node_name() {
        match crate::nodeauthz::authorize(node, a, store, node_selectors) {
            Ok(()) => return (true, String::new()),
            Err(r) if !r.is_empty() => reasons.push(r),
            Err(_) => {}
        }
    }
    match crate::rbac::authorize(user, a, store) {
        Ok(reason) => return (true, reason),
        Err(r) if !r.is_empty() => reasons.push(r),
        Err(_) => {}
    }
    (false, reasons.join("\n"))
}

/// `Ok` to allow, `Err(reason)` to deny (reason as the Node authorizer words it, or empty).
pub fn authorize_in(
    user: &User,
    a: &Attrs,
    store: &Store,
    node_selectors: bool,
) -> Result<(), String> {
    match decide(user, a, store, node_selectors) {
        (true, _) => Ok(()),
        (false, reason) => Err(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chain over an empty store: the fixed RBAC data and the Node authorizer's rules.
    fn authorize(user: &User, a: &Attrs) -> Result<(), String> {
        authorize_in(user, a, &Store::new(), true)
    }

    fn attrs(verb: &str, group: &str, res: &str, sub: &str, ns: &str, name: &str) -> Attrs {
        Attrs {
            verb: verb.into(),
            is_resource: true,
            group: group.into(),
            resource: res.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn anonymous_reads_only_cluster_info() {
        let anon = User::anonymous();
        assert!(authorize(
            &anon,
            &attrs("get", "", "configmaps", "", "kube-public", "cluster-info")
        )
        .is_ok());
        let a = attrs("list", "", "nodes", "", "", "");
        assert!(authorize(&anon, &a).is_err());
        assert_eq!(
            a.forbidden(&anon, "").message,
            "nodes is forbidden: User \"system:anonymous\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"
        );
    }

    #[test]
    fn node_lease_rules_follow_node_authorizer() {
        let n = User::authenticated("system:node:n1", vec!["system:nodes".into()]);
        assert!(authorize(
            &n,
            &attrs(
                "update",
                "coordination.k8s.io",
                "leases",
                "",
                "kube-node-lease",
                "n1"
            )
        )
        .is_ok());
        assert_eq!(
            authorize(
                &n,
                &attrs(
                    "update",
                    "coordination.k8s.io",
                    "leases",
                    "",
                    "kube-node-lease",
                    "n2"
                )
            ),
            Err("can only access node lease with the same name as the requesting node".into())
        );
        assert!(authorize(&n, &attrs("delete", "", "nodes", "", "", "n1")).is_err());
        assert!(authorize(&n, &attrs("patch", "", "nodes", "status", "", "n1")).is_ok());
    }
}
