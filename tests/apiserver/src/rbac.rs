//! The RBAC objects a kubeadm cluster has, as data, and the RBAC authorizer over them
//! (`plugin/pkg/auth/authorizer/rbac/rbac.go`, matching in `pkg/apis/rbac/v1/evaluation_helpers.go`).
//! Both the request path (`auth::authorize`) and SelfSubjectRulesReview read these tables, so a
//! rule listed by `kubectl auth can-i --list` is exactly a rule that lets a request through.

use crate::auth::{Attrs, User, PRIVILEGED_USER};

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

fn subject_matches(s: &Subject, user: &User) -> bool {
    match s {
        Subject::User(n) => user.name == *n,
        Subject::Group(g) => user.in_group(g),
    }
}

/// `RuleAllows`: verbs, groups, resources (with `*` and `*/sub`), names, non-resource URLs.
pub fn rule_allows(a: &Attrs, r: &Rule) -> bool {
    let verb = r.verbs.iter().any(|v| *v == "*" || *v == a.verb);
    if !verb {
        return false;
    }
    if !a.is_resource {
        return r.urls.iter().any(|u| {
            *u == "*"
                || *u == a.path
                || u.strip_suffix('*')
                    .is_some_and(|prefix| a.path.starts_with(prefix))
        });
    }
    let combined = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    r.groups.iter().any(|g| *g == "*" || *g == a.group)
        && r.resources.iter().any(|x| {
            *x == "*"
                || *x == combined
                || x.strip_prefix("*/")
                    .is_some_and(|sub| !a.subresource.is_empty() && sub == a.subresource)
        })
        && (r.names.is_empty() || r.names.contains(&a.name.as_str()))
}

pub fn rules_allow(a: &Attrs, rules: &[Rule]) -> bool {
    rules.iter().any(|r| rule_allows(a, r))
}

/// The bindings that apply to `user` for a request in `namespace` (RoleBindings only there).
pub fn bindings_for<'a>(
    user: &'a User,
    namespace: &'a str,
) -> impl Iterator<Item = &'static Binding> + 'a {
    BINDINGS.iter().filter(move |b| {
        b.namespace.is_none_or(|ns| ns == namespace)
            && b.subjects.iter().any(|s| subject_matches(s, user))
    })
}

/// The RBAC authorizer: `Some(reason)` when a binding allows, as rbac.go words it.
pub fn authorize(user: &User, a: &Attrs) -> Option<String> {
    let ns = if a.is_resource {
        a.namespace.as_str()
    } else {
        ""
    };
    for b in bindings_for(user, ns) {
        if !rules_allow(a, b.rules) {
            continue;
        }
        let subject = b
            .subjects
            .iter()
            .find(|s| subject_matches(s, user))
            .map(|s| match s {
                Subject::User(n) => format!("User {n:?}"),
                Subject::Group(g) => format!("Group {g:?}"),
            })
            .unwrap_or_default();
        let binding = match b.namespace {
            Some(ns) => format!("RoleBinding \"{}/{ns}\"", b.name),
            None => format!("ClusterRoleBinding {:?}", b.name),
        };
        return Some(format!(
            "RBAC: allowed by {binding} of {} {:?} to {subject}",
            b.role_kind, b.role
        ));
    }
    None
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
}
