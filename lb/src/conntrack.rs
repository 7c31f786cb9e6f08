//! Ends conntrack entries by mark: one ctnetlink request (`IPCTNL_MSG_CT_DELETE` without a
//! tuple, filtered by `CTA_MARK`/`CTA_MARK_MASK`; the kernel's `ctnetlink_flush_conntrack`,
//! net/netfilter/nf_conntrack_netlink.c) deletes every entry whose mark matches, in every family.
//! `mode: nat` gives each (frontend, backend) pair its own mark, so the flows one backend was given
//! end at once: a UDP flow's next datagram then starts a new flow that the rules send to an
//! available backend, and a TCP connection's next packet finds no translation and is reset.
//! The conntrack CLI (conntrack-tools) does the same with `conntrack -D --mark M/MASK`.

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLMSG_ERROR: u16 = 2;
const CTA_MARK: u16 = 8;
const CTA_MARK_MASK: u16 = 21;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ctnetlink socket: {0}")]
    Socket(std::io::Error),
    #[error("ctnetlink request: {0}")]
    Io(std::io::Error),
    #[error("the kernel refused to delete the conntrack entries: {0}")]
    Refused(std::io::Error),
    #[error("ctnetlink: no acknowledgement")]
    NoAck,
}

/// The request: netlink header, nfgenmsg (AF_UNSPEC: all families), the mark and its mask.
fn request(seq: u32, mark: u32, mask: u32) -> Vec<u8> {
    let len: u32 = 16 + 4 + 8 + 8;
    let mut b = Vec::with_capacity(len as usize);
    b.extend_from_slice(&len.to_ne_bytes());
    b.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE).to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version NFNETLINK_V0, res_id (big endian).
    b.extend_from_slice(&[0, 0, 0, 0]);
    for (kind, value) in [(CTA_MARK, mark), (CTA_MARK_MASK, mask)] {
        b.extend_from_slice(&8u16.to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&value.to_be_bytes());
    }
    b
}

/// The errno of the acknowledgement for `seq` in `reply` (0: done), None if it holds none.
fn ack(reply: &[u8], seq: u32) -> Option<i32> {
    let mut rest = reply;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes(rest[0..4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(rest[4..6].try_into().ok()?);
        let got = u32::from_ne_bytes(rest[8..12].try_into().ok()?);
        if len < 16 || len > rest.len() {
            return None;
        }
        if kind == NLMSG_ERROR && got == seq && len >= 20 {
            return Some(-i32::from_ne_bytes(rest[16..20].try_into().ok()?));
        }
        // Messages are padded to 4 bytes.
        rest = &rest[((len + 3) & !3).min(rest.len())..];
    }
    None
}

/// Deletes every conntrack entry (of this network namespace) with `mark & mask == mark`. Blocking:
/// the kernel walks the whole table before it answers.
pub fn delete_marked(mark: u32, mask: u32) -> Result<(), Error> {
    let mut sock = Socket::new(NETLINK_NETFILTER).map_err(Error::Socket)?;
    sock.bind_auto().map_err(Error::Socket)?;
    sock.connect(&SocketAddr::new(0, 0))
        .map_err(Error::Socket)?;
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
}
