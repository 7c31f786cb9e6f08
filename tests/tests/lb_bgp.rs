//! Scale-out by BGP through FRR (issue 17), end to end: an upstream router running FRR with ECMP,
//! two LB hosts each running keel-lb (`bgp:`) and FRR configured from the shipped template
//! (images/linux/frr/frr.conf), a client behind the router and a backend.
//!
//! ```text
//!   client 198.18.5.100 --gw--> router 198.18.5.1 / 198.18.1.1 (AS 65000, maximum-paths)
//!                                  | ECMP to the VIP 198.18.100.10
//!            lb1 198.18.1.11 (AS 65001) / lb2 198.18.1.12 (AS 65001) --> backend 198.18.1.21:8000
//! ```
//! All on one bridge; the client reaches the VIP only through the router (its default route).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_e2e::netns::{wait_until, Proc, Topology};
use keel_e2e::{bin, require_root, skip};

#[path = "svc_lab/mod.rs"]
mod svc_lab;

const VIP: &str = "198.18.100.10";
const FRR: &str = "/usr/lib/frr";

macro_rules! require_frr {
    () => {
        for p in ["zebra", "bgpd", "bfdd"] {
            if !Path::new(FRR).join(p).exists() {
                skip!("FRR is not installed ({FRR}/{p}; apt-get install frr)");
            }
        }
        if !keel_e2e::have("vtysh") || !keel_e2e::have("curl") {
            skip!("vtysh or curl missing");
        }
    };
}

/// Starts zebra, bfdd and bgpd in `host` with their own pid files and sockets in `dir`, then
/// loads `conf` through vtysh (as `vtysh -b` loads /etc/frr/frr.conf at boot).
fn start_frr(t: &Topology, host: &str, dir: &Path, conf: &str) {
    let d = dir.display().to_string();
    std::fs::write(dir.join("empty.conf"), "").unwrap();
    std::fs::write(dir.join("frr.conf"), conf).unwrap();
    std::fs::write(dir.join("vtysh.conf"), "").unwrap();
    // The daemons drop to the frr user (Debian's package creates it) and write here.
    t.sh(host, &format!("chown -R frr:frr {d}"));
    for daemon in ["zebra", "bfdd", "bgpd"] {
        let mut args = vec![
            format!("{FRR}/{daemon}"),
            "-d".into(),
            "-f".into(),
            format!("{d}/empty.conf"),
            "-i".into(),
            format!("{d}/{daemon}.pid"),
            "-z".into(),
            format!("{d}/zserv.api"),
            "--vty_socket".into(),
            d.clone(),
            "-A".into(),
            "127.0.0.1".into(),
        ];
        if daemon == "bfdd" {
            args.push("--bfdctl".into());
            args.push(format!("{d}/bfdd.sock"));
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = t.exec(host, &argv);
        assert!(
            out.status.success(),
            "{daemon} in {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // zebra first: the others connect to its socket.
        if daemon == "zebra" {
            assert!(
                wait_until(Duration::from_secs(10), || dir.join("zserv.api").exists()),
                "zebra in {host} did not open its socket"
            );
        }
    }
    let out = t.exec(
        host,
        &[
            "vtysh",
            "--vty_socket",
            &d,
            "--config_dir",
            &d,
            "-f",
            &format!("{d}/frr.conf"),
        ],
    );
    assert!(
        out.status.success(),
        "loading frr.conf in {host}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn vtysh(t: &Topology, host: &str, dir: &Path, cmd: &str) -> String {
    let d = dir.display().to_string();
    let out = t.exec(host, &["vtysh", "--vty_socket", &d, "-c", cmd]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The router's nexthops for the VIP (gateway addresses), from `show ip route json`.
fn nexthops(t: &Topology, dir: &Path) -> Vec<String> {
    nexthops_for(t, dir, VIP)
}

fn nexthops_for(t: &Topology, dir: &Path, vip: &str) -> Vec<String> {
    let out = vtysh(t, "router", dir, &format!("show ip route {vip}/32 json"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let mut hops: Vec<String> = v
        .get(format!("{vip}/32"))
        .and_then(|r| r.as_array())
        .into_iter()
        .flatten()
        .filter(|r| r.get("selected").and_then(|s| s.as_bool()) == Some(true))
        .flat_map(|r| {
            r.get("nexthops")
                .and_then(|n| n.as_array())
                .cloned()
                .unwrap_or_default()
        })
        .filter(|n| n.get("active").and_then(|a| a.as_bool()) == Some(true))
        .filter_map(|n| n.get("ip").and_then(|i| i.as_str()).map(str::to_string))
        .collect();
    hops.sort();
    hops
}

/// The shipped LB template with this LB's numbers filled in; logs to a file instead of syslog.
fn lb_frr_conf(id: &str, dir: &Path) -> String {
    lb_frr_conf_to(id, dir, "198.18.1.1")
}

fn lb_frr_conf_to(id: &str, dir: &Path, upstream: &str) -> String {
    let tpl = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/linux/frr/frr.conf"),
    )
    .unwrap();
    tpl.replace("LOCAL_ASN", "65001")
        .replace("ROUTER_ID", id)
        .replace("UPSTREAM_ASN", "65000")
        .replace("UPSTREAM_ADDRESS", upstream)
        .replace(
            "log syslog informational",
            &format!("log file {}/frr.log", dir.display()),
        )
}

fn router_frr_conf(dir: &Path) -> String {
    router_frr_conf_for(dir, "198.18.1.1", &["198.18.1.11", "198.18.1.12"])
}

fn router_frr_conf_for(dir: &Path, id: &str, lbs: &[&str]) -> String {
    router_frr_conf_bfd(dir, id, lbs, true)
}

/// `bfd` false: the router runs BGP alone, so a dead LB goes only at the hold time (the benchmark's
/// "without BFD" figure).
fn router_frr_conf_bfd(dir: &Path, id: &str, lbs: &[&str], bfd: bool) -> String {
    // Without BFD the router must not be a graceful-restart helper either: it would keep a dead
    // LB's routes as stale for the restart time (minutes), not just the hold time (docs/bgp.md).
    let bfd_lines = if bfd {
        " neighbor LBS bfd\n neighbor LBS bfd profile keel\n"
    } else {
        " bgp graceful-restart-disable\n"
    };
    let neighbors: String = lbs
        .iter()
        .map(|a| format!(" neighbor {a} peer-group LBS\n"))
        .collect();
    format!(
        "frr defaults datacenter
hostname router
log file {}/frr.log
bfd
 profile keel
  detect-multiplier 3
  receive-interval 100
  transmit-interval 100
 exit
exit
router bgp 65000
 bgp router-id {id}
 no bgp ebgp-requires-policy
 neighbor LBS peer-group
 neighbor LBS remote-as 65001
{bfd_lines}{neighbors} address-family ipv4 unicast
  maximum-paths 8
 exit-address-family
exit
",
        dir.display()
    )
}

/// keel-lb's config on `lb`: the VIP on three ports, tracking the api pool, with `bgp.handoff`
/// between the LB hosts unless KEEL_BGP_NO_HANDOFF is set (tests/bench/bgp.sh: the figure without).
fn lb_yaml(dir: &Path, lb: &str) -> PathBuf {
    let p = dir.join(format!("{lb}.yaml"));
    let handoff = if std::env::var_os("KEEL_BGP_NO_HANDOFF").is_some() {
        ""
    } else {
        "  handoff: {peers: [198.18.1.11, 198.18.1.12, 198.18.1.13]}\n"
    };
    std::fs::write(
        &p,
        format!(
            "admin: {{listen: 127.0.0.1:9100}}
shutdown: {{drain: 5s}}
frontends:
  - {{name: api, listen: {VIP}:8080, pool: api}}
  - {{name: echo, listen: {VIP}:8081, pool: echo}}
  - {{name: bulk, listen: {VIP}:5201, pool: bulk}}
pools:
  api:
    health: {{type: tcp, interval: 200ms, timeout: 200ms, rise: 1, fall: 1}}
    backends: [{{address: 198.18.1.21:8000}}]
  echo:
    backends: [{{address: 198.18.1.21:8001}}]
  bulk:
    # iperf3 takes a health check's connection for a test: check the echo port instead.
    health: {{type: tcp, port: 8001}}
    backends: [{{address: 198.18.1.21:5201}}]
bgp:
  withdraw_wait: 3s
  vty_socket: {}
  status_interval: 1s
  vips: [{{address: {VIP}, track_pools: [api]}}]
{handoff}",
            dir.join(format!("frr-{lb}")).display()
        ),
    )
    .unwrap();
    p
}

/// One connection from the client: the backend answers with the LB address it saw.
fn through(t: &Topology) -> Result<String, String> {
    through_within(t, Duration::from_secs(3))
}

/// [`through`] with its connect and read time limit.
fn through_within(t: &Topology, limit: Duration) -> Result<String, String> {
    t.thread_in("client", move || {
        let to: SocketAddr = format!("{VIP}:8080").parse().unwrap();
        let mut s = TcpStream::connect_timeout(&to, limit).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
        s.write_all(b"hi").map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        if out.is_empty() {
            return Err("closed without an answer".into());
        }
        Ok(out)
    })
    .join()
    .unwrap()
}

/// keel-lb's `/v1/status` in `lb`, parsed (Null when it does not answer).
fn status(t: &Topology, lb: &str) -> serde_json::Value {
    serde_json::from_str(&t.curl(lb, "http://127.0.0.1:9100/v1/status")).unwrap_or_default()
}

fn metric(t: &Topology, lb: &str, name: &str) -> Option<f64> {
    t.curl(lb, "http://127.0.0.1:9100/metrics")
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn vips_announced_by_bgp_spread_over_lbs_follow_pool_health_and_leave_without_loss() {
    require_root!();
    require_frr!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut t = Topology::new("lb-bgp");
    t.bridge();
    t.host("router", &["198.18.1.1/24", "198.18.5.1/24"]);
    t.host("lb1", &["198.18.1.11/24"]);
    t.host("lb2", &["198.18.1.12/24"]);
    t.host("backend", &["198.18.1.21/24"]);
    t.host("client", &["198.18.5.100/24"]);
    // L4 multipath hash so one client's connections spread; no redirects on a one-armed router.
    t.sh(
        "router",
        "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1 \
         net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.eth0.send_redirects=0",
    );
    t.sh(
        "client",
        "ip route add default via 198.18.5.1 && sysctl -qw net.ipv4.conf.all.accept_redirects=0",
    );
    for lb in ["lb1", "lb2"] {
        t.sh(lb, "ip route add 198.18.5.0/24 via 198.18.1.1");
    }

    // The backend names the LB each connection came through (its source address).
    let stop = Arc::new(AtomicBool::new(false));
    let ready = t
        .thread_in("backend", || TcpListener::bind("198.18.1.21:8000").unwrap())
        .join()
        .unwrap();
    ready.set_nonblocking(true).unwrap();
    let s2 = stop.clone();
    let backend = std::thread::spawn(move || {
        while !s2.load(Ordering::SeqCst) {
            match ready.accept() {
                Ok((mut c, peer)) => {
                    std::thread::spawn(move || {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
                        let mut b = [0u8; 2];
                        let _ = c.read_exact(&mut b);
                        let _ = c.write_all(peer.ip().to_string().as_bytes());
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });

    let echo_backend = echo_backend(&t, stop.clone());
    let rdir = dir.join("frr-router");
    std::fs::create_dir_all(&rdir).unwrap();
    start_frr(&t, "router", &rdir, &router_frr_conf(&rdir));
    let mut lbs: Vec<Proc> = Vec::new();
    // lb2 starts with its backend silent (through a next hop that never answers ARP, so checks
    // time out rather than fail at once): every backend counts as up until checked, but a VIP is
    // announced only once a check has passed, so lb2 announces nothing until the path is back.
    t.sh("lb2", "ip route add 198.18.1.21/32 via 198.18.1.99");
    for (lb, id) in [("lb1", "198.18.1.11"), ("lb2", "198.18.1.12")] {
        let d = dir.join(format!("frr-{lb}"));
        std::fs::create_dir_all(&d).unwrap();
        start_frr(&t, lb, &d, &lb_frr_conf(id, &d));
        let cfg = lb_yaml(dir, lb);
        lbs.push(t.spawn(
            lb,
            bin("keel-lb").to_str().unwrap(),
            &["run", "--config", cfg.to_str().unwrap()],
        ));
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let on = t.sh("lb2", "ip -br addr show dev keel-vips 2>/dev/null || true");
        assert!(
            !on.contains(VIP),
            "lb2 announced {VIP} before any health check passed: {on}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t.sh("lb2", "ip route del 198.18.1.21/32 via 198.18.1.99");

    // 1. Both LBs announce; the router has two nexthops; the VIP answers through both.
    let both = vec!["198.18.1.11".to_string(), "198.18.1.12".to_string()];
    assert!(
        wait_until(Duration::from_secs(60), || nexthops(&t, &rdir) == both),
        "router never had two nexthops for {VIP}: {:?}\n{}\nlb1:\n{}\n{}\n{}\n{}",
        nexthops(&t, &rdir),
        vtysh(&t, "router", &rdir, "show bgp summary"),
        t.sh("lb1", "ip -br addr"),
        vtysh(&t, "lb1", &dir.join("frr-lb1"), "show ip route"),
        vtysh(&t, "lb1", &dir.join("frr-lb1"), "show bgp ipv4 unicast"),
        vtysh(&t, "lb1", &dir.join("frr-lb1"), "show running-config"),
    );
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..40 {
        let via = through(&t).expect("a connection through the router to the VIP");
        *seen.entry(via).or_default() += 1;
    }
    assert_eq!(
        seen.len(),
        2,
        "connections did not spread over both LBs: {seen:?}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || metric(
            &t,
            "lb1",
            "keel_lb_bgp_session_up{peer=\"198.18.1.1\"}"
        ) == Some(1.0)),
        "lb1's metrics do not show its BGP session up"
    );
    assert_eq!(
        metric(
            &t,
            "lb1",
            "keel_lb_bgp_vip_announced{vip=\"198.18.100.10\"}"
        ),
        Some(1.0)
    );
    // FRR's view in the status API and metrics: the session, the VIP sent, BFD up (3 x 100 ms).
    assert!(
        wait_until(Duration::from_secs(10), || {
            let b = &status(&t, "lb1")["bgp"];
            b["frr"]["state"] == "ok"
                && b["neighbors"][0]["peer"] == "198.18.1.1"
                && b["neighbors"][0]["state"] == "Established"
                && b["neighbors"][0]["prefixesSent"] == 1
                && b["neighbors"][0]["bfd"] == "up"
        }),
        "lb1's /v1/status does not show its session, prefix and BFD: {}",
        status(&t, "lb1")["bgp"]
    );
    let b = status(&t, "lb1")["bgp"].clone();
    assert_eq!(b["vips"][0]["address"], VIP, "{b}");
    assert_eq!(b["vips"][0]["announced"], true, "{b}");
    assert_eq!(b["bfdPeers"][0]["detectMultiplier"], 3, "{b}");
    assert_eq!(b["bfdPeers"][0]["receiveIntervalMs"], 100, "{b}");
    assert_eq!(
        metric(&t, "lb1", "keel_lb_bgp_bfd_peer_up{peer=\"198.18.1.1\"}"),
        Some(1.0)
    );
    let page = t.exec(
        "lb1",
        &["curl", "-s", "--max-time", "2", "http://127.0.0.1:9100/"],
    );
    let page = String::from_utf8_lossy(&page.stdout);
    assert!(
        page.contains("data-bgp-peer=\"198.18.1.1\"") && page.contains("data-frr=\"ok\""),
        "the status page has no BGP section"
    );

    // 2. The tracked pool fails on lb2 only (its path to the backend is cut): its route goes.
    t.sh("lb2", "ip route add blackhole 198.18.1.21/32");
    assert!(
        wait_until(Duration::from_secs(20), || nexthops(&t, &rdir)
            == vec!["198.18.1.11".to_string()]),
        "lb2's route stayed after its pool failed: {:?}",
        nexthops(&t, &rdir)
    );
    for i in 0..20 {
        let via =
            through(&t).unwrap_or_else(|e| panic!("connection {i} with lb2's pool down: {e}"));
        assert_eq!(via, "198.18.1.11");
    }
    t.sh("lb2", "ip route del blackhole 198.18.1.21/32");
    assert!(
        wait_until(Duration::from_secs(20), || nexthops(&t, &rdir) == both),
        "lb2's route did not come back with its pool: {:?}",
        nexthops(&t, &rdir)
    );

    // 3. Planned leave: SIGTERM to lb1 while a client loop runs and 20 long-lived connections
    // (spread over both LBs) echo every 200 ms. lb1 tells lb2 it is leaving (bgp.handoff), so
    // lb2 forwards what the router moves to it of lb1's connections back to lb1, which serves
    // them while it drains: not one connection fails. Without handoff (KEEL_BGP_NO_HANDOFF, for
    // tests/bench/bgp.sh) lb1's connections are reset by lb2 once the router moves them.
    let handoff = std::env::var_os("KEEL_BGP_NO_HANDOFF").is_none();
    let echo = open_echo(&t, 20);
    let t = Arc::new(t);
    let done = Arc::new(AtomicBool::new(false));
    let moved = Arc::new(AtomicBool::new(false));
    let m2 = moved.clone();
    let busy = std::thread::spawn(move || broken_while_busy(echo, || m2.load(Ordering::SeqCst)));
    let (t2, d2) = (t.clone(), done.clone());
    let client = std::thread::spawn(move || {
        let (mut ok, mut failed) = (0usize, Vec::new());
        let end = Instant::now() + Duration::from_secs(30);
        while !d2.load(Ordering::SeqCst) && Instant::now() < end {
            let started = Instant::now();
            match through(&t2) {
                Ok(_) => ok += 1,
                Err(e) => failed.push((started, e)),
            }
        }
        (ok, failed)
    });
    std::thread::sleep(Duration::from_millis(500));
    let left_at = Instant::now();
    lbs[0].signal(libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(3), || nexthops(&t, &rdir)
            == vec!["198.18.1.12".to_string()]),
        "lb1's route was not withdrawn within 3 s of SIGTERM: {:?}",
        nexthops(&t, &rdir)
    );
    let withdrawn_at = Instant::now();
    let withdrawn_after = withdrawn_at - left_at;
    // Make-before-break: the route is gone while lb1 still runs (it serves for bgp.withdraw_wait).
    assert!(
        lbs[0].wait_timeout(Duration::ZERO).is_none(),
        "lb1 exited before its route was withdrawn"
    );
    if handoff {
        assert!(
            wait_until(Duration::from_secs(3), || metric(
                &t,
                "lb2",
                "keel_lb_bgp_handoff_forwarding{peer=\"198.18.1.11\"}"
            ) == Some(1.0)),
            "lb2 does not forward to the leaving lb1: {}",
            status(&t, "lb2")["bgp"]["handoff"]
        );
        assert_eq!(
            status(&t, "lb2")["bgp"]["handoff"]["forwardingTo"][0],
            "198.18.1.11"
        );
    }
    // The echo connections run on past the end of lb1's withdraw_wait (3 s), into its drain.
    std::thread::sleep(Duration::from_secs(4));
    let forwarded = t.sh("lb2", "nft list chain ip keel_lb_handoff away 2>&1 || true");
    moved.store(true, Ordering::SeqCst);
    let (broken_echo, _) = busy.join().unwrap();
    let exit = lbs[0].wait_timeout(Duration::from_secs(20));
    assert!(
        exit.is_some_and(|s| s.success()),
        "lb1 did not exit cleanly: {exit:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    done.store(true, Ordering::SeqCst);
    let (ok, failed) = client.join().unwrap();
    eprintln!("BENCH planned leave (handoff {}): route withdrawn {withdrawn_after:?} after SIGTERM; {ok} short connections, {} failed; {broken_echo} of 20 long-lived connections broken", if handoff { "on" } else { "off" }, failed.len());
    assert!(ok > 10, "the client loop made only {ok} connections");
    // Every connection that started once the router had converged succeeds, with or without
    // handoff.
    let late: Vec<&String> = failed
        .iter()
        .filter(|(at, _)| *at >= withdrawn_at)
        .map(|(_, e)| e)
        .collect();
    assert!(
        late.is_empty(),
        "connections started after the withdrawal failed: {late:?}"
    );
    if handoff {
        assert!(
            failed.is_empty(),
            "short connections failed across the planned leave: {failed:?}"
        );
        assert_eq!(
            broken_echo, 0,
            "long-lived connections broken across the planned leave"
        );
        // lb2 did forward lb1's packets (20 connections over two LBs: some went through lb1).
        let packets = keel_e2e::nft_counted_packets(&forwarded);
        assert!(packets > 0, "lb2 forwarded nothing:\n{forwarded}");
        // lb1 said it is back (gone): lb2 stops forwarding; lb1 removed its tables at exit.
        assert!(
            wait_until(Duration::from_secs(5), || status(&t, "lb2")["bgp"]
                ["handoff"]["forwardingTo"]
                .as_array()
                .is_some_and(|a| a.is_empty())),
            "lb2 still forwards to lb1 after it left: {}",
            status(&t, "lb2")["bgp"]["handoff"]
        );
        let tables = t.sh("lb1", "nft list tables");
        assert!(!tables.contains("keel_lb_handoff"), "{tables}");
    }

    // 4. FRR gone on lb2 (bgpd and bfdd stopped): a clear status, keel-lb keeps serving.
    let d2 = dir.join("frr-lb2");
    for daemon in ["bgpd", "bfdd"] {
        let pid = std::fs::read_to_string(d2.join(format!("{daemon}.pid"))).unwrap();
        t.sh("lb2", &format!("kill {}", pid.trim()));
    }
    assert!(
        wait_until(Duration::from_secs(10), || {
            let b = &status(&t, "lb2")["bgp"];
            b["frr"]["state"] == "error" && b["bfd"]["state"] == "error"
        }),
        "lb2's status does not say FRR is unreadable: {}",
        status(&t, "lb2")["bgp"]
    );
    let b = status(&t, "lb2")["bgp"].clone();
    assert!(
        b["frr"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("bgpd is not running")),
        "{b}"
    );
    assert_eq!(metric(&t, "lb2", "keel_lb_bgp_frr_up"), Some(0.0));
    assert_eq!(
        metric(&t, "lb2", "keel_lb_bgp_session_up{peer=\"198.18.1.1\"}"),
        Some(0.0)
    );
    assert!(
        metric(
            &t,
            "lb2",
            "keel_lb_bgp_status_reads_total{command=\"bgp_summary\",result=\"failed\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "failed reads are not counted"
    );
    assert!(
        lbs[1].wait_timeout(Duration::ZERO).is_none(),
        "keel-lb on lb2 exited when FRR went away"
    );

    stop.store(true, Ordering::SeqCst);
    let _ = backend.join();
    let _ = echo_backend.join();
}

/// keel-lb removes every address from `bgp.interface`: naming a real NIC there (a typo, a copied
/// config) must be refused at start, with that NIC left as it was.
#[test]
fn an_existing_interface_that_is_not_keel_lbs_dummy_is_refused() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Topology::new("lb-bgp-nic");
    t.bridge();
    t.host("lb", &["198.18.1.31/24"]);
    let cfg = tmp.path().join("lb.yaml");
    std::fs::write(
        &cfg,
        format!(
            "frontends:\n  - {{name: api, listen: {VIP}:8080, pool: api}}\npools:\n  api:\n    backends: [{{address: 198.18.1.21:8000}}]\nbgp:\n  interface: eth0\n  vty_socket: {}\n  vips: [{{address: {VIP}, track_pools: [api]}}]\n",
            tmp.path().display()
        ),
    )
    .unwrap();
    // keel-lb keeps serving without the announcement (as without VRRP) and says why.
    let log = tmp.path().join("lb.log");
    let child = t
        .command("lb", bin("keel-lb").to_str().unwrap())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(tmp.path().join("lb.err")).unwrap())
        .spawn()
        .unwrap();
    let mut p = Proc::from_child(child, "keel-lb in lb".into());
    let text = || {
        std::fs::read_to_string(&log).unwrap_or_default()
            + &std::fs::read_to_string(tmp.path().join("lb.err")).unwrap_or_default()
    };
    let said = wait_until(Duration::from_secs(20), || {
        text().contains("will not take eth0 over")
    });
    p.kill();
    let err = text();
    assert!(said, "no refusal to take eth0 over:\n{err}");
    assert!(err.contains("bgp.interface eth0 exists and is"), "{err}");
    let addrs = t.sh("lb", "ip -o addr show dev eth0");
    assert!(
        addrs.contains("198.18.1.31/24"),
        "eth0 lost its address: {addrs}"
    );
}

/// Service VIPs announced by BGP: an address pool with `announce: bgp`; kubectl creates a Service
/// of type LoadBalancer, the router learns its /32 from the LB's FRR, the client reaches the nodes
/// through the router; the Service deleted, the route goes.
#[test]
fn a_service_vip_from_a_bgp_pool_is_announced_while_served() {
    require_root!();
    require_frr!();
    if !keel_e2e::have("kubectl") || !keel_e2e::have("socat") {
        skip!("kubectl or socat missing");
    }
    let mut lab = svc_lab::Lab::new("bgp-svc", &["lb1"]);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(lab.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    lab.t.host("router", &["198.18.2.1/24"]);
    lab.t.sh(
        "router",
        "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.eth0.send_redirects=0",
    );
    // The Service pool is off the bridge's subnet: the client reaches it only through the router.
    lab.t.sh(
        "client",
        "ip route add 198.18.20.0/24 via 198.18.2.1 && sysctl -qw net.ipv4.conf.all.accept_redirects=0",
    );
    lab.nodes(&[30080], &[], &[]);
    let rdir = lab.path("frr-router");
    let ldir = lab.path("frr-lb1");
    std::fs::create_dir_all(&rdir).unwrap();
    std::fs::create_dir_all(&ldir).unwrap();
    start_frr(
        &lab.t,
        "router",
        &rdir,
        &router_frr_conf_for(&rdir, "198.18.2.1", &["198.18.2.11"]),
    );
    start_frr(
        &lab.t,
        "lb1",
        &ldir,
        &lb_frr_conf_to("198.18.2.11", &ldir, "198.18.2.1"),
    );
    let cfg = lab.path("lb1-bgp.yaml");
    std::fs::write(
        &cfg,
        format!(
            "admin: {{listen: 127.0.0.1:9100}}
shutdown: {{drain: 1s}}
services:
  kubeconfig: {kc}
  state_file: {state}
  instance: lb1
  writer_lease: {{duration: 3s}}
  health: {{interval: 300ms, timeout: 300ms, rise: 1, fall: 2}}
  address_pools:
    - {{name: default, addresses: [198.18.20.1-198.18.20.3], announce: bgp}}
bgp:
  vty_socket: {vty}
  status_interval: 1s
",
            kc = lab.path("api/admin.kubeconfig").display(),
            state = lab.path("lb1-state/services.json").display(),
            vty = ldir.display(),
        ),
    )
    .unwrap();
    let _lb = lab.spawn_keel("lb1", &cfg);
    lab.create(&svc_lab::service(
        "default",
        "web",
        &[("http", "TCP", 80, 30080)],
        "",
        "",
    ));
    let soon = Duration::from_secs(30);
    let ip = lab.wait("web gets an address", soon, || {
        lab.ingress("default", "web").first().cloned()
    });
    assert_eq!(ip, "198.18.20.1");
    lab.wait(
        "the router learns the Service's /32 from lb1",
        Duration::from_secs(60),
        || (nexthops_for(&lab.t, &rdir, &ip) == ["198.18.2.11"]).then_some(()),
    );
    let node = lab.wait("the client reaches a node through the router", soon, || {
        lab.tcp(&ip, 80)
    });
    assert!(node.starts_with("node"), "{node}");
    let st = status(&lab.t, "lb1");
    let vips = st["bgp"]["vips"].as_array().cloned().unwrap_or_default();
    assert!(
        vips.iter()
            .any(|v| v["address"] == ip.as_str() && v["announced"] == true),
        "{st}"
    );
    // No node reachable from lb1 (its health checks fail): withdrawn; reachable again: back.
    let cut = "ip route add blackhole 198.18.2.21/32 && ip route add blackhole 198.18.2.22/32 && ip route add blackhole 198.18.2.23/32";
    lab.t.sh("lb1", cut);
    lab.wait("the route goes when no node is healthy", soon, || {
        nexthops_for(&lab.t, &rdir, &ip).is_empty().then_some(())
    });
    lab.t.sh("lb1", &cut.replace(" add ", " del "));
    lab.wait("the route comes back with the nodes", soon, || {
        (nexthops_for(&lab.t, &rdir, &ip) == ["198.18.2.11"]).then_some(())
    });
    // Deleted: withdrawn.
    lab.kubectl_ok(&["delete", "service", "-n", "default", "web"]);
    lab.wait("the route goes with the Service", soon, || {
        nexthops_for(&lab.t, &rdir, &ip).is_empty().then_some(())
    });
    let on = lab.t.sh("lb1", "ip -o addr show dev keel-vips");
    assert!(!on.contains("198.18.20.1"), "{on}");
}

/// Three LB hosts behind the router: connections spread over all three; one LB's link cut (the VM
/// gone, FRR and keel-lb with it) is routed around within BFD's detection time (3 x 100 ms), and
/// the outage a client sees is measured.
#[test]
fn three_lbs_share_the_vip_and_a_dead_one_is_routed_around_by_bfd() {
    require_root!();
    require_frr!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let lbs3 = [
        ("lb1", "198.18.1.11"),
        ("lb2", "198.18.1.12"),
        ("lb3", "198.18.1.13"),
    ];
    let mut t = Topology::new("lb-bgp3");
    t.bridge();
    t.host("router", &["198.18.1.1/24", "198.18.5.1/24"]);
    for (lb, a) in lbs3 {
        t.host(lb, &[&format!("{a}/24")]);
    }
    t.host("backend", &["198.18.1.21/24"]);
    t.host("client", &["198.18.5.100/24"]);
    t.sh(
        "router",
        "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1 \
         net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.eth0.send_redirects=0",
    );
    t.sh(
        "client",
        "ip route add default via 198.18.5.1 && sysctl -qw net.ipv4.conf.all.accept_redirects=0",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let listener = t
        .thread_in("backend", || TcpListener::bind("198.18.1.21:8000").unwrap())
        .join()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let s2 = stop.clone();
    let backend = std::thread::spawn(move || {
        while !s2.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((mut c, peer)) => {
                    std::thread::spawn(move || {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
                        let mut b = [0u8; 2];
                        let _ = c.read_exact(&mut b);
                        let _ = c.write_all(peer.ip().to_string().as_bytes());
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    let echo_backend = echo_backend(&t, stop.clone());
    let rdir = dir.join("frr-router");
    std::fs::create_dir_all(&rdir).unwrap();
    let addrs: Vec<&str> = lbs3.iter().map(|(_, a)| *a).collect();
    // tests/bench/bgp.sh: KEEL_BGP_BENCH=1 prints the figures and adds a throughput run;
    // KEEL_BGP_NO_BFD=1 measures the dead-LB outage without BFD (BGP's hold time).
    let bench = std::env::var_os("KEEL_BGP_BENCH").is_some();
    let bfd = std::env::var_os("KEEL_BGP_NO_BFD").is_none();
    start_frr(
        &t,
        "router",
        &rdir,
        &router_frr_conf_bfd(&rdir, "198.18.1.1", &addrs, bfd),
    );
    let mut procs: Vec<Proc> = Vec::new();
    for (lb, id) in lbs3 {
        t.sh(lb, "ip route add 198.18.5.0/24 via 198.18.1.1");
        let d = dir.join(format!("frr-{lb}"));
        std::fs::create_dir_all(&d).unwrap();
        start_frr(&t, lb, &d, &lb_frr_conf(id, &d));
        let cfg = lb_yaml(dir, lb);
        procs.push(t.spawn(
            lb,
            bin("keel-lb").to_str().unwrap(),
            &["run", "--config", cfg.to_str().unwrap()],
        ));
    }
    let all: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    assert!(
        wait_until(Duration::from_secs(60), || nexthops(&t, &rdir) == all),
        "router never had three nexthops: {:?}\n{}",
        nexthops(&t, &rdir),
        vtysh(&t, "router", &rdir, "show bgp summary"),
    );
    assert!(
        !bfd || wait_until(Duration::from_secs(10), || {
            vtysh(&t, "router", &rdir, "show bfd peers json")
                .matches("\"status\":\"up\"")
                .count()
                == 3
        }),
        "BFD is not up with all three LBs: {}",
        vtysh(&t, "router", &rdir, "show bfd peers")
    );
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..60 {
        let via = through(&t).expect("a connection through the router to the VIP");
        *seen.entry(via).or_default() += 1;
    }
    assert_eq!(
        seen.len(),
        3,
        "connections did not spread over three LBs: {seen:?}"
    );

    // lb3's link cut while a client loop runs (connect and read limit 200 ms).
    let t = Arc::new(t);
    let done = Arc::new(AtomicBool::new(false));
    let (t2, d2) = (t.clone(), done.clone());
    let client = std::thread::spawn(move || {
        let mut log: Vec<(Instant, bool)> = Vec::new();
        let end = Instant::now() + Duration::from_secs(30);
        while !d2.load(Ordering::SeqCst) && Instant::now() < end {
            let started = Instant::now();
            let ok = through_within(&t2, Duration::from_millis(200)).is_ok();
            log.push((started, ok));
        }
        log
    });
    std::thread::sleep(Duration::from_millis(500));
    let cut = Instant::now();
    t.sh("lb3", "ip link set eth0 down");
    let two: Vec<String> = all[..2].to_vec();
    assert!(
        wait_until(Duration::from_secs(30), || nexthops(&t, &rdir) == two),
        "lb3 was not routed around: {:?}",
        nexthops(&t, &rdir)
    );
    let routed_around = cut.elapsed();
    std::thread::sleep(Duration::from_millis(1000));
    done.store(true, Ordering::SeqCst);
    let log = client.join().unwrap();
    let failed: Vec<Duration> = log
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(at, _)| at.saturating_duration_since(cut))
        .collect();
    let outage = failed.iter().max().copied().unwrap_or_default();
    eprintln!(
        "BENCH dead LB (link cut, BFD {}): router dropped it after {routed_around:?}; client: {} connections, {} failed, the last failed one started {outage:?} after the cut",
        if bfd { "3 x 100 ms" } else { "off" },
        log.len(),
        failed.len()
    );
    assert!(
        !bfd || routed_around < Duration::from_secs(3),
        "BFD (3 x 100 ms) should route around a dead LB well within 3 s (BGP's hold time is 9 s), took {routed_around:?}"
    );
    assert!(
        !bfd || outage < Duration::from_secs(3),
        "connections kept failing {outage:?} after the cut"
    );
    assert!(
        log.len() > 20,
        "the client loop made only {} connections",
        log.len()
    );

    // An LB joining, plain ECMP (FRR's route, hash-threshold): lb3's link comes back while long
    // connections run through lb1 and lb2; those the router rehashes to lb3 are reset there.
    let plain = {
        let conns = open_echo(&t, JOIN_CONNS);
        // The link down took lb3's route to the clients with it; a rebooted VM has it again.
        t.sh(
            "lb3",
            "ip link set eth0 up && ip route replace 198.18.5.0/24 via 198.18.1.1",
        );
        assert!(
            wait_until(Duration::from_secs(40), || nexthops(&t, &rdir) == all),
            "lb3 did not join again: {:?}",
            nexthops(&t, &rdir)
        );
        broken(conns)
    };
    // The same with a resilient nexthop group (kernel >= 5.13; made by hand: FRR 8.4's zebra does
    // not make them), preferred over FRR's route by its metric: joining moves only idle buckets.
    t.sh(
        "router",
        &format!(
            "ip nexthop add id 9011 via 198.18.1.11 dev eth0 && \
             ip nexthop add id 9012 via 198.18.1.12 dev eth0 && \
             ip nexthop add id 9013 via 198.18.1.13 dev eth0 && \
             ip nexthop add id 9100 group 9011/9012 type resilient buckets 128 idle_timer 10 && \
             ip route add {VIP}/32 nhid 9100 metric 5"
        ),
    );
    let resilient = {
        let conns = open_echo(&t, JOIN_CONNS);
        t.sh(
            "router",
            "ip nexthop replace id 9100 group 9011/9012/9013 type resilient buckets 128 idle_timer 10",
        );
        // The flows stay busy (a byte every 200 ms, well within idle_timer) while the idle buckets
        // move to lb3 (after idle_timer); lb3 must then get new connections, or no join happened.
        let lb3_buckets = || {
            t.sh("router", "ip nexthop bucket show id 9100 nhid 9013")
                .lines()
                .count()
        };
        let (n, moved) = broken_while_busy(conns, || lb3_buckets() > 0);
        assert!(moved, "no bucket moved to lb3 in the resilient group");
        let mut via = std::collections::BTreeSet::new();
        for _ in 0..30 {
            via.insert(through(&t).expect("a new connection after the join"));
        }
        assert!(
            via.contains("198.18.1.13"),
            "no new connection reached lb3 after it joined the resilient group: {via:?}"
        );
        n
    };
    eprintln!(
        "BENCH LB joining: {plain} of {JOIN_CONNS} established connections broken with plain ECMP, {resilient} with a resilient nexthop group"
    );
    assert_eq!(resilient, 0, "a resilient group moved busy flows");
    assert!(
        plain > 0,
        "plain ECMP broke no connection: the comparison shows nothing"
    );

    // A planned leave of lb3 (SIGTERM) with the resilient group: the router's side follows the
    // BGP nexthops (here by hand: the group loses lb3 once FRR's route has), so only lb3's buckets
    // move, to lb1 and lb2, which forward lb3's connections back to it (bgp.handoff) while it
    // drains. Without handoff (KEEL_BGP_NO_HANDOFF) those are reset.
    let handoff = std::env::var_os("KEEL_BGP_NO_HANDOFF").is_none();
    // lb3's echo pool went down with its link when the cut outlasted its health checks' fall
    // (without BFD): its connections would be refused, not moved.
    assert!(
        wait_until(Duration::from_secs(20), || metric(
            &t,
            "lb3",
            "keel_lb_pool_up{pool=\"echo\"}"
        ) == Some(1.0)),
        "lb3's echo pool did not come back after its link did"
    );
    let conns = open_echo(&t, JOIN_CONNS);
    let moved = Arc::new(AtomicBool::new(false));
    let m2 = moved.clone();
    let busy = std::thread::spawn(move || broken_while_busy(conns, || m2.load(Ordering::SeqCst)));
    std::thread::sleep(Duration::from_millis(500));
    procs[2].signal(libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(5), || nexthops(&t, &rdir) == two),
        "lb3's route was not withdrawn within 5 s of SIGTERM: {:?}",
        nexthops(&t, &rdir)
    );
    t.sh(
        "router",
        "ip nexthop replace id 9100 group 9011/9012 type resilient buckets 128 idle_timer 10",
    );
    // Past lb3's withdraw_wait (3 s), into its drain.
    std::thread::sleep(Duration::from_secs(4));
    moved.store(true, Ordering::SeqCst);
    let (left_broken, _) = busy.join().unwrap();
    let exit = procs[2].wait_timeout(Duration::from_secs(20));
    assert!(
        exit.is_some_and(|s| s.success()),
        "lb3 did not exit cleanly: {exit:?}"
    );
    eprintln!(
        "BENCH LB leaving (resilient group, handoff {}): {left_broken} of {JOIN_CONNS} established connections broken",
        if handoff { "on" } else { "off" }
    );
    if handoff {
        assert_eq!(
            left_broken, 0,
            "connections broken by lb3's planned leave despite handoff"
        );
    }
    if bench {
        // lb3 back for the throughput run, on FRR's plain ECMP route.
        t.sh(
            "router",
            &format!("ip route del {VIP}/32 nhid 9100 metric 5"),
        );
        let cfg = lb_yaml(dir, "lb3");
        procs[2] = t.spawn(
            "lb3",
            bin("keel-lb").to_str().unwrap(),
            &["run", "--config", cfg.to_str().unwrap()],
        );
        assert!(
            wait_until(Duration::from_secs(40), || nexthops(&t, &rdir) == all),
            "lb3 did not come back: {:?}\nlb3:\n{}\n{}\n{}\nrouter:\n{}",
            nexthops(&t, &rdir),
            t.sh(
                "lb3",
                "ip -br addr; ip route show table local | grep 198.18.100"
            ),
            vtysh(&t, "lb3", &dir.join("frr-lb3"), "show ip route"),
            vtysh(&t, "lb3", &dir.join("frr-lb3"), "show bgp ipv4 unicast"),
            vtysh(&t, "router", &rdir, "show bgp ipv4 unicast"),
        );
        throughput(&t, &rdir);
    }
    stop.store(true, Ordering::SeqCst);
    let _ = backend.join();
    let _ = echo_backend.join();
}

/// Bulk throughput through 1, 2 and 3 LBs (iperf3, 12 streams, client -> VIP -> backend), the
/// others withdrawn by `POST /handover`, on FRR's plain ECMP route.
fn throughput(t: &Topology, rdir: &Path) {
    let mut server = t.spawn(
        "backend",
        "iperf3",
        &["-s", "-B", "198.18.1.21", "-p", "5201"],
    );
    std::thread::sleep(Duration::from_millis(500));
    let post = |lb: &str, path: &str| {
        t.exec(
            lb,
            &[
                "curl",
                "-s",
                "-X",
                "POST",
                "--max-time",
                "3",
                &format!("http://127.0.0.1:9100{path}"),
            ],
        );
    };
    let mut base = 0.0;
    for n in [1usize, 2, 3] {
        for (i, lb) in ["lb1", "lb2", "lb3"].iter().enumerate() {
            post(lb, if i < n { "/resume" } else { "/handover" });
        }
        let want: Vec<String> = ["198.18.1.11", "198.18.1.12", "198.18.1.13"][..n]
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert!(
            wait_until(Duration::from_secs(30), || nexthops(t, rdir) == want),
            "router not on {n} LBs: {:?}",
            nexthops(t, rdir)
        );
        let out = t.exec(
            "client",
            &[
                "iperf3", "-c", VIP, "-p", "5201", "-P", "12", "-t", "5", "-J",
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0);
        if let Some(e) = v["error"].as_str() {
            eprintln!("BENCH throughput {n} LB(s): iperf3: {e}");
        }
        if n == 1 {
            base = bps;
        }
        eprintln!(
            "BENCH throughput {n} LB(s): {:.2} Gbit/s ({:.2}x one LB)",
            bps / 1e9,
            if base > 0.0 { bps / base } else { 0.0 }
        );
    }
    server.kill();
}

const JOIN_CONNS: usize = 40;

/// `n` connections from the client to the echo frontend, each answered once (so established
/// through some LB); the sockets stay usable from any thread.
/// The backend's echo port (198.18.1.21:8001): echoes until the client closes.
fn echo_backend(t: &Topology, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    t.echo_server("backend", "198.18.1.21:8001", stop)
}

fn open_echo(t: &Topology, n: usize) -> Vec<TcpStream> {
    t.thread_in("client", move || {
        let to: SocketAddr = format!("{VIP}:8081").parse().unwrap();
        (0..n)
            .map(|i| {
                let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("echo connection {i}: {e}"));
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                s.write_all(b"a").unwrap();
                let mut b = [0u8; 1];
                s.read_exact(&mut b)
                    .unwrap_or_else(|e| panic!("echo connection {i}: {e}"));
                s
            })
            .collect()
    })
    .join()
    .unwrap()
}

/// Keeps `conns` busy (one echo each every 200 ms) until `done` holds twice in a row, or 30 s;
/// returns how many stopped echoing and whether `done` held.
fn broken_while_busy(conns: Vec<TcpStream>, done: impl Fn() -> bool) -> (usize, bool) {
    let mut alive: Vec<bool> = vec![true; conns.len()];
    let end = Instant::now() + Duration::from_secs(30);
    let mut held = 0;
    while held < 2 && Instant::now() < end {
        for (s, ok) in conns.iter().zip(alive.iter_mut()) {
            if *ok {
                let mut s = s;
                let mut b = [0u8; 1];
                *ok = s.write_all(b"c").is_ok() && s.read_exact(&mut b).is_ok();
            }
        }
        held = if done() { held + 1 } else { 0 };
        std::thread::sleep(Duration::from_millis(200));
    }
    (alive.iter().filter(|a| !**a).count(), held >= 2)
}

/// How many of `conns` no longer echo (reset by an LB that never saw them, or silent).
fn broken(conns: Vec<TcpStream>) -> usize {
    conns
        .into_iter()
        .filter(|s| {
            let mut s = s;
            let mut b = [0u8; 1];
            s.write_all(b"b").is_err() || s.read_exact(&mut b).is_err()
        })
        .count()
}
