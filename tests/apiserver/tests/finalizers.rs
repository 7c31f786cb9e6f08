//! Finalizers and two-phase deletion, driven by kubectl: a finalizer keeps a deleted object (with
//! deletionTimestamp) until a patch or update removes it; a deleted namespace is Terminating, refuses
//! new content, loses its content, and goes once its finalized content is gone.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

async fn create_file(env: &Env, bin: &str, obj: &Value) {
    let name = format!(
        "{}-{}-{}.json",
        obj["kind"].as_str().unwrap_or("obj"),
        obj["metadata"]["namespace"].as_str().unwrap_or(""),
        obj["metadata"]["name"].as_str().unwrap_or("x")
    );
    let path = env.path(&name);
    std::fs::write(&path, obj.to_string()).unwrap();
    ok(&env
        .kubectl_as(
            bin,
            &env.path("admin.kubeconfig"),
            &["create", "--validate=false", "-f", path.to_str().unwrap()],
        )
        .await);
}

fn kept_cm(name: &str, ns: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": ns, "finalizers": ["example.com/keep"]},
           "data": {"k": "v"}})
}

async fn finalizer_lifecycle_with(bin: &str) {
    let env = Env::start().await;
    let kc = env.path("admin.kubeconfig");
    let k = |args: Vec<&str>| {
        let kc = kc.clone();
        let env = &env;
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        async move {
            let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            env.kubectl_as(bin, &kc, &a).await
        }
    };
    for name in ["a", "b", "c"] {
        create_file(&env, bin, &kept_cm(name, "default")).await;
    }
    let home = env.dir.path().to_path_buf();
    let (wbin, wkc) = (bin.to_string(), kc.clone());
    let watch = tokio::spawn(async move {
        let c = tokio::process::Command::new(wbin)
            .env("HOME", home)
            .arg("--kubeconfig")
            .arg(wkc)
            .args([
                "get",
                "configmap",
                "a",
                "--watch",
                "--output-watch-events",
                "--request-timeout=6s",
            ])
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .unwrap()
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let out = ok(&k(vec!["delete", "configmap", "a", "--wait=false"]).await);
    assert!(out.contains("\"a\" deleted"), "{out}");
    let a = env
        .srv
        .get("/api/v1/namespaces/default/configmaps/a")
        .expect("a finalizer keeps the object");
    assert!(a["metadata"]["deletionTimestamp"].is_string(), "{a}");
    assert_eq!(a["metadata"]["deletionGracePeriodSeconds"], 0);
    // Deleting again changes nothing.
    ok(&k(vec!["delete", "configmap", "a", "--wait=false"]).await);
    let again = env
        .srv
        .get("/api/v1/namespaces/default/configmaps/a")
        .unwrap();
    assert_eq!(
        again["metadata"]["resourceVersion"],
        a["metadata"]["resourceVersion"]
    );
    // Other updates go through; new finalizers do not.
    ok(&k(vec!["label", "configmap", "a", "x=y"]).await);
    let e = err(&k(vec![
        "patch",
        "configmap",
        "a",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/metadata/finalizers/-","value":"example.com/new"}]"#,
    ])
    .await);
    assert!(
        e.contains("ConfigMap \"a\" is invalid: metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{\"example.com/new\"}"),
        "{e}"
    );
    // Removing the last finalizer (JSON patch) deletes the object.
    ok(&k(vec![
        "patch",
        "configmap",
        "a",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ])
    .await);
    assert!(env
        .srv
        .get("/api/v1/namespaces/default/configmaps/a")
        .is_none());
    let e = err(&k(vec!["get", "configmap", "a"]).await);
    assert!(e.contains("configmaps \"a\" not found"), "{e}");

    // Merge patch and strategic merge patch do the same.
    ok(&k(vec!["delete", "configmap", "b", "--wait=false"]).await);
    ok(&k(vec![
        "patch",
        "configmap",
        "b",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])
    .await);
    assert!(env
        .srv
        .get("/api/v1/namespaces/default/configmaps/b")
        .is_none());
    ok(&k(vec!["delete", "configmap", "c", "--wait=false"]).await);
    ok(&k(vec![
        "patch",
        "configmap",
        "c",
        "-p",
        r#"{"metadata":{"$deleteFromPrimitiveList/finalizers":["example.com/keep"]}}"#,
    ])
    .await);
    assert!(env
        .srv
        .get("/api/v1/namespaces/default/configmaps/c")
        .is_none());

    let out = watch.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let events: Vec<&str> = stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(events.first(), Some(&"ADDED"), "{stdout}");
    assert_eq!(events.last(), Some(&"DELETED"), "{stdout}");
    assert_eq!(
        events.iter().filter(|e| **e == "DELETED").count(),
        1,
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_current_finalizer_keeps_object_until_removed() {
    finalizer_lifecycle_with(KUBECTL.as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_oldest_finalizer_keeps_object_until_removed() {
    finalizer_lifecycle_with(KUBECTL_OLD.as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_removing_the_last_finalizer_deletes() {
    let env = Env::start().await;
    create_file(&env, KUBECTL.as_str(), &kept_cm("u", "default")).await;
    ok(&env.kubectl(&["delete", "cm", "u", "--wait=false"]).await);
    let mut cm = env
        .srv
        .get("/api/v1/namespaces/default/configmaps/u")
        .unwrap();
    cm["metadata"]["finalizers"] = json!([]);
    let body = cm.to_string();
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
            "/api/v1/namespaces/default/configmaps/u",
        )
        .await;
    assert_eq!(code, 200, "{out}");
    assert!(env
        .srv
        .get("/api/v1/namespaces/default/configmaps/u")
        .is_none());
}

async fn namespace_termination_with(bin: &str) {
    let env = Env::start().await;
    let kc = env.path("admin.kubeconfig");
    let k = |args: Vec<&str>| {
        let kc = kc.clone();
        let env = &env;
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        async move {
            let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            env.kubectl_as(bin, &kc, &a).await
        }
    };
    ok(&k(vec!["create", "namespace", "t1"]).await);
    let ns = env.srv.get("/api/v1/namespaces/t1").unwrap();
    assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "t1"
    );
    assert_eq!(ns["status"]["phase"], "Active");
    create_file(&env, bin, &kept_cm("kept", "t1")).await;
    ok(&k(vec![
        "create",
        "configmap",
        "plain",
        "-n",
        "t1",
        "--from-literal=a=b",
    ])
    .await);
    assert_eq!(
        env.srv
            .get("/api/v1/namespaces/t1/configmaps/plain")
            .unwrap()["data"],
        json!({"a": "b"})
    );
    ok(&k(vec![
        "create",
        "service",
        "clusterip",
        "svc",
        "-n",
        "t1",
        "--tcp=80",
    ])
    .await);

    ok(&k(vec!["delete", "namespace", "t1", "--wait=false"]).await);
    let out = ok(&k(vec!["get", "namespace", "t1"]).await);
    assert!(out.contains("Terminating"), "{out}");
    assert!(env
        .srv
        .get("/api/v1/namespaces/t1/configmaps/plain")
        .is_none());
    assert!(env.srv.get("/api/v1/namespaces/t1/services/svc").is_none());
    let kept = env
        .srv
        .get("/api/v1/namespaces/t1/configmaps/kept")
        .unwrap();
    assert!(kept["metadata"]["deletionTimestamp"].is_string(), "{kept}");
    let ns = env.srv.get("/api/v1/namespaces/t1").unwrap();
    assert!(ns["metadata"]["deletionTimestamp"].is_string(), "{ns}");
    let conds = ns["status"]["conditions"].as_array().unwrap();
    let cond = |t: &str| conds.iter().find(|c| c["type"] == t).unwrap().clone();
    assert_eq!(cond("NamespaceContentRemaining")["status"], "True");
    assert_eq!(
        cond("NamespaceContentRemaining")["message"],
        "Some resources are remaining: configmaps. has 1 resource instances"
    );
    assert_eq!(
        cond("NamespaceFinalizersRemaining")["message"],
        "Some content in the namespace has finalizers remaining: example.com/keep in 1 resource instances"
    );
    assert_eq!(cond("NamespaceDeletionContentFailure")["status"], "False");

    let e = err(&k(vec!["create", "configmap", "x", "-n", "t1"]).await);
    assert!(
        e.contains("configmaps \"x\" is forbidden: unable to create new content in namespace t1 because it is being terminated"),
        "{e}"
    );
    // Deleting again answers with the namespace as it is.
    ok(&k(vec!["delete", "namespace", "t1", "--wait=false"]).await);

    ok(&k(vec![
        "patch",
        "configmap",
        "kept",
        "-n",
        "t1",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ])
    .await);
    wait_for(Duration::from_secs(10), || {
        env.srv.get("/api/v1/namespaces/t1").is_none().then_some(())
    })
    .await;
    let e = err(&k(vec!["get", "namespace", "t1"]).await);
    assert!(e.contains("namespaces \"t1\" not found"), "{e}");

    // An empty namespace goes at once; `kubectl delete` (waiting by default) returns.
    ok(&k(vec!["create", "namespace", "t2"]).await);
    ok(&k(vec!["delete", "namespace", "t2", "--timeout=30s"]).await);
    assert!(env.srv.get("/api/v1/namespaces/t2").is_none());

    let e = err(&k(vec!["delete", "namespace", "default"]).await);
    assert!(
        e.contains("namespaces \"default\" is forbidden: this namespace may not be deleted"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_current_namespace_terminates_after_finalized_content() {
    namespace_termination_with(KUBECTL.as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_oldest_namespace_terminates_after_finalized_content() {
    namespace_termination_with(KUBECTL_OLD.as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_with_finalizer_is_terminating_until_released() {
    let env = Env::start().await;
    env.srv.put("/api/v1/nodes/n1", node_json("n1"));
    let mut pod = ready_pod("p", "n1", json!({"app": "p"}));
    pod["metadata"]["finalizers"] = json!(["example.com/keep"]);
    env.srv.put("/api/v1/namespaces/default/pods/p", pod);
    env.srv.put(
        "/api/v1/namespaces/default/pods/q",
        ready_pod("q", "n1", json!({"app": "q"})),
    );
    ok(&env.kubectl(&["delete", "pod", "q", "--wait=false"]).await);
    assert!(
        env.srv.get("/api/v1/namespaces/default/pods/q").is_none(),
        "pods without finalizers go at once"
    );
    ok(&env.kubectl(&["delete", "pod", "p", "--wait=false"]).await);
    let out = ok(&env.kubectl(&["get", "pod", "p"]).await);
    assert!(out.contains("Terminating"), "{out}");
    ok(&env
        .kubectl(&[
            "patch",
            "pod",
            "p",
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":[]}}"#,
        ])
        .await);
    assert!(env.srv.get("/api/v1/namespaces/default/pods/p").is_none());
}
