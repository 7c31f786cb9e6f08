//! `mode: nat` frontends: the kernel forwards (DNAT to a backend, masquerade to the LB's address)
//! from nftables rules keel-lb writes; no keel-lb socket is on the data path. Real clients and
//! backends in namespaces, real conntrack; the backends say who they are and whom they see.
//!
//! ```text
//!   client 198.18.5.100 / 2001:db8:5::100 --route--> lb .11 --> b1 .21, b2 .22 (port 8001, UDP 5353)
//!   VIPs 198.18.105.10 (tcp 80, udp 53) and 2001:db8:105::10 (tcp 80), on the lb's lo
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_e2e::netns::{wait_until, Topology};
use keel_e2e::{bin, require_root, skip};

const VIP4: &str = "198.18.105.10";
const VIP6: &str = "2001:db8:105::10";

fn lb_yaml(dir: &Path, pool: &str, extra: &str) -> PathBuf {
    let p = dir.join("lb.yaml");
    std::fs::write(
        &p,
        format!(
            "admin: {{listen: 127.0.0.1:9100}}
shutdown: {{drain: 1s}}
frontends:
  - {{name: web4, listen: {VIP4}:80, pool: {pool}, mode: nat, timeouts: {{idle: 30s}}}}
  - {{name: web6, listen: \"[{VIP6}]:80\", pool: web6, mode: nat}}
  - {{name: dns, listen: {VIP4}:53, protocol: udp, pool: dns, mode: nat}}
{extra}pools:
  web:
    health: {{type: tcp, interval: 200ms, timeout: 200ms, fall: 1}}
    backends: [{{address: 198.18.5.21:8001}}, {{address: 198.18.5.22:8001}}]
  web-b2:
    health: {{type: tcp, interval: 200ms, timeout: 200ms, fall: 1}}
    backends: [{{address: 198.18.5.22:8001}}]
  web6:
    health: {{type: tcp, interval: 200ms, timeout: 200ms}}
    backends: [{{address: \"[2001:db8:5::21]:8001\"}}]
  dns:
    backends: [{{address: 198.18.5.21:5353}}]
"
        ),
    )
    .unwrap();
    p
}

fn status(t: &Topology) -> serde_json::Value {
    serde_json::from_str(&t.curl("lb", "http://127.0.0.1:9100/v1/status")).unwrap_or_default()
}

/// A backend that greets each connection with its name and the peer it sees, then echoes.
fn greeter(t: &Topology, host: &str, addr: &'static str, stop: Arc<AtomicBool>) {
    let l = t
        .thread_in(host, move || TcpListener::bind(addr).unwrap())
        .join()
        .unwrap();
    l.set_nonblocking(true).unwrap();
    let name = host.to_string();
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((mut c, peer)) => {
                    let name = name.clone();
                    std::thread::spawn(move || {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
                        if writeln!(c, "{name} {}", peer.ip()).is_err() {
                            return;
                        }
                        let mut b = [0u8; 256];
                        while let Ok(n @ 1..) = c.read(&mut b) {
                            if c.write_all(&b[..n]).is_err() {
                                return;
                            }
                        }
                        // The client half-closed: answer once more, then close our side.
                        let _ = c.write_all(b"bye\n");
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        // Dropping the listener here: the port refuses from now on.
    });
}

/// A UDP backend that answers each datagram with its name (and, if asked, the peer it sees) and
/// the datagram.
fn udp_responder(
    t: &Topology,
    host: &'static str,
    addr: &'static str,
    show_peer: bool,
    stop: Arc<AtomicBool>,
) {
    let udp = t
        .thread_in(host, move || UdpSocket::bind(addr).unwrap())
        .join()
        .unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    std::thread::spawn(move || {
        let mut b = [0u8; 512];
        while !stop.load(Ordering::SeqCst) {
            if let Ok((n, peer)) = udp.recv_from(&mut b) {
                let q = String::from_utf8_lossy(&b[..n]);
                let reply = if show_peer {
                    format!("{host} {} {q}", peer.ip())
                } else {
                    format!("{host} {q}")
                };
                let _ = udp.send_to(reply.as_bytes(), peer);
            }
        }
    });
}

/// Connects from the client and reads the greeting: (backend, the address it saw).
fn hello(t: &Topology, to: SocketAddr) -> (TcpStream, String) {
    t.thread_in("client", move || {
        let s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connect {to}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut line = String::new();
        BufReader::new(&s)
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("{to}: no greeting: {e}"));
        (s, line.trim().to_string())
    })
    .join()
    .unwrap()
}

fn echoes(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 4];
    s.write_all(b"ping").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"ping"
}

fn greetings(t: &Topology, to: SocketAddr, n: usize) -> Vec<String> {
    (0..n).map(|_| hello(t, to).1).collect()
}

#[test]
fn nat_frontends_forward_in_the_kernel_and_follow_health_reload_and_exit() {
    require_root!();
    for tool in ["nft", "curl", "ss"] {
        if !keel_e2e::have(tool) {
            skip!("{tool} missing (apt-get install nftables curl iproute2)");
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut t = Topology::new("lb-nat");
    t.bridge();
    t.host("lb", &["198.18.5.11/24", "2001:db8:5::11/64"]);
    t.host("b1", &["198.18.5.21/24", "2001:db8:5::21/64"]);
    t.host("b2", &["198.18.5.22/24"]);
    t.host("client", &["198.18.5.100/24", "2001:db8:5::100/64"]);
    t.sh(
        "client",
        &format!(
            "ip route add {VIP4}/32 via 198.18.5.11 && ip -6 route add {VIP6}/128 via 2001:db8:5::11"
        ),
    );
    t.sh(
        "lb",
        &format!("ip addr add {VIP4}/32 dev lo && ip addr add {VIP6}/128 dev lo"),
    );
    // Forwarding off (a new namespace copies IPv4's from the host's): keel-lb turns it on (it
    // runs as root here).
    t.sh(
        "lb",
        "sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0",
    );

    let stop1 = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::new(AtomicBool::new(false));
    greeter(&t, "b1", "198.18.5.21:8001", stop1.clone());
    greeter(&t, "b1", "[2001:db8:5::21]:8001", stop1.clone());
    greeter(&t, "b2", "198.18.5.22:8001", stop2.clone());
    udp_responder(&t, "b1", "198.18.5.21:5353", true, stop1.clone());

    let cfg = lb_yaml(dir, "web", "");
    let mut lb = t.spawn(
        "lb",
        bin("keel-lb").to_str().unwrap(),
        &["run", "--config", cfg.to_str().unwrap()],
    );
    assert!(
        wait_until(Duration::from_secs(10), || status(&t)["nat"]["installed"]
            == true),
        "the nat rules are not installed: {}",
        status(&t)["nat"]
    );
    let st = status(&t)["nat"].clone();
    assert!(st["error"].is_null(), "{st}");
    assert_eq!(st["frontends"].as_array().map(Vec::len), Some(3), "{st}");
    assert_eq!(t.sh("lb", "sysctl -n net.ipv4.ip_forward").trim(), "1");
    // No keel-lb socket carries the traffic: nothing listens on the VIP's ports.
    let listening = t.sh("lb", "ss -Htuln");
    assert!(
        !listening.contains(":80 ") && !listening.contains(":53 "),
        "{listening}"
    );

    // Round robin over both backends; each sees the LB's address (masquerade), not the client's.
    let web4: SocketAddr = format!("{VIP4}:80").parse().unwrap();
    let seen = greetings(&t, web4, 10);
    let (on1, on2) = (
        seen.iter().filter(|g| *g == "b1 198.18.5.11").count(),
        seen.iter().filter(|g| *g == "b2 198.18.5.11").count(),
    );
    assert_eq!((on1, on2), (5, 5), "{seen:?}");
    // The rules' counters reach Prometheus (read every second).
    let counted = |t: &Topology, backend: &str| -> u64 {
        let m = t.curl("lb", "http://127.0.0.1:9100/metrics");
        let series =
            format!("keel_lb_nat_connections_total{{backend=\"{backend}\",frontend=\"web4\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(5), || counted(&t, "198.18.5.21:8001")
            == 5
            && counted(&t, "198.18.5.22:8001") == 5),
        "keel_lb_nat_connections_total: {} and {}",
        counted(&t, "198.18.5.21:8001"),
        counted(&t, "198.18.5.22:8001")
    );
    assert!(t
        .curl("lb", "http://127.0.0.1:9100/metrics")
        .contains("keel_lb_nat_rules_installed 1"));
    // IPv6.
    let web6: SocketAddr = format!("[{VIP6}]:80").parse().unwrap();
    let (mut c6, g6) = hello(&t, web6);
    assert_eq!(g6, "b1 2001:db8:5::11");
    assert!(echoes(&mut c6));
    // UDP: the reply comes back from the VIP.
    let (from, reply) = t
        .thread_in("client", || {
            let s = UdpSocket::bind("198.18.5.100:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.send_to(b"query", format!("{VIP4}:53")).unwrap();
            let mut b = [0u8; 512];
            let (n, from) = s.recv_from(&mut b).expect("no UDP reply through nat");
            (from, String::from_utf8_lossy(&b[..n]).to_string())
        })
        .join()
        .unwrap();
    assert_eq!(from.to_string(), format!("{VIP4}:53"));
    assert_eq!(reply, "b1 198.18.5.11 query");

    // Half-close goes end to end: the backend still answers after the client's FIN.
    let (mut c, g) = hello(&t, web4);
    assert!(echoes(&mut c), "{g}");
    c.shutdown(Shutdown::Write).unwrap();
    let mut rest = String::new();
    c.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "bye\n");

    // Bulk both ways, intact, through the kernel's translation.
    let (bulk, _) = hello(&t, web4);
    let sent: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut writer = bulk.try_clone().unwrap();
    let to_send = sent.clone();
    let w = std::thread::spawn(move || writer.write_all(&to_send));
    let mut got = vec![0u8; sent.len()];
    let mut r = bulk;
    r.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    r.read_exact(&mut got).unwrap();
    w.join().unwrap().unwrap();
    assert!(got == sent, "bulk data changed on the way");

    // Drained at run time (the admin API): new connections leave b1, its established ones stay.
    let (mut on_b1, g) = loop {
        let (c, g) = hello(&t, web4);
        if g.starts_with("b1") {
            break (c, g);
        }
    };
    let drain = |state: &str| {
        let out = t.sh(
            "lb",
            &format!("curl -s -X POST --max-time 5 -d state={state} http://127.0.0.1:9100/v1/backends/web/198.18.5.21:8001"),
        );
        assert!(!out.to_lowercase().contains("error"), "{out}");
    };
    drain("drain");
    assert!(
        wait_until(Duration::from_secs(5), || status(&t)["nat"]["frontends"][0]
            ["backends"]
            == serde_json::json!(["198.18.5.22:8001"])),
        "{}",
        status(&t)["nat"]
    );
    let seen = greetings(&t, web4, 4);
    assert!(seen.iter().all(|g| g == "b2 198.18.5.11"), "{seen:?}");
    assert!(
        echoes(&mut on_b1),
        "{g}: the drained backend's connection broke"
    );
    drain("ready");
    assert!(
        wait_until(Duration::from_secs(5), || status(&t)["nat"]["frontends"][0]
            ["backends"]
            .as_array()
            .is_some_and(|a| a.len() == 2)),
        "{}",
        status(&t)["nat"]
    );
    drop(on_b1);

    // The conntrack timeout of an established flow is the frontend's `timeouts.idle` (30 s), not
    // the kernel's five days.
    let (kept, g) = hello(&t, web4);
    let mut kept = kept;
    let ct = t.sh("lb", "cat /proc/net/nf_conntrack");
    let line = ct
        .lines()
        .find(|l| l.contains("ESTABLISHED") && l.contains(&format!("dst={VIP4} ")))
        .unwrap_or_else(|| panic!("no established flow to the VIP:\n{ct}"));
    let timeout: u64 = line.split_whitespace().nth(4).unwrap().parse().unwrap();
    assert!(timeout <= 30 && timeout > 20, "{line}");

    // Reloads under load: the table is replaced in one transaction, so a connection opened at
    // any moment of it lands on a backend of one version or the other, never on nothing.
    let load = t.thread_in("client", move || {
        let mut failed = Vec::new();
        for i in 0..300 {
            let r = TcpStream::connect_timeout(&web4, Duration::from_secs(2)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut line = String::new();
                BufReader::new(&s).read_line(&mut line)?;
                let mut b = [0u8; 4];
                s.write_all(b"ping")?;
                s.read_exact(&mut b)?;
                Ok(line)
            });
            if let Err(e) = r {
                failed.push(format!("{i}: {e}"));
            }
        }
        failed
    });
    for pool in ["web-b2", "web", "web-b2", "web", "web-b2", "web"] {
        lb_yaml(dir, pool, "");
        let out = t.sh(
            "lb",
            "curl -s -X POST --max-time 5 http://127.0.0.1:9100/reload",
        );
        assert!(!out.to_lowercase().contains("fail"), "reload: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let failed = load.join().unwrap();
    assert!(
        failed.is_empty(),
        "connections failed across reloads: {failed:?}"
    );
    // Rewrites keep the flows' timeout policy: deleting it would have reset every established
    // flow to the kernel's default of five days (from its next packet on: hence the echo).
    assert!(echoes(&mut kept), "a flow broke across the reloads");
    let ct = t.sh("lb", "cat /proc/net/nf_conntrack");
    let established: Vec<&str> = ct
        .lines()
        .filter(|l| l.contains("ESTABLISHED") && l.contains(&format!("dst={VIP4} ")))
        .collect();
    assert!(!established.is_empty());
    for l in &established {
        let timeout: u64 = l.split_whitespace().nth(4).unwrap().parse().unwrap();
        assert!(timeout <= 30, "a rewrite reset this flow's timeout: {l}");
    }

    // b2 stops: after its health check fails, new connections all go to b1; b1's established
    // connection keeps working through the table's rewrite.
    stop2.store(true, Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(10), || status(&t)["nat"]["frontends"]
            [0]["backends"]
            == serde_json::json!(["198.18.5.21:8001"])),
        "b2 is still in the table: {}",
        status(&t)["nat"]
    );
    let seen = greetings(&t, web4, 6);
    assert!(seen.iter().all(|g| g == "b1 198.18.5.11"), "{seen:?}");
    if g.starts_with("b1") {
        assert!(echoes(&mut kept), "b1's connection broke when b2 went down");
    }

    // A reload moves web4 to the pool of b2 alone (down now): no backend, so the client is
    // refused at once by the LB's own stack, while the established connection to b1 stays
    // (conntrack keeps it).
    let (mut on_b1, g) = hello(&t, web4);
    assert!(g.starts_with("b1"), "{g}");
    lb_yaml(dir, "web-b2", "");
    let out = t.sh(
        "lb",
        "curl -s -X POST --max-time 5 http://127.0.0.1:9100/reload",
    );
    assert!(!out.to_lowercase().contains("fail"), "reload: {out}");
    assert!(
        wait_until(Duration::from_secs(5), || status(&t)["nat"]["frontends"][0]
            ["backends"]
            == serde_json::json!([])),
        "{}",
        status(&t)["nat"]
    );
    let refused = t
        .thread_in("client", move || {
            TcpStream::connect_timeout(&web4, Duration::from_secs(2)).map_err(|e| e.kind())
        })
        .join()
        .unwrap();
    assert_eq!(
        refused.err(),
        Some(std::io::ErrorKind::ConnectionRefused),
        "a frontend without backends must refuse"
    );
    assert!(
        echoes(&mut on_b1),
        "the established flow did not survive the reload"
    );

    // A bad reload changes nothing: the rules stay as they were.
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        good.replace(
            "mode: nat, timeouts",
            "mode: nat, max_connections: 5, timeouts",
        ),
    )
    .unwrap();
    let out = t.exec(
        "lb",
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
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("max_connections"), "reload: {said}");
    assert!(status(&t)["nat"]["installed"] == true);
    std::fs::write(&cfg, good).unwrap();

    // `keel-lb status` names the nat frontends.
    let text = t.exec(
        "lb",
        &[
            bin("keel-lb").to_str().unwrap(),
            "status",
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("NAT (mode: nat") && text.contains("web4"),
        "{text}"
    );

    // Exit: the table goes with keel-lb.
    lb.signal(libc::SIGTERM);
    let exit = lb.wait_timeout(Duration::from_secs(15));
    assert!(
        exit.is_some_and(|s| s.success()),
        "keel-lb did not exit cleanly: {exit:?}"
    );
    let tables = t.sh("lb", "nft list tables");
    assert!(!tables.contains("keel_lb_nat"), "{tables}");

    // A keel-lb killed outright leaves its table; the next one, without nat frontends, removes it
    // (nobody would check those backends any more).
    let mut lb = t.spawn(
        "lb",
        bin("keel-lb").to_str().unwrap(),
        &["run", "--config", cfg.to_str().unwrap()],
    );
    assert!(wait_until(Duration::from_secs(10), || status(&t)["nat"]
        ["installed"]
        == true));
    lb.signal(libc::SIGKILL);
    let _ = lb.wait_timeout(Duration::from_secs(5));
    assert!(t.sh("lb", "nft list tables").contains("keel_lb_nat"));
    let plain = dir.join("plain.yaml");
    std::fs::write(
        &plain,
        "admin: {listen: 127.0.0.1:9100}\nfrontends: [{name: p, listen: 127.0.0.1:8081, pool: p}]\npools: {p: {backends: [{address: 198.18.5.21:8001}]}}\n",
    )
    .unwrap();
    let _lb = t.spawn(
        "lb",
        bin("keel-lb").to_str().unwrap(),
        &["run", "--config", plain.to_str().unwrap()],
    );
    assert!(
        wait_until(Duration::from_secs(10), || !t
            .sh("lb", "nft list tables")
            .contains("keel_lb_nat")),
        "the table left by the killed keel-lb is still there"
    );
    drop(c6);
    stop1.store(true, Ordering::SeqCst);
}

/// Under the packaged unit keel-lb cannot write /proc/sys: with forwarding off, rules would take
/// the frontends for nothing (other hosts' packets would be dropped), so none are installed, the
/// proxy serves the nat frontends meanwhile, and the status says why and what to set. Once
/// forwarding is on (what a sysctl.d file does at boot) the rules go in and the proxy lets go.
/// The same fallback covers nft missing or refusing.
#[test]
fn without_forwarding_the_proxy_serves_nat_frontends_until_it_is_on() {
    require_root!();
    for tool in ["nft", "curl", "unshare", "ss"] {
        if !keel_e2e::have(tool) {
            skip!("{tool} missing");
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Topology::new("lb-natro");
    t.bridge();
    t.host("lb", &["198.18.6.11/24", "2001:db8:6::11/64"]);
    t.sh(
        "lb",
        "sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0",
    );
    let cfg = lb_yaml(tmp.path(), "web", "");
    let _lb = t.spawn_with_read_only_proc_sys(
        "lb",
        bin("keel-lb").to_str().unwrap(),
        &["run", "--config", cfg.to_str().unwrap()],
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            let n = status(&t)["nat"].clone();
            n["proxied"] == true
                && n["error"].as_str().is_some_and(|e| {
                    e.contains("net.ipv4.ip_forward is 0")
                        && e.contains("net.ipv6.conf.all.forwarding is 0")
                })
        }),
        "the status does not say forwarding is off and the proxy serves: {}",
        status(&t)["nat"]
    );
    assert_eq!(status(&t)["nat"]["installed"], false);
    assert!(!t.sh("lb", "nft list tables").contains("keel_lb_nat"));
    let listening = |t: &Topology| t.sh("lb", "ss -Htuln");
    assert!(
        wait_until(Duration::from_secs(5), || {
            let l = listening(&t);
            l.contains(&format!("{VIP4}:80")) && l.contains(&format!("{VIP4}:53"))
        }),
        "the proxy does not serve the nat frontends: {}",
        listening(&t)
    );
    assert!(t
        .curl("lb", "http://127.0.0.1:9100/metrics")
        .contains("keel_lb_nat_rules_installed 0"));
    t.sh(
        "lb",
        "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1",
    );
    assert!(
        wait_until(Duration::from_secs(5), || {
            let n = status(&t)["nat"].clone();
            n["error"].is_null() && n["installed"] == true && n["proxied"] == false
        }),
        "{}",
        status(&t)["nat"]
    );
    assert!(t.sh("lb", "nft list tables").contains("keel_lb_nat"));
    assert!(
        wait_until(Duration::from_secs(5), || !listening(&t)
            .contains(&format!("{VIP4}:80"))),
        "the proxy listener stayed: {}",
        listening(&t)
    );
}

/// Where the proxy would move or cut a flow, nat deletes its conntrack entry (by the mark of its
/// frontend and backend): a UDP client that keeps its source port moves off a drained backend at
/// its next datagram instead of staying pinned to it while it keeps sending (kube-proxy deletes
/// UDP entries for the same reason), and with `shutdown_sessions_on_down` a TCP connection to a
/// backend marked down is reset while one to a healthy backend carries on.
#[test]
fn nat_flows_leave_a_backend_where_the_proxy_would_move_or_cut_them() {
    require_root!();
    for tool in ["nft", "curl"] {
        if !keel_e2e::have(tool) {
            skip!("{tool} missing (apt-get install nftables curl)");
        }
    }
    const VIP: &str = "198.18.107.10";
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Topology::new("lb-natcut");
    t.bridge();
    t.host("lb", &["198.18.7.11/24"]);
    t.host("b1", &["198.18.7.21/24"]);
    t.host("b2", &["198.18.7.22/24"]);
    t.host("client", &["198.18.7.100/24"]);
    t.sh("client", &format!("ip route add {VIP}/32 via 198.18.7.11"));
    t.sh("lb", &format!("ip addr add {VIP}/32 dev lo"));
    let stop1 = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::new(AtomicBool::new(false));
    greeter(&t, "b1", "198.18.7.21:8001", stop1.clone());
    greeter(&t, "b2", "198.18.7.22:8001", stop2.clone());
    for (host, addr) in [("b1", "198.18.7.21:5353"), ("b2", "198.18.7.22:5353")] {
        udp_responder(&t, host, addr, false, stop1.clone());
    }
    let cfg = tmp.path().join("lb.yaml");
    std::fs::write(
        &cfg,
        format!(
            "admin: {{listen: 127.0.0.1:9100}}
frontends:
  - {{name: web, listen: {VIP}:80, pool: web, mode: nat}}
  - {{name: dns, listen: {VIP}:53, protocol: udp, pool: dns, mode: nat}}
pools:
  web:
    health: {{type: tcp, interval: 200ms, timeout: 200ms, fall: 1}}
    shutdown_sessions_on_down: 0s
    backends: [{{address: 198.18.7.21:8001}}, {{address: 198.18.7.22:8001}}]
  dns:
    health: {{type: tcp, port: 8001, interval: 200ms, timeout: 200ms, fall: 1}}
    backends: [{{address: 198.18.7.21:5353}}, {{address: 198.18.7.22:5353}}]
"
        ),
    )
    .unwrap();
    let _lb = t.spawn(
        "lb",
        bin("keel-lb").to_str().unwrap(),
        &["run", "--config", cfg.to_str().unwrap()],
    );
    assert!(
        wait_until(Duration::from_secs(10), || status(&t)["nat"]["installed"]
            == true),
        "the nat rules are not installed: {}",
        status(&t)["nat"]
    );
    let cut = |t: &Topology, fe: &str, backend: &str| -> u64 {
        let m = t.curl("lb", "http://127.0.0.1:9100/metrics");
        let series =
            format!("keel_lb_nat_flows_cut_total{{backend=\"{backend}\",frontend=\"{fe}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };

    // UDP: one client socket (one source port, one conntrack entry) asks until it is answered.
    let client = t
        .thread_in("client", || UdpSocket::bind("198.18.7.100:0").unwrap())
        .join()
        .unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let ask = |q: &str| -> String {
        for _ in 0..10 {
            client.send_to(q.as_bytes(), format!("{VIP}:53")).unwrap();
            let mut b = [0u8; 512];
            if let Ok((n, _)) = client.recv_from(&mut b) {
                return String::from_utf8_lossy(&b[..n]).to_string();
            }
        }
        panic!("no answer to {q}");
    };
    let first = ask("q1");
    let host = first.split(' ').next().unwrap().to_string();
    assert_eq!(ask("q2"), format!("{host} q2"), "the flow did not stay");
    let (addr, other) = if host == "b1" {
        ("198.18.7.21:5353", "b2")
    } else {
        ("198.18.7.22:5353", "b1")
    };
    let out = t.sh(
        "lb",
        &format!("curl -s -X POST --max-time 5 -d state=drain http://127.0.0.1:9100/v1/backends/dns/{addr}"),
    );
    assert!(!out.to_lowercase().contains("error"), "{out}");
    let mut last = String::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            last = ask("q3");
            last.starts_with(other)
        }),
        "the UDP flow stayed on the drained backend: {last}"
    );
    assert_eq!(cut(&t, "dns", addr), 1);
    assert_eq!(
        ask("q4"),
        format!("{other} q4"),
        "the new flow did not stay"
    );

    // TCP: one connection on each backend; b2's listener stops, so its check fails while its
    // established connection is still served by b2.
    let mut on = std::collections::HashMap::new();
    let web: SocketAddr = format!("{VIP}:80").parse().unwrap();
    for _ in 0..20 {
        let (c, g) = hello(&t, web);
        on.entry(g.split(' ').next().unwrap().to_string())
            .or_insert(c);
        if on.len() == 2 {
            break;
        }
    }
    let (mut on1, mut on2) = (on.remove("b1").unwrap(), on.remove("b2").unwrap());
    assert!(echoes(&mut on1) && echoes(&mut on2));
    // Open flows per backend, from conntrack (counted every 5 s): one connection on each web
    // backend (the others the loop dropped are closed), the UDP client's one flow on the backend it
    // moved to, none left on the drained one.
    let other_addr = if other == "b1" {
        "198.18.7.21:5353"
    } else {
        "198.18.7.22:5353"
    };
    let want = |pairs: &[(&str, u64)]| -> serde_json::Value {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let flows = |t: &Topology, i: usize| status(t)["nat"]["frontends"][i]["flows"].clone();
    assert!(
        wait_until(Duration::from_secs(15), || flows(&t, 0)
            == want(&[("198.18.7.21:8001", 1), ("198.18.7.22:8001", 1)])
            && flows(&t, 1) == want(&[(addr, 0), (other_addr, 1)])),
        "{}",
        status(&t)["nat"]
    );
    assert!(t
        .curl("lb", "http://127.0.0.1:9100/metrics")
        .contains("keel_lb_nat_open_flows{backend=\"198.18.7.22:8001\",frontend=\"web\"} 1"));
    stop2.store(true, Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(10), || !echoes(&mut on2)),
        "the connection to the backend marked down carried on: {}",
        status(&t)["nat"]
    );
    assert_eq!(cut(&t, "web", "198.18.7.22:8001"), 1);
    assert!(
        echoes(&mut on1),
        "the connection to the healthy backend broke"
    );
    assert_eq!(cut(&t, "web", "198.18.7.21:8001"), 0);
    assert_eq!(status(&t)["nat"]["error"], serde_json::Value::Null);
    stop1.store(true, Ordering::SeqCst);
}
