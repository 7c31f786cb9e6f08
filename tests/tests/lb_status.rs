//! keel-lb's status page, `/v1/status` (JSON and CSV), `keel-lb status` and runtime backend
//! control (`keel-lb backend ...`, the state file), end to end: the real binary on loopback, and in
//! a network namespace with a VRRP router, read by Debian's headless chromium.

mod vrrp_lab;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_e2e::netns::wait_until;
use keel_e2e::{free_port, require_root};
use serde_json::Value;

const T: Duration = Duration::from_secs(10);
const TOKEN: &str = "s3cret-token";

/// A backend that accepts and closes; `stop` closes its listener (connections are then refused).
struct Backend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    fn start() -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.write_all(b"ok\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Backend {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `(status, body)` of one HTTP/1.0 request.
fn http(addr: SocketAddr, method: &str, path: &str, auth: bool, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, T).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let auth = if auth {
        format!("Authorization: Bearer {TOKEN}\r\n")
    } else {
        String::new()
    };
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (code, body.to_string())
}

fn status(addr: SocketAddr) -> Value {
    let (code, body) = http(addr, "GET", "/v1/status", false, "");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn backend<'a>(s: &'a Value, pool: &str, addr: &str) -> &'a Value {
    s["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pool)
        .and_then(|p| {
            p["backends"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["address"] == addr)
        })
        .unwrap_or_else(|| panic!("no {pool}/{addr} in {s}"))
}

struct Lb {
    child: Child,
    dir: PathBuf,
    cfg: PathBuf,
}

impl Lb {
    fn start(dir: &Path, yaml: &str, admin: SocketAddr) -> Lb {
        let cfg = dir.join("lb.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("lb.log"))
            .unwrap();
        let child = Command::new(keel_e2e::bin("keel-lb"))
            .args(["run", "--workers", "2", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let lb = Lb {
            child,
            dir: dir.to_path_buf(),
            cfg,
        };
        assert!(
            wait_until(T, || TcpStream::connect(admin).is_ok()),
            "keel-lb did not come up:\n{}",
            lb.log()
        );
        lb
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("lb.log")).unwrap_or_default()
    }

    fn rewrite(&self, yaml: &str) {
        let tmp = self.dir.join("lb.yaml.new");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(tmp, &self.cfg).unwrap();
    }

    fn cli(&self, args: &[&str]) -> (bool, String) {
        let o = Command::new(keel_e2e::bin("keel-lb"))
            .args(args)
            .arg("--config")
            .arg(&self.cfg)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), text)
    }

    fn stop(&mut self) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- keel-lb log ----\n{}", self.log());
        }
    }
}

fn loopback_config(
    dir: &Path,
    port: u16,
    admin: SocketAddr,
    metrics: SocketAddr,
    a: SocketAddr,
    b: SocketAddr,
    a_weight: u32,
) -> String {
    format!(
        "admin:\n  listen: {admin}\n  token_file: {tok}\n  state_file: {state}\nmetrics:\n  listen: {metrics}\nshutdown:\n  drain: 1s\nfrontends:\n  - name: web\n    listen: 127.0.0.1:{port}\n    pool: p\n    max_connections: 500\npools:\n  p:\n    health:\n      type: tcp\n      interval: 100ms\n      timeout: 100ms\n      rise: 1\n      fall: 2\n    backends:\n      - address: {a}\n        weight: {a_weight}\n      - address: {b}\n",
        tok = dir.join("token").display(),
        state = dir.join("state/backend-state.json").display(),
    )
}

/// JSON and CSV on both listeners without a token; control only on the admin listener, only with
/// the token, with 404s that name the unknown pool or backend and a 400 that names the range; a
/// drain kept across a reload and a restart (the state file) until the file changes that backend;
/// `keel-lb status` and `keel-lb backend` from the command line.
#[test]
fn status_endpoints_and_runtime_backend_control() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let (a, mut b) = (Backend::start(), Backend::start());
    let (aa, ba) = (a.addr.to_string(), b.addr.to_string());
    let port = free_port();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (a_addr, b_addr) = (a.addr, b.addr);
    let yaml = |w: u32| loopback_config(dir.path(), port, admin, metrics, a_addr, b_addr, w);
    let mut lb = Lb::start(dir.path(), &yaml(1), admin);

    // JSON on both listeners, no token needed.
    assert!(wait_until(T, || backend(&status(metrics), "p", &aa)
        ["lastCheck"]["ok"]
        == true));
    let s = status(admin);
    assert_eq!(s["config"]["generation"], 1, "{s}");
    assert!(s["config"]["lastReload"].is_null());
    assert!(s["vrrp"].is_null());
    assert!(s.get("services").is_none());
    let fe = &s["frontends"][0];
    assert_eq!(fe["name"], "web");
    assert_eq!(fe["listen"], format!("127.0.0.1:{port}"));
    assert_eq!(fe["protocol"], "tcp");
    assert_eq!(fe["limit"], 500);
    for key in ["current", "total", "rate", "bytesIn", "bytesOut"] {
        assert!(fe[key].is_number(), "{key} in {fe}");
    }
    let be = backend(&s, "p", &aa);
    assert_eq!(be["state"], "UP");
    assert_eq!(be["admin"], "ready");
    assert_eq!(be["overridden"], false);
    for key in [
        "weight",
        "checks",
        "failedChecks",
        "downs",
        "downtimeSeconds",
        "current",
        "total",
        "bytesIn",
        "bytesOut",
        "connectErrors",
    ] {
        assert!(be[key].is_number(), "{key} in {be}");
    }
    // One connection through: counted on the frontend and the backend.
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = c.read(&mut [0u8; 8]);
    drop(c);
    assert!(wait_until(T, || status(admin)["frontends"][0]["total"] == 1));

    // CSV: a header and one row per backend.
    let (code, csv) = http(metrics, "GET", "/v1/status.csv", false, "");
    assert_eq!(code, 200);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "pool,backend,status,admin,weight,healthy,last_check,last_check_reason,check_age_s,checks,failed_checks,downs,downtime_s,last_change_age_s,current,total,bytes_in,bytes_out,connect_errors");
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        lines[1].starts_with(&format!("p,{aa},UP,ready,1,1,ok,")),
        "{csv}"
    );

    // A backend that stops answering: DOWN with the check's reason, counted, an event.
    b.kill();
    assert!(wait_until(T, || backend(&status(admin), "p", &ba)["state"] == "DOWN"));
    let s = status(admin);
    let down = backend(&s, "p", &ba);
    assert_eq!(down["downs"], 1);
    assert_eq!(down["lastCheck"]["ok"], false);
    assert!(
        down["lastCheck"]["reason"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{down}"
    );
    assert!(down["lastChange"].is_number());
    assert!(
        s["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "backend"
                && e["subject"] == format!("p/{ba}")
                && e["message"].as_str().unwrap().starts_with("DOWN")),
        "{}",
        s["events"]
    );

    // Control: token, listener, names, ranges.
    let path = format!("/v1/backends/p/{aa}");
    assert_eq!(http(admin, "POST", &path, false, "state=drain").0, 401);
    assert_eq!(http(metrics, "POST", &path, true, "state=drain").0, 404);
    let (code, body) = http(
        admin,
        "POST",
        &format!("/v1/backends/nope/{aa}"),
        true,
        "state=drain",
    );
    assert_eq!(code, 404);
    assert!(body.contains("\"nope\""), "{body}");
    let (code, body) = http(
        admin,
        "POST",
        "/v1/backends/p/127.0.0.1:1",
        true,
        "state=drain",
    );
    assert_eq!(code, 404);
    assert!(body.contains("127.0.0.1:1"), "{body}");
    let (code, body) = http(admin, "POST", &path, true, "weight=0");
    assert_eq!(code, 400);
    assert!(body.contains("1-256"), "{body}");
    assert_eq!(http(admin, "POST", &path, true, "state=sleepy").0, 400);
    assert_eq!(http(admin, "GET", &path, false, "").0, 405);

    // Drain from the CLI: DRAIN, marked as a runtime change, written to the state file.
    let (ok, out) = lb.cli(&["backend", "drain", "p", &aa]);
    assert!(ok, "{out}");
    assert!(out.contains("drain"), "{out}");
    let s = status(admin);
    assert_eq!(backend(&s, "p", &aa)["state"], "DRAIN");
    assert_eq!(backend(&s, "p", &aa)["overridden"], true);
    let state_file = dir.path().join("state/backend-state.json");
    let kept = std::fs::read_to_string(&state_file).unwrap();
    assert!(kept.contains(&aa) && kept.contains("\"drain\""), "{kept}");
    // The CLI's tables.
    let (ok, out) = lb.cli(&["status"]);
    assert!(ok, "{out}");
    for needle in [
        "FRONTENDS",
        "BACKENDS",
        "RECENT EVENTS",
        &aa,
        "DRAIN*",
        "DOWN",
    ] {
        assert!(out.contains(needle), "{needle} missing:\n{out}");
    }
    let (ok, out) = lb.cli(&["status", "--json"]);
    assert!(ok, "{out}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["frontends"][0]["name"],
        "web"
    );
    let (ok, out) = lb.cli(&["backend", "weight", "p", &aa, "999"]);
    assert!(!ok && out.contains("1-256"), "{out}");

    // A reload of the same file keeps the drain.
    let (ok, out) = lb.cli(&["reload"]);
    assert!(ok, "{out}");
    let s = status(admin);
    assert_eq!(s["config"]["generation"], 2);
    assert_eq!(s["config"]["lastReload"]["ok"], true);
    assert_eq!(backend(&s, "p", &aa)["state"], "DRAIN");

    // A restart keeps it too (read from the state file at start).
    lb.stop();
    let mut lb = Lb::start(dir.path(), &yaml(1), admin);
    assert_eq!(
        backend(&status(admin), "p", &aa)["state"],
        "DRAIN",
        "{}",
        lb.log()
    );
    assert!(lb
        .log()
        .contains("runtime backend changes kept from the last run"));

    // The file changes that backend's weight: the file wins, the drain is dropped everywhere.
    lb.rewrite(&yaml(3));
    let (ok, out) = lb.cli(&["reload"]);
    assert!(ok, "{out}");
    let s = status(admin);
    let be = backend(&s, "p", &aa);
    assert_eq!(
        (be["state"].as_str(), be["weight"].as_u64()),
        (Some("UP"), Some(3)),
        "{be}"
    );
    assert_eq!(be["overridden"], false);
    assert!(!std::fs::read_to_string(&state_file).unwrap().contains(&aa));
    assert!(
        s["events"].as_array().unwrap().iter().any(|e| e["message"]
            .as_str()
            .unwrap()
            .contains("runtime change dropped")),
        "{}",
        s["events"]
    );

    // Maintenance and back: a change back to the file's state removes the entry.
    let (ok, out) = lb.cli(&["backend", "maint", "p", &aa]);
    assert!(ok, "{out}");
    assert_eq!(backend(&status(admin), "p", &aa)["state"], "MAINT");
    let (ok, out) = lb.cli(&["backend", "ready", "p", &aa]);
    assert!(ok && out.contains("as the config file says"), "{out}");
    assert_eq!(backend(&status(admin), "p", &aa)["overridden"], false);
    lb.stop();
}

// ----------------------------------------------------------------------------------------------
// In a real browser.

/// Runs chromium in `host` and returns the DOM after the page's scripts ran for `budget_ms` of
/// virtual time.
fn dump_dom(lab: &vrrp_lab::Lab, host: &str, url: &str, profile: &Path) -> String {
    let o = lab.t.exec(
        host,
        &[
            "timeout",
            "60",
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            &format!("--user-data-dir={}", profile.display()),
            "--virtual-time-budget=3000",
            "--dump-dom",
            url,
        ],
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn row<'a>(dom: &'a str, attr: &str) -> Option<&'a str> {
    let at = dom.find(attr)?;
    let start = dom[..at].rfind("<tr")?;
    let end = at + dom[at..].find("</tr>")?;
    Some(&dom[start..end])
}

/// Serves a fixed page at `/` and keel-lb's live `/v1/status` (fetched per request) from the same
/// origin: what the browser shows beyond the fixed page can only come from the page's script.
fn stale_page_server(page: String, live: SocketAddr) -> impl FnOnce() -> SocketAddr + Send {
    move || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            // Bounded: the test makes a few page loads, each a handful of requests.
            for c in l.incoming().take(64) {
                let Ok(mut c) = c else { continue };
                let _ = c.set_read_timeout(Some(T));
                let mut buf = [0u8; 4096];
                let n = c.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let (ctype, body) = if req.starts_with("GET /v1/status ") {
                    (
                        "application/json",
                        http(live, "GET", "/v1/status", false, "").1,
                    )
                } else if req.starts_with("GET / ") {
                    ("text/html", page.clone())
                } else {
                    ("text/plain", String::new())
                };
                let _ = write!(
                    c,
                    "HTTP/1.0 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        addr
    }
}

/// Debian's headless chromium reads the page of a keel-lb in a network namespace with a VRRP
/// router: every frontend, backend and router is on it; a backend whose listener stops turns DOWN
/// through the page's own refresh; a drain from the CLI shows DRAIN and survives a restart. A
/// screenshot is kept in target/test-artifacts/lb_status_page/.
#[test]
fn the_status_page_in_headless_chromium() {
    require_root!();
    if !keel_e2e::have("chromium") {
        keel_e2e::skip!("chromium is not installed");
    }
    let lab = vrrp_lab::Lab::new("lb-page", &["lb1"]);
    let artifacts = keel_e2e::artifact_dir("lb_status_page");
    // Two more backends next to the lab's (127.0.0.1:9000).
    let mut extra: Vec<_> = [9001, 9002]
        .iter()
        .map(|p| {
            lab.t.spawn(
                "lb1",
                "socat",
                &[
                    &format!("TCP-LISTEN:{p},bind=127.0.0.1,fork,reuseaddr"),
                    "SYSTEM:echo ok",
                ],
            )
        })
        .collect();
    let state = lab.path("state.json");
    let yaml = format!(
        "admin:\n  listen: 127.0.0.1:9100\n  state_file: {}\nshutdown:\n  drain: 1s\n  handover_timeout: 1s\nfrontends:\n  - name: web\n    listen: \"{vip}:8080\"\n    pool: web\n  - name: api\n    listen: \"198.18.1.11:6443\"\n    pool: api\npools:\n  web:\n    health:\n      type: tcp\n      interval: 200ms\n      timeout: 200ms\n      rise: 1\n      fall: 2\n    backends:\n      - address: 127.0.0.1:9000\n      - address: 127.0.0.1:9001\n      - address: 127.0.0.1:9002\n  api:\n    balance: least_conn\n    backends:\n      - address: 127.0.0.1:9000\nvrrp:\n{}",
        state.display(),
        vrrp_lab::routers(&[vrrp_lab::router("web-vip", 51, 200, "198.18.1.100/24", "")]),
        vip = vrrp_lab::VIP4,
    );
    let cfg = lab.path("lb1.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    let start = || {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(lab.path("lb1.log"))
            .unwrap();
        let child = lab
            .t
            .command("lb1", keel_e2e::bin("keel-lb").to_str().unwrap())
            .args(["run", "-c", cfg.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        keel_e2e::netns::Proc::from_child(child, "keel-lb in lb1".into())
    };
    let mut lb = start();
    assert!(
        lab.wait_owner(vrrp_lab::VIP4, "lb1", &["lb1"], Duration::from_secs(10)),
        "{}",
        lab.log("lb1")
    );
    let profile = lab.path("chromium");
    let url = "http://127.0.0.1:9100/";
    let mut dom = String::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            dom = dump_dom(&lab, "lb1", url, &profile);
            dom.contains("data-router=\"web-vip\"")
                && dom.contains(">live<")
                && row(&dom, "data-router=\"web-vip\"").is_some_and(|r| r.contains("st-MASTER"))
        }),
        "page never showed the master router after its script ran:\n{dom}\n{}",
        lab.log("lb1")
    );
    std::fs::write(artifacts.join("first.html"), &dom).unwrap();
    for needle in [
        "data-frontend=\"web\"",
        "data-frontend=\"api\"",
        "data-pool-head=\"web\"",
        "data-pool-head=\"api\"",
        "data-pool=\"web\" data-backend=\"127.0.0.1:9000\"",
        "data-pool=\"web\" data-backend=\"127.0.0.1:9001\"",
        "data-pool=\"web\" data-backend=\"127.0.0.1:9002\"",
        "data-pool=\"api\" data-backend=\"127.0.0.1:9000\"",
        "198.18.1.100/24",
    ] {
        assert!(
            dom.contains(needle),
            "{needle} missing from the page:\n{dom}"
        );
    }
    let b2 = "data-pool=\"web\" data-backend=\"127.0.0.1:9002\"";
    assert!(row(&dom, b2).unwrap().contains("st-UP"), "{dom}");

    // The page as the server rendered it now (9002 UP), served as is; then 9002 stops. Only the
    // page's refresh from /v1/status can turn it DOWN in the browser.
    let live: SocketAddr = "127.0.0.1:9100".parse().unwrap();
    let stale = lab
        .t
        .thread_in("lb1", move || http(live, "GET", "/", false, "").1)
        .join()
        .unwrap();
    assert!(row(&stale, b2).unwrap().contains("st-UP"));
    let stale_addr = lab
        .t
        .thread_in("lb1", stale_page_server(stale, live))
        .join()
        .unwrap();
    extra[1].kill();
    let down_in_json = || {
        let s: Value = serde_json::from_str(
            &lab.t
                .thread_in("lb1", move || http(live, "GET", "/v1/status", false, "").1)
                .join()
                .unwrap(),
        )
        .unwrap();
        backend(&s, "web", "127.0.0.1:9002")["state"] == "DOWN"
    };
    assert!(wait_until(T, down_in_json), "{}", lab.log("lb1"));
    // One refresh: the script fetches at load, then every 2 s (virtual time budget 3 s).
    let dom = dump_dom(&lab, "lb1", &format!("http://{stale_addr}/"), &profile);
    let r = row(&dom, b2).unwrap_or_default();
    assert!(r.contains("st-DOWN") && dom.contains(">live<"), "{dom}");
    assert!(r.contains("fail"), "the reason column: {r}");

    // A drain from the CLI shows DRAIN.
    let cli = |args: &[&str]| {
        let mut full = vec![keel_e2e::bin("keel-lb").to_str().unwrap().to_string()];
        full.extend(args.iter().map(|a| a.to_string()));
        full.extend(["--config".to_string(), cfg.to_str().unwrap().to_string()]);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let o = lab.t.exec("lb1", &refs);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    cli(&["backend", "drain", "web", "127.0.0.1:9001"]);
    let b1 = "data-pool=\"web\" data-backend=\"127.0.0.1:9001\"";
    let dom = dump_dom(&lab, "lb1", url, &profile);
    assert!(row(&dom, b1).unwrap().contains("st-DRAIN"), "{dom}");

    // A restart keeps the drain (the state file).
    lb.signal(libc::SIGTERM);
    assert!(lb.wait_timeout(Duration::from_secs(15)).is_some());
    let _lb = start();
    let mut dom = String::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            dom = dump_dom(&lab, "lb1", url, &profile);
            dom.contains(">live<")
        }),
        "{dom}"
    );
    assert!(row(&dom, b1).unwrap().contains("st-DRAIN"), "{dom}");
    let table = cli(&["status"]);
    assert!(
        table.contains("web-vip") && table.contains("DRAIN*"),
        "{table}"
    );

    // A reload that fails quotes the file: markup in it shows as text, in the server's rendering
    // and in the script's (no element of it appears in the DOM).
    std::fs::write(&cfg, format!("{yaml}\n\"<b id=injected>x</b>\": 1\n")).unwrap();
    // Straight to the API: `keel-lb reload` would refuse to send a file that does not validate.
    let (code, body) = lab
        .t
        .thread_in("lb1", move || http(live, "POST", "/reload", false, ""))
        .join()
        .unwrap();
    assert_eq!(code, 422, "{body}");
    let raw = lab
        .t
        .thread_in("lb1", move || http(live, "GET", "/", false, "").1)
        .join()
        .unwrap();
    assert!(raw.contains("&lt;b id=injected&gt;x&lt;/b&gt;"), "{raw}");
    assert!(!raw.contains("<b id=injected>"));
    let dom = dump_dom(&lab, "lb1", url, &profile);
    assert!(dom.contains(">live<") && dom.contains("FAILED"), "{dom}");
    assert!(dom.contains("&lt;b id=injected&gt;x&lt;/b&gt;"), "{dom}");
    assert!(
        !dom.contains("id=\"injected\"") && !dom.contains("<b id=injected>"),
        "{dom}"
    );
    std::fs::write(&cfg, &yaml).unwrap();
    cli(&["reload"]);

    // For a person to look at: laptop and phone widths.
    for (name, size) in [("laptop.png", "1366,900"), ("phone.png", "412,915")] {
        let shot = artifacts.join(name);
        let o = lab.t.exec(
            "lb1",
            &[
                "timeout",
                "60",
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                &format!("--user-data-dir={}", profile.display()),
                "--virtual-time-budget=3000",
                &format!("--window-size={size}"),
                &format!("--screenshot={}", shot.display()),
                url,
            ],
        );
        assert!(
            shot.exists(),
            "no screenshot: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
