//! Authentication, authorization and NodeRestriction, seen by curl and kubectl.

mod common;
use base64::Engine;
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_reads_only_cluster_info_and_gets_forbidden_status_otherwise() {
    let env = Env::start().await;
    let (code, body) = env
        .curl(
            &[],
            "/api/v1/namespaces/kube-public/configmaps/cluster-info",
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = env.curl(&[], "/api/v1/nodes").await;
    assert_eq!(code, 403);
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        s,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "nodes is forbidden: User \"system:anonymous\" cannot list resource \"nodes\" in API group \"\" at the cluster scope",
               "reason": "Forbidden", "details": {"kind": "nodes"}, "code": 403})
    );
    let (code, body) = env
        .curl(&[], "/api/v1/namespaces/kube-system/secrets/x")
        .await;
    assert_eq!(code, 403);
    assert!(body.contains("secrets \\\"x\\\" is forbidden: User \\\"system:anonymous\\\" cannot get resource \\\"secrets\\\" in API group \\\"\\\" in the namespace \\\"kube-system\\\""), "{body}");
    let (code, body) = env.curl(&[], "/api").await;
    assert_eq!(code, 403);
    assert!(
        body.contains("forbidden: User \\\"system:anonymous\\\" cannot get path \\\"/api\\\""),
        "{body}"
    );
    assert_eq!(env.curl(&[], "/version").await.0, 200);
    // Bad credentials are 401, not anonymous.
    let (code, body) = env
        .curl(
            &["-H", "Authorization: Bearer nope"],
            "/api/v1/namespaces/kube-public/configmaps/cluster-info",
        )
        .await;
    assert_eq!(code, 401);
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["reason"], "Unauthorized");
    assert_eq!(s["message"], "Unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_info_carries_a_detached_jws_per_signing_token() {
    let env = Env::start().await;
    let token = env.srv.create_bootstrap_token(Duration::from_secs(600));
    let (id, secret) = token.split_once('.').unwrap();
    let (_, body) = env
        .curl(
            &["-k"],
            "/api/v1/namespaces/kube-public/configmaps/cluster-info",
        )
        .await;
    let cm: Value = serde_json::from_str(&body).unwrap();
    let kubeconfig = cm["data"]["kubeconfig"].as_str().unwrap();
    assert!(kubeconfig.contains(&env.srv.url()));
    let jws = cm["data"][format!("jws-kubeconfig-{id}")].as_str().unwrap();
    let (h, sig) = jws.split_once("..").unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    assert_eq!(
        String::from_utf8(b64.decode(h).unwrap()).unwrap(),
        format!(r#"{{"alg":"HS256","kid":"{id}"}}"#)
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{h}.{}", b64.encode(kubeconfig)).as_bytes());
    mac.verify_slice(&b64.decode(sig).unwrap()).unwrap();
    // The CA pin is the SHA-256 of the CA's SubjectPublicKeyInfo.
    let pin = env.srv.ca_pin();
    let pubkey = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in {} -pubkey -noout | openssl pkey -pubin -outform der | sha256sum",
            env.path("ca.crt").display()
        ))
        .output()
        .unwrap();
    let hex = String::from_utf8_lossy(&pubkey.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(pin, format!("sha256:{hex}"));
    // A deleted (or expired) token's signature disappears.
    assert!(env.srv.delete(&format!(
        "/api/v1/namespaces/kube-system/secrets/bootstrap-token-{id}"
    )));
    let cm = env
        .srv
        .get("/api/v1/namespaces/kube-public/configmaps/cluster-info")
        .unwrap();
    assert!(cm["data"].get(format!("jws-kubeconfig-{id}")).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_token_creates_csr_that_is_approved_and_signed_and_expired_token_is_401() {
    let env = Env::start().await;
    let token = env.srv.create_bootstrap_token(Duration::from_secs(600));
    let kc = env.path("bootstrap.kubeconfig");
    env.srv.write_token_kubeconfig(&kc, &token).unwrap();
    let pem = csr_pem("system:node:n1", &["system:nodes"], None);
    std::fs::write(
        env.path("csr.json"),
        csr_object("node-csr-1", &pem, &["digital signature", "client auth"]).to_string(),
    )
    .unwrap();
    ok(&env
        .kubectl_as(
            KUBECTL.as_str(),
            &kc,
            &[
                "create",
                "--validate=false",
                "-f",
                env.path("csr.json").to_str().unwrap(),
            ],
        )
        .await);
    let csr = env
        .srv
        .get("/apis/certificates.k8s.io/v1/certificatesigningrequests/node-csr-1")
        .unwrap();
    let id = token.split_once('.').unwrap().0;
    assert_eq!(csr["spec"]["username"], format!("system:bootstrap:{id}"));
    assert_eq!(
        csr["spec"]["groups"],
        json!([
            "system:bootstrappers",
            "system:bootstrappers:kubeadm:default-node-token",
            "system:authenticated"
        ])
    );
    assert_eq!(csr["status"]["conditions"][0]["reason"], "AutoApproved");
    assert_eq!(
        csr["status"]["conditions"][0]["message"],
        "Auto approving kubelet client certificate after SubjectAccessReview."
    );
    let cert = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(csr["status"]["certificate"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let (nb, na) = keel_test_apiserver::pki::cert_validity(&cert).unwrap();
    assert_eq!(
        na.duration_since(nb).unwrap(),
        Duration::from_secs(3600 + 300),
        "1h TTL, backdated 5 min"
    );
    // The bootstrapper may read CSRs but not nodes lists or secrets.
    ok(&env
        .kubectl_as(KUBECTL.as_str(), &kc, &["get", "csr", "node-csr-1"])
        .await);
    let e = err(&env
        .kubectl_as(
            KUBECTL.as_str(),
            &kc,
            &["get", "secrets", "-n", "kube-system"],
        )
        .await);
    assert!(
        e.contains(&format!(
            "User \"system:bootstrap:{id}\" cannot list resource \"secrets\""
        )),
        "{e}"
    );

    // Expired token: 401 with an Unauthorized Status.
    env.srv.put_bootstrap_token(
        "expird",
        "0123456789abcdef",
        Some("2020-01-01T00:00:00Z"),
        true,
        true,
    );
    let (code, body) = env
        .curl(
            &["-H", "Authorization: Bearer expird.0123456789abcdef"],
            "/apis/certificates.k8s.io/v1/certificatesigningrequests",
        )
        .await;
    assert_eq!(code, 401, "{body}");
    // Wrong secret: 401.
    let bad = format!("{id}.0000000000000000");
    let (code, _) = env
        .curl(
            &["-H", &format!("Authorization: Bearer {bad}")],
            "/apis/certificates.k8s.io/v1/certificatesigningrequests",
        )
        .await;
    assert_eq!(code, 401);
    // The token cleaner removes expired tokens.
    wait_for(Duration::from_secs(5), || {
        env.srv
            .get("/api/v1/namespaces/kube-system/secrets/bootstrap-token-expird")
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_kubelet_csrs_stay_pending_and_fail_signing_when_approved() {
    let env = Env::start().await;
    let token = env.srv.create_bootstrap_token(Duration::from_secs(600));
    let kc = env.path("bootstrap.kubeconfig");
    env.srv.write_token_kubeconfig(&kc, &token).unwrap();
    let cases = [
        (
            "with-san",
            csr_pem("system:node:n1", &["system:nodes"], Some("n1.example")),
            "DNS subjectAltNames are not allowed",
        ),
        (
            "wrong-o",
            csr_pem("system:node:n1", &["system:masters"], None),
            "subject organization is not system:nodes",
        ),
        (
            "wrong-cn",
            csr_pem("n1", &["system:nodes"], None),
            "subject common name does not begin with system:node:",
        ),
    ];
    for (name, pem, _) in &cases {
        std::fs::write(
            env.path("c.json"),
            csr_object(name, pem, &["digital signature", "client auth"]).to_string(),
        )
        .unwrap();
        ok(&env
            .kubectl_as(
                KUBECTL.as_str(),
                &kc,
                &[
                    "create",
                    "--validate=false",
                    "-f",
                    env.path("c.json").to_str().unwrap(),
                ],
            )
            .await);
    }
    let out = ok(&env.kubectl(&["get", "csr"]).await);
    assert_eq!(out.matches("Pending").count(), 3, "{out}");
    for (name, _, why) in &cases {
        ok(&env.kubectl(&["certificate", "approve", name]).await);
        let c = env
            .srv
            .get(&format!(
                "/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}"
            ))
            .unwrap();
        let failed = c["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Failed")
            .cloned()
            .unwrap();
        assert_eq!(failed["reason"], "SignerValidationFailure");
        assert_eq!(failed["message"], *why);
        assert!(c["status"].get("certificate").is_none());
    }
    // With approval switched off, well-formed requests are denied.
    env.srv.set_approve_csrs(false);
    let pem = csr_pem("system:node:n2", &["system:nodes"], None);
    std::fs::write(
        env.path("c.json"),
        csr_object("denied", &pem, &["digital signature", "client auth"]).to_string(),
    )
    .unwrap();
    ok(&env
        .kubectl_as(
            KUBECTL.as_str(),
            &kc,
            &[
                "create",
                "--validate=false",
                "-f",
                env.path("c.json").to_str().unwrap(),
            ],
        )
        .await);
    let c = env
        .srv
        .get("/apis/certificates.k8s.io/v1/certificatesigningrequests/denied")
        .unwrap();
    assert_eq!(c["status"]["conditions"][0]["type"], "Denied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_client_cert_is_held_to_node_restriction() {
    let env = Env::start().await;
    let kc = env.path("node.kubeconfig");
    env.srv
        .write_cert_kubeconfig(&kc, "system:node:n1", &["system:nodes"])
        .unwrap();
    let mut node = node_json("n1");
    node["spec"] =
        json!({"taints": [{"key": "keel.io/pool", "value": "gpu", "effect": "NoSchedule"}]});
    node["metadata"]["labels"]["node.kubernetes.io/pool"] = json!("gpu");
    std::fs::write(env.path("n1.json"), node.to_string()).unwrap();
    ok(&env
        .kubectl_as(
            KUBECTL.as_str(),
            &kc,
            &[
                "create",
                "--validate=false",
                "-f",
                env.path("n1.json").to_str().unwrap(),
            ],
        )
        .await);
    assert_eq!(
        env.srv.get("/api/v1/nodes/n1").unwrap()["spec"]["taints"][0]["key"],
        "keel.io/pool"
    );

    // Taints may not change after creation.
    let e = err(&env
        .kubectl_as(
            KUBECTL.as_str(),
            &kc,
            &["taint", "node", "n1", "extra=x:NoSchedule"],
        )
        .await);
    assert!(e.contains("Error from server (Forbidden): nodes \"n1\" is forbidden: node \"n1\" is not allowed to modify taints"), "{e}");
    // node-role labels are forbidden; kubelet labels are fine.
    let e = err(&env
        .kubectl_as(
            KUBECTL.as_str(),
            &kc,
            &["label", "node", "n1", "node-role.kubernetes.io/worker="],
        )
        .await);
    assert!(e.contains("nodes \"n1\" is forbidden: is not allowed to modify labels: node-role.kubernetes.io/worker"), "{e}");
    ok(&env
        .kubectl_as(
            KUBECTL.as_str(),
            &kc,
            &["label", "node", "n1", "topology.kubernetes.io/zone=z1"],
        )
        .await);
    // Cordon is allowed.
    ok(&env
        .kubectl_as(KUBECTL.as_str(), &kc, &["cordon", "n1"])
        .await);
    // Other nodes are off limits; deleting its own Node is not in the node's RBAC rules.
    env.srv.put("/api/v1/nodes/n2", node_json("n2"));
    let e = err(&env
        .kubectl_as(KUBECTL.as_str(), &kc, &["label", "node", "n2", "a=b"])
        .await);
    // kubectl reads n2 first, which the Node authorizer refuses (AuthorizeNodeWithSelectors);
    // NodeRestriction's own refusal is in tests/dryrun.rs.
    assert!(
        e.contains("node 'n1' cannot read 'n2', only its own Node object"),
        "{e}"
    );
    let e = err(&env
        .kubectl_as(KUBECTL.as_str(), &kc, &["delete", "node", "n1"])
        .await);
    assert!(e.contains("cannot delete resource \"nodes\""), "{e}");
    // The privileged identity may change taints.
    let pk = env.path("priv.kubeconfig");
    env.srv
        .write_token_kubeconfig(&pk, &env.srv.privileged_token())
        .unwrap();
    ok(&env
        .kubectl_as(
            KUBECTL.as_str(),
            &pk,
            &["taint", "node", "n1", "extra=x:NoSchedule"],
        )
        .await);
    // Leases: only its own, in kube-node-lease.
    let lease = |name: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name, "namespace": "kube-node-lease"},
                                     "spec": {"holderIdentity": name, "leaseDurationSeconds": 40}})
    };
    std::fs::write(env.path("l.json"), lease("n1").to_string()).unwrap();
    ok(&env
        .kubectl_as(
            KUBECTL.as_str(),
            &kc,
            &[
                "create",
                "--validate=false",
                "-f",
                env.path("l.json").to_str().unwrap(),
            ],
        )
        .await);
    std::fs::write(env.path("l2.json"), lease("n2").to_string()).unwrap();
    let e = err(&env
        .kubectl_as(
            KUBECTL.as_str(),
            &kc,
            &[
                "create",
                "--validate=false",
                "-f",
                env.path("l2.json").to_str().unwrap(),
            ],
        )
        .await);
    assert!(
        e.contains("can only access node lease with the same name as the requesting node"),
        "{e}"
    );
    // Evictions only for pods bound to it.
    env.srv.put(
        "/api/v1/namespaces/default/pods/p2",
        ready_pod("p2", "n2", json!({})),
    );
    let (code, body) = {
        let out = env
            .kubectl_as(
                KUBECTL.as_str(),
                &kc,
                &["get", "--raw", "/api/v1/namespaces/default/pods/p2"],
            )
            .await;
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    // Only pods bound to the node are readable by it (Node authorizer graph).
    assert!(!code, "a node may not read another node's pod: {body}");
}
