//! Listening sockets. They set IP_FREEBIND (IPV6_FREEBIND for IPv6) so keel-lb can bind a virtual IP
//! this host does not hold yet: VRRP adds it when this node becomes master, and the listener is
//! already there. SO_REUSEADDR lets a restart rebind while old connections sit in TIME_WAIT.
//! IP_TRANSPARENT (when permitted: it needs CAP_NET_ADMIN, which VRRP needs anyway) is inherited by
//! accepted sockets and lets them keep sending from a VIP that a planned handover has just released:
//! without it, a reply written after the release cannot be routed (the source is no longer local)
//! and the client waits in silence for a connection the old master accepted a moment earlier.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

fn socket(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // A `[::]` listener serves only IPv6, so that an IPv4 frontend on the same port can coexist.
        s.set_only_v6(true)?;
        s.set_freebind_v6(true)?;
        let _ = s.set_ip_transparent_v6(true);
    } else {
        s.set_freebind_v4(true)?;
        let _ = s.set_ip_transparent_v4(true);
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

pub fn tcp(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let s = socket(addr, Type::STREAM, Protocol::TCP)?;
    // Accepted sockets inherit TCP_NODELAY on Linux: one setsockopt per listener, not per client.
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    // The kernel caps this at net.core.somaxconn.
    s.listen(4096)?;
    tokio::net::TcpListener::from_std(s.into())
}

pub fn udp(addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let s = socket(addr, Type::DGRAM, Protocol::UDP)?;
    s.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 198.18.0.0/15 is reserved for benchmarking and never assigned to this host's interfaces in
    /// tests; binding sends nothing.
    #[tokio::test]
    async fn listeners_bind_an_address_the_host_does_not_hold_yet() {
        let vip: SocketAddr = "198.18.255.254:0".parse().unwrap();
        let plain = std::net::TcpListener::bind(vip);
        assert!(plain.is_err(), "test assumes the host does not own {vip}");
        let l = tcp(vip).unwrap();
        assert_eq!(l.local_addr().unwrap().ip(), vip.ip());
        let u = udp(vip).unwrap();
        assert_eq!(u.local_addr().unwrap().ip(), vip.ip());
    }
}
