//! What `mode: nat`'s conntrack work costs keel-lb (not in the default suite): counting open flows
//! per backend (one ctnetlink dump of the whole table, every 5 s) and ending one backend's flows
//! (one ctnetlink delete filtered by mark), at table sizes up to a loaded LB's. The anchor is
//! reading the same table through /proc/net/nf_conntrack in the same run.
//!
//! Build and run (root: a network namespace of its own, which the process enters):
//!
//! ```text
//! cargo build --release -p keel-e2e --example nat_flows_bench
//! target/release/examples/nat_flows_bench [--sizes 1000,10000,100000] [--reps 5]
//! ```
//!
//! Per size N (at most 12,750,000): N UDP flows on loopback (each from a fresh socket), marked by nft as keel-lb marks
//! them: ten marks (ten backends), N/10 flows each. Then, medians of `reps`: the dump that counts
//! open flows per mark (wall and this thread's CPU time), the procfs read of the same table, and
//! the delete of one mark's N/10 flows (the flows are made again before each delete).

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

fn sh(c: &str) {
    let out = Command::new("sh").arg("-c").arg(c).output().expect("sh");
    assert!(
        out.status.success(),
        "{c}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec the call fills.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// `n` flows to ports 9000..9010 (mark 0x10000 × (port - 8999)), each from its own source address
/// and port on loopback (127.1.x.1:10000-59999), so no two are one.
fn make_flows(n: usize, only_port: Option<u16>) {
    for i in 0..n {
        let port = only_port.unwrap_or(9000 + (i % 10) as u16);
        let src = std::net::SocketAddr::from((
            [127, 1, (i / 50_000) as u8, 1],
            10_000 + (i % 50_000) as u16,
        ));
        let s = UdpSocket::bind(src).expect("bind");
        s.send_to(b"x", ("127.0.0.1", port)).expect("send");
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut sizes = vec![1_000usize, 10_000, 100_000];
    let mut reps = 5usize;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        match (args[i].as_str(), args.get(i + 1)) {
            ("--sizes", Some(v)) => {
                sizes = v
                    .split(',')
                    .map(|s| s.parse().expect("--sizes N,N,.."))
                    .collect()
            }
            ("--reps", Some(v)) => reps = v.parse().expect("--reps R"),
            (a, _) => panic!("unknown flag {a} (--sizes N,N,.. --reps R)"),
        }
        i += 2;
    }
    // A namespace of this process's own: its conntrack table holds only what this run makes, and
    // it goes when the process exits.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare (run as root)");
    sh("ip link set lo up");
    let mut rules = String::from(
        "table inet bench {\n chain o {\n  type filter hook output priority 0; policy accept;\n",
    );
    for k in 0..10u32 {
        rules += &format!(
            "  udp dport {} ct mark set {:#x}\n",
            9000 + k,
            (k + 1) << 16
        );
    }
    rules += " }\n}\n";
    sh(&format!("printf '{rules}' | nft -f -"));
    sh("sysctl -qw net.netfilter.nf_conntrack_udp_timeout=600 net.netfilter.nf_conntrack_max=1048576");
    println!("| flows in the table | count by mark (dump), wall ms | its CPU ms | /proc/net/nf_conntrack read, wall ms | dump / procfs | delete one mark's flows, ms | flows deleted |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &sizes {
        sh("nft flush ruleset inet 2>/dev/null; true");
        sh(&format!("printf '{rules}' | nft -f -"));
        // Start from an empty table.
        keel_lb::conntrack::delete_marked(0, 0).expect("flush");
        make_flows(n, None);
        let (mut wall, mut cpu, mut procfs, mut del) = (vec![], vec![], vec![], vec![]);
        let (mut deleted, mut flows) = (0, 0);
        for _ in 0..reps {
            let (t, c) = (Instant::now(), thread_cpu());
            let counts = keel_lb::conntrack::open_flows_by_mark(0xffff_0000).expect("dump");
            wall.push(t.elapsed().as_secs_f64() * 1e3);
            cpu.push((thread_cpu() - c).as_secs_f64() * 1e3);
            let total: u64 = counts.values().sum();
            assert_eq!(total as usize, n, "counted {counts:?}");
            flows = total;
            let t = Instant::now();
            let text = std::fs::read_to_string("/proc/net/nf_conntrack").unwrap_or_default();
            procfs.push(t.elapsed().as_secs_f64() * 1e3);
            assert!(
                text.lines().count() as u64 >= total,
                "procfs shows {} lines",
                text.lines().count()
            );
            let before = counts.get(&0x10000).copied().unwrap_or(0);
            let t = Instant::now();
            keel_lb::conntrack::delete_marked(0x10000, 0xffff_0000).expect("delete");
            del.push(t.elapsed().as_secs_f64() * 1e3);
            let after = keel_lb::conntrack::open_flows_by_mark(0xffff_0000).expect("dump");
            assert_eq!(after.get(&0x10000), None);
            deleted = before;
            // Make the deleted mark's flows again for the next rep.
            make_flows(before as usize, Some(9000));
        }
        let (w, p) = (median(wall), median(procfs));
        println!(
            "| {flows} | {w:.2} | {:.2} | {p:.2} | {:.2}x | {:.2} | {deleted} |",
            median(cpu),
            w / p,
            median(del)
        );
    }
}
