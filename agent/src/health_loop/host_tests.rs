//! Checks against real conditions made on this host: a tmpfs filled to the threshold, a filesystem
//! remounted read-only, a process tree hitting a pids cgroup limit, kernel-log lines from a fixture,
//! NPD plugins and an NPD config read unchanged. Mounting and cgroups need root; as another user
//! those tests say so and pass.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use keel_common::{Diagnostics, Source};

use crate::config::health::{validate, CheckSpec, HealthConfig, HealthFile};
use crate::health::check::Runner;
use crate::health::outcome::Status;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A skip fails under `KEEL_TESTS_STRICT=1` (CI): an early return would pass as `ok`.
macro_rules! skip {
    ($why:expr) => {{
        assert!(
            std::env::var_os("KEEL_TESTS_STRICT").is_none_or(|v| v != "1"),
            "cannot run here, and KEEL_TESTS_STRICT=1 forbids skipping: {}",
            $why
        );
        eprintln!("skipped: {}", $why);
        return;
    }};
}

macro_rules! require_root {
    () => {
        if !is_root() {
            skip!("this test mounts filesystems or makes cgroups and needs root");
        }
    };
}

fn config(yaml: &str, dir: &Path) -> HealthConfig {
    let src = Source::from_text(dir.join("agent.yaml"), yaml);
    let raw: HealthFile = keel_common::config::parse(&src).unwrap();
    let mut d = Diagnostics::new(&src);
    let cfg = validate(&raw, "health", crate::config::Os::Linux, &mut d);
    d.finish(cfg).unwrap()
}

fn one(yaml: &str, dir: &Path) -> CheckSpec {
    config(yaml, dir).checks.remove(0)
}

/// A tmpfs mounted on a temp dir, unmounted on drop even when the test fails.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(opts: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                opts,
                "keel-test",
                dir.path().to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs failed");
        Tmpfs { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn remount(&self, opt: &str) {
        let st = Command::new("mount")
            .args([
                "-o",
                &format!("remount,{opt}"),
                self.path().to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(st.success(), "remount {opt} failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn disk_check_turns_problem_when_tmpfs_is_filled_to_the_threshold() {
    require_root!();
    let fs = Tmpfs::mount("size=4m,nr_inodes=200");
    let spec = one(
        &format!(
            "checks:\n  - name: scratch\n    kind: disk\n    path: {}\n    min_free: 50%\n    min_free_inodes: 20%\n",
            fs.path().display()
        ),
        fs.path(),
    );
    let runner = Runner::new(spec);
    let o = runner.run_once().await;
    assert_eq!(o.status, Status::Ok, "{o:?}");
    // Fill 3 MiB of 4: below 50% free.
    let mut f = std::fs::File::create(fs.path().join("fill")).unwrap();
    f.write_all(&vec![0x5a; 3 << 20]).unwrap();
    f.sync_all().unwrap();
    drop(f); // an open file keeps its blocks after removal
    let o = runner.run_once().await;
    assert_eq!(
        (o.status, o.reason.as_str()),
        (Status::Problem, "DiskSpaceLow"),
        "{o:?}"
    );
    std::fs::remove_file(fs.path().join("fill")).unwrap();
    assert_eq!(runner.run_once().await.status, Status::Ok);
    // Inodes: use up more than 80% of 200.
    for i in 0..180 {
        std::fs::File::create(fs.path().join(format!("f{i}"))).unwrap();
    }
    let o = runner.run_once().await;
    assert_eq!(
        (o.status, o.reason.as_str()),
        (Status::Problem, "InodesLow"),
        "{o:?}"
    );
}

#[tokio::test]
async fn readonly_check_sees_a_filesystem_remounted_read_only() {
    require_root!();
    let fs = Tmpfs::mount("size=1m");
    let spec = one(
        &format!(
            "checks:\n  - name: ro\n    kind: readonly\n    paths: [{}]\n",
            fs.path().display()
        ),
        fs.path(),
    );
    assert_eq!(spec.condition, "ReadonlyFilesystem");
    let runner = Runner::new(spec);
    assert_eq!(runner.run_once().await.status, Status::Ok);
    fs.remount("ro");
    let o = runner.run_once().await;
    assert_eq!(o.status, Status::Problem, "{o:?}");
    assert!(
        o.message.contains(&fs.path().display().to_string()),
        "{o:?}"
    );
    fs.remount("rw");
    assert_eq!(runner.run_once().await.status, Status::Ok);
}

/// A pids cgroup (v2 under /sys/fs/cgroup, else the v1 pids hierarchy), removed on drop after its
/// processes are killed.
struct PidsCgroup {
    path: PathBuf,
    leader: Option<std::process::Child>,
}

impl PidsCgroup {
    fn create(name: &str) -> Option<PidsCgroup> {
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers");
        let base = if std::fs::read_to_string(v2).is_ok_and(|c| c.contains("pids")) {
            // A child only gets pids.max when the parent delegates the controller.
            let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+pids");
            PathBuf::from("/sys/fs/cgroup")
        } else if Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists() {
            PathBuf::from("/sys/fs/cgroup/pids")
        } else {
            return None;
        };
        let path = base.join(name);
        std::fs::create_dir(&path).ok()?;
        Some(PidsCgroup { path, leader: None })
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        if let Some(mut c) = self.leader.take() {
            // Kill everything in the group, then remove it.
            if let Ok(procs) = std::fs::read_to_string(self.path.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|p| p.parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test]
async fn pids_check_reports_a_process_tree_hitting_its_cgroup_limit() {
    require_root!();
    let name = format!("keel-test-pids-{}", std::process::id());
    let Some(mut cg) = PidsCgroup::create(&name) else {
        skip!("no pids cgroup controller on this machine");
    };
    std::fs::write(cg.path.join("pids.max"), "10").unwrap();
    let spec = one(
        &format!(
            "checks:\n  - name: pids\n    kind: pids\n    max_used: 90%\n    cgroup: {}\n",
            cg.path.display()
        ),
        Path::new("/tmp"),
    );
    let runner = Runner::new(spec);
    assert_eq!(runner.run_once().await.status, Status::Ok);
    // A shell joins the cgroup, then forks sleepers until the limit refuses more.
    let script = format!(
        "echo $$ > {}/cgroup.procs; i=0; while [ $i -lt 30 ]; do sleep 60 & i=$((i+1)); done 2>/dev/null; wait",
        cg.path.display()
    );
    cg.leader = Some(Command::new("sh").args(["-c", &script]).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut o = runner.run_once().await;
    while o.status != Status::Problem && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        o = runner.run_once().await;
    }
    assert_eq!(
        (o.status, o.reason.as_str()),
        (Status::Problem, "PIDsExhausted"),
        "{o:?}"
    );
    assert!(o.message.contains("of 10 PIDs"), "{o:?}");
}

#[tokio::test]
async fn kernel_log_fixture_raises_and_then_clears_after_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("kmsg");
    std::fs::write(
        &log,
        "6,1,1,-;boot noise before the agent started: Out of memory: Killed process 1\n",
    )
    .unwrap();
    let spec = one(
        &format!(
            r#"checks:
  - name: kernel
    kind: kernel_log
    source: {}
    window: 2s
    condition: KernelDeadlock
    patterns:
      - reason: OOMKilling
        regex: "Out of memory: Kill(ed)? process \\d+"
      - reason: TaskHung
        regex: "task \\S+:\\w+ blocked for more than \\w+ seconds\\."
      - reason: FilesystemErrors
        regex: "EXT4-fs error"
        count: 2
"#,
            log.display()
        ),
        dir.path(),
    );
    let runner = Runner::new(spec);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // What was in the log before the start is not reported.
    assert_eq!(runner.run_once().await.status, Status::Ok);
    let fixture = include_str!("fixtures/kmsg-problems.txt");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(fixture.as_bytes())
        .unwrap();
    // The reader thread takes the lines in its own time: wait until all four matched (on a loaded
    // machine the first Problem can come after only the OOM line).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut o = runner.run_once().await;
    while (o.status != Status::Problem || o.value != Some(3.0)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        o = runner.run_once().await;
    }
    assert_eq!(o.status, Status::Problem, "{o:?}");
    assert_eq!(o.reason, "OOMKilling");
    assert!(o.message.contains("Killed process 23107"), "{o:?}");
    assert_eq!(
        o.value,
        Some(3.0),
        "OOM, hung task and 2 fs errors all matched: {o:?}"
    );
    // No new lines: the condition clears once the window has passed (NPD #215/#728).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(runner.run_once().await.status, Status::Ok);
}

#[tokio::test]
async fn kernel_log_flood_is_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("kmsg");
    std::fs::write(&log, "").unwrap();
    let spec = one(
        &format!(
            "checks:\n  - name: kernel\n    kind: kernel_log\n    source: {}\n    max_lines_per_second: 100\n    patterns:\n      - reason: OOMKilling\n        regex: \"Out of memory\"\n",
            log.display()
        ),
        dir.path(),
    );
    let runner = Runner::new(spec);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    const FLOOD: u64 = 20_000;
    let mut flood = String::new();
    for i in 0..FLOOD {
        flood.push_str(&format!("6,{i},{i},-;usb 1-1: noisy device message {i}\n"));
    }
    let started = Instant::now();
    f.write_all(flood.as_bytes()).unwrap();
    // Every line is either matched or shed; wait until all are accounted for.
    let deadline = Instant::now() + Duration::from_secs(20);
    while runner.read_lines() + runner.dropped_lines() < FLOOD && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (read, dropped) = (runner.read_lines(), runner.dropped_lines());
    let secs = started.elapsed().as_secs() + 1;
    assert_eq!(read + dropped, FLOOD, "read {read}, dropped {dropped}");
    // At most 100 lines matched per second the reader spent (plus the second it started in), and
    // the budget was used rather than everything shed.
    assert!(
        read <= 100 * (secs + 1),
        "{read} lines matched in about {secs} s with a limit of 100/s"
    );
    assert!(
        read >= 100,
        "only {read} lines matched: the budget went unused"
    );
    assert_eq!(runner.run_once().await.status, Status::Ok);
    // The flood over and a new second begun, a real problem is seen again: shedding is per second,
    // not a reader that stays blind.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    f.write_all(b"3,20001,20001,-;Out of memory: Killed process 4242 (stress)\n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut o = runner.run_once().await;
    while o.status != Status::Problem && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        o = runner.run_once().await;
    }
    assert_eq!(o.status, Status::Problem, "{o:?}");
    assert_eq!(o.reason, "OOMKilling");
    assert_eq!(runner.dropped_lines(), dropped, "the OOM line was shed");
}

fn script(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn npd_config_and_plugins_run_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugin");
    std::fs::create_dir(&plugins).unwrap();
    script(&plugins, "ok.sh", "echo 'ntp is up'; exit 0");
    script(
        &plugins,
        "bad.sh",
        "echo 'ntp service is not running'; exit 1",
    );
    script(&plugins, "unknown.sh", "exit 3");
    script(&plugins, "hang.sh", "sleep 30");
    // node-problem-detector's custom plugin monitor format, as NPD ships it.
    let npd = r#"{
  "plugin": "custom",
  "pluginConfig": {
    "invoke_interval": "10s",
    "timeout": "2s",
    "max_output_length": 80,
    "concurrency": 3,
    "enable_message_change_based_condition_update": false
  },
  "source": "ntp-custom-plugin-monitor",
  "metricsReporting": true,
  "conditions": [
    {"type": "NTPProblem", "reason": "NTPIsUp", "message": "ntp service is up"},
    {"type": "NTPDown", "reason": "NTPIsUp", "message": "ntp service is up"},
    {"type": "NTPUnknown", "reason": "NTPIsUp", "message": "ntp service is up"},
    {"type": "NTPHang", "reason": "NTPIsUp", "message": "ntp service is up"}
  ],
  "rules": [
    {"type": "permanent", "condition": "NTPProblem", "reason": "NTPIsDown", "path": "./plugin/ok.sh", "timeout": "1s"},
    {"type": "permanent", "condition": "NTPDown", "reason": "NTPIsDown", "path": "./plugin/bad.sh", "timeout": "1s"},
    {"type": "permanent", "condition": "NTPUnknown", "reason": "NTPIsDown", "path": "./plugin/unknown.sh"},
    {"type": "permanent", "condition": "NTPHang", "reason": "NTPIsDown", "path": "./plugin/hang.sh", "timeout": "500ms"},
    {"type": "temporary", "reason": "NTPIsDown", "path": "./plugin/bad.sh"}
  ]
}"#;
    std::fs::write(dir.path().join("ntp-monitor.json"), npd).unwrap();
    let cfg = config("npd_plugin_configs: [ntp-monitor.json]\n", dir.path());
    assert_eq!(cfg.checks.len(), 5);
    let registry = prometheus::Registry::new();
    let started = Instant::now();
    let out = super::run_once(&cfg, &registry).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the hung plugin cannot hold the others"
    );
    let by_cond = |c: &str| {
        let i = cfg.checks.iter().position(|s| s.condition == c).unwrap();
        out[i].1.clone()
    };
    let ok = by_cond("NTPProblem");
    assert_eq!(
        (ok.status, ok.reason.as_str(), ok.message.as_str()),
        (Status::Ok, "NTPIsUp", "ntp is up")
    );
    let bad = by_cond("NTPDown");
    assert_eq!(
        (bad.status, bad.reason.as_str(), bad.message.as_str()),
        (Status::Problem, "NTPIsDown", "ntp service is not running")
    );
    assert_eq!(by_cond("NTPUnknown").status, Status::Unknown);
    let hang = by_cond("NTPHang");
    assert_eq!(
        (hang.status, hang.reason.as_str()),
        (Status::Unknown, "PluginTimeout")
    );
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        text.contains("keel_agent_node_condition{condition=\"NTPDown\",status=\"True\"} 1"),
        "{text}"
    );
}

/// NPD's own `kernel-monitor.json`, unchanged but for `logPath` (a file of kmsg records here).
fn npd_kernel_monitor(dir: &Path, log: &Path) -> Vec<CheckSpec> {
    let text = include_str!("../config/fixtures/npd/kernel-monitor.json")
        .replace("\"/dev/kmsg\"", &format!("{:?}", log.display().to_string()));
    std::fs::write(dir.join("kernel-monitor.json"), text).unwrap();
    config("npd_plugin_configs: [kernel-monitor.json]\n", dir).checks
}

/// Seconds since boot, as kmsg stamps records.
fn uptime_us() -> u64 {
    let t = std::fs::read_to_string("/proc/uptime").unwrap();
    (t.split_whitespace().next().unwrap().parse::<f64>().unwrap() * 1e6) as u64
}

#[tokio::test]
async fn npd_kernel_monitor_reads_kmsg_records_with_lookback_events_and_sticky_conditions() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("kmsg");
    // Before the start: one record 10 min old (beyond the 5m lookback) and one 1 min old.
    let up = uptime_us();
    std::fs::write(
        &log,
        format!(
            "3,1,{},-;XFS (sdb1): Corruption detected. Shutting down filesystem\n\
             3,2,{},-;unregister_netdevice: waiting for eth0 to become free. Usage count = 2\n",
            up.saturating_sub(600_000_000),
            up.saturating_sub(60_000_000)
        ),
    )
    .unwrap();
    let checks = npd_kernel_monitor(dir.path(), &log);
    let by_name = |n: &str| checks.iter().find(|c| c.name == n).unwrap().clone();
    let xfs = by_name("kernel-monitor/XfsShutdown");
    let deadlock = by_name("kernel-monitor/KernelDeadlock");
    let events = by_name("kernel-monitor/events");
    // One reader for the monitor, as the health loop shares it.
    let CheckKindLog { monitor } = log_monitor_of(&xfs);
    let w = crate::health::log_monitor::Watcher::start(monitor);
    let xfs = Runner::with_log(xfs, Some(w.clone()));
    let deadlock = Runner::with_log(deadlock, Some(w.clone()));
    let events = Runner::with_log(events, Some(w.clone()));
    let mut changes = events.changes().unwrap();

    // The lookback finds the recent record only: an event, and XfsShutdown stays False.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen.extend(events.take_events());
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].0, "UnregisterNetDevice");
    let o = xfs.run_once().await;
    assert_eq!(
        o.status,
        Status::Ok,
        "a record older than the lookback was reported: {o:?}"
    );
    assert_eq!(o.reason, "XfsHasNotShutDown");
    assert_eq!(o.message, "XFS has not shutdown");

    // New records: a temporary rule (one event per match, two matches two events), a permanent
    // one (the condition turns True and stays), and a multi-line-free line that matches nothing.
    changes.borrow_and_update();
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    let t = uptime_us();
    let written = Instant::now();
    writeln!(f, "6,3,{t},-;Killed process 4242 (stress) total-vm:1024kB, anon-rss:512kB, file-rss:0kB, shmem-rss:0kB").unwrap();
    writeln!(f, "6,4,{t},-;Killed process 4243 (stress) total-vm:1024kB, anon-rss:512kB, file-rss:0kB, shmem-rss:0kB").unwrap();
    writeln!(f, "6,5,{t},-;usb 1-1: new high-speed USB device").unwrap();
    writeln!(
        f,
        "3,6,{t},-;INFO: task docker:1234 blocked for more than 120 seconds."
    )
    .unwrap();
    // The reader wakes the checks itself: no interval to wait for.
    tokio::time::timeout(Duration::from_secs(5), changes.changed())
        .await
        .expect("no wake-up from the reader")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut o = deadlock.run_once().await;
    while o.status != Status::Problem && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        o = deadlock.run_once().await;
    }
    let latency = written.elapsed();
    assert_eq!(o.status, Status::Problem, "{o:?}");
    assert_eq!(o.reason, "DockerHung");
    assert_eq!(
        o.message,
        "INFO: task docker:1234 blocked for more than 120 seconds."
    );
    // Generous for a loaded machine; tests/bench/agent_health.sh measures it.
    assert!(latency < Duration::from_secs(3), "{latency:?}");
    let mut seen = events.take_events();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen.extend(events.take_events());
    }
    let reasons: Vec<&str> = seen.iter().map(|(r, _)| r.as_str()).collect();
    // "task docker:1234 blocked" is also TaskHung's pattern: a temporary event beside the condition.
    assert_eq!(
        reasons,
        ["OOMKilling", "OOMKilling", "TaskHung"],
        "{seen:?}"
    );
    assert!(
        seen[0].1.starts_with("Killed process 4242 (stress)"),
        "{seen:?}"
    );
    // Sticky, as NPD: later harmless lines do not clear it.
    writeln!(f, "6,7,{t},-;all quiet").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(deadlock.run_once().await.status, Status::Problem);
    assert_eq!(xfs.run_once().await.status, Status::Ok);
    assert_eq!(
        w.counts.dropped.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

struct CheckKindLog {
    monitor: std::sync::Arc<crate::config::npd::LogMonitorSpec>,
}

fn log_monitor_of(c: &CheckSpec) -> CheckKindLog {
    match &c.kind {
        crate::config::health::CheckKind::LogMonitor { monitor, .. } => CheckKindLog {
            monitor: monitor.clone(),
        },
        k => panic!("{k:?}"),
    }
}

#[tokio::test]
async fn npd_filelog_monitor_takes_the_message_group_and_matches_across_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("kern.log");
    std::fs::write(&log, "").unwrap();
    // A multi-line rule (two lines in NPD's buffer) and filelog's message extraction.
    let cfg = format!(
        r#"{{
  "plugin": "filelog",
  "pluginConfig": {{"timestamp": "^.{{15}}", "message": "kernel: \\[.*\\] (.*)", "timestampFormat": "Jan _2 15:04:05"}},
  "logPath": {:?},
  "bufferSize": 10,
  "source": "kernel-monitor",
  "conditions": [{{"type": "KernelDeadlock", "reason": "KernelHasNoDeadlock", "message": "kernel has no deadlock"}}],
  "rules": [
    {{"type": "permanent", "condition": "KernelDeadlock", "reason": "AUFSUmountHung",
      "pattern": "task umount\\.aufs:\\w+ blocked for more than \\w+ seconds\\.\\nCall Trace:",
      "patternGeneratedMessageSuffix": "see the node's kernel log"}}
  ]
}}"#,
        log.display().to_string()
    );
    std::fs::write(dir.path().join("filelog.json"), cfg).unwrap();
    let checks = config("npd_plugin_configs: [filelog.json]\n", dir.path()).checks;
    let runner = Runner::new(checks[0].clone());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    writeln!(f, "Dec  1 23:16:06 node kernel: [ 1.000] task umount.aufs:123 blocked for more than 120 seconds.").unwrap();
    writeln!(
        f,
        "Dec  1 23:16:06 node systemd[1]: not the kernel, skipped by the message regex"
    )
    .unwrap();
    writeln!(f, "Dec  1 23:16:06 node kernel: [ 1.001] Call Trace:").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut o = runner.run_once().await;
    while o.status != Status::Problem && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        o = runner.run_once().await;
    }
    assert_eq!(o.status, Status::Problem, "{o:?}");
    assert_eq!(o.reason, "AUFSUmountHung");
    assert_eq!(
        o.message,
        "task umount.aufs:123 blocked for more than 120 seconds.\nCall Trace:; see the node's kernel log"
    );
}

/// Appends entries to a journal file in `dir` with systemd's own writer (systemd-journal-remote
/// reading the journal export format), so `journalctl --directory` reads a real journal.
fn journal_write(dir: &Path, file: &str, entries: &[(&str, &str, u64)]) {
    let mut export = String::new();
    for (ident, msg, usec) in entries {
        export.push_str(&format!(
            "MESSAGE={msg}\nSYSLOG_IDENTIFIER={ident}\n_BOOT_ID=0123456789abcdef0123456789abcdef\n__REALTIME_TIMESTAMP={usec}\n\n"
        ));
    }
    let mut p = Command::new("/lib/systemd/systemd-journal-remote")
        .arg(format!("--output={}", dir.join(file).display()))
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("systemd-journal-remote");
    p.stdin
        .take()
        .unwrap()
        .write_all(export.as_bytes())
        .unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test]
async fn npd_journald_monitor_follows_the_journal_with_identifier_and_lookback() {
    if !Path::new("/lib/systemd/systemd-journal-remote").exists()
        || Command::new("journalctl")
            .arg("--version")
            .output()
            .is_err()
    {
        skip!(
            "needs journalctl and systemd-journal-remote (apt-get install systemd-journal-remote)"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    std::fs::create_dir(&journal).unwrap();
    #[allow(clippy::disallowed_methods)] // journal timestamps are wall time
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let corrupt = "Handler for GET /containers/json returned error: readlink /var/lib/docker/overlay2/l/ABC: invalid argument";
    // Before the start: beyond the 5m lookback (ignored), within it but another identifier
    // (ignored), and within it (taken).
    journal_write(
        &journal,
        "a.journal",
        &[
            ("dockerd", corrupt, now - 600_000_000),
            ("containerd", "Error trying v2 registry: failed to register layer: rename /var/lib/docker/image/a /var/lib/docker/image/b: directory not empty", now - 60_000_000),
            ("dockerd", "Error trying v2 registry: failed to register layer: rename /var/lib/docker/image/x /var/lib/docker/image/y: directory not empty", now - 60_000_000),
        ],
    );
    // NPD's own docker-monitor.json, unchanged but for the journal's directory.
    let text = include_str!("../config/fixtures/npd/docker-monitor.json").replace(
        "\"/var/log/journal\"",
        &format!("{:?}", journal.display().to_string()),
    );
    std::fs::write(dir.path().join("docker-monitor.json"), text).unwrap();
    let checks = config("npd_plugin_configs: [docker-monitor.json]\n", dir.path()).checks;
    let CheckKindLog { monitor } = log_monitor_of(&checks[0]);
    let w = crate::health::log_monitor::Watcher::start(monitor);
    let overlay = Runner::with_log(checks[0].clone(), Some(w.clone()));
    assert_eq!(checks[0].name, "docker-monitor/CorruptDockerOverlay2");
    let events = Runner::with_log(checks[1].clone(), Some(w.clone()));
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen.extend(events.take_events());
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].0, "CorruptDockerImage");
    assert!(seen[0].1.contains("/var/lib/docker/image/x"), "{seen:?}");
    assert_eq!(
        overlay.run_once().await.status,
        Status::Ok,
        "an entry older than the lookback was read"
    );
    // A new entry (in a new journal file, as journald rotates) is followed.
    journal_write(&journal, "b.journal", &[("dockerd", corrupt, now + 1)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut o = overlay.run_once().await;
    while o.status != Status::Problem && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        o = overlay.run_once().await;
    }
    assert_eq!(o.status, Status::Problem, "{o:?}");
    assert_eq!(o.reason, "CorruptDockerOverlay2");
    assert_eq!(o.message, corrupt);
    // Stopping the monitor ends its journalctl.
    drop((overlay, events, w));
    let deadline = Instant::now() + Duration::from_secs(5);
    let running = || {
        let out = Command::new("pgrep")
            .args(["-f", &format!("journalctl.*{}", journal.display())])
            .output()
            .unwrap();
        out.status.success()
    };
    while running() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !running(),
        "journalctl still running after the monitor stopped"
    );
}
