//! Scale benchmark (not in the default suite): N simulated keel-agents in this one process, each a
//! real join (discovery, CSR, certificate) then registration and the kubelet-like heartbeat, against
//! `keel-test-apiserver` running as a SEPARATE process, so the CPU and memory measured here are the
//! agents' alone. Reports API requests per node per minute (by verb and resource) and CPU/memory
//! per node over the steady-state window.
//!
//! cargo build --release -p keel-test-apiserver -p keel-agent --example agent_scale
//! target/release/examples/agent_scale --nodes 1000 --duration 120s
//!
//! Flags: --nodes N (1000), --duration D (120s), --join-concurrency C (50),
//! --server-bin PATH (next to this binary's target dir: ../keel-test-apiserver).

// A benchmark measures real time (agent/clippy.toml keeps clocks out of the library's cores).
#![allow(clippy::disallowed_methods)]

#[cfg(not(unix))]
fn main() {
    eprintln!("agent_scale reads /proc and getrusage: run it on Linux");
}

#[cfg(unix)]
fn main() {
    imp::main()
}

#[cfg(unix)]
mod imp {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use keel_agent::config;
    use keel_agent::metrics::Metrics;
    use keel_agent::node::heartbeat::{self, Heartbeat, Timing};
    use keel_agent::run::Agent;
    use keel_common::Source;
    use tokio::sync::{watch, Semaphore};
    use tokio_util::sync::CancellationToken;

    struct Args {
        nodes: usize,
        duration: Duration,
        join_concurrency: usize,
        server_bin: std::path::PathBuf,
    }

    fn args() -> Result<Args, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        // target/<profile>/examples/agent_scale → target/<profile>/keel-test-apiserver
        let default_bin = exe
            .parent()
            .and_then(|p| p.parent())
            .map(|p| p.join("keel-test-apiserver"))
            .unwrap_or_default();
        let mut a = Args {
            nodes: 1000,
            duration: Duration::from_secs(120),
            join_concurrency: 50,
            server_bin: default_bin,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut val = || it.next().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
            "--nodes" => a.nodes = val()?.parse().map_err(|e| format!("--nodes: {e}"))?,
            "--duration" => a.duration = keel_common::duration::parse(&val()?)?,
            "--join-concurrency" => {
                a.join_concurrency = val()?.parse().map_err(|e| format!("--join-concurrency: {e}"))?
            }
            "--server-bin" => a.server_bin = val()?.into(),
            "-h" | "--help" => {
                return Err("usage: agent_scale [--nodes N] [--duration 120s] [--join-concurrency C] [--server-bin PATH]".into())
            }
            other => return Err(format!("unknown flag {other}")),
        }
        }
        Ok(a)
    }

    fn cpu_seconds() -> f64 {
        // SAFETY: getrusage fills the struct we pass.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }

    fn rss_bytes() -> u64 {
        let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or(0)
    }

    fn raise_fd_limit() {
        // SAFETY: plain rlimit calls on our own process.
        unsafe {
            let mut rl: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
                rl.rlim_cur = rl.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
            }
        }
    }

    pub fn main() {
        let a = match args() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        };
        raise_fd_limit();
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("runtime: {e}");
                std::process::exit(1);
            }
        };
        if let Err(e) = rt.block_on(bench(a)) {
            eprintln!("agent_scale: {e}");
            std::process::exit(1);
        }
    }

    struct ServerProc(std::process::Child);
    impl Drop for ServerProc {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    async fn bench(a: Args) -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let srv_dir = dir.path().join("server");
        let server = ServerProc(
            std::process::Command::new(&a.server_bin)
                .args(["--listen", &format!("127.0.0.1:{port}"), "--dir"])
                .arg(&srv_dir)
                .args(["--cert-duration-secs", "86400"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| format!("{}: {e}", a.server_bin.display()))?,
        );
        let mut ready = false;
        for _ in 0..100 {
            if srv_dir.join("ca-pin").exists() && srv_dir.join("bootstrap-token").exists() {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !ready {
            return Err("test server did not start".into());
        }
        let server_pid = server.0.id();
        let pin = std::fs::read_to_string(srv_dir.join("ca-pin")).map_err(|e| e.to_string())?;
        let token =
            std::fs::read_to_string(srv_dir.join("bootstrap-token")).map_err(|e| e.to_string())?;

        let rss0 = rss_bytes();
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        let cancel = CancellationToken::new();
        let sem = Arc::new(Semaphore::new(a.join_concurrency));
        let mut joins = tokio::task::JoinSet::new();
        for i in 0..a.nodes {
            let yaml = format!(
            "cluster:\n  server: https://127.0.0.1:{port}\n  token: {}\n  ca_pins: [\"{}\"]\n  discovery_timeout: 10m\n  csr_timeout: 10m\nnode:\n  name: sim-{i:05}\n  pool: sim\n  taints: [{{key: dedicated, value: sim, effect: NoSchedule}}]\nstate_dir: {}\n",
            token.trim(),
            pin.trim(),
            dir.path().join(format!("n{i}")).display()
        );
            let cfg = config::from_source(&Source::from_text(format!("sim-{i}.yaml"), yaml), None)
                .map_err(|e| e.to_string())?;
            let sem = sem.clone();
            joins.spawn(async move {
                let agent = Agent::new(cfg);
                let joined = {
                    let _permit = sem.acquire().await.map_err(|e| e.to_string())?;
                    agent.join_and_register().await.map_err(|e| e.to_string())?
                };
                Ok::<_, String>((agent, joined))
            });
        }
        let mut agents = Vec::new();
        while let Some(r) = joins.join_next().await {
            agents.push(r.map_err(|e| e.to_string())??);
        }
        let join_time = t0.elapsed();
        let join_cpu = cpu_seconds() - cpu0;
        println!(
            "joined {} nodes in {:.1}s (join + register, concurrency {}), agent CPU {:.1}s",
            agents.len(),
            join_time.as_secs_f64(),
            a.join_concurrency,
            join_cpu
        );

        let mut all_metrics: Vec<Arc<Metrics>> = Vec::new();
        let tasks = tokio_util::task::TaskTracker::new();
        for (agent, joined) in agents {
            let (_tx, rx) = watch::channel(joined.client.clone());
            let Some(node) = joined.node else { continue };
            all_metrics.push(agent.metrics.clone());
            let cancel = cancel.clone();
            tasks.spawn(async move {
                // `_tx` lives as long as the loop: the client never changes in this bench.
                let _keep = _tx;
                heartbeat::run(
                    rx,
                    Heartbeat {
                        name: agent.cfg.node.name.clone(),
                        node,
                        facts: joined.facts,
                        timing: Timing::default(),
                        metrics: agent.metrics.clone(),
                        status: agent.status.clone(),
                    },
                    cancel,
                )
                .await
            });
        }
        let sum = |ms: &[Arc<Metrics>]| {
            let mut by: std::collections::BTreeMap<(String, String, String), u64> =
                Default::default();
            for m in ms {
                for (v, r, res, n) in m.api_requests_by() {
                    *by.entry((v, r, res)).or_default() += n;
                }
            }
            by
        };
        // Let the first renewals settle, then measure the steady state.
        tokio::time::sleep(Duration::from_secs(15)).await;
        let before = sum(&all_metrics);
        let rss1 = rss_bytes();
        let cpu1 = cpu_seconds();
        let w0 = Instant::now();
        tokio::time::sleep(a.duration).await;
        let window = w0.elapsed();
        let cpu2 = cpu_seconds();
        let rss2 = rss_bytes();
        let after = sum(&all_metrics);
        cancel.cancel();
        tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await;

        let n = all_metrics.len() as f64;
        let minutes = window.as_secs_f64() / 60.0;
        println!(
            "steady state: {} nodes for {:.0}s (server pid {server_pid}, separate process)",
            all_metrics.len(),
            window.as_secs_f64()
        );
        let mut total = 0u64;
        for (k, v) in &after {
            let d = v - before.get(k).copied().unwrap_or(0);
            if d == 0 {
                continue;
            }
            total += d;
            println!(
                "  {:>7} {:<14} {:<6} {:>8} requests = {:.2} per node per minute",
                k.0,
                k.1,
                k.2,
                d,
                d as f64 / n / minutes
            );
        }
        println!(
        "  total {} requests = {:.2} per node per minute (kubelet: ~6 Lease renewals + rare status updates)",
        total,
        total as f64 / n / minutes
    );
        let cpu = cpu2 - cpu1;
        println!(
        "agent CPU: {:.2}s over {:.0}s = {:.2}% of one core for {} nodes = {:.4}% of a core per node",
        cpu,
        window.as_secs_f64(),
        100.0 * cpu / window.as_secs_f64(),
        all_metrics.len(),
        100.0 * cpu / window.as_secs_f64() / n
    );
        println!(
        "agent memory: RSS {:.1} MiB before agents, {:.1} MiB joined, {:.1} MiB at end = {:.1} KiB per node",
        rss0 as f64 / 1048576.0,
        rss1 as f64 / 1048576.0,
        rss2 as f64 / 1048576.0,
        (rss2.saturating_sub(rss0)) as f64 / 1024.0 / n
    );
        drop(server);
        Ok(())
    }
}
