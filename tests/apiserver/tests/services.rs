//! Services as upstream's registry keeps them, driven by kubectl: ClusterIP and NodePort
//! allocation, conflicts, release on delete and type change, healthCheckNodePort, the status
//! subresource, loadBalancerClass immutability, mixed protocols, dual-stack, and the printed
//! columns; EndpointSlices watched by their service-name label.

mod common;
use common::*;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::time::Duration;

fn in_v4_range(ip: &str) -> bool {
    // 10.96.0.0/12: 10.96.0.0 - 10.111.255.255
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => a.octets()[0] == 10 && (96..=111).contains(&a.octets()[1]),
        _ => false,
    }
}

fn node_port_of(svc: &Value, i: usize) -> i64 {
    svc["spec"]["ports"][i]["nodePort"].as_i64().unwrap_or(0)
}

/// `kubectl create --validate=false -f <file>` (no /openapi here) with `obj` written to a file.
async fn create_obj(env: &Env, bin: &str, obj: &Value) -> std::process::Output {
    let name = format!(
        "{}-{}.json",
        obj["kind"].as_str().unwrap_or("obj"),
        obj["metadata"]["name"].as_str().unwrap_or("x")
    );
    let path = env.path(&name);
    std::fs::write(&path, obj.to_string()).unwrap();
    env.kubectl_as(
        bin,
        &env.path("admin.kubeconfig"),
        &["create", "--validate=false", "-f", path.to_str().unwrap()],
    )
    .await
}

async fn get_json(env: &Env, bin: &str, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&ok(&env
        .kubectl_as(bin, &env.path("admin.kubeconfig"), &a)
        .await))
    .unwrap()
}

/// The header line of `kubectl get`, whitespace-normalised.
fn header(out: &str) -> String {
    out.lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

async fn load_balancer_lifecycle_with(bin: &str) {
    let env = Env::start().await;
    let kc = env.path("admin.kubeconfig");
    let k = |args: &'static [&'static str]| {
        let kc = kc.clone();
        let env = &env;
        async move { env.kubectl_as(bin, &kc, args).await }
    };
    ok(&k(&["create", "service", "loadbalancer", "web", "--tcp=80:8080"]).await);
    let svc = get_json(&env, bin, &["svc", "web"]).await;
    let spec = &svc["spec"];
    assert_eq!(spec["type"], "LoadBalancer");
    let ip = spec["clusterIP"].as_str().unwrap();
    assert!(in_v4_range(ip), "{svc}");
    assert_eq!(spec["clusterIPs"], json!([ip]));
    assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
    assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
    assert_eq!(spec["sessionAffinity"], "None");
    assert_eq!(spec["externalTrafficPolicy"], "Cluster");
    assert_eq!(spec["internalTrafficPolicy"], "Cluster");
    assert_eq!(spec["allocateLoadBalancerNodePorts"], true);
    assert_eq!(spec["ports"][0]["protocol"], "TCP");
    assert_eq!(spec["ports"][0]["targetPort"], 8080);
    let np = node_port_of(&svc, 0);
    assert!((30000..=32767).contains(&np), "{svc}");
    assert!(spec.get("healthCheckNodePort").is_none());
    assert_eq!(svc["status"], json!({"loadBalancer": {}}));

    let out = ok(&k(&["get", "svc", "web"]).await);
    assert_eq!(
        header(&out),
        "NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE",
        "{out}"
    );
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..5],
        &[
            "web",
            "LoadBalancer",
            ip,
            "<pending>",
            &format!("80:{np}/TCP")
        ],
        "{out}"
    );
    let out = ok(&k(&["get", "svc", "web", "-o", "wide"]).await);
    assert!(header(&out).ends_with("AGE SELECTOR"), "{out}");
    assert!(out.contains("app=web"), "{out}");
    // The apiserver's own Service is there, as in every cluster.
    let out = ok(&k(&["get", "svc"]).await);
    assert!(
        out.contains("kubernetes") && out.contains("10.96.0.1 ") && out.contains("443/TCP"),
        "{out}"
    );

    // ETP=Local gets a healthCheckNodePort; back to Cluster releases it.
    ok(&k(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"externalTrafficPolicy":"Local"}}"#,
    ])
    .await);
    let svc = get_json(&env, bin, &["svc", "web"]).await;
    let hc = svc["spec"]["healthCheckNodePort"].as_i64().unwrap_or(0);
    assert!((30000..=32767).contains(&hc) && hc != np, "{svc}");
    assert_eq!(node_port_of(&svc, 0), np, "the nodePort stays");
    ok(&k(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"externalTrafficPolicy":"Cluster"}}"#,
    ])
    .await);
    let svc = get_json(&env, bin, &["svc", "web"]).await;
    assert!(svc["spec"].get("healthCheckNodePort").is_none(), "{svc}");

    // status only through the status subresource.
    ok(&k(&[
        "patch",
        "svc",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.10"}]}}}"#,
    ])
    .await);
    let svc = get_json(&env, bin, &["svc", "web"]).await;
    assert_eq!(
        svc["status"]["loadBalancer"]["ingress"],
        json!([{"ip": "192.0.2.10", "ipMode": "VIP"}])
    );
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    ok(&k(&[
        "patch",
        "svc",
        "web",
        "--type=merge",
        "-p",
        r#"{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.99"}]}}}"#,
    ])
    .await);
    let svc = get_json(&env, bin, &["svc", "web"]).await;
    assert_eq!(
        svc["status"]["loadBalancer"]["ingress"][0]["ip"], "192.0.2.10",
        "a main-resource patch leaves status alone"
    );
    // A status write keeps the old spec.
    ok(&k(&[
        "patch",
        "svc",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"spec":{"sessionAffinity":"ClientIP"}}"#,
    ])
    .await);
    let svc = get_json(&env, bin, &["svc", "web"]).await;
    assert_eq!(svc["spec"]["sessionAffinity"], "None");
    let out = ok(&k(&["get", "svc", "web"]).await);
    assert!(out.contains("192.0.2.10"), "{out}");

    // Type ClusterIP: the nodePort is dropped and free again; LB status is cleared.
    ok(&k(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"type":"ClusterIP"}}"#,
    ])
    .await);
    let svc = get_json(&env, bin, &["svc", "web"]).await;
    assert!(svc["spec"]["ports"][0].get("nodePort").is_none(), "{svc}");
    assert!(svc["spec"].get("externalTrafficPolicy").is_none(), "{svc}");
    assert!(
        svc["spec"].get("allocateLoadBalancerNodePorts").is_none(),
        "{svc}"
    );
    assert_eq!(svc["spec"]["clusterIP"], ip, "the ClusterIP stays");
    assert_eq!(svc["status"], json!({"loadBalancer": {}}));
    let port = format!("--node-port={np}");
    let args = ["create", "service", "nodeport", "taker", "--tcp=80", &port];
    ok(&env.kubectl_as(bin, &kc, &args).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_current_load_balancer_gets_cluster_ip_node_port_health_check_and_status() {
    load_balancer_lifecycle_with(KUBECTL.as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_oldest_load_balancer_gets_cluster_ip_node_port_health_check_and_status() {
    load_balancer_lifecycle_with(KUBECTL_OLD.as_str()).await;
}

async fn node_port_conflicts_with(bin: &str) {
    let env = Env::start().await;
    let kc = env.path("admin.kubeconfig");
    let create = |name: &'static str| {
        let kc = kc.clone();
        let env = &env;
        async move {
            env.kubectl_as(
                bin,
                &kc,
                &[
                    "create",
                    "service",
                    "nodeport",
                    name,
                    "--tcp=80",
                    "--node-port=30080",
                ],
            )
            .await
        }
    };
    ok(&create("a").await);
    let e = err(&create("b").await);
    assert!(
        e.contains("Service \"b\" is invalid: spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"),
        "{e}"
    );
    // Outside the range.
    let e = err(&env
        .kubectl_as(
            bin,
            &kc,
            &[
                "create",
                "service",
                "nodeport",
                "c",
                "--tcp=80",
                "--node-port=8080",
            ],
        )
        .await);
    assert!(
        e.contains("spec.ports[0].nodePort: Invalid value: 8080: provided port is not in the valid range. The range of valid ports is 30000-32767"),
        "{e}"
    );
    // A taken ClusterIP is refused, an address outside the range too.
    let a = get_json(&env, bin, &["svc", "a"]).await;
    let taken = a["spec"]["clusterIP"].as_str().unwrap().to_string();
    let flag = format!("--clusterip={taken}");
    let e = err(&env
        .kubectl_as(
            bin,
            &kc,
            &["create", "service", "clusterip", "d", "--tcp=80", &flag],
        )
        .await);
    assert!(
        e.contains(&format!("spec.clusterIPs: Invalid value: []string{{\"{taken}\"}}: failed to allocate IP {taken}: provided IP is already allocated")),
        "{e}"
    );
    let e = err(&env
        .kubectl_as(
            bin,
            &kc,
            &[
                "create",
                "service",
                "clusterip",
                "d",
                "--tcp=80",
                "--clusterip=192.0.2.1",
            ],
        )
        .await);
    assert!(
        e.contains("failed to allocate IP 192.0.2.1: provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/12"),
        "{e}"
    );
    // A requested free ClusterIP is honoured; headless has none.
    ok(&env
        .kubectl_as(
            bin,
            &kc,
            &[
                "create",
                "service",
                "clusterip",
                "d",
                "--tcp=80",
                "--clusterip=10.96.0.53",
            ],
        )
        .await);
    assert_eq!(
        get_json(&env, bin, &["svc", "d"]).await["spec"]["clusterIPs"],
        json!(["10.96.0.53"])
    );
    ok(&env
        .kubectl_as(
            bin,
            &kc,
            &[
                "create",
                "service",
                "clusterip",
                "h",
                "--tcp=80",
                "--clusterip=None",
            ],
        )
        .await);
    let h = get_json(&env, bin, &["svc", "h"]).await;
    assert_eq!(h["spec"]["clusterIPs"], json!(["None"]));
    // The clusterIP is immutable.
    let e = err(&env
        .kubectl_as(
            bin,
            &kc,
            &[
                "patch",
                "svc",
                "d",
                "-p",
                r#"{"spec":{"clusterIP":"10.96.0.54"}}"#,
            ],
        )
        .await);
    assert!(
        e.contains(
            "spec.clusterIPs[0]: Invalid value: []string{\"10.96.0.54\"}: may not change once set"
        ),
        "{e}"
    );
    // Delete frees the port and the address.
    ok(&env.kubectl_as(bin, &kc, &["delete", "svc", "a"]).await);
    ok(&create("b").await);
    let b = get_json(&env, bin, &["svc", "b"]).await;
    assert_eq!(node_port_of(&b, 0), 30080);
    ok(&env
        .kubectl_as(
            bin,
            &kc,
            &["create", "service", "clusterip", "e", "--tcp=80", &flag],
        )
        .await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_current_node_port_and_cluster_ip_conflicts_are_refused_and_freed_by_delete() {
    node_port_conflicts_with(KUBECTL.as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_oldest_node_port_and_cluster_ip_conflicts_are_refused_and_freed_by_delete() {
    node_port_conflicts_with(KUBECTL_OLD.as_str()).await;
}

async fn spec_variants_with(bin: &str) {
    let env = Env::start().await;
    let kc = env.path("admin.kubeconfig");
    let svc = |name: &str, spec: Value| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec});
    // allocateLoadBalancerNodePorts=false: no nodePort unless asked for.
    ok(&create_obj(
        &env,
        bin,
        &svc(
            "nonp",
            json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false,
                   "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81, "nodePort": 30081}]}),
        ),
    )
    .await);
    let s = get_json(&env, bin, &["svc", "nonp"]).await;
    assert_eq!(node_port_of(&s, 0), 0, "{s}");
    assert_eq!(node_port_of(&s, 1), 30081, "{s}");
    let out = ok(&env.kubectl_as(bin, &kc, &["get", "svc", "nonp"]).await);
    assert!(out.contains("80/TCP,81:30081/TCP"), "{out}");

    // Mixed protocols in one LoadBalancer; 53/TCP and 53/UDP share a NodePort.
    ok(&create_obj(
        &env,
        bin,
        &svc(
            "dns",
            json!({"type": "LoadBalancer", "selector": {"app": "dns"},
                   "ports": [{"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                             {"name": "dns", "port": 53, "protocol": "UDP"}]}),
        ),
    )
    .await);
    let s = get_json(&env, bin, &["svc", "dns"]).await;
    let np = node_port_of(&s, 0);
    assert!(np > 0 && np == node_port_of(&s, 1), "{s}");
    let out = ok(&env.kubectl_as(bin, &kc, &["get", "svc", "dns"]).await);
    assert!(out.contains(&format!("53:{np}/TCP,53:{np}/UDP")), "{out}");

    // Dual-stack: one address per family.
    ok(&create_obj(
        &env,
        bin,
        &svc(
            "dual",
            json!({"ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 80}]}),
        ),
    )
    .await);
    let s = get_json(&env, bin, &["svc", "dual"]).await;
    assert_eq!(s["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
    let ips = s["spec"]["clusterIPs"].as_array().unwrap();
    assert!(in_v4_range(ips[0].as_str().unwrap()), "{s}");
    assert!(ips[1].as_str().unwrap().starts_with("fd00:10:96::"), "{s}");
    ok(&create_obj(
        &env,
        bin,
        &svc(
            "six",
            json!({"ipFamilies": ["IPv6"], "ports": [{"port": 80}]}),
        ),
    )
    .await);
    let s = get_json(&env, bin, &["svc", "six"]).await;
    assert!(
        s["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .starts_with("fd00:10:96::"),
        "{s}"
    );

    // loadBalancerClass: only on LoadBalancer, immutable once set; loadBalancerIP is accepted.
    ok(&create_obj(
        &env,
        bin,
        &svc(
            "classy",
            json!({"type": "LoadBalancer", "loadBalancerClass": "example.com/keel", "loadBalancerIP": "192.0.2.44",
                   "ports": [{"port": 443}]}),
        ),
    )
    .await);
    let e = err(&env
        .kubectl_as(
            bin,
            &kc,
            &[
                "patch",
                "svc",
                "classy",
                "-p",
                r#"{"spec":{"loadBalancerClass":"example.com/other"}}"#,
            ],
        )
        .await);
    assert!(
        e.contains("The Service \"classy\" is invalid: spec.loadBalancerClass: Invalid value: \"example.com/other\": may not change once set"),
        "{e}"
    );
    let e = err(&create_obj(
        &env,
        bin,
        &svc(
            "notlb",
            json!({"loadBalancerClass": "example.com/keel", "ports": [{"port": 80}]}),
        ),
    )
    .await);
    assert!(
        e.contains(
            "spec.loadBalancerClass: Forbidden: may only be used when `type` is 'LoadBalancer'"
        ),
        "{e}"
    );

    // ValidateService's main rules, all reported at once.
    let e = err(&create_obj(
        &env,
        bin,
        &svc(
            "bad",
            json!({"type": "ClusterIP", "externalTrafficPolicy": "Local",
                   "ports": [{"port": 80, "nodePort": 30099}, {"port": 70000, "protocol": "ICMP"}]}),
        ),
    )
    .await);
    for want in [
        "spec.ports[0].name: Required value",
        "spec.ports[1].name: Required value",
        "spec.ports[1].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
        "spec.ports[1].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
        "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
        "spec.externalTrafficPolicy: Invalid value: \"Local\": may only be set for externally-accessible services",
    ] {
        assert!(e.contains(want), "{want} in {e}");
    }
    let e = err(&create_obj(
        &env,
        bin,
        &svc(
            "dup",
            json!({"type": "NodePort", "externalTrafficPolicy": "Nowhere",
                   "ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}),
        ),
    )
    .await);
    assert!(
        e.contains("spec.ports[1].name: Duplicate value: \"a\""),
        "{e}"
    );
    assert!(
        e.contains("spec.externalTrafficPolicy: Unsupported value: \"Nowhere\": supported values: \"Cluster\", \"Local\""),
        "{e}"
    );
    let e = err(&create_obj(
        &env,
        bin,
        &svc("typo", json!({"type": "Balanced", "ports": [{"port": 80}]})),
    )
    .await);
    assert!(
        e.contains("spec.type: Unsupported value: \"Balanced\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_current_service_spec_variants_and_validation() {
    spec_variants_with(KUBECTL.as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_oldest_service_spec_variants_and_validation() {
    spec_variants_with(KUBECTL_OLD.as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_survive_restart() {
    let env = Env::start().await;
    ok(&env
        .kubectl(&[
            "create",
            "service",
            "nodeport",
            "a",
            "--tcp=80",
            "--node-port=30100",
        ])
        .await);
    let a = env
        .srv
        .get("/api/v1/namespaces/default/services/a")
        .unwrap();
    let ip = a["spec"]["clusterIP"].as_str().unwrap().to_string();
    env.srv.restart().await.unwrap();
    let e = err(&env
        .kubectl(&[
            "create",
            "service",
            "nodeport",
            "b",
            "--tcp=80",
            "--node-port=30100",
        ])
        .await);
    assert!(e.contains("provided port is already allocated"), "{e}");
    let flag = format!("--clusterip={ip}");
    let e = err(&env
        .kubectl(&["create", "service", "clusterip", "c", "--tcp=80", &flag])
        .await);
    assert!(e.contains("provided IP is already allocated"), "{e}");
    // Seeding through the library allocates as the registry does.
    env.srv.put(
        "/api/v1/namespaces/default/services/seeded",
        json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}}),
    );
    let s = env
        .srv
        .get("/api/v1/namespaces/default/services/seeded")
        .unwrap();
    assert!(in_v4_range(s["spec"]["clusterIP"].as_str().unwrap()), "{s}");
    assert!(node_port_of(&s, 0) >= 30000, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpointslices_are_watched_by_service_name_label() {
    let env = Env::start().await;
    let slice = |name: &str, svc: &str, ip: &str| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": name, "labels": {"kubernetes.io/service-name": svc}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
               "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}]})
    };
    ok(&create_obj(&env, KUBECTL.as_str(), &slice("web-a", "web", "10.0.0.1")).await);
    let kc = env.path("admin.kubeconfig");
    let home = env.dir.path().to_path_buf();
    let watch = tokio::spawn(async move {
        let c = tokio::process::Command::new(KUBECTL.as_str())
            .env("HOME", home)
            .arg("--kubeconfig")
            .arg(kc)
            .args([
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=web",
                "--watch",
                "--output-watch-events",
                "--request-timeout=5s",
            ])
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .unwrap()
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ok(&create_obj(&env, KUBECTL.as_str(), &slice("web-b", "web", "10.0.0.2")).await);
    ok(&create_obj(&env, KUBECTL.as_str(), &slice("db-a", "db", "10.0.0.3")).await);
    ok(&env.kubectl(&["delete", "endpointslice", "web-a"]).await);
    let out = watch.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // EVENT NAME ADDRESSTYPE PORTS ENDPOINTS AGE
    let events: Vec<String> = stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        events,
        ["ADDED web-a", "ADDED web-b", "DELETED web-a"],
        "stdout={stdout} stderr={}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("db-a"), "{stdout}");
    let out = ok(&env.kubectl(&["get", "endpointslices"]).await);
    assert_eq!(
        header(&out),
        "NAME ADDRESSTYPE PORTS ENDPOINTS AGE",
        "{out}"
    );
    assert!(
        out.contains("IPv4") && out.contains("8080") && out.contains("10.0.0.2"),
        "{out}"
    );
}

async fn printed_headers_with(bin: &str) {
    let env = Env::start().await;
    let kc = env.path("admin.kubeconfig");
    env.srv.put(
        "/api/v1/namespaces/default/events/e1",
        json!({"involvedObject": {"kind": "Node", "name": "n1"}, "reason": "Rebooted", "type": "Warning",
               "message": "node rebooted", "count": 2, "source": {"component": "kubelet", "host": "n1"},
               "firstTimestamp": "2025-01-01T00:00:00Z", "lastTimestamp": "2025-01-01T00:00:00Z"}),
    );
    env.srv.put(
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1",
        json!({"spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40}}),
    );
    env.srv.put(
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets/web",
        json!({"spec": {"maxUnavailable": "25%", "selector": {"matchLabels": {"app": "web"}}}}),
    );
    let get = |args: &'static [&'static str]| {
        let kc = kc.clone();
        let env = &env;
        async move { ok(&env.kubectl_as(bin, &kc, args).await) }
    };
    let out = get(&["get", "events"]).await;
    assert_eq!(
        header(&out),
        "LAST SEEN TYPE REASON OBJECT MESSAGE",
        "{out}"
    );
    assert!(
        out.contains("Warning") && out.contains("node/n1") && out.contains("node rebooted"),
        "{out}"
    );
    let out = get(&["get", "leases", "-n", "kube-node-lease"]).await;
    assert_eq!(header(&out), "NAME HOLDER AGE", "{out}");
    assert!(out.lines().nth(1).unwrap().starts_with("n1 "), "{out}");
    let out = get(&["get", "pdb"]).await;
    assert_eq!(
        header(&out),
        "NAME MIN AVAILABLE MAX UNAVAILABLE ALLOWED DISRUPTIONS AGE",
        "{out}"
    );
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..4], &["web", "N/A", "25%", "0"], "{out}");
    let out = get(&["get", "ns"]).await;
    assert_eq!(header(&out), "NAME STATUS AGE", "{out}");
    assert!(
        out.contains("kube-system") && out.contains("Active"),
        "{out}"
    );
    let out = get(&["get", "svc", "-A"]).await;
    assert_eq!(
        header(&out),
        "NAMESPACE NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE",
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_current_prints_upstream_headers() {
    printed_headers_with(KUBECTL.as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_oldest_prints_upstream_headers() {
    printed_headers_with(KUBECTL_OLD.as_str()).await;
}
