//! PROXY protocol version 2 header (haproxy `doc/proxy-protocol.txt`, section 2.2): the binary form
//! a backend with `accept-proxy` expects before any data, carrying the client's and the frontend's
//! addresses.

use std::net::SocketAddr;

pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Largest header we build (IPv6): 16 fixed + 36 address bytes.
pub const MAX_LEN: usize = 52;

/// Encodes a PROXY v2 header for a TCP connection from `src` to `dst`; returns the buffer and length.
pub fn encode(src: SocketAddr, dst: SocketAddr) -> ([u8; MAX_LEN], usize) {
    let mut b = [0u8; MAX_LEN];
    b[..12].copy_from_slice(&SIGNATURE);
    b[12] = 0x21; // version 2, command PROXY
                  // Mixed families (an IPv4 client on a dual-stack socket) are written as IPv6, mapped.
    let v4 = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => Some((s, d)),
        _ => None,
    };
    let len = match v4 {
        Some((s, d)) => {
            b[13] = 0x11; // AF_INET, STREAM
            b[14..16].copy_from_slice(&12u16.to_be_bytes());
            b[16..20].copy_from_slice(&s.ip().octets());
            b[20..24].copy_from_slice(&d.ip().octets());
            b[24..26].copy_from_slice(&s.port().to_be_bytes());
            b[26..28].copy_from_slice(&d.port().to_be_bytes());
            28
        }
        None => {
            let six = |a: SocketAddr| match a {
                SocketAddr::V4(v) => v.ip().to_ipv6_mapped(),
                SocketAddr::V6(v) => *v.ip(),
            };
            b[13] = 0x21; // AF_INET6, STREAM
            b[14..16].copy_from_slice(&36u16.to_be_bytes());
            b[16..32].copy_from_slice(&six(src).octets());
            b[32..48].copy_from_slice(&six(dst).octets());
            b[48..50].copy_from_slice(&src.port().to_be_bytes());
            b[50..52].copy_from_slice(&dst.port().to_be_bytes());
            52
        }
    };
    (b, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_matches_the_spec_bytes() {
        let (b, n) = encode(
            "192.0.2.1:51000".parse().unwrap(),
            "198.51.100.7:443".parse().unwrap(),
        );
        assert_eq!(n, 28);
        assert_eq!(
            &b[..n],
            &[
                0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54,
                0x0a, // signature
                0x21, 0x11, 0x00, 0x0c, // v2 PROXY, TCP4, 12 bytes
                192, 0, 2, 1, 198, 51, 100, 7, // addresses
                0xc7, 0x38, 0x01, 0xbb, // ports 51000, 443
            ]
        );
    }

    #[test]
    fn ipv6_header_has_36_address_bytes() {
        let (b, n) = encode(
            "[2001:db8::1]:1000".parse().unwrap(),
            "[2001:db8::2]:443".parse().unwrap(),
        );
        assert_eq!(n, 52);
        assert_eq!(&b[12..16], &[0x21, 0x21, 0x00, 0x24]);
        assert_eq!(&b[48..52], &[0x03, 0xe8, 0x01, 0xbb]);
    }
}
