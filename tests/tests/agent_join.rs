//! keel-agent's join against the test API server over real TLS: discovery (JWS, CA pin), TLS
//! bootstrap, registration and heartbeat, and the ways a join must refuse or resume.

mod agent_harness;

use std::time::Duration;

use agent_harness::{kubectl, label, wait_until, Cluster};

const DAY: Duration = Duration::from_secs(86400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_from_nothing_registers_node_with_pool_labels_taints_and_lease() {
    let c = Cluster::start().await;
    let token = c.server.create_bootstrap_token(DAY);
    let port = keel_e2e::free_port();
    let a = c.agent(
        "join-full",
        &token,
        &format!("metrics:\n  listen: 127.0.0.1:{port}\n"),
    );
    let mut p = a.spawn();
    wait_until(
        "the Lease",
        Duration::from_secs(30),
        || c.lease("join-full").is_some(),
        || p.log_text(),
    )
    .await;

    let node = c.node_json("join-full").expect("kubectl get node");
    assert_eq!(label(&node, "keel.io/pool"), Some("pool-a"));
    assert_eq!(label(&node, "example.com/team"), Some("infra"));
    assert_eq!(label(&node, "kubernetes.io/os"), Some("linux"));
    assert_eq!(label(&node, "kubernetes.io/hostname"), Some("join-full"));
    assert!(label(&node, "kubernetes.io/arch").is_some());
    let taints = node["spec"]["taints"].as_array().expect("taints");
    assert_eq!(taints.len(), 1);
    assert_eq!(taints[0]["key"], "dedicated");
    assert_eq!(taints[0]["value"], "infra");
    assert_eq!(taints[0]["effect"], "NoSchedule");
    let ready = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .expect("Ready condition");
    assert_eq!(ready["status"], "True");
    assert!(node["status"]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["type"] == "InternalIP"));
    assert!(node["status"]["capacity"]["cpu"].is_string());

    let (ok, out, err) = c.kubectl(&[
        "get",
        "lease",
        "-n",
        "kube-node-lease",
        "join-full",
        "-o",
        "json",
    ]);
    assert!(ok, "{err}");
    let lease: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "join-full");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 40);
    assert_eq!(lease["metadata"]["ownerReferences"][0]["kind"], "Node");

    // The node identity works for kubectl and is kept private.
    let (ok, _, err) = kubectl(&a.node_kubeconfig(), &["get", "node", "join-full"]);
    assert!(ok, "node identity: {err}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(a.node_kubeconfig())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // One CSR, signed for system:node:join-full with the kubelet client signer.
    let csrs = c.csrs();
    assert_eq!(csrs.len(), 1);
    assert_eq!(
        csrs[0]["spec"]["signerName"],
        "kubernetes.io/kube-apiserver-client-kubelet"
    );

    // Progress is visible in metrics and in `keel-agent status`.
    let metrics = http_get(port, "/metrics").await;
    assert!(
        metrics.contains("keel_agent_join_state{state=\"joined\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keel_agent_certificate_expiry_timestamp_seconds"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keel_agent_api_requests_total{resource=\"leases\""),
        "{metrics}"
    );
    let (st, out) = a
        .command_with("status", &["--json"], Duration::from_secs(10))
        .await;
    assert!(st.success(), "{out}");
    assert!(out.contains("\"join_state\": \"joined\""), "{out}");
    let (st, out) = a.command("status", Duration::from_secs(10)).await;
    assert!(st.success(), "{out}");
    assert!(out.contains("State:") && out.contains(" joined\n"), "{out}");
    assert!(out.contains("join-full (pool pool-a)"), "{out}");
    assert!(
        out.contains("Lease renewed:") && out.contains(" ago)"),
        "{out}"
    );

    // SIGTERM: a clean, prompt exit.
    p.signal(libc::SIGTERM);
    let st = p
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("exit after SIGTERM");
    assert!(st.success(), "exit status {st:?}\n{}", p.log_text());
    assert!(p.log_text().contains("agent stopped"));
}

async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect metrics");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut buf))
        .await
        .expect("metrics answer")
        .unwrap();
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_secret_fails_the_jws_check_and_writes_nothing() {
    let c = Cluster::start().await;
    let token = c.server.create_bootstrap_token(DAY);
    let id = token.split('.').next().unwrap();
    // Right token id (so cluster-info carries its signature), wrong secret.
    let a = c.agent("jws-wrong", &format!("{id}.0000000000000000"), "");
    let (st, log) = a.command("run", Duration::from_secs(40)).await;
    assert!(!st.success());
    assert!(
        log.contains("does not verify with the token secret"),
        "{log}"
    );
    assert!(a.credentials().is_empty(), "written: {:?}", a.credentials());
    assert!(c.csrs().is_empty());
    assert!(c.node_json("jws-wrong").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_pin_refuses_the_join_and_writes_nothing() {
    let c = Cluster::start().await;
    let token = c.server.create_bootstrap_token(DAY);
    let a = c.agent_with(
        "pin-wrong",
        &token,
        &format!("sha256:{}", "ab".repeat(32)),
        "",
    );
    let (st, log) = a.command("run", Duration::from_secs(40)).await;
    assert!(!st.success());
    assert!(
        log.contains("no CA certificate in cluster-info matches the configured pins"),
        "{log}"
    );
    // The error chain is printed once, on one line, each message once.
    let last: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("keel-agent: "))
        .collect();
    assert_eq!(last.len(), 1, "{log}");
    assert_eq!(
        last[0].matches("no CA certificate in cluster-info").count(),
        1,
        "{}",
        last[0]
    );
    assert!(a.credentials().is_empty(), "written: {:?}", a.credentials());
    assert!(c.csrs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_csr_stops_the_join_with_a_clear_error() {
    let c = Cluster::start().await;
    c.server.set_approve_csrs(false);
    let token = c.server.create_bootstrap_token(DAY);
    let a = c.agent("csr-denied", &token, "");
    let (st, log) = a.command("run", Duration::from_secs(40)).await;
    assert!(!st.success());
    assert!(log.contains("was denied"), "{log}");
    assert!(!a.node_kubeconfig().exists());
    assert!(c.node_json("csr-denied").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiring_mid_join_fails_clearly_and_a_new_token_resumes_the_same_csr() {
    let c = Cluster::start().await;
    c.server
        .set_csr_policy(keel_test_apiserver::controllers::CsrPolicy::Ignore);
    let token = c.server.create_bootstrap_token(Duration::from_secs(4));
    let a = c.agent("token-expiry", &token, "");
    let mut p = a.spawn();
    wait_until(
        "the CSR",
        Duration::from_secs(20),
        || !c.csrs().is_empty(),
        || p.log_text(),
    )
    .await;
    // The CSR stays pending; the token expires under the waiting agent.
    let st = p
        .wait_exit(Duration::from_secs(45))
        .await
        .unwrap_or_else(|| panic!("agent kept running:\n{}", p.log_text()));
    assert!(!st.success());
    let log = p.log_text();
    assert!(log.contains("expired or was deleted"), "{log}");
    assert!(!a.node_kubeconfig().exists());

    // A fresh token, the approver back on (and woken on the pending CSR, as its informer would).
    a.set_token(&c.server.create_bootstrap_token(DAY));
    c.server
        .set_csr_policy(keel_test_apiserver::controllers::CsrPolicy::Approve);
    let csr = c.csrs().remove(0);
    let name = csr["metadata"]["name"].as_str().unwrap().to_string();
    c.server.put(
        &format!("/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}"),
        csr,
    );
    let p = a.spawn();
    wait_until(
        "the Lease",
        Duration::from_secs(30),
        || c.lease("token-expiry").is_some(),
        || p.log_text(),
    )
    .await;
    let csrs = c.csrs();
    assert_eq!(csrs.len(), 1, "the restarted join filed another CSR");
    assert_eq!(csrs[0]["metadata"]["name"], name.as_str());
    assert!(
        p.log_text()
            .contains("found the certificate signing request filed earlier"),
        "{}",
        p.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_unavailable_for_a_while_then_back_the_agent_joins_with_backoff() {
    let c = Cluster::start().await;
    let token = c.server.create_bootstrap_token(DAY);
    let a = c.agent("api-down", &token, "");
    c.server.clear_request_log();
    // Every request fails for a while: 503s, then dropped connections.
    c.server.faults().fail_next(6, 503, None);
    c.server.faults().drop_next(2);
    let started = std::time::Instant::now();
    let mut p = a.spawn();
    wait_until(
        "the Lease",
        Duration::from_secs(60),
        || c.lease("api-down").is_some(),
        || p.log_text(),
    )
    .await;
    let failed = c
        .server
        .request_log()
        .iter()
        .filter(|r| r.status == 503)
        .count();
    assert_eq!(failed, 6, "every injected failure was met by a retry");
    // Backoff, not a tight loop: 6 failures + 2 drops took jittered, growing waits (≥ 0.25+0.5+1+2+4 s / 2).
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "joined after {:?}",
        started.elapsed()
    );
    assert!(
        c.server.request_log().len() < 60,
        "{} requests",
        c.server.request_log().len()
    );

    // And later: the server goes away entirely and comes back; renewals resume.
    c.server.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        p.running(),
        "agent died while the API was down:\n{}",
        p.log_text()
    );
    c.server.restart().await.expect("restart");
    let before = c.lease("api-down").unwrap()["spec"]["renewTime"].clone();
    wait_until(
        "a renewal after the restart",
        Duration::from_secs(40),
        || {
            c.lease("api-down")
                .is_some_and(|l| l["spec"]["renewTime"] != before)
        },
        || p.log_text(),
    )
    .await;
}

/// A minimal Debian 12 has no `ca-certificates`: the system trust store is empty. rustls-native-certs
/// (behind kube's platform verifier) reads only SSL_CERT_FILE / SSL_CERT_DIR when they are set, so
/// pointing both at nothing is that node. Discovery trusts the JWS and the pin, never the system.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_does_not_need_the_system_trust_roots() {
    let c = Cluster::start().await;
    let token = c.server.create_bootstrap_token(DAY);
    let a = c.agent("no-roots", &token, "");
    let p = spawn_without_system_roots(&a);
    wait_until(
        "the Lease",
        Duration::from_secs(40),
        || c.lease("no-roots").is_some(),
        || p.log_text(),
    )
    .await;
    let log = p.log_text();
    assert!(!log.contains("No CA certificates"), "{log}");
    // What the unverified fetch relies on is said, and kube's bare "bypassed" is not.
    assert!(
        log.contains("JWS signature (HS256) with the bootstrap token's secret")
            && log.contains("cluster-info signature and CA pin verified"),
        "{log}"
    );
    assert!(!log.contains("Server cert bypassed"), "{log}");
}

/// `keel-agent run` on a node whose system trust store is empty.
fn spawn_without_system_roots(a: &agent_harness::AgentSetup) -> agent_harness::AgentProc {
    let empty_file = a.dir.join("no-roots.pem");
    std::fs::write(&empty_file, "").unwrap();
    let empty_dir = a.dir.join("no-roots.d");
    std::fs::create_dir_all(&empty_dir).unwrap();
    a.spawn_env(&[
        ("SSL_CERT_FILE", empty_file.as_path()),
        ("SSL_CERT_DIR", empty_dir.as_path()),
    ])
}

/// The API server comes up after the agent (on a node without system roots, as the report had
/// it): discovery keeps trying inside the process (no exit, no systemd restart) and joins once it
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_coming_up_late_still_joins_within_discovery_timeout() {
    let c = Cluster::start().await;
    let token = c.server.create_bootstrap_token(DAY);
    let a = c.agent("api-late", &token, "");
    c.server.stop().await;
    let mut p = spawn_without_system_roots(&a);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        p.running(),
        "agent exited while the API was not up yet:\n{}",
        p.log_text()
    );
    assert!(
        p.log_text().contains("waiting for signed cluster-info"),
        "{}",
        p.log_text()
    );
    c.server.restart().await.expect("restart");
    // discovery_timeout is 60s in the harness config.
    wait_until(
        "the Lease",
        Duration::from_secs(50),
        || c.lease("api-late").is_some(),
        || p.log_text(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_each_step_resumes_without_joining_again() {
    let c = Cluster::start().await;
    c.server
        .set_csr_policy(keel_test_apiserver::controllers::CsrPolicy::Ignore);
    let token = c.server.create_bootstrap_token(DAY);
    let a = c.agent("restarts", &token, "");

    // Step 1: killed (SIGKILL) while its CSR is pending.
    let mut p = a.spawn();
    wait_until(
        "the CSR",
        Duration::from_secs(20),
        || !c.csrs().is_empty(),
        || p.log_text(),
    )
    .await;
    p.kill();
    assert!(a.state.join("ca.crt").exists() && a.state.join("pki/pending.key").exists());

    // Step 2: restarted, it reuses the CA (no discovery) and finds its CSR.
    c.server.clear_request_log();
    let mut p = a.spawn();
    wait_until(
        "the agent to wait on its CSR",
        Duration::from_secs(20),
        || {
            p.log_text()
                .contains("found the certificate signing request filed earlier")
        },
        || p.log_text(),
    )
    .await;
    assert!(p
        .log_text()
        .contains("reusing the cluster CA verified by an earlier run"));
    p.kill();
    c.server
        .set_csr_policy(keel_test_apiserver::controllers::CsrPolicy::Approve);
    let csr = c.csrs().remove(0);
    let name = csr["metadata"]["name"].as_str().unwrap().to_string();
    c.server.put(
        &format!("/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}"),
        csr,
    );

    // Step 3: restarted again: gets the certificate, registers.
    let mut p = a.spawn();
    wait_until(
        "the Lease",
        Duration::from_secs(30),
        || c.lease("restarts").is_some(),
        || p.log_text(),
    )
    .await;
    let uid = c.node_json("restarts").unwrap()["metadata"]["uid"].clone();
    p.kill();

    // Step 4: a joined node restarts: no discovery, no CSR, the same Node.
    c.server.clear_request_log();
    let p = a.spawn();
    wait_until(
        "a heartbeat after restart",
        Duration::from_secs(20),
        || p.log_text().contains("node joined and registered"),
        || p.log_text(),
    )
    .await;
    assert!(p.log_text().contains("already joined"), "{}", p.log_text());
    let log = c.server.request_log();
    assert!(
        !log.iter().any(|r| r.path.contains("cluster-info")),
        "discovery ran again"
    );
    assert!(
        !log.iter()
            .any(|r| r.path.contains("certificatesigningrequests")),
        "CSR API used again"
    );
    assert_eq!(c.csrs().len(), 1);
    assert_eq!(c.node_json("restarts").unwrap()["metadata"]["uid"], uid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_racing_for_one_node_name_never_duplicate_it() {
    let c = Cluster::start().await;
    let token = c.server.create_bootstrap_token(DAY);
    let a1 = c.agent("contested", &token, "");
    let a2 = c.agent("contested", &token, "");
    let mut p1 = a1.spawn();
    let mut p2 = a2.spawn();
    let (log1, log2) = (p1.log.clone(), p2.log.clone());
    let logs = || {
        format!(
            "{}\n----\n{}",
            std::fs::read_to_string(&log1).unwrap_or_default(),
            std::fs::read_to_string(&log2).unwrap_or_default()
        )
    };
    wait_until(
        "one agent to give up",
        Duration::from_secs(60),
        || !p1.running() || !p2.running(),
        logs,
    )
    .await;
    let (loser, winner) = if p1.running() {
        (&mut p2, &mut p1)
    } else {
        (&mut p1, &mut p2)
    };
    assert!(
        loser
            .log_text()
            .contains("already registered by another machine"),
        "{}",
        loser.log_text()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(winner.running(), "{}", winner.log_text());
    let (ok, out, _) = c.kubectl(&["get", "nodes", "-o", "name"]);
    assert!(ok);
    assert_eq!(out.lines().filter(|l| l.contains("contested")).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_managed_mode_writes_configs_kubelet_and_kubectl_can_use() {
    let c = Cluster::start().await;
    let token = c.server.create_bootstrap_token(DAY);
    let tmp = c.dir.path().join("kubelet");
    let extra = format!(
        "kubelet:\n  managed: true\n  start_service: false\n  kubeconfig: {0}/kubelet.conf\n  config: {0}/config.yaml\n  flags_file: {0}/keel-flags.env\n",
        tmp.display()
    );
    let a = c.agent("managed", &token, &extra);
    let mut p = a.spawn();
    let kubeconfig = tmp.join("kubelet.conf");
    wait_until(
        "kubelet files",
        Duration::from_secs(30),
        || tmp.join("keel-flags.env").exists(),
        || p.log_text(),
    )
    .await;

    let config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(tmp.join("config.yaml")).unwrap()).unwrap();
    assert_eq!(config["kind"], "KubeletConfiguration");
    assert_eq!(config["registerWithTaints"][0]["key"], "dedicated");
    assert_eq!(config["rotateCertificates"], false);
    let flags = std::fs::read_to_string(tmp.join("keel-flags.env")).unwrap();
    assert!(
        flags.contains("--node-labels=example.com/team=infra,keel.io/pool=pool-a"),
        "{flags}"
    );

    // kubelet's identity: it registers its Node (as kubelet would, taints from registerWithTaints)...
    let node = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "managed", "labels": {"keel.io/pool": "pool-a"}},
        "spec": {"taints": [{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}]}
    });
    let node_file = tmp.join("node.json");
    std::fs::write(&node_file, node.to_string()).unwrap();
    let (ok, _, err) = kubectl(
        &kubeconfig,
        &[
            "create",
            "--validate=false",
            "-f",
            node_file.to_str().unwrap(),
        ],
    );
    assert!(ok, "kubelet identity could not create its Node: {err}");
    // ...and reads it back.
    let (ok, out, err) = kubectl(&kubeconfig, &["get", "node", "managed", "-o", "name"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "node/managed");
    // In managed mode kubelet heartbeats, not the agent: the agent has joined, and through more
    // than one renew interval (10 s) it never creates the Lease an unmanaged agent creates at once.
    let (st, out) = a
        .command_with("status", &["--json"], Duration::from_secs(10))
        .await;
    assert!(
        st.success() && out.contains("\"join_state\": \"joined\""),
        "{out}"
    );
    let watched = std::time::Instant::now();
    while watched.elapsed() < Duration::from_secs(11) {
        assert!(
            c.lease("managed").is_none(),
            "a Lease appeared after {:?}\n{}",
            watched.elapsed(),
            p.log_text()
        );
        assert!(p.running(), "{}", p.log_text());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_restriction_refuses_a_later_taint_change_made_with_the_node_identity() {
    let c = Cluster::start().await;
    let token = c.server.create_bootstrap_token(DAY);
    let a = c.agent("restricted", &token, "");
    let p = a.spawn();
    wait_until(
        "the Lease",
        Duration::from_secs(30),
        || c.lease("restricted").is_some(),
        || p.log_text(),
    )
    .await;
    let (ok, _, err) = kubectl(
        &a.node_kubeconfig(),
        &["taint", "node", "restricted", "extra=1:NoSchedule"],
    );
    assert!(!ok);
    assert!(
        err.contains("Forbidden") || err.contains("forbidden"),
        "{err}"
    );
    let (ok, _, err) = kubectl(
        &a.node_kubeconfig(),
        &[
            "label",
            "node",
            "restricted",
            "node-role.kubernetes.io/worker=",
        ],
    );
    assert!(!ok, "node set its own role");
    assert!(err.to_lowercase().contains("forbidden"), "{err}");
    // Allowed: the node's own labels outside the restricted namespaces, and cordon.
    let (ok, _, err) = kubectl(
        &a.node_kubeconfig(),
        &["label", "node", "restricted", "example.com/x=y"],
    );
    assert!(ok, "{err}");
    let node = c.node_json("restricted").unwrap();
    assert_eq!(node["spec"]["taints"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_cordons_deletes_the_node_and_removes_credentials() {
    let c = Cluster::start().await;
    let token = c.server.create_bootstrap_token(DAY);
    let a = c.agent("leaver", &token, "");
    let mut p = a.spawn();
    wait_until(
        "the Lease",
        Duration::from_secs(30),
        || c.lease("leaver").is_some(),
        || p.log_text(),
    )
    .await;
    p.signal(libc::SIGTERM);
    p.wait_exit(Duration::from_secs(15)).await.expect("stopped");
    // The node identity may cordon and drain itself, but RBAC gives it no delete on Nodes.
    let (st, out) = a.command("leave", Duration::from_secs(60)).await;
    assert!(!st.success(), "{out}");
    assert!(out.contains("leave --kubeconfig"), "{out}");
    assert!(
        !a.credentials().is_empty(),
        "credentials removed although the Node stays"
    );
    assert_eq!(
        c.node_json("leaver").unwrap()["spec"]["unschedulable"],
        true
    );

    // With an administrator credential for the delete, leave completes.
    let (st, out) = a
        .command_with(
            "leave",
            &["--kubeconfig", c.admin.to_str().unwrap()],
            Duration::from_secs(60),
        )
        .await;
    assert!(st.success(), "{out}");
    assert!(out.contains("left the cluster"), "{out}");
    assert!(c.node_json("leaver").is_none(), "node still there");
    assert!(
        a.credentials().is_empty(),
        "left behind: {:?}",
        a.credentials()
    );
    let (st, out) = a.command("status", Duration::from_secs(10)).await;
    assert!(st.success() && out.contains(" left\n"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_is_renewed_with_the_node_identity_before_it_expires() {
    let c = Cluster::start().await;
    c.server.set_cert_backdate(Duration::ZERO);
    c.server.set_cert_duration(Duration::from_secs(20));
    let token = c.server.create_bootstrap_token(DAY);
    let port = keel_e2e::free_port();
    // A check that reports a problem: one condition True, one Event for its transition.
    let plugin = c.dir.path().join("renewer-problem.sh");
    std::fs::write(&plugin, "#!/bin/sh\necho marker problem\nexit 1\n").unwrap();
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let a = c.agent(
        "renewer",
        &token,
        &format!(
            "metrics:\n  listen: 127.0.0.1:{port}\nhealth:\n  refresh: 10s\n  checks:\n    - {{name: marker, kind: plugin, command: {}, interval: 1s, timeout: 1s, condition: MarkerProblem}}\n",
            plugin.display()
        ),
    );
    let p = a.spawn();
    let marker = || {
        c.node_json("renewer").and_then(|n| {
            n["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "MarkerProblem")
                .cloned()
        })
    };
    let marker_events = || {
        let (ok, out, _) = c.kubectl(&["get", "events", "-A", "-o", "json"]);
        assert!(ok);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["involvedObject"]["name"] == "renewer"
                    && e["reason"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("MarkerProblem")
            })
            .count()
    };
    wait_until(
        "the MarkerProblem condition",
        Duration::from_secs(30),
        || marker().is_some_and(|m| m["status"] == "True"),
        || p.log_text(),
    )
    .await;
    let transition = marker().unwrap()["lastTransitionTime"].clone();
    // `keel-agent status` shows the check's last result and the condition it set, from the status
    // file the health loop publishes to (at most once a second).
    let mut shown = String::new();
    for _ in 0..50 {
        let (st, out) = a.command("status", Duration::from_secs(10)).await;
        assert!(st.success(), "{out}");
        shown = out;
        let check = shown.lines().find(|l| l.starts_with("marker "));
        let cond = shown.lines().find(|l| l.starts_with("MarkerProblem "));
        if check.is_some_and(|l| l.contains("problem") && l.contains("marker problem"))
            && cond.is_some_and(|l| l.contains("True"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        shown.contains("CHECK") && shown.contains("CONDITION"),
        "{shown}"
    );
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("MarkerProblem ") && l.contains("True")),
        "{shown}"
    );
    wait_until(
        "the transition's Event",
        Duration::from_secs(15),
        || marker_events() == 1,
        || p.log_text(),
    )
    .await;
    wait_until(
        "the Lease",
        Duration::from_secs(30),
        || c.lease("renewer").is_some(),
        || p.log_text(),
    )
    .await;
    let first = std::fs::read_to_string(a.node_kubeconfig()).unwrap();
    // Renewal at 70-90 % of 20 s.
    wait_until(
        "a second CSR",
        Duration::from_secs(30),
        || c.csrs().len() >= 2,
        || p.log_text(),
    )
    .await;
    wait_until(
        "the renewed kubeconfig",
        Duration::from_secs(15),
        || std::fs::read_to_string(a.node_kubeconfig()).unwrap() != first,
        || p.log_text(),
    )
    .await;
    let renewal = c
        .csrs()
        .into_iter()
        .find(|c| c["spec"]["username"] == "system:node:renewer")
        .expect("a CSR filed by the node identity (selfnodeclient)");
    assert_eq!(
        renewal["spec"]["signerName"],
        "kubernetes.io/kube-apiserver-client-kubelet"
    );
    wait_until(
        "node health to move to the renewed certificate",
        Duration::from_secs(10),
        || {
            p.log_text()
                .contains("node health uses the renewed certificate (no restart)")
        },
        || p.log_text(),
    )
    .await;
    let metrics = http_get(port, "/metrics").await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("keel_agent_health_client_renewals_total ") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    // The heartbeat continues on the new certificate after the old one expired.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let before = c.lease("renewer").unwrap()["spec"]["renewTime"].clone();
    wait_until(
        "a renewal with the new certificate",
        Duration::from_secs(20),
        || {
            c.lease("renewer")
                .is_some_and(|l| l["spec"]["renewTime"] != before)
        },
        || p.log_text(),
    )
    .await;
    // Node health kept writing with the new certificate after the old one expired (a periodic
    // refresh), and was never restarted: started once, the transition neither re-sent as an Event
    // nor given a new transition time.
    let heartbeat = marker().unwrap()["lastHeartbeatTime"].clone();
    wait_until(
        "a condition refresh with the new certificate",
        Duration::from_secs(25),
        || marker().is_some_and(|m| m["lastHeartbeatTime"] != heartbeat),
        || p.log_text(),
    )
    .await;
    let log = p.log_text();
    assert_eq!(log.matches("node health started").count(), 1, "{log}");
    assert!(!log.contains("node health stopp"), "{log}");
    assert_eq!(marker().unwrap()["lastTransitionTime"], transition);
    assert_eq!(marker_events(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_bad_file_keeps_the_running_config_and_a_good_one_updates_labels() {
    let c = Cluster::start().await;
    let token = c.server.create_bootstrap_token(DAY);
    let port = keel_e2e::free_port();
    let mut a = c.agent(
        "reloader",
        &token,
        &format!("metrics:\n  listen: 127.0.0.1:{port}\n"),
    );
    let p = a.spawn();
    wait_until(
        "the Lease",
        Duration::from_secs(30),
        || c.lease("reloader").is_some(),
        || p.log_text(),
    )
    .await;
    let good = std::fs::read_to_string(&a.config).unwrap();
    std::fs::write(&a.config, format!("{good}bogus: 1\n")).unwrap();
    p.signal(libc::SIGHUP);
    wait_until(
        "the failed reload to be counted",
        Duration::from_secs(10),
        || {
            futures_lite_block(http_get(port, "/metrics"))
                .contains("keel_agent_config_reloads_total{result=\"error\"} 1")
        },
        || p.log_text(),
    )
    .await;
    wait_until(
        "the refusal in the log",
        Duration::from_secs(5),
        || p.log_text().contains("keeping the running config"),
        || p.log_text(),
    )
    .await;
    assert!(
        p.log_text().contains("unknown field `bogus`"),
        "{}",
        p.log_text()
    );

    a.extra = format!("metrics:\n  listen: 127.0.0.1:{port}\n");
    a.write_config();
    let text = std::fs::read_to_string(&a.config)
        .unwrap()
        .replace("example.com/team: infra", "example.com/team: platform");
    std::fs::write(&a.config, text).unwrap();
    p.signal(libc::SIGHUP);
    wait_until(
        "the new label",
        Duration::from_secs(10),
        || {
            c.node_json("reloader")
                .is_some_and(|n| label(&n, "example.com/team") == Some("platform"))
        },
        || p.log_text(),
    )
    .await;
}

/// `systemctl reload keel-agent` runs `keel-agent reload --pid $MAINPID`: it fails on a bad file
/// (without signalling) and when the agent refuses, and succeeds only once the agent applied it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_command_reports_the_running_agents_verdict() {
    let c = Cluster::start().await;
    let token = c.server.create_bootstrap_token(DAY);
    let a = c.agent("reload-cmd", &token, "");
    let p = a.spawn();
    wait_until(
        "the Lease",
        Duration::from_secs(30),
        || c.lease("reload-cmd").is_some(),
        || p.log_text(),
    )
    .await;
    let pid = p.child.id().to_string();
    let good = std::fs::read_to_string(&a.config).unwrap();

    // A file that does not validate: refused before the agent is bothered.
    std::fs::write(&a.config, format!("{good}bogus: 1\n")).unwrap();
    let (st, out) = a
        .command_with("reload", &["--pid", &pid], Duration::from_secs(40))
        .await;
    assert!(!st.success(), "{out}");
    assert!(
        out.contains("unknown field `bogus`") && out.contains("not sent"),
        "{out}"
    );
    assert!(!p.log_text().contains("SIGHUP"), "{}", p.log_text());

    // A good file: exit 0 once the agent applied it (the label is there by then).
    std::fs::write(
        &a.config,
        good.replace("example.com/team: infra", "example.com/team: platform"),
    )
    .unwrap();
    let (st, out) = a
        .command_with("reload", &["--pid", &pid], Duration::from_secs(40))
        .await;
    assert!(st.success(), "{out}\n{}", p.log_text());
    assert!(
        c.node_json("reload-cmd")
            .is_some_and(|n| label(&n, "example.com/team") == Some("platform")),
        "{}",
        p.log_text()
    );

    // No agent to signal (its refusal is unit-tested in agent/src/reload.rs).
    let (st, out) = a
        .command_with(
            "reload",
            &["--pid", "0", "--timeout", "1s"],
            Duration::from_secs(20),
        )
        .await;
    assert!(!st.success() && out.contains("cannot signal"), "{out}");
}

/// Runs a future to completion from a sync closure (the waits poll synchronously).
fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// A TCP proxy standing in for the load balancer's VIP: `failover()` turns every connection open
/// at that moment into a black hole (bytes stop flowing, nothing is closed — what a client sees
/// when the VIP moves to another LB that has no state for its flow); new connections work.
struct VipProxy {
    port: u16,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl VipProxy {
    async fn start(upstream: std::net::SocketAddr) -> VipProxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let generation = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let g = generation.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let born = g.load(Ordering::SeqCst);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (mut r, mut w) in [(cr, sw), (sr, cw)].map(|(r, w)| {
                    (
                        Box::new(r) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                        Box::new(w) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    )
                }) {
                    let g = g.clone();
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 16384];
                        loop {
                            let n = match r.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if g.load(Ordering::SeqCst) != born {
                                // Black hole: hold both sockets open, forward nothing, ever.
                                std::future::pending::<()>().await;
                            }
                            if w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        VipProxy {
            port,
            generation,
            task,
        }
    }

    fn failover(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for VipProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_connection_after_vip_failover_is_replaced_well_inside_the_node_grace_period() {
    let c = Cluster::start().await;
    let token = c.server.create_bootstrap_token(DAY);
    let proxy = VipProxy::start(c.server.addr()).await;
    let mut a = c.agent("failover", &token, "");
    a.server_url = format!("https://127.0.0.1:{}", proxy.port);
    a.write_config();
    let p = a.spawn();
    wait_until(
        "the Lease",
        Duration::from_secs(30),
        || c.lease("failover").is_some(),
        || p.log_text(),
    )
    .await;
    // Let a renewal go through the pooled connection, then move the "VIP".
    let first = c.lease("failover").unwrap()["spec"]["renewTime"].clone();
    wait_until(
        "a renewal",
        Duration::from_secs(20),
        || {
            c.lease("failover")
                .is_some_and(|l| l["spec"]["renewTime"] != first)
        },
        || p.log_text(),
    )
    .await;
    let stuck = c.lease("failover").unwrap()["spec"]["renewTime"].clone();
    let at = std::time::Instant::now();
    proxy.failover();
    wait_until(
        "a renewal on a fresh connection",
        Duration::from_secs(50),
        || {
            c.lease("failover")
                .is_some_and(|l| l["spec"]["renewTime"] != stuck)
        },
        || p.log_text(),
    )
    .await;
    let took = at.elapsed();
    // node-monitor-grace-period is 50 s; HTTP/2 keepalive alone would take ~45 s.
    assert!(
        took < Duration::from_secs(35),
        "recovered after {took:?}\n{}",
        p.log_text()
    );
    eprintln!("lease renewed {took:?} after the failover");
}

/// `systemctl stop keel-agent` is a plain SIGTERM (the system is not stopping): with
/// `health.drain.on_stop` the agent cordons and evicts before it exits; without it, it only exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_first_with_on_stop_and_only_exits_without() {
    let c = Cluster::start().await;
    for (name, extra, drains) in [
        (
            "stop-drain",
            "health:\n  drain:\n    on_stop: true\n    timeout: 20s\n",
            true,
        ),
        ("stop-plain", "", false),
    ] {
        let token = c.server.create_bootstrap_token(DAY);
        let a = c.agent(name, &token, extra);
        let mut p = a.spawn();
        wait_until(
            "the Lease",
            Duration::from_secs(30),
            || c.lease(name).is_some(),
            || p.log_text(),
        )
        .await;
        let pod = format!("web-{name}");
        c.server.put(
            &format!("/api/v1/namespaces/default/pods/{pod}"),
            serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": "default"},
                "spec": {"nodeName": name, "containers": [{"name": "web", "image": "web:1"}]},
            }),
        );
        p.signal(libc::SIGTERM);
        let st = p
            .wait_exit(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("{name}: no exit after SIGTERM:\n{}", p.log_text()));
        assert!(st.success(), "{name}: {st:?}\n{}", p.log_text());
        let node = c.node_json(name).expect("node");
        let gone = c
            .server
            .get(&format!("/api/v1/namespaces/default/pods/{pod}"))
            .is_none();
        assert_eq!(
            node["spec"]["unschedulable"] == true,
            drains,
            "{name}: cordoned?\n{}",
            p.log_text()
        );
        assert_eq!(gone, drains, "{name}: pod evicted?\n{}", p.log_text());
        assert_eq!(
            p.log_text()
                .contains("draining first (health.drain.on_stop)"),
            drains,
            "{}",
            p.log_text()
        );
    }
}
