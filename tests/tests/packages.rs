//! The Debian packages (images/deb/build.sh): contents, conffiles, the default config passing
//! `keel-lb check`, lintian, and the units' `systemd-analyze security` exposure against Debian's own
//! network daemons.

use std::process::Command;

use keel_e2e::images;

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn need(tools: &[&str]) {
    for t in tools {
        if !keel_e2e::have(t) {
            keel_e2e::skip!("{t} is not installed (.ci/run installs it)");
        }
    }
}

#[test]
fn packages_hold_binary_units_conffiles_and_man_pages() {
    need(&["dpkg-deb", "dpkg-shlibdeps", "strip"]);
    let (lb, agent) = images::debs();
    for (deb, pkg, conf) in [
        (&lb, "keel-lb", "lb.yaml"),
        (&agent, "keel-agent", "agent.yaml"),
    ] {
        let (ok, list) = run(Command::new("dpkg-deb").arg("-c").arg(deb));
        assert!(ok, "{list}");
        for path in [
            format!("./usr/bin/{pkg}"),
            format!("./lib/systemd/system/{pkg}.service"),
            format!("./etc/keel/{conf}"),
            format!("./usr/share/man/man1/{pkg}.1.gz"),
            format!("./usr/share/doc/{pkg}/copyright"),
        ] {
            assert!(
                list.lines().any(|l| l.ends_with(&path)),
                "{} lacks {path}:\n{list}",
                deb.display()
            );
        }
        // Files owned by root whatever user built them.
        assert!(!list.lines().any(|l| !l.contains(" root/root ")), "{list}");
        let (ok, conffiles) = run(Command::new("dpkg-deb").arg("-I").arg(deb).arg("conffiles"));
        assert!(ok, "{conffiles}");
        assert_eq!(conffiles.trim(), format!("/etc/keel/{conf}"));
        let (ok, control) = run(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Depends"));
        assert!(ok && control.contains("libc6"), "Depends: {control}");
        let (_, rec) = run(Command::new("dpkg-deb")
            .arg("-f")
            .arg(deb)
            .arg("Recommends"));
        if deb.to_string_lossy().contains("keel-lb") {
            assert_eq!(rec.trim(), "nftables", "keel-lb Recommends");
        }
    }

    // The packaged defaults pass the packaged binaries' own check.
    let dir = tempfile::tempdir().unwrap();
    for deb in [&lb, &agent] {
        let (ok, out) = run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir.path()));
        assert!(ok, "{out}");
    }
    let root = dir.path();
    // bgp.handoff's sysctl, read at boot (the hardened unit cannot write /proc/sys).
    let sysctl = std::fs::read_to_string(root.join("usr/lib/sysctl.d/60-keel-lb.conf"))
        .expect("keel-lb ships usr/lib/sysctl.d/60-keel-lb.conf");
    assert!(
        sysctl
            .lines()
            .any(|l| l.trim() == "net.ipv4.tcp_fwmark_accept = 1"),
        "{sysctl}"
    );
    for (bin, conf) in [("keel-lb", "lb.yaml"), ("keel-agent", "agent.yaml")] {
        let (ok, out) = run(Command::new(root.join("usr/bin").join(bin))
            .args(["check", "--config"])
            .arg(root.join("etc/keel").join(conf)));
        assert!(ok, "{bin} check of the packaged {conf}: {out}");
    }
    // The man pages render without warnings.
    if keel_e2e::have("man") {
        for page in ["keel-lb.1.gz", "keel-agent.1.gz"] {
            let (ok, out) = run(Command::new("sh").arg("-c").arg(format!(
                "MANWIDTH=80 man --warnings -l '{}' 2>&1 >/dev/null",
                root.join("usr/share/man/man1").join(page).display()
            )));
            assert!(ok && out.trim().is_empty(), "{page}: {out}");
        }
    }
}

#[test]
fn lintian_is_clean_apart_from_explained_overrides() {
    need(&["lintian", "dpkg-deb", "dpkg-shlibdeps", "strip"]);
    let (lb, agent) = images::debs();
    // Errors and warnings fail; overridden tags (each with its reason in images/deb/*.lintian-
    // overrides) do not. info/pedantic tags are printed for whoever reads the log.
    let (ok, out) = run(Command::new("lintian")
        .args([
            "--fail-on",
            "error,warning",
            "--display-info",
            "--tag-display-limit",
            "0",
        ])
        .arg(&lb)
        .arg(&agent));
    println!("{out}");
    assert!(ok, "lintian:\n{out}");
}

/// `systemd-analyze security --offline=true` of a unit file: its overall exposure (0.0-10.0).
fn exposure(unit: &std::path::Path) -> f64 {
    let (_, out) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit));
    out.lines()
        .find_map(|l| l.split("Overall exposure level for ").nth(1))
        .and_then(|rest| rest.split(": ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level for {}:\n{out}", unit.display()))
}

#[test]
fn units_are_hardened_at_least_as_well_as_debians_network_daemons() {
    need(&["systemd-analyze"]);
    let deb = images::repo().join("images/deb");
    let lb = exposure(&deb.join("keel-lb.service"));
    let agent = exposure(&deb.join("keel-agent.service"));
    println!("exposure: keel-lb {lb}, keel-agent {agent}");
    // systemd-networkd.service (Debian 12: 2.8) is the Debian network daemon with the most comparable
    // needs (CAP_NET_ADMIN, raw sockets, netlink); haproxy.service and keepalived.service ship 9.6.
    assert!(lb <= 2.8, "keel-lb.service exposure {lb} > 2.8");
    // The agent runs as root (its unit says why); it still stays well inside "OK" (< 5).
    assert!(agent <= 4.0, "keel-agent.service exposure {agent} > 4.0");
    for peer in ["haproxy", "keepalived"] {
        let unit = std::path::PathBuf::from(format!("/lib/systemd/system/{peer}.service"));
        if unit.exists() {
            let theirs = exposure(&unit);
            println!("exposure: {peer} {theirs}");
            assert!(lb < theirs, "keel-lb {lb} not below {peer} {theirs}");
        }
    }
}
