//! keel-lb as the Service load-balancer provider with the least-privilege identity the repository
//! ships (configs/kubernetes/keel-lb-rbac.yaml and a `kubectl create token` token), end to end:
//! everything keel-lb does for a Service is allowed, and it meets no refusal.

mod svc_lab;

use std::time::Duration;

use keel_e2e::require_root;
use svc_lab::*;

/// Generous: the target is one second; the rest absorbs a loaded CI machine.
const SOON: Duration = Duration::from_secs(20);

#[test]
fn keel_lb_serves_a_service_with_the_least_privilege_rbac_of_the_repository() {
    require_root!();
    let mut lab = Lab::new("svc-rbac", &["lb1"]);
    lab.nodes(&[30080], &[], &[]);
    let kubeconfig = lab.keel_lb_kubeconfig();
    let kc = std::fs::read_to_string(&kubeconfig).unwrap();
    let admin = std::fs::read_to_string(lab.path("api/admin.kubeconfig")).unwrap();
    assert!(kc.contains("token:") && kc != admin, "{kc}");
    // The kubeconfig is keel-lb's service account, not the admin.
    let o = lab
        .t
        .command("client", "kubectl")
        .env("HOME", lab.dir.path())
        .env_remove("KUBECONFIG")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "system:serviceaccount:kube-system:keel-lb",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let _lb1 = lab.keel_with_kubeconfig("lb1", 200, &kubeconfig);

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
    assert_eq!(
        svc["metadata"]["annotations"]["lb.keel.io/allocated-ips"],
        POOL_FIRST
    );
    assert!(svc["metadata"]["finalizers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "service.kubernetes.io/load-balancer-cleanup"));
    lab.wait("web answers through the VIP", SOON, || {
        lab.tcp(POOL_FIRST, 80)
    });
    lab.wait(
        "EnsuringLoadBalancer and EnsuredLoadBalancer events",
        SOON,
        || {
            let r = lab.event_reasons("default", "web");
            (r.iter().any(|x| x == "EnsuringLoadBalancer")
                && r.iter().any(|x| x == "EnsuredLoadBalancer"))
            .then_some(())
        },
    );
    // keel-lb holds the writer Lease in kube-system.
    let lease = lab.kubectl_ok(&["get", "leases", "-n", "kube-system", "-o", "name"]);
    assert!(!lease.trim().is_empty(), "no writer Lease: {lease}");

    // Deletion: keel-lb removes its finalizer, so the Service goes.
    lab.kubectl_ok(&["delete", "svc", "web", "--wait=false"]);
    lab.wait("web is gone (finalizer removed)", SOON, || {
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

    // Never refused: no 403 and nothing forbidden in keel-lb's log (the timestamp, whose digits
    // could spell 403, left out).
    let log = lab.log("lb1");
    assert!(log.contains("keel_lb"), "empty log");
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| {
            let rest = l.split_once(' ').map(|(_, r)| r).unwrap_or(l);
            rest.to_lowercase().contains("forbidden")
                // A status code stands alone ("code: 403", "status=403"); "took=337.403µs" is no 403.
                || rest
                    .split(|c: char| c.is_whitespace() || matches!(c, '=' | ':' | ','))
                    .map(|w| w.trim_matches(|c: char| "{}()\"'".contains(c)))
                    .any(|w| w == "403")
        })
        .collect();
    assert!(
        refused.is_empty(),
        "keel-lb was refused:\n{}",
        refused.join("\n")
    );
}
