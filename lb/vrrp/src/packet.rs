//! VRRPv3 advertisements (RFC 9568 §5) and the announcements that follow a takeover (gratuitous
//! ARP, unsolicited neighbour advertisement): decode from `&[u8]`, encode into a buffer, typed
//! errors. No I/O.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//! |(rsvd) |     Max Adver Int     |          Checksum             |
//! |                       IPvX Address(es)                        |
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol number of VRRP.
pub const PROTO_VRRP: u8 = 112;
/// 224.0.0.18
pub const MCAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// ff02::12
pub const MCAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// TTL / hop limit every VRRP packet is sent with and must arrive with (RFC 9568 §5.1.1.3).
pub const TTL: u8 = 255;
const VERSION: u8 = 3;
const TYPE_ADVERT: u8 = 1;
const HEADER_LEN: usize = 8;

/// One VRRPv3 advertisement. Every address has the family of the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    pub vrid: u8,
    pub priority: u8,
    /// Maximum advertisement interval in centiseconds (12 bits on the wire).
    pub max_adver_int: u16,
    pub addrs: Vec<IpAddr>,
}

/// Why a received packet was dropped. `kind()` is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated: {len} bytes, need {need}")]
    Truncated { len: usize, need: usize },
    #[error("version {0}, only VRRPv3 is spoken")]
    BadVersion(u8),
    #[error("type {0}, only advertisements (1) exist")]
    BadType(u8),
    #[error("address count {count} does not match {len} bytes of addresses")]
    AddressCount { count: u8, len: usize },
    #[error("checksum 0x{got:04x}, expected 0x{want:04x}")]
    BadChecksum { got: u16, want: u16 },
    #[error("max advertisement interval 0")]
    ZeroInterval,
    #[error("source and destination are of different families")]
    FamilyMismatch,
    #[error("not an IPv4 packet carrying VRRP")]
    BadIpHeader,
}

impl DecodeError {
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::BadVersion(_) => "bad_version",
            DecodeError::BadType(_) => "bad_type",
            DecodeError::AddressCount { .. } => "address_count",
            DecodeError::BadChecksum { .. } => "bad_checksum",
            DecodeError::ZeroInterval => "zero_interval",
            DecodeError::FamilyMismatch => "family_mismatch",
            DecodeError::BadIpHeader => "bad_ip_header",
        }
    }
}

impl Advert {
    /// Decodes the VRRP part of a packet sent from `src` to `dst` (needed for the checksum).
    pub fn decode(buf: &[u8], src: IpAddr, dst: IpAddr) -> Result<Advert, DecodeError> {
        if buf.len() < HEADER_LEN {
            return Err(DecodeError::Truncated {
                len: buf.len(),
                need: HEADER_LEN,
            });
        }
        let version = buf[0] >> 4;
        if version != VERSION {
            return Err(DecodeError::BadVersion(version));
        }
        let kind = buf[0] & 0x0f;
        if kind != TYPE_ADVERT {
            return Err(DecodeError::BadType(kind));
        }
        let alen = match (src, dst) {
            (IpAddr::V4(_), IpAddr::V4(_)) => 4,
            (IpAddr::V6(_), IpAddr::V6(_)) => 16,
            _ => return Err(DecodeError::FamilyMismatch),
        };
        let count = buf[3];
        let need = HEADER_LEN + usize::from(count) * alen;
        let body = buf.len() - HEADER_LEN;
        if buf.len() < need {
            // A count bigger than the bytes present: either a lie or a cut packet; with no
            // trailing partial address it is a count mismatch, else truncation.
            if body.is_multiple_of(alen) {
                return Err(DecodeError::AddressCount { count, len: body });
            }
            return Err(DecodeError::Truncated {
                len: buf.len(),
                need,
            });
        }
        if buf.len() != need {
            return Err(DecodeError::AddressCount { count, len: body });
        }
        let want = checksum(src, dst, buf);
        if want != 0 {
            let got = u16::from_be_bytes([buf[6], buf[7]]);
            let mut zeroed = buf.to_vec();
            zeroed[6] = 0;
            zeroed[7] = 0;
            return Err(DecodeError::BadChecksum {
                got,
                want: checksum(src, dst, &zeroed),
            });
        }
        let max_adver_int = u16::from_be_bytes([buf[4], buf[5]]) & 0x0fff;
        if max_adver_int == 0 {
            return Err(DecodeError::ZeroInterval);
        }
        let addrs = buf[HEADER_LEN..]
            .chunks_exact(alen)
            .map(|c| match c.len() {
                4 => IpAddr::V4(Ipv4Addr::new(c[0], c[1], c[2], c[3])),
                _ => {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(c);
                    IpAddr::V6(Ipv6Addr::from(o))
                }
            })
            .collect();
        Ok(Advert {
            vrid: buf[1],
            priority: buf[2],
            max_adver_int,
            addrs,
        })
    }

    /// Appends the encoded advertisement for a packet from `src` to `dst`; addresses of the other
    /// family than `src` are skipped (the model never mixes them).
    pub fn encode(&self, src: IpAddr, dst: IpAddr, out: &mut Vec<u8>) {
        let start = out.len();
        let addrs: Vec<&IpAddr> = self
            .addrs
            .iter()
            .filter(|a| a.is_ipv4() == src.is_ipv4())
            .take(255)
            .collect();
        out.push((VERSION << 4) | TYPE_ADVERT);
        out.push(self.vrid);
        out.push(self.priority);
        out.push(addrs.len() as u8);
        out.extend_from_slice(&(self.max_adver_int & 0x0fff).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        for a in addrs {
            match a {
                IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
                IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
            }
        }
        let sum = checksum(src, dst, &out[start..]);
        out[start + 6..start + 8].copy_from_slice(&sum.to_be_bytes());
    }
}

/// The Internet checksum of `vrrp` with the IPv4 or IPv6 pseudo-header (RFC 9568 §5.2.8). Over a
/// packet whose checksum field is filled in, a correct packet sums to 0.
pub fn checksum(src: IpAddr, dst: IpAddr, vrrp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        let mut chunks = bytes.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    };
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            add(&s.octets());
            add(&d.octets());
            add(&[0, PROTO_VRRP]);
            add(&(vrrp.len() as u16).to_be_bytes());
        }
        (s, d) => {
            add(&to_v6(s).octets());
            add(&to_v6(d).octets());
            add(&(vrrp.len() as u32).to_be_bytes());
            add(&[0, 0, 0, PROTO_VRRP]);
        }
    }
    add(vrrp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// What an IPv4 raw socket hands us: the IP header's facts and the VRRP payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Packet<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub payload: &'a [u8],
}

/// Splits an IPv4 datagram (as read from a raw socket) into header facts and payload.
pub fn parse_ipv4(buf: &[u8]) -> Result<Ipv4Packet<'_>, DecodeError> {
    if buf.len() < 20 {
        return Err(DecodeError::Truncated {
            len: buf.len(),
            need: 20,
        });
    }
    if buf[0] >> 4 != 4 || buf[9] != PROTO_VRRP {
        return Err(DecodeError::BadIpHeader);
    }
    let ihl = usize::from(buf[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if ihl < 20 || total < ihl {
        return Err(DecodeError::BadIpHeader);
    }
    if buf.len() < total {
        return Err(DecodeError::Truncated {
            len: buf.len(),
            need: total,
        });
    }
    Ok(Ipv4Packet {
        src: Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]),
        dst: Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]),
        ttl: buf[8],
        payload: &buf[ihl..total],
    })
}

/// A gratuitous ARP request for `ip` at `mac`, as a whole Ethernet frame (what keepalived sends:
/// broadcast, sender = target = VIP).
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    f[32..38].copy_from_slice(&[0xff; 6]);
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// The ICMPv6 body of an unsolicited neighbour advertisement for `target` at `mac` (RFC 4861
/// §4.4): override set, solicited clear, router only when configured (keepalived #200, #375).
/// The checksum is left 0: the kernel fills it in for ICMPv6 raw sockets.
pub fn unsolicited_na(mac: [u8; 6], target: Ipv6Addr, router: bool) -> [u8; 32] {
    let mut p = [0u8; 32];
    p[0] = 136; // Neighbor Advertisement
    p[4] = 0x20 | if router { 0x80 } else { 0 };
    p[8..24].copy_from_slice(&target.octets());
    p[24] = 2; // target link-layer address option
    p[25] = 1; // 8 bytes
    p[26..32].copy_from_slice(&mac);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Frames captured from keepalived 2.2.7 (`vrrp_version 3`) with tcpdump in a netns; tshark
    // reports each VRRP checksum as [correct].
    const KA_V4: &str = "01005e000012dabfc8fef268080045c0002400010000ff701379c612010be000001231339602006403c7c6120064c6120065";
    const KA_V4_PRIO0: &str = "01005e000012dabfc8fef268080045c0002400040000ff701376c612010be000001231330002006499c7c6120064c6120065";
    const KA_V6: &str = "333300000012dabfc8fef26886dd6c09e7e0001870fffe80000000000000d8bfc8fffefef268ff020000000000000000000000000012313464010032aa9920010db8000000000000000000000100";
    const KA_NA: &str = "333300000001dabfc8fef26886dd6000000000203aff20010db8000000000000000000000100ff020000000000000000000000000001880063062000000020010db80000000000000000000001000201dabfc8fef268";
    const KA_GARP: &str =
        "ffffffffffffdabfc8fef26808060001080006040001dabfc8fef268c6120064ffffffffffffc6120064";
    const MAC: [u8; 6] = [0xda, 0xbf, 0xc8, 0xfe, 0xf2, 0x68];

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().unwrap())
    }
    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse().unwrap())
    }

    #[test]
    fn decodes_keepalived_ipv4_advert_and_reencodes_it_byte_for_byte() {
        let frame = hex(KA_V4);
        let ip = parse_ipv4(&frame[14..]).unwrap();
        assert_eq!(ip.ttl, 255);
        assert_eq!(ip.src, "198.18.1.11".parse::<Ipv4Addr>().unwrap());
        assert_eq!(ip.dst, MCAST_V4);
        let adv = Advert::decode(ip.payload, ip.src.into(), ip.dst.into()).unwrap();
        assert_eq!(
            adv,
            Advert {
                vrid: 51,
                priority: 150,
                max_adver_int: 100,
                addrs: vec![v4("198.18.0.100"), v4("198.18.0.101")],
            }
        );
        let mut out = Vec::new();
        adv.encode(ip.src.into(), ip.dst.into(), &mut out);
        assert_eq!(out, ip.payload);
    }

    #[test]
    fn decodes_keepalived_priority_zero_advert() {
        let frame = hex(KA_V4_PRIO0);
        let ip = parse_ipv4(&frame[14..]).unwrap();
        let adv = Advert::decode(ip.payload, ip.src.into(), ip.dst.into()).unwrap();
        assert_eq!(adv.priority, 0);
        let mut out = Vec::new();
        adv.encode(ip.src.into(), ip.dst.into(), &mut out);
        assert_eq!(out, ip.payload);
    }

    #[test]
    fn decodes_keepalived_ipv6_advert_with_the_ipv6_pseudo_header() {
        let frame = hex(KA_V6);
        let payload = &frame[14 + 40..];
        let (src, dst) = (v6("fe80::d8bf:c8ff:fefe:f268"), IpAddr::V6(MCAST_V6));
        let adv = Advert::decode(payload, src, dst).unwrap();
        assert_eq!(
            adv,
            Advert {
                vrid: 52,
                priority: 100,
                max_adver_int: 50,
                addrs: vec![v6("2001:db8::100")],
            }
        );
        let mut out = Vec::new();
        adv.encode(src, dst, &mut out);
        assert_eq!(out, payload);
    }

    #[test]
    fn every_malformation_has_its_own_error() {
        let frame = hex(KA_V4);
        let ip = parse_ipv4(&frame[14..]).unwrap();
        let (s, d) = (IpAddr::V4(ip.src), IpAddr::V4(ip.dst));
        let good = ip.payload.to_vec();
        let dec = |b: &[u8]| Advert::decode(b, s, d).unwrap_err();

        assert_eq!(dec(&good[..5]), DecodeError::Truncated { len: 5, need: 8 });
        assert_eq!(
            dec(&good[..14]),
            DecodeError::Truncated { len: 14, need: 16 }
        );
        let mut b = good.clone();
        b[0] = 0x21;
        assert_eq!(dec(&b), DecodeError::BadVersion(2));
        b[0] = 0x32;
        assert_eq!(dec(&b), DecodeError::BadType(2));
        let mut b = good.clone();
        b[3] = 3;
        assert_eq!(dec(&b), DecodeError::AddressCount { count: 3, len: 8 });
        b[3] = 1;
        assert_eq!(dec(&b), DecodeError::AddressCount { count: 1, len: 8 });
        let mut b = good.clone();
        b[2] = 200; // priority changed, checksum not
        assert_eq!(dec(&b).kind(), "bad_checksum");
        // Another destination changes the pseudo-header: the same bytes no longer check.
        assert_eq!(
            Advert::decode(&good, s, v4("198.18.1.12"))
                .unwrap_err()
                .kind(),
            "bad_checksum"
        );
        assert_eq!(
            Advert::decode(&good, s, v6("ff02::12")).unwrap_err(),
            DecodeError::FamilyMismatch
        );
        let zero = Advert {
            vrid: 1,
            priority: 1,
            max_adver_int: 0,
            addrs: vec![v4("198.18.0.1")],
        };
        let mut b = Vec::new();
        zero.encode(s, d, &mut b);
        assert_eq!(dec(&b), DecodeError::ZeroInterval);
        assert_eq!(parse_ipv4(&[0x45; 10]).unwrap_err().kind(), "truncated");
        let mut hdr = frame[14..].to_vec();
        hdr[9] = 17;
        assert_eq!(parse_ipv4(&hdr).unwrap_err(), DecodeError::BadIpHeader);
    }

    #[test]
    fn interval_is_twelve_bits() {
        let a = Advert {
            vrid: 7,
            priority: 254,
            max_adver_int: 4095,
            addrs: vec![v4("198.18.0.1")],
        };
        let mut b = Vec::new();
        a.encode(v4("198.18.1.1"), IpAddr::V4(MCAST_V4), &mut b);
        assert_eq!(&b[4..6], &[0x0f, 0xff]);
        // Reserved bits set by a peer are ignored, as RFC 9568 §5.2.6 asks.
        b[4] |= 0xf0;
        let sum = {
            b[6] = 0;
            b[7] = 0;
            checksum(v4("198.18.1.1"), IpAddr::V4(MCAST_V4), &b)
        };
        b[6..8].copy_from_slice(&sum.to_be_bytes());
        let d = Advert::decode(&b, v4("198.18.1.1"), IpAddr::V4(MCAST_V4)).unwrap();
        assert_eq!(d.max_adver_int, 4095);
    }

    #[test]
    fn gratuitous_arp_matches_keepalived() {
        let ip = "198.18.0.100".parse().unwrap();
        assert_eq!(gratuitous_arp(MAC, ip).to_vec(), hex(KA_GARP));
    }

    #[test]
    fn unsolicited_na_matches_keepalived_with_router_flag_off() {
        let frame = hex(KA_NA);
        let mut icmp = frame[14 + 40..].to_vec();
        icmp[2] = 0; // the kernel computes the ICMPv6 checksum
        icmp[3] = 0;
        let na = unsolicited_na(MAC, "2001:db8::100".parse().unwrap(), false);
        assert_eq!(na.to_vec(), icmp);
        assert_eq!(
            unsolicited_na(MAC, "2001:db8::100".parse().unwrap(), true)[4],
            0xa0
        );
    }
}
