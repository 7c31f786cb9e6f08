//! `health::run` against the API test server over real TLS, observed with kubectl: conditions and
//! events appear, taints follow the policy with hysteresis (privileged identity) or are refused by
//! NodeRestriction and reported (node identity), drain evicts and retries PDB refusals, node
//! shutdown drains, and the orchestrator API demands a client certificate from its CA.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_common::{Diagnostics, Source};
use keel_test_apiserver::{Options, TestServer};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::HealthContext;
use crate::config::health::{validate, HealthConfig, HealthFile};

struct Env {
    server: TestServer,
    dir: tempfile::TempDir,
    admin: PathBuf,
    node: String,
}

impl Env {
    async fn start(node: &str) -> Env {
        let server = TestServer::start(Options::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let admin = dir.path().join("admin.kubeconfig");
        server.write_admin_kubeconfig(&admin).unwrap();
        // The pool's own taint, set at registration: the policy must never touch it.
        server.put(
            &format!("/api/v1/nodes/{node}"),
            json!({"metadata": {"labels": {"kubernetes.io/hostname": node}},
                   "spec": {"taints": [{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}]},
                   "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                       "message": "ok", "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                       "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}),
        );
        Env {
            server,
            dir,
            admin,
            node: node.into(),
        }
    }

    async fn client_from(&self, kubeconfig: &Path) -> kube::Client {
        super::runner::client_from_kubeconfig(kubeconfig)
            .await
            .unwrap()
    }

    async fn node_client(&self) -> kube::Client {
        let p = self.dir.path().join("node.kubeconfig");
        self.server
            .write_cert_kubeconfig(&p, &format!("system:node:{}", self.node), &["system:nodes"])
            .unwrap();
        self.client_from(&p).await
    }

    fn privileged_kubeconfig(&self) -> PathBuf {
        let p = self.dir.path().join("privileged.kubeconfig");
        self.server
            .write_token_kubeconfig(&p, &self.server.privileged_token())
            .unwrap();
        p
    }

    fn kubectl(&self, args: &[&str]) -> Value {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.admin)
            .args(["--request-timeout", "10s"])
            .args(args)
            .args(["-o", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn node_json(&self) -> Value {
        self.kubectl(&["get", "node", &self.node])
    }

    fn condition(&self, kind: &str) -> Option<Value> {
        self.node_json()["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == kind)
            .cloned()
    }

    fn taint_keys(&self) -> Vec<String> {
        self.node_json()["spec"]["taints"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|t| t["key"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn config(&self, yaml: &str) -> HealthConfig {
        let src = Source::from_text(self.dir.path().join("agent.yaml"), yaml);
        let raw: HealthFile = keel_common::config::parse(&src).unwrap();
        let mut d = Diagnostics::new(&src);
        let cfg = validate(&raw, "health", crate::config::Os::Linux, &mut d);
        d.finish(cfg).unwrap()
    }

    /// A plugin check whose problem is the existence of `<dir>/bad`.
    fn marker_check(&self) -> (PathBuf, String) {
        let script = self.dir.path().join("marker.sh");
        let bad = self.dir.path().join("bad");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nif [ -e {} ]; then echo 'marker says bad'; exit 1; fi\necho fine\n",
                bad.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let yaml = format!(
            "  checks:\n    - name: marker\n      kind: plugin\n      command: {}\n      interval: 300ms\n      timeout: 250ms\n      condition: MarkerProblem\n",
            script.display()
        );
        (bad, yaml)
    }
}

async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

fn ctx(
    env: &Env,
    config: HealthConfig,
    client: kube::Client,
    registry: &prometheus::Registry,
) -> (HealthContext, CancellationToken) {
    let shutdown = CancellationToken::new();
    (
        HealthContext {
            config,
            node_name: env.node.clone(),
            client: Some(super::fixed_client(client)),
            privileged: None,
            registry: registry.clone(),
            join_status: Arc::new(|| json!({"state": "joined"})),
            publish: None,
            reload: None,
            node_shutdown: shutdown.clone(),
        },
        shutdown,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_events_and_taints_follow_the_policy_with_hysteresis() {
    let env = Env::start("health-taints").await;
    let (bad, checks) = env.marker_check();
    let cfg = env.config(&format!(
        "privileged_kubeconfig: {}\nrefresh: 10s\n{checks}\ntaints:\n  - condition: MarkerProblem\n    after: 2s\n    clear_after: 3s\n    key: keel.io/marker\n    value: bad\n    effect: NoSchedule\n",
        env.privileged_kubeconfig().display()
    ).replace("\n  checks:", "\nchecks:").replace("\n    -", "\n  -").replace("\n      ", "\n    "));
    let registry = prometheus::Registry::new();
    let client = env.node_client().await;
    let (c, _shutdown) = ctx(&env, cfg, client, &registry);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(super::run(c, cancel.clone()));

    wait_for("MarkerProblem=False", Duration::from_secs(15), || {
        env.condition("MarkerProblem")
            .is_some_and(|c| c["status"] == "False")
    })
    .await;
    let ready = env.condition("Ready").unwrap();
    assert_eq!(ready["status"], "True", "kubelet's condition is untouched");

    std::fs::write(&bad, "").unwrap();
    let made_bad = Instant::now();
    let t_cond = wait_for("MarkerProblem=True", Duration::from_secs(10), || {
        env.condition("MarkerProblem")
            .is_some_and(|c| c["status"] == "True")
    })
    .await;
    // Within 2 s of the check interval (plus kubectl's own polling).
    assert!(
        t_cond < Duration::from_millis(300 + 2000 + 1000),
        "condition took {t_cond:?}"
    );
    let c = env.condition("MarkerProblem").unwrap();
    assert_eq!(c["reason"], "MarkerProblemDetected");
    assert_eq!(c["message"], "marker says bad");
    assert!(
        !env.taint_keys().contains(&"keel.io/marker".to_string()),
        "taint before `after`"
    );
    wait_for("the policy taint", Duration::from_secs(10), || {
        env.taint_keys().contains(&"keel.io/marker".to_string())
    })
    .await;
    // Policy delay (2 s) after the check (interval 300 ms) saw it, plus at most 1 s to apply.
    let t_taint = made_bad.elapsed();
    assert!(
        t_taint >= Duration::from_secs(2),
        "tainted after {t_taint:?}"
    );
    // Generous for a loaded CI machine; tests/bench measures the real figure.
    assert!(
        t_taint < Duration::from_millis(2000 + 300 + 1000 + 2000),
        "taint took {t_taint:?}"
    );
    assert!(env.taint_keys().contains(&"dedicated".to_string()));

    // Events: one per transition, on the Node.
    let events = env.kubectl(&["get", "events", "-n", "default"]);
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["involvedObject"]["name"] == "health-taints")
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"MarkerProblemDetected"), "{reasons:?}");
    assert!(reasons.contains(&"NoMarkerProblem"), "{reasons:?}");

    // Healthy again: the condition clears at once, the taint only after clear_after.
    std::fs::remove_file(&bad).unwrap();
    wait_for("MarkerProblem=False again", Duration::from_secs(10), || {
        env.condition("MarkerProblem")
            .is_some_and(|c| c["status"] == "False")
    })
    .await;
    let healthy_at = Instant::now();
    assert!(env.taint_keys().contains(&"keel.io/marker".to_string()));
    wait_for("the taint to go", Duration::from_secs(10), || {
        !env.taint_keys().contains(&"keel.io/marker".to_string())
    })
    .await;
    assert!(
        healthy_at.elapsed() >= Duration::from_millis(2500),
        "cleared too early"
    );
    assert_eq!(
        env.taint_keys(),
        vec!["dedicated".to_string()],
        "the pool taint stays"
    );
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        text.contains("keel_agent_check_status{check=\"marker\",status=\"ok\"} 1"),
        "{text}"
    );
    cancel.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_identity_taint_change_is_refused_and_reported() {
    let env = Env::start("health-noauth").await;
    let (bad, checks) = env.marker_check();
    std::fs::write(&bad, "").unwrap();
    let cfg = env.config(&format!(
        "{checks}\ntaints:\n  - condition: MarkerProblem\n    after: 0s\n    key: keel.io/marker\n    effect: NoSchedule\n"
    ).replace("  checks:", "checks:").replace("\n    -", "\n  -").replace("\n      ", "\n    "));
    let registry = prometheus::Registry::new();
    let client = env.node_client().await;
    let (c, _s) = ctx(&env, cfg, client, &registry);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(super::run(c, cancel.clone()));
    wait_for("MarkerProblem=True", Duration::from_secs(15), || {
        env.condition("MarkerProblem")
            .is_some_and(|c| c["status"] == "True")
    })
    .await;
    wait_for("the refusal in metrics", Duration::from_secs(10), || {
        prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap()
            .contains("keel_agent_taint_apply_errors_total{cause=\"forbidden\"} 1")
    })
    .await;
    assert_eq!(env.taint_keys(), vec!["dedicated".to_string()]);
    cancel.cancel();
    task.await.unwrap().unwrap();
}

fn pod(node: &str, name: &str, extra_meta: Value) -> Value {
    let mut meta = json!({"namespace": "default", "labels": {"app": name}});
    if let (Some(m), Some(e)) = (meta.as_object_mut(), extra_meta.as_object()) {
        for (k, v) in e {
            m.insert(k.clone(), v.clone());
        }
    }
    json!({"metadata": meta,
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "pause"}]},
           "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_skips_mirror_and_daemonset_pods_and_retries_pdb_refusals_until_allowed() {
    let env = Env::start("health-drain").await;
    let n = env.node.clone();
    env.server.put(
        "/api/v1/namespaces/default/pods/web",
        pod(&n, "web", json!({})),
    );
    env.server.put(
        "/api/v1/namespaces/default/pods/db",
        pod(&n, "db", json!({})),
    );
    env.server.put(
        "/api/v1/namespaces/default/pods/static",
        pod(
            &n,
            "static",
            json!({"annotations": {"kubernetes.io/config.mirror": "x"}}),
        ),
    );
    env.server.put(
        "/api/v1/namespaces/default/pods/agent-ds",
        pod(
            &n,
            "agent-ds",
            json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
            "name": "agent", "uid": "u1", "controller": true}]}),
        ),
    );
    env.server.put(
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets/db",
        json!({"metadata": {"namespace": "default"},
               "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "db"}}}}),
    );
    let client = env.node_client().await;
    env.server.clear_request_log();
    let cfg = crate::config::health::DrainConfig {
        retry_interval: Duration::from_millis(300),
        timeout: Duration::from_secs(20),
        ..Default::default()
    };
    let progress = std::sync::Mutex::new(Vec::new());
    let record = |p: &crate::ops::drain::Progress| progress.lock().unwrap().push(p.clone());
    let drain = crate::ops::drain::drain(&client, &n, &cfg, &record);
    let relax = async {
        // Let a few refusals happen, then the budget allows one disruption.
        tokio::time::sleep(Duration::from_secs(2)).await;
        env.server.put(
            "/apis/policy/v1/namespaces/default/poddisruptionbudgets/db",
            json!({"metadata": {"namespace": "default"},
                   "spec": {"minAvailable": 0, "selector": {"matchLabels": {"app": "db"}}}}),
        );
    };
    let (r, ()) = tokio::join!(drain, relax);
    let p = r.unwrap();
    assert_eq!(
        (p.evicted, p.skipped, p.state.as_str()),
        (2, 2, "done"),
        "{p:?}"
    );
    assert!(p.refusals >= 2, "PDB refusals were retried: {p:?}");
    // Every 429 the server sent reached our loop and was counted: the client retries nothing on
    // its own (kube's default layer would retry 429s itself, hiding them and stretching deadlines).
    let server_429s = env
        .server
        .request_log()
        .iter()
        .filter(|r| r.path.ends_with("/pods/db/eviction") && r.status == 429)
        .count() as u64;
    assert_eq!(
        p.refusals, server_429s,
        "refusals counted by drain vs 429s sent by the server: {p:?}"
    );
    // The node identity polls evicted pods with a list it may make (AuthorizeNodeWithSelectors
    // refuses a GET of a pod no longer bound to the node): nothing was forbidden.
    let forbidden: Vec<String> = env
        .server
        .request_log()
        .iter()
        .filter(|r| r.status == 403)
        .map(|r| r.path.clone())
        .collect();
    assert!(forbidden.is_empty(), "forbidden requests: {forbidden:?}");
    let pods = env.kubectl(&["get", "pods", "-n", "default"]);
    let mut left: Vec<&str> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .collect();
    left.sort();
    assert_eq!(left, vec!["agent-ds", "static"]);
    assert_eq!(env.node_json()["spec"]["unschedulable"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_shutdown_drains_before_run_returns() {
    let env = Env::start("health-shutdown").await;
    env.server.put(
        "/api/v1/namespaces/default/pods/web",
        pod(&env.node, "web", json!({})),
    );
    let cfg = env.config("drain:\n  on_shutdown: true\n  timeout: 20s\n");
    let registry = prometheus::Registry::new();
    let client = env.node_client().await;
    let (c, shutdown) = ctx(&env, cfg, client, &registry);
    let task = tokio::spawn(super::run(c, CancellationToken::new()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(25), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(env
        .server
        .get("/api/v1/namespaces/default/pods/web")
        .is_none());
    assert_eq!(env.node_json()["spec"]["unschedulable"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_on_stop_alone_drains_when_stopping() {
    // The signal handler fires node_shutdown for a plain stop with on_stop; on_shutdown is off.
    let env = Env::start("health-onstop").await;
    env.server.put(
        "/api/v1/namespaces/default/pods/web",
        pod(&env.node, "web", json!({})),
    );
    let cfg = env.config("drain:\n  on_stop: true\n  timeout: 20s\n");
    assert!(cfg.drain.on_stop && !cfg.drain.on_shutdown);
    let registry = prometheus::Registry::new();
    let client = env.node_client().await;
    let (c, shutdown) = ctx(&env, cfg, client, &registry);
    let task = tokio::spawn(super::run(c, CancellationToken::new()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(25), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(env
        .server
        .get("/api/v1/namespaces/default/pods/web")
        .is_none());
    assert_eq!(env.node_json()["spec"]["unschedulable"], true);
}

/// A CA plus server and client certificates for the orchestrator API: the allowed client, one
/// from another CA, and one from the right CA with another subject CN.
#[allow(clippy::type_complexity)]
fn api_pki(
    dir: &Path,
) -> (
    PathBuf,
    PathBuf,
    PathBuf,
    (String, String),
    (String, String),
    (String, String),
) {
    let mk_ca = |cn: &str| {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let k = rcgen::KeyPair::generate().unwrap();
        let c = p.self_signed(&k).unwrap();
        (rcgen::Issuer::new(p, k), c)
    };
    let leaf = |issuer: &rcgen::Issuer<rcgen::KeyPair>, cn: &str, sans: Vec<String>| {
        let mut p = rcgen::CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let k = rcgen::KeyPair::generate().unwrap();
        let c = p.signed_by(&k, issuer).unwrap();
        (c.pem(), k.serialize_pem())
    };
    let (ca, ca_cert) = mk_ca("orchestrator-ca");
    let (other, _) = mk_ca("someone-else");
    let (srv_cert, srv_key) = leaf(&ca, "keel-agent", vec!["127.0.0.1".into()]);
    let good = leaf(&ca, "orchestrator", vec![]);
    let stranger = leaf(&other, "orchestrator", vec![]);
    let impostor = leaf(&ca, "some-workload", vec![]);
    let w = |n: &str, t: &str| {
        let p = dir.join(n);
        std::fs::write(&p, t).unwrap();
        p
    };
    (
        w("api.crt", &srv_cert),
        w("api.key", &srv_key),
        w("client-ca.crt", &ca_cert.pem()),
        good,
        stranger,
        impostor,
    )
}

fn curl(args: &[&str]) -> (bool, u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        out.status.success(),
        code.trim().parse().unwrap_or(0),
        body.to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrator_api_requires_a_client_certificate_from_its_ca() {
    let env = Env::start("health-api").await;
    let d = env.dir.path();
    let (crt, key, ca, good, stranger, impostor) = api_pki(d);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = env.config(&format!(
        "api:\n  listen: 127.0.0.1:{port}\n  cert: {}\n  key: {}\n  client_ca: {}\n  allowed_cn: orchestrator\n",
        crt.display(),
        key.display(),
        ca.display()
    ));
    let registry = prometheus::Registry::new();
    let client = env.node_client().await;
    let (c, _s) = ctx(&env, cfg, client, &registry);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(super::run(c, cancel.clone()));
    let url = format!("https://127.0.0.1:{port}");
    let w = |n: &str, t: &str| {
        let p = d.join(n);
        std::fs::write(&p, t).unwrap();
        p.display().to_string()
    };
    let (gc, gk) = (w("good.crt", &good.0), w("good.key", &good.1));
    let (sc, sk) = (w("s.crt", &stranger.0), w("s.key", &stranger.1));
    let cacert = crt.display().to_string();
    let status_url = format!("{url}/v1/status");
    let mut ok = (false, 0, String::new());
    for _ in 0..50 {
        ok = curl(&[
            "--cacert",
            &cacert,
            "--cert",
            &gc,
            "--key",
            &gk,
            &status_url,
        ]);
        if ok.1 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ok.1, 200, "{ok:?}");
    let v: Value = serde_json::from_str(&ok.2).unwrap();
    assert_eq!(v["join"]["state"], "joined");
    assert_eq!(v["health"]["node"], "health-api");
    // No client certificate, or one from another CA: the TLS handshake fails.
    let none = curl(&["--cacert", &cacert, &status_url]);
    assert!(!none.0 || none.1 == 0, "{none:?}");
    let strange = curl(&[
        "--cacert",
        &cacert,
        "--cert",
        &sc,
        "--key",
        &sk,
        &status_url,
    ]);
    assert!(!strange.0 || strange.1 == 0, "{strange:?}");
    // The right CA but another subject CN: TLS succeeds, `allowed_cn` refuses every request, and
    // nothing it asked for happens.
    let (ic, ik) = (w("i.crt", &impostor.0), w("i.key", &impostor.1));
    for (method, path) in [("GET", "/v1/status"), ("POST", "/v1/cordon")] {
        let (_, code, body) = curl(&[
            "--cacert",
            &cacert,
            "--cert",
            &ic,
            "--key",
            &ik,
            "-X",
            method,
            &format!("{url}{path}"),
        ]);
        assert_eq!(code, 403, "{method} {path}: {body}");
        assert!(body.contains("some-workload"), "{body}");
        assert!(!body.contains("health-api"), "status leaked: {body}");
    }
    assert_ne!(env.node_json()["spec"]["unschedulable"], true);
    // Bad requests get JSON errors.
    let (_, code, body) = curl(&[
        "--cacert",
        &cacert,
        "--cert",
        &gc,
        "--key",
        &gk,
        &format!("{url}/v1/nope"),
    ]);
    assert_eq!(code, 404);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
    let (_, code, body) = curl(&[
        "--cacert",
        &cacert,
        "--cert",
        &gc,
        "--key",
        &gk,
        "-X",
        "POST",
        "-d",
        "{\"bogus\": 1}",
        &format!("{url}/v1/cordon"),
    ]);
    assert_eq!(code, 400, "{body}");
    let (_, code, _) = curl(&[
        "--cacert",
        &cacert,
        "--cert",
        &gc,
        "--key",
        &gk,
        &format!("{url}/v1/cordon"),
    ]);
    assert_eq!(code, 405);
    // Cordon and uncordon through the API.
    let (_, code, body) = curl(&[
        "--cacert",
        &cacert,
        "--cert",
        &gc,
        "--key",
        &gk,
        "-X",
        "POST",
        &format!("{url}/v1/cordon"),
    ]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(env.node_json()["spec"]["unschedulable"], true);
    let (_, code, _) = curl(&[
        "--cacert",
        &cacert,
        "--cert",
        &gc,
        "--key",
        &gk,
        "-X",
        "POST",
        &format!("{url}/v1/uncordon"),
    ]);
    assert_eq!(code, 200);
    assert_ne!(env.node_json()["spec"]["unschedulable"], true);
    // Reload without a config file source: a clear refusal.
    let (_, code, body) = curl(&[
        "--cacert",
        &cacert,
        "--cert",
        &gc,
        "--key",
        &gk,
        "-X",
        "POST",
        &format!("{url}/v1/reload"),
    ]);
    assert_eq!(code, 503, "{body}");
    cancel.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npd_kernel_monitor_reaches_the_node_with_npd_metrics() {
    let env = Env::start("health-npd-log").await;
    let log = env.dir.path().join("kmsg");
    std::fs::write(&log, "").unwrap();
    // NPD's own kernel-monitor.json, unchanged but for where it reads.
    let text = include_str!("../config/fixtures/npd/kernel-monitor.json")
        .replace("\"/dev/kmsg\"", &format!("{:?}", log.display().to_string()));
    std::fs::write(env.dir.path().join("kernel-monitor.json"), text).unwrap();
    let cfg = env.config("npd_plugin_configs: [kernel-monitor.json]\n");
    let registry = prometheus::Registry::new();
    let client = env.node_client().await;
    let (c, _shutdown) = ctx(&env, cfg, client, &registry);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(super::run(c, cancel.clone()));
    wait_for(
        "the declared conditions, False",
        Duration::from_secs(15),
        || {
            ["KernelDeadlock", "XfsShutdown", "CperHardwareErrorFatal"]
                .iter()
                .all(|k| env.condition(k).is_some_and(|c| c["status"] == "False"))
        },
    )
    .await;
    let c = env.condition("XfsShutdown").unwrap();
    assert_eq!(c["reason"], "XfsHasNotShutDown");
    let metrics = || {
        use prometheus::Encoder as _;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut buf)
            .unwrap();
        String::from_utf8(buf).unwrap()
    };
    // NPD's series exist at 0 for every rule before anything happened.
    let m = metrics();
    assert!(
        m.contains("problem_counter{reason=\"OOMKilling\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("problem_gauge{reason=\"XfsHasShutdown\",type=\"XfsShutdown\"} 0"),
        "{m}"
    );

    // Stamped now (microseconds since boot, as kmsg does): the file's 5m lookback keeps them.
    let up = std::fs::read_to_string("/proc/uptime").unwrap();
    let t = (up
        .split_whitespace()
        .next()
        .unwrap()
        .parse::<f64>()
        .unwrap()
        * 1e6) as u64;
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    writeln!(
        f,
        "6,1,{t},-;Killed process 77 (java) total-vm:2048kB, anon-rss:1024kB, file-rss:0kB"
    )
    .unwrap();
    writeln!(
        f,
        "2,2,{t},-;XFS (vdb): Corruption of in-memory data detected. Shutting down filesystem"
    )
    .unwrap();
    let t = wait_for("XfsShutdown=True", Duration::from_secs(10), || {
        env.condition("XfsShutdown")
            .is_some_and(|c| c["status"] == "True")
    })
    .await;
    // kubectl's own polling adds to this; tests/bench/agent_health.sh measures the real figure.
    assert!(t < Duration::from_secs(5), "{t:?}");
    let c = env.condition("XfsShutdown").unwrap();
    assert_eq!(c["reason"], "XfsHasShutdown");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("Shutting down filesystem"),
        "{c}"
    );
    wait_for("the OOMKilling Event", Duration::from_secs(10), || {
        env.kubectl(&["get", "events", "-n", "default"])["items"]
            .as_array()
            .is_some_and(|a| {
                a.iter().any(|e| {
                    e["involvedObject"]["name"] == "health-npd-log"
                        && e["reason"] == "OOMKilling"
                        && e["type"] == "Warning"
                        && e["message"]
                            .as_str()
                            .is_some_and(|m| m.starts_with("Killed process 77 (java)"))
                })
            })
    })
    .await;
    let m = metrics();
    assert!(
        m.contains("problem_counter{reason=\"OOMKilling\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("problem_counter{reason=\"XfsHasShutdown\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("problem_gauge{reason=\"XfsHasShutdown\",type=\"XfsShutdown\"} 1"),
        "{m}"
    );
    // The agent's own checks are not in NPD's series.
    assert!(
        !m.contains("problem_counter{reason=\"NoKernelDeadlock"),
        "{m}"
    );
    cancel.cancel();
    task.await.unwrap().unwrap();
}
