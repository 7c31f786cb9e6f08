//! The RBAC authorizer (`plugin/pkg/auth/authorizer/rbac/rbac.go`, rule resolution as
//! `pkg/registry/rbac/validation/rule.go`, matching as `pkg/apis/rbac/v1/evaluation_helpers.go`) over
//! two sources: the roles and bindings a kubeadm cluster has, as fixed data here, and the
//! `rbac.authorization.k8s.io/v1` objects in the store. Both the request path (`auth::decide`) and
//! SelfSubjectRulesReview go through [`visit_rules_for`], so a rule listed by
//! `kubectl auth can-i --list` is exactly a rule that lets a request through.

use crate::auth::{Attrs, User, PRIVILEGED_USER};
use crate::resources::find;
use crate::store::Store;
use serde_json::Value;

/// `rbacv1.PolicyRule`.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub verbs: &'static [&'static str],
    pub groups: &'static [&'static str],
    pub resources: &'static [&'static str],
    pub names: &'static [&'static str],
    pub urls: &'static [&'static str],
}

const fn res(
    verbs: &'static [&'static str],
    groups: &'static [&'static str],
    resources: &'static [&'static str],
) -> Rule {
    Rule {
        verbs,
        groups,
        resources,
        names: &[],
        urls: &[],
    }
}

const fn urls(verbs: &'static [&'static str], urls: &'static [&'static str]) -> Rule {
    Rule {
        verbs,
        groups: &[],
        resources: &[],
        names: &[],
        urls,
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Subject {
    User(&'static str),
    Group(&'static str),
}

/// A (Cluster)RoleBinding with its role's rules inlined. `namespace: Some` is a RoleBinding.
#[derive(Debug)]
pub struct Binding {
    pub name: &'static str,
    pub namespace: Option<&'static str>,
    pub role_kind: &'static str,
    pub role: &'static str,
    pub subjects: &'static [Subject],
    pub rules: &'static [Rule],
}

const READ: &[&str] = &["get", "list", "watch"];
const BOOTSTRAP_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";

/// `bootstrappolicy.NodeRules()` (v1.33) for the resources this server serves plus the review APIs;
/// the Node authorizer checks these for everything it does not subdivide.
pub static NODE_RULES: &[Rule] = &[
    res(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
    res(
        &["create"],
        &["authorization.k8s.io"],
        &["subjectaccessreviews", "localsubjectaccessreviews"],
    ),
    res(READ, &[""], &["services"]),
    res(&["create", "get", "list", "watch"], &[""], &["nodes"]),
    res(&["update", "patch"], &[""], &["nodes/status"]),
    res(&["update", "patch"], &[""], &["nodes"]),
    res(&["create", "update", "patch"], &[""], &["events"]),
    res(READ, &[""], &["pods"]),
    res(&["create", "delete"], &[""], &["pods"]),
    res(&["update", "patch"], &[""], &["pods/status"]),
    res(&["create"], &[""], &["pods/eviction"]),
    res(READ, &[""], &["secrets", "configmaps"]),
    res(
        &["get"],
        &[""],
        &["persistentvolumeclaims", "persistentvolumes"],
    ),
    res(&["get"], &[""], &["endpoints"]),
    res(
        &["create", "get", "list", "watch"],
        &["certificates.k8s.io"],
        &["certificatesigningrequests"],
    ),
    res(
        &["get", "create", "update", "patch", "delete"],
        &["coordination.k8s.io"],
        &["leases"],
    ),
];

/// Bootstrap policy bindings plus what `kubeadm init` creates (phases/bootstraptoken/node,
/// phases/bootstraptoken/clusterinfo, phases/uploadconfig, phases/kubelet), plus the one test
/// identity this server adds (`keel-taint-manager`).
pub static BINDINGS: &[Binding] = &[
    Binding {
        name: "cluster-admin",
        namespace: None,
        role_kind: "ClusterRole",
        role: "cluster-admin",
        subjects: &[Subject::Group("system:masters")],
        rules: &[res(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
    },
    Binding {
        name: "system:basic-user",
        namespace: None,
        role_kind: "ClusterRole",
        role: "system:basic-user",
        subjects: &[Subject::Group("system:authenticated")],
        rules: &[
            res(
                &["create"],
                &["authorization.k8s.io"],
                &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
            ),
            res(
                &["create"],
                &["authentication.k8s.io"],
                &["selfsubjectreviews"],
            ),
        ],
    },
    Binding {
        name: "system:discovery",
        namespace: None,
        role_kind: "ClusterRole",
        role: "system:discovery",
        subjects: &[Subject::Group("system:authenticated")],
        rules: &[urls(
            &["get"],
            &[
                "/api",
                "/api/*",
                "/apis",
                "/apis/*",
                "/healthz",
                "/livez",
                "/openapi",
                "/openapi/*",
                "/readyz",
                "/version",
                "/version/",
            ],
        )],
    },
    Binding {
        name: "system:public-info-viewer",
        namespace: None,
        role_kind: "ClusterRole",
        role: "system:public-info-viewer",
        subjects: &[
            Subject::Group("system:authenticated"),
            Subject::Group("system:unauthenticated"),
        ],
        rules: &[urls(
            &["get"],
            &["/healthz", "/livez", "/readyz", "/version", "/version/"],
        )],
    },
    Binding {
        name: "kubeadm:kubelet-bootstrap",
        namespace: None,
        role_kind: "ClusterRole",
        role: "system:node-bootstrapper",
        subjects: &[Subject::Group(BOOTSTRAP_GROUP)],
        rules: &[res(
            &["create", "get", "list", "watch"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
        )],
    },
    Binding {
        name: "kubeadm:node-autoapprove-bootstrap",
        namespace: None,
        role_kind: "ClusterRole",
        role: "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
        subjects: &[Subject::Group(BOOTSTRAP_GROUP)],
        rules: &[res(
            &["create"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests/nodeclient"],
        )],
    },
    Binding {
        name: "kubeadm:node-autoapprove-certificate-rotation",
        namespace: None,
        role_kind: "ClusterRole",
        role: "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
        subjects: &[Subject::Group("system:nodes")],
        rules: &[res(
            &["create"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests/selfnodeclient"],
        )],
    },
    Binding {
        name: "kubeadm:get-nodes",
        namespace: None,
        role_kind: "ClusterRole",
        role: "kubeadm:get-nodes",
        subjects: &[Subject::Group(BOOTSTRAP_GROUP)],
        rules: &[res(&["get"], &[""], &["nodes"])],
    },
    Binding {
        name: "kubeadm:bootstrap-signer-clusterinfo",
        namespace: Some("kube-public"),
        role_kind: "Role",
        role: "kubeadm:bootstrap-signer-clusterinfo",
        subjects: &[Subject::User("system:anonymous")],
        rules: &[Rule {
            verbs: &["get"],
            groups: &[""],
            resources: &["configmaps"],
            names: &["cluster-info"],
            urls: &[],
        }],
    },
    Binding {
        name: "kubeadm:nodes-kubeadm-config",
        namespace: Some("kube-system"),
        role_kind: "Role",
        role: "kubeadm:nodes-kubeadm-config",
        subjects: &[
            Subject::Group(BOOTSTRAP_GROUP),
            Subject::Group("system:nodes"),
        ],
        rules: &[Rule {
            verbs: &["get"],
            groups: &[""],
            resources: &["configmaps"],
            names: &["kubeadm-config"],
            urls: &[],
        }],
    },
    Binding {
        name: "kubeadm:kubelet-config",
        namespace: Some("kube-system"),
        role_kind: "Role",
        role: "kubeadm:kubelet-config",
        subjects: &[
            Subject::Group(BOOTSTRAP_GROUP),
            Subject::Group("system:nodes"),
        ],
        rules: &[Rule {
            verbs: &["get"],
            groups: &[""],
            resources: &["configmaps"],
            names: &["kubelet-config"],
            urls: &[],
        }],
    },
    Binding {
        name: "keel-taint-manager",
        namespace: None,
        role_kind: "ClusterRole",
        role: "keel-taint-manager",
        subjects: &[Subject::User(PRIVILEGED_USER)],
        rules: &[
            res(
                &["get", "list", "watch", "update", "patch"],
                &[""],
                &["nodes"],
            ),
            res(&["get", "update", "patch"], &[""], &["nodes/status"]),
            res(
                &["create", "update", "patch", "get", "list", "watch"],
                &["", "events.k8s.io"],
                &["events"],
            ),
            res(READ, &[""], &["pods"]),
            res(&["create"], &[""], &["pods/eviction"]),
            res(READ, &["apps"], &["daemonsets"]),
            res(READ, &["policy"], &["poddisruptionbudgets"]),
            res(READ, &["coordination.k8s.io"], &["leases"]),
        ],
    },
];

/// `rbacv1.PolicyRule` of a stored (Cluster)Role, or of the fixed data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyRule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

fn owned(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn json_strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(|x| x.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

impl PolicyRule {
    fn from_fixed(r: &Rule) -> PolicyRule {
        PolicyRule {
            verbs: owned(r.verbs),
            api_groups: owned(r.groups),
            resources: owned(r.resources),
            resource_names: owned(r.names),
            non_resource_urls: owned(r.urls),
        }
    }

    fn from_json(v: &Value) -> PolicyRule {
        PolicyRule {
            verbs: json_strings(v, "verbs"),
            api_groups: json_strings(v, "apiGroups"),
            resources: json_strings(v, "resources"),
            resource_names: json_strings(v, "resourceNames"),
            non_resource_urls: json_strings(v, "nonResourceURLs"),
        }
    }

    pub fn allows(&self, a: &Attrs) -> bool {
        allows(
            a,
            &self.verbs,
            &self.api_groups,
            &self.resources,
            &self.resource_names,
            &self.non_resource_urls,
        )
    }
}

/// `RuleAllows` with `VerbMatches`, `APIGroupMatches`, `ResourceMatches` (`*`, `resource/sub`,
/// `*/sub`), `ResourceNameMatches` and `NonResourceURLMatches` (`*`, exact, trailing `*`).
fn allows<S: AsRef<str>>(
    a: &Attrs,
    verbs: &[S],
    groups: &[S],
    resources: &[S],
    names: &[S],
    urls: &[S],
) -> bool {
    let verb = verbs
        .iter()
        .any(|v| v.as_ref() == "*" || v.as_ref() == a.verb);
    if !verb {
        return false;
    }
    if !a.is_resource {
        return urls.iter().map(AsRef::as_ref).any(|u| {
            u == "*"
                || u == a.path
                || (u.ends_with('*') && a.path.starts_with(u.trim_end_matches('*')))
        });
    }
    let combined = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    groups
        .iter()
        .any(|g| g.as_ref() == "*" || g.as_ref() == a.group)
        && resources.iter().map(AsRef::as_ref).any(|x| {
            x == "*"
                || x == combined
                || (!a.subresource.is_empty()
                    && x.strip_prefix("*/") == Some(a.subresource.as_str()))
        })
        && (names.is_empty() || names.iter().any(|n| n.as_ref() == a.name))
}

/// `RuleAllows` for a fixed rule.
pub fn rule_allows(a: &Attrs, r: &Rule) -> bool {
    allows(a, r.verbs, r.groups, r.resources, r.names, r.urls)
}

pub fn rules_allow(a: &Attrs, rules: &[Rule]) -> bool {
    rules.iter().any(|r| rule_allows(a, r))
}

/// `rbacv1.Subject`.
#[derive(Debug, Clone, PartialEq)]
struct SubjectRef {
    kind: String,
    name: String,
    namespace: String,
}

impl SubjectRef {
    fn from_fixed(s: &Subject) -> SubjectRef {
        let (kind, name) = match s {
            Subject::User(n) => ("User", n),
            Subject::Group(g) => ("Group", g),
        };
        SubjectRef {
            kind: kind.into(),
            name: name.to_string(),
            namespace: String::new(),
        }
    }

    /// `appliesToUser`; `namespace` is the binding's ("" for a ClusterRoleBinding).
    fn applies_to(&self, user: &User, namespace: &str) -> bool {
        match self.kind.as_str() {
            "User" => user.name == self.name,
            "Group" => user.in_group(&self.name),
            "ServiceAccount" => {
                let ns = if self.namespace.is_empty() {
                    namespace
                } else {
                    &self.namespace
                };
                !ns.is_empty() && user.name == format!("system:serviceaccount:{ns}:{}", self.name)
            }
            _ => false,
        }
    }

    /// `describeSubject` (service accounts as `name/namespace`, as upstream prints them).
    fn describe(&self, binding_namespace: &str) -> String {
        match self.kind.as_str() {
            "ServiceAccount" => {
                let ns = if self.namespace.is_empty() {
                    binding_namespace
                } else {
                    &self.namespace
                };
                format!("{} {:?}", self.kind, format!("{}/{ns}", self.name))
            }
            _ => format!("{} {:?}", self.kind, self.name),
        }
    }
}

/// A (Cluster)RoleBinding, fixed or stored. `namespace` empty for a ClusterRoleBinding.
#[derive(Debug, Clone)]
struct BindingRef {
    name: String,
    namespace: String,
    role_kind: String,
    role: String,
    subjects: Vec<SubjectRef>,
}

impl BindingRef {
    fn from_fixed(b: &Binding) -> BindingRef {
        BindingRef {
            name: b.name.into(),
            namespace: b.namespace.unwrap_or("").into(),
            role_kind: b.role_kind.into(),
            role: b.role.into(),
            subjects: b.subjects.iter().map(SubjectRef::from_fixed).collect(),
        }
    }

    fn from_json(v: &Value) -> BindingRef {
        let s = |p: &str| {
            v.pointer(p)
                .and_then(|x| x.as_str())
                .unwrap_or("")
                .to_string()
        };
        let subjects = v
            .get("subjects")
            .and_then(|x| x.as_array())
            .map(|a| {
                a.iter()
                    .map(|x| SubjectRef {
                        kind: x["kind"].as_str().unwrap_or("").into(),
                        name: x["name"].as_str().unwrap_or("").into(),
                        namespace: x["namespace"].as_str().unwrap_or("").into(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        BindingRef {
            name: s("/metadata/name"),
            namespace: s("/metadata/namespace"),
            role_kind: s("/roleRef/kind"),
            role: s("/roleRef/name"),
            subjects,
        }
    }
}

/// Where a rule came from: the binding and the subject of it that matched (rule.go's describers).
pub struct Source<'a> {
    binding: &'a BindingRef,
    subject: &'a SubjectRef,
}

impl std::fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.binding;
        if b.namespace.is_empty() {
            write!(f, "ClusterRoleBinding {:?}", b.name)?;
        } else {
            write!(f, "RoleBinding {:?}", format!("{}/{}", b.name, b.namespace))?;
        }
        write!(
            f,
            " of {} {:?} to {}",
            b.role_kind,
            b.role,
            self.subject.describe(&b.namespace)
        )
    }
}

/// The fixed data as bindings and roles: `(binding, role namespace, role rules)`.
fn fixed() -> &'static [(BindingRef, Vec<PolicyRule>)] {
    static F: std::sync::OnceLock<Vec<(BindingRef, Vec<PolicyRule>)>> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        BINDINGS
            .iter()
            .map(|b| {
                (
                    BindingRef::from_fixed(b),
                    b.rules.iter().map(PolicyRule::from_fixed).collect(),
                )
            })
            .collect()
    })
}

const GROUP: &str = "rbac.authorization.k8s.io";

fn stored(store: &Store, resource: &str, ns: Option<&str>) -> Vec<BindingRef> {
    find(GROUP, "v1", resource)
        .map(|def| {
            store
                .list(def, ns)
                .into_iter()
                .map(BindingRef::from_json)
                .collect()
        })
        .unwrap_or_default()
}

/// `GetRoleReferenceRules`: a stored role, else a role of the fixed data with that name (so
/// bindings may refer to `cluster-admin` & co. as upstream's bootstrap roles), else an error worded
/// as the lister's NotFound.
fn role_rules(
    store: &Store,
    kind: &str,
    name: &str,
    namespace: &str,
) -> Result<Vec<PolicyRule>, String> {
    let (resource, singular, ns) = match kind {
        "Role" => ("roles", "role", namespace),
        "ClusterRole" => ("clusterroles", "clusterrole", ""),
        _ => return Err(format!("unsupported role reference kind: {kind:?}")),
    };
    if let Some(obj) = find(GROUP, "v1", resource).and_then(|def| store.get(def, ns, name)) {
        let rules = obj.get("rules").and_then(|r| r.as_array());
        return Ok(rules
            .into_iter()
            .flatten()
            .map(PolicyRule::from_json)
            .collect());
    }
    fixed()
        .iter()
        .find(|(b, _)| b.role_kind == kind && b.role == name && b.namespace == ns)
        .map(|(_, rules)| rules.clone())
        .ok_or_else(|| format!("{singular}.{GROUP} {name:?} not found"))
}

/// `VisitRulesFor`: every rule that applies to `user` in `namespace` (ClusterRoleBindings, then the
/// namespace's RoleBindings; fixed data before stored objects), until `visit` returns false.
/// Returns the errors met resolving role references.
pub fn visit_rules_for(
    user: &User,
    namespace: &str,
    store: &Store,
    visit: &mut dyn FnMut(&Source, &PolicyRule) -> bool,
) -> Vec<String> {
    let mut errors = Vec::new();
    let fixed_in = |ns: &str| -> Vec<&'static BindingRef> {
        fixed()
            .iter()
            .filter(|(b, _)| b.namespace == ns)
            .map(|(b, _)| b)
            .collect()
    };
    let mut scopes = vec![(fixed_in(""), stored(store, "clusterrolebindings", None))];
    if !namespace.is_empty() {
        scopes.push((
            fixed_in(namespace),
            stored(store, "rolebindings", Some(namespace)),
        ));
    }
    for (fixed_bindings, stored_bindings) in scopes {
        for b in fixed_bindings.into_iter().chain(&stored_bindings) {
            let Some(subject) = b.subjects.iter().find(|s| s.applies_to(user, &b.namespace)) else {
                continue;
            };
            let rules = match role_rules(store, &b.role_kind, &b.role, &b.namespace) {
                Ok(r) => r,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let source = Source {
                binding: b,
                subject,
            };
            for r in &rules {
                if !visit(&source, r) {
                    return errors;
                }
            }
        }
    }
    errors
}

/// `utilerrors.NewAggregate(errs).Error()`: repeats dropped; one message as is, several in brackets.
pub fn aggregate(errs: &[String]) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for e in errs {
        if !seen.contains(&e.as_str()) {
            seen.push(e);
        }
    }
    match seen.as_slice() {
        [] => String::new(),
        [one] => one.to_string(),
        many => format!("[{}]", many.join(", ")),
    }
}

/// `RulesFor`: the rules that apply to `user` in `namespace`, and the resolution errors.
pub fn rules_for(user: &User, namespace: &str, store: &Store) -> (Vec<PolicyRule>, Vec<String>) {
    let mut rules = Vec::new();
    let errors = visit_rules_for(user, namespace, store, &mut |_, r| {
        rules.push(r.clone());
        true
    });
    (rules, errors)
}

/// The RBAC authorizer: `Ok(reason)` when a rule allows (`RBAC: allowed by …`), else
/// `Err(reason)`: empty, or `RBAC: <resolution errors>` as rbac.go reports a denial.
pub fn authorize(user: &User, a: &Attrs, store: &Store) -> Result<String, String> {
    let ns = if a.is_resource {
        a.namespace.as_str()
    } else {
        ""
    };
    let mut allowed = None;
    let errors = visit_rules_for(user, ns, store, &mut |source, rule| {
        if rule.allows(a) {
            allowed = Some(format!("RBAC: allowed by {source}"));
            return false;
        }
        true
    });
    match allowed {
        Some(reason) => Ok(reason),
        None if errors.is_empty() => Err(String::new()),
        None => Err(format!("RBAC: {}", aggregate(&errors))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(verb: &str, group: &str, res: &str, sub: &str, name: &str) -> Attrs {
        Attrs {
            verb: verb.into(),
            is_resource: true,
            group: group.into(),
            resource: res.into(),
            subresource: sub.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn matching_follows_rbac_helpers() {
        let wild = res(&["*"], &["*"], &["*"]);
        assert!(rule_allows(
            &a("get", "apps", "daemonsets", "status", ""),
            &wild
        ));
        let sub = res(&["get"], &[""], &["*/status"]);
        assert!(rule_allows(&a("get", "", "pods", "status", ""), &sub));
        assert!(!rule_allows(&a("get", "", "pods", "", ""), &sub));
        let named = Rule {
            names: &["x"],
            ..res(&["get"], &[""], &["configmaps"])
        };
        assert!(rule_allows(&a("get", "", "configmaps", "", "x"), &named));
        assert!(!rule_allows(&a("list", "", "configmaps", "", ""), &named));
        assert!(!rule_allows(&a("get", "", "configmaps", "", ""), &named));
        let u = urls(&["get"], &["/api/*"]);
        let p = |path: &str| Attrs {
            verb: "get".into(),
            path: path.into(),
            ..Default::default()
        };
        assert!(rule_allows(&p("/api/v1"), &u));
        assert!(!rule_allows(&p("/api"), &u));
    }

    #[test]
    fn stored_bindings_resolve_as_rule_go() {
        let mut store = Store::new();
        let def = |r: &str| find(GROUP, "v1", r).unwrap();
        let put = |store: &mut Store, r: &str, ns: &str, v: Value| {
            store.create(def(r), ns, v).unwrap();
        };
        put(
            &mut store,
            "clusterroles",
            "",
            serde_json::json!({"metadata": {"name": "cm"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]},
                          {"nonResourceURLs": ["/logs/**"], "verbs": ["get"]}]}),
        );
        put(
            &mut store,
            "rolebindings",
            "a",
            serde_json::json!({"metadata": {"name": "rb", "namespace": "a"},
                "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "cm"},
                "subjects": [{"kind": "ServiceAccount", "name": "bot"}]}),
        );
        put(
            &mut store,
            "clusterrolebindings",
            "",
            serde_json::json!({"metadata": {"name": "gone"},
                "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "missing"},
                "subjects": [{"kind": "Group", "name": "system:serviceaccounts"}]}),
        );
        let bot = User::authenticated(
            "system:serviceaccount:a:bot",
            vec!["system:serviceaccounts".into()],
        );
        let get = |ns: &str| Attrs {
            namespace: ns.into(),
            ..a("get", "", "configmaps", "", "x")
        };
        assert_eq!(
            authorize(&bot, &get("a"), &store),
            Ok("RBAC: allowed by RoleBinding \"rb/a\" of ClusterRole \"cm\" to ServiceAccount \"bot/a\"".into())
        );
        assert_eq!(
            authorize(&bot, &get("b"), &store),
            Err("RBAC: clusterrole.rbac.authorization.k8s.io \"missing\" not found".into())
        );
        // A RoleBinding's non-resource rules never apply (URLs are cluster-wide requests).
        let logs = Attrs {
            verb: "get".into(),
            path: "/logs/x".into(),
            ..Default::default()
        };
        assert!(authorize(&bot, &logs, &store).is_err());
        let (rules, errs) = rules_for(&bot, "a", &store);
        assert!(rules.iter().any(|r| r.resources == ["configmaps"]));
        assert_eq!(errs.len(), 1);
        // `TrimRight(url, "*")`: every trailing star goes.
        let r = PolicyRule::from_json(
            &serde_json::json!({"nonResourceURLs": ["/logs/**"], "verbs": ["get"]}),
        );
        assert!(r.allows(&logs));
    }
}
