//! VRRP advertisements as the two raw sockets of `keel_vrrp::net` receive them: an IPv4 datagram
//! with its header (`parse_ipv4`, then `AnyAdvert::decode`: v2 or v3 by the version nibble) and an
//! IPv6 payload whose addresses come from the socket (`AnyAdvert::decode`: v3; v2 is refused).
//!
//! A random checksum is right once in 65,536 inputs, so the first input byte can ask the body to fill
//! in the right one: the fuzzer then reaches what the decoder checks after the checksum, and inputs
//! without the flag keep exercising the checksum check itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use keel_vrrp::packet::{self, Advert, AdvertV2, AnyAdvert, Auth};

const FIX_CHECKSUM: u8 = 1;
/// IPv6 target only: give the decoder an IPv4 source with an IPv6 destination (never produced by
/// the socket, but `decode` takes any pair).
const MIXED_FAMILIES: u8 = 2;

/// Input: a flag byte, then an IPv4 datagram as read from the protocol-112 raw socket.
pub fn ipv4(data: &[u8]) {
    let Some((&flags, datagram)) = data.split_first() else {
        return;
    };
    let Ok(ip) = packet::parse_ipv4(datagram) else {
        return;
    };
    let ihl = usize::from(datagram[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    assert!(ihl >= 20, "header length {ihl} accepted");
    assert_eq!(
        ihl + ip.payload.len(),
        total,
        "payload is not header..total"
    );
    assert!(total <= datagram.len(), "payload runs past the datagram");
    let (src, dst) = (IpAddr::V4(ip.src), IpAddr::V4(ip.dst));
    let mut payload = ip.payload.to_vec();
    if flags & FIX_CHECKSUM != 0 {
        fix_checksum(&mut payload, src, dst);
    }
    decode_and_check(&payload, src, dst);
}

/// Input: a flag byte, 16 bytes of source and 16 of destination address, then the VRRP payload.
pub fn ipv6(data: &[u8]) {
    if data.len() < 33 {
        return;
    }
    let flags = data[0];
    let octets = |b: &[u8]| {
        let mut o = [0u8; 16];
        o.copy_from_slice(b);
        o
    };
    let src = if flags & MIXED_FAMILIES != 0 {
        IpAddr::V4(Ipv4Addr::new(data[1], data[2], data[3], data[4]))
    } else {
        IpAddr::V6(Ipv6Addr::from(octets(&data[1..17])))
    };
    let dst = IpAddr::V6(Ipv6Addr::from(octets(&data[17..33])));
    let mut payload = data[33..].to_vec();
    if flags & FIX_CHECKSUM != 0 {
        fix_checksum(&mut payload, src, dst);
    }
    decode_and_check(&payload, src, dst);
}

/// Writes the checksum a sender would have written (v2 over the message, v3 with the pseudo-header).
fn fix_checksum(payload: &mut [u8], src: IpAddr, dst: IpAddr) {
    if payload.len() < 8 {
        return;
    }
    payload[6] = 0;
    payload[7] = 0;
    let sum = if payload[0] >> 4 == 2 {
        packet::checksum_v2(payload)
    } else {
        packet::checksum(src, dst, payload)
    };
    payload[6..8].copy_from_slice(&sum.to_be_bytes());
}

fn decode_and_check(payload: &[u8], src: IpAddr, dst: IpAddr) {
    match AnyAdvert::decode(payload, src, dst) {
        Err(e) => {
            // Every error has a metric label and a message (the driver logs and counts both).
            assert!(!e.kind().is_empty());
            assert!(!e.to_string().is_empty());
        }
        Ok(AnyAdvert::V3(a)) => {
            assert_eq!(
                payload[0], 0x31,
                "v3 advert decoded from another version/type"
            );
            assert_eq!(a.addrs.len(), usize::from(payload[3]), "address count");
            assert!(
                a.addrs.iter().all(|x| x.is_ipv4() == src.is_ipv4()),
                "address of the other family"
            );
            assert!((1..=0x0fff).contains(&a.max_adver_int), "interval");
            let mut again = Vec::new();
            a.encode(src, dst, &mut again);
            assert_eq!(again.len(), payload.len(), "re-encoded length");
            // Only the 4 reserved bits ahead of Max Adver Int may differ (RFC 9568 §5.2.5: sent as
            // zero, ignored on receipt), and so the checksum; the checksum has two valid forms
            // (0x0000 and 0xffff) when the rest sums to 0xffff, so it is checked by decoding again.
            assert_eq!(again[..4], payload[..4]);
            assert_eq!(again[4], payload[4] & 0x0f);
            assert_eq!(again[5], payload[5]);
            assert_eq!(again[8..], payload[8..]);
            assert_eq!(Advert::decode(&again, src, dst), Ok(a), "round trip");
        }
        Ok(AnyAdvert::V2(a)) => {
            assert!(src.is_ipv4() && dst.is_ipv4(), "v2 over IPv6 accepted");
            assert_eq!(
                payload[0], 0x21,
                "v2 advert decoded from another version/type"
            );
            assert_eq!(a.addrs.len(), usize::from(payload[3]), "address count");
            assert!(a.adver_int > 0, "interval 0 accepted");
            let mut again = Vec::new();
            a.encode(&mut again);
            assert_eq!(again.len(), payload.len(), "re-encoded length");
            assert_eq!(again[..6], payload[..6]);
            assert_eq!(again[8..], payload[8..]);
            assert_eq!(AdvertV2::decode(&again), Ok(a.clone()), "round trip");
            let v3 = a.to_advert();
            assert_eq!(v3.max_adver_int, u16::from(a.adver_int) * 100);
            assert_eq!(v3.addrs.len(), a.addrs.len());
            // keepalived's rule: a password is all 8 bytes; type 0 ignores the data.
            let own = Auth::Pass(a.auth_data);
            assert_eq!(a.check_auth(&own).is_ok(), a.auth_type == 1);
            assert_eq!(a.check_auth(&Auth::None).is_ok(), a.auth_type == 0);
        }
    }
}
