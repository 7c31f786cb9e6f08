//! Network-namespace topologies for multi-host tests: one namespace per host, each host's `eth0`
//! plugged into a bridge that lives in a namespace of its own (the root namespace is never touched).
//! Everything is torn down on drop, even when the test panics: processes still running in the
//! namespaces are killed, then the namespaces are deleted (their veths go with them).
//!
//! ```no_run
//! # use keel_e2e::netns::Topology;
//! let mut t = Topology::new("vrrp-elect");
//! t.bridge();
//! t.host("lb1", &["198.18.1.11/24", "2001:db8:1::11/64"]);
//! t.host("client", &["198.18.1.100/24"]);
//! let out = t.sh("client", "ip neigh");
//! ```
//!
//! Only 198.18.0.0/15 and 2001:db8::/32 addresses are used inside; IPv6 DAD is off so addresses
//! are usable at once; the bridge has multicast snooping off so VRRP multicast always floods.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct Topology {
    /// Unique per test and process: `k<pid>-<seq>-`.
    prefix: String,
    bridge_ns: Option<String>,
    hosts: Vec<String>,
}

impl Topology {
    /// `name` is for people reading `ip netns` while a test runs; uniqueness comes from the pid
    /// and a counter.
    pub fn new(name: &str) -> Topology {
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let short: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(20)
            .collect();
        let prefix = format!("k{}-{}-{}-", std::process::id(), seq, short);
        Topology {
            prefix,
            bridge_ns: None,
            hosts: Vec::new(),
        }
    }

    /// The namespace of host `name`.
    pub fn ns(&self, host: &str) -> String {
        format!("{}{}", self.prefix, host)
    }

    /// Creates the bridge (in its own namespace). Call before `host`.
    pub fn bridge(&mut self) -> &mut Self {
        let ns = format!("{}br", self.prefix);
        run(&["ip", "netns", "add", &ns]);
        self.bridge_ns = Some(ns.clone());
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        run(&[
            "ip",
            "-n",
            &ns,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
            "forward_delay",
            "0",
        ]);
        run(&["ip", "-n", &ns, "link", "set", "br0", "up"]);
        self
    }

    /// A host namespace whose `eth0` is plugged into the bridge, with these addresses (CIDR).
    pub fn host(&mut self, name: &str, addrs: &[&str]) -> &mut Self {
        assert!(
            name.len() <= 15,
            "host name {name:?} is the bridge port name: 15 characters at most"
        );
        let br = self
            .bridge_ns
            .clone()
            .expect("call Topology::bridge() before adding hosts");
        let ns = self.ns(name);
        run(&["ip", "netns", "add", &ns]);
        self.hosts.push(ns.clone());
        for (k, v) in [
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
        ] {
            run(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-qw",
                &format!("{k}={v}"),
            ]);
        }
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        run(&[
            "ip", "-n", &br, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ]);
        run(&["ip", "-n", &br, "link", "set", name, "master", "br0"]);
        run(&["ip", "-n", &br, "link", "set", name, "up"]);
        run(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.eth0.accept_dad=0",
        ]);
        for a in addrs {
            let mut args = vec!["ip", "-n", &ns, "addr", "add", a, "dev", "eth0"];
            if a.contains(':') {
                args.push("nodad");
            }
            run(&args);
        }
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        self
    }

    /// Runs a command in a host and returns its output (whatever its exit status).
    pub fn exec(&self, host: &str, args: &[&str]) -> Output {
        let ns = self.ns(host);
        Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {ns} {args:?}: {e}"))
    }

    /// A TCP echo server on `addr` in `host` (a thread per connection, until the client closes)
    /// that stops accepting once `stop` is set.
    pub fn echo_server(
        &self,
        host: &str,
        addr: &'static str,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        use std::io::{Read, Write};
        let echo = self
            .thread_in(host, move || std::net::TcpListener::bind(addr).unwrap())
            .join()
            .unwrap();
        echo.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match echo.accept() {
                    Ok((mut c, _)) => {
                        std::thread::spawn(move || {
                            let _ = c.set_nonblocking(false);
                            let _ = c.set_read_timeout(Some(Duration::from_secs(60)));
                            let mut b = [0u8; 64];
                            while let Ok(n @ 1..) = c.read(&mut b) {
                                if c.write_all(&b[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    }

    /// `GET url` from inside a host (curl, 2 s limit); the body, empty when nothing answered.
    pub fn curl(&self, host: &str, url: &str) -> String {
        let out = self.exec(host, &["curl", "-s", "--max-time", "2", url]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a shell snippet in a host; panics unless it succeeds; returns stdout.
    pub fn sh(&self, host: &str, script: &str) -> String {
        let out = self.exec(host, &["sh", "-c", script]);
        assert!(
            out.status.success(),
            "in {host}: {script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a long-running program in a host; it is killed when the returned guard drops.
    pub fn spawn(&self, host: &str, program: &str, args: &[&str]) -> Proc {
        self.spawn_with(host, program, args, &[])
    }

    /// As `spawn`, with /proc/sys read-only for the program (its own mount namespace): what a
    /// systemd unit with `ProtectKernelTunables=yes` sees. The program and its arguments must not
    /// need shell quoting.
    pub fn spawn_with_read_only_proc_sys(&self, host: &str, program: &str, args: &[&str]) -> Proc {
        let script = format!(
            "mount -o bind,ro /proc/sys /proc/sys && exec {program} {}",
            args.join(" ")
        );
        self.spawn(host, "unshare", &["-m", "sh", "-c", &script])
    }

    /// As `spawn`, with extra environment variables.
    pub fn spawn_with(
        &self,
        host: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        let ns = self.ns(host);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns, program])
            .args(args)
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program} in {host}: {e}"));
        Proc {
            child: Some(child),
            name: format!("{program} in {host}"),
        }
    }

    /// A `Command` that runs `program` inside the host (add args, stdio, then spawn and wrap the
    /// child in [`Proc::from_child`]).
    pub fn command(&self, host: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(host), program])
            .stdin(Stdio::null());
        cmd
    }

    /// Cuts a host's cable: its bridge port goes down, so the host sees its link lose carrier.
    pub fn link_down(&self, host: &str) {
        self.bridge_port(host, "down");
    }

    pub fn link_up(&self, host: &str) {
        self.bridge_port(host, "up");
    }

    /// Partitions a host without touching its link: isolated bridge ports cannot talk to each
    /// other, only to non-isolated ones (the client). Isolating two LBs splits them.
    pub fn isolate(&self, host: &str, on: bool) {
        let br = self.bridge_ns.clone().expect("no bridge");
        run(&[
            "ip",
            "netns",
            "exec",
            &br,
            "bridge",
            "link",
            "set",
            "dev",
            host,
            "isolated",
            if on { "on" } else { "off" },
        ]);
    }

    /// Runs `f` on a new thread that has entered the host's network namespace (sockets it opens
    /// live there); the handle joins it.
    pub fn thread_in<T: Send + 'static>(
        &self,
        host: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.ns(host));
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// MAC address of a host's eth0.
    pub fn mac(&self, host: &str) -> String {
        self.sh(host, "cat /sys/class/net/eth0/address")
            .trim()
            .to_string()
    }

    fn bridge_port(&self, host: &str, state: &str) {
        let br = self.bridge_ns.clone().expect("no bridge");
        run(&["ip", "-n", &br, "link", "set", host, state]);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let mut all = self.hosts.clone();
        all.extend(self.bridge_ns.clone());
        for ns in &all {
            // Anything the test started in there and did not stop (kill -9: we are tearing down).
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
        }
        for ns in &all {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A process running in a host; killed (SIGKILL) on drop unless stopped first.
pub struct Proc {
    child: Option<Child>,
    name: String,
}

impl Proc {
    pub fn from_child(child: Child, name: String) -> Proc {
        Proc {
            child: Some(child),
            name,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill has no memory preconditions; the pid is our own child.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// Waits up to `limit` for the process to exit; its status if it did. Looks at least once,
    /// so `Duration::ZERO` tells whether it has exited.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL now (a crash, as far as the program can tell).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `f` every 20 ms until it returns true or `limit` passes; true if it did.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
