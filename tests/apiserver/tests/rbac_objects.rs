//! `rbac.authorization.k8s.io/v1` objects served and enforced together with kubeadm's fixed
//! bindings, and ServiceAccount tokens from the TokenRequest API, driven by real kubectl:
//! keel-lb's RBAC (configs/kubernetes/keel-lb-rbac.yaml) is enough and no more, the generic RBAC
//! semantics hold, and `kubectl auth can-i` / `whoami` tell exactly what is enforced.

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

fn keel_lb_rbac() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/kubernetes/keel-lb-rbac.yaml")
}

const LB_USER: &str = "system:serviceaccount:kube-system:keel-lb";

/// One identity: a kubeconfig for kubectl and the curl arguments that authenticate the same way.
struct Id {
    kubeconfig: PathBuf,
    curl: Vec<String>,
}

impl Id {
    fn token(env: &Env, file: &str, token: &str) -> Id {
        let kubeconfig = env.path(file);
        env.srv.write_token_kubeconfig(&kubeconfig, token).unwrap();
        Id {
            kubeconfig,
            curl: vec!["-H".into(), format!("Authorization: Bearer {token}")],
        }
    }

    fn cert(env: &Env, cn: &str, groups: &[&str]) -> Id {
        let (cert, key) = env
            .srv
            .issue_client_cert(cn, groups, Duration::from_secs(3600))
            .unwrap();
        // curl reads `--cert file:password`: no colons in file names.
        let file = cn.replace(':', "_");
        let (c, k) = (
            env.path(&format!("{file}.crt")),
            env.path(&format!("{file}.key")),
        );
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        let kubeconfig = env.path(&format!("{file}.kubeconfig"));
        env.srv
            .write_cert_kubeconfig(&kubeconfig, cn, groups)
            .unwrap();
        Id {
            kubeconfig,
            curl: vec![
                "--cert".into(),
                c.display().to_string(),
                "--key".into(),
                k.display().to_string(),
            ],
        }
    }
}

/// `kubectl auth can-i ARGS` as `who` with kubectl `bin`: true for `yes`, false for `no`.
async fn can_i(env: &Env, bin: &str, who: &Id, args: &[&str]) -> bool {
    let mut a = vec!["auth", "can-i"];
    a.extend_from_slice(args);
    let o = env.kubectl_as(bin, &who.kubeconfig, &a).await;
    let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
    match (o.status.code(), out.as_str()) {
        (Some(0), "yes") => true,
        (Some(1), o) if o == "no" || o.starts_with("no - ") => false,
        _ => panic!(
            "{bin} {a:?}: unexpected answer {out:?} {}",
            String::from_utf8_lossy(&o.stderr)
        ),
    }
}

/// One request as `who` with curl: `(status, body)`.
async fn call(
    env: &Env,
    who: &Id,
    method: &str,
    path: &str,
    body: Option<(&str, &Value)>,
) -> (u16, String) {
    let mut a: Vec<String> = who.curl.clone();
    a.extend(["-X".into(), method.into()]);
    if let Some((ct, b)) = body {
        a.extend([
            "-H".into(),
            format!("Content-Type: {ct}"),
            "--data-binary".into(),
            b.to_string(),
        ]);
    }
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    env.curl(&a, path).await
}

const MERGE: &str = "application/merge-patch+json";
const JSON: &str = "application/json";

fn event(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
           "metadata": {"name": name, "namespace": ns},
           "eventTime": "2025-01-01T00:00:00.000000Z", "reportingController": "keel.io/lb",
           "reportingInstance": "lb1", "action": "Ensuring", "reason": "EnsuringLoadBalancer",
           "regarding": {"kind": "Service", "namespace": ns, "name": "web", "apiVersion": "v1"},
           "type": "Normal", "note": "Ensuring load balancer"})
}

fn lease(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"holderIdentity": "lb1", "leaseDurationSeconds": 3}})
}

/// The rows of `kubectl auth can-i --list`, whitespace collapsed, sorted (duplicates kept).
fn list_rows(out: &str) -> Vec<String> {
    let mut rows: Vec<String> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect();
    rows.sort();
    rows
}

/// `(can-i args, method, path, (content type, body))`.
type Req = (
    Vec<&'static str>,
    &'static str,
    String,
    Option<(&'static str, Value)>,
);

/// keel-lb's Services provider: every request it makes, with kubectl's can-i arguments, in an
/// order that creates before it reads.
fn lb_requests(lease_rv: &str) -> Vec<Req> {
    let svc = "/api/v1/namespaces/default/services/web";
    let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";
    let mut updated = lease("kube-system", "keel-lb");
    updated["metadata"]["resourceVersion"] = json!(lease_rv);
    updated["spec"]["holderIdentity"] = json!("lb2");
    vec![
        (
            vec!["list", "services", "-A"],
            "GET",
            "/api/v1/services".into(),
            None,
        ),
        (
            vec!["watch", "services", "-A"],
            "GET",
            "/api/v1/services?watch=true&timeoutSeconds=1".into(),
            None,
        ),
        (
            vec!["get", "services", "-n", "default"],
            "GET",
            svc.into(),
            None,
        ),
        (
            vec!["patch", "services", "-n", "default"],
            "PATCH",
            svc.into(),
            Some((
                MERGE,
                json!({"metadata": {"finalizers": ["service.kubernetes.io/load-balancer-cleanup"], "annotations": {"lb.keel.io/allocated-ips": "192.0.2.10"}}}),
            )),
        ),
        (
            vec!["patch", "services", "--subresource=status", "-n", "default"],
            "PATCH",
            format!("{svc}/status"),
            Some((
                MERGE,
                json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10", "ipMode": "VIP"}]}}}),
            )),
        ),
        (vec!["list", "nodes"], "GET", "/api/v1/nodes".into(), None),
        (
            vec!["watch", "nodes"],
            "GET",
            "/api/v1/nodes?watch=true&timeoutSeconds=1".into(),
            None,
        ),
        (
            vec!["list", "endpointslices.discovery.k8s.io", "-A"],
            "GET",
            "/apis/discovery.k8s.io/v1/endpointslices".into(),
            None,
        ),
        (
            vec!["watch", "endpointslices.discovery.k8s.io", "-A"],
            "GET",
            "/apis/discovery.k8s.io/v1/endpointslices?watch=true&timeoutSeconds=1".into(),
            None,
        ),
        (
            vec!["create", "events.events.k8s.io", "-n", "default"],
            "POST",
            "/apis/events.k8s.io/v1/namespaces/default/events".into(),
            Some((JSON, event("default", "web.1"))),
        ),
        (
            vec!["create", "events.events.k8s.io", "-n", "team"],
            "POST",
            "/apis/events.k8s.io/v1/namespaces/team/events".into(),
            Some((JSON, event("team", "web.2"))),
        ),
        (
            vec!["patch", "events.events.k8s.io", "-n", "default"],
            "PATCH",
            "/apis/events.k8s.io/v1/namespaces/default/events/web.1".into(),
            Some((
                MERGE,
                json!({"series": {"count": 2, "lastObservedTime": "2025-01-01T00:00:01.000000Z"}}),
            )),
        ),
        (
            vec!["create", "leases.coordination.k8s.io", "-n", "kube-system"],
            "POST",
            leases.into(),
            Some((JSON, lease("kube-system", "keel-lb"))),
        ),
        (
            vec!["get", "leases.coordination.k8s.io", "-n", "kube-system"],
            "GET",
            format!("{leases}/keel-lb"),
            None,
        ),
        (
            vec!["update", "leases.coordination.k8s.io", "-n", "kube-system"],
            "PUT",
            format!("{leases}/keel-lb"),
            Some((JSON, updated)),
        ),
    ]
}

/// What keel-lb must not be able to do (none of it is in the YAML).
fn lb_refused() -> Vec<Req> {
    let svc_body = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
                          "spec": {"ports": [{"port": 80}]}});
    vec![
        (
            vec!["delete", "services", "-n", "default"],
            "DELETE",
            "/api/v1/namespaces/default/services/web".into(),
            None,
        ),
        (
            vec!["update", "services", "-n", "default"],
            "PUT",
            "/api/v1/namespaces/default/services/web".into(),
            Some((JSON, svc_body.clone())),
        ),
        (
            vec![
                "update",
                "services",
                "--subresource=status",
                "-n",
                "default",
            ],
            "PUT",
            "/api/v1/namespaces/default/services/web/status".into(),
            Some((JSON, svc_body.clone())),
        ),
        (
            vec!["create", "services", "-n", "default"],
            "POST",
            "/api/v1/namespaces/default/services".into(),
            Some((JSON, svc_body)),
        ),
        (
            vec!["get", "secrets", "-n", "kube-system"],
            "GET",
            "/api/v1/namespaces/kube-system/secrets/s1".into(),
            None,
        ),
        (
            vec!["list", "secrets", "-A"],
            "GET",
            "/api/v1/secrets".into(),
            None,
        ),
        (
            vec!["list", "pods", "-A"],
            "GET",
            "/api/v1/pods".into(),
            None,
        ),
        (
            vec!["list", "pods", "-n", "default"],
            "GET",
            "/api/v1/namespaces/default/pods".into(),
            None,
        ),
        (vec!["get", "nodes"], "GET", "/api/v1/nodes/n1".into(), None),
        (
            vec!["delete", "nodes"],
            "DELETE",
            "/api/v1/nodes/n1".into(),
            None,
        ),
        (
            vec!["patch", "nodes"],
            "PATCH",
            "/api/v1/nodes/n1".into(),
            Some((MERGE, json!({"metadata": {"labels": {"x": "y"}}}))),
        ),
        (
            vec!["update", "leases.coordination.k8s.io", "-n", "default"],
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/default/leases/other".into(),
            Some((JSON, lease("default", "other"))),
        ),
        (
            vec!["create", "leases.coordination.k8s.io", "-n", "default"],
            "POST",
            "/apis/coordination.k8s.io/v1/namespaces/default/leases".into(),
            Some((JSON, lease("default", "mine"))),
        ),
        (
            vec!["delete", "leases.coordination.k8s.io", "-n", "kube-system"],
            "DELETE",
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/keel-lb".into(),
            None,
        ),
        // The YAML grants events.k8s.io/v1 only (kube's recorder), not core/v1 events.
        (
            vec!["create", "events", "-n", "default"],
            "POST",
            "/api/v1/namespaces/default/events".into(),
            Some((
                JSON,
                json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"}}),
            )),
        ),
        (
            vec!["delete", "events.events.k8s.io", "-n", "default"],
            "DELETE",
            "/apis/events.k8s.io/v1/namespaces/default/events/web.1".into(),
            None,
        ),
        (
            vec!["patch", "endpointslices.discovery.k8s.io", "-n", "default"],
            "PATCH",
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/web-1".into(),
            Some((MERGE, json!({}))),
        ),
        (
            vec![
                "create",
                "serviceaccounts",
                "--subresource=token",
                "-n",
                "kube-system",
            ],
            "POST",
            "/api/v1/namespaces/kube-system/serviceaccounts/keel-lb/token".into(),
            Some((
                JSON,
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest"}),
            )),
        ),
        (
            vec!["list", "clusterroles.rbac.authorization.k8s.io"],
            "GET",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles".into(),
            None,
        ),
        (
            vec![
                "create",
                "rolebindings.rbac.authorization.k8s.io",
                "-n",
                "kube-system",
            ],
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-system/rolebindings".into(),
            Some((JSON, json!({}))),
        ),
    ]
}

/// The cluster keel-lb runs against: a LoadBalancer Service, a node, a slice, secrets and leases
/// it must not touch.
async fn seed(env: &Env) {
    env.srv.put("/api/v1/nodes/n1", node_json("n1"));
    ok(&env.kubectl(&["create", "namespace", "team"]).await);
    ok(&env
        .kubectl(&["create", "service", "loadbalancer", "web", "--tcp=80:8080"])
        .await);
    env.srv.put(
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/web-1",
        json!({"metadata": {"namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "n1"}],
               "ports": [{"port": 8080, "protocol": "TCP"}]}),
    );
    env.srv.put(
        "/api/v1/namespaces/kube-system/secrets/s1",
        json!({"metadata": {"namespace": "kube-system"}, "data": {}}),
    );
    env.srv.put(
        "/apis/coordination.k8s.io/v1/namespaces/default/leases/other",
        lease("default", "other"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keel_lb_rbac_from_the_repository_is_enough_and_no_more() {
    for bin in [KUBECTL.as_str(), KUBECTL_OLD.as_str()] {
        let env = Env::start().await;
        seed(&env).await;
        let yaml = keel_lb_rbac();
        let out = ok(&env
            .kubectl_as(
                bin,
                &env.path("admin.kubeconfig"),
                &["apply", "-f", yaml.to_str().unwrap()],
            )
            .await);
        for o in [
            "serviceaccount/keel-lb created",
            "clusterrole.rbac.authorization.k8s.io/keel-lb created",
            "clusterrolebinding.rbac.authorization.k8s.io/keel-lb created",
            "role.rbac.authorization.k8s.io/keel-lb created",
            "rolebinding.rbac.authorization.k8s.io/keel-lb created",
        ] {
            assert!(out.contains(o), "{bin}: {out}");
        }
        let token = ok(&env
            .kubectl_as(
                bin,
                &env.path("admin.kubeconfig"),
                &["create", "token", "keel-lb", "-n", "kube-system"],
            )
            .await)
        .trim()
        .to_string();
        assert!(!token.is_empty());
        let lb = Id::token(&env, "keel-lb.kubeconfig", &token);

        // Enough: can-i says yes and the very request keel-lb makes succeeds.
        let mut lease_rv = String::new();
        for i in 0..lb_requests("").len() {
            let (args, method, path, body) = lb_requests(&lease_rv).swap_remove(i);
            assert!(can_i(&env, bin, &lb, &args).await, "{bin}: can-i {args:?}");
            let (code, out) = call(
                &env,
                &lb,
                method,
                &path,
                body.as_ref().map(|(c, b)| (*c, b)),
            )
            .await;
            assert!(
                (200..300).contains(&code),
                "{bin}: {method} {path} as keel-lb: {code} {out}"
            );
            if method == "POST" && path.contains("/leases") {
                let v: Value = serde_json::from_str(&out).unwrap();
                lease_rv = v["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_string();
            }
        }
        // kubectl sees the same as keel-lb.
        let out = ok(&env
            .kubectl_as(bin, &lb.kubeconfig, &["get", "services", "-A"])
            .await);
        assert!(out.contains("web") && out.contains("192.0.2.10"), "{out}");
        ok(&env.kubectl_as(bin, &lb.kubeconfig, &["get", "nodes"]).await);

        // No more: can-i says no and the request is refused with 403.
        for (args, method, path, body) in lb_refused() {
            assert!(
                !can_i(&env, bin, &lb, &args).await,
                "{bin}: can-i {args:?} said yes"
            );
            let (code, out) = call(
                &env,
                &lb,
                method,
                &path,
                body.as_ref().map(|(c, b)| (*c, b)),
            )
            .await;
            assert_eq!(code, 403, "{bin}: {method} {path} as keel-lb: {out}");
            let s: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(s["reason"], "Forbidden", "{out}");
            assert!(
                s["message"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("User \"{LB_USER}\" cannot")),
                "{out}"
            );
        }
        for args in [
            &["delete", "service", "web"][..],
            &["get", "pods", "-A"],
            &["get", "secrets", "-n", "kube-system"],
            &["get", "node", "n1"],
        ] {
            let e = err(&env.kubectl_as(bin, &lb.kubeconfig, args).await);
            assert!(
                e.contains("Error from server (Forbidden)"),
                "{bin} {args:?}: {e}"
            );
        }
        assert!(env
            .srv
            .get("/api/v1/namespaces/default/services/web")
            .is_some());
        assert!(env.srv.get("/api/v1/nodes/n1").is_some());

        // `can-i --list`: exactly the YAML's rules, plus what every authenticated user has.
        let nobody = Id::cert(&env, "nobody", &[]);
        for (ns, lease_row) in [("kube-system", true), ("default", false)] {
            let base = list_rows(&ok(&env
                .kubectl_as(
                    bin,
                    &nobody.kubeconfig,
                    &["auth", "can-i", "--list", "-n", ns],
                )
                .await));
            assert!(
                base.iter()
                    .any(|r| r.starts_with("selfsubjectaccessreviews.authorization.k8s.io")),
                "{base:?}"
            );
            let mut want = base.clone();
            want.extend(
                [
                    "services [] [] [get list watch patch]",
                    "services/status [] [] [patch]",
                    "nodes [] [] [list watch]",
                    "endpointslices.discovery.k8s.io [] [] [list watch]",
                    "events.events.k8s.io [] [] [create patch]",
                ]
                .map(String::from),
            );
            if lease_row {
                want.push("leases.coordination.k8s.io [] [] [get create update]".into());
            }
            want.sort();
            let got = list_rows(&ok(&env
                .kubectl_as(bin, &lb.kubeconfig, &["auth", "can-i", "--list", "-n", ns])
                .await));
            assert_eq!(got, want, "{bin} -n {ns}");
        }
    }
}

const SEMANTICS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: team-a}
---
apiVersion: v1
kind: Namespace
metadata: {name: team-b}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: bot, namespace: team-a}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: cm-reader, namespace: team-a}
rules:
  - {apiGroups: [""], resources: [configmaps], verbs: [get, list]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-cm, namespace: team-a}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: cm-reader}
subjects:
  - {kind: User, name: alice}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: secret-reader}
rules:
  - {apiGroups: [""], resources: [secrets], verbs: [get, list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: devs-secrets, namespace: team-b}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: secret-reader}
subjects:
  - {kind: Group, name: devs}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: cfg-only, namespace: team-a}
rules:
  - {apiGroups: [""], resources: [configmaps], resourceNames: [cfg], verbs: [get, list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: bot-cfg, namespace: team-a}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: cfg-only}
subjects:
  # No namespace: the binding's.
  - {kind: ServiceAccount, name: bot}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: carol-admin}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
subjects:
  - {kind: User, name: carol}
"#;

/// can-i and the real request agree, and both are `want`.
async fn check(env: &Env, who: &Id, can: &[&str], get: &str, want: bool) {
    assert_eq!(
        can_i(env, KUBECTL.as_str(), who, can).await,
        want,
        "can-i {can:?}"
    );
    let (code, out) = call(env, who, "GET", get, None).await;
    if want {
        assert_eq!(code, 200, "GET {get}: {out}");
    } else {
        assert_eq!(code, 403, "GET {get}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_bindings_follow_upstream_rbac_semantics() {
    let env = Env::start().await;
    let f = env.path("semantics.yaml");
    std::fs::write(&f, SEMANTICS).unwrap();
    ok(&env.kubectl(&["apply", "-f", f.to_str().unwrap()]).await);
    for ns in ["team-a", "team-b"] {
        for cm in ["cfg", "other"] {
            ok(&env
                .kubectl(&["create", "configmap", cm, "-n", ns, "--from-literal=k=v"])
                .await);
        }
        ok(&env
            .kubectl(&["create", "secret", "generic", "s", "-n", ns])
            .await);
    }

    // A Role + RoleBinding grants in its namespace only.
    let alice = Id::cert(&env, "alice", &[]);
    let cms = |ns: &str| format!("/api/v1/namespaces/{ns}/configmaps");
    check(
        &env,
        &alice,
        &["list", "configmaps", "-n", "team-a"],
        &cms("team-a"),
        true,
    )
    .await;
    check(
        &env,
        &alice,
        &["get", "configmaps/other", "-n", "team-a"],
        &format!("{}/other", cms("team-a")),
        true,
    )
    .await;
    check(
        &env,
        &alice,
        &["list", "configmaps", "-n", "team-b"],
        &cms("team-b"),
        false,
    )
    .await;
    check(
        &env,
        &alice,
        &["list", "configmaps", "-A"],
        "/api/v1/configmaps",
        false,
    )
    .await;
    check(
        &env,
        &alice,
        &["list", "secrets", "-n", "team-a"],
        "/api/v1/namespaces/team-a/secrets",
        false,
    )
    .await;
    let out = ok(&env
        .kubectl_as(
            KUBECTL.as_str(),
            &alice.kubeconfig,
            &["get", "cm", "-n", "team-a"],
        )
        .await);
    assert!(out.contains("cfg") && out.contains("other"), "{out}");

    // A RoleBinding to a ClusterRole grants in the binding's namespace only.
    let bob = Id::cert(&env, "bob", &["devs"]);
    let secrets = |ns: &str| format!("/api/v1/namespaces/{ns}/secrets");
    check(
        &env,
        &bob,
        &["list", "secrets", "-n", "team-b"],
        &secrets("team-b"),
        true,
    )
    .await;
    check(
        &env,
        &bob,
        &["get", "secrets/s", "-n", "team-b"],
        &format!("{}/s", secrets("team-b")),
        true,
    )
    .await;
    check(
        &env,
        &bob,
        &["list", "secrets", "-n", "team-a"],
        &secrets("team-a"),
        false,
    )
    .await;
    check(
        &env,
        &bob,
        &["list", "secrets", "-A"],
        "/api/v1/secrets",
        false,
    )
    .await;

    // resourceNames: get of that name only; a list only when it selects that name.
    let token = ok(&env
        .kubectl(&["create", "token", "bot", "-n", "team-a"])
        .await)
    .trim()
    .to_string();
    let bot = Id::token(&env, "bot.kubeconfig", &token);
    check(
        &env,
        &bot,
        &["get", "configmaps/cfg", "-n", "team-a"],
        &format!("{}/cfg", cms("team-a")),
        true,
    )
    .await;
    check(
        &env,
        &bot,
        &["get", "configmaps/other", "-n", "team-a"],
        &format!("{}/other", cms("team-a")),
        false,
    )
    .await;
    check(
        &env,
        &bot,
        &["list", "configmaps", "-n", "team-a"],
        &cms("team-a"),
        false,
    )
    .await;
    check(
        &env,
        &bot,
        &["get", "configmaps/cfg", "-n", "team-b"],
        &format!("{}/cfg", cms("team-b")),
        false,
    )
    .await;
    let (code, out) = call(
        &env,
        &bot,
        "GET",
        &format!("{}?fieldSelector=metadata.name%3Dcfg", cms("team-a")),
        None,
    )
    .await;
    assert_eq!(code, 200, "{out}");
    let out = ok(&env
        .kubectl_as(
            KUBECTL.as_str(),
            &bot.kubeconfig,
            &["get", "cm", "cfg", "-n", "team-a", "-o", "name"],
        )
        .await);
    assert_eq!(out.trim(), "configmap/cfg");
    let list = ok(&env
        .kubectl_as(
            KUBECTL.as_str(),
            &bot.kubeconfig,
            &["auth", "can-i", "--list", "-n", "team-a"],
        )
        .await);
    assert!(
        list_rows(&list).contains(&"configmaps [] [cfg] [get list watch]".to_string()),
        "{list}"
    );

    // A binding may refer to the fixed bootstrap roles (cluster-admin).
    let carol = Id::cert(&env, "carol", &[]);
    check(
        &env,
        &carol,
        &["list", "secrets", "-A"],
        "/api/v1/secrets",
        true,
    )
    .await;
    check(&env, &carol, &["get", "/healthz"], "/healthz", true).await;

    // Deleting a binding revokes at once; so does deleting the role it refers to, and the
    // refusal names the missing role as rbac.go does.
    ok(&env
        .kubectl(&["delete", "rolebinding", "alice-cm", "-n", "team-a"])
        .await);
    check(
        &env,
        &alice,
        &["list", "configmaps", "-n", "team-a"],
        &cms("team-a"),
        false,
    )
    .await;
    ok(&env
        .kubectl(&["delete", "clusterrole", "secret-reader"])
        .await);
    let (code, out) = call(&env, &bob, "GET", &secrets("team-b"), None).await;
    assert_eq!(code, 403, "{out}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        s["message"],
        "secrets is forbidden: User \"bob\" cannot list resource \"secrets\" in API group \"\" in the namespace \"team-b\": RBAC: clusterrole.rbac.authorization.k8s.io \"secret-reader\" not found"
    );
    let o = env
        .kubectl_as(
            KUBECTL.as_str(),
            &bob.kubeconfig,
            &["auth", "can-i", "list", "secrets", "-n", "team-b"],
        )
        .await;
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "no - RBAC: clusterrole.rbac.authorization.k8s.io \"secret-reader\" not found"
    );
    // Recreated, it applies again without touching the binding.
    ok(&env
        .kubectl(&[
            "create",
            "clusterrole",
            "secret-reader",
            "--verb=list",
            "--resource=secrets",
        ])
        .await);
    check(
        &env,
        &bob,
        &["list", "secrets", "-n", "team-b"],
        &secrets("team-b"),
        true,
    )
    .await;

    // Validation as pkg/apis/rbac/validation: roleRef kinds, subjects, immutable roleRef.
    let bad = env.path("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: x}\nroleRef: {kind: Role, name: cm-reader}\nsubjects: [{kind: ServiceAccount, name: bot}]\n",
    )
    .unwrap();
    let e = err(&env.kubectl(&["create", "-f", bad.to_str().unwrap()]).await);
    assert!(
        e.contains("roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\"")
            && e.contains("subjects[0].namespace: Required value"),
        "{e}"
    );
    let e = err(&env
        .kubectl(&[
            "patch",
            "rolebinding",
            "bot-cfg",
            "-n",
            "team-a",
            "--type=merge",
            "-p",
            r#"{"roleRef":{"name":"cm-reader"}}"#,
        ])
        .await);
    assert!(e.contains("roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"Role\", Name:\"cm-reader\"}: cannot change roleRef"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_authenticate_as_the_service_account() {
    let env = Env::start().await;
    // The service-account controller's `default` in every namespace.
    let out = ok(&env
        .kubectl(&["get", "serviceaccounts", "-A", "-o", "name"])
        .await);
    assert_eq!(out.matches("serviceaccount/default").count(), 4, "{out}");
    ok(&env.kubectl(&["create", "namespace", "team"]).await);
    ok(&env
        .kubectl(&["get", "serviceaccount", "default", "-n", "team"])
        .await);

    let yaml = keel_lb_rbac();
    ok(&env.kubectl(&["apply", "-f", yaml.to_str().unwrap()]).await);
    let sa: Value = serde_json::from_str(&ok(&env
        .kubectl(&["get", "sa", "keel-lb", "-n", "kube-system", "-o", "json"])
        .await))
    .unwrap();
    let token = ok(&env
        .kubectl(&["create", "token", "keel-lb", "-n", "kube-system"])
        .await)
    .trim()
    .to_string();
    let lb = Id::token(&env, "keel-lb.kubeconfig", &token);
    let out = ok(&env
        .kubectl_as(KUBECTL.as_str(), &lb.kubeconfig, &["auth", "whoami"])
        .await);
    assert!(out.contains(&format!("Username    {LB_USER}")), "{out}");
    assert!(
        out.contains("Groups      [system:serviceaccounts system:serviceaccounts:kube-system system:authenticated]"),
        "{out}"
    );
    let who: Value = serde_json::from_str(&ok(&env
        .kubectl_as(
            KUBECTL.as_str(),
            &lb.kubeconfig,
            &["auth", "whoami", "-o", "json"],
        )
        .await))
    .unwrap();
    assert_eq!(
        who["status"]["userInfo"],
        json!({"username": LB_USER, "uid": sa["metadata"]["uid"],
               "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]})
    );

    // The TokenRequest as upstream answers it: expirationSeconds honoured, default audience.
    let tr: Value = serde_json::from_str(&ok(&env
        .kubectl(&[
            "create",
            "token",
            "keel-lb",
            "-n",
            "kube-system",
            "--duration",
            "2h",
            "-o",
            "json",
        ])
        .await))
    .unwrap();
    assert_eq!(tr["kind"], "TokenRequest");
    assert_eq!(tr["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(tr["spec"]["expirationSeconds"], 7200);
    assert_eq!(
        tr["spec"]["audiences"],
        json!(["https://kubernetes.default.svc.cluster.local"])
    );
    let exp = tr["status"]["expirationTimestamp"].as_str().unwrap();
    let created = tr["metadata"]["creationTimestamp"].as_str().unwrap();
    let t = |s: &str| keel_test_apiserver::clock::parse_rfc3339(s).unwrap();
    assert_eq!(
        t(exp).duration_since(t(created)).unwrap(),
        Duration::from_secs(7200),
        "{tr}"
    );
    // The default lifetime is an hour.
    let tr: Value = serde_json::from_str(&ok(&env
        .kubectl(&[
            "create",
            "token",
            "keel-lb",
            "-n",
            "kube-system",
            "-o",
            "json",
        ])
        .await))
    .unwrap();
    assert_eq!(tr["spec"]["expirationSeconds"], 3600);

    // Errors: a missing service account is 404, a short lifetime 422.
    env.srv.clear_request_log();
    let e = err(&env
        .kubectl(&["create", "token", "nope", "-n", "kube-system"])
        .await);
    assert!(e.contains("serviceaccounts \"nope\" not found"), "{e}");
    assert!(env.srv.request_log().iter().any(|r| r.path
        == "/api/v1/namespaces/kube-system/serviceaccounts/nope/token"
        && r.status == 404));
    let e = err(&env
        .kubectl(&[
            "create",
            "token",
            "keel-lb",
            "-n",
            "kube-system",
            "--duration",
            "5m",
        ])
        .await);
    assert!(e.contains("spec.expirationSeconds: Invalid value: 300: may not specify a duration less than 10 minutes"), "{e}");

    // A token for another audience does not authenticate here.
    let other = ok(&env
        .kubectl(&[
            "create",
            "token",
            "keel-lb",
            "-n",
            "kube-system",
            "--audience",
            "vault",
        ])
        .await)
    .trim()
    .to_string();
    let (code, _) = call(
        &env,
        &Id::token(&env, "other.kubeconfig", &other),
        "GET",
        "/api",
        None,
    )
    .await;
    assert_eq!(code, 401);

    // Deleting the service account invalidates its tokens; a new one with the same name does not
    // bring them back (the uid differs).
    ok(&env
        .kubectl(&["delete", "sa", "keel-lb", "-n", "kube-system"])
        .await);
    let e = err(&env
        .kubectl_as(KUBECTL.as_str(), &lb.kubeconfig, &["auth", "whoami"])
        .await);
    assert!(e.contains("Unauthorized"), "{e}");
    ok(&env
        .kubectl(&["create", "sa", "keel-lb", "-n", "kube-system"])
        .await);
    let (code, _) = call(&env, &lb, "GET", "/api", None).await;
    assert_eq!(code, 401);
    // A kubelet's TokenRequests: only for pods bound to it, bound to the pod (Node authorizer and
    // NodeRestriction).
    ok(&env.kubectl(&["create", "sa", "app", "-n", "default"]).await);
    let mut pod = ready_pod("web", "n1", json!({"app": "web"}));
    pod["spec"]["serviceAccountName"] = json!("app");
    env.srv.put("/api/v1/namespaces/default/pods/web", pod);
    let pod_uid = env.srv.get("/api/v1/namespaces/default/pods/web").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let path = "/api/v1/namespaces/default/serviceaccounts/app/token";
    let tr = |bound: Value| {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"audiences": [], "expirationSeconds": 3607, "boundObjectRef": bound}})
    };
    let n1 = Id::cert(&env, "system:node:n1", &["system:nodes"]);
    let n2 = Id::cert(&env, "system:node:n2", &["system:nodes"]);
    let (code, out) = call(&env, &n1, "POST", path, Some((JSON, &tr(Value::Null)))).await;
    assert_eq!(code, 403, "{out}");
    assert!(
        out.contains("node requested token not bound to a pod"),
        "{out}"
    );
    let bound = json!({"apiVersion": "v1", "kind": "Pod", "name": "web", "uid": pod_uid});
    let (code, out) = call(&env, &n2, "POST", path, Some((JSON, &tr(bound.clone())))).await;
    assert_eq!(code, 403, "{out}");
    let (code, out) = call(&env, &n1, "POST", path, Some((JSON, &tr(bound)))).await;
    assert_eq!(code, 201, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let app = Id::token(
        &env,
        "app.kubeconfig",
        v["status"]["token"].as_str().unwrap(),
    );
    let (code, out) = call(
        &env,
        &app,
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        Some((
            JSON,
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
        )),
    )
    .await;
    assert_eq!(code, 201, "{out}");
    assert!(out.contains("system:serviceaccount:default:app"), "{out}");
    // A bound token dies with its pod.
    assert!(env.srv.delete("/api/v1/namespaces/default/pods/web"));
    let (code, _) = call(&env, &app, "GET", "/api", None).await;
    assert_eq!(code, 401);

    // The default service account comes back when deleted.
    ok(&env
        .kubectl(&["delete", "sa", "default", "-n", "team"])
        .await);
    ok(&env.kubectl(&["get", "sa", "default", "-n", "team"]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_kinds_have_discovery_openapi_and_tables() {
    let env = Env::start().await;
    for bin in [KUBECTL.as_str(), KUBECTL_OLD.as_str()] {
        let out = ok(&env
            .kubectl_as(
                bin,
                &env.path("admin.kubeconfig"),
                &[
                    "api-resources",
                    "--api-group=rbac.authorization.k8s.io",
                    "-o",
                    "name",
                ],
            )
            .await);
        let mut names: Vec<&str> = out.lines().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "clusterrolebindings.rbac.authorization.k8s.io",
                "clusterroles.rbac.authorization.k8s.io",
                "rolebindings.rbac.authorization.k8s.io",
                "roles.rbac.authorization.k8s.io"
            ]
        );
        let out = ok(&env
            .kubectl_as(
                bin,
                &env.path("admin.kubeconfig"),
                &["explain", "clusterrolebinding.roleRef"],
            )
            .await);
        assert!(out.contains("RoleRef"), "{out}");
    }
    let (code, out) = env.curl_admin(&[], "/api/v1").await;
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&out).unwrap();
    let find = |n: &str| {
        v["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} not in /api/v1"))
    };
    assert_eq!(find("serviceaccounts")["shortNames"], json!(["sa"]));
    let token = find("serviceaccounts/token");
    assert_eq!(
        (
            token["group"].clone(),
            token["kind"].clone(),
            token["verbs"].clone()
        ),
        (
            json!("authentication.k8s.io"),
            json!("TokenRequest"),
            json!(["create"])
        )
    );
    let (code, out) = env
        .curl_admin(&[], "/openapi/v3/apis/rbac.authorization.k8s.io/v1")
        .await;
    assert_eq!(code, 200);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert!(doc["paths"]
        .get("/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings/{name}")
        .is_some());
    assert_eq!(
        doc["components"]["schemas"]["io.k8s.api.rbac.v1.PolicyRule"]["properties"]["verbs"]
            ["x-kubernetes-list-type"],
        "atomic"
    );
    let (_, out) = env.curl_admin(&[], "/openapi/v3/api/v1").await;
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        doc["paths"]["/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"]["post"]
            ["x-kubernetes-group-version-kind"],
        json!({"group": "authentication.k8s.io", "kind": "TokenRequest", "version": "v1"})
    );
    // Tables as upstream's printers.
    let yaml = keel_lb_rbac();
    ok(&env.kubectl(&["apply", "-f", yaml.to_str().unwrap()]).await);
    let out = ok(&env
        .kubectl(&["get", "clusterrolebinding", "keel-lb", "-o", "wide"])
        .await);
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"]
    );
    assert!(
        out.contains("ClusterRole/keel-lb") && out.contains("kube-system/keel-lb"),
        "{out}"
    );
    let out = ok(&env.kubectl(&["get", "role", "-n", "kube-system"]).await);
    assert!(
        out.starts_with("NAME") && out.contains("CREATED AT"),
        "{out}"
    );
    let out = ok(&env.kubectl(&["get", "sa", "-n", "kube-system"]).await);
    assert!(out.contains("SECRETS") && out.contains("keel-lb"), "{out}");
}
