//! `kubectl auth can-i` / `whoami` (SelfSubjectAccessReview, SelfSubjectRulesReview,
//! SelfSubjectReview) against the authorizer that enforces requests, the Node authorizer with
//! `AuthorizeNodeWithSelectors`, and kubeadm's cluster-info Role.

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// One identity: a kubeconfig for kubectl and the curl arguments that authenticate the same way.
struct Who {
    name: &'static str,
    kubeconfig: PathBuf,
    curl: Vec<String>,
}

async fn identities(env: &Env) -> Vec<Who> {
    let admin = Who {
        name: "admin",
        kubeconfig: env.path("admin.kubeconfig"),
        curl: vec![
            "-H".into(),
            format!("Authorization: Bearer {}", env.srv.admin_token()),
        ],
    };
    let privileged = env.path("privileged.kubeconfig");
    env.srv
        .write_token_kubeconfig(&privileged, &env.srv.privileged_token())
        .unwrap();
    let token = env.srv.create_bootstrap_token(Duration::from_secs(600));
    let bootstrap = env.path("bootstrap.kubeconfig");
    env.srv.write_token_kubeconfig(&bootstrap, &token).unwrap();
    let node = env.path("node.kubeconfig");
    env.srv
        .write_cert_kubeconfig(&node, "system:node:n1", &["system:nodes"])
        .unwrap();
    let (cert, key) = env
        .srv
        .issue_client_cert(
            "system:node:n1",
            &["system:nodes"],
            Duration::from_secs(3600),
        )
        .unwrap();
    std::fs::write(env.path("node.crt"), cert).unwrap();
    std::fs::write(env.path("node.key"), key).unwrap();
    // A blank token makes kubectl send `Bearer  `, which authenticates no one: anonymous (and
    // stops kubectl from prompting for a username).
    let anonymous = env.path("anonymous.kubeconfig");
    env.srv.write_token_kubeconfig(&anonymous, "\" \"").unwrap();
    vec![
        admin,
        Who {
            name: "privileged",
            kubeconfig: privileged,
            curl: vec![
                "-H".into(),
                format!("Authorization: Bearer {}", env.srv.privileged_token()),
            ],
        },
        Who {
            name: "bootstrap",
            kubeconfig: bootstrap,
            curl: vec!["-H".into(), format!("Authorization: Bearer {token}")],
        },
        Who {
            name: "node",
            kubeconfig: node,
            curl: vec![
                "--cert".into(),
                env.path("node.crt").display().to_string(),
                "--key".into(),
                env.path("node.key").display().to_string(),
            ],
        },
        Who {
            name: "anonymous",
            kubeconfig: anonymous,
            curl: vec![],
        },
    ]
}

fn seed(env: &Env) {
    env.srv.put("/api/v1/nodes/n1", node_json("n1"));
    env.srv.put("/api/v1/nodes/n2", node_json("n2"));
    let mut web = ready_pod("web", "n1", json!({"app": "web"}));
    web["spec"]["volumes"] = json!([{"name": "s", "secret": {"secretName": "s1"}}]);
    web["spec"]["containers"][0]["env"] =
        json!([{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "c1", "key": "k"}}}]);
    env.srv.put("/api/v1/namespaces/default/pods/web", web);
    env.srv.put(
        "/api/v1/namespaces/default/pods/other",
        ready_pod("other", "n2", json!({"app": "other"})),
    );
    for (ns, name) in [("default", "s1"), ("default", "s2"), ("kube-system", "s1")] {
        env.srv.put(
            &format!("/api/v1/namespaces/{ns}/secrets/{name}"),
            json!({"metadata": {"namespace": ns}, "data": {}}),
        );
    }
    for (ns, name) in [
        ("default", "c1"),
        ("default", "c2"),
        ("kube-public", "other"),
    ] {
        env.srv.put(
            &format!("/api/v1/namespaces/{ns}/configmaps/{name}"),
            json!({"metadata": {"namespace": ns}, "data": {}}),
        );
    }
}

/// `(verb, resource, subresource, namespace, name)`; a resource starting with `/` is a URL.
const TUPLES: &[(&str, &str, &str, &str, &str)] = &[
    ("get", "/healthz", "", "", ""),
    ("get", "/version", "", "", ""),
    ("get", "/api", "", "", ""),
    ("get", "nodes", "", "", "n1"),
    ("get", "nodes", "", "", "n2"),
    ("list", "nodes", "", "", ""),
    ("patch", "nodes", "", "", "n1"),
    ("delete", "nodes", "", "", "n1"),
    ("patch", "nodes", "status", "", "n1"),
    ("get", "pods", "", "default", "web"),
    ("get", "pods", "", "default", "other"),
    ("list", "pods", "", "default", ""),
    ("list", "pods", "", "", ""),
    ("create", "pods", "", "default", ""),
    ("delete", "pods", "", "default", "web"),
    ("create", "pods", "eviction", "default", "web"),
    ("patch", "pods", "status", "default", "web"),
    ("get", "secrets", "", "default", "s1"),
    ("get", "secrets", "", "default", "s2"),
    ("list", "secrets", "", "default", ""),
    ("get", "configmaps", "", "default", "c1"),
    ("get", "configmaps", "", "default", "c2"),
    ("get", "configmaps", "", "kube-public", "cluster-info"),
    ("get", "configmaps", "", "kube-public", "other"),
    ("list", "configmaps", "", "kube-public", ""),
    ("list", "services", "", "default", ""),
    ("list", "endpointslices.discovery.k8s.io", "", "default", ""),
    ("list", "daemonsets.apps", "", "default", ""),
    ("list", "poddisruptionbudgets.policy", "", "default", ""),
    (
        "create",
        "certificatesigningrequests.certificates.k8s.io",
        "",
        "",
        "",
    ),
    (
        "list",
        "certificatesigningrequests.certificates.k8s.io",
        "",
        "",
        "",
    ),
    (
        "get",
        "leases.coordination.k8s.io",
        "",
        "kube-node-lease",
        "n1",
    ),
    (
        "update",
        "leases.coordination.k8s.io",
        "",
        "kube-node-lease",
        "n2",
    ),
    (
        "list",
        "leases.coordination.k8s.io",
        "",
        "kube-node-lease",
        "",
    ),
];

/// The request a tuple stands for, made for real (writes with `dryRun=All`, so every tuple sees
/// the same state): `(method, path, content type, body)`.
fn request_for(t: &(&str, &str, &str, &str, &str)) -> (String, String, &'static str, String) {
    let (verb, res, sub, ns, name) = *t;
    if res.starts_with('/') {
        return ("GET".into(), res.into(), "", String::new());
    }
    let (plural, group) = res.split_once('.').unwrap_or((res, ""));
    let mut path = if group.is_empty() {
        "/api/v1".to_string()
    } else {
        format!("/apis/{group}/v1")
    };
    if !ns.is_empty() {
        path += &format!("/namespaces/{ns}");
    }
    path += &format!("/{plural}");
    if !name.is_empty() {
        path += &format!("/{name}");
    }
    if !sub.is_empty() {
        path += &format!("/{sub}");
    }
    let method = match verb {
        "get" | "list" => "GET",
        "create" => "POST",
        "update" => "PUT",
        "patch" => "PATCH",
        _ => "DELETE",
    };
    if method != "GET" {
        path += "?dryRun=All";
    }
    let (ct, body) = match (verb, sub) {
        ("create", "eviction") => (
            "application/json",
            json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name}})
                .to_string(),
        ),
        ("patch", _) => ("application/merge-patch+json", "{}".into()),
        ("create" | "update", _) => ("application/json", "{}".into()),
        _ => ("", String::new()),
    };
    (method.into(), path, ct, body)
}

fn can_i_args(t: &(&str, &str, &str, &str, &str)) -> Vec<String> {
    let (verb, res, sub, ns, name) = *t;
    let mut a = vec!["auth".to_string(), "can-i".into(), verb.into()];
    if name.is_empty() {
        a.push(res.into());
    } else {
        a.push(format!("{res}/{name}"));
    }
    if !res.starts_with('/') {
        if ns.is_empty() {
            a.push("--all-namespaces".into());
        } else {
            a.extend(["-n".into(), ns.into()]);
        }
    }
    if !sub.is_empty() {
        a.extend(["--subresource".into(), sub.into()]);
    }
    a
}

async fn can_i(env: &Env, bin: &str, who: &Who, t: &(&str, &str, &str, &str, &str)) -> bool {
    let args = can_i_args(t);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let o = env.kubectl_as(bin, &who.kubeconfig, &args).await;
    let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
    match (o.status.code(), out.as_str()) {
        (Some(0), "yes") => true,
        // kubectl appends the authorizer's reason: `no - <reason>`.
        (Some(1), o) if o == "no" || o.starts_with("no - ") => false,
        _ => panic!(
            "{} {args:?}: unexpected answer {out:?} {}",
            who.name,
            String::from_utf8_lossy(&o.stderr)
        ),
    }
}

async fn really_allowed(env: &Env, who: &Who, t: &(&str, &str, &str, &str, &str)) -> (bool, u16) {
    let (method, path, ct, body) = request_for(t);
    let mut args: Vec<String> = who.curl.clone();
    args.extend(["-X".into(), method]);
    if !ct.is_empty() {
        args.extend([
            "-H".into(),
            format!("Content-Type: {ct}"),
            "--data".into(),
            body,
        ]);
    }
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let (code, _) = env.curl(&args, &path).await;
    assert_ne!(code, 401, "{} {t:?} was not authenticated", who.name);
    (code != 403, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn can_i_says_yes_exactly_where_the_request_is_allowed_for_every_identity() {
    let env = Env::start().await;
    seed(&env);
    let ids = identities(&env).await;
    let mut mismatches = Vec::new();
    let mut yes = 0;
    for who in &ids {
        if who.name == "anonymous" {
            // system:basic-user is bound to system:authenticated only: anonymous may not ask.
            let e = err(&env
                .kubectl_as(
                    KUBECTL.as_str(),
                    &who.kubeconfig,
                    &["auth", "can-i", "get", "/healthz"],
                )
                .await);
            assert!(e.contains("Error from server (Forbidden): selfsubjectaccessreviews.authorization.k8s.io is forbidden: User \"system:anonymous\" cannot create resource \"selfsubjectaccessreviews\" in API group \"authorization.k8s.io\" at the cluster scope"), "{e}");
            // What anonymous may do is system:public-info-viewer plus kubeadm's cluster-info Role.
            for t in TUPLES {
                let want = matches!(t.1, "/healthz" | "/version") || t.4 == "cluster-info";
                let (real, code) = really_allowed(&env, who, t).await;
                if real != want {
                    mismatches.push(format!("anonymous {t:?}: expected {want}, request={code}"));
                }
            }
            continue;
        }
        for t in TUPLES {
            let said = can_i(&env, KUBECTL.as_str(), who, t).await;
            let (real, code) = really_allowed(&env, who, t).await;
            yes += usize::from(said);
            if said != real {
                mismatches.push(format!("{} {t:?}: can-i={said} request={code}", who.name));
            }
        }
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    // Not vacuous: every identity is allowed something and refused something, as upstream.
    assert!(yes > 40 && yes < ids.len() * TUPLES.len(), "{yes}");
    // The store was not changed by the dry-run writes.
    assert!(env.srv.get("/api/v1/namespaces/default/pods/web").is_some());
    assert!(env.srv.get("/api/v1/nodes/n1").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn can_i_from_kubectl_127_matches_too() {
    let env = Env::start().await;
    seed(&env);
    let ids = identities(&env).await;
    let node = ids.iter().find(|w| w.name == "node").unwrap();
    let boot = ids.iter().find(|w| w.name == "bootstrap").unwrap();
    for (who, t, want) in [
        (node, ("get", "pods", "", "default", "web"), true),
        (node, ("get", "pods", "", "default", "other"), false),
        (node, ("list", "pods", "", "default", ""), false),
        (node, ("get", "nodes", "", "", "n2"), false),
        (node, ("patch", "nodes", "status", "", "n1"), true),
        (node, ("get", "secrets", "", "default", "s1"), true),
        (
            boot,
            (
                "create",
                "certificatesigningrequests.certificates.k8s.io",
                "nodeclient",
                "",
                "",
            ),
            true,
        ),
        (boot, ("get", "/healthz", "", "", ""), true),
        (
            boot,
            ("get", "configmaps", "", "kube-public", "cluster-info"),
            false,
        ),
    ] {
        assert_eq!(
            can_i(&env, KUBECTL_OLD.as_str(), who, &t).await,
            want,
            "{} {t:?}",
            who.name
        );
        // `nodeclient` is the approver's virtual subresource: no request path to compare with.
        if t.2 != "nodeclient" {
            assert_eq!(
                really_allowed(&env, who, &t).await.0,
                want,
                "{} {t:?}",
                who.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_review_with_a_field_selector_matches_a_node_s_list() {
    let env = Env::start().await;
    seed(&env);
    let ids = identities(&env).await;
    let node = ids.iter().find(|w| w.name == "node").unwrap();
    for (sel, want) in [
        ("spec.nodeName=n1", true),
        ("spec.nodeName=n2", false),
        ("spec.nodeName!=n1", false),
        ("", false),
    ] {
        let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"verb": "list", "resource": "pods", "namespace": "default",
                     "fieldSelector": {"rawSelector": sel}}}});
        let mut a: Vec<&str> = node.curl.iter().map(|s| s.as_str()).collect();
        let body = review.to_string();
        a.extend([
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data",
            &body,
        ]);
        let (code, out) = env
            .curl(&a, "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
            .await;
        assert_eq!(code, 201, "{out}");
        let r: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(r["status"]["allowed"], want, "{sel}: {r}");
        if !want {
            assert_eq!(
                r["status"]["reason"],
                "can only list/watch pods with spec.nodeName field selector"
            );
        }
        let q = format!(
            "/api/v1/namespaces/default/pods?fieldSelector={}",
            sel.replace('=', "%3D")
        );
        let (code, _) = env
            .curl(
                &node.curl.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                &q,
            )
            .await;
        assert_eq!(code == 200, want, "{sel}: {code}");
    }
    // Requirements form (In with one value) is the same selector.
    let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": "watch", "resource": "pods",
                 "fieldSelector": {"requirements": [{"key": "spec.nodeName", "operator": "In", "values": ["n1"]}]}}}});
    let body = review.to_string();
    let mut a: Vec<&str> = node.curl.iter().map(|s| s.as_str()).collect();
    a.extend([
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data",
        &body,
    ]);
    let (_, out) = env
        .curl(&a, "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
        .await;
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["status"]["allowed"], true, "{r}");
    assert_eq!(r["kind"], "SelfSubjectAccessReview");
    assert_eq!(r["metadata"], json!({"creationTimestamp": null}));
    // Neither attribute kind: 422 as ValidateSelfSubjectAccessReviewSpec.
    let (code, out) = env
        .curl_admin(
            &["-X", "POST", "-H", "Content-Type: application/json", "--data",
              r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SelfSubjectAccessReview","spec":{}}"#],
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        )
        .await;
    assert_eq!(code, 422, "{out}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["message"], "SelfSubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified");
    assert_eq!(
        s["details"]["causes"][0]["field"],
        "spec.resourceAttributes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn can_i_list_prints_the_rules_the_authorizer_uses_and_nodes_are_incomplete() {
    let env = Env::start().await;
    seed(&env);
    let ids = identities(&env).await;
    let by = |n: &str| ids.iter().find(|w| w.name == n).unwrap();
    for bin in [KUBECTL.as_str(), KUBECTL_OLD.as_str()] {
        let out = ok(&env
            .kubectl_as(bin, &by("admin").kubeconfig, &["auth", "can-i", "--list"])
            .await);
        assert!(out.contains("*.*") && out.contains("[*]"), "{out}");
        let o = env
            .kubectl_as(
                bin,
                &by("bootstrap").kubeconfig,
                &["auth", "can-i", "--list"],
            )
            .await;
        let out = ok(&o);
        assert!(
            out.lines().any(
                |l| l.starts_with("certificatesigningrequests.certificates.k8s.io ")
                    && l.contains("[create get list watch]")
            ),
            "{out}"
        );
        assert!(
            out.contains("certificatesigningrequests.certificates.k8s.io/nodeclient"),
            "{out}"
        );
        assert!(out.contains("nodes ") && out.contains("[get]"), "{out}");
        assert!(!out.contains("cluster-info"), "{out}");
        // kube-system's kubeadm Roles show only in kube-system.
        let out = ok(&env
            .kubectl_as(
                bin,
                &by("bootstrap").kubeconfig,
                &["auth", "can-i", "--list", "-n", "kube-system"],
            )
            .await);
        assert!(
            out.contains("[kubelet-config]") && out.contains("[kubeadm-config]"),
            "{out}"
        );
        // Nodes: RBAC's rules plus a warning that the Node authorizer's are not listed.
        let o = env
            .kubectl_as(bin, &by("node").kubeconfig, &["auth", "can-i", "--list"])
            .await;
        let out = ok(&o);
        let errout = String::from_utf8_lossy(&o.stderr);
        assert!(
            out.contains("certificatesigningrequests.certificates.k8s.io/selfnodeclient"),
            "{out}"
        );
        assert!(!out.contains("pods"), "{out}");
        assert!(
            errout.contains("node authorizer does not support user rule resolution")
                || out.contains("node authorizer does not support user rule resolution"),
            "{out} {errout}"
        );
        // Anonymous is not bound to system:basic-user.
        let e = err(&env
            .kubectl_as(
                bin,
                &by("anonymous").kubeconfig,
                &["auth", "can-i", "--list"],
            )
            .await);
        assert!(e.contains("selfsubjectrulesreviews.authorization.k8s.io is forbidden: User \"system:anonymous\" cannot create resource \"selfsubjectrulesreviews\" in API group \"authorization.k8s.io\" at the cluster scope"), "{e}");
    }
    // The raw review: rules, incomplete and evaluationError as rest.go fills them.
    let mut a: Vec<&str> = by("node").curl.iter().map(|s| s.as_str()).collect();
    let body = r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SelfSubjectRulesReview","spec":{"namespace":"default"}}"#;
    a.extend([
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data",
        body,
    ]);
    let (code, out) = env
        .curl(&a, "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews")
        .await;
    assert_eq!(code, 201, "{out}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["status"]["incomplete"], true);
    assert_eq!(
        r["status"]["evaluationError"],
        "node authorizer does not support user rule resolution"
    );
    assert!(r["status"]["resourceRules"].as_array().unwrap().contains(
        &json!({"verbs": ["create"], "apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]})
    ), "{r}");
    let (code, out) = env
        .curl_admin(
            &["-X", "POST", "-H", "Content-Type: application/json", "--data",
              r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SelfSubjectRulesReview","spec":{}}"#],
            "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        )
        .await;
    assert_eq!(code, 400, "{out}");
    assert!(out.contains("no namespace on request"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_reports_every_identity_and_anonymous_is_forbidden() {
    let env = Env::start().await;
    let ids = identities(&env).await;
    for who in &ids {
        let o = env
            .kubectl_as(
                KUBECTL.as_str(),
                &who.kubeconfig,
                &["auth", "whoami", "-o", "json"],
            )
            .await;
        if who.name == "anonymous" {
            // 403 (system:basic-user is for system:authenticated), as kubectl words it.
            let e = err(&o);
            assert!(e.contains("the selfsubjectreviews API is not enabled in the cluster or you do not have permission to call it"), "{e}");
            continue;
        }
        let r: Value = serde_json::from_str(&ok(&o)).unwrap();
        assert_eq!(r["kind"], "SelfSubjectReview");
        assert_eq!(r["apiVersion"], "authentication.k8s.io/v1");
        let ui = &r["status"]["userInfo"];
        let groups: Vec<&str> = ui["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_str().unwrap())
            .collect();
        assert!(groups.contains(&"system:authenticated"), "{r}");
        match who.name {
            "admin" => assert_eq!(ui["username"], "kubernetes-admin"),
            "privileged" => assert_eq!(
                ui["username"],
                "system:serviceaccount:kube-system:keel-taint-manager"
            ),
            "node" => {
                assert_eq!(ui["username"], "system:node:n1");
                assert!(groups.contains(&"system:nodes"));
            }
            _ => {
                assert!(ui["username"]
                    .as_str()
                    .unwrap()
                    .starts_with("system:bootstrap:"));
                assert!(groups.contains(&"system:bootstrappers:kubeadm:default-node-token"));
            }
        }
    }
    let out = ok(&env
        .kubectl_as(KUBECTL.as_str(), &ids[0].kubeconfig, &["auth", "whoami"])
        .await);
    assert!(out.contains("Username    kubernetes-admin"), "{out}");
    assert!(
        out.contains("[system:masters system:authenticated]"),
        "{out}"
    );
    let out = ok(&env
        .kubectl_as(
            KUBECTL.as_str(),
            &ids[3].kubeconfig,
            &["auth", "whoami", "-o", "yaml"],
        )
        .await);
    assert!(
        out.contains("kind: SelfSubjectReview") && out.contains("username: system:node:n1"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_read_only_their_own_node_and_pods_bound_to_them() {
    let env = Env::start().await;
    seed(&env);
    let ids = identities(&env).await;
    let node = &ids.iter().find(|w| w.name == "node").unwrap().kubeconfig;
    for bin in [KUBECTL.as_str(), KUBECTL_OLD.as_str()] {
        let e = err(&env.kubectl_as(bin, node, &["get", "pods", "-A"]).await);
        assert!(e.contains("pods is forbidden: User \"system:node:n1\" cannot list resource \"pods\" in API group \"\" at the cluster scope: can only list/watch pods with spec.nodeName field selector"), "{e}");
        let out = ok(&env
            .kubectl_as(
                bin,
                node,
                &[
                    "get",
                    "pods",
                    "-A",
                    "--field-selector",
                    "spec.nodeName=n1",
                    "-o",
                    "name",
                ],
            )
            .await);
        assert_eq!(out.trim(), "pod/web");
        err(&env
            .kubectl_as(
                bin,
                node,
                &["get", "pods", "-A", "--field-selector", "spec.nodeName=n2"],
            )
            .await);
        ok(&env.kubectl_as(bin, node, &["get", "pod", "web"]).await);
        let e = err(&env.kubectl_as(bin, node, &["get", "pod", "other"]).await);
        assert!(e.contains("pods \"other\" is forbidden: User \"system:node:n1\" cannot get resource \"pods\" in API group \"\" in the namespace \"default\": no relationship found between node 'n1' and this object"), "{e}");
        let e = err(&env.kubectl_as(bin, node, &["get", "nodes"]).await);
        assert!(
            e.contains("node 'n1' cannot read all nodes, only its own Node object"),
            "{e}"
        );
        ok(&env.kubectl_as(bin, node, &["get", "node", "n1"]).await);
        let e = err(&env.kubectl_as(bin, node, &["get", "node", "n2"]).await);
        assert!(
            e.contains("node 'n1' cannot read 'n2', only its own Node object"),
            "{e}"
        );
        // A metadata.name field selector names the object (RequestInfo), as kubelet's node watch.
        ok(&env
            .kubectl_as(
                bin,
                node,
                &["get", "nodes", "--field-selector", "metadata.name=n1"],
            )
            .await);
        ok(&env.kubectl_as(bin, node, &["get", "services"]).await);
        err(&env.kubectl_as(bin, node, &["get", "endpointslices"]).await);
        ok(&env.kubectl_as(bin, node, &["get", "secret", "s1"]).await);
        err(&env.kubectl_as(bin, node, &["get", "secret", "s2"]).await);
        err(&env.kubectl_as(bin, node, &["get", "secrets"]).await);
        ok(&env.kubectl_as(bin, node, &["get", "configmap", "c1"]).await);
    }
    // A watch scoped to the node works and sees its pods.
    let (code, body) = env
        .curl(
            &ids[3].curl.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            "/api/v1/pods?watch=1&fieldSelector=spec.nodeName%3Dn1&timeoutSeconds=1",
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("\"web\"") && !body.contains("\"other\""),
        "{body}"
    );
    // A deleted pod is no longer related to the node: 403, not 404, as upstream's graph.
    assert!(env.srv.delete("/api/v1/namespaces/default/pods/web"));
    let e = err(&env
        .kubectl_as(KUBECTL.as_str(), node, &["get", "pod", "web"])
        .await);
    assert!(
        e.contains("no relationship found between node 'n1' and this object"),
        "{e}"
    );
    // With the feature gate off, nodes read all pods and nodes again (v1.31 and before).
    env.srv.set_authorize_node_with_selectors(false);
    ok(&env
        .kubectl_as(KUBECTL.as_str(), node, &["get", "pods", "-A"])
        .await);
    ok(&env
        .kubectl_as(KUBECTL.as_str(), node, &["get", "nodes"])
        .await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_info_is_readable_by_anonymous_only_through_kubeadm_s_role() {
    let env = Env::start().await;
    seed(&env);
    let ids = identities(&env).await;
    let by = |n: &str| ids.iter().find(|w| w.name == n).unwrap();
    for bin in [KUBECTL.as_str(), KUBECTL_OLD.as_str()] {
        // Anonymous may not read discovery (system:discovery is for system:authenticated), so
        // kubectl reads by path, as `kubeadm join` does.
        let anon = &by("anonymous").kubeconfig;
        let out = ok(&env
            .kubectl_as(
                bin,
                anon,
                &[
                    "get",
                    "--raw",
                    "/api/v1/namespaces/kube-public/configmaps/cluster-info",
                ],
            )
            .await);
        let cm: Value = serde_json::from_str(&out).unwrap();
        assert!(cm["data"]["kubeconfig"]
            .as_str()
            .unwrap()
            .contains(&env.srv.url()));
        let e = err(&env
            .kubectl_as(
                bin,
                anon,
                &["get", "--raw", "/api/v1/namespaces/kube-public/configmaps"],
            )
            .await);
        assert!(e.contains("Error from server (Forbidden)"), "{e}");
        let e = err(&env
            .kubectl_as(
                bin,
                anon,
                &[
                    "get",
                    "--raw",
                    "/api/v1/namespaces/kube-public/configmaps/other",
                ],
            )
            .await);
        assert!(e.contains("Error from server (Forbidden)"), "{e}");
        let e = err(&env
            .kubectl_as(bin, anon, &["get", "configmaps", "-n", "kube-public"])
            .await);
        assert!(!e.is_empty());
        // The RoleBinding's subject is the user system:anonymous: authenticated users are not it.
        let e = err(&env
            .kubectl_as(
                bin,
                &by("bootstrap").kubeconfig,
                &["get", "configmap", "cluster-info", "-n", "kube-public"],
            )
            .await);
        assert!(
            e.contains("configmaps \"cluster-info\" is forbidden: User \"system:bootstrap:"),
            "{e}"
        );
        ok(&env
            .kubectl_as(
                bin,
                &by("admin").kubeconfig,
                &["get", "configmap", "cluster-info", "-n", "kube-public"],
            )
            .await);
    }
    let (code, body) = env
        .curl(&[], "/api/v1/namespaces/kube-public/configmaps")
        .await;
    assert_eq!(code, 403);
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["message"], "configmaps is forbidden: User \"system:anonymous\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"kube-public\"");
    let (code, _) = env
        .curl(
            &[],
            "/api/v1/namespaces/kube-system/configmaps/cluster-info",
        )
        .await;
    assert_eq!(code, 403, "the Role is in kube-public only");
}
