//! VMs of the images (images/linux/build-image.sh) under QEMU, for the tests: TCG only (nested KVM
//! hangs on these machines), direct kernel boot, a NIC on a tap port of a [`Topology`]'s bridge, a
//! seed disk for keel-firstboot, the serial console in a file kept as an artifact, and a test-only
//! command channel on the second serial port.
//!
//! The channel is not in the image: the test's seed carries it as `boot.sh` (keel-firstboot runs a
//! seed's boot.sh after every boot, as cloud-init runs per-boot scripts, so it survives a reboot). Each request is a line `<id> <command>`;
//! the guest answers `@@<id> begin`, the output, `@@<id> end <status>`. Everything else on the line
//! (a tty's echo before the script set it raw) is skipped by id.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::netns::{Proc, Topology};

/// The guest side of the command channel (the seed's boot.sh).
pub const CHANNEL_SCRIPT: &str = r#"#!/bin/sh
# Test-only command channel on /dev/ttyS1 (see tests/src/vm.rs).
stty -F /dev/ttyS1 raw -echo
exec 3<>/dev/ttyS1
while IFS= read -r line <&3; do
    id=${line%% *}
    cmd=${line#* }
    echo "@@$id begin" >&3
    sh -c "$cmd" >&3 2>&1 </dev/null
    echo "@@$id end $?" >&3
done
"#;

static IDS: AtomicU32 = AtomicU32::new(1);

pub struct Vm {
    pub name: String,
    pub dir: PathBuf,
    pub console: PathBuf,
    ctl: PathBuf,
    /// `ip netns exec <bridge ns> qemu-system-x86_64 ...`.
    args: Vec<String>,
    boots: u32,
    started: Instant,
    proc: Option<Proc>,
}

/// What a VM boots from and with.
pub struct VmSpec<'a> {
    pub name: &'a str,
    pub disk: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// keel.env of the seed (KEY=VALUE lines, images/linux/firstboot/keel-firstboot).
    pub env: &'a str,
    /// Last byte of the MAC address, unique on the segment.
    pub mac_last: u8,
    /// Where its files go (overlay disk, seed, console log).
    pub dir: &'a Path,
}

fn sh(script: &str) {
    let out = Command::new("sh")
        .args(["-c", script])
        .output()
        .unwrap_or_else(|e| panic!("sh -c {script}: {e}"));
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Vm {
    /// Boots a VM whose NIC is a tap port `tap-<name>` of the topology's bridge (the bridge's
    /// namespace is `t.ns("br")`).
    pub fn boot(t: &Topology, spec: VmSpec) -> Vm {
        let dir = spec.dir.join(spec.name);
        std::fs::create_dir_all(&dir).unwrap();
        let overlay = dir.join("disk.qcow2");
        let _ = std::fs::remove_file(&overlay);
        // Writes go to an overlay: the image stays as built for the next VM.
        sh(&format!(
            "qemu-img create -q -f qcow2 -F {} -b '{}' '{}'",
            if spec.disk.extension().is_some_and(|e| e == "raw") {
                "raw"
            } else {
                "qcow2"
            },
            spec.disk.display(),
            overlay.display()
        ));
        let seed_dir = dir.join("seed");
        std::fs::create_dir_all(&seed_dir).unwrap();
        std::fs::write(seed_dir.join("keel.env"), spec.env).unwrap();
        std::fs::write(seed_dir.join("boot.sh"), CHANNEL_SCRIPT).unwrap();
        let seed = dir.join("seed.img");
        sh(&format!(
            "'{}' '{}' '{}' '{}'",
            crate::images::repo()
                .join("images/linux/make-seed.sh")
                .display(),
            seed.display(),
            seed_dir.join("keel.env").display(),
            seed_dir.join("boot.sh").display()
        ));
        let br = t.ns("br");
        let tap = format!("tap-{}", spec.name);
        assert!(tap.len() <= 15, "{tap}: 15 characters at most");
        sh(&format!(
            "ip -n {br} tuntap add {tap} mode tap && ip -n {br} link set {tap} master br0 && ip -n {br} link set {tap} up"
        ));
        let console = dir.join("console.log");
        let ctl = dir.join("ctl.sock");
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            br,
            "qemu-system-x86_64".into(),
        ];
        args.extend(
            ["-accel", "tcg", "-m", "512", "-smp", "1", "-no-reboot"]
                .into_iter()
                .chain(["-display", "none", "-vga", "none", "-monitor", "none"])
                .map(String::from),
        );
        args.extend([
            "-kernel".into(),
            spec.kernel.display().to_string(),
            "-initrd".into(),
            spec.initrd.display().to_string(),
            "-append".into(),
            // The journal goes to the console too: the console log is the VM's journal even
            // when the command channel never came up.
            // no_timer_check: on a loaded host TCG's timer may miss the kernel's IO-APIC check,
            // which then panics at boot ("IO-APIC + timer doesn't work!").
            "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1 no_timer_check systemd.journald.forward_to_console=1".into(),
            "-drive".into(),
            format!("file={},if=virtio,format=qcow2", overlay.display()),
            "-drive".into(),
            format!("file={},if=virtio,format=raw,readonly=on", seed.display()),
            "-netdev".into(),
            format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            "-device".into(),
            format!(
                "virtio-net-pci,netdev=n0,mac=52:54:00:4b:00:{:02x}",
                spec.mac_last
            ),
            "-chardev".into(),
            // Appended: a second boot (`reboot`) keeps the first one's console.
            format!("file,id=con,path={},append=on", console.display()),
            "-serial".into(),
            "chardev:con".into(),
            "-chardev".into(),
            format!("socket,id=ctl,path={},server=on,wait=off", ctl.display()),
            "-serial".into(),
            "chardev:ctl".into(),
        ]);
        let mut vm = Vm {
            name: spec.name.to_string(),
            dir,
            console,
            ctl,
            args,
            boots: 0,
            started: Instant::now(),
            proc: None,
        };
        // The console is appended to across reboots of this VM, not across test runs.
        let _ = std::fs::remove_file(&vm.console);
        vm.power_on();
        vm
    }

    /// Starts QEMU on the VM's disk as it is (a first boot, or the next after a power-off).
    fn power_on(&mut self) {
        assert!(self.proc.is_none(), "{}: QEMU already runs", self.name);
        let _ = std::fs::remove_file(&self.ctl);
        self.boots += 1;
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("qemu.stderr"))
            .unwrap();
        let child = Command::new("ip")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("qemu-system-x86_64");
        self.started = Instant::now();
        self.proc = Some(Proc::from_child(child, format!("qemu {}", self.name)));
    }

    /// Reboots the guest (`systemctl reboot`: every service stopped as systemd does) and boots it
    /// again on the same disk; QEMU runs with -no-reboot, so the guest's reset ends it and a new
    /// QEMU takes over, as a hypervisor would. Returns once QEMU is started again (then
    /// `wait_booted`).
    pub fn reboot(&mut self, limit: Duration) {
        // No answer comes: the channel goes down with the guest.
        let _ = self.run("systemctl reboot", Duration::from_secs(5));
        let exited = self
            .proc
            .as_mut()
            .and_then(|p| p.wait_timeout(limit))
            .is_some();
        assert!(
            exited,
            "{}: still running {limit:?} after `systemctl reboot`; console: {}",
            self.name,
            self.console.display()
        );
        self.proc = None;
        self.power_on();
    }

    /// How many times QEMU was started for this VM.
    pub fn boots(&self) -> u32 {
        self.boots
    }

    /// Seconds since QEMU started.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether QEMU still runs.
    pub fn running(&mut self) -> bool {
        self.proc
            .as_mut()
            .is_some_and(|p| p.wait_timeout(Duration::ZERO).is_none())
    }

    /// Runs `command` (sh) in the guest: `(exit status, output)`, or None when no answer came within
    /// `limit` (not booted yet, channel not up).
    pub fn run(&self, command: &str, limit: Duration) -> Option<(i32, String)> {
        let deadline = Instant::now() + limit;
        let mut s = UnixStream::connect(&self.ctl).ok()?;
        let id = IDS.fetch_add(1, Ordering::SeqCst);
        assert!(!command.contains('\n'), "one line: {command}");
        s.write_all(format!("{id} {command}\n").as_bytes()).ok()?;
        let mut r = BufReader::new(s);
        let begin = format!("@@{id} begin");
        let end = format!("@@{id} end ");
        let mut out = String::new();
        let mut inside = false;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            r.get_ref()
                .set_read_timeout(Some(left.max(Duration::from_millis(10))))
                .ok()?;
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            let l = line.trim_end_matches(['\r', '\n']);
            if !inside {
                inside = l.ends_with(&begin);
            } else if let Some(rc) = l.strip_prefix(&end) {
                return Some((rc.trim().parse().unwrap_or(-1), out));
            } else {
                out.push_str(l);
                out.push('\n');
            }
        }
    }

    /// Waits (bounded) until the guest answers on its channel and systemd finished booting; the
    /// answer of `systemctl is-system-running --wait`.
    pub fn wait_booted(&mut self, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            assert!(
                self.running(),
                "{}: QEMU exited; console: {}",
                self.name,
                self.console.display()
            );
            if let Some((_, out)) = self.run(
                "systemctl is-system-running --wait",
                Duration::from_secs(20),
            ) {
                return out.trim().to_string();
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        panic!(
            "{}: no answer on the command channel within {limit:?}; console: {}",
            self.name,
            self.console.display()
        );
    }

    /// The journal of every boot into `<dir>/journal.log` (best effort, for a failing test, or
    /// before a power-off).
    pub fn save_journal(&self) {
        if let Some((_, j)) = self.run(
            "journalctl --no-pager -o short-monotonic",
            Duration::from_secs(60),
        ) {
            let _ = std::fs::write(self.dir.join("journal.log"), j);
        }
    }

    /// Powers the VM off (QEMU killed: as pulling the plug).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if std::thread::panicking() && self.proc.is_some() {
            self.save_journal();
            eprintln!(
                "{}: console {} and journal {} kept",
                self.name,
                self.console.display(),
                self.dir.join("journal.log").display()
            );
        }
        self.kill();
    }
}

/// Standard base64 (a file sent through the one-line command channel).
pub fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// What the client reads from the frontend at `addr`, within 3 s.
pub fn fetch(t: &Topology, addr: &str) -> Option<String> {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    t.thread_in("client", move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        let mut buf = String::new();
        std::io::Read::read_to_string(&mut s, &mut buf).ok()?;
        Some(buf)
    })
    .join()
    .unwrap()
}
