//! keel-lb end to end: the real binary on loopback in front of real backends started here.
//!
//! Backends are tiny threads: on connect they send their name and a newline, then echo what they
//! read; at end of input they send `bye` and close. Clients read the name to learn which backend
//! served them. Every wait is bounded.
//!
//! `KEEL_TEST_SPLICE=kernel` runs every test with `splice: kernel` on each TCP frontend (tests/run
//! does, after the plain run), so that the data-plane tests cover both paths; a connection that
//! fell back to the relay then fails the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(5);

use keel_e2e::free_port;

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    f()
}

// ----------------------------------------------------------------------------------------------
// Backends

struct Backend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    fn start(name: &str) -> Backend {
        Backend::start_on(name, "127.0.0.1:0".parse().unwrap())
    }

    fn start_on(name: &str, addr: SocketAddr) -> Backend {
        let l = TcpListener::bind(addr).unwrap();
        let addr = l.local_addr().unwrap();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let (s, o, n) = (stop.clone(), open.clone(), name.to_string());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        let (o, n) = (o.clone(), n.clone());
                        std::thread::spawn(move || serve(c, &n, &o));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Backend {
            addr,
            stop,
            open,
            thread: Some(thread),
        }
    }

    /// Closes the listener: new connections are refused, as when the process dies.
    fn kill(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

fn serve(mut c: TcpStream, name: &str, open: &AtomicUsize) {
    open.fetch_add(1, Ordering::SeqCst);
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = c.write_all(format!("{name}\n").as_bytes());
    let mut buf = [0u8; 16 * 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) => {
                let _ = c.write_all(b"bye\n");
                break;
            }
            Ok(n) => {
                if c.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    open.fetch_sub(1, Ordering::SeqCst);
}

/// Connects (optionally from `src`), returns the serving backend's name and the open stream.
fn connect_from(src: Option<IpAddr>, lb: SocketAddr) -> std::io::Result<(String, TcpStream)> {
    let s = match src {
        None => TcpStream::connect_timeout(&lb, T)?,
        Some(ip) => {
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            sock.bind(&SocketAddr::new(ip, 0).into())?;
            sock.connect_timeout(&lb.into(), T)?;
            sock.into()
        }
    };
    s.set_read_timeout(Some(T))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::other("closed before the backend answered"));
    }
    Ok((line.trim().to_string(), s))
}

/// One short request: the name of the backend that served it; waits for the close so counts settle.
fn ask(lb: SocketAddr) -> std::io::Result<String> {
    ask_from(None, lb)
}

fn ask_from(src: Option<IpAddr>, lb: SocketAddr) -> std::io::Result<String> {
    let (name, mut s) = connect_from(src, lb)?;
    s.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)?;
    Ok(name)
}

// ----------------------------------------------------------------------------------------------
// keel-lb

struct Lb {
    child: Child,
    dir: tempfile::TempDir,
    cfg: PathBuf,
    admin: SocketAddr,
    /// The test expects connections to fall back from `splice: kernel` to the relay.
    fallback_expected: bool,
}

impl Lb {
    fn start(yaml: &str) -> Lb {
        Lb::start_limited(yaml, None)
    }

    /// Starts keel-lb with at most `nofile` file descriptors.
    fn start_limited(yaml: &str, nofile: Option<u64>) -> Lb {
        Lb::start_with(yaml, nofile, &[])
    }

    fn start_env(yaml: &str, env: &[(&str, &str)]) -> Lb {
        Lb::start_with(yaml, None, env)
    }

    fn start_with(yaml: &str, nofile: Option<u64>, env: &[(&str, &str)]) -> Lb {
        Lb::start_cmd(yaml, nofile, env, &[])
    }

    /// `wrapper`: a command (and its arguments) that keel-lb runs under, e.g. `setpriv ...`.
    fn start_cmd(yaml: &str, nofile: Option<u64>, env: &[(&str, &str)], wrapper: &[&str]) -> Lb {
        let yaml = &splice_from_env(yaml);
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("lb.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let admin = yaml
            .lines()
            .skip_while(|l| !l.starts_with("admin:"))
            .find_map(|l| l.trim().strip_prefix("listen: "))
            .expect("test configs have an admin listener")
            .parse()
            .unwrap();
        let log = std::fs::File::create(dir.path().join("lb.log")).unwrap();
        let mut cmd = match wrapper.split_first() {
            None => Command::new(keel_e2e::bin("keel-lb")),
            Some((w, args)) => {
                let mut c = Command::new(w);
                c.args(args).arg(keel_e2e::bin("keel-lb"));
                c
            }
        };
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                })
            };
        }
        cmd.envs(env.iter().copied());
        let child = cmd
            .args(["run", "--workers", "2", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info,keel_lb=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let lb = Lb {
            child,
            dir,
            cfg,
            admin,
            fallback_expected: false,
        };
        assert!(
            wait_until(Duration::from_secs(10), || http(
                lb.admin, "GET", "/healthz"
            )
            .is_ok_and(|(c, _)| c == 200)),
            "keel-lb did not come up:\n{}",
            lb.log()
        );
        lb
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("lb.log")).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        http(self.admin, "GET", "/metrics").unwrap().1
    }

    fn rewrite(&self, yaml: &str) {
        let tmp = self.dir.path().join("lb.yaml.new");
        std::fs::write(&tmp, splice_from_env(yaml)).unwrap();
        std::fs::rename(tmp, &self.cfg).unwrap();
    }

    fn reload(&self) -> (u16, String) {
        http(self.admin, "POST", "/reload").unwrap()
    }

    fn child_alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: sending a signal to our own child process by its pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        if splice_kernel() && !self.fallback_expected && !std::thread::panicking() {
            // Every connection of the run must have taken the fast path.
            if let Ok((_, m)) = http(self.admin, "GET", "/metrics") {
                let fell_back: f64 = m
                    .lines()
                    .filter(|l| l.starts_with("keel_lb_frontend_splice_fallbacks_total"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum();
                assert_eq!(
                    fell_back,
                    0.0,
                    "connections fell back to the relay:\n{}",
                    self.log()
                );
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- keel-lb log ----\n{}", self.log());
        }
    }
}

fn splice_kernel() -> bool {
    std::env::var("KEEL_TEST_SPLICE").is_ok_and(|v| v == "kernel")
}

/// With KEEL_TEST_SPLICE=kernel: `splice: kernel` on every TCP frontend of a block-style config.
fn splice_from_env(yaml: &str) -> String {
    if !splice_kernel() {
        return yaml.to_string();
    }
    with_splice(yaml)
}

/// Adds `splice: kernel` to each TCP frontend (`  - name:` items under `frontends:`) that does not
/// choose for itself, as the item's last line, so that the lines above keep their numbers (errors
/// name them).
fn with_splice(yaml: &str) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = String::new();
    let mut in_frontends = false;
    let mut pending = false;
    for l in &lines {
        let item_goes_on = l.starts_with("    ");
        if pending && !item_goes_on {
            out.push_str("    splice: kernel\n");
            pending = false;
        }
        if !l.starts_with(' ') {
            in_frontends = l.starts_with("frontends:");
        } else if in_frontends && l.starts_with("  - name:") {
            pending = true;
        }
        if pending && (l.trim() == "protocol: udp" || l.trim().starts_with("splice:")) {
            pending = false;
        }
        out.push_str(l);
        out.push('\n');
    }
    if pending {
        out.push_str("    splice: kernel\n");
    }
    out
}

fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_with(addr, method, path, "")
}

fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, T)?;
    s.set_read_timeout(Some(T))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: x\r\n{headers}Content-Length: 0\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Ok((code, body))
}

fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn backends_yaml(bs: &[(&Backend, u32)]) -> String {
    bs.iter()
        .map(|(b, w)| format!("      - address: {}\n        weight: {w}\n", b.addr))
        .collect()
}

/// A config with one TCP frontend in front of `bs`.
fn config(
    port: u16,
    admin: u16,
    balance: &str,
    health: &str,
    bs: &[(&Backend, u32)],
    extra_fe: &str,
) -> String {
    format!(
        "admin:\n  listen: 127.0.0.1:{admin}\nshutdown:\n  drain: 10s\nfrontends:\n  - name: web\n    listen: 127.0.0.1:{port}\n    pool: p\n{extra_fe}pools:\n  p:\n    balance: {balance}\n    health:\n{health}    backends:\n{}",
        backends_yaml(bs)
    )
}

const FAST_TCP: &str =
    "      type: tcp\n      interval: 100ms\n      timeout: 100ms\n      rise: 2\n      fall: 2\n";
const SLOW_TCP: &str =
    "      type: tcp\n      interval: 30s\n      timeout: 1s\n      rise: 2\n      fall: 2\n";

fn lb_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// ----------------------------------------------------------------------------------------------
// Tests

#[test]
fn round_robin_spread_matches_weights() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let port = free_port();
    let _lb = Lb::start(&config(
        port,
        free_port(),
        "round_robin",
        SLOW_TCP,
        &[(&a, 1), (&b, 2), (&c, 3)],
        "",
    ));
    let mut counts = std::collections::HashMap::new();
    for _ in 0..300 {
        *counts.entry(ask(lb_addr(port)).unwrap()).or_insert(0) += 1;
    }
    assert_eq!(counts["a"], 50, "{counts:?}");
    assert_eq!(counts["b"], 100, "{counts:?}");
    assert_eq!(counts["c"], 150, "{counts:?}");
}

#[test]
fn least_conn_prefers_the_idle_backend() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let port = free_port();
    let _lb = Lb::start(&config(
        port,
        free_port(),
        "least_conn",
        SLOW_TCP,
        &[(&a, 1), (&b, 1)],
        "",
    ));
    let (busy, _held) = connect_from(None, lb_addr(port)).unwrap();
    let idle = if busy == "a" { "b" } else { "a" };
    for _ in 0..20 {
        assert_eq!(ask(lb_addr(port)).unwrap(), idle);
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn maglev_moves_about_one_nth_of_clients_when_a_backend_leaves() {
    let bs: Vec<Backend> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| Backend::start(n))
        .collect();
    let port = free_port();
    let admin = free_port();
    let all: Vec<(&Backend, u32)> = bs.iter().map(|b| (b, 1)).collect();
    let lb = Lb::start(&config(port, admin, "maglev", SLOW_TCP, &all, ""));
    let clients: Vec<IpAddr> = (1..=200u8).map(|i| IpAddr::from([127, 0, 1, i])).collect();
    let before: Vec<String> = clients
        .iter()
        .map(|c| ask_from(Some(*c), lb_addr(port)).unwrap())
        .collect();
    // The same client goes to the same backend.
    for (c, want) in clients.iter().zip(&before).take(20) {
        assert_eq!(&ask_from(Some(*c), lb_addr(port)).unwrap(), want);
    }
    let per: Vec<usize> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| before.iter().filter(|b| b == n).count())
        .collect();
    assert!(per.iter().all(|n| *n >= 25), "uneven spread {per:?}");
    // Backend d leaves the config.
    lb.rewrite(&config(port, admin, "maglev", SLOW_TCP, &all[..3], ""));
    assert_eq!(lb.reload().0, 200);
    let after: Vec<String> = clients
        .iter()
        .map(|c| ask_from(Some(*c), lb_addr(port)).unwrap())
        .collect();
    let moved_others = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| *b != "d" && b != a)
        .count();
    assert!(after.iter().all(|a| a != "d"));
    // Only d's clients had to move; Maglev's rebuild may move a few more (slack: 5% of clients).
    assert!(
        moved_others <= 10,
        "{moved_others} clients of surviving backends moved"
    );
}

#[test]
fn health_checks_eject_and_restore_a_backend() {
    let a = Backend::start("a");
    let mut b = Backend::start("b");
    let b_addr = b.addr;
    let port = free_port();
    let lb = Lb::start(&config(
        port,
        free_port(),
        "round_robin",
        FAST_TCP,
        &[(&a, 1), (&b, 1)],
        "",
    ));
    let up = |lb: &Lb| {
        metric(
            &lb.metrics(),
            &format!("keel_lb_backend_up{{backend=\"{b_addr}\",pool=\"p\"}}"),
        )
    };
    assert_eq!(up(&lb), Some(1.0));
    b.kill();
    assert!(
        wait_until(T, || up(&lb) == Some(0.0)),
        "b never marked down"
    );
    for _ in 0..20 {
        assert_eq!(ask(lb_addr(port)).unwrap(), "a");
    }
    let _b2 = Backend::start_on("b", b_addr);
    assert!(wait_until(T, || up(&lb) == Some(1.0)), "b never restored");
    let names: Vec<String> = (0..10).map(|_| ask(lb_addr(port)).unwrap()).collect();
    assert!(names.iter().any(|n| n == "b"), "{names:?}");
    assert!(lb.log().contains("backend down"), "transition not logged");
}

#[test]
fn a_backend_killed_mid_run_costs_no_client_request() {
    let (a, mut b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let port = free_port();
    // Health checks are slow on purpose: only the retry on the next backend can save the requests.
    let lb = Lb::start(&config(
        port,
        free_port(),
        "round_robin",
        SLOW_TCP,
        &[(&a, 1), (&b, 1), (&c, 1)],
        "",
    ));
    let mut failures = 0;
    for i in 0..300 {
        if i == 100 {
            b.kill();
        }
        match ask(lb_addr(port)) {
            Ok(n) => assert!(i <= 100 || n != "b"),
            Err(_) => failures += 1,
        }
    }
    assert_eq!(failures, 0);
    let m = lb.metrics();
    assert!(
        metric(
            &m,
            &format!(
                "keel_lb_backend_connect_errors_total{{backend=\"{}\"",
                b.addr
            )
        )
        .unwrap_or(0.0)
            >= 1.0
    );
}

#[test]
fn half_close_keeps_the_other_direction_open() {
    let a = Backend::start("a");
    let port = free_port();
    let _lb = Lb::start(&config(
        port,
        free_port(),
        "round_robin",
        SLOW_TCP,
        &[(&a, 1)],
        "",
    ));
    let (name, mut s) = connect_from(None, lb_addr(port)).unwrap();
    assert_eq!(name, "a");
    s.write_all(b"hello").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    // The backend reads our end of input, then still sends: the echo and "bye".
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "hellobye\n");
}

#[test]
fn bulk_data_passes_intact_both_ways() {
    let a = Backend::start("a");
    let port = free_port();
    let _lb = Lb::start(&config(
        port,
        free_port(),
        "round_robin",
        SLOW_TCP,
        &[(&a, 1)],
        "",
    ));
    let (_, s) = connect_from(None, lb_addr(port)).unwrap();
    let data: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    let mut r = s;
    r.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    r.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    assert_eq!(got.len(), data.len() + 4);
    assert!(got[..data.len()] == data[..], "bulk data corrupted");
}

#[test]
fn reload_under_load_drops_nothing() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let port = free_port();
    let admin = free_port();
    let lb = Lb::start(&config(
        port,
        admin,
        "round_robin",
        SLOW_TCP,
        &[(&a, 1), (&b, 1)],
        "",
    ));
    // A connection established before the reloads must keep working after them.
    let (_, mut held) = connect_from(None, lb_addr(port)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match ask(lb_addr(port)) {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    let versions = [
        config(
            port,
            admin,
            "round_robin",
            SLOW_TCP,
            &[(&a, 1), (&b, 1), (&c, 1)],
            "",
        ),
        config(port, admin, "least_conn", SLOW_TCP, &[(&b, 2), (&c, 1)], ""),
        config(
            port,
            admin,
            "maglev",
            SLOW_TCP,
            &[(&a, 1), (&c, 3)],
            "    max_connections: 500\n",
        ),
        config(
            port,
            admin,
            "round_robin",
            SLOW_TCP,
            &[(&a, 1), (&b, 1)],
            "",
        ),
    ];
    for v in versions.iter().cycle().take(12) {
        std::thread::sleep(Duration::from_millis(150));
        lb.rewrite(v);
        let (code, body) = lb.reload();
        assert_eq!(code, 200, "{body}");
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(
        done.load(Ordering::Relaxed) > 100,
        "too little load: {}",
        done.load(Ordering::Relaxed)
    );
    held.write_all(b"still here").unwrap();
    let mut buf = [0u8; 10];
    held.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");
    assert_eq!(
        metric(&lb.metrics(), "keel_lb_reloads_total{result=\"success\"}"),
        Some(12.0)
    );
}

#[test]
fn a_bad_reload_keeps_the_old_config_and_is_counted() {
    let a = Backend::start("a");
    let port = free_port();
    let admin = free_port();
    let lb = Lb::start(&config(
        port,
        admin,
        "round_robin",
        SLOW_TCP,
        &[(&a, 1)],
        "",
    ));
    lb.rewrite(&format!(
        "admin:\n  listen: 127.0.0.1:{admin}\nfrontends:\n  - name: web\n    listen: 127.0.0.1:{port}\n    pool: missing\npools: {{}}\n"
    ));
    let (code, body) = lb.reload();
    assert_eq!(code, 422, "{body}");
    assert!(
        body.contains("lb.yaml:6: frontends[0].pool: no pool named \"missing\""),
        "{body}"
    );
    assert_eq!(ask(lb_addr(port)).unwrap(), "a");
    lb.signal(libc::SIGHUP);
    assert!(wait_until(T, || metric(
        &lb.metrics(),
        "keel_lb_reloads_total{result=\"failure\"}"
    ) == Some(2.0)));
    assert_eq!(
        metric(&lb.metrics(), "keel_lb_config_last_reload_successful"),
        Some(0.0)
    );
    assert_eq!(ask(lb_addr(port)).unwrap(), "a");
}

/// `keel-lb reload` (systemd's ExecReload): exit status and output are the reload's real outcome.
#[test]
fn the_reload_command_reports_the_real_outcome() {
    let a = Backend::start("a");
    let port = free_port();
    let admin = free_port();
    let good = config(port, admin, "round_robin", SLOW_TCP, &[(&a, 1)], "");
    let lb = Lb::start(&good);
    let run = || {
        std::process::Command::new(keel_e2e::bin("keel-lb"))
            .args(["reload", "--config"])
            .arg(&lb.cfg)
            .output()
            .unwrap()
    };
    let o = run();
    assert!(o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("reloaded"),
        "{o:?}"
    );
    // A file the running keel-lb refuses (a listener it cannot bind): non-zero, with its reason.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    lb.rewrite(&good.replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{busy}")));
    let o = run();
    assert!(!o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("422") && err.contains("cannot listen"),
        "{err}"
    );
    // An invalid file is not even sent.
    lb.rewrite("# nothing\n");
    let o = run();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not sent"),
        "{o:?}"
    );
    assert_eq!(ask(lb_addr(port)).unwrap(), "a");
    assert_eq!(
        metric(&lb.metrics(), "keel_lb_reloads_total{result=\"failure\"}"),
        Some(1.0)
    );
}

#[test]
fn drain_state_takes_no_new_connections_but_keeps_established_ones() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let port = free_port();
    let admin = free_port();
    let lb = Lb::start(&config(
        port,
        admin,
        "round_robin",
        SLOW_TCP,
        &[(&a, 1), (&b, 1)],
        "",
    ));
    // Round robin: one held connection on each backend, so one is on b, the one drained below.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(connect_from(None, lb_addr(port)).unwrap());
    }
    let mut names: Vec<&str> = held.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);
    let yaml = config(
        port,
        admin,
        "round_robin",
        SLOW_TCP,
        &[(&a, 1), (&b, 1)],
        "",
    )
    .replace(
        &format!("{}\n        weight: 1\n", b.addr),
        &format!("{}\n        weight: 1\n        state: drain\n", b.addr),
    );
    lb.rewrite(&yaml);
    assert_eq!(lb.reload().0, 200);
    for _ in 0..10 {
        assert_eq!(ask(lb_addr(port)).unwrap(), "a");
    }
    // The held connection to the drained backend still carries data both ways, and b still
    // has it open (a connection cut and re-made would have gone to a).
    assert!(wait_until(T, || b.open.load(Ordering::SeqCst) == 1));
    for (name, s) in &mut held {
        s.write_all(b"ping").unwrap();
        let mut echo = [0u8; 4];
        s.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"ping", "held connection to {name}");
    }
    assert_eq!(b.open.load(Ordering::SeqCst), 1);
}

#[test]
fn udp_round_trips_through_per_client_sessions() {
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    echo.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !s2.load(Ordering::Relaxed) {
            if let Ok((n, from)) = echo.recv_from(&mut buf) {
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                let _ = echo.send_to(&reply, from);
            }
        }
    });
    let port = free_port();
    let admin = free_port();
    let lb = Lb::start(&format!(
        "admin:\n  listen: 127.0.0.1:{admin}\nfrontends:\n  - name: dns\n    listen: 127.0.0.1:{port}\n    protocol: udp\n    pool: p\n    timeouts:\n      udp_session: 1s\npools:\n  p:\n    health:\n      type: tcp\n      interval: 30s\n    backends:\n      - address: {echo_addr}\n"
    ));
    for c in 0..3 {
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(T)).unwrap();
        for i in 0..5 {
            let msg = format!("c{c}-m{i}");
            client.send_to(msg.as_bytes(), lb_addr(port)).unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!(
                from,
                lb_addr(port),
                "reply must come from the frontend address"
            );
            assert_eq!(&buf[..n], format!("echo:{msg}").as_bytes());
        }
    }
    let m = lb.metrics();
    assert_eq!(
        metric(&m, "keel_lb_frontend_connections_total{frontend=\"dns\"}"),
        Some(3.0)
    );
    // Sessions expire after their idle time.
    assert!(wait_until(T, || metric(
        &lb.metrics(),
        "keel_lb_frontend_connections{frontend=\"dns\"}"
    ) == Some(0.0)));
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
}

// ----------------------------------------------------------------------------------------------
// UDP sessions

/// A UDP backend: answers `<name>:<sender port>:<datagram>` after `delay`, so a client learns which
/// backend and which of keel-lb's session sockets served it. With `health`, a TCP listener on the
/// same port answers the pool's tcp health check until `fail_health`.
struct UdpEcho {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    health: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl UdpEcho {
    fn start(name: &str, delay: Duration) -> UdpEcho {
        UdpEcho::serve(name, delay, UdpSocket::bind("127.0.0.1:0").unwrap())
    }

    /// With a TCP listener on the same port for the pool's tcp health check. The TCP port is taken
    /// first: other tests hold many ephemeral TCP ports, few UDP ones.
    fn start_checked(name: &str) -> UdpEcho {
        for _ in 0..50 {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let Ok(sock) = UdpSocket::bind(l.local_addr().unwrap()) else {
                continue;
            };
            let mut e = UdpEcho::serve(name, Duration::ZERO, sock);
            l.set_nonblocking(true).unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let s = stop.clone();
            let t = std::thread::spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let _ = l.accept();
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
            e.health = Some((stop, t));
            return e;
        }
        panic!("no port free for both TCP and UDP");
    }

    fn serve(name: &str, delay: Duration, sock: UdpSocket) -> UdpEcho {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, name) = (stop.clone(), name.to_string());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    std::thread::sleep(delay);
                    let mut reply = format!("{name}:{}:", from.port()).into_bytes();
                    reply.extend_from_slice(&buf[..n]);
                    let _ = sock.send_to(&reply, from);
                }
            }
        });
        UdpEcho {
            addr,
            stop,
            thread: Some(thread),
            health: None,
        }
    }

    /// Closes the health check's listener: the backend is marked down, its UDP side still answers.
    fn fail_health(&mut self) {
        if let Some((stop, t)) = self.health.take() {
            stop.store(true, Ordering::Relaxed);
            t.join().unwrap();
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.fail_health();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// One UDP frontend `dns` on `port` in front of `bs`; `udp` is its `udp:` section's body.
fn udp_config(port: u16, admin: u16, fe_extra: &str, health: &str, bs: &[&UdpEcho]) -> String {
    let backends: String = bs
        .iter()
        .map(|b| format!("      - address: {}\n", b.addr))
        .collect();
    format!(
        "admin:\n  listen: 127.0.0.1:{admin}\nfrontends:\n  - name: dns\n    listen: 127.0.0.1:{port}\n    protocol: udp\n    pool: p\n{fe_extra}pools:\n  p:\n    health:\n{health}    backends:\n{backends}"
    )
}

/// A client socket on `ip` that asks keel-lb and returns the answer (None after `wait`).
fn udp_client(ip: [u8; 4]) -> UdpSocket {
    let c = UdpSocket::bind(SocketAddr::from((ip, 0))).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    c
}

fn udp_ask(c: &UdpSocket, lb: SocketAddr, msg: &str, wait: Duration) -> Option<String> {
    c.set_read_timeout(Some(wait)).unwrap();
    c.send_to(msg.as_bytes(), lb).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = c.recv_from(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn udp_metric(lb: &Lb, name: &str) -> f64 {
    metric(&lb.metrics(), &format!("{name}{{frontend=\"dns\"}}")).unwrap_or(-1.0)
}

/// Asserts the open-sessions gauge comes to `n`. A replaced or evicted session's task leaves the
/// gauge when it next runs, which may be just after the reply a test waited for.
fn assert_udp_sessions(lb: &Lb, n: f64) {
    let gauge = "keel_lb_frontend_connections";
    wait_until(T, || udp_metric(lb, gauge) == n);
    assert_eq!(udp_metric(lb, gauge), n);
}

/// A full table used to refuse every new session; now the session idle the longest makes room,
/// and the sessions used since keep their socket (the backend sees the same source port).
#[test]
fn udp_a_full_table_evicts_the_least_recently_used_session() {
    let echo = UdpEcho::start("a", Duration::ZERO);
    let port = free_port();
    let lb = Lb::start(&udp_config(
        port,
        free_port(),
        "    max_connections: 4\n",
        SLOW_TCP,
        &[&echo],
    ));
    let lb_at = lb_addr(port);
    let clients: Vec<UdpSocket> = (2..6).map(|i| udp_client([127, 0, 0, i])).collect();
    let mut session_port = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let r = udp_ask(c, lb_at, &format!("c{i}"), T).expect("served");
        session_port.push(r.split(':').nth(1).unwrap().to_string());
    }
    // Clients 0, 2 and 3 talk again: client 1 is now the least recently used.
    for i in [0, 2, 3] {
        std::thread::sleep(Duration::from_millis(20));
        udp_ask(&clients[i], lb_at, "again", T).expect("served");
    }
    let newcomer = udp_client([127, 0, 0, 9]);
    assert!(
        udp_ask(&newcomer, lb_at, "new", T).is_some(),
        "a full table refused a new client"
    );
    assert_eq!(udp_metric(&lb, "keel_lb_frontend_udp_evictions_total"), 1.0);
    for i in [0, 2, 3] {
        let r = udp_ask(&clients[i], lb_at, "still", T).unwrap();
        assert_eq!(
            r.split(':').nth(1).unwrap(),
            session_port[i],
            "client {i} lost its session: {r}"
        );
    }
    assert_udp_sessions(&lb, 4.0);
}

/// One client cycling through 10,000 source ports neither fills the table nor starves a second
/// client: it is held to max_sessions_per_source, counted.
#[test]
fn udp_a_client_cycling_source_ports_does_not_starve_another() {
    let echo = UdpEcho::start("a", Duration::ZERO);
    let port = free_port();
    let lb = Lb::start(&udp_config(
        port,
        free_port(),
        "    max_connections: 100\n    udp:\n      max_sessions_per_source: 50\n",
        SLOW_TCP,
        &[&echo],
    ));
    let lb_at = lb_addr(port);
    // The cycler goes through at least 10,000 source ports, and on until the other client is done.
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let cycler = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(60);
        let mut sent = 0;
        while sent < 200_000
            && Instant::now() < end
            && (sent < 10_000 || !d.load(Ordering::Relaxed))
        {
            let c = UdpSocket::bind("127.0.0.1:0").unwrap();
            let _ = c.send_to(format!("x{sent}").as_bytes(), lb_at);
            sent += 1;
        }
        sent
    });
    // The cycler has met its cap before the second client begins.
    assert!(wait_until(T, || udp_metric(
        &lb,
        "keel_lb_frontend_udp_source_limited_total"
    ) > 0.0));
    let mut answered = 0;
    let mut other = udp_client([127, 0, 0, 2]);
    for asked in 0..40 {
        // A new source port (a new session) every fourth question.
        if asked % 4 == 0 {
            other = udp_client([127, 0, 0, 2]);
        }
        // Retried like a resolver: the flood may overflow the socket's buffer (kernel drops,
        // counted apart), which is not starvation.
        answered += usize::from(
            (0..3).any(|_| udp_ask(&other, lb_at, "q", Duration::from_secs(1)).is_some()),
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    done.store(true, Ordering::Relaxed);
    let sent = cycler.join().unwrap();
    assert!(
        (10_000..200_000).contains(&sent),
        "the cycler stopped early ({sent} ports)"
    );
    assert_eq!(
        answered, 40,
        "the second client was starved (asked 3 times each)"
    );
    // Retried as above: the flood's last datagrams may still fill the socket's buffer.
    assert!((0..3).any(|_| udp_ask(&other, lb_at, "after", T).is_some()));
    // (Some of the flood may be dropped by the kernel before keel-lb reads it.)
    let limited = udp_metric(&lb, "keel_lb_frontend_udp_source_limited_total");
    assert!(limited > 1_000.0, "source_limited {limited}");
    assert!(udp_metric(&lb, "keel_lb_frontend_connections") <= 100.0);
}

#[test]
fn udp_sessions_per_source_are_capped() {
    let echo = UdpEcho::start("a", Duration::ZERO);
    let port = free_port();
    let lb = Lb::start(&udp_config(
        port,
        free_port(),
        "    udp:\n      max_sessions_per_source: 3\n",
        SLOW_TCP,
        &[&echo],
    ));
    let lb_at = lb_addr(port);
    let mine: Vec<UdpSocket> = (0..4).map(|_| udp_client([127, 0, 0, 3])).collect();
    for c in &mine[..3] {
        assert!(udp_ask(c, lb_at, "q", T).is_some());
    }
    assert_eq!(
        udp_ask(&mine[3], lb_at, "q", Duration::from_millis(500)),
        None,
        "a fourth session from one address"
    );
    assert_eq!(
        udp_metric(&lb, "keel_lb_frontend_udp_source_limited_total"),
        1.0
    );
    // Its open sessions still work, and another address is not affected.
    assert!(udp_ask(&mine[0], lb_at, "q", T).is_some());
    assert!(udp_ask(&udp_client([127, 0, 0, 4]), lb_at, "q", T).is_some());
}

/// A session stays with its backend only while that backend is usable: marked down by its health
/// check, or drained by a reload, the session's next datagram goes to another backend.
#[test]
fn udp_a_session_leaves_a_backend_that_went_down_or_was_drained() {
    let mut echoes: Vec<UdpEcho> = ["a", "b", "c"].map(UdpEcho::start_checked).into();
    let (port, admin) = (free_port(), free_port());
    let all: Vec<&UdpEcho> = echoes.iter().collect();
    let lb = Lb::start(&udp_config(port, admin, "", FAST_TCP, &all));
    let lb_at = lb_addr(port);
    let c = udp_client([127, 0, 0, 1]);
    let name = |r: String| r.split(':').next().unwrap().to_string();
    let index = |n: &str| usize::from(n.as_bytes()[0] - b'a');
    let first = name(udp_ask(&c, lb_at, "1", T).unwrap());
    assert_eq!(
        name(udp_ask(&c, lb_at, "2", T).unwrap()),
        first,
        "sticks while up"
    );
    let down = &mut echoes[index(&first)];
    down.fail_health();
    let up_series = format!("keel_lb_backend_up{{backend=\"{}\",pool=\"p\"}}", down.addr);
    assert!(
        wait_until(T, || metric(&lb.metrics(), &up_series) == Some(0.0)),
        "backend not marked down"
    );
    let moved = name(udp_ask(&c, lb_at, "3", T).unwrap());
    assert_ne!(moved, first, "the session stayed on a down backend");
    assert_eq!(udp_metric(&lb, "keel_lb_frontend_udp_repicks_total"), 1.0);
    // The backend now serving it is drained: the session moves to the third.
    let drained_addr = echoes[index(&moved)].addr;
    let all: Vec<&UdpEcho> = echoes.iter().collect();
    let drained = udp_config(port, admin, "", FAST_TCP, &all).replace(
        &format!("address: {drained_addr}\n"),
        &format!("address: {drained_addr}\n        state: drain\n"),
    );
    lb.rewrite(&drained);
    assert_eq!(lb.reload().0, 200);
    let third = name(udp_ask(&c, lb_at, "4", T).unwrap());
    assert!(
        third != first && third != moved,
        "{first} -> {moved} -> {third}"
    );
    assert_eq!(udp_metric(&lb, "keel_lb_frontend_udp_repicks_total"), 2.0);
    assert_udp_sessions(&lb, 1.0);
}

/// A reload that removes a session's backend from the pool moves the session on its next datagram,
/// as a backend that went down does (it used to stay until idle, sending to a removed backend).
#[test]
fn udp_a_session_leaves_a_backend_a_reload_removed() {
    let echoes: Vec<UdpEcho> = ["a", "b"].map(UdpEcho::start_checked).into();
    let (port, admin) = (free_port(), free_port());
    let all: Vec<&UdpEcho> = echoes.iter().collect();
    let lb = Lb::start(&udp_config(port, admin, "", FAST_TCP, &all));
    let lb_at = lb_addr(port);
    let c = udp_client([127, 0, 0, 1]);
    let name = |r: String| r.split(':').next().unwrap().to_string();
    let first = name(udp_ask(&c, lb_at, "1", T).unwrap());
    let gone = usize::from(first.as_bytes()[0] - b'a');
    let keep: Vec<&UdpEcho> = vec![&echoes[1 - gone]];
    lb.rewrite(&udp_config(port, admin, "", FAST_TCP, &keep));
    assert_eq!(lb.reload().0, 200);
    let now = name(udp_ask(&c, lb_at, "2", T).unwrap());
    assert_ne!(now, first, "the session stayed on a removed backend");
    assert_eq!(udp_metric(&lb, "keel_lb_frontend_udp_repicks_total"), 1.0);
    assert_udp_sessions(&lb, 1.0);
}

/// DNS-like: with close_after_replies 1 a session ends with its answer, not a minute later; two
/// questions in flight on one socket (a resolver's A and AAAA) both get their answers first.
#[test]
fn udp_close_after_one_reply_frees_the_session_at_once() {
    let echo = UdpEcho::start("a", Duration::from_millis(50));
    let port = free_port();
    let lb = Lb::start(&udp_config(
        port,
        free_port(),
        "    udp:\n      close_after_replies: 1\n",
        SLOW_TCP,
        &[&echo],
    ));
    let lb_at = lb_addr(port);
    for i in 0..3 {
        let c = udp_client([127, 0, 0, 1]);
        assert!(udp_ask(&c, lb_at, &format!("q{i}"), T).is_some());
        assert!(
            wait_until(Duration::from_millis(200), || udp_metric(
                &lb,
                "keel_lb_frontend_connections"
            ) == 0.0),
            "session {i} still open after its reply"
        );
    }
    let c = udp_client([127, 0, 0, 1]);
    c.send_to(b"A", lb_at).unwrap();
    c.send_to(b"AAAA", lb_at).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    for _ in 0..2 {
        let (n, _) = c.recv_from(&mut buf).expect("both questions answered");
        got.push(
            String::from_utf8_lossy(&buf[..n])
                .rsplit(':')
                .next()
                .unwrap()
                .to_string(),
        );
    }
    got.sort();
    assert_eq!(got, ["A", "AAAA"]);
    assert!(wait_until(Duration::from_millis(200), || udp_metric(
        &lb,
        "keel_lb_frontend_connections"
    ) == 0.0));
    assert_eq!(
        udp_metric(&lb, "keel_lb_frontend_udp_closed_after_replies_total"),
        4.0
    );
    assert_eq!(udp_metric(&lb, "keel_lb_frontend_connections_total"), 4.0);
}

/// The drops column of /proc/net/udp for the socket bound to 127.0.0.1:`port`.
fn proc_udp_drops(port: u16) -> Option<u64> {
    let local = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .ok()?
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(local.as_str()))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// receive_buffer sets SO_RCVBUF (reported as the kernel doubles it), and a flood into that tiny
/// buffer shows in the kernel drop counter, never above what the kernel itself reports.
#[test]
fn udp_receive_buffer_is_set_and_kernel_drops_are_counted() {
    let echo = UdpEcho::start("a", Duration::ZERO);
    let port = free_port();
    let lb = Lb::start(&udp_config(
        port,
        free_port(),
        "    udp:\n      receive_buffer: 4096\n",
        SLOW_TCP,
        &[&echo],
    ));
    let lb_at = lb_addr(port);
    assert_eq!(
        udp_metric(&lb, "keel_lb_frontend_udp_receive_buffer_bytes"),
        8192.0
    );
    let flooders: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                let c = UdpSocket::bind("127.0.0.1:0").unwrap();
                let payload = [7u8; 1000];
                for _ in 0..50_000 {
                    let _ = c.send_to(&payload, lb_at);
                }
            })
        })
        .collect();
    for f in flooders {
        f.join().unwrap();
    }
    // The counter travels with datagrams received after the drops: one more goes through.
    assert!(udp_ask(&udp_client([127, 0, 0, 1]), lb_at, "after", T).is_some());
    let kernel = proc_udp_drops(port).expect("keel-lb's socket in /proc/net/udp");
    let counted = udp_metric(&lb, "keel_lb_frontend_udp_kernel_drops_total");
    assert!(kernel > 0, "the flood did not overflow an 8 KiB buffer");
    assert!(
        counted > 0.0 && counted <= kernel as f64,
        "counted {counted}, kernel {kernel}"
    );
}

#[test]
fn the_connection_limit_holds_and_releases() {
    let a = Backend::start("a");
    let port = free_port();
    let _lb = Lb::start(&config(
        port,
        free_port(),
        "round_robin",
        SLOW_TCP,
        &[(&a, 1)],
        "    max_connections: 5\n",
    ));
    let mut served = Vec::new();
    for _ in 0..5 {
        served.push(connect_from(None, lb_addr(port)).unwrap().1);
    }
    // The sixth is accepted by the kernel's backlog but not served while five are open.
    let waiting = TcpStream::connect_timeout(&lb_addr(port), T).unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = [0u8; 2];
    assert!(
        (&waiting).read(&mut buf).is_err(),
        "served beyond the limit"
    );
    assert_eq!(a.open.load(Ordering::SeqCst), 5);
    drop(served.pop());
    waiting.set_read_timeout(Some(T)).unwrap();
    (&waiting).read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"a\n");
}

#[test]
fn sigterm_stops_accepting_drains_and_exits_zero() {
    let a = Backend::start("a");
    let port = free_port();
    let mut lb = Lb::start(&config(
        port,
        free_port(),
        "round_robin",
        SLOW_TCP,
        &[(&a, 1)],
        "",
    ));
    let (_, mut held) = connect_from(None, lb_addr(port)).unwrap();
    lb.signal(libc::SIGTERM);
    assert!(
        wait_until(T, || TcpStream::connect_timeout(&lb_addr(port), T).is_err()),
        "still accepting"
    );
    // The established connection still works while draining.
    held.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    held.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    assert!(
        lb.child.try_wait().unwrap().is_none(),
        "exited before the drain finished"
    );
    drop(held);
    let mut status = None;
    assert!(wait_until(T, || {
        status = lb.child.try_wait().unwrap();
        status.is_some()
    }));
    assert!(status.unwrap().success(), "{status:?}");
    assert!(lb.log().contains("drained; exiting"));
}

#[test]
fn metrics_pass_promtool_check() {
    if !keel_e2e::have("promtool") {
        keel_e2e::skip!("promtool not installed");
    }
    let a = Backend::start("a");
    let port = free_port();
    let lb = Lb::start(&config(
        port,
        free_port(),
        "round_robin",
        FAST_TCP,
        &[(&a, 1)],
        "",
    ));
    for _ in 0..3 {
        ask(lb_addr(port)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let text = lb.metrics();
    for name in [
        "keel_lb_frontend_connections_total",
        "keel_lb_frontend_received_bytes_total",
        "keel_lb_backend_connections{",
        "keel_lb_backend_sent_bytes_total",
        "keel_lb_backend_up",
        "keel_lb_backend_check_duration_seconds_bucket",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn proxy_v2_header_is_accepted_by_haproxy() {
    if !keel_e2e::have("haproxy") {
        keel_e2e::skip!("haproxy not installed");
    }
    let dir = tempfile::tempdir().unwrap();
    let hport = free_port();
    let hcfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &hcfg,
        format!(
            "global\n  log stderr format raw local0\ndefaults\n  mode http\n  log global\n  option httplog\n  timeout client 5s\n  timeout server 5s\n  timeout connect 5s\nfrontend fe\n  bind 127.0.0.1:{hport} accept-proxy\n  http-request return status 200 content-type text/plain lf-string \"client=%[src]:%[src_port] dst=%[dst]:%[dst_port]\\n\"\n"
        ),
    )
    .unwrap();
    let mut haproxy = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&hcfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(&mut haproxy);
    assert!(wait_until(T, || TcpStream::connect(("127.0.0.1", hport)).is_ok()));
    let port = free_port();
    let _lb = Lb::start(&format!(
        "admin:\n  listen: 127.0.0.1:{}\nfrontends:\n  - name: pp\n    listen: 127.0.0.1:{port}\n    pool: h\n    proxy_protocol: v2\npools:\n  h:\n    health:\n      type: tcp\n      interval: 30s\n    backends:\n      - address: 127.0.0.1:{hport}\n",
        free_port()
    ));
    let src: IpAddr = [127, 0, 0, 77].into();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(src, 0).into()).unwrap();
    sock.connect_timeout(&lb_addr(port).into(), T).unwrap();
    let mut s: TcpStream = sock.into();
    let local = s.local_addr().unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "client={}:{} dst=127.0.0.1:{port}",
            local.ip(),
            local.port()
        )),
        "HAProxy saw the wrong addresses: {out}"
    );
    drop(guard);
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime), counted from the state field (3).
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[test]
fn running_out_of_file_descriptors_is_survived_without_spinning() {
    let a = Backend::start("a");
    let port = free_port();
    let mut lb = Lb::start_limited(
        &config(port, free_port(), "round_robin", SLOW_TCP, &[(&a, 1)], ""),
        Some(48),
    );
    // Clients that closed while queued in the backlog reach keel-lb half closed; the kernel refuses
    // to splice a socket that is not established (EOPNOTSUPP), so those few are relayed.
    lb.fallback_expected = true;
    // Each proxied connection costs keel-lb two fds: far more clients than it can hold.
    let mut clients = Vec::new();
    for _ in 0..60 {
        if let Ok(s) = TcpStream::connect_timeout(&lb_addr(port), T) {
            clients.push(s);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_seconds(lb.child.id());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds(lb.child.id()) - before;
    assert!(
        used < 0.5,
        "keel-lb used {used:.2}s of CPU in 2s while out of fds: spinning"
    );
    drop(clients);
    // Once connections close, service resumes by itself.
    assert!(
        wait_until(Duration::from_secs(10), || ask(lb_addr(port))
            .is_ok_and(|n| n == "a")),
        "no recovery after fds were freed"
    );
    let m = lb.metrics();
    assert!(
        metric(&m, "keel_lb_frontend_accept_errors_total{frontend=\"web\"}").unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    assert!(lb.child_alive());
}

/// Idle clients of the admin API cannot take the fds health checks need: with a low fd limit and
/// hundreds of idle admin connections, a healthy backend stays up and traffic flows.
#[test]
fn idle_admin_connections_never_mark_a_healthy_backend_down() {
    let a = Backend::start("a");
    let port = free_port();
    let admin = free_port();
    let lb = Lb::start_limited(
        &config(port, admin, "round_robin", FAST_TCP, &[(&a, 1)], ""),
        Some(200),
    );
    assert!(wait_until(T, || ask(lb_addr(port)).is_ok()));
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin));
    let mut idle = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = TcpStream::connect_timeout(&admin_addr, Duration::from_millis(50)) {
            idle.push(s);
        }
    }
    // Several check intervals (100 ms, fall 2) with the idle connections held.
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..5 {
        assert_eq!(ask(lb_addr(port)).unwrap(), "a");
    }
    drop(idle);
    // The admin listener caps connections per client address: until it has seen the 300 closes,
    // a new connection from 127.0.0.1 may be refused.
    let mut m = String::new();
    assert!(wait_until(T, || http(lb.admin, "GET", "/metrics")
        .map(|(_, body)| m = body)
        .is_ok()));
    assert_eq!(
        metric(
            &m,
            "keel_lb_backend_up{backend=\"127.0.0.1:PORT\",pool=\"p\"}"
                .replace("PORT", &a.addr.port().to_string())
                .as_str()
        ),
        Some(1.0),
        "{m}"
    );
    assert!(!lb.log().contains("backend down"), "{}", lb.log());
}

#[test]
fn admin_post_endpoints_require_the_bearer_token() {
    let a = Backend::start("a");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let port = free_port();
    let yaml = config(port, free_port(), "round_robin", SLOW_TCP, &[(&a, 1)], "").replacen(
        "\nshutdown:",
        &format!("\n  token_file: {}\nshutdown:", token.display()),
        1,
    );
    let lb = Lb::start(&yaml);
    assert_eq!(http(lb.admin, "POST", "/reload").unwrap().0, 401);
    assert_eq!(
        http_with(
            lb.admin,
            "POST",
            "/reload",
            "Authorization: Bearer wrong\r\n"
        )
        .unwrap()
        .0,
        401
    );
    let auth = "Authorization: Bearer s3cret\r\n";
    assert_eq!(http_with(lb.admin, "POST", "/reload", auth).unwrap().0, 200);
    // No VRRP configured: the handover says so instead of pretending.
    let (code, body) = http_with(lb.admin, "POST", "/handover", auth).unwrap();
    assert_eq!((code, body.trim()), (200, "vrrp is not running"));
    // Reading stays open to Prometheus.
    assert_eq!(http(lb.admin, "GET", "/metrics").unwrap().0, 200);
    assert_eq!(http(lb.admin, "GET", "/reload").unwrap().0, 405);
}

/// The `metrics:` listener serves reads to Prometheus and never control; a token can come from a
/// systemd credential.
#[test]
fn the_metrics_listener_serves_reads_only_and_tokens_come_from_credentials() {
    let a = Backend::start("a");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin-token"), "from-systemd\n").unwrap();
    let (port, admin, metrics) = (free_port(), free_port(), free_port());
    let yaml = config(port, admin, "round_robin", SLOW_TCP, &[(&a, 1)], "").replacen(
        "\nshutdown:",
        &format!(
            "\n  token_credential: admin-token\nmetrics:\n  listen: 127.0.0.1:{metrics}\nshutdown:"
        ),
        1,
    );
    let lb = Lb::start_env(
        &yaml,
        &[("CREDENTIALS_DIRECTORY", dir.path().to_str().unwrap())],
    );
    let m = SocketAddr::from(([127, 0, 0, 1], metrics));
    assert_eq!(http(m, "GET", "/metrics").unwrap().0, 200);
    assert_eq!(http(m, "GET", "/healthz").unwrap().0, 200);
    let auth = "Authorization: Bearer from-systemd\r\n";
    for path in ["/reload", "/handover", "/resume"] {
        assert_eq!(http_with(m, "POST", path, auth).unwrap().0, 404, "{path}");
    }
    assert_eq!(http(lb.admin, "POST", "/reload").unwrap().0, 401);
    assert_eq!(http_with(lb.admin, "POST", "/reload", auth).unwrap().0, 200);
}

#[test]
fn reload_adds_and_removes_listeners_without_dropping_established_connections() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let (p1, p2, admin) = (free_port(), free_port(), free_port());
    let lb = Lb::start(&config(p1, admin, "round_robin", SLOW_TCP, &[(&a, 1)], ""));
    let (_, mut held) = connect_from(None, lb_addr(p1)).unwrap();
    // The frontend moves to p2 and its pool to backend b.
    lb.rewrite(&config(p2, admin, "round_robin", SLOW_TCP, &[(&b, 1)], ""));
    let (code, body) = lb.reload();
    assert_eq!(code, 200, "{body}");
    assert!(
        wait_until(T, || TcpStream::connect_timeout(&lb_addr(p1), T).is_err()),
        "old listener still accepts"
    );
    assert_eq!(ask(lb_addr(p2)).unwrap(), "b");
    held.write_all(b"old").unwrap();
    let mut buf = [0u8; 3];
    held.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"old");
    // The frontend's series survive the move: the held connection and the new one.
    assert_eq!(
        metric(
            &lb.metrics(),
            "keel_lb_frontend_connections_total{frontend=\"web\"}"
        ),
        Some(2.0)
    );
}

#[test]
fn a_reload_whose_listener_cannot_bind_changes_nothing() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let (port, admin) = (free_port(), free_port());
    let lb = Lb::start(&config(
        port,
        admin,
        "round_robin",
        SLOW_TCP,
        &[(&a, 1)],
        "",
    ));
    // Another process holds the port the new config wants; the pool change must not apply either.
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let yaml = config(port, admin, "round_robin", SLOW_TCP, &[(&b, 1)], "").replace(
        "pools:",
        &format!("  - name: second\n    listen: 127.0.0.1:{taken}\n    pool: p\npools:"),
    );
    lb.rewrite(&yaml);
    let (code, body) = lb.reload();
    assert_eq!(code, 422, "{body}");
    assert!(body.contains(&format!("127.0.0.1:{taken}")), "{body}");
    for _ in 0..5 {
        assert_eq!(ask(lb_addr(port)).unwrap(), "a");
    }
    assert_eq!(
        metric(&lb.metrics(), "keel_lb_reloads_total{result=\"failure\"}"),
        Some(1.0)
    );
}

#[test]
fn maglev_maps_clients_alike_on_every_instance_whatever_the_backend_order() {
    // After a VRRP failover the backup keel-lb must send each client where the old master did,
    // even when its config lists the same backends in another order.
    let bs: Vec<Backend> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| Backend::start(n))
        .collect();
    let fwd: Vec<(&Backend, u32)> = bs.iter().map(|b| (b, 1)).collect();
    let rev: Vec<(&Backend, u32)> = fwd.iter().rev().copied().collect();
    let (p1, p2) = (free_port(), free_port());
    let _lb1 = Lb::start(&config(p1, free_port(), "maglev", SLOW_TCP, &fwd, ""));
    let _lb2 = Lb::start(&config(p2, free_port(), "maglev", SLOW_TCP, &rev, ""));
    let mut seen = std::collections::HashSet::new();
    for i in 1..=100u8 {
        let client = Some(IpAddr::from([127, 0, 2, i]));
        let on1 = ask_from(client, lb_addr(p1)).unwrap();
        assert_eq!(
            on1,
            ask_from(client, lb_addr(p2)).unwrap(),
            "client 127.0.2.{i}"
        );
        seen.insert(on1);
    }
    // Not trivially equal: the clients spread over every backend.
    assert_eq!(seen.len(), 5, "{seen:?}");
}

#[test]
fn sessions_to_a_backend_marked_down_are_shut_down_after_the_grace_only_when_asked() {
    for shut_down in [true, false] {
        let mut b = Backend::start("b");
        let b_addr = b.addr;
        let port = free_port();
        // One backend, so the held connection is on it; checks every 100 ms, down after 2 fails.
        let balance = if shut_down {
            "round_robin\n    shutdown_sessions_on_down: 1s"
        } else {
            "round_robin"
        };
        let lb = Lb::start(&config(
            port,
            free_port(),
            balance,
            FAST_TCP,
            &[(&b, 1)],
            "",
        ));
        let (name, mut held) = connect_from(None, lb_addr(port)).unwrap();
        assert_eq!(name, "b");
        // The listener closes (checks fail) while the held connection's server thread lives on.
        b.kill();
        assert!(
            wait_until(T, || metric(
                &lb.metrics(),
                &format!("keel_lb_backend_up{{backend=\"{b_addr}\",pool=\"p\"}}")
            ) == Some(0.0)),
            "b never marked down"
        );
        let down = Instant::now();
        held.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
        if shut_down {
            let mut buf = [0u8; 16];
            let r = held.read(&mut buf);
            let took = down.elapsed();
            assert!(
                matches!(r, Ok(0))
                    || r.as_ref()
                        .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock
                            && e.kind() != std::io::ErrorKind::TimedOut),
                "the session was not shut down: {r:?}"
            );
            // Not before the grace (less the time to see the metric), and soon after it.
            assert!(
                took >= Duration::from_millis(700) && took <= Duration::from_secs(3),
                "shut down {took:?} after the backend was marked down"
            );
            assert_eq!(
                metric(
                    &lb.metrics(),
                    "keel_lb_frontend_sessions_shut_down_total{frontend=\"web\"}"
                ),
                Some(1.0)
            );
        } else {
            // Well past grace + bound of the other case: the session still carries data.
            std::thread::sleep(Duration::from_secs(3));
            held.write_all(b"ping").unwrap();
            let mut echo = [0u8; 4];
            held.read_exact(&mut echo).unwrap();
            assert_eq!(&echo, b"ping");
        }
    }
}

#[test]
fn round_robin_spreads_a_drained_backends_share_evenly() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let port = free_port();
    let yaml = config(
        port,
        free_port(),
        "round_robin",
        SLOW_TCP,
        &[(&a, 1), (&b, 1), (&c, 1)],
        "",
    )
    .replace(
        &format!("{}\n        weight: 1\n", b.addr),
        &format!("{}\n        weight: 1\n        state: drain\n", b.addr),
    );
    let _lb = Lb::start(&yaml);
    let mut counts = std::collections::HashMap::new();
    for _ in 0..30 {
        *counts.entry(ask(lb_addr(port)).unwrap()).or_insert(0) += 1;
    }
    // Not 20/10: b's turn goes to whoever is next on the shared cursor.
    assert_eq!(counts.get("a"), Some(&15), "{counts:?}");
    assert_eq!(counts.get("c"), Some(&15), "{counts:?}");
    assert_eq!(counts.get("b"), None, "{counts:?}");
}

// ----------------------------------------------------------------------------------------------
// Kernel splicing (`splice: kernel`): the fast path's own guarantees. The other tests in this file
// cover it too when run with KEEL_TEST_SPLICE=kernel.

/// `config` with `splice: kernel` (and `fe_extra`) on its frontend.
fn spliced_config(port: u16, admin: u16, bs: &[(&Backend, u32)], fe_extra: &str) -> String {
    with_splice(&config(port, admin, "round_robin", SLOW_TCP, bs, fe_extra))
}

fn fe_metric(lb: &Lb, name: &str) -> f64 {
    metric(&lb.metrics(), &format!("{name}{{frontend=\"web\"}}")).unwrap_or(0.0)
}

/// Spliced connections need CAP_BPF; without it the fallback is the point of another test.
macro_rules! require_bpf {
    () => {
        if !keel_e2e::is_root() {
            keel_e2e::skip!("kernel splicing needs root (CAP_BPF)");
        }
    };
}

#[test]
fn spliced_connections_half_close_either_way_and_count_their_bytes() {
    require_bpf!();
    let a = Backend::start("a");
    // A backend that finishes first: it sends, closes its side, then still reads the client.
    let first = TcpListener::bind("127.0.0.1:0").unwrap();
    let first_addr = first.local_addr().unwrap();
    let got = std::thread::spawn(move || {
        // Health checks connect and close without data: serve until a client sends something.
        for _ in 0..10 {
            let (mut c, _) = first.accept().unwrap();
            c.set_read_timeout(Some(T)).unwrap();
            // After keel-lb has spliced: a socket that already holds the FIN is not spliced (the
            // kernel takes only established sockets into a sockmap) but relayed.
            std::thread::sleep(Duration::from_millis(200));
            let _ = c.write_all(b"early");
            let _ = c.shutdown(Shutdown::Write);
            let mut rest = Vec::new();
            let _ = c.read_to_end(&mut rest);
            if !rest.is_empty() {
                return rest;
            }
        }
        Vec::new()
    });
    let port = free_port();
    let lb = Lb::start(&spliced_config(port, free_port(), &[(&a, 1)], ""));

    // The client finishes first; the backend still answers after our FIN.
    let (name, mut s) = connect_from(None, lb_addr(port)).unwrap();
    assert_eq!(name, "a");
    s.write_all(b"hello").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "hellobye\n");
    drop(s);
    assert!(
        wait_until(T, || fe_metric(&lb, "keel_lb_frontend_connections") == 0.0),
        "{}",
        lb.metrics()
    );
    assert_eq!(fe_metric(&lb, "keel_lb_frontend_spliced_total"), 1.0);
    assert_eq!(fe_metric(&lb, "keel_lb_frontend_received_bytes_total"), 5.0);
    assert_eq!(
        fe_metric(&lb, "keel_lb_frontend_sent_bytes_total"),
        2.0 + 9.0
    );

    // The backend finishes first; the client still sends after the backend's FIN.
    let port2 = free_port();
    let lb2 = Lb::start(&spliced_config(port2, free_port(), &[], "").replace(
        "    backends:\n",
        &format!("    backends:\n      - address: {first_addr}\n        weight: 1\n"),
    ));
    let mut s = TcpStream::connect_timeout(&lb_addr(port2), T).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut early = Vec::new();
    s.read_to_end(&mut early).unwrap();
    assert_eq!(early, b"early");
    s.write_all(b"more").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(got.join().unwrap(), b"more");
    assert!(wait_until(T, || fe_metric(
        &lb2,
        "keel_lb_frontend_received_bytes_total"
    ) == 4.0));
    assert_eq!(fe_metric(&lb2, "keel_lb_frontend_sent_bytes_total"), 5.0);
    assert_eq!(fe_metric(&lb2, "keel_lb_frontend_spliced_total"), 1.0);
}

#[test]
fn a_spliced_connection_times_out_when_idle_but_not_while_data_flows() {
    require_bpf!();
    let a = Backend::start("a");
    let port = free_port();
    let lb = Lb::start(&spliced_config(
        port,
        free_port(),
        &[(&a, 1)],
        "    timeouts:\n      idle: 1s\n",
    ));
    let (_, mut quiet) = connect_from(None, lb_addr(port)).unwrap();
    let (_, mut busy) = connect_from(None, lb_addr(port)).unwrap();
    let start = Instant::now();
    // The busy one echoes a byte every 300 ms for 2.4 s: past the idle timeout, never idle.
    for i in 0..8u8 {
        std::thread::sleep(Duration::from_millis(300));
        busy.write_all(&[b'0' + i]).unwrap();
        let mut b = [0u8; 1];
        busy.read_exact(&mut b).unwrap();
        assert_eq!(b[0], b'0' + i);
    }
    // The quiet one was closed after about a second (EOF or reset, nothing else).
    let mut buf = [0u8; 16];
    let r = quiet.read(&mut buf);
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(4));
    assert_eq!(fe_metric(&lb, "keel_lb_frontend_spliced_total"), 2.0);
    assert!(
        wait_until(T, || fe_metric(&lb, "keel_lb_frontend_connections") == 1.0),
        "{}",
        lb.metrics()
    );
}

#[test]
fn proxy_v2_reaches_the_backend_before_spliced_data() {
    require_bpf!();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let baddr = l.local_addr().unwrap();
    let backend = std::thread::spawn(move || {
        // Health checks connect and close without data: serve until a header comes.
        for _ in 0..10 {
            let (mut c, _) = l.accept().unwrap();
            c.set_read_timeout(Some(T)).unwrap();
            let mut hdr = [0u8; 28];
            if c.read_exact(&mut hdr).is_err() {
                continue;
            }
            let mut data = [0u8; 10];
            c.read_exact(&mut data).unwrap();
            c.write_all(b"ok").unwrap();
            return (hdr, data);
        }
        panic!("no PROXY header came");
    });
    let port = free_port();
    let lb = Lb::start(&format!(
        "admin:\n  listen: 127.0.0.1:{}\nfrontends:\n  - name: web\n    listen: 127.0.0.1:{port}\n    pool: h\n    proxy_protocol: v2\n    splice: kernel\npools:\n  h:\n    health:\n      type: tcp\n      interval: 30s\n    backends:\n      - address: {baddr}\n",
        free_port()
    ));
    let mut s = TcpStream::connect_timeout(&lb_addr(port), T).unwrap();
    let local = s.local_addr().unwrap();
    // Sent at once: it is queued before keel-lb has even connected to the backend.
    s.write_all(b"early-data").unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut ok = [0u8; 2];
    s.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"ok");
    let (hdr, data) = backend.join().unwrap();
    assert_eq!(&hdr[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(&hdr[16..20], &[127, 0, 0, 1]);
    assert_eq!(u16::from_be_bytes([hdr[24], hdr[25]]), local.port());
    assert_eq!(u16::from_be_bytes([hdr[26], hdr[27]]), port);
    assert_eq!(&data, b"early-data");
    assert_eq!(fe_metric(&lb, "keel_lb_frontend_spliced_total"), 1.0);
}

#[test]
fn reload_keeps_spliced_connections_and_new_ones_take_the_new_mode() {
    require_bpf!();
    let a = Backend::start("a");
    let (port, admin) = (free_port(), free_port());
    let lb = Lb::start(&spliced_config(port, admin, &[(&a, 1)], ""));
    let (_, mut old) = connect_from(None, lb_addr(port)).unwrap();
    assert_eq!(fe_metric(&lb, "keel_lb_frontend_spliced_total"), 1.0);
    // Back to the relay: `splice: user` is kept as written even with KEEL_TEST_SPLICE=kernel.
    lb.rewrite(&config(
        port,
        admin,
        "round_robin",
        SLOW_TCP,
        &[(&a, 1)],
        "    splice: user\n",
    ));
    assert_eq!(lb.reload().0, 200);
    let (_, mut new) = connect_from(None, lb_addr(port)).unwrap();
    for s in [&mut old, &mut new] {
        s.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
    }
    assert_eq!(fe_metric(&lb, "keel_lb_frontend_spliced_total"), 1.0);
    assert_eq!(
        fe_metric(&lb, "keel_lb_frontend_splice_fallbacks_total"),
        0.0
    );
    // The old connection still ends cleanly on the fast path.
    old.shutdown(Shutdown::Write).unwrap();
    let mut rest = String::new();
    old.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "bye\n");
}

#[test]
fn a_drain_waits_for_spliced_connections_to_finish() {
    require_bpf!();
    let a = Backend::start("a");
    let port = free_port();
    let mut lb = Lb::start(&spliced_config(port, free_port(), &[(&a, 1)], ""));
    let (_, mut held) = connect_from(None, lb_addr(port)).unwrap();
    assert_eq!(fe_metric(&lb, "keel_lb_frontend_spliced_total"), 1.0);
    lb.signal(libc::SIGTERM);
    assert!(wait_until(T, || TcpStream::connect_timeout(
        &lb_addr(port),
        T
    )
    .is_err()));
    held.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    held.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    assert!(
        lb.child_alive(),
        "exited before the spliced connection finished"
    );
    held.shutdown(Shutdown::Write).unwrap();
    let mut rest = String::new();
    held.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "bye\n");
    let mut status = None;
    assert!(wait_until(T, || {
        status = lb.child.try_wait().unwrap();
        status.is_some()
    }));
    assert!(status.unwrap().success(), "{status:?}");
    assert!(lb.log().contains("drained; exiting"), "{}", lb.log());
}

#[test]
fn without_bpf_privileges_splice_kernel_relays_logs_once_and_counts() {
    require_bpf!();
    if !keel_e2e::have("setpriv") {
        keel_e2e::skip!("setpriv (util-linux) not installed");
    }
    let a = Backend::start("a");
    let port = free_port();
    // Root without CAP_BPF and CAP_SYS_ADMIN: the kernel refuses BPF maps.
    let mut lb = Lb::start_cmd(
        &spliced_config(port, free_port(), &[(&a, 1)], ""),
        None,
        &[],
        &["setpriv", "--bounding-set", "-bpf,-sys_admin", "--"],
    );
    lb.fallback_expected = true;
    for _ in 0..3 {
        let (_, mut s) = connect_from(None, lb_addr(port)).unwrap();
        s.write_all(b"x").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = String::new();
        s.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "xbye\n");
    }
    assert_eq!(
        fe_metric(&lb, "keel_lb_frontend_splice_fallbacks_total"),
        3.0
    );
    assert_eq!(fe_metric(&lb, "keel_lb_frontend_spliced_total"), 0.0);
    let log = lb.log();
    assert_eq!(
        log.matches("kernel splicing unavailable").count(),
        1,
        "{log}"
    );
}

#[test]
fn a_spliced_connection_whose_client_vanished_ends_without_waiting_for_the_idle_timeout() {
    require_bpf!();
    let a = Backend::start("a");
    let port = free_port();
    let lb = Lb::start(&spliced_config(port, free_port(), &[(&a, 1)], ""));
    for _ in 0..3 {
        let s = TcpStream::connect_timeout(&lb_addr(port), T).unwrap();
        // The backend's name arrives unread; our FIN makes it answer "bye", and closing with
        // unread data resets: what keel-lb still holds for this client can never be delivered.
        std::thread::sleep(Duration::from_millis(100));
        s.shutdown(Shutdown::Write).unwrap();
        drop(s);
    }
    assert!(
        wait_until(T, || fe_metric(&lb, "keel_lb_frontend_connections") == 0.0),
        "{}",
        lb.metrics()
    );
    assert_eq!(fe_metric(&lb, "keel_lb_frontend_spliced_total"), 3.0);
}
