//! No false failover under full data-plane load (issue 4): 50 ms adverts on a pair while the
//! master's keel-lb proxies as much HTTP as wrk can push to a real nginx backend. The VRRP thread
//! runs apart from the data plane (and SCHED_FIFO), so neither LB may change state.

mod vrrp_lab;

use std::time::Duration;

use keel_e2e::require_root;
use vrrp_lab::*;

const LBS: &[&str] = &["lb1", "lb2"];
const LOAD: Duration = Duration::from_secs(10);

fn transitions(lab: &Lab, host: &str) -> f64 {
    lab.metric_sum(host, "keel_vrrp_transitions_total", &[])
}

#[test]
fn a_saturated_data_plane_causes_no_vrrp_transition_at_50ms_adverts() {
    require_root!();
    if !keel_e2e::have("wrk") || !keel_e2e::have("nginx") {
        keel_e2e::skip!("wrk and nginx are needed");
    }
    let mut lab = Lab::new("vrrp-load", LBS);
    lab.add_host("backend");
    let _nginx = lab.nginx("backend", "198.18.1.60:80");
    let r =
        |p: u8| routers(&[router("web", 51, p, "198.18.1.100/24", "")]).replace("100ms", "50ms");
    let _lb1 = lab.keel_to("lb1", &r(200), &[VIP4], "198.18.1.60:80");
    let _lb2 = lab.keel_to("lb2", &r(100), &[VIP4], "198.18.1.60:80");
    assert!(
        lab.wait_owner(VIP4, "lb1", LBS, Duration::from_secs(5)),
        "{}",
        lab.log("lb1")
    );
    std::thread::sleep(Duration::from_secs(1));
    let before = (transitions(&lab, "lb1"), transitions(&lab, "lb2"));
    assert!(before.0 >= 2.0 && before.1 >= 1.0, "{before:?}");

    let secs = format!("{}s", LOAD.as_secs());
    let out = lab.t.exec(
        "client",
        &[
            "timeout",
            "60",
            "wrk",
            "-t2",
            "-c64",
            "-d",
            &secs,
            "--timeout",
            "2s",
            &format!("http://{VIP4}:{PORT}/"),
        ],
    );
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let rps: f64 = report
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    eprintln!("wrk {secs} through keel-lb at 50 ms adverts: {rps} requests/s\n{report}");
    assert!(rps > 100.0, "the load did not run:\n{report}");

    let after = (transitions(&lab, "lb1"), transitions(&lab, "lb2"));
    assert_eq!(
        before,
        after,
        "VRRP transitions under load (lb1, lb2)\n{}\n{}",
        lab.log("lb1"),
        lab.log("lb2")
    );
    assert!(lab.has_vip("lb1", VIP4) && !lab.has_vip("lb2", VIP4));
}
