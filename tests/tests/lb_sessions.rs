//! keel-lb's established connections when a peer dies without closing: TCP keepalive and
//! TCP_USER_TIMEOUT on both sockets end them (and free their place) in seconds, not after the idle
//! timeout. Network namespaces: a client, keel-lb and a backend on a bridge; a peer "dies" when its
//! bridge port goes down (no FIN, no RST: a blackhole).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use keel_e2e::netns::{wait_until, Proc, Topology};
use keel_e2e::require_root;

const LB: &str = "198.18.7.11";
const BACKEND: &str = "198.18.7.60";

struct Lab {
    t: Topology,
    _dir: tempfile::TempDir,
    _procs: Vec<Proc>,
}

fn lab(name: &str) -> Lab {
    let mut t = Topology::new(name);
    t.bridge();
    t.host("client", &["198.18.7.50/24"]);
    t.host("lb", &[&format!("{LB}/24")]);
    t.host("backend", &[&format!("{BACKEND}/24")]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lb.yaml");
    // Health checked rarely: the test is about the connections, not about ejecting the backend.
    std::fs::write(
        &cfg,
        format!(
            "admin:\n  listen: 127.0.0.1:9100\ntimeouts:\n  idle: 1h\n  keepalive: 1s\n  user_timeout: 2s\nfrontends:\n  - name: web\n    listen: {LB}:8080\n    pool: p\npools:\n  p:\n    health:\n      type: tcp\n      interval: 1h\n      timeout: 1s\n    backends:\n      - address: {BACKEND}:9000\n"
        ),
    )
    .unwrap();
    let echo = t.spawn(
        "backend",
        "socat",
        &["TCP-LISTEN:9000,fork,reuseaddr", "EXEC:cat"],
    );
    let log = std::fs::File::create(dir.path().join("lb.log")).unwrap();
    let lb = t
        .command("lb", keel_e2e::bin("keel-lb").to_str().unwrap())
        .args(["run", "-c", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let lab = Lab {
        t,
        _dir: dir,
        _procs: vec![echo, Proc::from_child(lb, "keel-lb".into())],
    };
    assert!(
        wait_until(Duration::from_secs(10), || lab.open().is_some()),
        "keel-lb did not come up"
    );
    lab
}

impl Lab {
    /// keel-lb's open client connections (its frontend gauge), or None while it does not answer.
    fn open(&self) -> Option<f64> {
        let out = self.t.exec(
            "lb",
            &[
                "curl",
                "-s",
                "--max-time",
                "2",
                "http://127.0.0.1:9100/metrics",
            ],
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("keel_lb_frontend_connections{"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// A connection from the client through keel-lb that has carried one echo.
    fn connect(&self) -> TcpStream {
        self.t
            .thread_in("client", || {
                let to: SocketAddr = format!("{LB}:8080").parse().unwrap();
                let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(b"ping").unwrap();
                let mut echo = [0u8; 4];
                s.read_exact(&mut echo).unwrap();
                assert_eq!(&echo, b"ping");
                s
            })
            .join()
            .unwrap()
    }

    /// `ss` lines of keel-lb's established sockets that run a keepalive timer.
    fn keepalive_sockets(&self) -> Vec<String> {
        self.t
            .sh("lb", "ss -tnoH state established")
            .lines()
            .filter(|l| l.contains("timer:(keepalive"))
            .map(str::to_string)
            .collect()
    }
}

#[test]
fn a_peer_that_vanishes_frees_its_connection_within_keepalive_and_user_timeout() {
    require_root!();
    let lab = lab("lb-liveness");
    // Backend side: the backend dies silently.
    let mut held = lab.connect();
    assert_eq!(lab.open(), Some(1.0));
    // Both of keel-lb's sockets (accepted from the client, connected to the backend) probe: the
    // client's from the start (inherited from the listener), the backend's once the connection
    // has lived a second (shorter ones never pay for it).
    let both = || {
        let ka = lab.keepalive_sockets();
        ka.iter().any(|l| l.contains(&format!("{LB}:8080")))
            && ka.iter().any(|l| l.contains(&format!("{BACKEND}:9000")))
    };
    assert!(
        wait_until(Duration::from_secs(5), both),
        "keepalive is not on both sockets:\n{:#?}",
        lab.keepalive_sockets()
    );
    lab.t.link_down("backend");
    let cut = Instant::now();
    // keepalive 1s + user timeout 2s, with slack; the idle timeout is an hour.
    assert!(
        wait_until(Duration::from_secs(10), || lab.open() == Some(0.0)),
        "the connection to a vanished backend was not freed"
    );
    let took = cut.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "freed in {took:?}: not by keepalive"
    );
    // The client is told (FIN or RST), not left waiting.
    let mut buf = [0u8; 16];
    assert!(matches!(held.read(&mut buf), Ok(0) | Err(_)));

    // Client side: the client dies silently.
    lab.t.link_up("backend");
    let _held = lab.connect();
    assert_eq!(lab.open(), Some(1.0));
    lab.t.link_down("client");
    assert!(
        wait_until(Duration::from_secs(10), || lab.open() == Some(0.0)),
        "the connection of a vanished client was not freed"
    );
}
