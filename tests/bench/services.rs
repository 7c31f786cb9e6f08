//! Services benchmark (not in the default suite): keel-lb as the provider of Services of type
//! LoadBalancer, measured as a black box (its config file, `GET /services`, `/metrics`, /proc) while
//! the cluster grows from one scale to the next. Prints one markdown table; each figure's anchor is
//! the same measurement at the smallest scale of the same run.
//!
//! Build and run (root: network namespaces):
//!
//! ```text
//! cargo build --release -p keel-lb -p keel-test-apiserver -p keel-e2e --example services_bench
//! target/release/examples/services_bench --scales 10,100,1000 --reps 5
//! ```
//!
//! Flags: --scales N,N,.. (10,100,1000) Services × 3 TCP ports each, grown in this order on one
//! cluster; --reps R (5); --timeout D (20m, the whole run); --settle-timeout D (600s, one scale's
//! Services all getting an ingress); --nodes K (100); --health kube_proxy|node_port (kube_proxy:
//! how keel-lb checks nodes for externalTrafficPolicy Cluster); --health-interval D (2s);
//! --health-timeout D (1s); --rust-log FILTER (info, keel-lb's RUST_LOG); --lb-bin PATH and
//! --apiserver-bin PATH (default: keel-lb and keel-test-apiserver beside target/release/examples).
//!
//! Topology (namespaces on one bridge, unique per run, deleted on exit, panic or Ctrl-C): `api`
//! (keel-test-apiserver, 198.18.0.5), `lb` (keel-lb, 198.18.0.11, one VRRP router so it is master
//! and holds the Service addresses), `client` (198.18.0.50: kubectl, probes, admin API reads) and
//! `nodes`: ONE namespace with the K node addresses 198.18.3.1.. on one interface, served by this
//! process: kube-proxy's healthz on 0.0.0.0:10256 (200, requests counted), the Local Service's
//! healthCheckNodePort (200) and every nodePort the Services use (answers the node address it was
//! reached on). K Node objects (InternalIP = those addresses) come from one `kubectl create -f` of a
//! v1 List. Service addresses: bulk Services take one each from the auto-assigned pool
//! 198.18.8.0/21; the probed Services ask for theirs (`spec.loadBalancerIP`) from 198.18.16.0/24.
//!
//! Per scale N, once every bulk Service has an ingress (API polled every 1 s): idle keel-lb CPU
//! and RSS over 10 s (and the health-check requests the nodes receive); the newest bulk Service
//! must answer on its address; then R times: create one more 3-port Service and time create
//! (kubectl returned, or earlier when a `kubectl get --watch-only` started before saw the
//! Service: kubectl's exit lags the API's answer) → first TCP connect + answer from `client` to
//! ingressIP:80 (a new attempt every 10 ms) and → its ingress in that watch; keel-lb's CPU from
//! the create to that settle
//! (ingress set and answering) + 1 s, at least two health-check intervals, minus its idle rate
//! over an equal window just before, and its RSS delta; the Service is deleted again. Then R
//! times: the externalTrafficPolicy Local Service's EndpointSlice is replaced so its ready
//! endpoints move to another node set, timed from `kubectl replace` (or its watch event, as for
//! the create) to `GET /services` showing that set (polled every 5 ms after each answer). Last,
//! the sizes of `GET /services` and `GET /metrics` (not read when it would exceed 128 MiB).
//! keel-lb's log stays in the run directory printed first; a failure names what did not happen
//! and prints the log's tail.

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("services_bench builds network namespaces and reads /proc: run it on Linux as root");
}

#[cfg(target_os = "linux")]
fn main() {
    let code = imp::main();
    std::process::exit(code);
}

#[cfg(target_os = "linux")]
mod imp {
    use std::collections::BTreeSet;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::path::{Path, PathBuf};
    use std::process::Stdio;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use keel_e2e::netns::{Proc, Topology};
    use serde::Deserialize;
    use serde_json::{json, Value};

    type R<T> = Result<T, String>;

    const NS: &str = "bench";
    const API_IP: &str = "198.18.0.5";
    const LB_IP: &str = "198.18.0.11";
    const CLIENT_IP: &str = "198.18.0.50";
    const VRRP_VIP: &str = "198.18.0.99";
    const ADMIN_PORT: u16 = 9100;
    const BULK_POOL: &str = "198.18.8.0/21";
    const PROBE_POOL: &str = "198.18.16.0/24";
    /// The Local Service's address (probe pool, asked for).
    const LOCAL_IP: &str = "198.18.16.250";
    /// Service ports: every Service has these three TCP ports.
    const PORTS: [u16; 3] = [80, 443, 8080];
    /// nodePorts: bulk Service i has NODE_PORT_BASE + 3i ..= +2; the probed Services share
    /// PROBE_NODE_PORTS (one exists at a time); the Local Service has LOCAL_NODE_PORT and its
    /// healthCheckNodePort LOCAL_HC_PORT. The API server's range is widened to hold them all.
    const NODE_PORT_BASE: u16 = 30000;
    const NODE_PORT_RANGE: &str = "30000-39999";
    const PROBE_NODE_PORTS: [u16; 3] = [39900, 39901, 39902];
    const LOCAL_NODE_PORT: u16 = 39910;
    const LOCAL_HC_PORT: u16 = 39911;
    const KUBE_PROXY_HEALTHZ: u16 = 10256;
    const MAX_BULK: usize = 3000;
    const IDLE_WINDOW: Duration = Duration::from_secs(10);
    /// `/metrics` is not read at a scale where it would be larger than this (extrapolated from the
    /// last scale's size per backend): keel-lb would build it all in memory.
    const METRICS_CAP: f64 = 128.0 * 1048576.0;

    static STOP: AtomicBool = AtomicBool::new(false);
    /// keel-lb's RLIMIT_NOFILE as it ran (for the report).
    static LB_NOFILE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

    extern "C" fn on_signal(_: libc::c_int) {
        STOP.store(true, Ordering::SeqCst);
    }

    struct Args {
        scales: Vec<usize>,
        reps: usize,
        timeout: Duration,
        settle_timeout: Duration,
        nodes: usize,
        health: String,
        health_interval: Duration,
        health_timeout: Duration,
        rust_log: String,
        lb_bin: PathBuf,
        api_bin: PathBuf,
    }

    const USAGE: &str = "usage: services_bench [--scales 10,100,1000] [--reps 5] [--timeout 20m] \
[--settle-timeout 600s] [--nodes 100] [--health kube_proxy|node_port] [--health-interval 2s] \
[--health-timeout 1s] [--rust-log info] [--lb-bin PATH] [--apiserver-bin PATH]";

    fn parse_duration(s: &str) -> R<Duration> {
        let s = s.trim();
        let (num, unit) = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .map(|i| s.split_at(i))
            .ok_or(format!("{s:?}: a duration needs a unit (ms, s, m, h)"))?;
        let v: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration"))?;
        let secs = match unit {
            "ms" => v / 1000.0,
            "s" => v,
            "m" => v * 60.0,
            "h" => v * 3600.0,
            _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
        };
        if !(secs > 0.0 && secs.is_finite()) {
            return Err(format!("{s:?} must be above 0"));
        }
        Ok(Duration::from_secs_f64(secs))
    }

    fn args() -> R<Args> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        // target/<profile>/examples/services_bench → target/<profile>/<bin>
        let profile = exe
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut a = Args {
            scales: vec![10, 100, 1000],
            reps: 5,
            timeout: Duration::from_secs(20 * 60),
            settle_timeout: Duration::from_secs(600),
            nodes: 100,
            health: "kube_proxy".into(),
            health_interval: Duration::from_secs(2),
            health_timeout: Duration::from_secs(1),
            rust_log: "info".into(),
            lb_bin: profile.join("keel-lb"),
            api_bin: profile.join("keel-test-apiserver"),
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut val = || it.next().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--scales" => {
                    a.scales = val()?
                        .split(',')
                        .map(|s| s.trim().parse::<usize>())
                        .collect::<Result<_, _>>()
                        .map_err(|e| format!("--scales: {e}"))?
                }
                "--reps" => a.reps = val()?.parse().map_err(|e| format!("--reps: {e}"))?,
                "--timeout" => a.timeout = parse_duration(&val()?)?,
                "--settle-timeout" => a.settle_timeout = parse_duration(&val()?)?,
                "--nodes" => a.nodes = val()?.parse().map_err(|e| format!("--nodes: {e}"))?,
                "--health" => a.health = val()?,
                "--health-interval" => a.health_interval = parse_duration(&val()?)?,
                "--health-timeout" => a.health_timeout = parse_duration(&val()?)?,
                "--rust-log" => a.rust_log = val()?,
                "--lb-bin" => a.lb_bin = val()?.into(),
                "--apiserver-bin" => a.api_bin = val()?.into(),
                "-h" | "--help" => return Err(USAGE.into()),
                other => return Err(format!("unknown flag {other}\n{USAGE}")),
            }
        }
        if a.scales.is_empty() || a.scales.windows(2).any(|w| w[0] >= w[1]) {
            return Err("--scales must be increasing, e.g. 10,100,1000 (one cluster grows)".into());
        }
        if a.scales[0] == 0 || *a.scales.last().unwrap_or(&0) > MAX_BULK {
            return Err(format!("--scales: each between 1 and {MAX_BULK}"));
        }
        if a.reps == 0 || a.reps * a.scales.len() > 240 {
            return Err(
                "--reps: at least 1, and reps × scales at most 240 (probe addresses)".into(),
            );
        }
        if !(2..=1000).contains(&a.nodes) {
            return Err("--nodes: 2 to 1000".into());
        }
        if a.health != "kube_proxy" && a.health != "node_port" {
            return Err("--health: kube_proxy or node_port".into());
        }
        for (what, p) in [("--lb-bin", &a.lb_bin), ("--apiserver-bin", &a.api_bin)] {
            if !p.exists() {
                return Err(format!(
                    "{what} {} does not exist: cargo build --release -p keel-lb -p keel-test-apiserver -p keel-e2e --example services_bench",
                    p.display()
                ));
            }
        }
        Ok(a)
    }

    pub fn main() -> i32 {
        let a = match args() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("{e}");
                return 2;
            }
        };
        if !keel_e2e::is_root() {
            eprintln!("services_bench builds network namespaces: run it as root");
            return 2;
        }
        if !keel_e2e::have("kubectl") {
            eprintln!("services_bench drives the cluster with kubectl: none on PATH");
            return 2;
        }
        // SAFETY: installing a handler that only stores to an atomic; rlimit calls on ourselves.
        unsafe {
            let h = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::signal(libc::SIGINT, h);
            libc::signal(libc::SIGTERM, h);
            let mut rl: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
                rl.rlim_cur = rl.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
            }
        }
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("keel-services-bench-{}-{unix}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(dir.join("manifests")) {
            eprintln!("{}: {e}", dir.display());
            return 1;
        }
        println!(
            "run directory (keel-lb log: {}): {}",
            dir.join("keel-lb.log").display(),
            dir.display()
        );
        let started = Instant::now();
        let load_start = loadavg();
        println!(
            "load average at start: {load_start} (other work on this machine shares its CPUs)"
        );
        let mut results: Vec<Scale> = Vec::new();
        // Everything (processes, namespaces) is dropped inside `bench`, before the report.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            bench(&a, &dir, &mut results)
        }));
        let outcome = match outcome {
            Ok(r) => r,
            Err(p) => Err(format!(
                "the harness panicked: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
        };
        report(
            &a,
            &results,
            &dir,
            started.elapsed(),
            (&load_start, &loadavg()),
        );
        let problems: Vec<String> = results
            .iter()
            .flat_map(|s| s.problems.iter().map(move |p| format!("N={}: {p}", s.n)))
            .collect();
        match outcome {
            Ok(()) if problems.is_empty() => 0,
            Ok(()) => {
                println!(
                    "\n**Not everything happened:**\n- {}",
                    problems.join("\n- ")
                );
                println!(
                    "\n--- tail of keel-lb's log ({}) ---\n{}",
                    dir.join("keel-lb.log").display(),
                    tail(&dir.join("keel-lb.log"), 40)
                );
                1
            }
            Err(e) => {
                println!("\n**The run did not complete:** {e}");
                println!(
                    "\n--- tail of keel-lb's log ({}) ---\n{}",
                    dir.join("keel-lb.log").display(),
                    tail(&dir.join("keel-lb.log"), 40)
                );
                1
            }
        }
    }

    /// One scale's figures.
    #[derive(Default)]
    struct Scale {
        n: usize,
        /// Seconds from the first create of this scale's new Services to all having an ingress.
        grow_secs: f64,
        grown: usize,
        idle_cpu_pct: f64,
        idle_rss_kib: u64,
        threads: u64,
        fds: u64,
        health_rps: f64,
        /// This process's CPU (node stand-ins, mostly) over the idle window.
        harness_cpu_pct: f64,
        /// TcpExt ListenDrops in the nodes namespace over the idle window.
        listen_drops: u64,
        /// Over the idle window: health-check connections without a request, accept errors.
        no_request: u64,
        accept_errors: u64,
        /// After the idle window: health-check connections open at the nodes with nothing to read
        /// (keel-lb connected but has not sent its request).
        silent: u64,
        rules_applied: Option<f64>,
        metrics_kib: f64,
        /// Services in GET /services served, with an address and no problems.
        served_clean: Option<usize>,
        /// keel-lb log lines at WARN and ERROR written during this scale.
        log_warn: u64,
        log_error: u64,
        /// /metrics not read: its expected size (MiB).
        metrics_skipped: Option<f64>,
        services_kib: f64,
        services_ms: Vec<f64>,
        create_ms: Vec<f64>,
        ingress_ms: Vec<f64>,
        /// The watch's first event for the new Service, against kubectl create returning.
        added_ms: Vec<f64>,
        cpu_ms: Vec<f64>,
        rss_kib: Vec<f64>,
        endpoint_ms: Vec<f64>,
        endpoint_poll_ms: Vec<f64>,
        /// What did not happen at this scale.
        problems: Vec<String>,
        /// A create → answering or an endpoint-change repetition failed (that phase stopped).
        create_failed: bool,
        endpoint_failed: bool,
    }

    struct Lab {
        // Processes first: they are killed before the namespaces go.
        lb: Option<Proc>,
        api: Option<Proc>,
        t: Topology,
        dir: PathBuf,
        end: Instant,
        stats: Arc<NodeStats>,
        /// Bytes of /metrics per backend at the last scale it was read.
        metrics_per_backend: std::cell::Cell<f64>,
    }

    fn bench(a: &Args, dir: &Path, results: &mut Vec<Scale>) -> R<()> {
        let end = Instant::now() + a.timeout;
        let mut t = Topology::new("svcbench");
        t.bridge();
        t.host("api", &[&format!("{API_IP}/16")]);
        t.host("lb", &[&format!("{LB_IP}/16")]);
        t.host("client", &[&format!("{CLIENT_IP}/16")]);
        let node_addrs: Vec<String> = (0..a.nodes).map(node_ip).collect();
        let cidrs: Vec<String> = node_addrs.iter().map(|ip| format!("{ip}/16")).collect();
        let cidr_refs: Vec<&str> = cidrs.iter().map(String::as_str).collect();
        t.host("nodes", &cidr_refs);
        t.sh(
            "nodes",
            "sysctl -qw net.core.somaxconn=8192 net.ipv4.tcp_max_syn_backlog=8192",
        );
        let mut lab = Lab {
            lb: None,
            api: None,
            t,
            dir: dir.to_path_buf(),
            end,
            stats: Arc::new(NodeStats::default()),
            metrics_per_backend: std::cell::Cell::new(0.0),
        };

        // The API test server.
        let api_log = file(&dir.join("api.log"))?;
        let child = lab
            .t
            .command("api", &a.api_bin.display().to_string())
            .args(["--listen", &format!("{API_IP}:6443"), "--san", API_IP])
            .args(["--service-node-port-range", NODE_PORT_RANGE, "--dir"])
            .arg(dir.join("api"))
            .stdout(Stdio::null())
            .stderr(api_log)
            .spawn()
            .map_err(|e| format!("{}: {e}", a.api_bin.display()))?;
        lab.api = Some(Proc::from_child(child, "keel-test-apiserver".into()));
        lab.wait(
            "the API test server writes admin.kubeconfig",
            20,
            100,
            || Ok(dir.join("api/admin.kubeconfig").exists().then_some(())),
        )?;

        // The nodes' stand-ins, then the cluster's objects.
        let max_n = *a.scales.last().unwrap_or(&0);
        let mut tcp_ports: Vec<u16> = (0..max_n)
            .flat_map(|i| bulk_node_ports(i).into_iter())
            .collect();
        tcp_ports.extend(PROBE_NODE_PORTS);
        tcp_ports.push(LOCAL_NODE_PORT);
        start_nodes(
            &lab.t,
            tcp_ports,
            vec![KUBE_PROXY_HEALTHZ, LOCAL_HC_PORT],
            lab.stats.clone(),
        )?;
        lab.wait("kubectl reaches the API test server", 20, 200, || {
            Ok(lab.kubectl(&["get", "--raw", "/readyz"]).ok())
        })?;
        lab.kubectl(&["create", "namespace", NS])?;
        let nodes: Vec<Value> = (0..a.nodes)
            .map(|i| node_object(i, &node_addrs[i]))
            .collect();
        lab.create("nodes", &nodes)?;
        let (set_a, set_b) = endpoint_sets(a.nodes);
        lab.create("local", &[local_service()])?;
        lab.write_slice(&set_a, false)?;
        println!(
            "cluster: {} Nodes, Service {NS}/local (externalTrafficPolicy Local, endpoints on {} nodes)",
            a.nodes,
            set_a.len()
        );

        // keel-lb, master of its one VRRP router.
        let cfg = lab.lb_config(a)?;
        let log = file(&dir.join("keel-lb.log"))?;
        let child = lab
            .t
            .command("lb", &a.lb_bin.display().to_string())
            .args(["run", "-c"])
            .arg(&cfg)
            .env("RUST_LOG", &a.rust_log)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", a.lb_bin.display()))?;
        lab.lb = Some(Proc::from_child(child, "keel-lb".into()));
        lab.wait(
            &format!("keel-lb becomes VRRP master (holds {VRRP_VIP})"),
            20,
            50,
            || Ok(lab.has_addr(VRRP_VIP).then_some(())),
        )?;
        let mut current_set = set_a.clone();
        lab.wait(
            "keel-lb's GET /services lists bench/local on its endpoints' nodes",
            60,
            200,
            || Ok((lab.local_nodes()? == current_set).then_some(())),
        )?;
        let limit = std::fs::read_to_string(format!("/proc/{}/limits", lab.lb_pid()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .map(|l| l.split_whitespace().nth(3).unwrap_or("?").to_string())
            .unwrap_or_default();
        let _ = LB_NOFILE.set(limit.clone());
        println!(
            "keel-lb (pid {}, open files limit {limit}) is master and serves bench/local",
            lab.lb_pid()
        );

        let mut have = 0usize;
        let mut probe_seq = 0u32;
        let mut log_seen = log_levels(&dir.join("keel-lb.log"));
        for &n in &a.scales {
            let mut s = Scale {
                n,
                ..Scale::default()
            };
            // Growing and settling must work for the scale to mean anything; each measurement after
            // it is attempted even if an earlier one failed (its failure is kept in `problems`).
            let mut fatal = lab.settle(a, &mut s, &mut have).err();
            for step in 0..4 {
                if fatal.is_some() {
                    break;
                }
                let r = match step {
                    0 => lab.newest_answers(&s),
                    1 => lab.creates(a, &mut s, &mut probe_seq),
                    2 => lab.endpoint_changes(a, &mut s, &mut current_set, (&set_a, &set_b)),
                    _ => lab.sizes(a, &mut s),
                };
                if let Err(e) = r {
                    println!("N={n}: FAILED: {e}");
                    s.problems.push(e);
                    match step {
                        1 => s.create_failed = true,
                        2 => s.endpoint_failed = true,
                        _ => {}
                    }
                }
                fatal = lab.check().err();
            }
            let (w, e) = log_levels(&dir.join("keel-lb.log"));
            (s.log_warn, s.log_error) = (w - log_seen.0, e - log_seen.1);
            log_seen = (w, e);
            if let Some(e) = fatal {
                if !s.problems.contains(&e) {
                    s.problems.push(e.clone());
                }
                results.push(s);
                return Err(e);
            }
            results.push(s);
        }
        lab.kill_lb();
        Ok(())
    }

    impl Lab {
        fn lb_pid(&self) -> u32 {
            self.lb.as_ref().map_or(0, Proc::pid)
        }

        fn kill_lb(&mut self) {
            if let Some(mut p) = self.lb.take() {
                p.signal(libc::SIGTERM);
                if p.wait_timeout(Duration::from_secs(5)).is_none() {
                    p.kill();
                }
            }
        }

        fn admin_addr(&self) -> SocketAddr {
            SocketAddr::new(
                LB_IP
                    .parse()
                    .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
                ADMIN_PORT,
            )
        }

        fn lb_config(&self, a: &Args) -> R<PathBuf> {
            let yaml = format!(
                "admin:\n  listen: 127.0.0.1:{ADMIN_PORT}\nmetrics:\n  listen: {LB_IP}:{ADMIN_PORT}\nvrrp:\n  routers:\n    - name: svc4\n      vrid: 71\n      interface: eth0\n      priority: 200\n      advert_interval: 100ms\n      vips: [{VRRP_VIP}/16]\nservices:\n  kubeconfig: {kc}\n  state_file: {state}\n  instance: lb\n  health:\n    cluster: {health}\n    interval: {interval}ms\n    timeout: {timeout}ms\n    rise: 2\n    fall: 2\n  address_pools:\n    - name: bulk\n      addresses: [\"{BULK_POOL}\"]\n      vrrp_routers: [svc4]\n    - name: probe\n      addresses: [\"{PROBE_POOL}\"]\n      auto_assign: false\n      vrrp_routers: [svc4]\n",
                kc = self.dir.join("api/admin.kubeconfig").display(),
                state = self.dir.join("lb-state/services.json").display(),
                health = a.health,
                interval = a.health_interval.as_millis(),
                timeout = a.health_timeout.as_millis(),
            );
            let p = self.dir.join("keel-lb.yaml");
            std::fs::write(&p, yaml).map_err(|e| format!("{}: {e}", p.display()))?;
            Ok(p)
        }

        /// Polls `f` every `every_ms` until Some, for at most `secs` (and the run's deadline);
        /// fails naming `what`, or sooner if keel-lb exits or the run is interrupted.
        fn wait<T>(
            &self,
            what: &str,
            secs: u64,
            every_ms: u64,
            mut f: impl FnMut() -> R<Option<T>>,
        ) -> R<T> {
            let start = Instant::now();
            let until = self.bound(Duration::from_secs(secs));
            let mut last_err = String::new();
            loop {
                match f() {
                    Ok(Some(v)) => return Ok(v),
                    Ok(None) => {}
                    Err(e) => last_err = e,
                }
                self.check()?;
                if Instant::now() >= until {
                    let why = if Instant::now() >= self.end {
                        " (the run's --timeout)"
                    } else {
                        ""
                    };
                    return Err(format!(
                        "{what}: did not happen within {:.1} s{why}{}",
                        start.elapsed().as_secs_f64(),
                        if last_err.is_empty() {
                            String::new()
                        } else {
                            format!("; last error: {last_err}")
                        }
                    ));
                }
                std::thread::sleep(Duration::from_millis(every_ms));
            }
        }

        fn bound(&self, d: Duration) -> Instant {
            (Instant::now() + d).min(self.end)
        }

        /// Err when the run must stop: interrupted, or keel-lb gone.
        fn check(&self) -> R<()> {
            if STOP.load(Ordering::SeqCst) {
                return Err("interrupted (SIGINT/SIGTERM)".into());
            }
            if self.lb.is_some() && proc_stat(self.lb_pid()).is_err() {
                return Err("keel-lb exited".into());
            }
            if Instant::now() >= self.end {
                return Err("the run's --timeout passed".into());
            }
            Ok(())
        }

        fn kubectl(&self, args: &[&str]) -> R<String> {
            let out = self
                .t
                .command("client", "kubectl")
                .env("HOME", &self.dir)
                .env_remove("KUBECONFIG")
                .arg("--kubeconfig")
                .arg(self.dir.join("api/admin.kubeconfig"))
                .args(["--request-timeout", "30s"])
                .args(args)
                .output()
                .map_err(|e| format!("kubectl: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "kubectl {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }

        fn manifest(&self, name: &str, items: &[Value]) -> R<PathBuf> {
            let v = json!({"apiVersion": "v1", "kind": "List", "items": items});
            let p = self.dir.join(format!("manifests/{name}.json"));
            std::fs::write(&p, v.to_string()).map_err(|e| format!("{}: {e}", p.display()))?;
            Ok(p)
        }

        /// `kubectl create -f` of a v1 List of these objects.
        fn create(&self, name: &str, items: &[Value]) -> R<()> {
            let p = self.manifest(name, items)?;
            self.kubectl(&["create", "--validate=false", "-f", &p.display().to_string()])
                .map(drop)
        }

        /// Creates (or replaces) bench/local's EndpointSlice with ready endpoints on `nodes`.
        fn write_slice(&self, nodes: &BTreeSet<usize>, replace: bool) -> R<()> {
            let p = self.manifest("local-slice", &[endpoint_slice(nodes)])?;
            let verb = if replace { "replace" } else { "create" };
            self.kubectl(&[verb, "--validate=false", "-f", &p.display().to_string()])
                .map(drop)
        }

        /// Established connections to the nodes' HTTP health ports with an empty receive queue.
        fn silent_check_connections(&self) -> u64 {
            let filter = format!("( sport = :{KUBE_PROXY_HEALTHZ} or sport = :{LOCAL_HC_PORT} )");
            let out = self
                .t
                .exec("nodes", &["ss", "-Htn", "state", "established", &filter]);
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.split_whitespace().next() == Some("0"))
                .count() as u64
        }

        /// TcpExt ListenDrops of the nodes namespace (SYNs dropped: accept queue full).
        fn listen_drops(&self) -> u64 {
            let out = self.t.exec("nodes", &["cat", "/proc/net/netstat"]);
            let text = String::from_utf8_lossy(&out.stdout);
            let tcpext: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
            if let [names, values] = tcpext[..] {
                for (k, v) in names.split_whitespace().zip(values.split_whitespace()) {
                    if k == "ListenDrops" {
                        return v.parse().unwrap_or(0);
                    }
                }
            }
            0
        }

        fn has_addr(&self, ip: &str) -> bool {
            let out = self
                .t
                .exec("lb", &["ip", "-o", "addr", "show", "dev", "eth0"]);
            String::from_utf8_lossy(&out.stdout).contains(&format!(" {ip}/"))
        }

        /// Runs `f` on a thread inside the `client` namespace.
        fn in_client<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> R<T> {
            self.t
                .thread_in("client", f)
                .join()
                .map_err(|_| "a thread in the client namespace panicked".to_string())
        }

        fn admin(&self, path: &str) -> R<(Vec<u8>, Duration)> {
            let addr = self.admin_addr();
            let path = path.to_string();
            self.in_client(move || http_get(addr, &path))?
        }

        /// Node indexes behind bench/local in keel-lb's `GET /services` (empty if not served).
        fn local_nodes(&self) -> R<BTreeSet<usize>> {
            let (body, _) = self.admin("/services/bench/local")?;
            local_nodes_of(&body)
        }

        /// `kubectl get RESOURCE --watch-only` in the namespace: each event as (arrival,
        /// "name ingress-ip").
        fn watch(&self, resource: &str) -> R<Watch> {
            let mut child = self
                .t
                .command("client", "kubectl")
                .env("HOME", &self.dir)
                .env_remove("KUBECONFIG")
                .arg("--kubeconfig")
                .arg(self.dir.join("api/admin.kubeconfig"))
                .args(["get", resource, "-n", NS, "--watch-only", "-o"])
                .arg("jsonpath={.metadata.name} {.status.loadBalancer.ingress[0].ip}{\"\\n\"}")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("kubectl get --watch-only: {e}"))?;
            let out = child.stdout.take().ok_or("kubectl: no stdout")?;
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in std::io::BufRead::lines(std::io::BufReader::new(out)) {
                    let Ok(line) = line else { break };
                    if tx.send((Instant::now(), line)).is_err() {
                        break;
                    }
                }
            });
            Ok(Watch { child, rx })
        }

        /// When the watch first saw Service `name` (None if it did not), and when it was first seen
        /// with an ingress IP: from the watch, or (if the watch ended) by polling the API every
        /// 100 ms. At most 30 s after `t0`.
        fn ingress_seen(
            &self,
            watch: Watch,
            name: &str,
            t0: Instant,
        ) -> R<(Option<Instant>, Instant)> {
            let until = self.bound(Duration::from_secs(30));
            let mut added = None;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                match watch.rx.recv_timeout(left.min(Duration::from_millis(200))) {
                    Ok((at, line)) => {
                        let mut w = line.split_whitespace();
                        if w.next() == Some(name) {
                            added = added.or(Some(at));
                            if w.next().is_some() {
                                return Ok((added, at));
                            }
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                        eprintln!("  (the kubectl watch ended; polling {NS}/{name} instead)");
                        let left = until.saturating_duration_since(Instant::now()).as_secs();
                        let at = self.wait(
                            &format!("Service {NS}/{name} gets an ingress"),
                            left.max(1),
                            100,
                            || Ok(self.ingress_of(name)?.map(|_| Instant::now())),
                        )?;
                        return Ok((added, at));
                    }
                }
                self.check()?;
                if Instant::now() >= until {
                    return Err(format!(
                        "Service {NS}/{name} got no ingress within {:.0} s of its create",
                        t0.elapsed().as_secs_f64()
                    ));
                }
            }
        }

        /// Number of bulk Services (`s-*`) with an ingress IP, from the API.
        fn with_ingress(&self) -> R<usize> {
            let out = self.kubectl(&[
                "get",
                "svc",
                "-n",
                NS,
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}{\" \"}{.status.loadBalancer.ingress[0].ip}{\"\\n\"}{end}",
            ])?;
            Ok(out
                .lines()
                .filter(|l| {
                    let mut w = l.split_whitespace();
                    matches!((w.next(), w.next()), (Some(n), Some(_)) if n.starts_with("s-"))
                })
                .count())
        }

        fn ingress_of(&self, name: &str) -> R<Option<String>> {
            let out = self.kubectl(&[
                "get",
                "svc",
                "-n",
                NS,
                name,
                "-o",
                "jsonpath={.status.loadBalancer.ingress[0].ip}",
            ])?;
            let ip = out.trim().to_string();
            Ok((!ip.is_empty()).then_some(ip))
        }

        fn cpu(&self) -> R<f64> {
            proc_stat(self.lb_pid()).map(|s| s.cpu_secs)
        }

        fn rss(&self) -> R<u64> {
            proc_status(self.lb_pid(), "VmRSS:")
        }

        /// Grows the cluster to `s.n` bulk Services, waits for all to have an ingress, then measures
        /// keel-lb idle. An error here ends the run.
        fn settle(&self, a: &Args, s: &mut Scale, have: &mut usize) -> R<()> {
            let n = s.n;
            // Grow to n bulk Services, 200 per kubectl call.
            let grow_start = Instant::now();
            s.grown = n - *have;
            let mut i = *have;
            while i < n {
                let j = (i + 200).min(n);
                let items: Vec<Value> = (i..j).map(bulk_service).collect();
                self.create(&format!("bulk-{i}-{j}"), &items)?;
                self.check()?;
                i = j;
            }
            *have = n;
            println!(
                "N={n}: created {} Services in {:.1} s; waiting for all {n} to get an ingress",
                s.grown,
                grow_start.elapsed().as_secs_f64()
            );
            let mut last_print = Instant::now();
            self.wait(
                &format!("all {n} bulk Services get an ingress"),
                a.settle_timeout.as_secs(),
                1000,
                || {
                    let k = self.with_ingress()?;
                    if last_print.elapsed() > Duration::from_secs(15) {
                        println!(
                            "  N={n}: {k}/{n} have an ingress after {:.0} s",
                            grow_start.elapsed().as_secs_f64()
                        );
                        last_print = Instant::now();
                    }
                    if k < n {
                        return Err(format!("{k} of {n} have an ingress"));
                    }
                    Ok(Some(()))
                },
            )?;
            s.grow_secs = grow_start.elapsed().as_secs_f64();
            println!(
                "N={n}: all have an ingress {:.1} s after the first create",
                s.grow_secs
            );

            // Idle: CPU, RSS, health checks the nodes receive.
            std::thread::sleep(Duration::from_secs(3));
            self.check()?;
            let (c0, h0, me0, o0, w0) = (
                self.cpu()?,
                self.stats.snapshot(),
                proc_stat(std::process::id())?.cpu_secs,
                self.listen_drops(),
                Instant::now(),
            );
            std::thread::sleep(IDLE_WINDOW);
            self.check()?;
            let (c1, h1, me1, o1, w) = (
                self.cpu()?,
                self.stats.snapshot(),
                proc_stat(std::process::id())?.cpu_secs,
                self.listen_drops(),
                w0.elapsed().as_secs_f64(),
            );
            s.idle_cpu_pct = 100.0 * (c1 - c0) / w;
            s.health_rps = (h1[0] - h0[0]) as f64 / w;
            s.no_request = h1[1] - h0[1];
            s.accept_errors = h1[2] - h0[2];
            s.harness_cpu_pct = 100.0 * (me1 - me0) / w;
            s.listen_drops = o1.saturating_sub(o0);
            s.silent = self.silent_check_connections();
            s.idle_rss_kib = self.rss()?;
            s.threads = proc_status(self.lb_pid(), "Threads:")?;
            s.fds = std::fs::read_dir(format!("/proc/{}/fd", self.lb_pid()))
                .map(|d| d.count() as u64)
                .unwrap_or(0);
            println!(
                "N={n}: idle keel-lb {:.1} % CPU, RSS {:.1} MiB, {} threads, {} fds; nodes receive {:.0} health checks/s (this harness, serving them: {:.0} % CPU; {} SYNs dropped by full accept queues, {} connections closed without a request, {} open without one now, {} accept errors; harness fds {})",
                s.idle_cpu_pct,
                s.idle_rss_kib as f64 / 1024.0,
                s.threads,
                s.fds,
                s.health_rps,
                s.harness_cpu_pct,
                s.listen_drops,
                s.no_request,
                s.silent,
                s.accept_errors,
                std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()),
            );
            Ok(())
        }

        /// The newest bulk Service answers on its address.
        fn newest_answers(&self, s: &Scale) -> R<()> {
            let n = s.n;
            let newest = format!("s-{:04}", n - 1);
            let ip = self
                .ingress_of(&newest)?
                .ok_or(format!("{NS}/{newest} lost its ingress"))?;
            let target = sock(&ip, PORTS[0])?;
            let t = Instant::now();
            self.probe(target, Duration::from_secs(30)).map_err(|e| {
                format!("{NS}/{newest} at {target} (it has an ingress) does not answer: {e}")
            })?;
            println!(
                "N={n}: {NS}/{newest} answers on {target} (first answer {:.0} ms after probing began)",
                ms(t.elapsed())
            );
            Ok(())
        }

        /// R times: create → VIP answering, and keel-lb's cost of that one Service, which is
        /// deleted again (also after a failure, which ends the phase).
        fn creates(&self, a: &Args, s: &mut Scale, probe_seq: &mut u32) -> R<()> {
            // Windows span whole health-check intervals (the checks' load comes in waves), and at
            // least the settle + 1 s; the idle window before a create is as long as the last one.
            let min_window = (2 * a.health_interval).max(Duration::from_secs(2));
            let mut window = min_window;
            for rep in 0..a.reps {
                *probe_seq += 1;
                let name = format!("x-{}-{rep}", s.n);
                let ip = format!("198.18.16.{probe_seq}");
                let r = self.create_once(s, rep, &name, &ip, window, min_window);
                let deleted = self
                    .kubectl(&[
                        "delete",
                        "svc",
                        "-n",
                        NS,
                        &name,
                        "--ignore-not-found",
                        "--timeout=60s",
                    ])
                    .map_err(|e| {
                        format!("deleting {NS}/{name} (keel-lb removes its finalizer): {e}")
                    });
                window = r?;
                deleted?;
                std::thread::sleep(Duration::from_secs(1));
            }
            Ok(())
        }

        /// One create → answering; the measurement window's length.
        fn create_once(
            &self,
            s: &mut Scale,
            rep: usize,
            name: &str,
            ip: &str,
            window: Duration,
            min_window: Duration,
        ) -> R<Duration> {
            let n = s.n;
            let name = name.to_string();
            let target = sock(ip, PORTS[0])?;
            let p = self.manifest(&name, &[probe_service(&name, ip)])?;
            // Started now, so it is watching when the Service is created.
            let watch = self.watch("svc")?;
            // Idle rate over an equal window just before.
            let (i0, iw) = (self.cpu()?, Instant::now());
            std::thread::sleep(window);
            let idle_rate = (self.cpu()? - i0) / iw.elapsed().as_secs_f64();
            let rss0 = self.rss()?;
            let (cpu0, w_start) = (self.cpu()?, Instant::now());
            self.kubectl(&["create", "--validate=false", "-f", &p.display().to_string()])?;
            let kubectl_done = Instant::now();
            let t0 = kubectl_done;
            let addr = target;
            let until = self.bound(Duration::from_secs(30));
            let prober = self.t.thread_in("client", move || probe_until(addr, until));
            let seen = self.ingress_seen(watch, &name, t0);
            let answered = prober
                .join()
                .map_err(|_| "the probe thread panicked".to_string())?;
            let (added_at, ingress_at) = seen?;
            // The API server stored it when the watch saw it, or at the latest when kubectl
            // returned (its exit lags the answer by 10-100 ms).
            let t0 = added_at.map_or(t0, |a| a.min(t0));
            let t1 = answered.map_err(|e| {
                format!("Service {NS}/{name} ({target}) did not answer within 30 s: {e}")
            })?;
            let settled = t1.max(ingress_at);
            let w_end = (settled + Duration::from_secs(1)).max(w_start + min_window);
            std::thread::sleep(w_end.saturating_duration_since(Instant::now()));
            let (cpu1, w_len) = (self.cpu()?, w_start.elapsed());
            let rss1 = self.rss()?;
            s.create_ms.push(ms(t1 - t0));
            s.ingress_ms.push(signed_ms(ingress_at, t0));
            if let Some(at) = added_at {
                s.added_ms.push(signed_ms(at, kubectl_done));
            }
            s.cpu_ms
                .push(1000.0 * ((cpu1 - cpu0) - idle_rate * w_len.as_secs_f64()));
            s.rss_kib.push(rss1 as f64 - rss0 as f64);
            println!(
                "  N={n} rep {rep}: {target} answers {:.0} ms after create, ingress {:.0} ms; keel-lb CPU {:.0} ms (idle {:.1} %), RSS {:+} KiB",
                ms(t1 - t0),
                signed_ms(ingress_at, t0),
                s.cpu_ms[s.cpu_ms.len() - 1],
                100.0 * idle_rate,
                rss1 as i64 - rss0 as i64
            );
            Ok(w_len)
        }

        /// R times: endpoint change → backend set changed in GET /services.
        fn endpoint_changes(
            &self,
            a: &Args,
            s: &mut Scale,
            current_set: &mut BTreeSet<usize>,
            sets: (&BTreeSet<usize>, &BTreeSet<usize>),
        ) -> R<()> {
            let n = s.n;
            for rep in 0..a.reps {
                let want = if current_set == sets.0 {
                    sets.1.clone()
                } else {
                    sets.0.clone()
                };
                let watch = self.watch("endpointslices")?;
                // kubectl's watch is set up well within this.
                std::thread::sleep(Duration::from_secs(1));
                self.write_slice(&want, true)?;
                let kubectl_done = Instant::now();
                // As for the create: the watch's event if it came first.
                let seen = watch
                    .rx
                    .recv_timeout(Duration::from_secs(2))
                    .ok()
                    .filter(|(_, l)| l.starts_with("local-eps"))
                    .map(|(at, _)| at);
                drop(watch);
                let t0 = seen.map_or(kubectl_done, |a| a.min(kubectl_done));
                let addr = self.admin_addr();
                let until = self.bound(Duration::from_secs(30));
                let w = want.clone();
                let (t1, polls) = self
                    .in_client(move || poll_backends(addr, &w, until))?
                    .map_err(|e| {
                        format!(
                            "after replacing bench/local's EndpointSlice, GET /services did not show nodes {} within 30 s: {e}",
                            names(&want)
                        )
                    })?;
                *current_set = want;
                s.endpoint_ms.push(ms(t1 - t0));
                s.endpoint_poll_ms.extend(polls.iter().copied());
                println!(
                    "  N={n} endpoints rep {rep}: backend set changed {:.0} ms after the replace ({} polls, median {:.1} ms each)",
                    ms(t1 - t0),
                    polls.len(),
                    median(&polls)
                );
                std::thread::sleep(Duration::from_millis(500));
                self.check()?;
            }
            Ok(())
        }

        /// Last (they allocate in keel-lb): the admin API's answers at this scale.
        fn sizes(&self, a: &Args, s: &mut Scale) -> R<()> {
            let n = s.n;
            for _ in 0..3 {
                let (body, d) = self.admin("/services")?;
                s.services_kib = body.len() as f64 / 1024.0;
                s.services_ms.push(ms(d));
                let v: Services =
                    serde_json::from_slice(&body).map_err(|e| format!("GET /services: {e}"))?;
                s.served_clean = Some(
                    v.services
                        .iter()
                        .filter(|x| x.served && x.problems.is_empty() && !x.ips.is_empty())
                        .count(),
                );
            }
            let backends = ((n + 1) * PORTS.len() * a.nodes) as f64;
            let predicted = self.metrics_per_backend.get() * backends;
            if predicted > METRICS_CAP {
                s.metrics_skipped = Some(predicted / 1048576.0);
            } else {
                let (m, _) = self.admin("/metrics")?;
                s.metrics_kib = m.len() as f64 / 1024.0;
                s.rules_applied = metric(&m, "keel_lb_service_rules_applied");
                self.metrics_per_backend.set(m.len() as f64 / backends);
            }
            println!(
                "N={n}: GET /services {:.0} KiB in {:.0} ms ({} of {} Services served without problems); GET /metrics {}",
                s.services_kib,
                median(&s.services_ms),
                s.served_clean.unwrap_or(0),
                n + 1,
                match s.metrics_skipped {
                    Some(p) => format!("not read (about {p:.0} MiB expected from the last scale)"),
                    None => format!("{:.0} KiB", s.metrics_kib),
                }
            );
            Ok(())
        }

        /// First answer from `target` seen from the client (new attempt every 10 ms).
        fn probe(&self, target: SocketAddr, limit: Duration) -> R<Instant> {
            let until = self.bound(limit);
            self.in_client(move || probe_until(target, until))?
        }
    }

    /// A running `kubectl get --watch-only` (killed on drop) and its lines.
    struct Watch {
        child: std::process::Child,
        rx: std::sync::mpsc::Receiver<(Instant, String)>,
    }

    impl Drop for Watch {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn file(p: &Path) -> R<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| format!("{}: {e}", p.display()))
    }

    fn sock(ip: &str, port: u16) -> R<SocketAddr> {
        format!("{ip}:{port}")
            .parse()
            .map_err(|e| format!("{ip}:{port}: {e}"))
    }

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0
    }

    /// `a - b` in ms, negative when `a` came first.
    fn signed_ms(a: Instant, b: Instant) -> f64 {
        if a >= b {
            ms(a - b)
        } else {
            -ms(b - a)
        }
    }

    /// Node i's address (0-based): 198.18.3.1 .., 250 per /24.
    fn node_ip(i: usize) -> String {
        format!("198.18.{}.{}", 3 + i / 250, i % 250 + 1)
    }

    fn node_name(i: usize) -> String {
        format!("node-{:03}", i + 1)
    }

    fn names(set: &BTreeSet<usize>) -> String {
        let v: Vec<String> = set.iter().map(|i| node_name(*i)).collect();
        format!("[{}]", v.join(", "))
    }

    fn bulk_node_ports(i: usize) -> [u16; 3] {
        let b = NODE_PORT_BASE + 3 * i as u16;
        [b, b + 1, b + 2]
    }

    /// Two disjoint sets of nodes with bench/local's ready endpoints.
    fn endpoint_sets(nodes: usize) -> (BTreeSet<usize>, BTreeSet<usize>) {
        let k = (nodes / 2).min(10);
        ((0..k).collect(), (k..2 * k).collect())
    }

    fn node_object(i: usize, ip: &str) -> Value {
        let name = node_name(i);
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name}
            ]}
        })
    }

    fn service(name: &str, node_ports: [u16; 3], extra: Value) -> Value {
        let ports: Vec<Value> = PORTS
            .iter()
            .zip(node_ports)
            .map(|(p, np)| {
                json!({"name": format!("p{p}"), "protocol": "TCP", "port": p, "targetPort": p, "nodePort": np})
            })
            .collect();
        let mut spec = json!({"type": "LoadBalancer", "selector": {"app": name}, "ports": ports});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NS},
            "spec": spec
        })
    }

    fn bulk_service(i: usize) -> Value {
        service(&format!("s-{i:04}"), bulk_node_ports(i), json!({}))
    }

    fn probe_service(name: &str, ip: &str) -> Value {
        service(name, PROBE_NODE_PORTS, json!({"loadBalancerIP": ip}))
    }

    fn local_service() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "local", "namespace": NS},
            "spec": {
                "type": "LoadBalancer", "selector": {"app": "local"},
                "externalTrafficPolicy": "Local", "healthCheckNodePort": LOCAL_HC_PORT,
                "loadBalancerIP": LOCAL_IP,
                "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 80, "nodePort": LOCAL_NODE_PORT}]
            }
        })
    }

    fn endpoint_slice(nodes: &BTreeSet<usize>) -> Value {
        let eps: Vec<Value> = nodes
            .iter()
            .map(|i| {
                json!({"addresses": [format!("198.18.20.{}", i + 1)], "nodeName": node_name(*i),
                       "conditions": {"ready": true}})
            })
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "local-eps", "namespace": NS,
                         "labels": {"kubernetes.io/service-name": "local"}},
            "addressType": "IPv4",
            "endpoints": eps,
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]
        })
    }

    #[derive(Deserialize)]
    struct Services {
        #[serde(default)]
        services: Vec<SvcEntry>,
    }

    #[derive(Deserialize)]
    struct SvcEntry {
        service: String,
        #[serde(default)]
        ports: Vec<PortEntry>,
        #[serde(default)]
        served: bool,
        #[serde(default)]
        problems: Vec<String>,
        #[serde(default)]
        ips: Vec<serde::de::IgnoredAny>,
    }

    #[derive(Deserialize)]
    struct PortEntry {
        #[serde(default)]
        backends: Vec<BackendEntry>,
    }

    #[derive(Deserialize)]
    struct BackendEntry {
        #[serde(default)]
        address: String,
    }

    /// The nodes (indexes) behind bench/local in a `GET /services` body, by backend address.
    fn local_nodes_of(body: &[u8]) -> R<BTreeSet<usize>> {
        let v: Services =
            serde_json::from_slice(body).map_err(|e| format!("GET /services: {e}"))?;
        let mut out = BTreeSet::new();
        for s in v.services.iter().filter(|s| s.service == "bench/local") {
            for b in s.ports.iter().flat_map(|p| &p.backends) {
                let ip = b
                    .address
                    .parse::<SocketAddr>()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                if let Some(i) = (0..1000).find(|i| node_ip(*i) == ip) {
                    out.insert(i);
                }
            }
        }
        Ok(out)
    }

    /// Polls keel-lb's `GET /services/bench/local` (5 ms after each answer; one Service, so a poll
    /// does not cost the whole list) until its backends are on exactly `want`: when that answer
    /// arrived, and how long each poll took.
    fn poll_backends(
        admin: SocketAddr,
        want: &BTreeSet<usize>,
        until: Instant,
    ) -> R<(Instant, Vec<f64>)> {
        let mut polls = Vec::new();
        loop {
            let last = match http_get(admin, "/services/bench/local") {
                Ok((body, d)) => {
                    polls.push(ms(d));
                    let at = Instant::now();
                    match local_nodes_of(&body) {
                        Ok(set) if &set == want => return Ok((at, polls)),
                        Ok(set) => format!("last seen {}", names(&set)),
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            if Instant::now() >= until || STOP.load(Ordering::SeqCst) {
                return Err(last);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// GET over plain HTTP/1.1 with `Connection: close`: the body and how long it took.
    fn http_get(addr: SocketAddr, path: &str) -> R<(Vec<u8>, Duration)> {
        let start = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| format!("GET {path}: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .map_err(|e| format!("GET {path}: {e}"))?;
        let took = start.elapsed();
        let split = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or(format!("GET {path}: no HTTP header in the answer"))?;
        let head = String::from_utf8_lossy(&buf[..split]).to_string();
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!(
                "GET {path}: {}",
                head.lines().next().unwrap_or_default()
            ));
        }
        Ok((buf[split + 4..].to_vec(), took))
    }

    /// A value of an unlabelled series in Prometheus text.
    fn metric(text: &[u8], name: &str) -> Option<f64> {
        String::from_utf8_lossy(text).lines().find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(name))
                .then(|| w.next().and_then(|v| v.parse().ok()))
                .flatten()
        })
    }

    /// Starts a new connect + read to `target` every 10 ms until one gets an answer (its time).
    fn probe_until(target: SocketAddr, until: Instant) -> R<Instant> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
            let last = Arc::new(std::sync::Mutex::new(String::from("no attempt finished")));
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    Some(at) = rx.recv() => return Ok(at),
                    _ = tick.tick() => {
                        if Instant::now() >= until || STOP.load(Ordering::SeqCst) {
                            let l = last.lock().map(|l| l.clone()).unwrap_or_default();
                            return Err(format!("last attempt: {l}"));
                        }
                        let (tx, last) = (tx.clone(), last.clone());
                        tokio::spawn(async move {
                            match attempt(target).await {
                                Ok(()) => {
                                    let _ = tx.send(Instant::now());
                                }
                                Err(e) => {
                                    if let Ok(mut l) = last.lock() {
                                        *l = e;
                                    }
                                }
                            }
                        });
                    }
                }
            }
        })
    }

    async fn attempt(target: SocketAddr) -> R<()> {
        use tokio::io::AsyncReadExt;
        let t = Duration::from_secs(1);
        let mut s = tokio::time::timeout(t, tokio::net::TcpStream::connect(target))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(t, s.read(&mut buf))
            .await
            .map_err(|_| "no answer within 1 s".to_string())?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed without an answer".into());
        }
        Ok(())
    }

    /// The node stand-ins, served by this process from a thread in the `nodes` namespace: HTTP 200
    /// on each of `http_ports` (kube-proxy healthz, healthCheckNodePorts; counted in `stats`) and, on each TCP nodePort, the node address the connection reached, then close.
    fn start_nodes(
        t: &Topology,
        tcp_ports: Vec<u16>,
        http_ports: Vec<u16>,
        stats: Arc<NodeStats>,
    ) -> R<()> {
        let (tx, rx) = std::sync::mpsc::channel::<R<()>>();
        // Detached: it serves until the process exits.
        drop(t.thread_in("nodes", move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                let mut listeners = Vec::new();
                for (p, http) in tcp_ports
                    .iter()
                    .map(|p| (*p, false))
                    .chain(http_ports.iter().map(|p| (*p, true)))
                {
                    match listen(p) {
                        Ok(l) => listeners.push((l, http)),
                        Err(e) => {
                            let _ = tx.send(Err(format!("nodes: listen on port {p}: {e}")));
                            return;
                        }
                    }
                }
                for (l, http) in listeners {
                    let stats = stats.clone();
                    tokio::spawn(async move {
                        loop {
                            match l.accept().await {
                                Ok((s, _)) if http => {
                                    tokio::spawn(healthz(s, stats.clone()));
                                }
                                Ok((s, _)) => {
                                    tokio::spawn(node_port(s));
                                }
                                Err(_) => {
                                    stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(Duration::from_millis(10)).await
                                }
                            }
                        }
                    });
                }
                let _ = tx.send(Ok(()));
                std::future::pending::<()>().await;
            });
        }));
        rx.recv_timeout(Duration::from_secs(60))
            .map_err(|_| "the node stand-ins did not start".to_string())?
    }

    fn listen(port: u16) -> std::io::Result<tokio::net::TcpListener> {
        let s = tokio::net::TcpSocket::new_v4()?;
        s.set_reuseaddr(true)?;
        s.bind(SocketAddr::from(([0, 0, 0, 0], port)))?;
        s.listen(8192)
    }

    /// What the node stand-ins saw.
    #[derive(Default)]
    struct NodeStats {
        /// HTTP health-check requests answered.
        answered: AtomicU64,
        /// Health-check connections closed (or silent 5 s) before a whole request.
        no_request: AtomicU64,
        /// accept() failures (e.g. this process out of file descriptors).
        accept_errors: AtomicU64,
    }

    impl NodeStats {
        fn snapshot(&self) -> [u64; 3] {
            [
                self.answered.load(Ordering::Relaxed),
                self.no_request.load(Ordering::Relaxed),
                self.accept_errors.load(Ordering::Relaxed),
            ]
        }
    }

    async fn healthz(mut s: tokio::net::TcpStream, stats: Arc<NodeStats>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let port = s.local_addr().map(|a| a.port()).unwrap_or(0);
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf[n..])).await {
                Ok(Ok(k)) if k > 0 => n += k,
                _ => {
                    stats.no_request.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        stats.answered.fetch_add(1, Ordering::Relaxed);
        let body = if port == KUBE_PROXY_HEALTHZ {
            r#"{"lastUpdated":"","currentTime":""}"#.to_string()
        } else {
            r#"{"service":{"namespace":"","name":""},"localEndpoints":1}"#.to_string()
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(resp.as_bytes()).await;
        let _ = s.shutdown().await;
    }

    async fn node_port(mut s: tokio::net::TcpStream) {
        use tokio::io::AsyncWriteExt;
        let me = s
            .local_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let _ = s.write_all(format!("{me}\n").as_bytes()).await;
        let _ = s.shutdown().await;
    }

    struct Stat {
        cpu_secs: f64,
    }

    /// utime + stime of a live process (Err if gone or a zombie).
    fn proc_stat(pid: u32) -> R<Stat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
        let rest = text
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or("malformed /proc stat")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.first() == Some(&"Z") || f.first() == Some(&"X") {
            return Err(format!("process {pid} has exited"));
        }
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        // Fields 14 and 15 of stat; `rest` starts at field 3.
        Ok(Stat {
            cpu_secs: (num(11) + num(12)) as f64 / hz,
        })
    }

    /// A numeric field of /proc/PID/status (VmRSS in KiB, Threads).
    fn proc_status(pid: u32, field: &str) -> R<u64> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
        text.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .ok_or(format!("/proc/{pid}/status has no {field}"))
    }

    /// The last `n` lines of a (possibly large) log file.
    fn tail(p: &Path, n: usize) -> String {
        let Ok(mut f) = std::fs::File::open(p) else {
            return String::from("(no log)");
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn median(v: &[f64]) -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        let m = s.len() / 2;
        if s.len() == 2 * m {
            (s[m - 1] + s[m]) / 2.0
        } else {
            s[m]
        }
    }

    fn max(v: &[f64]) -> f64 {
        v.iter().copied().fold(f64::NAN, f64::max)
    }

    fn cell(v: f64, prec: usize) -> String {
        if v.is_nan() {
            "-".into()
        } else {
            format!("{v:.prec$}")
        }
    }

    fn ratio(first: f64, last: f64) -> String {
        if first.is_nan() || last.is_nan() || first <= 0.0 || last < 0.0 {
            "-".into()
        } else {
            format!("{:.2}x", last / first)
        }
    }

    /// keel-lb's log: counts of WARN/ERROR lines and the distinct messages (first few).
    fn log_summary(p: &Path) -> String {
        let Ok(f) = std::fs::File::open(p) else {
            return "no log".into();
        };
        let mut counts = std::collections::BTreeMap::<(String, String), usize>::new();
        let (mut warn, mut err, mut lines) = (0usize, 0usize, 0usize);
        let mut buf = String::new();
        let mut r = std::io::BufReader::new(f);
        loop {
            buf.clear();
            match std::io::BufRead::read_line(&mut r, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            lines += 1;
            let level = if buf.contains(" WARN ") {
                warn += 1;
                "WARN"
            } else if buf.contains(" ERROR ") {
                err += 1;
                "ERROR"
            } else {
                continue;
            };
            // The message: after "target: ", before the first field "k=v".
            let clean = strip_ansi(&buf);
            let msg = clean
                .split_once(": ")
                .map(|(_, m)| m)
                .unwrap_or(&clean)
                .split('=')
                .next()
                .unwrap_or_default()
                .rsplit_once(' ')
                .map(|(m, _)| m.to_string())
                .unwrap_or_default();
            // The error field's text, up to the next `field=`.
            let error = clean
                .split_once(" error=")
                .map(|(_, e)| {
                    let words: Vec<&str> = e
                        .split(' ')
                        .take_while(|w| {
                            !w.split_once('=').is_some_and(|(k, _)| {
                                !k.is_empty()
                                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                            })
                        })
                        .collect();
                    format!(" (error={})", words.join(" ").trim())
                })
                .unwrap_or_default();
            *counts
                .entry((level.to_string(), format!("{}{error}", msg.trim())))
                .or_default() += 1;
        }
        let mut out = format!("{lines} lines, {warn} WARN, {err} ERROR");
        let mut top: Vec<_> = counts.into_iter().collect();
        top.sort_by_key(|e| std::cmp::Reverse(e.1));
        for ((level, msg), c) in top.into_iter().take(8) {
            out.push_str(&format!("\n  {c:>7} × {level} {}", msg.trim()));
        }
        out
    }

    /// Lines of keel-lb's log at WARN and at ERROR so far.
    fn log_levels(p: &Path) -> (u64, u64) {
        let Ok(f) = std::fs::File::open(p) else {
            return (0, 0);
        };
        let (mut w, mut e) = (0, 0);
        for line in std::io::BufRead::split(std::io::BufReader::new(f), b'\n').map_while(Result::ok)
        {
            let l = String::from_utf8_lossy(&line);
            if l.contains(" WARN ") {
                w += 1;
            } else if l.contains(" ERROR ") {
                e += 1;
            }
        }
        (w, e)
    }

    fn strip_ansi(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut esc = false;
        for c in s.chars() {
            if esc {
                esc = !c.is_ascii_alphabetic();
            } else if c == '\u{1b}' {
                esc = true;
            } else {
                out.push(c);
            }
        }
        out
    }

    /// The 1, 5 and 15 minute load averages.
    fn loadavg() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    }

    fn report(a: &Args, results: &[Scale], dir: &Path, took: Duration, load: (&str, &str)) {
        // SAFETY: sysconf has no preconditions.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        println!(
            "\n## keel-lb as Services provider (tests/bench/services.rs)\n\n{} nodes, 3 TCP ports per Service, externalTrafficPolicy Cluster checked by {} every {} ms (timeout {} ms), {} repetitions; keel-lb's open files limit {}; run took {:.0} s on {cpus} CPUs, load average {} at start, {} at end.\n",
            a.nodes,
            a.health,
            a.health_interval.as_millis(),
            a.health_timeout.as_millis(),
            a.reps,
            LB_NOFILE.get().map_or("?", String::as_str),
            took.as_secs_f64(),
            load.0,
            load.1
        );
        if results.is_empty() {
            println!("(no scale was measured)");
            return;
        }
        let mut head = String::from("| metric |");
        let mut sep = String::from("|---|");
        for s in results {
            head.push_str(&format!(
                " N={}{} |",
                s.n,
                if !s.problems.is_empty() {
                    " (incomplete)"
                } else {
                    ""
                }
            ));
            sep.push_str("---:|");
        }
        head.push_str(" ratio largest/smallest scale |");
        sep.push_str("---:|");
        println!("{head}\n{sep}");
        type Row = (String, usize, Box<dyn Fn(&Scale) -> f64>);
        let k = a.nodes;
        let rows: Vec<Row> = vec![
            (
                format!("backends keel-lb holds (N+1 Services × 3 ports × {k} nodes)"),
                0,
                Box::new(move |s| ((s.n + 1) * 3 * k) as f64),
            ),
            (
                "grow to N: first create → all have an ingress (s)".into(),
                1,
                Box::new(|s| {
                    if s.grow_secs > 0.0 {
                        s.grow_secs
                    } else {
                        f64::NAN
                    }
                }),
            ),
            (
                "  per added Service (ms)".into(),
                1,
                Box::new(|s| {
                    if s.grow_secs > 0.0 {
                        1000.0 * s.grow_secs / s.grown as f64
                    } else {
                        f64::NAN
                    }
                }),
            ),
            (
                "create → VIP answering, median (ms)".into(),
                0,
                Box::new(|s| median(&s.create_ms)),
            ),
            (
                "create → VIP answering, max (ms)".into(),
                0,
                Box::new(|s| max(&s.create_ms)),
            ),
            (
                "create → VIP answering: repetitions not answering within 30 s".into(),
                0,
                Box::new(|s| f64::from(u8::from(s.create_failed))),
            ),
            (
                "create → ingress in status, median (ms)".into(),
                0,
                Box::new(|s| median(&s.ingress_ms)),
            ),
            (
                "keel-lb CPU per extra Service, median (ms)".into(),
                0,
                Box::new(|s| median(&s.cpu_ms)),
            ),
            (
                "keel-lb RSS per extra Service, median (KiB)".into(),
                0,
                Box::new(|s| median(&s.rss_kib)),
            ),
            (
                "endpoint change → backend set changed, median (ms)".into(),
                0,
                Box::new(|s| median(&s.endpoint_ms)),
            ),
            (
                "endpoint change → backend set changed, max (ms)".into(),
                0,
                Box::new(|s| max(&s.endpoint_ms)),
            ),
            (
                "endpoint change: repetitions not seen within 30 s".into(),
                0,
                Box::new(|s| f64::from(u8::from(s.endpoint_failed))),
            ),
            (
                "idle keel-lb CPU over 10 s (% of one core)".into(),
                1,
                Box::new(|s| {
                    if s.idle_rss_kib > 0 {
                        s.idle_cpu_pct
                    } else {
                        f64::NAN
                    }
                }),
            ),
            (
                "idle keel-lb RSS (MiB)".into(),
                1,
                Box::new(|s| {
                    if s.idle_rss_kib > 0 {
                        s.idle_rss_kib as f64 / 1024.0
                    } else {
                        f64::NAN
                    }
                }),
            ),
            (
                "health checks received by the nodes, idle (requests/s)".into(),
                0,
                Box::new(|s| {
                    if s.idle_rss_kib > 0 {
                        s.health_rps
                    } else {
                        f64::NAN
                    }
                }),
            ),
            (
                "this harness's CPU serving those checks, idle (% of one core)".into(),
                0,
                Box::new(|s| {
                    if s.idle_rss_kib > 0 {
                        s.harness_cpu_pct
                    } else {
                        f64::NAN
                    }
                }),
            ),
            (
                "SYNs dropped at the nodes (accept queue full), idle 10 s".into(),
                0,
                Box::new(|s| {
                    if s.idle_rss_kib > 0 {
                        s.listen_drops as f64
                    } else {
                        f64::NAN
                    }
                }),
            ),
            (
                "health-check connections closed with no request sent, idle 10 s".into(),
                0,
                Box::new(|s| {
                    if s.idle_rss_kib > 0 {
                        s.no_request as f64
                    } else {
                        f64::NAN
                    }
                }),
            ),
            (
                "  …open at the nodes with no request yet (snapshot after the window)".into(),
                0,
                Box::new(|s| {
                    if s.idle_rss_kib > 0 {
                        s.silent as f64
                    } else {
                        f64::NAN
                    }
                }),
            ),
            (
                "accept errors at the node stand-ins, idle 10 s".into(),
                0,
                Box::new(|s| {
                    if s.idle_rss_kib > 0 {
                        s.accept_errors as f64
                    } else {
                        f64::NAN
                    }
                }),
            ),
            (
                "keel-lb threads".into(),
                0,
                Box::new(|s| {
                    if s.threads > 0 {
                        s.threads as f64
                    } else {
                        f64::NAN
                    }
                }),
            ),
            (
                "keel-lb open fds".into(),
                0,
                Box::new(|s| if s.fds > 0 { s.fds as f64 } else { f64::NAN }),
            ),
            (
                "Services served with an address and no problems (GET /services; of N+1)".into(),
                0,
                Box::new(|s| s.served_clean.map_or(f64::NAN, |v| v as f64)),
            ),
            (
                "keel-lb log lines during the scale: WARN".into(),
                0,
                Box::new(|s| s.log_warn as f64),
            ),
            (
                "keel-lb log lines during the scale: ERROR".into(),
                0,
                Box::new(|s| s.log_error as f64),
            ),
            (
                "keel_lb_service_rules_applied (/metrics)".into(),
                0,
                Box::new(|s| s.rules_applied.unwrap_or(f64::NAN)),
            ),
            (
                "GET /metrics size (KiB)".into(),
                0,
                Box::new(|s| {
                    if s.metrics_kib > 0.0 {
                        s.metrics_kib
                    } else {
                        f64::NAN
                    }
                }),
            ),
            (
                "GET /services size (KiB)".into(),
                0,
                Box::new(|s| {
                    if s.services_kib > 0.0 {
                        s.services_kib
                    } else {
                        f64::NAN
                    }
                }),
            ),
            (
                "GET /services time, idle, median (ms)".into(),
                1,
                Box::new(|s| median(&s.services_ms)),
            ),
            (
                "GET /services/bench/local time while polling endpoints, median (ms)".into(),
                1,
                Box::new(|s| median(&s.endpoint_poll_ms)),
            ),
        ];
        for (name, prec, f) in &rows {
            let vals: Vec<f64> = results.iter().map(f).collect();
            let mut line = format!("| {name} |");
            for v in &vals {
                line.push_str(&format!(" {} |", cell(*v, *prec)));
            }
            let first = vals.first().copied().unwrap_or(f64::NAN);
            let last = vals.last().copied().unwrap_or(f64::NAN);
            let r = if vals.len() > 1 {
                ratio(first, last)
            } else {
                "-".into()
            };
            line.push_str(&format!(" {r} |"));
            println!("{line}");
        }
        println!("\nRaw values per repetition (ms unless noted):");
        for s in results {
            let f = |v: &[f64]| {
                v.iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            println!(
                "- N={}: create→answering {}; create→ingress {}; watch saw the create (against kubectl returning) {}; CPU {}; RSS KiB {}; endpoint change {}",
                s.n,
                f(&s.create_ms),
                f(&s.ingress_ms),
                f(&s.added_ms),
                f(&s.cpu_ms),
                f(&s.rss_kib),
                f(&s.endpoint_ms)
            );
            for e in &s.problems {
                println!("  N={} FAILED: {e}", s.n);
            }
            if let Some(m) = s.metrics_skipped {
                println!(
                    "  N={}: GET /metrics not read: about {m:.0} MiB expected (size per backend at the previous scale)",
                    s.n
                );
            }
        }
        println!("\nTargets:");
        for s in results {
            let c = max(&s.create_ms);
            let e = max(&s.endpoint_ms);
            let yn = |v: f64, failed: bool| {
                if failed {
                    "NOT met (a repetition failed, see above)"
                } else if v.is_nan() {
                    "not measured"
                } else if v <= 1000.0 {
                    "met"
                } else {
                    "NOT met"
                }
            };
            println!(
                "- N={}: create → VIP answering ≤ 1 s (max of {}): {} ms, {}; endpoint change ≤ 1 s (max of {}): {} ms, {}",
                s.n,
                s.create_ms.len(),
                cell(c, 0),
                yn(c, s.create_failed),
                s.endpoint_ms.len(),
                cell(e, 0),
                yn(e, s.endpoint_failed)
            );
        }
        if results.len() > 1 {
            let (f, l) = (&results[0], &results[results.len() - 1]);
            for (what, a0, a1) in [
                (
                    "keel-lb CPU per extra Service",
                    median(&f.cpu_ms),
                    median(&l.cpu_ms),
                ),
                (
                    "create → VIP answering (median)",
                    median(&f.create_ms),
                    median(&l.create_ms),
                ),
                (
                    "endpoint change (median)",
                    median(&f.endpoint_ms),
                    median(&l.endpoint_ms),
                ),
            ] {
                let verdict = if a0.is_nan() || a1.is_nan() {
                    "not measured at both ends"
                } else if a0 <= 0.0 || a1 <= 0.0 {
                    "not measurable: at or below the idle CPU's noise at one end"
                } else if a1 / a0 <= 2.0 {
                    "flat (≤ 2x)"
                } else {
                    "GROWS with the number of Services (> 2x)"
                };
                println!(
                    "- {what}, N={} against N={}: {} → {verdict}",
                    l.n,
                    f.n,
                    ratio(a0, a1)
                );
            }
        }
        println!(
            "\nkeel-lb log {}: {}",
            dir.join("keel-lb.log").display(),
            log_summary(&dir.join("keel-lb.log"))
        );
    }
}
