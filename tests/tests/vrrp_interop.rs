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
        // Version 2 in a v3 layout (no auth data): by v2's rules it is cut short, but no router
        // here speaks v2, so it is a version error.
        ("bad_version", advert(2, 51, 255, 1, &[vip], true), 255),
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
    // Exactly five per case: a packet counted under another kind shows up as a miscount.
    for (kind, _, _) in &cases {
        let want = 5 * cases.iter().filter(|(k, _, _)| k == kind).count();
        let n = lab.metric_sum(
            "lb1",
            "keel_vrrp_packet_errors_total",
            &[&format!("kind=\"{kind}\"")],
        );
        assert_eq!(
            n,
            want as f64,
            "{kind} counted {n} times\n{}",
            lab.metrics("lb1")
        );
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

/// Internet checksum of `data` (ones' complement of the ones' complement sum).
fn inet_sum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends a well-formed VRRPv3 advert (10 ms interval) for `vrid` to the VRRP group from `src`, an
/// address of eth0 in the current namespace, with TTL / hop limit 255. IPv4 sums the pseudo-header
/// here; IPv6 lets the kernel do it (IPV6_CHECKSUM).
fn send_advert_from(src: std::net::IpAddr, vrid: u8, priority: u8, vip: std::net::IpAddr) {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    use std::net::{IpAddr, SocketAddrV4, SocketAddrV6};
    let mut p = vec![0x31, vrid, priority, 1, 0, 10, 0, 0];
    match vip {
        IpAddr::V4(a) => p.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => p.extend_from_slice(&a.octets()),
    }
    // SAFETY: if_nametoindex reads a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
    assert!(ifindex > 0, "no eth0");
    match src {
        IpAddr::V4(s) => {
            let mut pseudo = s.octets().to_vec();
            pseudo.extend_from_slice(&[224, 0, 0, 18, 0, 112]);
            pseudo.extend_from_slice(&(p.len() as u16).to_be_bytes());
            pseudo.extend_from_slice(&p);
            let sum = inet_sum(&pseudo);
            p[6..8].copy_from_slice(&sum.to_be_bytes());
            let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(112))).unwrap();
            sock.bind(&SockAddr::from(SocketAddrV4::new(s, 0))).unwrap();
            sock.set_multicast_if_v4(&s).unwrap();
            sock.set_multicast_ttl_v4(255).unwrap();
            sock.send_to(&p, &SockAddr::from(SocketAddrV4::new(MCAST4, 0)))
                .unwrap();
        }
        IpAddr::V6(s) => {
            let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::from(112))).unwrap();
            let scope = if s.is_unicast_link_local() {
                ifindex
            } else {
                0
            };
            sock.bind(&SockAddr::from(SocketAddrV6::new(s, 0, 0, scope)))
                .unwrap();
            sock.set_multicast_if_v6(ifindex).unwrap();
            sock.set_multicast_hops_v6(255).unwrap();
            let offset: libc::c_int = 6;
            // SAFETY: setsockopt with a live c_int of the size given, on a socket we own.
            let rc = unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&sock),
                    libc::IPPROTO_IPV6,
                    libc::IPV6_CHECKSUM,
                    (&offset as *const libc::c_int).cast(),
                    4,
                )
            };
            assert_eq!(rc, 0, "IPV6_CHECKSUM: {}", std::io::Error::last_os_error());
            let to = SocketAddrV6::new("ff02::12".parse().unwrap(), 0, 0, ifindex);
            sock.send_to(&p, &SockAddr::from(to)).unwrap();
        }
    }
}

const MCAST4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);

#[test]
fn strict_source_ignores_a_hostile_master_from_another_subnet_on_the_segment() {
    require_root!();
    let mut lab = Lab::new("vrrp-strict", &["lb1"]);
    // On the same bridge as lb1, but numbered in another subnet (what a rogue host does).
    lab.t
        .host("intruder", &["198.19.5.50/24", "2001:db8:5::50/64"]);
    let (lax4, lax6) = ("198.18.1.101", "2001:db8:1::101");
    let strict = "    strict_source: true\n";
    let _lb1 = lab.keel(
        "lb1",
        &routers(&[
            router("s4", 51, 100, VIP4_CIDR, strict),
            router("s6", 52, 100, "2001:db8:1::100/64", strict),
            // The controls: the same adverts at routers without strict_source must win.
            router("l4", 53, 100, "198.18.1.101/24", ""),
            router("l6", 54, 100, "2001:db8:1::101/64", ""),
        ]),
        &[VIP4],
    );
    let all = [VIP4, VIP6, lax4, lax6];
    assert!(
        wait_until(TAKEOVER, || all.iter().all(|v| lab.has_vip("lb1", v))),
        "lb1 did not become master of all four\n{}",
        lab.log("lb1")
    );
    lab.t
        .thread_in("intruder", move || {
            let (o4, o6) = (
                "198.19.5.50".parse().unwrap(),
                "2001:db8:5::50".parse().unwrap(),
            );
            for _ in 0..10 {
                send_advert_from(o4, 51, 255, VIP4.parse().unwrap());
                send_advert_from(o6, 52, 255, VIP6.parse().unwrap());
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .join()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        lab.has_vip("lb1", VIP4) && lab.has_vip("lb1", VIP6),
        "an advert from outside the subnets took a strict router's VIP\n{}",
        lab.log("lb1")
    );
    for family in ["ipv4", "ipv6"] {
        let n = lab.metric_sum(
            "lb1",
            "keel_vrrp_packet_errors_total",
            &[
                "kind=\"source_outside_subnets\"",
                &format!("family=\"{family}\""),
            ],
        );
        assert!(n >= 10.0, "{family}: counted {n}\n{}", lab.metrics("lb1"));
    }
    // The same outsider, the same adverts, at the routers without strict_source: believed.
    lab.t
        .thread_in("intruder", move || {
            let (o4, o6) = (
                "198.19.5.50".parse().unwrap(),
                "2001:db8:5::50".parse().unwrap(),
            );
            for _ in 0..10 {
                send_advert_from(o4, 53, 255, lax4.parse().unwrap());
                send_advert_from(o6, 54, 255, lax6.parse().unwrap());
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .join()
        .unwrap();
    assert!(
        wait_until(TAKEOVER, || !lab.has_vip("lb1", lax4)
            && !lab.has_vip("lb1", lax6)),
        "the outsider's adverts were not accepted without strict_source: the test proves nothing"
    );
    // IPv6 adverts come from link-local addresses, which are inside fe80::/64 of every link: the
    // intruder's link-local source is believed even in strict mode (documented).
    let ll = lab.t.sh(
        "intruder",
        "ip -6 -o addr show dev eth0 scope link | awk '{print $4}' | cut -d/ -f1",
    );
    let ll: std::net::IpAddr = ll.trim().parse().unwrap();
    lab.t
        .thread_in("intruder", move || {
            for _ in 0..10 {
                send_advert_from(ll, 52, 255, VIP6.parse().unwrap());
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .join()
        .unwrap();
    assert!(
        wait_until(TAKEOVER, || !lab.has_vip("lb1", VIP6)),
        "a link-local source was dropped in strict mode"
    );
    assert!(lab.has_vip("lb1", VIP4));
}
