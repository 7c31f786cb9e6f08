//! keel-lb's VRRP failover end to end: real keel-lb processes in network namespaces on one bridge,
//! a client connecting to the VIP, the kernel's neighbour table as the witness.

mod vrrp_lab;

use std::time::Duration;

use keel_e2e::netns::wait_until;
use keel_e2e::require_root;
use vrrp_lab::*;

const LBS: &[&str] = &["lb1", "lb2"];
const VIP4_CIDR: &str = "198.18.1.100/24";
/// Generous: 3 x 100 ms + skew is under 0.4 s; the rest absorbs a loaded CI machine.
const TAKEOVER: Duration = Duration::from_secs(5);

#[test]
fn the_higher_priority_lb_wins_the_election_and_holds_the_vip() {
    require_root!();
    let lab = Lab::new("vrrp-elect", LBS);
    let _lb1 = lab.keel(
        "lb1",
        &routers(&[router("web", 51, 100, VIP4_CIDR, "")]),
        &[VIP4],
    );
    let _lb2 = lab.keel(
        "lb2",
        &routers(&[router("web", 51, 200, VIP4_CIDR, "")]),
        &[VIP4],
    );
    assert!(
        lab.wait_owner(VIP4, "lb2", LBS, TAKEOVER),
        "lb2 never became the only owner\n{}",
        lab.log("lb2")
    );
    // And it stays that way.
    std::thread::sleep(Duration::from_secs(1));
    assert!(lab.has_vip("lb2", VIP4) && !lab.has_vip("lb1", VIP4));
    assert!(lab.request(addr(VIP4)), "the VIP does not serve");
    assert_eq!(
        lab.metric_sum("lb2", "keel_vrrp_state{", &["vrid=\"51\""]),
        2.0
    );
    assert_eq!(
        lab.metric_sum("lb1", "keel_vrrp_state{", &["vrid=\"51\""]),
        1.0
    );
    assert!(lab.metric_sum("lb1", "keel_vrrp_adverts_received_total", &[]) > 0.0);
}

#[test]
fn backup_takes_over_when_the_master_link_is_cut_and_the_master_preempts_on_return() {
    require_root!();
    let lab = Lab::new("vrrp-cut", LBS);
    let _lb1 = lab.keel(
        "lb1",
        &routers(&[router("web", 51, 200, VIP4_CIDR, "")]),
        &[VIP4],
    );
    let _lb2 = lab.keel(
        "lb2",
        &routers(&[router("web", 51, 100, VIP4_CIDR, "")]),
        &[VIP4],
    );
    assert!(lab.wait_owner(VIP4, "lb1", LBS, TAKEOVER));
    assert!(lab.request(addr(VIP4)));
    let (mac1, mac2) = (lab.t.mac("lb1"), lab.t.mac("lb2"));
    assert_eq!(lab.client_neigh(VIP4).as_deref(), Some(mac1.as_str()));

    lab.t.link_down("lb1");
    assert!(
        wait_until(TAKEOVER, || lab.has_vip("lb2", VIP4)),
        "lb2 did not take over\n{}",
        lab.log("lb2")
    );
    // The gratuitous ARP moved the client to the new MAC; the VIP serves from lb2.
    assert!(wait_until(TAKEOVER, || lab.client_neigh(VIP4).as_deref()
        == Some(mac2.as_str())));
    assert!(lab.request(addr(VIP4)));
    // The cut master released its VIP (FAULT), so nothing lingers when the link returns.
    assert!(wait_until(TAKEOVER, || !lab.has_vip("lb1", VIP4)));

    lab.t.link_up("lb1");
    assert!(
        lab.wait_owner(VIP4, "lb1", LBS, TAKEOVER),
        "lb1 did not preempt\n{}",
        lab.log("lb1")
    );
    assert!(wait_until(TAKEOVER, || lab.client_neigh(VIP4).as_deref()
        == Some(mac1.as_str())));
    assert!(lab.request(addr(VIP4)));
}

#[test]
fn backup_takes_over_when_the_master_is_killed_and_a_nopreempt_master_stays_backup_on_return() {
    require_root!();
    let lab = Lab::new("vrrp-kill", LBS);
    let nopreempt = "    preempt: false\n";
    let cfg1 = routers(&[router("web", 51, 200, VIP4_CIDR, nopreempt)]);
    let mut lb1 = lab.keel("lb1", &cfg1, &[VIP4]);
    let _lb2 = lab.keel(
        "lb2",
        &routers(&[router("web", 51, 100, VIP4_CIDR, "")]),
        &[VIP4],
    );
    assert!(lab.wait_owner(VIP4, "lb1", LBS, TAKEOVER));

    lb1.kill(); // SIGKILL: no priority 0, the VIP stays on lb1's interface
    assert!(
        wait_until(TAKEOVER, || lab.has_vip("lb2", VIP4)),
        "{}",
        lab.log("lb2")
    );
    assert!(
        lab.has_vip("lb1", VIP4),
        "a killed process cannot clean up; the test expects the leftover"
    );
    assert!(wait_until(TAKEOVER, || lab.request(addr(VIP4))));

    // Restarted with preemption off: it removes the VIP left by the crash (kube-vip #996) and
    // stays backup although its priority is higher.
    let _lb1 = lab.keel("lb1", &cfg1, &[VIP4]);
    assert!(
        wait_until(TAKEOVER, || !lab.has_vip("lb1", VIP4)),
        "stale VIP kept\n{}",
        lab.log("lb1")
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(lab.has_vip("lb2", VIP4) && !lab.has_vip("lb1", VIP4));
    assert_eq!(lab.metric_sum("lb1", "keel_vrrp_state{", &[]), 1.0);
}

#[test]
fn a_partition_gives_two_masters_and_healing_leaves_one_that_clients_reach() {
    require_root!();
    let lab = Lab::new("vrrp-split", LBS);
    let _lb1 = lab.keel(
        "lb1",
        &routers(&[router("web", 51, 200, VIP4_CIDR, "")]),
        &[VIP4],
    );
    let _lb2 = lab.keel(
        "lb2",
        &routers(&[router("web", 51, 100, VIP4_CIDR, "")]),
        &[VIP4],
    );
    assert!(lab.wait_owner(VIP4, "lb1", LBS, TAKEOVER));
    // The client has a neighbour entry for the VIP (GARP updates entries, never creates them).
    assert!(wait_until(TAKEOVER, || lab.request(addr(VIP4))));
    // The LBs no longer hear each other; both still reach the client.
    lab.t.isolate("lb1", true);
    lab.t.isolate("lb2", true);
    assert!(wait_until(TAKEOVER, || lab.has_vip("lb1", VIP4)
        && lab.has_vip("lb2", VIP4)));
    // The client follows whoever announced last: lb2.
    let mac1 = lab.t.mac("lb1");
    assert!(wait_until(TAKEOVER, || lab.client_neigh(VIP4).as_deref()
        == Some(lab.t.mac("lb2").as_str())));
    lab.t.isolate("lb1", false);
    lab.t.isolate("lb2", false);
    assert!(
        lab.wait_owner(VIP4, "lb1", LBS, TAKEOVER),
        "split brain did not heal\n{}",
        lab.log("lb2")
    );
    // After healing the survivor re-announced, so the client is back on lb1 (keepalived #166).
    assert!(
        wait_until(TAKEOVER, || lab.client_neigh(VIP4).as_deref()
            == Some(mac1.as_str())),
        "client still points at {:?}",
        lab.client_neigh(VIP4)
    );
    assert!(lab.request(addr(VIP4)));
}

#[test]
fn ipv6_vips_fail_over_and_the_client_neighbour_entry_moves() {
    require_root!();
    let lab = Lab::new("vrrp-v6", LBS);
    let r = |p: u8| routers(&[router("web6", 61, p, "2001:db8:1::100/64", "")]);
    let _lb1 = lab.keel("lb1", &r(200), &[VIP6]);
    let _lb2 = lab.keel("lb2", &r(100), &[VIP6]);
    assert!(
        lab.wait_owner(VIP6, "lb1", LBS, TAKEOVER),
        "{}",
        lab.log("lb1")
    );
    assert!(wait_until(TAKEOVER, || lab.request(addr(VIP6))));
    let mac2 = lab.t.mac("lb2");
    lab.t.link_down("lb1");
    assert!(
        wait_until(TAKEOVER, || lab.has_vip("lb2", VIP6)),
        "{}",
        lab.log("lb2")
    );
    assert!(
        wait_until(TAKEOVER, || lab.client_neigh(VIP6).as_deref()
            == Some(mac2.as_str())),
        "client has {:?}",
        lab.client_neigh(VIP6)
    );
    assert!(wait_until(TAKEOVER, || lab.request(addr(VIP6))));
}

#[test]
fn two_vrids_split_the_vips_between_two_lbs_and_one_lb_takes_both_on_failure() {
    require_root!();
    let lab = Lab::new("vrrp-aa", LBS);
    let (a, b) = ("198.18.1.100", "198.18.1.101");
    let cfg = |pa: u8, pb: u8| {
        routers(&[
            router("a", 51, pa, "198.18.1.100/24", ""),
            router("b", 52, pb, "198.18.1.101/24", ""),
        ])
    };
    let _lb1 = lab.keel("lb1", &cfg(200, 100), &[a, b]);
    let _lb2 = lab.keel("lb2", &cfg(100, 200), &[a, b]);
    assert!(lab.wait_owner(a, "lb1", LBS, TAKEOVER));
    assert!(lab.wait_owner(b, "lb2", LBS, TAKEOVER));
    assert!(lab.request(addr(a)) && lab.request(addr(b)));
    lab.t.link_down("lb1");
    assert!(wait_until(TAKEOVER, || lab.has_vip("lb2", a) && lab.has_vip("lb2", b)));
    assert!(wait_until(TAKEOVER, || lab.request(addr(a))));
}

#[test]
fn planned_handover_on_sigterm_loses_no_client_connection() {
    require_root!();
    let lab = Lab::new("vrrp-handover", LBS);
    let mut lb1 = lab.keel(
        "lb1",
        &routers(&[router("web", 51, 200, VIP4_CIDR, "")]),
        &[VIP4],
    );
    let _lb2 = lab.keel(
        "lb2",
        &routers(&[router("web", 51, 100, VIP4_CIDR, "")]),
        &[VIP4],
    );
    assert!(lab.wait_owner(VIP4, "lb1", LBS, TAKEOVER));
    assert!(wait_until(TAKEOVER, || lab.request(addr(VIP4))));
    let probe = lab.probe(addr(VIP4), Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(500));
    lb1.signal(libc::SIGTERM);
    let status = lb1.wait_timeout(Duration::from_secs(15));
    assert!(
        lab.has_vip("lb2", VIP4),
        "lb2 did not take over\n{}",
        lab.log("lb1")
    );
    std::thread::sleep(Duration::from_millis(500));
    let r = probe.finish();
    assert!(
        status.is_some_and(|s| s.success()),
        "keel-lb did not exit 0: {status:?}"
    );
    assert!(r.attempts > 50, "{r:?}");
    assert_eq!(r.failures, 0, "{r:?}\n{}", lab.log("lb1"));
    assert!(lab.log("lb1").contains("TakenOver"), "{}", lab.log("lb1"));
}

#[test]
fn a_tracked_pool_without_healthy_backends_hands_the_vip_away() {
    require_root!();
    let mut lab = Lab::new("vrrp-track", LBS);
    let track = "    track:\n      pools: [{ name: web, weight: 150 }]\n";
    let _lb1 = lab.keel(
        "lb1",
        &routers(&[router("web", 51, 200, VIP4_CIDR, track)]),
        &[VIP4],
    );
    let _lb2 = lab.keel(
        "lb2",
        &routers(&[router("web", 51, 100, VIP4_CIDR, "")]),
        &[VIP4],
    );
    assert!(lab.wait_owner(VIP4, "lb1", LBS, TAKEOVER));
    lab.stop_backend(0); // lb1's only backend dies: priority 200 - 150 = 50 < 100
    assert!(
        lab.wait_owner(VIP4, "lb2", LBS, TAKEOVER),
        "{}",
        lab.log("lb1")
    );
    assert_eq!(lab.metric_sum("lb1", "keel_vrrp_priority", &[]), 50.0);
}

/// The failure this guards against (found with tcpdump at 0.1 s adverts): a connection the old
/// master accepted just before the new master took over got its answer from the backend after the
/// old master had released the VIP; the kernel could no longer route a reply from that source, so
/// the client waited in silence until the drain ended. The backend here answers after 20 ms, so a
/// connection is in flight at every release; each attempt sends a byte and expects it back.
#[test]
fn planned_handovers_at_100ms_adverts_lose_no_connection_in_flight() {
    require_root!();
    let lab = Lab::with_backend("vrrp-inflight", LBS, "'sleep 0.02; head -c 1'");
    let cfg1 = routers(&[router("web", 51, 200, VIP4_CIDR, "")]);
    let _lb2 = lab.keel(
        "lb2",
        &routers(&[router("web", 51, 100, VIP4_CIDR, "")]),
        &[VIP4],
    );
    for round in 0..3 {
        let mut lb1 = lab.keel("lb1", &cfg1, &[VIP4]);
        assert!(
            lab.wait_owner(VIP4, "lb1", LBS, TAKEOVER),
            "round {round}: lb1 did not become master\n{}",
            lab.log("lb1")
        );
        assert!(wait_until(TAKEOVER, || lab.request_with(addr(VIP4), echo_request)));
        let probe = lab.probe_with(addr(VIP4), Duration::from_millis(10), echo_request);
        std::thread::sleep(Duration::from_millis(500));
        lb1.signal(libc::SIGTERM);
        let status = lb1.wait_timeout(Duration::from_secs(15));
        std::thread::sleep(Duration::from_millis(500));
        let r = probe.finish();
        assert!(
            status.is_some_and(|s| s.success()),
            "round {round}: {status:?}"
        );
        assert!(
            lab.has_vip("lb2", VIP4),
            "round {round}: lb2 did not take over"
        );
        assert!(r.attempts > 20, "round {round}: {r:?}");
        assert_eq!(r.failures, 0, "round {round}: {r:?}\n{}", lab.log("lb1"));
    }
}
