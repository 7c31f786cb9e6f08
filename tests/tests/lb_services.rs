//! keel-lb as the workload cluster's Service load-balancer provider, end to end: the API test server,
//! real kubectl, keel-lb pairs with VRRP, node hosts standing in for kubelet + kube-proxy, and a
//! client that reaches the Services' addresses.

mod svc_lab;

use std::collections::BTreeSet;
use std::time::Duration;

use keel_e2e::require_root;
use svc_lab::*;

/// Generous: the target is one second; the rest absorbs a loaded CI machine.
const SOON: Duration = Duration::from_secs(20);

#[test]
fn a_service_gets_an_address_answers_through_the_pair_and_is_cleaned_up() {
    require_root!();
    let mut lab = Lab::new("svc-basic", &["lb1", "lb2"]);
    lab.nodes(&[30080], &[], &[]);
    let _lb1 = lab.keel("lb1", 200);
    let _lb2 = lab.keel("lb2", 100);
    lab.create(&service(
        "default",
        "web",
        &[("http", "TCP", 80, 30080)],
        "",
        "",
    ));
    let ips = lab.wait("web gets an address", SOON, || {
        let i = lab.ingress("default", "web");
        (!i.is_empty()).then_some(i)
    });
    assert_eq!(ips, vec![POOL_FIRST.to_string()]);
    let svc = lab.apply_json("svc", "default", "web");
    assert_eq!(svc["status"]["loadBalancer"]["ingress"][0]["ipMode"], "VIP");
    assert_eq!(
        svc["metadata"]["annotations"]["lb.keel.io/allocated-ips"],
        POOL_FIRST
    );
    assert!(svc["metadata"]["finalizers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "service.kubernetes.io/load-balancer-cleanup"));
    // Every node answers through the VIP (round robin over healthy nodes).
    let seen: BTreeSet<String> = lab.wait("all three nodes answer through the VIP", SOON, || {
        let s: BTreeSet<String> = (0..12).filter_map(|_| lab.tcp(POOL_FIRST, 80)).collect();
        (s.len() == 3).then_some(s)
    });
    assert_eq!(seen.len(), 3);
    // The VRRP master (lb1, priority 200) holds the address; the backup does not.
    assert!(lab.has_addr("lb1", POOL_FIRST) && !lab.has_addr("lb2", POOL_FIRST));
    let reasons = lab.event_reasons("default", "web");
    for r in ["EnsuringLoadBalancer", "EnsuredLoadBalancer"] {
        assert!(reasons.iter().any(|x| x == r), "no {r} event: {reasons:?}");
    }
    // Operators see them where they look: `kubectl describe svc` reads core/v1 Events, keel-lb
    // records through events.k8s.io/v1 (one resource upstream).
    let described = lab.kubectl_ok(&["describe", "svc", "web"]);
    assert!(
        described.contains("EnsuredLoadBalancer"),
        "describe svc shows keel-lb's Events: {described}"
    );
    // Both LBs list it in their admin API, with three backends.
    for lb in ["lb1", "lb2"] {
        let v: serde_json::Value = serde_json::from_str(&lab.admin(lb, "/services")).unwrap();
        let s = &v["services"][0];
        assert_eq!(s["service"], "default/web", "{v}");
        assert_eq!(
            s["ports"][0]["backends"].as_array().unwrap().len(),
            3,
            "{v}"
        );
    }
    // The status snapshot and page carry it too (GET /services as is, and a row).
    let st: serde_json::Value = serde_json::from_str(&lab.admin("lb1", "/v1/status")).unwrap();
    assert_eq!(
        st["services"]["services"][0]["service"], "default/web",
        "{st}"
    );
    assert!(st["frontends"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "default/web:80/TCP@198.18.2.100"));
    let page = lab.admin("lb1", "/");
    assert!(page.contains("data-service=\"default/web\""), "{page}");
    // Metrics name the Service.
    let m = lab.admin("lb1", "/metrics");
    assert!(
        m.contains("frontend=\"default/web:80/TCP@198.18.2.100\""),
        "{m}"
    );

    // Delete: the finalizer goes, the Service goes, the address stops answering and is free again.
    lab.kubectl_ok(&["delete", "svc", "web", "--wait=false"]);
    lab.wait("web is gone", SOON, || {
        (!lab.kubectl(&["get", "svc", "web"]).status.success()).then_some(())
    });
    lab.wait("the address stops answering", SOON, || {
        lab.tcp(POOL_FIRST, 80).is_none().then_some(())
    });
    let reasons = lab.event_reasons("default", "web");
    assert!(
        reasons.iter().any(|x| x == "DeletedLoadBalancer"),
        "{reasons:?}"
    );
    lab.create(&service(
        "default",
        "web2",
        &[("http", "TCP", 80, 30080)],
        "",
        "",
    ));
    let ips = lab.wait("web2 gets the freed address", SOON, || {
        let i = lab.ingress("default", "web2");
        (!i.is_empty()).then_some(i)
    });
    assert_eq!(ips, vec![POOL_FIRST.to_string()]);
}

#[test]
fn traffic_survives_the_master_dying_and_the_api_server_going_away_even_across_a_restart() {
    require_root!();
    let mut lab = Lab::new("svc-outage", &["lb1", "lb2"]);
    lab.nodes(&[30080], &[], &[]);
    let mut lb1 = lab.keel("lb1", 200);
    let mut lb2 = lab.keel("lb2", 100);
    lab.create(&service(
        "default",
        "web",
        &[("http", "TCP", 80, 30080)],
        "",
        "",
    ));
    lab.wait("web answers", SOON, || lab.tcp(POOL_FIRST, 80));
    // The master dies: the backup already has the rule and takes the address over.
    lb1.kill();
    lab.wait("web answers from lb2", SOON, || {
        lab.has_addr("lb2", POOL_FIRST)
            .then(|| lab.tcp(POOL_FIRST, 80))
            .flatten()
    });
    // The API server goes away: traffic continues.
    lab.stop_api();
    for _ in 0..5 {
        assert!(
            lab.tcp(POOL_FIRST, 80).is_some(),
            "lost traffic with the API server down"
        );
    }
    // keel-lb restarts during the outage and serves the rules it kept on disk.
    lb2.kill();
    let _lb2 = lab.keel("lb2", 100);
    lab.wait(
        "web answers after lb2 restarted without an API server",
        SOON,
        || lab.tcp(POOL_FIRST, 80),
    );
    assert!(lab
        .log("lb2")
        .contains("serving the rules kept from the last run"));
}

#[test]
fn addresses_are_shared_by_key_and_protocol_refused_when_exhausted_and_other_classes_ignored() {
    require_root!();
    let mut lab = Lab::new("svc-ipam", &["lb1"]);
    // nodePorts are cluster-wide unique (one allocator whatever the protocol), as upstream.
    lab.nodes(
        &[30053, 30054, 30080, 30081, 30082, 30083, 30084],
        &[30055],
        &[],
    );
    let _lb1 = lab.keel("lb1", 200);
    let share = "lb.keel.io/allow-shared-ip: dns";
    lab.create(&service(
        "default",
        "dns-tcp",
        &[("dns", "TCP", 53, 30053)],
        "",
        share,
    ));
    lab.create(&service(
        "default",
        "dns-udp",
        &[("dns", "UDP", 53, 30055)],
        "",
        share,
    ));
    let a = lab.wait("dns-tcp address", SOON, || {
        let i = lab.ingress("default", "dns-tcp");
        (!i.is_empty()).then_some(i)
    });
    let b = lab.wait("dns-udp address", SOON, || {
        let i = lab.ingress("default", "dns-udp");
        (!i.is_empty()).then_some(i)
    });
    assert_eq!(
        a, b,
        "TCP/53 and UDP/53 with one sharing key share an address"
    );
    assert!(lab.tcp(&a[0], 53).is_some());
    assert!(lab.udp(&a[0], 53).is_some(), "UDP/53 on the shared address");
    // Same key, same TCP/53: refused with a clear reason, nothing assigned.
    lab.create(&service(
        "default",
        "dns-clash",
        &[("dns", "TCP", 53, 30054)],
        &format!("  loadBalancerIP: {}\n", a[0]),
        share,
    ));
    lab.wait("PortConflict event", SOON, || {
        lab.event_reasons("default", "dns-clash")
            .iter()
            .any(|r| r == "PortConflict")
            .then_some(())
    });
    assert!(lab.ingress("default", "dns-clash").is_empty());
    // Another class is left alone: no finalizer, no address, no events.
    lab.create(&service(
        "default",
        "other",
        &[("http", "TCP", 80, 30080)],
        "  loadBalancerClass: example.com/other\n",
        "",
    ));
    // Fill the IPv4 pool (4 addresses: dns-* hold one), then one more is refused.
    for n in 0..3u16 {
        lab.create(&service(
            "default",
            &format!("fill{n}"),
            &[("http", "TCP", 80, 30081 + n)],
            "",
            "",
        ));
    }
    for n in 0..3 {
        let name = format!("fill{n}");
        lab.wait(&format!("{name} gets an address"), SOON, || {
            (!lab.ingress("default", &name).is_empty()).then_some(())
        });
    }
    lab.create(&service(
        "default",
        "overflow",
        &[("http", "TCP", 80, 30084)],
        "",
        "",
    ));
    lab.wait("PoolExhausted event", SOON, || {
        lab.event_reasons("default", "overflow")
            .iter()
            .any(|r| r == "PoolExhausted")
            .then_some(())
    });
    let other = lab.apply_json("svc", "default", "other");
    assert!(other["metadata"]["finalizers"].is_null(), "{other}");
    assert!(
        other["status"]["loadBalancer"]["ingress"].is_null(),
        "{other}"
    );
    assert!(lab.event_reasons("default", "other").is_empty());
    // No address is held twice.
    let mut all = Vec::new();
    for n in ["dns-tcp", "fill0", "fill1", "fill2"] {
        all.extend(lab.ingress("default", n));
    }
    let uniq: BTreeSet<&String> = all.iter().collect();
    assert_eq!(uniq.len(), all.len(), "{all:?}");
}

#[test]
fn two_lbs_racing_for_one_pool_never_hand_out_an_address_twice() {
    require_root!();
    let mut lab = Lab::new("svc-race", &["lb1", "lb2"]);
    lab.nodes(&[30080, 30081, 30082, 30083], &[], &[]);
    // Services first, then both LBs at once: both want to write.
    for n in 0..4u16 {
        lab.create(&service(
            "default",
            &format!("s{n}"),
            &[("http", "TCP", 80, 30080 + n)],
            "",
            "",
        ));
    }
    let _lb1 = lab.keel("lb1", 200);
    let _lb2 = lab.keel("lb2", 100);
    let mut all = Vec::new();
    for n in 0..4 {
        let name = format!("s{n}");
        all.extend(lab.wait(&format!("{name} gets an address"), SOON, || {
            let i = lab.ingress("default", &name);
            (!i.is_empty()).then_some(i)
        }));
    }
    let uniq: BTreeSet<&String> = all.iter().collect();
    assert_eq!(uniq.len(), 4, "{all:?}");
    // Exactly one of them writes.
    let writers: Vec<bool> = ["lb1", "lb2"]
        .iter()
        .map(|lb| {
            let v: serde_json::Value =
                serde_json::from_str(&lab.admin(lb, "/services")).unwrap_or_default();
            v["writer"].as_bool().unwrap_or(false)
        })
        .collect();
    assert_eq!(writers.iter().filter(|w| **w).count(), 1, "{writers:?}");
}

#[test]
fn local_traffic_policy_reaches_only_nodes_with_endpoints_and_excluded_nodes_drop_out() {
    require_root!();
    let mut lab = Lab::new("svc-local", &["lb1"]);
    lab.nodes(&[30080, 30081], &[], &[32000]);
    lab.set_local_endpoints("node1", 32000, 1);
    lab.set_local_endpoints("node2", 32000, 0);
    lab.set_local_endpoints("node3", 32000, 0);
    let _lb1 = lab.keel("lb1", 200);
    lab.create(&service(
        "default",
        "local",
        &[("http", "TCP", 80, 30080)],
        "  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n",
        "",
    ));
    // The EndpointSlice a controller would write: endpoints on node1 and node2 (node2's not ready).
    lab.create(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: local-abc\n  namespace: default\n  labels: {kubernetes.io/service-name: local}\naddressType: IPv4\nendpoints:\n- addresses: [\"198.18.9.1\"]\n  nodeName: node1\n  conditions: {ready: true}\n- addresses: [\"198.18.9.2\"]\n  nodeName: node2\n  conditions: {ready: false}\nports:\n- {name: http, port: 80, protocol: TCP}\n",
    );
    let ip = lab.wait("local gets an address", SOON, || {
        lab.ingress("default", "local").first().cloned()
    });
    lab.wait("node1 answers", SOON, || {
        lab.tcp(&ip, 80).filter(|n| n == "node1")
    });
    for _ in 0..9 {
        assert_eq!(lab.tcp(&ip, 80).as_deref(), Some("node1"));
    }
    // node2's endpoint becomes ready and kube-proxy reports it: traffic spreads to node2 too.
    lab.set_local_endpoints("node2", 32000, 1);
    lab.kubectl_ok(&[
        "patch",
        "endpointslice",
        "local-abc",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/endpoints/1/conditions/ready","value":true}]"#,
    ]);
    lab.wait("node2 answers too", SOON, || {
        let s: BTreeSet<String> = (0..8).filter_map(|_| lab.tcp(&ip, 80)).collect();
        (s.len() == 2 && s.contains("node2")).then_some(())
    });

    // A Cluster-policy Service over all nodes; then node3 is excluded by label and drops out.
    lab.create(&service(
        "default",
        "all",
        &[("http", "TCP", 81, 30081)],
        "",
        "",
    ));
    let ip2 = lab.wait("all gets an address", SOON, || {
        lab.ingress("default", "all").first().cloned()
    });
    lab.wait("three nodes behind all", SOON, || {
        let s: BTreeSet<String> = (0..12).filter_map(|_| lab.tcp(&ip2, 81)).collect();
        (s.len() == 3).then_some(())
    });
    lab.kubectl_ok(&[
        "label",
        "node",
        "node3",
        "node.kubernetes.io/exclude-from-external-load-balancers=true",
    ]);
    lab.wait("node3 drops out", SOON, || {
        let s: BTreeSet<String> = (0..12).filter_map(|_| lab.tcp(&ip2, 81)).collect();
        (!s.contains("node3") && s.len() == 2).then_some(())
    });
}

#[test]
fn dual_stack_and_mixed_protocol_services_answer_on_every_family_and_protocol() {
    require_root!();
    let mut lab = Lab::new("svc-dual", &["lb1"]);
    lab.nodes(&[30080], &[30053], &[]);
    let _lb1 = lab.keel("lb1", 200);
    lab.create(&service(
        "default",
        "dual",
        &[("http", "TCP", 80, 30080), ("dns", "UDP", 53, 30053)],
        "  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n",
        "",
    ));
    let ips = lab.wait("dual gets one address per family", SOON, || {
        let i = lab.ingress("default", "dual");
        (i.len() == 2).then_some(i)
    });
    let v4 = ips.iter().find(|i| !i.contains(':')).cloned().unwrap();
    let v6 = ips.iter().find(|i| i.contains(':')).cloned().unwrap();
    assert_eq!(v4, POOL_FIRST);
    assert!(v6.starts_with("2001:db8:2::10"), "{ips:?}");
    lab.wait("TCP answers on the IPv4 address", SOON, || lab.tcp(&v4, 80));
    lab.wait("TCP answers on the IPv6 address", SOON, || lab.tcp(&v6, 80));
    lab.wait("UDP answers on the IPv4 address", SOON, || lab.udp(&v4, 53));
    // Each (address, port, protocol) is its own frontend, named for the Service.
    let m = lab.admin("lb1", "/metrics");
    for f in [
        format!("default/dual:80/TCP@{v4}"),
        format!("default/dual:80/TCP@{v6}"),
        format!("default/dual:53/UDP@{v4}"),
    ] {
        assert!(m.contains(&format!("frontend=\"{f}\"")), "{f} missing");
    }
    // Services' backends have no per-backend series (Services x ports x nodes); checks are shared:
    // the three nodes' kube-proxy healthz serve every port of every Service.
    assert!(!m.contains("pool=\"default/dual:80/TCP\",backend="), "{m}");
}

#[test]
fn a_killed_writer_is_replaced_and_addresses_it_handed_out_stay() {
    require_root!();
    let mut lab = Lab::new("svc-writer", &["lb1", "lb2"]);
    lab.nodes(&[30080, 30081], &[], &[]);
    let mut lbs = [Some(lab.keel("lb1", 200)), Some(lab.keel("lb2", 100))];
    lab.create(&service(
        "default",
        "first",
        &[("http", "TCP", 80, 30080)],
        "",
        "",
    ));
    let first = lab.wait("first gets an address", SOON, || {
        lab.ingress("default", "first").first().cloned()
    });
    let writer = lab.wait("one LB writes", SOON, || {
        ["lb1", "lb2"].into_iter().position(|lb| {
            let v: serde_json::Value =
                serde_json::from_str(&lab.admin(lb, "/services")).unwrap_or_default();
            v["writer"].as_bool().unwrap_or(false)
        })
    });
    let survivor = ["lb1", "lb2"][1 - writer];
    // Killed: it cannot give the Lease up; the survivor takes it when it expires (3 s here).
    if let Some(mut p) = lbs[writer].take() {
        p.kill();
    }
    lab.create(&service(
        "default",
        "second",
        &[("http", "TCP", 81, 30081)],
        "",
        "",
    ));
    let second = lab.wait("second gets an address from the new writer", SOON, || {
        lab.ingress("default", "second").first().cloned()
    });
    assert_ne!(first, second, "an address was handed out twice");
    let v: serde_json::Value = serde_json::from_str(&lab.admin(survivor, "/services")).unwrap();
    assert_eq!(v["writer"], true, "{v}");
    assert_eq!(lab.ingress("default", "first"), vec![first.clone()]);
    lab.wait("both answer through the survivor", SOON, || {
        (lab.tcp(&first, 80).is_some() && lab.tcp(&second, 81).is_some()).then_some(())
    });
}

#[test]
fn a_shrunk_pool_keeps_its_live_address_says_so_and_pool_metrics_count() {
    require_root!();
    let mut lab = Lab::new("svc-shrink", &["lb1"]);
    lab.nodes(&[30080, 30081], &[], &[]);
    let _lb1 = lab.keel("lb1", 200);
    lab.create(&service(
        "default",
        "old",
        &[("http", "TCP", 80, 30080)],
        "",
        "",
    ));
    let ip = lab.wait("old gets an address", SOON, || {
        lab.ingress("default", "old").first().cloned()
    });
    assert_eq!(ip, POOL_FIRST);
    let pool_lines = || -> Vec<String> {
        lab.admin("lb1", "/metrics")
            .lines()
            .filter(|l| l.starts_with("keel_lb_address_pool_addresses{"))
            .map(str::to_string)
            .collect()
    };
    let mut last = Vec::new();
    let counted = (0..100).any(|_| {
        last = pool_lines();
        let ok = last
            .iter()
            .any(|l| l == "keel_lb_address_pool_addresses{pool=\"default\",state=\"used\"} 1")
            && last
                .iter()
                .any(|l| l == "keel_lb_address_pool_addresses{pool=\"default\",state=\"size\"} 8");
        if !ok {
            std::thread::sleep(Duration::from_millis(200));
        }
        ok
    });
    assert!(counted, "pool metrics: {last:?}");
    // The pool shrinks under the live address (reload): it stays, answers, and is reported.
    let cfg = lab.path("lb1.yaml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let shrunk = text.replace(POOL, "198.18.2.102-198.18.2.103");
    assert_ne!(text, shrunk);
    std::fs::write(&cfg, shrunk).unwrap();
    let out = lab.t.exec(
        "lb1",
        &[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-X",
            "POST",
            "http://127.0.0.1:9100/reload",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    lab.wait("an AddressOutsidePools event", SOON, || {
        lab.event_reasons("default", "old")
            .iter()
            .any(|r| r == "AddressOutsidePools")
            .then_some(())
    });
    assert_eq!(lab.ingress("default", "old"), vec![ip.clone()]);
    assert!(
        lab.tcp(&ip, 80).is_some(),
        "the live address stopped answering"
    );
    lab.create(&service(
        "default",
        "new",
        &[("http", "TCP", 81, 30081)],
        "",
        "",
    ));
    let ip2 = lab.wait("new gets an address of the shrunk pool", SOON, || {
        lab.ingress("default", "new").first().cloned()
    });
    assert_eq!(ip2, "198.18.2.102");
    lab.wait("pool size follows the reload", SOON, || {
        lab.admin("lb1", "/metrics")
            .contains("keel_lb_address_pool_addresses{pool=\"default\",state=\"size\"} 6")
            .then_some(())
    });
}

/// An address pool with `mode: nat`: its Services are forwarded by the kernel (nothing listens on
/// their addresses), every node answers through the address, and the status lists them under
/// `nat`. A Service of the default pool on the same LB stays proxied.
#[test]
fn a_nat_pool_has_the_kernel_forward_its_services() {
    require_root!();
    if !keel_e2e::have("nft") {
        keel_e2e::skip!("nft missing (apt-get install nftables)");
    }
    let mut lab = Lab::new("svc-nat", &["lb1"]);
    lab.nodes(&[30080, 30081], &[], &[]);
    let _lb1 = lab.keel_with(
        "lb1",
        200,
        "    - name: nat\n      addresses: [\"198.18.2.110-198.18.2.111\"]\n      vrrp_routers: [svc4]\n      auto_assign: false\n      mode: nat\n",
    );
    lab.create(&service(
        "default",
        "fast",
        &[("http", "TCP", 80, 30080)],
        "",
        "lb.keel.io/address-pool: nat",
    ));
    lab.create(&service(
        "default",
        "web",
        &[("http", "TCP", 80, 30081)],
        "",
        "",
    ));
    let ips = lab.wait("fast gets an address of the nat pool", SOON, || {
        let i = lab.ingress("default", "fast");
        (!i.is_empty()).then_some(i)
    });
    assert_eq!(ips, vec!["198.18.2.110".to_string()]);
    let seen: BTreeSet<String> = lab.wait(
        "all three nodes answer through the nat address",
        SOON,
        || {
            let s: BTreeSet<String> = (0..12)
                .filter_map(|_| lab.tcp("198.18.2.110", 80))
                .collect();
            (s.len() == 3).then_some(s)
        },
    );
    assert_eq!(seen.len(), 3);
    lab.wait("web answers through the proxy", SOON, || {
        lab.tcp(POOL_FIRST, 80).map(|_| ())
    });
    let st: serde_json::Value = serde_json::from_str(&lab.admin("lb1", "/v1/status")).unwrap();
    let nat = &st["nat"];
    assert_eq!(nat["installed"], true, "{nat}");
    assert_eq!(
        nat["frontends"][0]["name"], "default/fast:80/TCP@198.18.2.110",
        "{nat}"
    );
    assert_eq!(
        nat["frontends"][0]["backends"].as_array().map(Vec::len),
        Some(3),
        "{nat}"
    );
    assert_eq!(nat["frontends"].as_array().map(Vec::len), Some(1), "{nat}");
    let listening = lab.t.sh("lb1", "ss -Htln");
    assert!(!listening.contains("198.18.2.110:80"), "{listening}");
    assert!(
        listening.contains(&format!("{POOL_FIRST}:80")),
        "{listening}"
    );
}
