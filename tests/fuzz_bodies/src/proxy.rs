//! PROXY protocol v2. keel-lb only *writes* the header (to backends with `proxy_protocol: v2`); it
//! never reads one, so there is no PROXY parser in Keel to fuzz. This body fuzzes the writer instead:
//! any pair of client and frontend addresses, read back by a decoder written here from haproxy's
//! `doc/proxy-protocol.txt` §2.2 alone, must give a header whose length field matches the bytes
//! written and whose addresses are the ones given.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use keel_lb::proxy_protocol::{self, MAX_LEN, SIGNATURE};

/// Input: a byte choosing the families (bit 0: client IPv6, bit 1: frontend IPv6), then the
/// addresses and ports (missing bytes are zero).
pub fn v2(data: &[u8]) {
    let Some((&families, rest)) = data.split_first() else {
        return;
    };
    let mut b = [0u8; 36];
    let n = rest.len().min(b.len());
    b[..n].copy_from_slice(&rest[..n]);
    let addr = |six: bool, ip: &[u8], port: &[u8]| {
        let port = u16::from_be_bytes([port[0], port[1]]);
        let ip = if six {
            let mut o = [0u8; 16];
            o.copy_from_slice(ip);
            IpAddr::V6(Ipv6Addr::from(o))
        } else {
            IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]))
        };
        SocketAddr::new(ip, port)
    };
    let src = addr(families & 1 != 0, &b[..16], &b[32..34]);
    let dst = addr(families & 2 != 0, &b[16..32], &b[34..36]);

    let (buf, len) = proxy_protocol::encode(src, dst);
    assert!(len <= MAX_LEN, "header of {len} bytes, buffer {MAX_LEN}");
    let header = &buf[..len];
    let parsed = match parse(header) {
        Ok(p) => p,
        Err(why) => panic!("keel-lb wrote a header a receiver rejects: {why}: {header:02x?}"),
    };
    assert_eq!(
        parsed.consumed, len,
        "length field and bytes written differ"
    );
    // Mixed families go out as IPv6 with the IPv4 side mapped (what a dual-stack socket shows).
    let both_v4 = src.is_ipv4() && dst.is_ipv4();
    let want = |a: SocketAddr| match (both_v4, a.ip()) {
        (false, IpAddr::V4(v4)) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        _ => a,
    };
    assert_eq!(parsed.src, want(src));
    assert_eq!(parsed.dst, want(dst));
}

/// What a receiver reads from a PROXY v2 header.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// 16 + the length field: where the client's data starts.
    pub consumed: usize,
}

/// A PROXY v2 receiver (haproxy `doc/proxy-protocol.txt` §2.2), TCP over IPv4 or IPv6 with command
/// PROXY: what a backend with `accept-proxy` does with the first bytes of a connection.
pub fn parse(buf: &[u8]) -> Result<Parsed, &'static str> {
    if buf.len() < 16 {
        return Err("shorter than the 16-byte fixed header");
    }
    if buf[..12] != SIGNATURE {
        return Err("no v2 signature");
    }
    if buf[12] != 0x21 {
        return Err("not version 2, command PROXY");
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let end = 16 + len;
    if end > buf.len() {
        return Err("length field runs past the input");
    }
    let body = &buf[16..end];
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    match buf[13] {
        0x11 if len >= 12 => Ok(Parsed {
            src: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(body[0], body[1], body[2], body[3])),
                port(&body[8..10]),
            ),
            dst: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(body[4], body[5], body[6], body[7])),
                port(&body[10..12]),
            ),
            consumed: end,
        }),
        0x21 if len >= 36 => {
            let six = |b: &[u8]| {
                let mut o = [0u8; 16];
                o.copy_from_slice(b);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            Ok(Parsed {
                src: SocketAddr::new(six(&body[..16]), port(&body[32..34])),
                dst: SocketAddr::new(six(&body[16..32]), port(&body[34..36])),
                consumed: end,
            })
        }
        0x11 | 0x21 => Err("address block shorter than the family needs"),
        _ => Err("not TCP over IPv4 or IPv6"),
    }
}
