//! VRRPv3 advertisements (RFC 9568 §5), VRRPv2 advertisements (RFC 3768 §5, IPv4 only, with
//! keepalived's simple text password) and the announcements that follow a takeover (gratuitous
//! ARP, unsolicited neighbour advertisement): decode from `&[u8]`, encode into a buffer, typed
//! errors. No I/O.
//!
//! ```text
//!  VRRPv3                                                   VRRPv2
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|   (same)
//! |(rsvd) |     Max Adver Int     |          Checksum             |   |Auth Type|Adver Int (s)|Checksum|
//! |                       IPvX Address(es)                        |   IPv4 Address(es)
//!                                                                      Authentication Data (8 bytes)
//! ```
//!
//! The v3 checksum covers a pseudo-header; the v2 checksum covers the VRRP message only.

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
const VERSION_2: u8 = 2;
const TYPE_ADVERT: u8 = 1;
const HEADER_LEN: usize = 8;
/// Length of the v2 authentication data that ends every v2 advertisement.
pub const AUTH_LEN: usize = 8;
const AUTH_NONE: u8 = 0;
const AUTH_PASS: u8 = 1;

/// VRRP protocol version of a virtual router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// RFC 3768: IPv4 only, interval in seconds, optional simple text password.
    V2,
    /// RFC 9568: IPv4 and IPv6, interval in centiseconds, pseudo-header checksum.
    V3,
}

impl Version {
    pub fn number(self) -> u8 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }
}

/// VRRPv2 authentication as keepalived does it (RFC 2338 §5.3.6; RFC 3768 keeps the field).
/// `Debug` never shows the password (configs are logged).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Type 0, authentication data all zero.
    None,
    /// Type 1, the password NUL-padded to 8 bytes (keepalived's `auth_type PASS`).
    Pass([u8; AUTH_LEN]),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Pass(_) => f.write_str("Pass(<redacted>)"),
        }
    }
}

impl Auth {
    /// `password` must be 1-8 bytes (the config checks); longer is cut at 8, as keepalived does.
    pub fn pass(password: &[u8]) -> Auth {
        let mut data = [0u8; AUTH_LEN];
        let n = password.len().min(AUTH_LEN);
        data[..n].copy_from_slice(&password[..n]);
        Auth::Pass(data)
    }

    fn wire(&self) -> (u8, [u8; AUTH_LEN]) {
        match self {
            Auth::None => (AUTH_NONE, [0; AUTH_LEN]),
            Auth::Pass(d) => (AUTH_PASS, *d),
        }
    }
}

/// Why a v2 advertisement failed our authentication (metric kind `auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("auth type {got}, expected {want}")]
    TypeMismatch { got: u8, want: u8 },
    #[error("wrong password")]
    BadPassword,
}

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
    #[error("VRRPv2 over IPv6 is not spoken (RFC 3768 is IPv4 only)")]
    V2OverIpv6,
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
            DecodeError::V2OverIpv6 => "bad_version",
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

/// One VRRPv2 advertisement (RFC 3768 §5.1), exactly as on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvertV2 {
    pub vrid: u8,
    pub priority: u8,
    /// Advertisement interval in whole seconds (8 bits on the wire).
    pub adver_int: u8,
    /// Authentication type on the wire (0 none, 1 simple text password, 2 IPsec AH).
    pub auth_type: u8,
    pub auth_data: [u8; AUTH_LEN],
    pub addrs: Vec<Ipv4Addr>,
}

impl AdvertV2 {
    /// Decodes the VRRP part of an IPv4 packet. The checksum covers the VRRP message only.
    pub fn decode(buf: &[u8]) -> Result<AdvertV2, DecodeError> {
        if buf.len() < HEADER_LEN {
            return Err(DecodeError::Truncated {
                len: buf.len(),
                need: HEADER_LEN,
            });
        }
        let version = buf[0] >> 4;
        if version != VERSION_2 {
            return Err(DecodeError::BadVersion(version));
        }
        let kind = buf[0] & 0x0f;
        if kind != TYPE_ADVERT {
            return Err(DecodeError::BadType(kind));
        }
        let count = buf[3];
        let need = HEADER_LEN + usize::from(count) * 4 + AUTH_LEN;
        if buf.len() != need {
            let body = buf.len() - HEADER_LEN;
            // Whole addresses plus the auth data but another count: the count lies; anything
            // else is a cut (or padded) packet.
            if body >= AUTH_LEN && (body - AUTH_LEN).is_multiple_of(4) {
                return Err(DecodeError::AddressCount {
                    count,
                    len: body - AUTH_LEN,
                });
            }
            return Err(DecodeError::Truncated {
                len: buf.len(),
                need,
            });
        }
        if checksum_v2(buf) != 0 {
            let mut zeroed = buf.to_vec();
            zeroed[6] = 0;
            zeroed[7] = 0;
            return Err(DecodeError::BadChecksum {
                got: u16::from_be_bytes([buf[6], buf[7]]),
                want: checksum_v2(&zeroed),
            });
        }
        if buf[5] == 0 {
            return Err(DecodeError::ZeroInterval);
        }
        let end = HEADER_LEN + usize::from(count) * 4;
        let mut auth_data = [0u8; AUTH_LEN];
        auth_data.copy_from_slice(&buf[end..]);
        Ok(AdvertV2 {
            vrid: buf[1],
            priority: buf[2],
            auth_type: buf[4],
            adver_int: buf[5],
            auth_data,
            addrs: buf[HEADER_LEN..end]
                .chunks_exact(4)
                .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                .collect(),
        })
    }

    /// Appends the encoded advertisement.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let addrs = &self.addrs[..self.addrs.len().min(255)];
        out.push((VERSION_2 << 4) | TYPE_ADVERT);
        out.push(self.vrid);
        out.push(self.priority);
        out.push(addrs.len() as u8);
        out.push(self.auth_type);
        out.push(self.adver_int);
        out.extend_from_slice(&[0, 0]);
        for a in addrs {
            out.extend_from_slice(&a.octets());
        }
        out.extend_from_slice(&self.auth_data);
        let sum = checksum_v2(&out[start..]);
        out[start + 6..start + 8].copy_from_slice(&sum.to_be_bytes());
    }

    /// A v2 advertisement carrying `auth` (what a v2 router sends).
    pub fn new(vrid: u8, priority: u8, adver_int: u8, auth: Auth, addrs: Vec<Ipv4Addr>) -> Self {
        let (auth_type, auth_data) = auth.wire();
        AdvertV2 {
            vrid,
            priority,
            adver_int,
            auth_type,
            auth_data,
            addrs,
        }
    }

    /// Keepalived's check (vrrp.c `vrrp_in_chk`): the auth type must be ours, and with a
    /// password all 8 bytes must match; with type 0 the data is not looked at.
    pub fn check_auth(&self, ours: &Auth) -> Result<(), AuthError> {
        let (want, data) = ours.wire();
        if self.auth_type != want {
            return Err(AuthError::TypeMismatch {
                got: self.auth_type,
                want,
            });
        }
        if want == AUTH_PASS && self.auth_data != data {
            return Err(AuthError::BadPassword);
        }
        Ok(())
    }

    /// The advert in the state machine's terms (interval in centiseconds).
    pub fn to_advert(&self) -> Advert {
        Advert {
            vrid: self.vrid,
            priority: self.priority,
            max_adver_int: u16::from(self.adver_int) * 100,
            addrs: self.addrs.iter().map(|a| IpAddr::V4(*a)).collect(),
        }
    }
}

/// A decoded advertisement of either version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyAdvert {
    V2(AdvertV2),
    V3(Advert),
}

impl AnyAdvert {
    /// Decodes by the version nibble: v2 (IPv4 only) or v3.
    pub fn decode(buf: &[u8], src: IpAddr, dst: IpAddr) -> Result<AnyAdvert, DecodeError> {
        match buf.first().map(|b| b >> 4) {
            Some(VERSION_2) if src.is_ipv4() && dst.is_ipv4() => {
                AdvertV2::decode(buf).map(AnyAdvert::V2)
            }
            Some(VERSION_2) => Err(DecodeError::V2OverIpv6),
            _ => Advert::decode(buf, src, dst).map(AnyAdvert::V3),
        }
    }

    pub fn version(&self) -> Version {
        match self {
            AnyAdvert::V2(_) => Version::V2,
            AnyAdvert::V3(_) => Version::V3,
        }
    }

    pub fn vrid(&self) -> u8 {
        match self {
            AnyAdvert::V2(a) => a.vrid,
            AnyAdvert::V3(a) => a.vrid,
        }
    }
}

/// The Internet checksum of a VRRPv2 message (RFC 3768 §5.3.8: no pseudo-header).
pub fn checksum_v2(vrrp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = vrrp.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
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

    // VRRPv2 frames captured from keepalived 2.2.7 (`vrrp_version 2`, the default) with tcpdump
    // in a netns; tshark reports each checksum as [correct] and shows the password.
    // VRID 51, priority 150, advert_int 1, auth PASS "42secret", two VIPs.
    const KA2_PASS: &str = "01005e000012dabfc8fef268080045c0002c00010000ff701371c612010be00000122133960201014a5cc6120064c61200653432736563726574";
    // The same instance stopping: priority 0.
    const KA2_PASS_PRIO0: &str = "01005e000012dabfc8fef268080045c0002c00070000ff70136bc612010be0000012213300020101e05cc6120064c61200653432736563726574";
    // VRID 53, priority 254, auth PASS "k8s" (shorter than 8: NUL-padded).
    const KA2_SHORT_PASS: &str = "01005e000012dabfc8fef268080045c0002800010000ff701375c612010be00000122135fe0101013b15c61200676b38730000000000";
    // VRID 52, priority 100, advert_int 2, no authentication.
    const KA2_NONE: &str = "01005e000012dabfc8fef268080045c0002800010000ff701375c612010be0000012213464010002b44fc61200660000000000000000";

    fn v2_payload(frame_hex: &str) -> Vec<u8> {
        let frame = hex(frame_hex);
        let ip = parse_ipv4(&frame[14..]).unwrap();
        assert_eq!(ip.ttl, 255);
        assert_eq!(ip.dst, MCAST_V4);
        ip.payload.to_vec()
    }

    #[test]
    fn decodes_keepalived_v2_advert_with_password_and_reencodes_it_byte_for_byte() {
        let p = v2_payload(KA2_PASS);
        let adv = AdvertV2::decode(&p).unwrap();
        assert_eq!(
            adv,
            AdvertV2 {
                vrid: 51,
                priority: 150,
                adver_int: 1,
                auth_type: 1,
                auth_data: *b"42secret",
                addrs: vec![
                    "198.18.0.100".parse().unwrap(),
                    "198.18.0.101".parse().unwrap()
                ],
            }
        );
        let mut out = Vec::new();
        adv.encode(&mut out);
        assert_eq!(out, p);
        // What keel builds from its own config is the same packet.
        let ours = AdvertV2::new(51, 150, 1, Auth::pass(b"42secret"), adv.addrs.clone());
        assert_eq!(ours, adv);
        assert_eq!(adv.check_auth(&Auth::pass(b"42secret")), Ok(()));
        assert_eq!(
            adv.to_advert().max_adver_int,
            100,
            "one second is 100 centiseconds for the state machine"
        );
        let any = AnyAdvert::decode(&p, v4("198.18.1.11"), IpAddr::V4(MCAST_V4)).unwrap();
        assert_eq!(any, AnyAdvert::V2(adv));
        assert_eq!(any.version(), Version::V2);
    }

    #[test]
    fn decodes_keepalived_v2_priority_zero_short_password_and_no_auth() {
        let p0 = AdvertV2::decode(&v2_payload(KA2_PASS_PRIO0)).unwrap();
        assert_eq!(p0.priority, 0);
        let short = v2_payload(KA2_SHORT_PASS);
        let s = AdvertV2::decode(&short).unwrap();
        assert_eq!((s.vrid, s.priority, s.adver_int), (53, 254, 1));
        assert_eq!(&s.auth_data, b"k8s\0\0\0\0\0");
        assert_eq!(s.check_auth(&Auth::pass(b"k8s")), Ok(()));
        let mut out = Vec::new();
        AdvertV2::new(53, 254, 1, Auth::pass(b"k8s"), s.addrs.clone()).encode(&mut out);
        assert_eq!(out, short);
        let none = v2_payload(KA2_NONE);
        let n = AdvertV2::decode(&none).unwrap();
        assert_eq!(
            (n.vrid, n.priority, n.adver_int, n.auth_type),
            (52, 100, 2, 0)
        );
        assert_eq!(n.addrs, vec!["198.18.0.102".parse::<Ipv4Addr>().unwrap()]);
        let mut out = Vec::new();
        AdvertV2::new(52, 100, 2, Auth::None, n.addrs.clone()).encode(&mut out);
        assert_eq!(out, none);
    }

    #[test]
    fn v2_auth_is_checked_as_keepalived_does() {
        let adv = AdvertV2::decode(&v2_payload(KA2_PASS)).unwrap();
        assert_eq!(
            adv.check_auth(&Auth::pass(b"42secreX")),
            Err(AuthError::BadPassword)
        );
        // A prefix of the password is another password: all 8 bytes count.
        assert_eq!(
            adv.check_auth(&Auth::pass(b"42")),
            Err(AuthError::BadPassword)
        );
        assert_eq!(
            adv.check_auth(&Auth::None),
            Err(AuthError::TypeMismatch { got: 1, want: 0 })
        );
        let none = AdvertV2::decode(&v2_payload(KA2_NONE)).unwrap();
        assert_eq!(
            none.check_auth(&Auth::pass(b"42secret")),
            Err(AuthError::TypeMismatch { got: 0, want: 1 })
        );
        assert_eq!(none.check_auth(&Auth::None), Ok(()));
    }

    #[test]
    fn every_v2_malformation_has_its_own_error() {
        let good = v2_payload(KA2_PASS);
        let dec = |b: &[u8]| AdvertV2::decode(b).unwrap_err();
        assert_eq!(dec(&good[..5]), DecodeError::Truncated { len: 5, need: 8 });
        assert_eq!(
            dec(&good[..good.len() - 3]).kind(),
            "truncated",
            "auth data cut short"
        );
        let mut b = good.clone();
        b[3] = 3;
        assert_eq!(dec(&b), DecodeError::AddressCount { count: 3, len: 8 });
        let mut b = good.clone();
        b[2] = 200;
        assert_eq!(dec(&b).kind(), "bad_checksum");
        let mut b = good.clone();
        b[0] = 0x22;
        assert_eq!(dec(&b), DecodeError::BadType(2));
        let mut b = Vec::new();
        AdvertV2::new(1, 100, 0, Auth::None, vec!["198.18.0.1".parse().unwrap()]).encode(&mut b);
        assert_eq!(dec(&b), DecodeError::ZeroInterval);
        // The v3 decoder refuses v2 and the other way round; v2 over IPv6 does not exist.
        assert_eq!(
            Advert::decode(&good, v4("198.18.1.11"), IpAddr::V4(MCAST_V4)).unwrap_err(),
            DecodeError::BadVersion(2)
        );
        let v3 = hex(KA_V4);
        assert_eq!(dec(&v3[14 + 20..]), DecodeError::BadVersion(3));
        assert_eq!(
            AnyAdvert::decode(&good, v6("fe80::1"), IpAddr::V6(MCAST_V6)).unwrap_err(),
            DecodeError::V2OverIpv6
        );
        // The v2 checksum has no pseudo-header: the same bytes check from any address.
        assert!(AnyAdvert::decode(&good, v4("198.18.9.9"), v4("198.18.1.12")).is_ok());
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
