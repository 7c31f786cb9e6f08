//! keel-lb's VRRP against the outside world: keepalived in the same virtual router, tshark's
//! dissector as the judge of the wire format, and hand-crafted malformed packets.

mod vrrp_lab;

use std::net::Ipv4Addr;
use std::time::Duration;

use keel_e2e::netns::wait_until;
use keel_e2e::{have, require_root};
use vrrp_lab::*;

const LBS: &[&str] = &["lb1", "lb2"];
const VIP4_CIDR: &str = "198.18.1.100/24";
const TAKEOVER: Duration = Duration::from_secs(8);

#[test]
fn keepalived_and_keel_elect_by_priority_and_hand_over_to_each_other() {
    require_root!();
    if !have("keepalived") {
        keel_e2e::skip!("keepalived is not installed");
    }
    let lab = Lab::new("vrrp-ka", LBS);
    // keepalived higher: it wins; stopped, keel takes over; back, it preempts keel.
    let ka_conf = keepalived_conf(51, 200, VIP4_CIDR, "0.1");
    let mut ka = lab.keepalived("lb1", &ka_conf);
    let _keel = lab.keel(
        "lb2",
        &routers(&[router("web", 51, 100, VIP4_CIDR, "")]),
        &[VIP4],
    );
    assert!(
        lab.wait_owner(VIP4, "lb1", LBS, TAKEOVER),
        "keepalived did not win\n{}",
        lab.log("lb1")
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !lab.has_vip("lb2", VIP4),
        "keel took the VIP from a higher-priority keepalived"
    );
    assert!(lab.metric_sum("lb2", "keel_vrrp_adverts_received_total", &[]) > 0.0);
    ka.signal(libc::SIGTERM);
    assert!(ka.wait_timeout(Duration::from_secs(10)).is_some());
    assert!(
        lab.wait_owner(VIP4, "lb2", LBS, TAKEOVER),
        "keel did not take over from keepalived\n{}",
        lab.log("lb2")
    );
    let _ka = lab.keepalived("lb1", &ka_conf);
    assert!(
        lab.wait_owner(VIP4, "lb1", LBS, TAKEOVER),
        "keepalived did not preempt keel\n{}",
        lab.log("lb2")
    );
    drop(_ka);
    drop(_keel);

    // keel higher: it wins; on SIGTERM it hands over to keepalived.
    let lab = Lab::new("vrrp-ka2", LBS);
    let mut keel = lab.keel(
        "lb1",
        &routers(&[router("web", 51, 200, VIP4_CIDR, "")]),
        &[VIP4],
    );
    let _ka = lab.keepalived("lb2", &keepalived_conf(51, 100, VIP4_CIDR, "0.1"));
    assert!(
        lab.wait_owner(VIP4, "lb1", LBS, TAKEOVER),
        "keel did not win\n{}",
        lab.log("lb2")
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(!lab.has_vip("lb2", VIP4));
    keel.signal(libc::SIGTERM);
    assert!(keel
        .wait_timeout(Duration::from_secs(15))
        .is_some_and(|s| s.success()));
    assert!(
        lab.wait_owner(VIP4, "lb2", LBS, TAKEOVER),
        "keepalived did not take over\n{}",
        lab.log("lb2")
    );
    assert!(lab.log("lb1").contains("TakenOver"), "{}", lab.log("lb1"));
}

#[test]
fn tshark_decodes_keel_adverts_as_valid_vrrpv3_with_good_checksums() {
    require_root!();
    if !have("tshark") || !have("tcpdump") {
        keel_e2e::skip!("tshark/tcpdump not installed");
    }
    let lab = Lab::new("vrrp-tshark", &["lb1"]);
    let cfg = routers(&[
        router("web", 51, 150, VIP4_CIDR, ""),
        router("web6", 61, 150, "2001:db8:1::100/64", ""),
    ]);
    let _lb1 = lab.keel("lb1", &cfg, &[VIP4, VIP6]);
    assert!(wait_until(TAKEOVER, || lab.has_vip("lb1", VIP4)
        && lab.has_vip("lb1", VIP6)));
    let pcap = lab.path("vrrp.pcap");
    lab.t.exec(
        "client",
        &[
            "timeout",
            "2",
            "tcpdump",
            "-i",
            "eth0",
            "-U",
            "-w",
            pcap.to_str().unwrap(),
            "ip proto 112 or ip6 proto 112",
        ],
    );
    let out = std::process::Command::new("tshark")
        .args([
            "-r",
            pcap.to_str().unwrap(),
            "-V",
            "-o",
            "vrrp.v3_checksum_as_in_v2:FALSE",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let good = text.matches("[Checksum Status: Good]").count();
    let v4 = text.matches("Virtual Rtr ID: 51").count();
    let v6 = text.matches("Virtual Rtr ID: 61").count();
    assert!(
        v4 >= 5 && v6 >= 5,
        "too few adverts decoded (v4 {v4}, v6 {v6}):\n{text}"
    );
    assert_eq!(good, v4 + v6, "some checksums are not good:\n{text}");
    assert!(!text.contains("Bad"), "{text}");
    assert_eq!(text.matches("VRRP protocol version: 3").count(), v4 + v6);
    assert!(text.contains("Priority: 150"));
    assert!(
        text.contains("Adver Int: 10\n"),
        "advert interval in centiseconds"
    );
    assert!(text.contains("Time to Live: 255") && text.contains("Hop Limit: 255"));
}

/// A VRRPv3 advert for VRID 51 with one address, checksummed for 198.18.1.50 → 224.0.0.18.
fn advert(
    version: u8,
    vrid: u8,
    priority: u8,
    count: u8,
    addrs: &[Ipv4Addr],
    good_sum: bool,
) -> Vec<u8> {
    let mut p = vec![(version << 4) | 1, vrid, priority, count, 0, 10, 0, 0];
    for a in addrs {
        p.extend_from_slice(&a.octets());
    }
    let mut sum: u32 = 0;
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&[198, 18, 1, 50, 224, 0, 0, 18, 0, 112]);
    pseudo.extend_from_slice(&(p.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&p);
    if pseudo.len() % 2 == 1 {
        pseudo.push(0);
    }
    for c in pseudo.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut ck = !(sum as u16);
    if !good_sum {
        ck ^= 0x5a5a;
    }
    p[6..8].copy_from_slice(&ck.to_be_bytes());
    p
}

/// A well-formed VRRPv2 advert (1s interval, no auth): checksum over the VRRP message only.
fn advert_v2(vrid: u8, priority: u8, addrs: &[Ipv4Addr]) -> Vec<u8> {
    let mut p = vec![0x21, vrid, priority, addrs.len() as u8, 0, 1, 0, 0];
    for a in addrs {
        p.extend_from_slice(&a.octets());
    }
    p.extend_from_slice(&[0; 8]);
    let mut sum: u32 = p
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[6..8].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p
}

/// Sends `payload` as IP protocol 112 to 224.0.0.18 from the current namespace with this TTL.
fn send_raw(payload: &[u8], ttl: i32) {
    // SAFETY: plain socket calls on a socket we own, with valid pointers and lengths.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, 112);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let ifaddr = libc::in_addr {
            s_addr: u32::from_ne_bytes([198, 18, 1, 50]),
        };
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            (&ifaddr as *const libc::in_addr).cast(),
            4,
        );
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_TTL,
            (&ttl as *const i32).cast(),
            4,
        );
        let mut to: libc::sockaddr_in = std::mem::zeroed();
        to.sin_family = libc::AF_INET as u16;
        to.sin_addr = libc::in_addr {
            s_addr: u32::from_ne_bytes([224, 0, 0, 18]),
        };
        let rc = libc::sendto(
            fd,
            payload.as_ptr().cast(),
            payload.len(),
            0,
            (&to as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        assert!(rc >= 0, "sendto: {}", std::io::Error::last_os_error());
        libc::close(fd);
    }
}

#[test]
fn malformed_packets_change_nothing_and_are_counted_by_kind() {
    require_root!();
    let lab = Lab::new("vrrp-malformed", &["lb1"]);
    let _lb1 = lab.keel(
        "lb1",
        &routers(&[router("web", 51, 100, VIP4_CIDR, "")]),
        &[VIP4],
    );
    assert!(wait_until(TAKEOVER, || lab.has_vip("lb1", VIP4)));
    let vip: Ipv4Addr = VIP4.parse().unwrap();
    let other: Ipv4Addr = "198.18.1.99".parse().unwrap();
    // Every one of these claims priority 255 (or 254): acted upon, it would take lb1's VIP.
    let cases: Vec<(&str, Vec<u8>, i32)> = vec![
        ("bad_ttl", advert(3, 51, 255, 1, &[vip], true), 254),
        ("bad_checksum", advert(3, 51, 255, 1, &[vip], false), 255),
        // A well-formed VRRPv2 advert (keepalived's default) at a v3 router.
        ("bad_version", advert_v2(51, 255, &[vip]), 255),
        (
            "truncated",
            advert(3, 51, 255, 1, &[vip], true)[..6].to_vec(),
            255,
        ),
        ("address_count", advert(3, 51, 255, 2, &[vip], true), 255),
        (
            "address_mismatch",
            advert(3, 51, 254, 1, &[other], true),
            255,
        ),
        ("wrong_vrid", advert(3, 99, 255, 1, &[vip], true), 255),
    ];
    let sent = cases.clone();
    lab.t
        .thread_in("client", move || {
            for _ in 0..5 {
                for (_, p, ttl) in &sent {
                    send_raw(p, *ttl);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .join()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        lab.has_vip("lb1", VIP4),
        "a malformed packet took the VIP away\n{}",
        lab.log("lb1")
    );
    assert_eq!(lab.metric_sum("lb1", "keel_vrrp_state{", &[]), 2.0);
    assert_eq!(
        lab.metric_sum("lb1", "keel_vrrp_transitions_total", &[]),
        2.0,
        "INIT→BACKUP→MASTER only"
    );
    for (kind, _, _) in &cases {
        let n = lab.metric_sum(
            "lb1",
            "keel_vrrp_packet_errors_total",
            &[&format!("kind=\"{kind}\"")],
        );
        assert!(n >= 5.0, "{kind} counted {n} times\n{}", lab.metrics("lb1"));
    }
    // Control: the same advert, well formed, does take over; so the crafting above was sound.
    lab.t
        .thread_in("client", move || {
            for _ in 0..3 {
                send_raw(&advert(3, 51, 255, 1, &[vip], true), 255);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .join()
        .unwrap();
    assert!(
        wait_until(TAKEOVER, || !lab.has_vip("lb1", VIP4)),
        "the well-formed advert was not accepted"
    );
}
