//! resourceVersion semantics, watches, bookmarks, 410, fault injection and restart.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_resource_version_update_is_409_conflict() {
    let env = Env::start().await;
    env.srv.put("/api/v1/nodes/n1", node_json("n1"));
    let mut n = env.srv.get("/api/v1/nodes/n1").unwrap();
    let stale = n["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    ok(&env.kubectl(&["label", "node", "n1", "a=b"]).await);
    n["metadata"]["labels"]["c"] = json!("d");
    assert_eq!(n["metadata"]["resourceVersion"], stale);
    let (code, body) = env
        .curl_admin(
            &[
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &n.to_string(),
            ],
            "/api/v1/nodes/n1",
        )
        .await;
    assert_eq!(code, 409, "{body}");
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["reason"], "Conflict");
    assert_eq!(
        s["message"],
        "Operation cannot be fulfilled on nodes \"n1\": the object has been modified; please apply your changes to the latest version and try again"
    );
    // Create of an existing object: 409 AlreadyExists.
    let (code, body) = env
        .curl_admin(
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &node_json("n1").to_string(),
            ],
            "/api/v1/nodes",
        )
        .await;
    assert_eq!(code, 409);
    assert!(
        body.contains("\"reason\":\"AlreadyExists\"")
            && body.contains("nodes \\\"n1\\\" already exists"),
        "{body}"
    );
    // Merge patch with the current resourceVersion succeeds, with a stale one conflicts.
    let cur = env.srv.get("/api/v1/nodes/n1").unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let p = json!({"metadata": {"resourceVersion": cur, "labels": {"x": "y"}}}).to_string();
    let (code, _) = env
        .curl_admin(
            &[
                "-X",
                "PATCH",
                "-H",
                "Content-Type: application/merge-patch+json",
                "--data-binary",
                &p,
            ],
            "/api/v1/nodes/n1",
        )
        .await;
    assert_eq!(code, 200);
    let (code, _) = env
        .curl_admin(
            &[
                "-X",
                "PATCH",
                "-H",
                "Content-Type: application/merge-patch+json",
                "--data-binary",
                &p,
            ],
            "/api/v1/nodes/n1",
        )
        .await;
    assert_eq!(code, 409);
    // Strategic merge patch on nodes/status merges conditions by type.
    let p = json!({"status": {"conditions": [{"type": "DiskPressure", "status": "True", "reason": "Full"}]}}).to_string();
    let (code, _) = env
        .curl_admin(
            &[
                "-X",
                "PATCH",
                "-H",
                "Content-Type: application/strategic-merge-patch+json",
                "--data-binary",
                &p,
            ],
            "/api/v1/nodes/n1/status",
        )
        .await;
    assert_eq!(code, 200);
    let n = env.srv.get("/api/v1/nodes/n1").unwrap();
    let types: Vec<&str> = n["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Ready", "DiskPressure"]);
    // Field and label selectors on lists.
    env.srv.put(
        "/api/v1/namespaces/default/pods/a",
        ready_pod("a", "n1", json!({"app": "x"})),
    );
    env.srv.put(
        "/api/v1/namespaces/default/pods/b",
        ready_pod("b", "n2", json!({"app": "y"})),
    );
    let (_, body) = env
        .curl_admin(&[], "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1")
        .await;
    let l: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(l["kind"], "PodList");
    assert_eq!(l["items"].as_array().unwrap().len(), 1);
    let (_, body) = env
        .curl_admin(
            &[],
            "/api/v1/namespaces/default/pods?labelSelector=app+in+(y,z)",
        )
        .await;
    let l: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(l["items"][0]["metadata"]["name"], "b");
}

fn events(body: &str) -> Vec<Value> {
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_changes_from_a_resource_version_with_bookmarks() {
    let env = Env::start().await;
    env.srv.set_bookmark_interval(Duration::from_millis(500));
    env.srv.put("/api/v1/nodes/n1", node_json("n1"));
    let rv = env.srv.get("/api/v1/nodes/n1").unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    env.srv.put(
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1",
        json!({"spec": {"holderIdentity": "n1"}}),
    );
    let path = format!(
        "/api/v1/nodes?watch=true&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=3"
    );
    let watch = {
        let url = env.srv.url();
        let ca = env.path("ca.crt");
        let tok = env.srv.admin_token();
        tokio::spawn(async move {
            let o = tokio::process::Command::new("curl")
                .args(["-sS", "--http2", "--max-time", "10", "--cacert"])
                .arg(ca)
                .args([
                    "-H",
                    &format!("Authorization: Bearer {tok}"),
                    &format!("{url}{path}"),
                ])
                .output()
                .await
                .unwrap();
            String::from_utf8_lossy(&o.stdout).to_string()
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    env.srv.put("/api/v1/nodes/n2", node_json("n2"));
    let mut n1 = env.srv.get("/api/v1/nodes/n1").unwrap();
    n1["metadata"]["labels"]["x"] = json!("y");
    env.srv.put("/api/v1/nodes/n1", n1);
    env.srv.delete("/api/v1/nodes/n2");
    let start = Instant::now();
    let body = watch.await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "timeoutSeconds ends the watch"
    );
    let evs = events(&body);
    let kinds: Vec<(String, String)> = evs
        .iter()
        .filter(|e| e["type"] != "BOOKMARK")
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("ADDED".into(), "n2".into()),
            ("MODIFIED".into(), "n1".into()),
            ("DELETED".into(), "n2".into())
        ],
        "events: {body}"
    );
    let bm = evs
        .iter()
        .find(|e| e["type"] == "BOOKMARK")
        .expect("a bookmark");
    assert_eq!(bm["object"]["kind"], "Node");
    assert!(
        bm["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= rv.parse::<u64>().unwrap()
    );
    assert_eq!(evs[0]["object"]["kind"], "Node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_compacted_resource_version_gets_410_expired() {
    let env = Env::start().await;
    env.srv.put("/api/v1/nodes/n1", node_json("n1"));
    env.srv.compact();
    let (code, body) = env
        .curl_admin(
            &[],
            "/api/v1/nodes?watch=true&resourceVersion=2&timeoutSeconds=2",
        )
        .await;
    assert_eq!(code, 200);
    let evs = events(&body);
    assert_eq!(evs.len(), 1, "{body}");
    assert_eq!(evs[0]["type"], "ERROR");
    assert_eq!(evs[0]["object"]["code"], 410);
    assert_eq!(evs[0]["object"]["reason"], "Expired");
    assert!(evs[0]["object"]["message"]
        .as_str()
        .unwrap()
        .starts_with("too old resource version: 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_inject_429_500_drops_latency_pause_and_restart_keeps_state() {
    let env = Env::start().await;
    env.srv.put("/api/v1/nodes/n1", node_json("n1"));
    let f = env.srv.faults();
    f.fail_next(1, 429, Some("/nodes"));
    let (code, body) = env.curl_admin(&["-D", "-"], "/api/v1/nodes/n1").await;
    assert_eq!(code, 429);
    assert!(body.to_lowercase().contains("retry-after: 1"), "{body}");
    assert!(body.contains("\"reason\":\"TooManyRequests\""));
    assert_eq!(env.curl_admin(&[], "/api/v1/nodes/n1").await.0, 200);
    f.fail_next(2, 500, None);
    assert_eq!(env.curl_admin(&[], "/version").await.0, 500);
    assert_eq!(env.curl_admin(&[], "/api/v1/nodes/n1").await.0, 500);
    assert_eq!(env.curl_admin(&[], "/api/v1/nodes/n1").await.0, 200);
    f.drop_next(1);
    assert_eq!(
        env.curl_admin(&[], "/api/v1/nodes/n1").await.0,
        0,
        "connection closed without a response"
    );
    f.set_latency(Duration::from_millis(400));
    let t = Instant::now();
    assert_eq!(env.curl_admin(&[], "/api/v1/nodes/n1").await.0, 200);
    assert!(t.elapsed() >= Duration::from_millis(400));
    f.set_latency(Duration::ZERO);
    f.pause(Duration::from_millis(1200));
    let t = Instant::now();
    assert_eq!(env.curl_admin(&[], "/api/v1/nodes/n1").await.0, 200);
    assert!(t.elapsed() >= Duration::from_millis(1000));
    // The admin endpoint does the same over HTTP.
    let (code, _) = env
        .curl_admin(
            &[
                "-X",
                "POST",
                "--data-binary",
                r#"{"failNext": {"n": 1, "status": 500, "pathContains": "/leases"}}"#,
            ],
            "/_test/faults",
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(
        env.curl_admin(
            &[],
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/x"
        )
        .await
        .0,
        500
    );
    assert_eq!(
        env.curl_admin(
            &[],
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/x"
        )
        .await
        .0,
        404
    );
    // Non-admins may not use it.
    assert_eq!(
        env.curl(&["-X", "POST", "--data-binary", "{}"], "/_test/faults")
            .await
            .0,
        403
    );

    // Restart: same URL, same state, open watches are cut.
    let url = env.srv.url();
    env.srv.restart().await.unwrap();
    assert_eq!(env.srv.url(), url);
    let (code, body) = env.curl_admin(&[], "/api/v1/nodes/n1").await;
    assert_eq!(code, 200, "{body}");
    env.srv.stop().await;
    assert_eq!(
        env.curl_admin(&[], "/api/v1/nodes/n1").await.0,
        0,
        "refused while stopped"
    );
    env.srv.restart().await.unwrap();
    assert_eq!(env.curl_admin(&[], "/api/v1/nodes/n1").await.0, 200);
    let log = env.srv.request_log();
    assert!(log
        .iter()
        .any(|r| r.user == "kubernetes-admin" && r.verb == "get" && r.status == 200));
}
