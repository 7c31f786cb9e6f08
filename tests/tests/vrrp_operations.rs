//! keel-lb's VRRP features an operator configures, end to end against real sockets: unicast
//! adverts (IPv4 and IPv6), the notify command, reloading the `vrrp:` section with SIGHUP while
//! master, and a tracked interface that hands the VIP away when it goes down.

mod vrrp_lab;

use std::time::Duration;

use keel_e2e::netns::wait_until;
use keel_e2e::require_root;
use vrrp_lab::*;

const LBS: &[&str] = &["lb1", "lb2"];
const VIP4_CIDR: &str = "198.18.1.100/24";
const TAKEOVER: Duration = Duration::from_secs(5);

/// Captures `count` VRRP packets on `host`'s eth0 (bounded by `timeout`); one line each.
fn capture_vrrp(lab: &Lab, host: &str, v6: bool, count: u32) -> Vec<String> {
    let filter = if v6 { "ip6 proto 112" } else { "ip proto 112" };
    let out = lab.t.exec(
        host,
        &[
            "timeout",
            "5",
            "tcpdump",
            "-l",
            "-nn",
            "-i",
            "eth0",
            "-c",
            &count.to_string(),
            filter,
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn unicast(src: &str, peer: &str) -> String {
    format!("    unicast_src: {src}\n    unicast_peers: [\"{peer}\"]\n")
}

#[test]
fn unicast_ipv4_peers_elect_advertise_to_each_other_only_and_fail_over() {
    require_root!();
    let lab = Lab::new("vrrp-uni4", LBS);
    let r = |p: u8, src: &str, peer: &str| {
        routers(&[router("web", 51, p, VIP4_CIDR, &unicast(src, peer))])
    };
    let _lb1 = lab.keel("lb1", &r(200, "198.18.1.11", "198.18.1.12"), &[VIP4]);
    let _lb2 = lab.keel("lb2", &r(100, "198.18.1.12", "198.18.1.11"), &[VIP4]);
    assert!(
        lab.wait_owner(VIP4, "lb1", LBS, TAKEOVER),
        "{}",
        lab.log("lb1")
    );
    let seen = capture_vrrp(&lab, "lb2", false, 4);
    assert!(seen.len() == 4, "no adverts reached lb2: {seen:?}");
    for l in &seen {
        assert!(
            l.contains("198.18.1.11 > 198.18.1.12: VRRPv3"),
            "not a unicast advert from lb1 to lb2: {l}"
        );
    }
    assert!(lab.metric_sum("lb2", "keel_vrrp_adverts_received_total", &[]) > 0.0);
    assert!(wait_until(TAKEOVER, || lab.request(addr(VIP4))));

    lab.t.link_down("lb1");
    assert!(
        wait_until(TAKEOVER, || lab.has_vip("lb2", VIP4)),
        "{}",
        lab.log("lb2")
    );
    assert!(wait_until(TAKEOVER, || lab.request(addr(VIP4))));
    lab.t.link_up("lb1");
    assert!(
        lab.wait_owner(VIP4, "lb1", LBS, TAKEOVER),
        "lb1 did not preempt over unicast\n{}",
        lab.log("lb1")
    );
}

#[test]
fn unicast_ipv6_peers_elect_advertise_to_each_other_only_and_fail_over() {
    require_root!();
    let lab = Lab::new("vrrp-uni6", LBS);
    let r = |p: u8, src: &str, peer: &str| {
        routers(&[router(
            "web6",
            61,
            p,
            "2001:db8:1::100/64",
            &unicast(src, peer),
        )])
    };
    let _lb1 = lab.keel("lb1", &r(200, "2001:db8:1::11", "2001:db8:1::12"), &[VIP6]);
    let _lb2 = lab.keel("lb2", &r(100, "2001:db8:1::12", "2001:db8:1::11"), &[VIP6]);
    assert!(
        lab.wait_owner(VIP6, "lb1", LBS, TAKEOVER),
        "{}",
        lab.log("lb1")
    );
    let seen = capture_vrrp(&lab, "lb2", true, 4);
    assert!(seen.len() == 4, "no adverts reached lb2: {seen:?}");
    for l in &seen {
        assert!(
            l.contains("2001:db8:1::11 > 2001:db8:1::12: VRRPv3"),
            "not a unicast advert from lb1 to lb2: {l}"
        );
    }
    assert!(wait_until(TAKEOVER, || lab.request(addr(VIP6))));
    lab.t.link_down("lb1");
    assert!(
        wait_until(TAKEOVER, || lab.has_vip("lb2", VIP6)),
        "{}",
        lab.log("lb2")
    );
    assert!(wait_until(TAKEOVER, || lab.request(addr(VIP6))));
}

#[test]
fn notify_runs_with_state_name_and_vrid_on_every_state_change() {
    require_root!();
    let lab = Lab::new("vrrp-notify", LBS);
    let notify = |host: &str| {
        let file = lab.path(&format!("notify-{host}"));
        format!(
            "    notify: ['/bin/sh', '-c', 'echo \"$1 $2 $3\" >> {}', 'notify']\n",
            file.display()
        )
    };
    let lines = |host: &str| -> Vec<String> {
        std::fs::read_to_string(lab.path(&format!("notify-{host}")))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let mut lb1 = lab.keel(
        "lb1",
        &routers(&[router("web", 51, 200, VIP4_CIDR, &notify("lb1"))]),
        &[VIP4],
    );
    let _lb2 = lab.keel(
        "lb2",
        &routers(&[router("edge", 51, 100, VIP4_CIDR, &notify("lb2"))]),
        &[VIP4],
    );
    assert!(lab.wait_owner(VIP4, "lb1", LBS, TAKEOVER));
    assert!(
        wait_until(TAKEOVER, || lines("lb1")
            == ["BACKUP web 51", "MASTER web 51"]),
        "{:?}",
        lines("lb1")
    );
    assert_eq!(lines("lb2"), ["BACKUP edge 51"]);

    lb1.signal(libc::SIGTERM);
    assert!(lb1.wait_timeout(Duration::from_secs(15)).is_some());
    assert!(
        wait_until(TAKEOVER, || lines("lb2")
            == ["BACKUP edge 51", "MASTER edge 51"]),
        "{:?}",
        lines("lb2")
    );
    assert_eq!(
        lines("lb1"),
        ["BACKUP web 51", "MASTER web 51", "STOP web 51"]
    );
}

#[test]
fn sighup_adds_and_removes_a_vip_on_the_master_without_a_transition() {
    require_root!();
    let lab = Lab::new("vrrp-reload", LBS);
    let (a, b) = (VIP4, "198.18.1.101");
    let cfg = |p: u8, vips: &str| routers(&[router("web", 51, p, vips, "")]);
    let mut lbs = Vec::new();
    for (h, p) in [("lb1", 200), ("lb2", 100)] {
        lbs.push(lab.keel(h, &cfg(p, VIP4_CIDR), &[a]));
    }
    assert!(lab.wait_owner(a, "lb1", LBS, TAKEOVER));
    assert!(wait_until(TAKEOVER, || lab.request(addr(a))));
    let transitions = |h: &str| lab.metric_sum(h, "keel_vrrp_transitions_total", &[]);
    let before = (transitions("lb1"), transitions("lb2"));

    // Add b: both LBs get the new config (backup first, as an operator rolls it out), then SIGHUP.
    let reload = |vips: &str, frontends: &[&str]| {
        for (i, (h, p)) in [("lb2", 100), ("lb1", 200)].into_iter().enumerate() {
            lab.write_keel_config(h, &cfg(p, vips), frontends, "127.0.0.1:9000");
            lbs[1 - i].signal(libc::SIGHUP);
        }
    };
    reload("198.18.1.100/24, 198.18.1.101/24", &[a, b]);
    assert!(
        lab.wait_owner(b, "lb1", LBS, TAKEOVER),
        "{}",
        lab.log("lb1")
    );
    assert!(wait_until(TAKEOVER, || lab.request(addr(b))));
    assert!(lab.has_vip("lb1", a) && lab.request(addr(a)));

    // Remove a: it leaves lb1 and nobody else takes it; b stays.
    reload("198.18.1.101/24", &[b]);
    assert!(
        wait_until(TAKEOVER, || !lab.has_vip("lb1", a)),
        "{}",
        lab.log("lb1")
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(!lab.has_vip("lb2", a) && !lab.has_vip("lb2", b));
    assert!(lab.has_vip("lb1", b) && lab.request(addr(b)));
    assert_eq!(
        before,
        (transitions("lb1"), transitions("lb2")),
        "a reload changed a state\n{}\n{}",
        lab.log("lb1"),
        lab.log("lb2")
    );
    assert!(
        lab.log("lb1").contains("vrrp reloaded"),
        "{}",
        lab.log("lb1")
    );
}

#[test]
fn a_tracked_interface_going_down_lowers_priority_and_hands_the_vip_over_and_back() {
    require_root!();
    let lab = Lab::new("vrrp-trackif", LBS);
    lab.t.sh(
        "lb1",
        "ip link add eth1 type veth peer name eth1p && ip link set eth1p up && ip link set eth1 up",
    );
    let track = "    track:\n      interfaces: [{ name: eth1, weight: 150 }]\n";
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
    // The cable on the far side is pulled: eth1 loses carrier.
    lab.t.sh("lb1", "ip link set eth1p down");
    assert!(
        lab.wait_owner(VIP4, "lb2", LBS, TAKEOVER),
        "{}",
        lab.log("lb1")
    );
    assert_eq!(lab.metric_sum("lb1", "keel_vrrp_priority", &[]), 50.0);
    assert!(wait_until(TAKEOVER, || lab.request(addr(VIP4))));
    lab.t.sh("lb1", "ip link set eth1p up");
    assert!(
        lab.wait_owner(VIP4, "lb1", LBS, TAKEOVER),
        "{}",
        lab.log("lb1")
    );
    assert_eq!(lab.metric_sum("lb1", "keel_vrrp_priority", &[]), 200.0);
}

#[test]
fn a_new_master_announces_again_after_garp_delay_and_then_every_garp_refresh() {
    require_root!();
    let lab = Lab::new("vrrp-garp", &["lb1"]);
    // The client listens before lb1 starts; bounded by count and time.
    let mut cmd = lab.t.command("client", "timeout");
    cmd.args(["8", "tcpdump", "-l", "-nn", "-tt", "-i", "eth0", "-c", "5"])
        .args(["arp and src host 198.18.1.100"]);
    let capture = std::thread::spawn(move || cmd.output());
    std::thread::sleep(Duration::from_millis(500));
    let extra = "    garp_repeat: 2\n    garp_delay: 1s\n    garp_refresh: 2s\n";
    let _lb1 = lab.keel(
        "lb1",
        &routers(&[router("web", 51, 200, VIP4_CIDR, extra)]),
        &[VIP4],
    );
    let out = capture.join().unwrap().unwrap();
    let times: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(
        times.len(),
        5,
        "{times:?} {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        lab.log("lb1")
    );
    let rel: Vec<f64> = times.iter().map(|t| t - times[0]).collect();
    // First burst (2), second burst after 1 s (2), refresh 2 s after becoming master (1).
    for (got, want) in rel.iter().zip([0.0, 0.01, 1.0, 1.01, 2.0]) {
        assert!((got - want).abs() < 0.3, "announcements at {rel:?}");
    }
}

/// `(status, body)` of keel-lb's admin endpoint in `host`.
fn admin(lab: &Lab, host: &str, method: &str, path: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:9100{path}");
    let o = lab.t.exec(
        host,
        &[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
            &url,
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn a_failed_vrrp_start_is_retried_and_reported_and_a_reload_vrrp_cannot_run_fails_whole() {
    require_root!();
    let lab = Lab::new("vrrp-retry", &["lb1"]);
    // The router's interface does not exist yet: keel-lb serves, without failover, and says so.
    let on = |iface: &str| routers(&[router("web", 51, 200, VIP4_CIDR, "")]).replace("eth0", iface);
    let _lb = lab.keel("lb1", &on("vx0"), &[VIP4]);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let (code, body) = admin(&lab, "lb1", "GET", "/healthz");
            code == 503 && body.contains("vrrp: 0 of 1 routers running")
        }),
        "{}",
        lab.log("lb1")
    );
    let m = lab.metrics("lb1");
    assert!(m.contains("keel_lb_vrrp_routers_configured 1"), "{m}");
    assert!(m.contains("keel_lb_vrrp_routers_running 0"), "{m}");
    // The interface appears: the start is retried (backoff up to 30 s) and the router runs.
    for cmd in [
        "ip link add vx0 type veth peer name vx0p",
        "ip link set vx0p up",
        "ip link set vx0 up",
        "ip addr add 198.18.77.1/24 dev vx0",
    ] {
        let args: Vec<&str> = cmd.split(' ').collect();
        assert!(lab.t.exec("lb1", &args).status.success(), "{cmd}");
    }
    assert!(
        wait_until(Duration::from_secs(45), || admin(
            &lab, "lb1", "GET", "/healthz"
        )
        .0 == 200),
        "{}",
        lab.log("lb1")
    );
    assert!(lab.log("lb1").contains("retrying the VRRP start"));
    assert!(wait_until(TAKEOVER, || lab.has_vip_on("lb1", "vx0", VIP4)));

    // A reload whose VRRP part cannot run (another missing interface) fails as a whole: 422,
    // counted, and the new frontend it brings is not listening.
    lab.write_keel_config("lb1", &on("vx9"), &[VIP4, "198.18.1.101"], "127.0.0.1:9000");
    let (code, body) = admin(&lab, "lb1", "POST", "/reload");
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("vx9"), "{body}");
    let m = lab.metrics("lb1");
    assert!(
        m.contains("keel_lb_reloads_total{result=\"failure\"} 1"),
        "{m}"
    );
    let ss = lab.t.exec("lb1", &["ss", "-ltnH"]);
    let ss = String::from_utf8_lossy(&ss.stdout);
    assert!(!ss.contains("198.18.1.101:8080"), "{ss}");
    assert_eq!(admin(&lab, "lb1", "GET", "/healthz").0, 200);
}

#[test]
fn after_a_handover_the_routers_stay_stopped_until_resumed() {
    require_root!();
    let lab = Lab::new("vrrp-resume", LBS);
    let cfg = |p: u8| routers(&[router("web", 52, p, VIP4_CIDR, "")]);
    let _lb1 = lab.keel("lb1", &cfg(200), &[VIP4]);
    let _lb2 = lab.keel("lb2", &cfg(100), &[VIP4]);
    assert!(lab.wait_owner(VIP4, "lb1", LBS, TAKEOVER));
    // Every drop reason is exported from the start, so rate() and alerts work at once: at zero,
    // except that a start under load may already have answered lb2 as a lower-priority master
    // (heal_rate_limited) before lb1's adverts reached it.
    let m = lab.metrics("lb1");
    for kind in [
        "bad_checksum",
        "heal_rate_limited",
        "queue_full",
        "unknown_peer",
    ] {
        let series = format!(
            "keel_vrrp_packet_errors_total{{family=\"ipv4\",interface=\"eth0\",kind=\"{kind}\"}} "
        );
        let value = m.lines().find_map(|l| l.strip_prefix(&series));
        match kind {
            "heal_rate_limited" => assert!(value.is_some(), "{series} missing\n{m}"),
            _ => assert_eq!(value, Some("0"), "{series}\n{m}"),
        }
    }
    let transitions = |lab: &Lab| lab.metric_sum("lb1", "keel_vrrp_transitions_total", &[]);
    let before = transitions(&lab);
    assert!(before >= 1.0, "lb1 became master: at least one transition");
    let (code, body) = admin(&lab, "lb1", "POST", "/handover");
    assert_eq!(code, 200, "{body}");
    assert!(lab.wait_owner(VIP4, "lb2", LBS, TAKEOVER));
    // Stopped routers: serving, without failover, and /healthz says so.
    assert!(wait_until(Duration::from_secs(3), || {
        let (code, body) = admin(&lab, "lb1", "GET", "/healthz");
        (code, body.trim()) == (503, "vrrp: 0 of 1 routers running")
    }));
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        lab.has_vip("lb2", VIP4),
        "lb1 came back without being asked"
    );
    // Resumed: lb1 runs again and, with the higher priority, takes the VIP back.
    let (code, body) = admin(&lab, "lb1", "POST", "/resume");
    assert_eq!(code, 200, "{body}");
    assert!(
        lab.wait_owner(VIP4, "lb1", LBS, TAKEOVER),
        "{}",
        lab.log("lb1")
    );
    assert_eq!(admin(&lab, "lb1", "GET", "/healthz").0, 200);
    // The counters ran on across the stop and the restart: no reset for rate() to paper over.
    let after = transitions(&lab);
    assert!(
        after >= before + 2.0,
        "transitions went from {before} to {after} across handover and resume"
    );
}
