//! `--dry-run=server` (`dryRun=All`): the answer of the real write, nothing persisted, no
//! resourceVersion consumed, no watch event, no controller side effect.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn seed(env: &Env) {
    env.srv.put("/api/v1/nodes/n1", node_json("n1"));
    env.srv.put(
        "/api/v1/namespaces/default/pods/web",
        ready_pod("web", "n1", json!({"app": "web"})),
    );
    env.srv.put(
        "/api/v1/namespaces/default/pods/db",
        ready_pod("db", "n1", json!({"app": "db"})),
    );
    env.srv.put(
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets/db",
        json!({"metadata": {"namespace": "default"},
               "spec": {"minAvailable": 0, "selector": {"matchLabels": {"app": "db"}}}}),
    );
}

async fn list_rv(env: &Env) -> String {
    // The store's revision: a list answers with it.
    let (_, pods) = env.curl_admin(&[], "/api/v1/namespaces/default/pods").await;
    let v: Value = serde_json::from_str(&pods).unwrap();
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Everything the store holds that dry runs could touch, to compare before and after.
fn snapshot(env: &Env) -> Vec<Option<Value>> {
    [
        "/api/v1/nodes/n1",
        "/api/v1/namespaces/default/pods/web",
        "/api/v1/namespaces/default/pods/db",
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets/db",
        "/api/v1/namespaces/default/configmaps/cm1",
        "/api/v1/namespaces/dry",
        "/apis/certificates.k8s.io/v1/certificatesigningrequests/csr-dry",
    ]
    .iter()
    .map(|p| env.srv.get(p))
    .collect()
}

async fn dry_runs_with(bin: &str) {
    let env = Env::start().await;
    seed(&env);
    let kc = env.path("admin.kubeconfig");
    let before = snapshot(&env);
    let rv0 = list_rv(&env).await;
    let k = |args: &'static [&'static str]| env.kubectl_as(bin, &kc, args);

    // create: the object as created (uid, creationTimestamp) without a resourceVersion.
    let out = ok(&k(&[
        "create",
        "namespace",
        "dry",
        "--dry-run=server",
        "-o",
        "json",
    ])
    .await);
    let ns: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ns["metadata"]["name"], "dry");
    assert!(
        ns["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty()),
        "{ns}"
    );
    assert!(ns["metadata"]["creationTimestamp"].is_string(), "{ns}");
    assert!(ns["metadata"].get("resourceVersion").is_none(), "{ns}");
    assert_eq!(ns["status"]["phase"], "Active");

    // apply (client-side): creates and patches, both dry.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "cm1", "namespace": "default"}, "data": {"a": "1"}});
    std::fs::write(env.path("cm.json"), cm.to_string()).unwrap();
    let f = env.path("cm.json").display().to_string();
    let o = env
        .kubectl_as(
            bin,
            &kc,
            &["apply", "--validate=false", "--dry-run=server", "-f", &f],
        )
        .await;
    assert!(ok(&o).contains("configmap/cm1 created (server dry run)"));
    let node_patch = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {"applied": "yes"}}});
    std::fs::write(env.path("node.json"), node_patch.to_string()).unwrap();
    let nf = env.path("node.json").display().to_string();
    let o = env
        .kubectl_as(
            bin,
            &kc,
            &["apply", "--validate=false", "--dry-run=server", "-f", &nf],
        )
        .await;
    assert!(
        ok(&o).contains("node/n1 configured (server dry run)"),
        "{o:?}"
    );
    // apply --server-side
    let o = env
        .kubectl_as(
            bin,
            &kc,
            &[
                "apply",
                "--server-side",
                "--validate=false",
                "--dry-run=server",
                "-f",
                &nf,
                "-o",
                "json",
            ],
        )
        .await;
    let n: Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(
        n["metadata"]["labels"]["applied"], "yes",
        "the answer shows the change"
    );
    let stored = env.srv.get("/api/v1/nodes/n1").unwrap();
    assert_eq!(
        n["metadata"]["resourceVersion"], stored["metadata"]["resourceVersion"],
        "the answer keeps the stored resourceVersion"
    );
    // label, patch
    let o = ok(&k(&["label", "node", "n1", "pool=blue", "--dry-run=server"]).await);
    assert!(o.contains("node/n1 labeled (server dry run)"), "{o}");
    let o = ok(&k(&[
        "patch",
        "node",
        "n1",
        "-p",
        r#"{"spec":{"unschedulable":true}}"#,
        "--dry-run=server",
        "-o",
        "json",
    ])
    .await);
    let n: Value = serde_json::from_str(&o).unwrap();
    assert_eq!(n["spec"]["unschedulable"], true);
    // delete
    let o = ok(&k(&["delete", "pod", "web", "--dry-run=server"]).await);
    assert!(o.contains("pod \"web\" deleted (server dry run)"), "{o}");
    let o = ok(&k(&["delete", "pods", "--all", "--dry-run=server"]).await);
    assert!(o.contains("(server dry run)"), "{o}");
    // drain: cordon and evictions, dry.
    let o = env
        .kubectl_as(
            bin,
            &kc,
            &[
                "drain",
                "n1",
                "--dry-run=server",
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                "--force",
            ],
        )
        .await;
    let out = ok(&o);
    assert!(out.contains("node/n1 cordoned (server dry run)"), "{out}");
    assert!(
        out.contains("evicting pod default/db (server dry run)")
            || out.contains("pod/db evicted (server dry run)"),
        "{out}"
    );

    // Nothing changed: objects, revision, history (a watch from before sees no event), controllers
    // (PDB status unchanged: eviction did not consume a disruption).
    assert_eq!(snapshot(&env), before);
    assert_eq!(list_rv(&env).await, rv0);
    for res in [
        "/api/v1/nodes",
        "/api/v1/pods",
        "/api/v1/namespaces",
        "/api/v1/configmaps",
    ] {
        let (code, body) = env
            .curl_admin(
                &[],
                &format!("{res}?watch=1&resourceVersion={rv0}&timeoutSeconds=1"),
            )
            .await;
        assert_eq!(code, 200);
        assert!(body.trim().is_empty(), "{res}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_current_server_dry_runs_change_nothing() {
    dry_runs_with(KUBECTL.as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_127_server_dry_runs_change_nothing() {
    dry_runs_with(KUBECTL_OLD.as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_watch_sees_no_event_from_dry_runs_but_sees_the_real_write() {
    let env = Env::start().await;
    seed(&env);
    let kc = env.path("admin.kubeconfig");
    let mut w = tokio::process::Command::new(KUBECTL.as_str());
    w.env("HOME", env.dir.path())
        .args([
            "--kubeconfig",
            kc.to_str().unwrap(),
            "get",
            "nodes",
            "--watch-only",
            "-o",
            "name",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = w.spawn().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    ok(&env
        .kubectl(&["label", "node", "n1", "dry=1", "--dry-run=server"])
        .await);
    ok(&env
        .kubectl(&["annotate", "node", "n1", "dry=1", "--dry-run=server"])
        .await);
    ok(&env
        .kubectl(&["delete", "node", "n1", "--dry-run=server"])
        .await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    ok(&env.kubectl(&["label", "node", "n1", "real=1"]).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut child = child;
    let _ = child.start_kill();
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        lines,
        vec!["node/n1".to_string()],
        "only the real label is an event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_are_validated_admitted_and_preconditioned_like_real_writes() {
    let env = Env::start().await;
    seed(&env);
    env.srv.put("/api/v1/nodes/n2", node_json("n2"));
    // Validation.
    let (code, body) = env
        .curl_admin(
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data",
                r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}}"#,
            ],
            "/api/v1/namespaces/default/configmaps?dryRun=All",
        )
        .await;
    assert_eq!(code, 422, "{body}");
    // Already exists.
    let (code, _) = env
        .curl_admin(
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data",
                r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"}}"#,
            ],
            "/api/v1/nodes?dryRun=All",
        )
        .await;
    assert_eq!(code, 409);
    // resourceVersion precondition on update.
    let mut n = env.srv.get("/api/v1/nodes/n1").unwrap();
    n["metadata"]["resourceVersion"] = json!("1");
    let body = n.to_string();
    let (code, out) = env
        .curl_admin(
            &[
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/json",
                "--data",
                &body,
            ],
            "/api/v1/nodes/n1?dryRun=All",
        )
        .await;
    assert_eq!(code, 409, "{out}");
    assert!(out.contains("the object has been modified"), "{out}");
    // Delete preconditions.
    let (code, out) = env
        .curl_admin(
            &[
                "-X",
                "DELETE",
                "-H",
                "Content-Type: application/json",
                "--data",
                r#"{"dryRun":["All"],"preconditions":{"uid":"nope"}}"#,
            ],
            "/api/v1/nodes/n1",
        )
        .await;
    assert_eq!(code, 409, "{out}");
    // NodeRestriction: a node may not label another node, dry or not.
    let kc = env.path("node.kubeconfig");
    env.srv
        .write_cert_kubeconfig(&kc, "system:node:n1", &["system:nodes"])
        .unwrap();
    // kubectl reads the object before patching it, which the Node authorizer refuses for n2, so the
    // patch goes by curl.
    let (cert, key) = env
        .srv
        .issue_client_cert(
            "system:node:n1",
            &["system:nodes"],
            Duration::from_secs(3600),
        )
        .unwrap();
    std::fs::write(env.path("n1.crt"), cert).unwrap();
    std::fs::write(env.path("n1.key"), key).unwrap();
    let (crt, key) = (
        env.path("n1.crt").display().to_string(),
        env.path("n1.key").display().to_string(),
    );
    let (code, out) = env
        .curl(
            &[
                "--cert",
                &crt,
                "--key",
                &key,
                "-X",
                "PATCH",
                "-H",
                "Content-Type: application/merge-patch+json",
                "--data",
                r#"{"metadata":{"labels":{"x":"y"}}}"#,
            ],
            "/api/v1/nodes/n2?dryRun=All",
        )
        .await;
    assert_eq!(code, 403, "{out}");
    assert!(
        out.contains("node \\\"n1\\\" is not allowed to modify node \\\"n2\\\""),
        "{out}"
    );
    for bin in [KUBECTL.as_str(), KUBECTL_OLD.as_str()] {
        let o = ok(&env
            .kubectl_as(
                bin,
                &kc,
                &["annotate", "node", "n1", "x=y", "--dry-run=server"],
            )
            .await);
        assert!(o.contains("(server dry run)"), "{o}");
        let e = err(&env
            .kubectl_as(
                bin,
                &kc,
                &[
                    "label",
                    "node",
                    "n1",
                    "node-restriction.kubernetes.io/x=y",
                    "--dry-run=server",
                ],
            )
            .await);
        assert!(
            e.contains("is not allowed to modify labels: node-restriction.kubernetes.io/x"),
            "{e}"
        );
    }
    assert!(env.srv.get("/api/v1/nodes/n1").unwrap()["metadata"]
        .get("annotations")
        .is_none());
    // A dry-run CSR is not approved or signed (no controller runs), and is not stored.
    let pem = csr_pem("system:node:n1", &["system:nodes"], None);
    let csr = csr_object("csr-dry", &pem, &["digital signature", "client auth"]).to_string();
    let (code, out) = env
        .curl_admin(
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data",
                &csr,
            ],
            "/apis/certificates.k8s.io/v1/certificatesigningrequests?dryRun=All",
        )
        .await;
    assert_eq!(code, 201, "{out}");
    let c: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(c["spec"]["username"], "kubernetes-admin");
    assert!(c["status"].get("certificate").is_none(), "{c}");
    assert!(env
        .srv
        .get("/apis/certificates.k8s.io/v1/certificatesigningrequests/csr-dry")
        .is_none());
    // Eviction dry run: 201, pod stays, PDB budget untouched.
    let pdb_before = env
        .srv
        .get("/apis/policy/v1/namespaces/default/poddisruptionbudgets/db");
    let (code, out) = env
        .curl_admin(
            &["-X", "POST", "-H", "Content-Type: application/json", "--data",
              r#"{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"db"},"deleteOptions":{"dryRun":["All"]}}"#],
            "/api/v1/namespaces/default/pods/db/eviction",
        )
        .await;
    assert_eq!(code, 201, "{out}");
    assert!(env.srv.get("/api/v1/namespaces/default/pods/db").is_some());
    assert_eq!(
        env.srv
            .get("/apis/policy/v1/namespaces/default/poddisruptionbudgets/db"),
        pdb_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_dry_run_values_are_rejected_as_invalid_options() {
    let env = Env::start().await;
    seed(&env);
    let (code, out) = env
        .curl_admin(
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data",
                r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}"#,
            ],
            "/api/v1/namespaces/default/configmaps?dryRun=Foo",
        )
        .await;
    assert_eq!(code, 422, "{out}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        s,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "CreateOptions.meta.k8s.io \"\" is invalid: dryRun: Unsupported value: []string{\"Foo\"}: supported values: \"All\"",
               "reason": "Invalid", "code": 422,
               "details": {"group": "meta.k8s.io", "kind": "CreateOptions", "causes": [
                   {"reason": "FieldValueNotSupported", "message": "Unsupported value: []string{\"Foo\"}: supported values: \"All\"", "field": "dryRun"}]}})
    );
    assert!(env
        .srv
        .get("/api/v1/namespaces/default/configmaps/x")
        .is_none());
    let (code, out) = env
        .curl_admin(
            &[
                "-X",
                "PATCH",
                "-H",
                "Content-Type: application/merge-patch+json",
                "--data",
                "{}",
            ],
            "/api/v1/nodes/n1?dryRun=true",
        )
        .await;
    assert_eq!(code, 422, "{out}");
    assert!(out.contains("PatchOptions.meta.k8s.io"), "{out}");
    let (code, out) = env
        .curl_admin(
            &[
                "-X",
                "DELETE",
                "-H",
                "Content-Type: application/json",
                "--data",
                r#"{"dryRun":["Nope"]}"#,
            ],
            "/api/v1/namespaces/default/pods/web",
        )
        .await;
    assert_eq!(code, 422, "{out}");
    assert!(out.contains("DeleteOptions.meta.k8s.io"), "{out}");
    assert!(env.srv.get("/api/v1/namespaces/default/pods/web").is_some());
}
