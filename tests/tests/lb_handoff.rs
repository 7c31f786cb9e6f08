//! `bgp.handoff` on both address families, without FRR: the client's route to the VIPs stands in
//! for the upstream router (first through lb1; moved to lb2 by hand once lb1 leaves, as a router
//! converges). lb1's connections must keep working through lb2, which forwards their packets to
//! lb1 while it drains. tests/tests/lb_bgp.rs covers the same with FRR and ECMP, on IPv4.
//!
//! ```text
//!   client 198.18.2.100 / 2001:db8:2::100 --route--> lb1 .11 / lb2 .12 --> backend 198.18.2.21:8001
//!   VIPs 198.18.102.10 and 2001:db8:102::10, port 8081 (an echo service)
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_e2e::netns::{wait_until, Topology};
use keel_e2e::{bin, require_root, skip};

const VIP4: &str = "198.18.102.10";
const VIP6: &str = "2001:db8:102::10";

fn lb_yaml(dir: &Path, lb: &str) -> PathBuf {
    let p = dir.join(format!("{lb}.yaml"));
    std::fs::write(
        &p,
        format!(
            "admin: {{listen: 127.0.0.1:9100}}
shutdown: {{drain: 10s}}
frontends:
  - {{name: echo4, listen: {VIP4}:8081, pool: echo}}
  - {{name: echo6, listen: \"[{VIP6}]:8081\", pool: echo}}
pools:
  echo:
    health: {{type: tcp, interval: 200ms, timeout: 200ms}}
    backends: [{{address: 198.18.2.21:8001}}]
bgp:
  withdraw_wait: 2s
  vtysh: /nonexistent/vtysh
  vips: [{{address: {VIP4}, track_pools: [echo]}}, {{address: \"{VIP6}\", track_pools: [echo]}}]
  handoff:
    peers: [198.18.2.11, 198.18.2.12, \"2001:db8:2::11\", \"2001:db8:2::12\"]
"
        ),
    )
    .unwrap();
    p
}

fn status(t: &Topology, lb: &str) -> serde_json::Value {
    serde_json::from_str(&t.curl(lb, "http://127.0.0.1:9100/v1/status")).unwrap_or_default()
}

/// `n` echo connections from the client to `vip`, each checked once.
fn open(t: &Topology, vip: &str, n: usize) -> Vec<TcpStream> {
    let to: SocketAddr = if vip.contains(':') {
        format!("[{vip}]:8081")
    } else {
        format!("{vip}:8081")
    }
    .parse()
    .unwrap();
    t.thread_in("client", move || {
        (0..n)
            .map(|i| {
                let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("{to} connection {i}: {e}"));
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut b = [0u8; 1];
                s.write_all(b"a").unwrap();
                s.read_exact(&mut b)
                    .unwrap_or_else(|e| panic!("{to} connection {i}: {e}"));
                s
            })
            .collect()
    })
    .join()
    .unwrap()
}

/// How many of `conns` no longer echo.
fn broken(conns: &[TcpStream]) -> usize {
    conns
        .iter()
        .filter(|s| {
            let mut s = *s;
            let mut b = [0u8; 1];
            s.write_all(b"b").is_err() || s.read_exact(&mut b).is_err()
        })
        .count()
}

#[test]
fn a_leaving_lbs_connections_keep_working_through_the_one_that_stays_on_both_families() {
    require_root!();
    if !keel_e2e::have("nft") || !keel_e2e::have("curl") {
        skip!("nft or curl missing (apt-get install nftables curl)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut t = Topology::new("lb-hoff");
    t.bridge();
    t.host("lb1", &["198.18.2.11/24", "2001:db8:2::11/64"]);
    t.host("lb2", &["198.18.2.12/24", "2001:db8:2::12/64"]);
    t.host("backend", &["198.18.2.21/24"]);
    t.host("client", &["198.18.2.100/24", "2001:db8:2::100/64"]);
    let via = |lb: &str| {
        let n = if lb == "lb1" { 11 } else { 12 };
        format!(
            "ip route replace {VIP4}/32 via 198.18.2.{n} && ip -6 route replace {VIP6}/128 via 2001:db8:2::{n}"
        )
    };
    t.sh("client", &via("lb1"));

    let stop = Arc::new(AtomicBool::new(false));
    let backend = t.echo_server("backend", "198.18.2.21:8001", stop.clone());

    let mut lbs = Vec::new();
    for lb in ["lb1", "lb2"] {
        let cfg = lb_yaml(dir, lb);
        lbs.push(t.spawn(
            lb,
            bin("keel-lb").to_str().unwrap(),
            &["run", "--config", cfg.to_str().unwrap()],
        ));
    }
    for lb in ["lb1", "lb2"] {
        assert!(
            wait_until(Duration::from_secs(20), || {
                let b = &status(&t, lb)["bgp"];
                b["vips"][0]["announced"] == true
                    && b["vips"][1]["announced"] == true
                    && b["handoff"]["error"].is_null()
            }),
            "{lb} does not announce both VIPs with handoff in place: {}",
            status(&t, lb)["bgp"]
        );
    }
    // The tables as keel-lb wrote them, in both families.
    for family in ["ip", "ip6"] {
        let rules = t.sh("lb2", &format!("nft list table {family} keel_lb_handoff"));
        assert!(rules.contains("socket mark"), "{rules}");
    }

    // A reload that changes bgp.handoff (here its port) applies the rest of the file and keeps
    // the running handoff: lb2 still listens for notices where lb1 sends them.
    let cfg2 = dir.join("lb2.yaml");
    let text = std::fs::read_to_string(&cfg2).unwrap();
    std::fs::write(
        &cfg2,
        text.replace("  handoff:\n", "  handoff:\n    port: 7948\n"),
    )
    .unwrap();
    let out = t.exec(
        "lb2",
        &[
            "curl",
            "-s",
            "-X",
            "POST",
            "--max-time",
            "5",
            "http://127.0.0.1:9100/reload",
        ],
    );
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(!out.to_lowercase().contains("fail"), "reload: {out}");
    assert_eq!(status(&t, "lb2")["bgp"]["handoff"]["port"], 7947);

    let mut conns = open(&t, VIP4, 10);
    conns.extend(open(&t, VIP6, 10));
    let left_at = Instant::now();
    lbs[0].signal(libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(5), || {
            let f = status(&t, "lb2")["bgp"]["handoff"]["forwardingTo"].clone();
            f.as_array().is_some_and(|a| a.len() == 2)
        }),
        "lb2 does not forward to lb1 on both families: {}",
        status(&t, "lb2")["bgp"]["handoff"]
    );
    let f = status(&t, "lb2")["bgp"]["handoff"]["forwardingTo"].clone();
    assert_eq!(f, serde_json::json!(["198.18.2.11", "2001:db8:2::11"]));
    // `keel-lb status` says so too.
    let cfg2 = cfg2.to_str().unwrap().to_string();
    let text = t.exec(
        "lb2",
        &[
            bin("keel-lb").to_str().unwrap(),
            "status",
            "--config",
            &cfg2,
        ],
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("forwarding to 198.18.2.11, 2001:db8:2::11"),
        "{text}"
    );
    // The "router" converges: the VIPs now lead to lb2.
    t.sh("client", &via("lb2"));
    // Through lb1's withdraw_wait (2 s) into its drain, each connection echoing every 200 ms.
    let mut failed = 0;
    while left_at.elapsed() < Duration::from_secs(4) {
        failed += broken(&conns);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        failed, 0,
        "lb1's connections broke after the route moved to lb2"
    );
    for family in ["ip", "ip6"] {
        let away = t.sh(
            "lb2",
            &format!("nft list chain {family} keel_lb_handoff away"),
        );
        let packets = keel_e2e::nft_counted_packets(&away);
        assert!(packets > 0, "lb2 forwarded nothing on {family}:\n{away}");
    }
    // New connections are lb2's own, on both families.
    drop(open(&t, VIP4, 3));
    drop(open(&t, VIP6, 3));
    drop(conns);
    let exit = lbs[0].wait_timeout(Duration::from_secs(20));
    assert!(
        exit.is_some_and(|s| s.success()),
        "lb1 did not exit cleanly: {exit:?}"
    );
    // lb1 said it is gone: lb2 stops forwarding; lb1's tables are gone.
    assert!(
        wait_until(Duration::from_secs(5), || status(&t, "lb2")["bgp"]
            ["handoff"]["forwardingTo"]
            .as_array()
            .is_some_and(|a| a.is_empty())),
        "lb2 still forwards after lb1 left: {}",
        status(&t, "lb2")["bgp"]["handoff"]
    );
    let tables = t.sh("lb1", "nft list tables");
    assert!(!tables.contains("keel_lb_handoff"), "{tables}");

    stop.store(true, Ordering::SeqCst);
    let _ = backend.join();
}

/// Handoff configured but nft missing: keel-lb announces nothing (a VM announcing without the
/// rules would take its own connections for others'), says why in `/v1/status` and `keel-lb
/// check`, and keeps serving its listeners.
#[test]
fn without_nft_nothing_is_announced_and_the_status_says_why() {
    require_root!();
    if !keel_e2e::have("curl") {
        skip!("curl missing");
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Topology::new("lb-hoffx");
    t.bridge();
    t.host("lb1", &["198.18.3.11/24"]);
    let cfg = lb_yaml(tmp.path(), "lb1");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("  handoff:\n", "  handoff:\n    nft: /nonexistent/nft\n"),
    )
    .unwrap();
    let check = t.exec(
        "lb1",
        &[
            bin("keel-lb").to_str().unwrap(),
            "check",
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    let said = String::from_utf8_lossy(&check.stderr).to_string()
        + &String::from_utf8_lossy(&check.stdout);
    assert!(
        said.contains("bgp.handoff: /nonexistent/nft not found"),
        "keel-lb check: {said}"
    );
    let _lb = t.spawn(
        "lb1",
        bin("keel-lb").to_str().unwrap(),
        &["run", "--config", cfg.to_str().unwrap()],
    );
    assert!(
        wait_until(Duration::from_secs(10), || status(&t, "lb1")["bgp"]
            ["error"]
            .as_str()
            .is_some_and(|e| e.contains("/nonexistent/nft not found"))),
        "the status does not say why nothing is announced: {}",
        status(&t, "lb1")["bgp"]
    );
    let b = status(&t, "lb1")["bgp"].clone();
    assert_eq!(b["vips"][0]["announced"], false, "{b}");
    let on = t.sh("lb1", "ip -br addr show dev keel-vips 2>/dev/null || true");
    assert!(!on.contains(VIP4), "{on}");
    let tables = t.sh("lb1", "nft list tables 2>/dev/null || true");
    assert!(!tables.contains("keel_lb_handoff"), "{tables}");
}

/// Under the packaged unit keel-lb cannot write /proc/sys (`ProtectKernelTunables`): with
/// `tcp_fwmark_accept` off it must not announce (it would take its own connections for others'
/// during a peer's leave) and says why; once the sysctl is on (the package's sysctl.d file) it
/// announces, without a restart.
#[test]
fn a_read_only_proc_sys_needs_the_sysctl_set_and_says_so() {
    require_root!();
    if !keel_e2e::have("nft") || !keel_e2e::have("curl") || !keel_e2e::have("unshare") {
        skip!("nft, curl or unshare missing");
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Topology::new("lb-hoffro");
    t.bridge();
    t.host("lb1", &["198.18.4.11/24"]);
    t.host("backend", &["198.18.2.21/24"]);
    let echo = t
        .thread_in("backend", || TcpListener::bind("198.18.2.21:8001").unwrap())
        .join()
        .unwrap();
    t.sh("lb1", "ip route add 198.18.2.0/24 dev eth0");
    t.sh("backend", "ip route add 198.18.4.0/24 dev eth0");
    t.sh("lb1", "sysctl -qw net.ipv4.tcp_fwmark_accept=0");
    let cfg = lb_yaml(tmp.path(), "lb1");
    let _lb = t.spawn_with_read_only_proc_sys(
        "lb1",
        bin("keel-lb").to_str().unwrap(),
        &["run", "--config", cfg.to_str().unwrap()],
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            status(&t, "lb1")["bgp"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("net.ipv4.tcp_fwmark_accept must be 1"))
        }),
        "the status does not say the sysctl is needed: {}",
        status(&t, "lb1")["bgp"]
    );
    assert_eq!(status(&t, "lb1")["bgp"]["vips"][0]["announced"], false);
    // What the package's /usr/lib/sysctl.d/60-keel-lb.conf does at boot.
    t.sh("lb1", "sysctl -qw net.ipv4.tcp_fwmark_accept=1");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let b = status(&t, "lb1")["bgp"].clone();
            b["error"].is_null() && b["vips"][0]["announced"] == true
        }),
        "keel-lb did not announce once the sysctl was set: {}",
        status(&t, "lb1")["bgp"]
    );
    drop(echo);
}
