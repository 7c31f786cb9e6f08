//! kubectl (several minors) as the independent client: what it does against this server must work
//! as against a real API server.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

async fn node_lifecycle_with(bin: &str) {
    let env = Env::start().await;
    let kc = env.path("admin.kubeconfig");
    env.srv.put("/api/v1/nodes/n1", node_json("n1"));

    let out = ok(&env.kubectl_as(bin, &kc, &["get", "nodes"]).await);
    assert!(
        out.contains("n1") && out.contains("Ready") && out.contains("v1.33.0"),
        "{out}"
    );
    let j: Value = serde_json::from_str(&ok(&env
        .kubectl_as(bin, &kc, &["get", "nodes", "-o", "json"])
        .await))
    .unwrap();
    assert_eq!(j["kind"], "List");
    assert_eq!(j["items"][0]["metadata"]["name"], "n1");

    ok(&env
        .kubectl_as(bin, &kc, &["label", "node", "n1", "pool=blue"])
        .await);
    ok(&env
        .kubectl_as(
            bin,
            &kc,
            &["taint", "node", "n1", "dedicated=infra:NoSchedule"],
        )
        .await);
    ok(&env.kubectl_as(bin, &kc, &["cordon", "n1"]).await);
    let n = env.srv.get("/api/v1/nodes/n1").unwrap();
    assert_eq!(n["metadata"]["labels"]["pool"], "blue");
    assert_eq!(
        n["spec"]["taints"],
        json!([{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}])
    );
    assert_eq!(n["spec"]["unschedulable"], true);
    // Status survives spec patches (status is only written through nodes/status).
    assert_eq!(n["status"]["conditions"][0]["type"], "Ready");

    let out = ok(&env.kubectl_as(bin, &kc, &["describe", "node", "n1"]).await);
    assert!(out.contains("dedicated=infra:NoSchedule"), "{out}");
    assert!(out.contains("Unschedulable:      true"), "{out}");
    assert!(out.contains("pool=blue"), "{out}");

    ok(&env.kubectl_as(bin, &kc, &["uncordon", "n1"]).await);
    ok(&env
        .kubectl_as(bin, &kc, &["taint", "node", "n1", "dedicated-"])
        .await);
    ok(&env
        .kubectl_as(bin, &kc, &["label", "node", "n1", "pool-"])
        .await);
    let n = env.srv.get("/api/v1/nodes/n1").unwrap();
    assert!(
        n["spec"]
            .get("taints")
            .is_none_or(|t| t.as_array().is_some_and(|a| a.is_empty())),
        "{n}"
    );
    assert!(n["spec"].get("unschedulable").is_none_or(|u| u == false));
    assert!(n["metadata"]["labels"].get("pool").is_none());

    let out = ok(&env.kubectl_as(bin, &kc, &["delete", "node", "n1"]).await);
    assert!(out.contains("\"n1\" deleted"), "{out}");
    assert!(env.srv.get("/api/v1/nodes/n1").is_none());
    let e = err(&env.kubectl_as(bin, &kc, &["get", "node", "n1"]).await);
    assert!(
        e.contains("Error from server (NotFound): nodes \"n1\" not found"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_current_gets_labels_taints_cordons_describes_and_deletes_nodes() {
    node_lifecycle_with(KUBECTL.as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_oldest_gets_labels_taints_cordons_describes_and_deletes_nodes() {
    node_lifecycle_with(KUBECTL_OLD.as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_newest_gets_labels_taints_cordons_describes_and_deletes_nodes() {
    node_lifecycle_with(KUBECTL_NEW.as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drain_is_refused_by_pdb_with_429_then_evicts() {
    let env = Env::start().await;
    env.srv.put("/api/v1/nodes/n1", node_json("n1"));
    env.srv.put("/api/v1/nodes/n2", node_json("n2"));
    env.srv.put(
        "/api/v1/namespaces/default/pods/web-1",
        ready_pod("web-1", "n1", json!({"app": "web"})),
    );
    env.srv.put(
        "/api/v1/namespaces/default/pods/other",
        ready_pod("other", "n1", json!({"app": "other"})),
    );
    env.srv.put(
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets/web",
        json!({"spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}}),
    );
    let pdb = env
        .srv
        .get("/apis/policy/v1/namespaces/default/poddisruptionbudgets/web")
        .unwrap();
    assert_eq!(pdb["status"]["disruptionsAllowed"], 0);

    let kc = env.path("admin.kubeconfig");
    let drain = {
        let kc = kc.clone();
        let home = env.dir.path().to_path_buf();
        tokio::spawn(async move {
            let c = tokio::process::Command::new(KUBECTL.as_str())
                .env("HOME", home)
                .arg("--kubeconfig")
                .arg(kc)
                .args([
                    "drain",
                    "n1",
                    "--ignore-daemonsets",
                    "--force",
                    "--timeout=60s",
                ])
                .kill_on_drop(true)
                .output();
            tokio::time::timeout(Duration::from_secs(90), c)
                .await
                .unwrap()
                .unwrap()
        })
    };
    // The PDB refuses the eviction of web-1 with 429 (kubectl retries every 5 s).
    wait_for(Duration::from_secs(30), || {
        env.srv
            .request_log()
            .iter()
            .any(|r| r.path.ends_with("/pods/web-1/eviction") && r.status == 429)
            .then_some(())
    })
    .await;
    assert!(env
        .srv
        .get("/api/v1/namespaces/default/pods/web-1")
        .is_some());
    assert!(
        env.srv
            .get("/api/v1/namespaces/default/pods/other")
            .is_none(),
        "a pod without PDB is evicted at once"
    );
    // A second healthy replica elsewhere lets the budget allow one disruption.
    env.srv.put(
        "/api/v1/namespaces/default/pods/web-2",
        ready_pod("web-2", "n2", json!({"app": "web"})),
    );
    let out = drain.await.unwrap();
    let stdout = ok(&out);
    assert!(stdout.contains("node/n1 drained"), "{stdout}");
    assert!(env
        .srv
        .get("/api/v1/namespaces/default/pods/web-1")
        .is_none());
    assert!(env
        .srv
        .get("/api/v1/namespaces/default/pods/web-2")
        .is_some());
    let n = env.srv.get("/api/v1/nodes/n1").unwrap();
    assert_eq!(n["spec"]["unschedulable"], true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_prints_changes() {
    let env = Env::start().await;
    env.srv.put("/api/v1/nodes/w1", node_json("w1"));
    let kc = env.path("admin.kubeconfig");
    let home = env.dir.path().to_path_buf();
    let watch = tokio::spawn(async move {
        let c = tokio::process::Command::new(KUBECTL.as_str())
            .env("HOME", home)
            .arg("--kubeconfig")
            .arg(kc)
            .args([
                "get",
                "nodes",
                "--watch",
                "--request-timeout=4s",
                "-o",
                "name",
            ])
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .unwrap()
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    env.srv.put("/api/v1/nodes/w2", node_json("w2"));
    let out = watch.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("node/w1") && stdout.contains("node/w2"),
        "stdout={stdout} stderr={}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_certificate_approve_and_deny() {
    let env = Env::start().await;
    env.srv.set_approve_csrs(false);
    env.srv
        .set_csr_policy(keel_test_apiserver::CsrPolicy::Ignore);
    // Serving CSRs are never auto-approved; an admin approves one, then denies another.
    for name in ["a", "d"] {
        let pem = csr_pem("system:node:n1", &["system:nodes"], None);
        let mut o = csr_object(name, &pem, &["digital signature", "client auth"]);
        o["spec"]["signerName"] = json!("kubernetes.io/kube-apiserver-client");
        std::fs::write(env.path(&format!("{name}.json")), o.to_string()).unwrap();
        ok(&env
            .kubectl(&[
                "create",
                "--validate=false",
                "-f",
                env.path(&format!("{name}.json")).to_str().unwrap(),
            ])
            .await);
    }
    let out = ok(&env.kubectl(&["get", "csr"]).await);
    assert!(
        out.contains("Pending") && out.contains("kubernetes-admin"),
        "{out}"
    );
    ok(&env.kubectl(&["certificate", "approve", "a"]).await);
    ok(&env.kubectl(&["certificate", "deny", "d"]).await);
    let a = env
        .srv
        .get("/apis/certificates.k8s.io/v1/certificatesigningrequests/a")
        .unwrap();
    assert_eq!(a["status"]["conditions"][0]["type"], "Approved");
    assert!(a["status"]["certificate"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));
    let out = ok(&env.kubectl(&["get", "csr"]).await);
    assert!(
        out.contains("Approved,Issued") && out.contains("Denied"),
        "{out}"
    );
}

/// Every version tests/kubectl-versions lists is installed and is the minor its name says, so a machine
/// with a different kubectl set fails here by name rather than in some unrelated test.
#[tokio::test]
async fn every_listed_kubectl_version_is_installed() {
    for minor in kubectl_versions() {
        let bin = kubectl_for(&minor);
        let out = tokio::process::Command::new(&bin)
            .args(["version", "--client", "-o", "json"])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{bin} version: {out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let got = format!(
            "{}.{}",
            v["clientVersion"]["major"].as_str().unwrap_or(""),
            v["clientVersion"]["minor"].as_str().unwrap_or("")
        );
        assert_eq!(got, minor, "{bin} reports {got}");
    }
}

/// core/v1 and events.k8s.io/v1 Events are one resource (upstream stores both in /registry/events):
/// an Event recorded through events.k8s.io/v1 (as kube-runtime's Recorder does) shows in `kubectl
/// describe` and `kubectl get events`, which read core/v1, and the other way round; patches and
/// field selectors use the field names of the version they go through; a core/v1 watch sees a write
/// made through events.k8s.io/v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_sees_one_event_through_both_event_apis() {
    let env = Env::start().await;
    ok(&env
        .kubectl(&["create", "service", "clusterip", "web", "--tcp=80:8080"])
        .await);
    let uid = ok(&env
        .kubectl(&["get", "svc", "web", "-o", "jsonpath={.metadata.uid}"])
        .await);
    let watch = {
        let env = &env;
        async move {
            env.curl_admin(
                &["-N"],
                "/api/v1/namespaces/default/events?watch=true&timeoutSeconds=3",
            )
            .await
        }
    };
    let ev = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "web.1", "namespace": "default"},
        "regarding": {"apiVersion": "v1", "kind": "Service", "name": "web", "namespace": "default", "uid": uid.trim()},
        "note": "VIP 198.18.0.10 announced on lb1", "reason": "Announced", "type": "Normal",
        "action": "Announce", "reportingController": "keel.io/lb", "reportingInstance": "lb1",
        "eventTime": "2026-12-02T00:00:00.000000Z"
    });
    std::fs::write(env.path("ev.json"), ev.to_string()).unwrap();
    let ev_path = env.path("ev.json");
    let (watched, created) = tokio::join!(watch, async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        env.kubectl(&["create", "-f", ev_path.to_str().unwrap()])
            .await
    });
    ok(&created);
    assert_eq!(watched.0, 200, "{watched:?}");
    let added: Value = watched
        .1
        .lines()
        .find(|l| l.contains("\"ADDED\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap_or_else(|| panic!("no ADDED in the core/v1 watch: {}", watched.1));
    assert_eq!(added["object"]["apiVersion"], "v1");
    assert_eq!(
        added["object"]["message"],
        "VIP 198.18.0.10 announced on lb1"
    );
    assert_eq!(added["object"]["reportingComponent"], "keel.io/lb");

    let out = ok(&env.kubectl(&["describe", "svc", "web"]).await);
    assert!(
        out.contains("Announced") && out.contains("VIP 198.18.0.10 announced on lb1"),
        "describe shows the Event written through events.k8s.io/v1: {out}"
    );
    let out = ok(&env.kubectl(&["get", "events"]).await);
    assert!(
        out.contains("service/web") && out.contains("Announced"),
        "{out}"
    );
    let core: Value = serde_json::from_str(&ok(&env
        .kubectl(&["get", "events", "web.1", "-o", "json"])
        .await))
    .unwrap();
    assert_eq!(core["apiVersion"], "v1");
    assert_eq!(core["involvedObject"]["name"], "web");
    assert!(core.get("note").is_none(), "{core}");

    // A merge patch through events.k8s.io/v1 names its fields; core/v1 reads the change.
    ok(&env
        .kubectl(&[
            "patch",
            "events.v1.events.k8s.io",
            "web.1",
            "--type=merge",
            "-p",
            r#"{"note":"VIP 198.18.0.10 withdrawn"}"#,
        ])
        .await);
    let out = ok(&env
        .kubectl(&["get", "events", "web.1", "-o", "jsonpath={.message}"])
        .await);
    assert_eq!(out, "VIP 198.18.0.10 withdrawn");

    // An Event written through core/v1 reads back through events.k8s.io/v1, found by a field
    // selector on that version's names.
    env.srv.put(
        "/api/v1/namespaces/default/events/n1.1",
        json!({"involvedObject": {"kind": "Node", "name": "n1"}, "reason": "Rebooted", "type": "Warning",
               "message": "node rebooted", "count": 2, "source": {"component": "kubelet", "host": "n1"}}),
    );
    let v1: Value = serde_json::from_str(&ok(&env
        .kubectl(&[
            "get",
            "events.v1.events.k8s.io",
            "--field-selector",
            "regarding.name=n1",
            "-o",
            "json",
        ])
        .await))
    .unwrap();
    let items = v1["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{v1}");
    assert_eq!(items[0]["apiVersion"], "events.k8s.io/v1");
    assert_eq!(items[0]["note"], "node rebooted");
    assert_eq!(items[0]["regarding"]["kind"], "Node");
    assert_eq!(items[0]["deprecatedCount"], 2);
    assert_eq!(items[0]["deprecatedSource"]["component"], "kubelet");
    assert!(items[0].get("message").is_none(), "{v1}");
}
