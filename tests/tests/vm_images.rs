//! The images booted as a platform team would: Debian 12 VMs (images/linux/build-image.sh lb and
//! node) under QEMU TCG on a private L2 segment with the host's test namespaces, configured on first
//! boot from a seed disk. The API test server runs in a host namespace that the node VM can reach only
//! through the VIP (bridge ports isolated).
//!
//! LB VM: keel-lb.service reaches active through Type=notify, nothing but keel-lb listens, the
//! frontend answers through the VIP, `systemctl reload` with a bad file fails and keeps serving, the
//! package's postinst starts keel-lb only once configured; the backup takes the VIP over when the LB
//! VM (master) is powered off.
//! Node VM: the agent joins on first boot through the VIP and kubectl shows the Node with its pool's
//! labels and taints; SIGSTOP of keel-agent makes systemd's watchdog restart it (same Node); with the
//! master LB powered off the node's Lease keeps renewing through the backup; `systemctl stop
//! keel-agent` cordons and drains (`DRAIN=stop`: health.drain.on_stop); a reboot does not join again.
//!
//! Two tests. CI runs the first: one LB VM and the node VM, with the backup LB a keel-lb in a host
//! namespace (two TCG VMs at a time, as many as CI's two cores carry beside the suite). The second,
//! `tests/run --vm-full`, has both LBs as VMs (three TCG VMs: about 16 minutes of both cores beside
//! the suite, more than CI's budget). Serial console logs (and each VM's journal, on failure) stay
//! under target/test-artifacts/vm_images*/.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keel_e2e::netns::{wait_until, Proc, Topology};
use keel_e2e::vm::{b64, fetch, Vm, VmSpec};
use keel_e2e::{images, require_root};

const VIP: &str = "198.18.0.100";

fn need_tools() {
    for t in [
        "qemu-system-x86_64",
        "qemu-img",
        "debootstrap",
        "mkfs.ext4",
        "flock",
        "socat",
        "kubectl",
    ] {
        if !keel_e2e::have(t) {
            keel_e2e::skip!("{t} is not installed (.ci/run installs it)");
        }
    }
}

/// Runs `command` in the guest (bounded); its exit status and output, or a panic naming the VM.
fn sh(vm: &Vm, command: &str, limit: Duration) -> (i32, String) {
    vm.run(command, limit)
        .unwrap_or_else(|| panic!("{}: no answer to `{command}` within {limit:?}", vm.name))
}

/// `systemctl show -p <prop>` of a unit: the value.
fn unit_prop(vm: &Vm, unit: &str, prop: &str) -> String {
    sh(
        vm,
        &format!("systemctl show -P {prop} {unit}"),
        Duration::from_secs(30),
    )
    .1
    .trim()
    .to_string()
}

/// kubectl with the admin kubeconfig, from the API server's namespace: (success, stdout, stderr).
fn kubectl(t: &Topology, kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let mut all = vec![
        "kubectl",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--request-timeout",
        "10s",
    ];
    all.extend_from_slice(args);
    let out = t.exec("api", &all);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn jsonpath(t: &Topology, kc: &Path, what: &[&str], path: &str) -> Option<String> {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    let p = format!("jsonpath={path}");
    args.extend(["-o", &p]);
    let (ok, out, _) = kubectl(t, kc, &args);
    ok.then(|| out.trim().to_string())
}

fn lease_renew_time(t: &Topology, kc: &Path, node: &str) -> Option<String> {
    jsonpath(
        t,
        kc,
        &["lease", "-n", "kube-node-lease", node],
        "{.spec.renewTime}",
    )
    .filter(|s| !s.is_empty())
}

/// Waits until the node's Lease was renewed `n` times after `since` (its renewTime at the start),
/// each renewal a later time than the one before; the renewTimes seen.
fn lease_renewals(
    t: &Topology,
    kc: &Path,
    node: &str,
    since: Option<String>,
    n: usize,
    limit: Duration,
) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let mut last = since;
    let ok = wait_until(limit, || {
        if let Some(r) = lease_renew_time(t, kc, node) {
            // RFC 3339 MicroTime, always UTC and the same width: text order is time order.
            if last.as_ref().is_none_or(|l| r > *l) {
                seen.push(r.clone());
                last = Some(r);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        seen.len() >= n
    });
    assert!(
        ok,
        "{node}'s Lease renewed {} times within {limit:?}, not {n}: {seen:?}",
        seen.len()
    );
    seen
}

fn csr_count(t: &Topology, kc: &Path) -> usize {
    let (ok, out, err) = kubectl(t, kc, &["get", "csr", "-o", "name"]);
    assert!(ok, "kubectl get csr: {err}");
    out.lines().filter(|l| !l.trim().is_empty()).count()
}

/// The host side: a bridge with the client, the web backend and the API test server (its CA, admin
/// kubeconfig and bootstrap token in `api/` of the artifacts).
struct Lab {
    t: Topology,
    api_dir: PathBuf,
    admin: PathBuf,
    token: String,
    pin: String,
    procs: Vec<Proc>,
}

fn lab(name: &str, artifacts: &Path) -> Lab {
    let mut t = Topology::new(name);
    t.bridge();
    t.host("client", &["198.18.0.1/24"]);
    t.host("backend", &["198.18.0.2/24"]);
    t.host("api", &["198.18.0.3/24"]);
    let backend = t.spawn(
        "backend",
        "socat",
        &["TCP-LISTEN:8080,fork,reuseaddr", "SYSTEM:echo keel-backend"],
    );
    let api_dir = artifacts.join("api");
    let _ = std::fs::remove_dir_all(&api_dir);
    std::fs::create_dir_all(&api_dir).unwrap();
    let api = {
        let mut cmd = t.command(
            "api",
            keel_e2e::bin("keel-test-apiserver").to_str().unwrap(),
        );
        cmd.args(["--listen", "198.18.0.3:6443", "--dir"])
            .arg(&api_dir)
            .args(["--san", "198.18.0.3", "--san", VIP])
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(api_dir.join("apiserver.log")).unwrap());
        Proc::from_child(cmd.spawn().expect("keel-test-apiserver"), "api".into())
    };
    let admin = api_dir.join("admin.kubeconfig");
    assert!(
        wait_until(Duration::from_secs(30), || admin.exists()
            && api_dir.join("bootstrap-token").exists()),
        "the API test server wrote no admin kubeconfig"
    );
    let read = |f: &str| {
        std::fs::read_to_string(api_dir.join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    let (token, pin) = (read("bootstrap-token"), read("ca-pin"));
    Lab {
        t,
        api_dir,
        admin,
        token,
        pin,
        procs: vec![backend, api],
    }
}

/// An image as `images::image` returns it: (disk, kernel, initrd).
type Image = (PathBuf, PathBuf, PathBuf);

/// An LB VM's seed: it fronts the web backend (port 80) and the API server (6443) on the VIP.
fn lb_env(name: &str, addr: &str, prio: u32) -> String {
    format!(
        "HOSTNAME={name}\nADDRESS={addr}/24\nVIPS={VIP}/24\nVRRP_PRIORITY={prio}\nFRONTEND_PORT=80\nBACKENDS=198.18.0.2:8080\nAPI_BACKENDS=198.18.0.3:6443\n"
    )
}

fn node_env(lab: &Lab) -> String {
    format!(
        "HOSTNAME=node1\nADDRESS=198.18.0.21/24\nAPI_SERVER=https://{VIP}:6443\nTOKEN={}\nCA_PINS={}\nPOOL=pool-a\nLABELS=example.com/team=infra topology.kubernetes.io/zone=rack-1\nTAINTS=dedicated=infra:NoSchedule\nDRAIN=stop\n",
        lab.token, lab.pin
    )
}

fn boot(t: &Topology, name: &str, image: &Image, env: &str, mac: u8, dir: &Path) -> Vm {
    Vm::boot(
        t,
        VmSpec {
            name,
            disk: &image.0,
            kernel: &image.1,
            initrd: &image.2,
            env,
            mac_last: mac,
            dir,
        },
    )
}

fn answers(t: &Topology) -> bool {
    fetch(t, &format!("{VIP}:80")).is_some_and(|b| b.contains("keel-backend"))
}

fn has_vip(vm: &Vm) -> bool {
    vm.run("ip -4 -o addr show dev eth0", Duration::from_secs(30))
        .is_some_and(|(_, a)| a.contains(&format!("{VIP}/")))
}

/// The LB VM as booted: Type=notify and active, only keel-lb listening, serving through the VIP
/// (once it is master), a bad reload refused while serving, the package's start rule.
fn lb_vm_serves_and_refuses_a_bad_reload(t: &Topology, vm: &Vm) {
    // Type=notify and active: systemd moved the unit out of "activating" only on READY=1 (sent once
    // the listeners were bound and VRRP started), not merely because the process ran.
    let (_, show) = sh(
        vm,
        "systemctl show -p Type -p ActiveState -p SubState -p Result -p NRestarts keel-lb.service",
        Duration::from_secs(30),
    );
    for want in [
        "Type=notify",
        "ActiveState=active",
        "SubState=running",
        "Result=success",
        "NRestarts=0",
    ] {
        assert!(
            show.contains(want),
            "keel-lb.service: {want} not in\n{show}"
        );
    }
    // The status lines on the console, without their colours.
    let console = String::from_utf8_lossy(&std::fs::read(&vm.console).unwrap_or_default())
        .split('\x1b')
        .map(|part| {
            part.find('m')
                .filter(|_| part.starts_with('['))
                .map_or(part, |i| &part[i + 1..])
        })
        .collect::<String>();
    assert!(
        console.contains("Started keel-lb.service"),
        "the console does not show keel-lb.service started"
    );

    // Nothing listens but keel-lb (the image has no ssh, no resolver, no DHCP client).
    let (_, sockets) = sh(vm, "ss -Htulnp", Duration::from_secs(30));
    assert!(!sockets.trim().is_empty(), "no listening socket at all");
    for l in sockets.lines() {
        assert!(l.contains("\"keel-lb\""), "not keel-lb's: {l}\n{sockets}");
    }

    // Master (the higher priority): it holds the VIP, which answers from the client namespace.
    assert!(
        wait_until(Duration::from_secs(120), || has_vip(vm) && answers(t)),
        "{} does not hold the VIP or no answer from the backend through {VIP}:80",
        vm.name
    );

    // A bad file: `systemctl reload` fails (ExecReload = keel-lb reload), keel-lb keeps running
    // the old config and serving.
    let (rc, out) = sh(
        vm,
        "cp /etc/keel/lb.yaml /run/lb.good && echo 'bogus: 1' >> /etc/keel/lb.yaml && systemctl reload keel-lb",
        Duration::from_secs(120),
    );
    assert_ne!(rc, 0, "reload of a bad file succeeded: {out}");
    assert_eq!(unit_prop(vm, "keel-lb", "ActiveState"), "active");
    assert!(
        answers(t),
        "no answer through {VIP}:80 after a refused reload"
    );
    // And a good one reloads: the admin token reached `keel-lb reload` as a systemd credential.
    let (rc, out) = sh(
        vm,
        "cp /run/lb.good /etc/keel/lb.yaml && systemctl reload keel-lb",
        Duration::from_secs(120),
    );
    assert_eq!(rc, 0, "reload of the good file failed: {out}");

    // The package's start rule, run by its own postinst on the booted VM: with the packaged default
    // config it enables but does not start keel-lb; with a real config it starts it. (The backup
    // holds the VIP meanwhile.)
    let default = std::fs::read(images::repo().join("images/deb/lb.yaml")).unwrap();
    let (rc, out) = sh(
        vm,
        &format!(
            "systemctl stop keel-lb && echo {} | base64 -d > /etc/keel/lb.yaml && /var/lib/dpkg/info/keel-lb.postinst configure && systemctl is-enabled keel-lb && ! systemctl is-active keel-lb",
            b64(&default)
        ),
        Duration::from_secs(120),
    );
    assert_eq!(rc, 0, "postinst with the packaged default: {out}");
    assert!(out.contains("enabled, not started"), "{out}");
    let (rc, out) = sh(
        vm,
        "cp /run/lb.good /etc/keel/lb.yaml && /var/lib/dpkg/info/keel-lb.postinst configure && systemctl is-active keel-lb",
        Duration::from_secs(120),
    );
    assert_eq!(
        rc, 0,
        "postinst with a real config did not start keel-lb: {out}"
    );
    let (_, journal) = sh(
        vm,
        "journalctl -u keel-lb --no-pager",
        Duration::from_secs(60),
    );
    std::fs::write(vm.dir.join("keel-lb.journal"), &journal).unwrap();
}

/// The node joined on first boot through the VIP (the only way to the API server), with its pool's
/// labels and taints, as kubectl shows; one CSR. Returns the Node's uid.
fn node_joined_through_the_vip(lab: &Lab, node: &mut Vm) -> String {
    let (t, admin) = (&lab.t, &lab.admin);
    let state = node.wait_booted(Duration::from_secs(900));
    println!("node1 booted ({state}) in {:?}", node.age());
    let joined = wait_until(Duration::from_secs(300), || {
        lease_renew_time(t, admin, "node1").is_some()
    });
    if !joined {
        let (_, j) = sh(
            node,
            "journalctl -u keel-agent --no-pager | tail -n 40",
            Duration::from_secs(60),
        );
        panic!("node1 has no Lease within 300 s; the agent's journal ends:\n{j}");
    }
    println!("node1 joined {:?} after it was started", node.age());
    let (ok, out, err) = kubectl(t, admin, &["get", "node", "node1", "-o", "json"]);
    assert!(ok, "kubectl get node node1: {err}");
    let n: serde_json::Value = serde_json::from_str(&out).unwrap();
    let labels = &n["metadata"]["labels"];
    assert_eq!(labels["keel.io/pool"], "pool-a", "{labels}");
    assert_eq!(labels["example.com/team"], "infra", "{labels}");
    assert_eq!(labels["topology.kubernetes.io/zone"], "rack-1", "{labels}");
    assert_eq!(labels["kubernetes.io/hostname"], "node1", "{labels}");
    let taints = n["spec"]["taints"].as_array().expect("taints");
    assert_eq!(
        taints
            .iter()
            .map(|t| format!(
                "{}={}:{}",
                t["key"].as_str().unwrap_or(""),
                t["value"].as_str().unwrap_or(""),
                t["effect"].as_str().unwrap_or("")
            ))
            .collect::<Vec<_>>(),
        ["dedicated=infra:NoSchedule"]
    );
    let uid = n["metadata"]["uid"].as_str().expect("uid").to_string();
    assert_eq!(csr_count(t, admin), 1, "one CSR for the join");
    // The API server answers the node only through the VIP: its own address is out of reach.
    let (rc, _) = sh(
        node,
        "timeout 5 bash -c 'exec 3<>/dev/tcp/198.18.0.3/6443'",
        Duration::from_secs(30),
    );
    assert_ne!(rc, 0, "node1 reaches the API server without the VIP");
    let (rc, out) = sh(
        node,
        &format!("timeout 5 bash -c 'exec 3<>/dev/tcp/{VIP}/6443'"),
        Duration::from_secs(30),
    );
    assert_eq!(rc, 0, "node1 cannot reach the VIP's port 6443: {out}");
    uid
}

/// SIGSTOP: no more watchdog pings; systemd (WatchdogSec=60s) aborts and restarts the agent,
/// which keeps its identity: same Node, no new CSR.
fn watchdog_restarts_a_wedged_agent(lab: &Lab, node: &Vm, uid: &str) {
    let (t, admin) = (&lab.t, &lab.admin);
    let pid = unit_prop(node, "keel-agent", "MainPID");
    assert_eq!(unit_prop(node, "keel-agent", "NRestarts"), "0");
    let stopped = Instant::now();
    sh(node, &format!("kill -STOP {pid}"), Duration::from_secs(30));
    let restarted = wait_until(Duration::from_secs(240), || {
        std::thread::sleep(Duration::from_secs(2));
        let (_, show) = sh(
            node,
            "systemctl show -p NRestarts -p ActiveState -p MainPID keel-agent",
            Duration::from_secs(30),
        );
        !show.contains("NRestarts=0")
            && show.contains("ActiveState=active")
            && !show.contains(&format!("MainPID={pid}\n"))
    });
    assert!(
        restarted,
        "keel-agent was not restarted within 240 s of SIGSTOP"
    );
    let (_, j) = sh(
        node,
        "journalctl -u keel-agent --no-pager",
        Duration::from_secs(60),
    );
    assert!(
        j.contains("Watchdog timeout"),
        "no watchdog timeout in keel-agent's journal:\n{j}"
    );
    println!("watchdog restart {:?} after SIGSTOP", stopped.elapsed());
    let before = lease_renew_time(t, admin, "node1");
    lease_renewals(t, admin, "node1", before, 1, Duration::from_secs(120));
    assert_eq!(
        jsonpath(t, admin, &["node", "node1"], "{.metadata.uid}").as_deref(),
        Some(uid),
        "the Node changed across the watchdog restart"
    );
    assert_eq!(csr_count(t, admin), 1, "a second CSR after the restart");
}

/// The master LB VM powered off: the VIP moves to the backup and the node's Lease keeps renewing
/// through it, renewal after renewal.
fn lease_renews_through_the_backup(lab: &Lab, master: &mut Vm, backup_has_vip: &dyn Fn() -> bool) {
    let (t, admin) = (&lab.t, &lab.admin);
    master.save_journal();
    let off = Instant::now();
    master.kill();
    assert!(
        wait_until(Duration::from_secs(120), backup_has_vip),
        "the backup did not take the VIP after {} was powered off",
        master.name
    );
    assert!(
        wait_until(Duration::from_secs(60), || answers(t)),
        "no answer through {VIP}:80 from the backup"
    );
    println!(
        "failover: VIP answering {:?} after {} was powered off",
        off.elapsed(),
        master.name
    );
    let since = lease_renew_time(t, admin, "node1");
    let renewals = lease_renewals(t, admin, "node1", since, 3, Duration::from_secs(120));
    println!("Lease renewals through the backup: {renewals:?}");
}

/// `systemctl stop keel-agent` with DRAIN=stop (health.drain.on_stop): the node is cordoned and
/// its pod evicted before the agent exits.
fn stop_cordons_and_drains(lab: &Lab, node: &Vm) {
    let (t, admin) = (&lab.t, &lab.admin);
    let pod = lab.api_dir.join("pod.json");
    std::fs::write(
        &pod,
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"default"},"spec":{"nodeName":"node1","containers":[{"name":"web","image":"registry.example/web:1"}]}}"#,
    )
    .unwrap();
    let (ok, _, err) = kubectl(
        t,
        admin,
        &["create", "--validate=false", "-f", pod.to_str().unwrap()],
    );
    assert!(ok, "kubectl create pod: {err}");
    let (rc, out) = sh(node, "systemctl stop keel-agent", Duration::from_secs(240));
    assert_eq!(rc, 0, "systemctl stop keel-agent: {out}");
    assert_eq!(
        jsonpath(t, admin, &["node", "node1"], "{.spec.unschedulable}").as_deref(),
        Some("true"),
        "node1 is not cordoned after `systemctl stop keel-agent`"
    );
    let (ok, _, err) = kubectl(t, admin, &["get", "pod", "web"]);
    assert!(
        !ok && err.contains("NotFound"),
        "the pod was not evicted: {err}"
    );
    let (_, j) = sh(
        node,
        "journalctl -b -u keel-agent --no-pager",
        Duration::from_secs(60),
    );
    assert!(
        j.contains("draining first (health.drain.on_stop)") && j.contains("shutdown drain done"),
        "{j}"
    );
}

/// A reboot: the agent comes back with the stored identity, joins nothing again.
fn reboot_does_not_join_again(lab: &Lab, node: &mut Vm, uid: &str) {
    let (t, admin) = (&lab.t, &lab.admin);
    let rebooted = Instant::now();
    node.reboot(Duration::from_secs(300));
    node.wait_booted(Duration::from_secs(900));
    assert_eq!(node.boots(), 2);
    assert!(
        wait_until(Duration::from_secs(120), || unit_prop(
            node,
            "keel-agent",
            "ActiveState"
        ) == "active"),
        "keel-agent is not active after the reboot"
    );
    let since = lease_renew_time(t, admin, "node1");
    lease_renewals(t, admin, "node1", since, 1, Duration::from_secs(120));
    println!(
        "node1 rebooted and renewing its Lease {:?} after the reboot began",
        rebooted.elapsed()
    );
    let (_, j) = sh(
        node,
        "journalctl -b -u keel-agent --no-pager",
        Duration::from_secs(60),
    );
    assert!(
        j.contains("already joined: reusing stored node credentials"),
        "{j}"
    );
    assert!(!j.contains("discovery: fetching"), "joined again:\n{j}");
    assert_eq!(csr_count(t, admin), 1, "a second CSR after the reboot");
    assert_eq!(
        jsonpath(t, admin, &["node", "node1"], "{.metadata.uid}").as_deref(),
        Some(uid),
        "the Node changed across the reboot"
    );
}

/// Boots lb1 (the master: priority 150) and, with the node image built meanwhile, the node VM,
/// isolates the node's and the API server's bridge ports from each other (they meet only through
/// the LBs), and waits for lb1's boot: (lb1, node, time the node image took).
fn boot_lb1_and_node(
    lab: &Lab,
    lb_image: &Image,
    lb_built: Duration,
    dir: &Path,
) -> (Vm, Vm, Duration) {
    let t = &lab.t;
    let mut lb1 = boot(
        t,
        "lb1",
        lb_image,
        &lb_env("lb1", "198.18.0.11", 150),
        0x11,
        dir,
    );
    let t1 = Instant::now();
    let node_image = images::image("node");
    let node_built = t1.elapsed();
    let node = boot(t, "node1", &node_image, &node_env(lab), 0x21, dir);
    t.isolate("api", true);
    t.isolate("tap-node1", true);
    let state = lb1.wait_booted(Duration::from_secs(900));
    println!(
        "lb image ready in {lb_built:?}, node image in {node_built:?}; lb1 booted ({state}) in {:?} under TCG",
        lb1.age()
    );
    (lb1, node, node_built)
}

/// The node's scenarios, lb1 (master) powered off half way for the backup to take over.
fn node_rides_out_failures(
    lab: &Lab,
    lb1: &mut Vm,
    node: &mut Vm,
    backup_has_vip: &dyn Fn() -> bool,
) {
    let uid = node_joined_through_the_vip(lab, node);
    watchdog_restarts_a_wedged_agent(lab, node, &uid);
    lease_renews_through_the_backup(lab, lb1, backup_has_vip);
    stop_cordons_and_drains(lab, node);
    reboot_does_not_join_again(lab, node, &uid);
}

/// CI's VM test: the LB VM (master) and the node VM, the backup LB a keel-lb in a host namespace
/// with the LB VM's settings (VRID 51, priority 100, the same frontends).
#[test]
fn lb_vm_and_node_vm_boot_join_through_the_vip_and_ride_out_failures() {
    require_root!();
    need_tools();
    let t0 = Instant::now();
    let lb_image = images::image("lb");
    let lb_built = t0.elapsed();
    let artifacts = keel_e2e::artifact_dir("vm_images_ci");
    let mut lab = lab("vm-ci", &artifacts);

    // The backup: keel-lb in a namespace on the segment, master alone until the LB VM is up.
    lab.t.host("lb2", &["198.18.0.12/24"]);
    let cfg = artifacts.join("lb2.yaml");
    std::fs::write(
        &cfg,
        format!(
            "admin:\n  listen: 127.0.0.1:9100\nfrontends:\n  - name: vip1\n    listen: {VIP}:80\n    pool: backends\n  - name: api1\n    listen: {VIP}:6443\n    pool: apiservers\npools:\n  backends:\n    health: {{ type: tcp, interval: 1s, timeout: 500ms }}\n    backends:\n      - address: 198.18.0.2:8080\n  apiservers:\n    health: {{ type: tcp, interval: 1s, timeout: 500ms }}\n    backends:\n      - address: 198.18.0.3:6443\nvrrp:\n  routers:\n    - name: vip\n      vrid: 51\n      interface: eth0\n      priority: 100\n      advert_interval: 1s\n      vips: [{VIP}/24]\n"
        ),
    )
    .unwrap();
    let lb2 = {
        let mut cmd = lab
            .t
            .command("lb2", keel_e2e::bin("keel-lb").to_str().unwrap());
        cmd.args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(artifacts.join("lb2.log")).unwrap());
        Proc::from_child(cmd.spawn().expect("keel-lb"), "keel-lb in lb2".into())
    };
    lab.procs.push(lb2);
    let t = &lab.t;
    let lb2_has_vip = || {
        t.sh("lb2", "ip -4 -o addr show dev eth0")
            .contains(&format!("{VIP}/"))
    };
    assert!(
        wait_until(Duration::from_secs(30), lb2_has_vip),
        "keel-lb in lb2 did not take the VIP alone:\n{}",
        std::fs::read_to_string(artifacts.join("lb2.log")).unwrap_or_default()
    );

    let (mut lb1, mut node, node_built) = boot_lb1_and_node(&lab, &lb_image, lb_built, &artifacts);
    // lb1 (priority 150) preempts the backup.
    lb_vm_serves_and_refuses_a_bad_reload(t, &lb1);
    assert!(
        wait_until(Duration::from_secs(60), || has_vip(&lb1) && !lb2_has_vip()),
        "lb1 (priority 150) is not the only holder of the VIP beside lb2 (priority 100)"
    );

    node_rides_out_failures(&lab, &mut lb1, &mut node, &lb2_has_vip);
    println!(
        "whole test: {:?} (lb image {lb_built:?}, node image {node_built:?})",
        t0.elapsed()
    );
}

/// The whole system in VMs: two LB VMs (lb1 master, lb2 backup) and the node VM.
#[test]
#[ignore = "16 min of TCG: outside CI's budget; tests/run --vm-full runs it"]
fn images_boot_lb_pair_and_node_join_through_the_vip_and_ride_out_failures() {
    require_root!();
    need_tools();
    let t0 = Instant::now();
    let lb_image = images::image("lb");
    let lb_built = t0.elapsed();
    // Emptied first: what is there after the test is this run's.
    let artifacts = keel_e2e::artifact_dir("vm_images");
    let lab = lab("vm-images", &artifacts);
    let t = &lab.t;
    // Booted together with lb1 (priority 150).
    let mut lb2 = boot(
        t,
        "lb2",
        &lb_image,
        &lb_env("lb2", "198.18.0.12", 100),
        0x12,
        &artifacts,
    );
    let (mut lb1, mut node, node_built) = boot_lb1_and_node(&lab, &lb_image, lb_built, &artifacts);
    lb_vm_serves_and_refuses_a_bad_reload(t, &lb1);
    // lb2 is backup beside lb1 (preempted back by the higher priority after lb1's restart).
    lb2.wait_booted(Duration::from_secs(900));
    assert!(
        wait_until(Duration::from_secs(60), || has_vip(&lb1) && !has_vip(&lb2)),
        "lb1 (priority 150) is not the only holder of the VIP beside lb2 (priority 100)"
    );
    assert!(answers(t), "no answer through {VIP}:80 from lb1");

    node_rides_out_failures(&lab, &mut lb1, &mut node, &|| has_vip(&lb2));
    println!(
        "whole test: {:?} (lb image {lb_built:?}, node image {node_built:?})",
        t0.elapsed()
    );
}
