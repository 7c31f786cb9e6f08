//! Shared by the `vrrp_*` end-to-end tests: a bridge with LB hosts and a client, a trivial backend
//! on each LB host, keel-lb (or keepalived) started with a generated config, and a client probe
//! that connects to the VIP every few milliseconds.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_e2e::netns::{wait_until, Proc, Topology};

pub const VIP4: &str = "198.18.1.100";
pub const VIP6: &str = "2001:db8:1::100";
pub const PORT: u16 = 8080;

pub struct Lab {
    pub t: Topology,
    pub dir: tempfile::TempDir,
    backends: Vec<Proc>,
}

/// Addresses of the hosts: lb1 .11, lb2 .12, lb3 .13, client .50 (VIPs are .100).
pub fn host_addrs(host: &str) -> [String; 2] {
    let n = match host {
        "lb1" => 11,
        "lb2" => 12,
        "lb3" => 13,
        "backend" => 60,
        _ => 50,
    };
    [format!("198.18.1.{n}/24"), format!("2001:db8:1::{n}/64")]
}

impl Lab {
    pub fn new(name: &str, lbs: &[&str]) -> Lab {
        Lab::with_backend(name, lbs, "echo ok")
    }

    /// As `new`, with `service` (a shell command run per connection by socat) as each LB host's
    /// backend on 127.0.0.1:9000.
    pub fn with_backend(name: &str, lbs: &[&str], service: &str) -> Lab {
        let mut t = Topology::new(name);
        t.bridge();
        for h in lbs.iter().chain(["client"].iter()) {
            let a = host_addrs(h);
            t.host(h, &[&a[0], &a[1]]);
        }
        let mut backends = Vec::new();
        let system = format!("SYSTEM:{service}");
        for h in lbs {
            // The "service" (by default answers `ok` and closes); one per LB host, on loopback.
            backends.push(t.spawn(
                h,
                "socat",
                &["TCP-LISTEN:9000,bind=127.0.0.1,fork,reuseaddr", &system],
            ));
        }
        Lab {
            t,
            dir: tempfile::tempdir().unwrap(),
            backends,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts keel-lb in `host` with a frontend on each VIP and this `vrrp:` section (YAML,
    /// indented as a top-level key's body).
    pub fn keel(&self, host: &str, vrrp: &str, vips: &[&str]) -> Proc {
        self.keel_to(host, vrrp, vips, "127.0.0.1:9000")
    }

    /// As `keel`, proxying to `backend` (`ip:port`).
    pub fn keel_to(&self, host: &str, vrrp: &str, vips: &[&str], backend: &str) -> Proc {
        let cfg = self.write_keel_config(host, vrrp, vips, backend);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("{host}.log")))
            .unwrap();
        let bin = keel_e2e::bin("keel-lb");
        let child = self
            .t
            .command(host, bin.to_str().unwrap())
            .args(["run", "-c", cfg.to_str().unwrap()])
            .env("RUST_LOG", "info,keel_vrrp=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc::from_child(child, format!("keel-lb in {host}"))
    }

    /// Writes (or rewrites, for a reload) the config file of keel-lb in `host`.
    pub fn write_keel_config(
        &self,
        host: &str,
        vrrp: &str,
        vips: &[&str],
        backend: &str,
    ) -> PathBuf {
        let mut frontends = String::new();
        for (i, v) in vips.iter().enumerate() {
            let listen = if v.contains(':') {
                format!("\"[{v}]:{PORT}\"")
            } else {
                format!("\"{v}:{PORT}\"")
            };
            frontends.push_str(&format!(
                "  - name: f{i}\n    listen: {listen}\n    pool: web\n"
            ));
        }
        let yaml = format!(
            "admin:\n  listen: 127.0.0.1:9100\nshutdown:\n  drain: 1s\n  handover_timeout: 3s\nfrontends:\n{frontends}pools:\n  web:\n    health:\n      type: tcp\n      interval: 200ms\n      timeout: 200ms\n      rise: 1\n      fall: 2\n    backends:\n      - address: {backend}\nvrrp:\n{vrrp}"
        );
        let cfg = self.path(&format!("{host}.yaml"));
        // Write then rename, so a reload never reads half a file.
        let tmp = self.path(&format!("{host}.yaml.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &cfg).unwrap();
        cfg
    }

    pub fn log(&self, host: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{host}.log"))).unwrap_or_default()
    }

    pub fn has_vip(&self, host: &str, vip: &str) -> bool {
        self.has_vip_on(host, "eth0", vip)
    }

    pub fn has_vip_on(&self, host: &str, dev: &str, vip: &str) -> bool {
        let out = self.t.exec(host, &["ip", "-o", "addr", "show", "dev", dev]);
        String::from_utf8_lossy(&out.stdout).contains(&format!(" {vip}/"))
    }

    /// Waits until exactly `host` among `all` holds `vip`.
    pub fn wait_owner(&self, vip: &str, host: &str, all: &[&str], limit: Duration) -> bool {
        wait_until(limit, || {
            all.iter().all(|h| self.has_vip(h, vip) == (*h == host))
        })
    }

    pub fn metrics(&self, host: &str) -> String {
        let out = self.t.exec(
            host,
            &[
                "curl",
                "-s",
                "--max-time",
                "2",
                "http://127.0.0.1:9100/metrics",
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sum of a metric's samples whose line contains every one of `needles`.
    pub fn metric_sum(&self, host: &str, name: &str, needles: &[&str]) -> f64 {
        self.metrics(host)
            .lines()
            .filter(|l| l.starts_with(name) && needles.iter().all(|n| l.contains(n)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The MAC the client's neighbour table has for `ip` (None when absent or incomplete).
    pub fn client_neigh(&self, ip: &str) -> Option<String> {
        let out = self.t.exec("client", &["ip", "neigh", "show", ip]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut words = text.split_whitespace();
        while let Some(w) = words.next() {
            if w == "lladdr" {
                return words.next().map(str::to_string);
            }
        }
        None
    }

    /// One request from the client: connect, read `ok`.
    pub fn request(&self, addr: SocketAddr) -> bool {
        self.t
            .thread_in("client", move || {
                one_request(addr, Duration::from_millis(500))
            })
            .join()
            .unwrap_or(false)
    }

    /// One `attempt(addr)` from the client host.
    pub fn request_with(&self, addr: SocketAddr, attempt: fn(SocketAddr) -> bool) -> bool {
        self.t
            .thread_in("client", move || attempt(addr))
            .join()
            .unwrap_or(false)
    }

    /// Connects to `addr` from the client every `every` until stopped.
    pub fn probe(&self, addr: SocketAddr, every: Duration) -> Probe {
        self.probe_with(addr, every, |a| one_request(a, Duration::from_millis(100)))
    }

    /// As `probe`, each attempt being `attempt(addr)` (true = success).
    pub fn probe_with(
        &self,
        addr: SocketAddr,
        every: Duration,
        attempt: fn(SocketAddr) -> bool,
    ) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = self.t.thread_in("client", move || {
            let start = Instant::now();
            let mut out = Vec::new();
            // Bounded: at most 10 minutes of probing whatever the test does.
            while !s.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(600) {
                let t = start.elapsed();
                let ok = attempt(addr);
                out.push((t, ok));
                let next = t + every;
                let now = start.elapsed();
                if next > now {
                    std::thread::sleep(next - now);
                }
            }
            out
        });
        Probe {
            stop,
            handle: Some(handle),
        }
    }

    /// Starts keepalived in `host` with this config text (global_defs included by the caller).
    pub fn keepalived(&self, host: &str, conf: &str) -> Proc {
        let path = self.path(&format!("{host}-keepalived.conf"));
        std::fs::write(&path, conf).unwrap();
        let d = self.dir.path();
        let pid = |n: &str| {
            d.join(format!("{host}-{n}.pid"))
                .to_string_lossy()
                .into_owned()
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("{host}.log")))
            .unwrap();
        let child = self
            .t
            .command(host, "keepalived")
            .args(["-n", "-l", "-D", "-f", path.to_str().unwrap()])
            .args(["-p", &pid("ka"), "-r", &pid("vrrp"), "-c", &pid("chk")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc::from_child(child, format!("keepalived in {host}"))
    }
}

/// Connect, send one byte, expect the same byte back (the backend echoes it). Generous timeouts:
/// a slow answer is not a lost connection, a reset or a silent connection is.
pub fn echo_request(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"k").is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(1)) && b[0] == b'k'
}

fn one_request(addr: SocketAddr, timeout: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(1000)));
    let mut buf = [0u8; 16];
    let mut got = 0;
    while got < 3 {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    buf.starts_with(b"ok")
}

pub struct Probe {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<(Duration, bool)>>>,
}

#[derive(Debug)]
pub struct ProbeResult {
    pub attempts: usize,
    pub failures: usize,
    /// Longest time from a failed attempt to the next successful one.
    pub longest_outage: Duration,
    /// When each failed attempt started (since the probe started).
    pub failed_at: Vec<Duration>,
}

impl Probe {
    pub fn finish(mut self) -> ProbeResult {
        self.stop.store(true, Ordering::SeqCst);
        let samples = self
            .handle
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let mut longest = Duration::ZERO;
        let mut first_fail: Option<Duration> = None;
        for (t, ok) in &samples {
            match (ok, first_fail) {
                (false, None) => first_fail = Some(*t),
                (true, Some(f)) => {
                    longest = longest.max(*t - f);
                    first_fail = None;
                }
                _ => {}
            }
        }
        if let (Some(f), Some((t, _))) = (first_fail, samples.last()) {
            longest = longest.max(*t - f);
        }
        ProbeResult {
            attempts: samples.len(),
            failures: samples.iter().filter(|(_, ok)| !ok).count(),
            longest_outage: longest,
            failed_at: samples
                .iter()
                .filter(|(_, ok)| !ok)
                .map(|(t, _)| *t)
                .collect(),
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A `vrrp:` section with one IPv4 router on eth0.
pub fn router(name: &str, vrid: u8, priority: u8, vip: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    vrid: {vrid}\n    interface: eth0\n    priority: {priority}\n    advert_interval: 100ms\n    vips: [{vip}]\n{extra}"
    )
}

pub fn routers(list: &[String]) -> String {
    format!("  routers:\n{}", list.concat())
}

pub fn addr(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), PORT)
}

/// A keepalived config with one VRRPv3 instance.
pub fn keepalived_conf(vrid: u8, priority: u8, vip: &str, advert: &str) -> String {
    format!(
        "global_defs {{\n  router_id ka\n  vrrp_version 3\n}}\nvrrp_instance v{vrid} {{\n  state BACKUP\n  interface eth0\n  virtual_router_id {vrid}\n  priority {priority}\n  advert_int {advert}\n  virtual_ipaddress {{\n    {vip}\n  }}\n}}\n"
    )
}

/// A `vrrp:` router speaking VRRPv2 (1s adverts, whole seconds on the wire) with an optional
/// `auth_pass`, on eth0.
pub fn router_v2(name: &str, vrid: u8, priority: u8, vip: &str, auth_pass: Option<&str>) -> String {
    let auth = auth_pass.map_or(String::new(), |p| format!("    auth_pass: \"{p}\"\n"));
    format!(
        "  - name: {name}\n    version: 2\n{auth}    vrid: {vrid}\n    interface: eth0\n    priority: {priority}\n    advert_interval: 1s\n    vips: [{vip}]\n"
    )
}

/// A keepalived config as kubeadm's HA guide writes it (docs/ha-considerations.md): no
/// `vrrp_version` (so VRRPv2, keepalived's default), no `advert_int` (1s), `auth_type PASS`.
pub fn keepalived_conf_v2(
    vrid: u8,
    state: &str,
    priority: u8,
    vip: &str,
    auth_pass: &str,
) -> String {
    format!(
        "global_defs {{\n  router_id LVS_DEVEL\n}}\nvrrp_instance VI_1 {{\n  state {state}\n  interface eth0\n  virtual_router_id {vrid}\n  priority {priority}\n  authentication {{\n    auth_type PASS\n    auth_pass {auth_pass}\n  }}\n  virtual_ipaddress {{\n    {vip}\n  }}\n}}\n"
    )
}

/// `Command` is re-exported for tests that build their own.
pub fn sh(cmd: &str) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", cmd]);
    c
}

impl Lab {
    /// Adds a host (addresses from `host_addrs`) to the bridge.
    pub fn add_host(&mut self, host: &str) {
        let a = host_addrs(host);
        self.t.host(host, &[&a[0], &a[1]]);
    }

    /// Runs nginx in `host` as a plain process (generated config, files in the lab's directory),
    /// answering `ok` on `listen` (`ip:port`); waits until it answers.
    pub fn nginx(&self, host: &str, listen: &str) -> Proc {
        let d = self.dir.path().join(format!("nginx-{host}"));
        std::fs::create_dir_all(&d).unwrap();
        let conf = d.join("nginx.conf");
        let p = d.display();
        std::fs::write(
            &conf,
            format!(
                "user root;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n  keepalive_requests 1000000;\n  server {{\n    listen {listen};\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
            ),
        )
        .unwrap();
        let proc = self.t.spawn(
            host,
            "nginx",
            &[
                "-e",
                &format!("{p}/error.log"),
                "-c",
                conf.to_str().unwrap(),
                "-g",
                "daemon off;",
            ],
        );
        let url = format!("http://{listen}/");
        assert!(
            wait_until(Duration::from_secs(10), || {
                self.t
                    .exec(host, &["curl", "-s", "--max-time", "1", &url])
                    .stdout
                    .starts_with(b"ok")
            }),
            "nginx did not start: {}",
            std::fs::read_to_string(d.join("error.log")).unwrap_or_default()
        );
        proc
    }

    /// Kills the backend of the i-th LB host.
    pub fn stop_backend(&mut self, i: usize) {
        if let Some(p) = self.backends.get_mut(i) {
            p.kill();
        }
    }
}
