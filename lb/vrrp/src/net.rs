//! Linux sockets for VRRP: the protocol-112 raw socket of one (interface, family), the announcers
//! (gratuitous ARP on AF_PACKET, unsolicited NA on ICMPv6) and interface facts from getifaddrs.
//! Everything here is thin: decisions live in `fsm`, parsing in `packet`.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, SockaddrIn6,
};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};

use crate::config::Family;
use crate::packet::{self, DecodeError, MCAST_V4, MCAST_V6, PROTO_VRRP, TTL};
use crate::subnet::Subnet;

/// What the kernel tells us about one interface.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkInfo {
    pub index: u32,
    pub mac: [u8; 6],
    /// Administratively up and carrier present (IFF_UP and IFF_RUNNING).
    pub running: bool,
    pub ipv4: Vec<Ipv4Addr>,
    /// Link-local IPv6 addresses (the source of VRRPv3 IPv6 adverts, RFC 9568 §5.1.2.1).
    pub ipv6_ll: Vec<Ipv6Addr>,
    /// Every address with its prefix length, both families (for `strict_source`).
    pub subnets: Vec<Subnet>,
}

/// Facts about every interface, by name.
pub fn links() -> io::Result<std::collections::BTreeMap<String, LinkInfo>> {
    let mut out: std::collections::BTreeMap<String, LinkInfo> = Default::default();
    for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        let e = out.entry(ifa.interface_name.clone()).or_default();
        let flags = ifa.flags;
        let Some(addr) = ifa.address else { continue };
        if let Some(link) = addr.as_link_addr() {
            e.index = link.ifindex() as u32;
            if let Some(mac) = link.addr() {
                e.mac = mac;
            }
            e.running = flags.contains(nix::net::if_::InterfaceFlags::IFF_UP)
                && flags.contains(nix::net::if_::InterfaceFlags::IFF_RUNNING);
        } else if let Some(v4) = addr.as_sockaddr_in() {
            e.ipv4.push(v4.ip());
            let prefix = ifa.netmask.as_ref().and_then(|m| m.as_sockaddr_in());
            e.subnets.push(Subnet {
                addr: IpAddr::V4(v4.ip()),
                prefix: prefix.map_or(32, |m| m.ip().to_bits().count_ones() as u8),
            });
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            let ip = v6.ip();
            let prefix = ifa.netmask.as_ref().and_then(|m| m.as_sockaddr_in6());
            e.subnets.push(Subnet {
                addr: IpAddr::V6(ip),
                prefix: prefix.map_or(128, |m| m.ip().to_bits().count_ones() as u8),
            });
            if ip.segments()[0] & 0xffc0 == 0xfe80 {
                e.ipv6_ll.push(ip);
            }
        }
    }
    Ok(out)
}

/// One received packet, already checked and decoded (or the reason it was dropped).
#[derive(Debug)]
pub struct Received {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The VRRP version nibble, when the packet got that far (judged before its layout).
    pub version: Option<u8>,
    pub advert: Result<packet::AnyAdvert, RxError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RxError {
    BadTtl(u8),
    Decode(DecodeError),
}

impl RxError {
    pub fn kind(&self) -> &'static str {
        match self {
            RxError::BadTtl(_) => "bad_ttl",
            RxError::Decode(e) => e.kind(),
        }
    }
}

/// The raw socket for protocol 112 on one interface and family: joined to the VRRP group, TTL /
/// hop limit 255 out, hop limit reported in.
pub struct VrrpSocket {
    pub interface: String,
    pub family: Family,
    pub ifindex: u32,
    sock: Socket,
}

impl VrrpSocket {
    pub fn open(interface: &str, ifindex: u32, family: Family) -> io::Result<VrrpSocket> {
        let domain = match family {
            Family::V4 => Domain::IPV4,
            Family::V6 => Domain::IPV6,
        };
        let sock = Socket::new(
            domain,
            Type::RAW,
            Some(Protocol::from(i32::from(PROTO_VRRP))),
        )?;
        sock.set_nonblocking(true)?;
        sock.bind_device(Some(interface.as_bytes()))?;
        match family {
            Family::V4 => {
                sock.join_multicast_v4_n(&MCAST_V4, &InterfaceIndexOrAddress::Index(ifindex))?;
                sock.set_multicast_ttl_v4(u32::from(TTL))?;
                sock.set_ttl_v4(u32::from(TTL))?;
                sock.set_multicast_loop_v4(false)?;
            }
            Family::V6 => {
                sock.join_multicast_v6(&MCAST_V6, ifindex)?;
                sock.set_multicast_hops_v6(u32::from(TTL))?;
                set_int(&sock, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 255)?;
                sock.set_multicast_loop_v6(false)?;
                set_int(&sock, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1)?;
                set_int(&sock, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
            }
        }
        Ok(VrrpSocket {
            interface: interface.to_string(),
            family,
            ifindex,
            sock,
        })
    }

    /// Reads one packet; `Ok(None)` when nothing is waiting.
    pub fn recv(&self) -> io::Result<Option<Received>> {
        let mut buf = [0u8; 2048];
        match self.family {
            Family::V4 => {
                let n = match self.sock.recv(as_uninit(&mut buf)) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                    Err(e) => return Err(e),
                };
                let ip = match packet::parse_ipv4(&buf[..n]) {
                    Ok(ip) => ip,
                    Err(e) => {
                        return Ok(Some(Received {
                            src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                            version: None,
                            advert: Err(RxError::Decode(e)),
                        }))
                    }
                };
                let (src, dst) = (IpAddr::V4(ip.src), IpAddr::V4(ip.dst));
                let advert = if ip.ttl != TTL {
                    Err(RxError::BadTtl(ip.ttl))
                } else {
                    packet::AnyAdvert::decode(ip.payload, src, dst).map_err(RxError::Decode)
                };
                let version = ip.payload.first().map(|b| b >> 4);
                Ok(Some(Received {
                    src,
                    dst,
                    version,
                    advert,
                }))
            }
            Family::V6 => {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo, libc::c_int);
                let msg = match recvmsg::<SockaddrIn6>(
                    self.sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_DONTWAIT,
                ) {
                    Ok(m) => m,
                    Err(nix::errno::Errno::EAGAIN) => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                let n = msg.bytes;
                let src = msg
                    .address
                    .map(|a| IpAddr::V6(a.ip()))
                    .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
                let mut dst = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
                let mut hops: Option<i32> = None;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        match c {
                            ControlMessageOwned::Ipv6PacketInfo(pi) => {
                                dst = IpAddr::V6(Ipv6Addr::from(pi.ipi6_addr.s6_addr))
                            }
                            ControlMessageOwned::Ipv6HopLimit(h) => hops = Some(h),
                            _ => {}
                        }
                    }
                }
                let advert = match hops {
                    Some(h) if h == i32::from(TTL) => {
                        packet::AnyAdvert::decode(&buf[..n], src, dst).map_err(RxError::Decode)
                    }
                    Some(h) => Err(RxError::BadTtl(h.clamp(0, 255) as u8)),
                    None => Err(RxError::BadTtl(0)),
                };
                let version = buf[..n].first().map(|b| b >> 4);
                Ok(Some(Received {
                    src,
                    dst,
                    version,
                    advert,
                }))
            }
        }
    }

    /// Sends `payload` (an encoded advert) from `src` to `dst` on our interface.
    pub fn send(&self, src: IpAddr, dst: IpAddr, payload: &[u8]) -> io::Result<()> {
        let iov = [IoSlice::new(payload)];
        let fd = self.sock.as_raw_fd();
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let pi = libc::in_pktinfo {
                    ipi_ifindex: self.ifindex as i32,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from_ne_bytes(s.octets()),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                let to = SockaddrIn::from(std::net::SocketAddrV4::new(d, 0));
                sendmsg(
                    fd,
                    &iov,
                    &[ControlMessage::Ipv4PacketInfo(&pi)],
                    MsgFlags::MSG_DONTWAIT,
                    Some(&to),
                )
                .map(|_| ())
                .map_err(io::Error::from)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let pi = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: s.octets(),
                    },
                    ipi6_ifindex: self.ifindex,
                };
                let to = SockaddrIn6::from(SocketAddrV6::new(d, 0, 0, self.ifindex));
                sendmsg(
                    fd,
                    &iov,
                    &[ControlMessage::Ipv6PacketInfo(&pi)],
                    MsgFlags::MSG_DONTWAIT,
                    Some(&to),
                )
                .map(|_| ())
                .map_err(io::Error::from)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "source and destination of different families",
            )),
        }
    }
}

impl AsRawFd for VrrpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// Sends gratuitous ARP (IPv4) and unsolicited neighbour advertisements (IPv6); receives nothing.
pub struct Announcer {
    arp: Socket,
    icmp6: Socket,
}

impl Announcer {
    pub fn open() -> io::Result<Announcer> {
        // Protocol 0 on AF_PACKET: the socket sends but is handed no incoming frames.
        let arp = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0)))?;
        arp.set_nonblocking(true)?;
        let icmp6 = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
        icmp6.set_nonblocking(true)?;
        icmp6.set_multicast_hops_v6(255)?;
        set_int(&icmp6, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 255)?;
        icmp6.set_multicast_loop_v6(false)?;
        // ICMP6_FILTER with every bit set blocks every type: we never read this socket.
        let filter = [u32::MAX; 8];
        setsockopt_raw(&icmp6, libc::IPPROTO_ICMPV6, 1, &filter)?;
        Ok(Announcer { arp, icmp6 })
    }

    pub fn garp(&self, ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
        let frame = packet::gratuitous_arp(mac, ip);
        // SAFETY: sockaddr_ll is plain old data; zeroed is a valid value before we fill it.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = 0x0806u16.to_be();
        sll.sll_ifindex = ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: the buffer and address are valid for the lengths given for the whole call.
        let rc = unsafe {
            libc::sendto(
                self.arp.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn na(&self, ifindex: u32, mac: [u8; 6], ip: Ipv6Addr, router: bool) -> io::Result<()> {
        let body = packet::unsolicited_na(mac, ip, router);
        let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        let to = SockaddrIn6::from(SocketAddrV6::new(all_nodes, 0, 0, ifindex));
        // From the VIP itself, as keepalived does; the kernel fills in the ICMPv6 checksum.
        let pi = libc::in6_pktinfo {
            ipi6_addr: libc::in6_addr {
                s6_addr: ip.octets(),
            },
            ipi6_ifindex: ifindex,
        };
        sendmsg(
            self.icmp6.as_raw_fd(),
            &[IoSlice::new(&body)],
            &[ControlMessage::Ipv6PacketInfo(&pi)],
            MsgFlags::MSG_DONTWAIT,
            Some(&to),
        )
        .map(|_| ())
        .map_err(io::Error::from)
    }
}

fn set_int(sock: &Socket, level: i32, name: i32, value: i32) -> io::Result<()> {
    setsockopt_raw(sock, level, name, &value)
}

fn setsockopt_raw<T>(sock: &Socket, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T of the size passed; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn as_uninit(buf: &mut [u8]) -> &mut [std::mem::MaybeUninit<u8>] {
    // SAFETY: u8 and MaybeUninit<u8> have the same layout, and initialised bytes are valid
    // MaybeUninit; the kernel only writes into the slice.
    unsafe { &mut *(buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) }
}
