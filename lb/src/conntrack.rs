//! Ends conntrack entries by mark: one ctnetlink request (`IPCTNL_MSG_CT_DELETE` without a
//! tuple, filtered by `CTA_MARK`/`CTA_MARK_MASK`; the kernel's `ctnetlink_flush_conntrack`,
//! net/netfilter/nf_conntrack_netlink.c) deletes every entry whose mark matches, in every family.
//! `mode: nat` gives each (frontend, backend) pair its own mark, so the flows one backend was given
//! end at once: a UDP flow's next datagram then starts a new flow that the rules send to an
//! available backend, and a TCP connection's next packet finds no translation and is reset.
//! The conntrack CLI (conntrack-tools) does the same with `conntrack -D --mark M/MASK`.

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;
const CTA_PROTOINFO: u16 = 4;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const CTA_MARK: u16 = 8;
const CTA_MARK_MASK: u16 = 21;
/// `enum tcp_conntrack` (include/uapi/linux/netfilter/nf_conntrack_tcp.h): after these the
/// connection is over, only its entry lingers.
const TCP_CONNTRACK_TIME_WAIT: u8 = 7;
const TCP_CONNTRACK_CLOSE: u8 = 8;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ctnetlink socket: {0}")]
    Socket(std::io::Error),
    #[error("ctnetlink request: {0}")]
    Io(std::io::Error),
    #[error("the kernel refused: {0}")]
    Refused(std::io::Error),
    #[error("ctnetlink: no acknowledgement")]
    NoAck,
    #[error("ctnetlink dump: {0}")]
    Dump(String),
}

/// A netlink request with no attributes beyond `attrs` (already encoded).
fn header(kind: u16, flags: u16, seq: u32, attrs: &[u8]) -> Vec<u8> {
    let len = (16 + 4 + attrs.len()) as u32;
    let mut b = Vec::with_capacity(len as usize);
    b.extend_from_slice(&len.to_ne_bytes());
    b.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family (AF_UNSPEC: all), version NFNETLINK_V0, res_id (big endian).
    b.extend_from_slice(&[0, 0, 0, 0]);
    b.extend_from_slice(attrs);
    b
}

/// The netlink messages in one datagram: (type, sequence, payload after the header).
fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes(rest[0..4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(rest[4..6].try_into().ok()?);
        let seq = u32::from_ne_bytes(rest[8..12].try_into().ok()?);
        if len < 16 || len > rest.len() {
            rest = &[];
            return None;
        }
        let payload = &rest[16..len];
        // Messages are padded to 4 bytes.
        rest = &rest[((len + 3) & !3).min(rest.len())..];
        Some((kind, seq, payload))
    })
}

/// The attributes in `buf`: (type without the nested/byte-order flags, value).
fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            rest = &[];
            return None;
        }
        let value = &rest[4..len];
        rest = &rest[((len + 3) & !3).min(rest.len())..];
        Some((kind, value))
    })
}

fn attr(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(buf).find(|a| a.0 == kind).map(|a| a.1)
}

/// One conntrack entry of a dump (after nfgenmsg): its mark, and whether its connection is still
/// open (a TCP entry in TIME_WAIT or CLOSE only lingers; every UDP entry counts).
fn entry(payload: &[u8]) -> Option<(u32, bool)> {
    let body = payload.get(4..)?;
    let mark = u32::from_be_bytes(attr(body, CTA_MARK)?.try_into().ok()?);
    let tcp_state = attr(body, CTA_PROTOINFO)
        .and_then(|p| attr(p, CTA_PROTOINFO_TCP))
        .and_then(|t| attr(t, CTA_PROTOINFO_TCP_STATE))
        .and_then(|s| s.first().copied());
    let open = !matches!(
        tcp_state,
        Some(TCP_CONNTRACK_TIME_WAIT | TCP_CONNTRACK_CLOSE)
    );
    Some((mark, open))
}

/// A ctnetlink socket talking to the kernel.
fn socket() -> Result<Socket, Error> {
    let mut sock = Socket::new(NETLINK_NETFILTER).map_err(Error::Socket)?;
    sock.bind_auto().map_err(Error::Socket)?;
    sock.connect(&SocketAddr::new(0, 0))
        .map_err(Error::Socket)?;
    Ok(sock)
}

/// The errno an NLMSG_ERROR payload carries (0: an acknowledgement).
fn errno(payload: &[u8]) -> Option<i32> {
    Some(-i32::from_ne_bytes(payload.get(0..4)?.try_into().ok()?))
}

/// Open flows per mark (`mark & mask`, never 0) in this network namespace's conntrack table: one
/// dump of the whole table. Blocking.
pub fn open_flows_by_mark(mask: u32) -> Result<std::collections::HashMap<u32, u64>, Error> {
    let sock = socket()?;
    let seq = 2;
    sock.send(
        &header(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, &[]),
        0,
    )
    .map_err(Error::Io)?;
    let mut out = std::collections::HashMap::new();
    // Bounded: a dump of a million entries is a few thousand datagrams.
    for _ in 0..1_000_000 {
        let (buf, _) = sock.recv_from_full().map_err(Error::Io)?;
        for (kind, got, payload) in messages(&buf) {
            if got != seq {
                continue;
            }
            if kind == NLMSG_DONE {
                return Ok(out);
            }
            if kind == NLMSG_ERROR {
                match errno(payload) {
                    Some(0) | None => {}
                    Some(e) => return Err(Error::Refused(std::io::Error::from_raw_os_error(e))),
                }
            } else if kind == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW {
                if let Some((mark, true)) = entry(payload) {
                    if mark & mask != 0 {
                        *out.entry(mark & mask).or_insert(0) += 1;
                    }
                }
            }
        }
    }
    Err(Error::Dump("did not end".into()))
}

/// The delete request: the mark and its mask as the filter.
fn request(seq: u32, mark: u32, mask: u32) -> Vec<u8> {
    let mut a = Vec::with_capacity(16);
    for (kind, value) in [(CTA_MARK, mark), (CTA_MARK_MASK, mask)] {
        a.extend_from_slice(&8u16.to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(&value.to_be_bytes());
    }
    header(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, seq, &a)
}

/// The errno of the acknowledgement for `seq` in `reply` (0: done), None if it holds none.
fn ack(reply: &[u8], seq: u32) -> Option<i32> {
    messages(reply)
        .filter(|(kind, got, _)| *kind == NLMSG_ERROR && *got == seq)
        .find_map(|(_, _, p)| errno(p))
}

/// Deletes every conntrack entry (of this network namespace) with `mark & mask == mark`. Blocking:
/// the kernel walks the whole table before it answers.
pub fn delete_marked(mark: u32, mask: u32) -> Result<(), Error> {
    let sock = socket()?;
    let seq = 1;
    sock.send(&request(seq, mark, mask), 0).map_err(Error::Io)?;
    // Bounded: other messages (none are expected on this socket) cannot keep it here.
    for _ in 0..8 {
        let (reply, _) = sock.recv_from_full().map_err(Error::Io)?;
        match ack(&reply, seq) {
            Some(0) => return Ok(()),
            Some(errno) => return Err(Error::Refused(std::io::Error::from_raw_os_error(errno))),
            None => continue,
        }
    }
    Err(Error::NoAck)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_a_filtered_ctnetlink_delete() {
        let r = request(7, 0x0003_0000, 0xffff_0000);
        assert_eq!(r.len(), 36);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 36);
        assert_eq!(u16::from_ne_bytes(r[4..6].try_into().unwrap()), 0x0102);
        assert_eq!(u16::from_ne_bytes(r[6..8].try_into().unwrap()), 0x5);
        assert_eq!(&r[16..20], &[0, 0, 0, 0]);
        assert_eq!(&r[22..24], &CTA_MARK.to_ne_bytes());
        assert_eq!(&r[24..28], &[0, 3, 0, 0]);
        assert_eq!(&r[30..32], &CTA_MARK_MASK.to_ne_bytes());
        assert_eq!(&r[32..36], &[0xff, 0xff, 0, 0]);
    }

    fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn acks_are_read_by_sequence_and_bad_replies_are_not_trusted() {
        let ok = message(NLMSG_ERROR, 1, &0i32.to_ne_bytes());
        assert_eq!(ack(&ok, 1), Some(0));
        assert_eq!(ack(&ok, 2), None);
        let refused = message(NLMSG_ERROR, 1, &(-libc::EPERM).to_ne_bytes());
        assert_eq!(ack(&refused, 1), Some(libc::EPERM));
        // Another message first, then the ack.
        let mut two = message(3, 1, &[1, 2, 3, 4]);
        two.extend(ok.clone());
        assert_eq!(ack(&two, 1), Some(0));
        // Truncated or lying about its length.
        assert_eq!(ack(&ok[..18], 1), None);
        let mut liar = ok.clone();
        liar[0] = 200;
        assert_eq!(ack(&liar, 1), None);
        assert_eq!(ack(&[], 1), None);
    }

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    #[test]
    fn dumped_entries_give_their_mark_and_whether_they_are_open() {
        let tcp = |state: u8| {
            let mut p = vec![2, 0, 0, 0];
            p.extend(nla(1 | 0x8000, &nla(1, &[0; 8])));
            let info = nla(
                CTA_PROTOINFO_TCP | 0x8000,
                &nla(CTA_PROTOINFO_TCP_STATE, &[state]),
            );
            p.extend(nla(CTA_PROTOINFO | 0x8000, &info));
            p.extend(nla(CTA_MARK, &0x0005_0001u32.to_be_bytes()));
            p
        };
        assert_eq!(entry(&tcp(3)), Some((0x0005_0001, true)));
        assert_eq!(
            entry(&tcp(TCP_CONNTRACK_TIME_WAIT)),
            Some((0x0005_0001, false))
        );
        assert_eq!(entry(&tcp(TCP_CONNTRACK_CLOSE)), Some((0x0005_0001, false)));
        // UDP: no protocol info, always open.
        let mut udp = vec![2, 0, 0, 0];
        udp.extend(nla(CTA_MARK, &7u32.to_be_bytes()));
        assert_eq!(entry(&udp), Some((7, true)));
        // No mark, a short one, or a truncated attribute: not counted.
        assert_eq!(entry(&[2, 0, 0, 0]), None);
        let mut short = vec![2, 0, 0, 0];
        short.extend(nla(CTA_MARK, &[1, 2]));
        assert_eq!(entry(&short), None);
        let mut cut = vec![2, 0, 0, 0];
        cut.extend(&nla(CTA_MARK, &7u32.to_be_bytes())[..6]);
        assert_eq!(entry(&cut), None);
        assert_eq!(entry(&[]), None);
    }

    /// Against the kernel (root: a network namespace of its own): a flush by a mark no entry has
    /// is acknowledged.
    #[test]
    fn the_kernel_accepts_the_request() {
        if !nix::unistd::Uid::effective().is_root() {
            assert!(
                std::env::var_os("KEEL_TESTS_STRICT").is_none(),
                "ctnetlink test needs root"
            );
            eprintln!("skipped: needs root");
            return;
        }
        let r = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
            delete_marked(0x7fff_0000, 0xffff_0000).map_err(|e| e.to_string())
        })
        .join()
        .unwrap();
        r.unwrap();
    }

    /// Against the kernel with nft: UDP flows marked by a rule are counted by their mark, and a
    /// delete by one mark ends those flows only.
    #[test]
    fn marked_flows_are_counted_and_deleted_by_mark() {
        if !nix::unistd::Uid::effective().is_root()
            || crate::nft::find(std::path::Path::new("nft")).is_none()
        {
            assert!(
                std::env::var_os("KEEL_TESTS_STRICT").is_none(),
                "ctnetlink test needs root and nft"
            );
            eprintln!("skipped: needs root and nft");
            return;
        }
        let r = std::thread::spawn(|| -> Result<(), String> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
            let sh = |c: &str| {
                let out = std::process::Command::new("sh").arg("-c").arg(c).output().map_err(|e| e.to_string())?;
                if out.status.success() { Ok(()) } else { Err(format!("{c}: {}", String::from_utf8_lossy(&out.stderr))) }
            };
            sh("ip link set lo up")?;
            sh("printf 'table inet t {\n chain o {\n  type filter hook output priority 0; policy accept;\n  udp dport 9001 ct mark set 0x50000\n  udp dport 9002 ct mark set 0x60000\n }\n}\n' | nft -f -")?;
            let s = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            for port in [9001, 9001, 9002] {
                // A new source socket per datagram to 9001 but the first: two flows there.
                let c = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
                c.send_to(b"x", ("127.0.0.1", port)).map_err(|e| e.to_string())?;
            }
            drop(s);
            let n = open_flows_by_mark(0xffff_0000).map_err(|e| e.to_string())?;
            if n.get(&0x50000) != Some(&2) || n.get(&0x60000) != Some(&1) || n.len() != 2 {
                return Err(format!("counted {n:?}"));
            }
            delete_marked(0x50000, 0xffff_0000).map_err(|e| e.to_string())?;
            let n = open_flows_by_mark(0xffff_0000).map_err(|e| e.to_string())?;
            if n.contains_key(&0x50000) || n.get(&0x60000) != Some(&1) {
                return Err(format!("after the delete: {n:?}"));
            }
            Ok(())
        })
        .join()
        .unwrap();
        r.unwrap();
    }
}
