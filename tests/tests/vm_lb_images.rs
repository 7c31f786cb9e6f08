//! The LB image booted as a platform team would (the CI part of the VM tests: vm_images.rs adds a
//! node VM and its scenarios, outside CI's time budget): a Debian 12 VM (images/linux/build-image.sh lb)
//! under QEMU TCG on a private L2 segment with the host's test namespaces, configured on first boot
//! from a seed disk. Proves keel-lb.service reaches active through Type=notify, nothing but keel-lb
//! listens, the frontend answers through the VIP, `systemctl reload` with a bad file fails and
//! keeps serving, the package's postinst starts keel-lb only once configured, and a second LB VM
//! elected backup takes the VIP over when the first is powered off. Serial console logs (and the journal, on failure) stay under
//! target/test-artifacts/vm_lb_images/.

use std::time::{Duration, Instant};

use keel_e2e::netns::{wait_until, Topology};
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
    ] {
        if !keel_e2e::have(t) {
            keel_e2e::skip!("{t} is not installed (.ci/run installs it)");
        }
    }
}

#[test]
fn lb_images_boot_serve_through_the_vip_refuse_a_bad_reload_and_fail_over() {
    require_root!();
    need_tools();
    let t0 = Instant::now();
    let (disk, kernel, initrd) = images::image("lb");
    let built = t0.elapsed();

    let artifacts = images::target_dir().join("test-artifacts/vm_lb_images");
    std::fs::create_dir_all(&artifacts).unwrap();
    let mut t = Topology::new("vm-lb");
    t.bridge();
    t.host("client", &["198.18.0.1/24"]);
    t.host("backend", &["198.18.0.2/24"]);
    let _backend = t.spawn(
        "backend",
        "socat",
        &["TCP-LISTEN:8080,fork,reuseaddr", "SYSTEM:echo keel-backend"],
    );

    let env = format!(
        "HOSTNAME=lb1\nADDRESS=198.18.0.11/24\nVIPS={VIP}/24\nVRRP_PRIORITY=150\nFRONTEND_PORT=80\nBACKENDS=198.18.0.2:8080\n"
    );
    let mut vm = Vm::boot(
        &t,
        VmSpec {
            name: "lb1",
            disk: &disk,
            kernel: &kernel,
            initrd: &initrd,
            env: &env,
            mac_last: 0x11,
            dir: &artifacts,
        },
    );
    let state = vm.wait_booted(Duration::from_secs(900));
    let boot = vm.age();
    println!("image ready in {built:?}; booted ({state}) in {boot:?} under TCG");

    // Type=notify and active: systemd moved the unit out of "activating" only on READY=1 (sent once
    // the listeners were bound and VRRP started), not merely because the process ran.
    let (_, show) = vm
        .run(
            "systemctl show -p Type -p ActiveState -p SubState -p Result -p NRestarts keel-lb.service",
            Duration::from_secs(30),
        )
        .expect("systemctl show");
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
    let (_, sockets) = vm.run("ss -Htulnp", Duration::from_secs(30)).expect("ss");
    assert!(!sockets.trim().is_empty(), "no listening socket at all");
    for l in sockets.lines() {
        assert!(l.contains("\"keel-lb\""), "not keel-lb's: {l}\n{sockets}");
    }

    // Elected master (alone on the segment), the VIP answers from the host's client namespace.
    let frontend = format!("{VIP}:80");
    assert!(
        wait_until(Duration::from_secs(60), || fetch(&t, &frontend)
            .is_some_and(|b| b.contains("keel-backend"))),
        "no answer from the backend through {frontend}"
    );

    // A bad file: `systemctl reload` fails (ExecReload = keel-lb reload), keel-lb keeps running
    // the old config and serving.
    let (rc, out) = vm
        .run(
            "cp /etc/keel/lb.yaml /run/lb.good && echo 'bogus: 1' >> /etc/keel/lb.yaml && systemctl reload keel-lb",
            Duration::from_secs(120),
        )
        .expect("reload");
    assert_ne!(rc, 0, "reload of a bad file succeeded: {out}");
    let (_, active) = vm
        .run("systemctl is-active keel-lb", Duration::from_secs(30))
        .expect("is-active");
    assert_eq!(active.trim(), "active");
    assert!(fetch(&t, &frontend).is_some_and(|b| b.contains("keel-backend")));
    // And a good one reloads: the admin token reached `keel-lb reload` as a systemd credential.
    let (rc, out) = vm
        .run(
            "cp /run/lb.good /etc/keel/lb.yaml && systemctl reload keel-lb",
            Duration::from_secs(120),
        )
        .expect("reload");
    assert_eq!(rc, 0, "reload of the good file failed: {out}");

    // The package's start rule, run by its own postinst on the booted VM: with the packaged default
    // config it enables but does not start keel-lb; with a real config it starts it.
    let default = std::fs::read(images::repo().join("images/deb/lb.yaml")).unwrap();
    let (rc, out) = vm
        .run(
            &format!(
                "systemctl stop keel-lb && echo {} | base64 -d > /etc/keel/lb.yaml && /var/lib/dpkg/info/keel-lb.postinst configure && systemctl is-enabled keel-lb && ! systemctl is-active keel-lb",
                b64(&default)
            ),
            Duration::from_secs(120),
        )
        .expect("postinst with the default config");
    assert_eq!(rc, 0, "postinst with the packaged default: {out}");
    assert!(out.contains("enabled, not started"), "{out}");
    let (rc, out) = vm
        .run(
            "cp /run/lb.good /etc/keel/lb.yaml && /var/lib/dpkg/info/keel-lb.postinst configure && systemctl is-active keel-lb",
            Duration::from_secs(120),
        )
        .expect("postinst with a real config");
    assert_eq!(
        rc, 0,
        "postinst with a real config did not start keel-lb: {out}"
    );
    assert!(
        wait_until(Duration::from_secs(60), || fetch(&t, &frontend)
            .is_some_and(|b| b.contains("keel-backend"))),
        "no answer through {frontend} after the postinst started keel-lb"
    );
    let (_, journal) = vm
        .run("journalctl -u keel-lb --no-pager", Duration::from_secs(60))
        .expect("journal");
    std::fs::write(vm.dir.join("keel-lb.journal"), &journal).unwrap();

    // A second LB VM with a lower priority: it boots as backup (lb1 keeps the VIP); powering lb1
    // off moves the VIP to it and the frontend answers again.
    let env2 = format!(
        "HOSTNAME=lb2\nADDRESS=198.18.0.12/24\nVIPS={VIP}/24\nVRRP_PRIORITY=100\nFRONTEND_PORT=80\nBACKENDS=198.18.0.2:8080\n"
    );
    let mut vm2 = Vm::boot(
        &t,
        VmSpec {
            name: "lb2",
            disk: &disk,
            kernel: &kernel,
            initrd: &initrd,
            env: &env2,
            mac_last: 0x12,
            dir: &artifacts,
        },
    );
    vm2.wait_booted(Duration::from_secs(900));
    let has_vip = |vm: &Vm| {
        vm.run("ip -4 -o addr show dev eth0", Duration::from_secs(30))
            .is_some_and(|(_, a)| a.contains(&format!("{VIP}/")))
    };
    assert!(
        has_vip(&vm),
        "lb1 (priority 150) lost the VIP when lb2 came up"
    );
    assert!(
        !has_vip(&vm2),
        "lb2 (priority 100) holds the VIP beside lb1"
    );
    let off = Instant::now();
    vm.kill();
    assert!(
        wait_until(Duration::from_secs(120), || has_vip(&vm2)),
        "lb2 did not take the VIP after lb1 was powered off"
    );
    assert!(
        wait_until(Duration::from_secs(60), || fetch(&t, &frontend)
            .is_some_and(|b| b.contains("keel-backend"))),
        "no answer through {frontend} from lb2"
    );
    println!(
        "failover to lb2: VIP answering {:?} after lb1 was powered off",
        off.elapsed()
    );
    println!(
        "whole test: {:?} (image {built:?}, boot {boot:?})",
        t0.elapsed()
    );
}
