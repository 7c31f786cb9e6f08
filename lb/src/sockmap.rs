//! Kernel splicing of established TCP flows: a BPF `sk_skb` verdict program redirects every segment
//! a spliced socket receives to the egress of its peer, so data between a client and its backend
//! never wakes keel-lb (prior art: Cilium's and Cloudflare's sockmap splicing; kernel
//! `Documentation/bpf/map_sockmap.rst`).
//!
//! No BPF toolchain: the program is eleven instructions, assembled here from the kernel's UAPI
//! encodings (`include/uapi/linux/bpf.h`) and loaded with the `bpf(2)` syscall through libc. The
//! kernel's verifier checks it at load time like any compiled program; nothing is built at compile
//! time and no crate is added.
//!
//! Two SOCKHASH maps, keyed by socket cookie (`SO_COOKIE`):
//! - `peers`: for a pair (a, b), b under a's cookie and a under b's. No program is attached to it, so
//!   entering it changes nothing for the socket's data.
//! - `spliced`: the verdict program is attached to this map; a socket entering it has its received
//!   data run through the program from then on, which looks its own cookie up in `peers` and
//!   redirects to the socket found there.
//!
//! Both sockets enter `peers` before either enters `spliced`, so the program never runs for a
//! socket whose peer it cannot find (a failed lookup drops the segment, which TCP has already
//! acknowledged). Data queued before a socket entered `spliced` would sit unseen until more arrived:
//! `SO_RCVLOWAT` makes TCP call the (now replaced) data-ready callback at once, which runs the queue
//! through the program in order (`tcp_set_rcvlowat` -> `tcp_data_ready`). Closing a socket removes it
//! from both maps.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_MAP_DELETE_ELEM: libc::c_int = 3;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;

const BPF_MAP_TYPE_SOCKHASH: u32 = 18;
const BPF_PROG_TYPE_SK_SKB: u32 = 14;
const BPF_SK_SKB_STREAM_VERDICT: u32 = 5;
const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;

const FUNC_GET_SOCKET_COOKIE: i32 = 46;
const FUNC_SK_REDIRECT_HASH: i32 = 72;

/// Why splicing is not available; the frontend falls back to the user-space relay.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("cannot create a BPF SOCKHASH map: {0} (needs CAP_BPF and CAP_NET_ADMIN, or root, and a kernel with CONFIG_BPF_STREAM_PARSER)")]
    Map(io::Error),
    #[error("the kernel refused the sk_skb verdict program: {0}; verifier: {1}")]
    Program(io::Error, String),
    #[error("cannot attach the verdict program to the map: {0}")]
    Attach(io::Error),
}

/// One BPF instruction (`struct bpf_insn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

// Opcodes: class | size/op | mode/source.
const MOV64_X: u8 = 0x07 | 0xb0 | 0x08; // BPF_ALU64 | BPF_MOV | BPF_X
const MOV64_K: u8 = 0x07 | 0xb0; // BPF_ALU64 | BPF_MOV | BPF_K
const ADD64_K: u8 = 0x07; // BPF_ALU64 | BPF_ADD | BPF_K
const STX_DW: u8 = 0x03 | 0x60 | 0x18; // BPF_STX | BPF_MEM | BPF_DW
const LD_IMM64: u8 = 0x18; // BPF_LD (0) | BPF_IMM (0) | BPF_DW
const CALL: u8 = 0x05 | 0x80; // BPF_JMP | BPF_CALL
const EXIT: u8 = 0x05 | 0x90; // BPF_JMP | BPF_EXIT
const PSEUDO_MAP_FD: u8 = 1;

/// The verdict program, for the `peers` map `peers_fd`:
///
/// ```c
/// int verdict(struct __sk_buff *skb) {
///     __u64 key = bpf_get_socket_cookie(skb);          // this socket
///     return bpf_sk_redirect_hash(skb, &peers, &key, 0); // to its peer's egress
/// }
/// ```
pub fn verdict_program(peers_fd: RawFd) -> [Insn; 11] {
    [
        insn(MOV64_X, 6, 1, 0, 0),                     // r6 = skb
        insn(CALL, 0, 0, 0, FUNC_GET_SOCKET_COOKIE),   // r0 = cookie(skb->sk)
        insn(STX_DW, 10, 0, -8, 0),                    // *(u64 *)(fp - 8) = r0
        insn(MOV64_X, 1, 6, 0, 0),                     // r1 = skb
        insn(LD_IMM64, 2, PSEUDO_MAP_FD, 0, peers_fd), // r2 = &peers
        insn(0, 0, 0, 0, 0),                           //   (upper half of the 64-bit load)
        insn(MOV64_X, 3, 10, 0, 0),                    // r3 = fp
        insn(ADD64_K, 3, 0, 0, -8),                    // r3 = &key
        insn(MOV64_K, 4, 0, 0, 0),                     // r4 = 0: to the peer's egress
        insn(CALL, 0, 0, 0, FUNC_SK_REDIRECT_HASH),    // r0 = SK_PASS, or SK_DROP if no peer
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// BPF_PROG_LOAD, again on EAGAIN: the verifier gives up when a signal is pending for the loading
/// thread (a SIGCHLD from any child of the process will do, e.g. nft run at start), as libbpf's
/// loader also retries (five times).
fn prog_load(a: &mut ProgLoad) -> io::Result<libc::c_long> {
    let mut tries = 0;
    loop {
        match bpf(BPF_PROG_LOAD, a) {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && tries < 5 => tries += 1,
            r => return r,
        }
    }
}

fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a #[repr(C)] prefix of `union bpf_attr` for `cmd`, valid for its size; the
    // kernel reads (and for some commands writes) only that many bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fd(r: libc::c_long) -> OwnedFd {
    // SAFETY: the bpf commands that return fds return a new fd that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(r as RawFd) }
}

#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

fn sockhash(entries: u32) -> io::Result<OwnedFd> {
    let mut a = MapCreate {
        map_type: BPF_MAP_TYPE_SOCKHASH,
        key_size: 8,
        value_size: 4,
        max_entries: entries,
        ..Default::default()
    };
    bpf(BPF_MAP_CREATE, &mut a).map(fd)
}

/// The loaded program and its two maps. Shared by every spliced connection of the process.
pub struct Splicer {
    peers: OwnedFd,
    spliced: OwnedFd,
    _prog: OwnedFd,
}

impl Splicer {
    /// Creates the maps (room for `pairs` spliced connections) and loads and attaches the program.
    pub fn new(pairs: u32) -> Result<Splicer, Unavailable> {
        let entries = pairs.saturating_mul(2).max(2);
        let peers = sockhash(entries).map_err(Unavailable::Map)?;
        let spliced = sockhash(entries).map_err(Unavailable::Map)?;
        let prog = verdict_program(peers.as_raw_fd());
        let license = c"Apache-2.0 OR GPL-2.0";
        let mut log = vec![0u8; 4096];
        let mut a = ProgLoad {
            prog_type: BPF_PROG_TYPE_SK_SKB,
            insn_cnt: prog.len() as u32,
            insns: prog.as_ptr() as u64,
            license: license.as_ptr() as u64,
            ..Default::default()
        };
        let prog_fd = match prog_load(&mut a) {
            Ok(r) => fd(r),
            Err(e) => {
                // Load again with the verifier's log, only to say why.
                let mut a = ProgLoad {
                    log_level: 1,
                    log_size: log.len() as u32,
                    log_buf: log.as_mut_ptr() as u64,
                    ..a
                };
                let _ = bpf(BPF_PROG_LOAD, &mut a);
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let text = String::from_utf8_lossy(&log[..end])
                    .trim()
                    .replace('\n', "; ");
                return Err(Unavailable::Program(e, text));
            }
        };
        let mut a = ProgAttach {
            target_fd: spliced.as_raw_fd() as u32,
            attach_bpf_fd: prog_fd.as_raw_fd() as u32,
            attach_type: BPF_SK_SKB_STREAM_VERDICT,
            ..Default::default()
        };
        bpf(BPF_PROG_ATTACH, &mut a).map_err(Unavailable::Attach)?;
        Ok(Splicer {
            peers,
            spliced,
            _prog: prog_fd,
        })
    }

    fn update(map: &OwnedFd, key: u64, sock: RawFd, flags: u64) -> io::Result<()> {
        let value = sock as u32;
        let mut a = MapElem {
            map_fd: map.as_raw_fd() as u32,
            key: &key as *const u64 as u64,
            value: &value as *const u32 as u64,
            flags,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(drop)
    }

    fn delete(map: &OwnedFd, key: u64) {
        let mut a = MapElem {
            map_fd: map.as_raw_fd() as u32,
            key: &key as *const u64 as u64,
            ..Default::default()
        };
        let _ = bpf(BPF_MAP_DELETE_ELEM, &mut a);
    }

    /// Splices two established TCP sockets: from now on, what either receives is sent by the
    /// other. Returns each socket's position at the moment of splicing (see [`Position`]).
    ///
    /// On an error before either socket's data is redirected, both are left as they were and the
    /// caller may relay them itself; `Err(Partial)` means one socket was already spliced and the
    /// connection must be closed (its data may be queued in the kernel for the other).
    pub fn splice(&self, a: RawFd, b: RawFd) -> Result<(Position, Position), SpliceError> {
        let (ca, cb) = (cookie(a)?, cookie(b)?);
        // Measured before either socket enters a map: once it has a psock, SIOCINQ counts only the
        // psock's own queue (`tcp_bpf_ioctl`), not data waiting in the socket. Nothing reads or
        // writes either socket meanwhile, so the positions stay put.
        let pos = (Position::of(a)?, Position::of(b)?);
        Self::update(&self.peers, ca, b, BPF_NOEXIST)?;
        if let Err(e) = Self::update(&self.peers, cb, a, BPF_NOEXIST) {
            Self::delete(&self.peers, ca);
            return Err(e.into());
        }
        let undo_peers = || {
            Self::delete(&self.peers, ca);
            Self::delete(&self.peers, cb);
        };
        if let Err(e) = Self::update(&self.spliced, ca, a, BPF_ANY) {
            undo_peers();
            return Err(e.into());
        }
        if let Err(e) = Self::update(&self.spliced, cb, b, BPF_ANY) {
            Self::delete(&self.spliced, ca);
            undo_peers();
            return Err(SpliceError::Partial(e));
        }
        // Push data that arrived before the program was attached through it (see the module doc).
        for s in [a, b] {
            set_int(s, libc::SOL_SOCKET, libc::SO_RCVLOWAT, 1).map_err(SpliceError::Partial)?;
        }
        Ok(pos)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    /// Nothing was redirected: the sockets may still be relayed in user space.
    #[error("{0}")]
    Before(#[from] io::Error),
    /// One side was spliced already: the connection cannot be relayed safely any more.
    #[error("splicing half done: {0}")]
    Partial(io::Error),
}

fn cookie(s: RawFd) -> io::Result<u64> {
    let mut v = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `v` is a valid u64 buffer of `len` bytes for the kernel to fill.
    let r = unsafe {
        libc::getsockopt(
            s,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            &mut v as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

fn set_int(s: RawFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: a plain int option.
    let r = unsafe {
        libc::setsockopt(
            s,
            level,
            opt,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn ioctl_int(s: RawFd, req: libc::c_ulong) -> io::Result<u64> {
    let mut v: libc::c_int = 0;
    // SAFETY: SIOCINQ / SIOCOUTQ write one int.
    if unsafe { libc::ioctl(s, req as _, &mut v) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v.max(0) as u64)
}

/// The few `struct tcp_info` fields splicing needs (`include/uapi/linux/tcp.h`), read by offset so
/// that an older or newer kernel's struct size does not matter (all are there since Linux 4.6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpInfo {
    /// The state says the peer's FIN arrived: CLOSE_WAIT, LAST_ACK, CLOSING, TIME_WAIT, or CLOSE
    /// (where a socket that had sent its own FIN first ends up: TIME_WAIT moves to a separate
    /// timewait socket). CLOSE after a reset counts too: one byte too many, for a connection that
    /// failed anyway.
    pub fin_received: bool,
    /// In state CLOSE: reset, or fully closed both ways.
    pub closed: bool,
    /// Milliseconds since data last arrived.
    pub last_data_recv_ms: u32,
    /// Sequence space received (data, plus one for a FIN) since the handshake.
    pub bytes_received: u64,
    /// Sequence space the peer acknowledged since the handshake.
    pub bytes_acked: u64,
}

pub fn tcp_info(s: RawFd) -> io::Result<TcpInfo> {
    let mut buf = [0u8; 136];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `buf` and returns how many in `len`.
    let r = unsafe {
        libc::getsockopt(
            s,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "TCP_INFO without bytes_received (kernel older than 4.6)",
        ));
    }
    let u32_at = |o: usize| u32::from_ne_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[o..o + 8]);
        u64::from_ne_bytes(b)
    };
    Ok(TcpInfo {
        fin_received: matches!(buf[0] as i32, 6..=9 | 11),
        closed: buf[0] as i32 == 7,
        last_data_recv_ms: u32_at(52),
        bytes_acked: u64_at(120),
        bytes_received: u64_at(128),
    })
}

/// A spliced socket's stream positions, so that progress can be measured from the kernel's own
/// counters: `taken` = bytes of its input user space already read (never redirected),
/// `written` = bytes user space wrote to it before splicing (a PROXY header).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    taken: u64,
    written: u64,
}

impl Position {
    fn of(s: RawFd) -> io::Result<Position> {
        // Nothing reads the socket while it is measured, so only new arrivals can move these:
        // read until two rounds agree.
        for _ in 0..8 {
            let i1 = tcp_info(s)?;
            let inq = ioctl_int(s, libc::FIONREAD as libc::c_ulong)?;
            let i2 = tcp_info(s)?;
            if i1.bytes_received == i2.bytes_received {
                return Ok(Position {
                    taken: i1.bytes_received - inq.min(i1.bytes_received),
                    written: sent(s, &i2)?,
                });
            }
        }
        Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "data kept arriving while the socket was measured",
        ))
    }

    /// Bytes received since splicing (all of them redirected to the peer).
    pub fn moved(&self, s: RawFd) -> io::Result<u64> {
        let i = tcp_info(s)?;
        // A received FIN takes a sequence number that bytes_received counts.
        Ok(i.bytes_received
            .saturating_sub(self.taken + u64::from(i.fin_received)))
    }

    /// Bytes queued to this socket since splicing (sent or still in its send queue), or the
    /// socket's error once it failed (a reset: what the kernel still held for it is lost).
    pub fn delivered(&self, s: RawFd) -> io::Result<u64> {
        let i = tcp_info(s)?;
        if i.closed {
            return Err(take_error(s).unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::ConnectionReset, "peer socket closed")
            }));
        }
        Ok(sent(s, &i)?.saturating_sub(self.written))
    }
}

fn take_error(s: RawFd) -> Option<io::Error> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_ERROR writes one int.
    let r = unsafe {
        libc::getsockopt(
            s,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut v as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    (r == 0 && v != 0).then(|| io::Error::from_raw_os_error(v))
}

/// Everything queued to the socket so far: acknowledged + still in the send queue.
fn sent(s: RawFd, i: &TcpInfo) -> io::Result<u64> {
    Ok(i.bytes_acked + ioctl_int(s, libc::TIOCOUTQ as libc::c_ulong)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The program's bytes, as clang would emit them for the C in `verdict_program`'s doc.
    #[test]
    fn the_program_encodes_as_the_kernel_expects() {
        let p = verdict_program(7);
        let bytes: Vec<[u8; 8]> = p
            .iter()
            .map(|i| {
                let mut b = [0u8; 8];
                b[0] = i.code;
                b[1] = i.regs;
                b[2..4].copy_from_slice(&i.off.to_le_bytes());
                b[4..8].copy_from_slice(&i.imm.to_le_bytes());
                b
            })
            .collect();
        assert_eq!(bytes[0], [0xbf, 0x16, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes[1], [0x85, 0, 0, 0, 46, 0, 0, 0]);
        assert_eq!(bytes[2], [0x7b, 0x0a, 0xf8, 0xff, 0, 0, 0, 0]);
        assert_eq!(bytes[4], [0x18, 0x12, 0, 0, 7, 0, 0, 0]);
        assert_eq!(bytes[7], [0x07, 0x03, 0, 0, 0xf8, 0xff, 0xff, 0xff]);
        assert_eq!(bytes[10], [0x95, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }
}

/// The experiment issue 16 asked for before building on splicing: on this kernel, does the program
/// redirect both ways, is data queued before splicing pushed through, is a half-close seen by user
/// space (and how often is user space woken while data flows)? Needs root (CAP_BPF).
#[cfg(test)]
mod kernel {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::time::Duration;

    fn splicer() -> Option<Splicer> {
        match Splicer::new(64) {
            Ok(s) => Some(s),
            Err(e) if std::env::var_os("KEEL_TESTS_STRICT").is_none() => {
                eprintln!("skipped: {e}");
                None
            }
            Err(e) => panic!("splicing unavailable: {e}"),
        }
    }

    /// client <-> (lb_client, lb_backend) <-> backend, all on loopback.
    fn pairs() -> (TcpStream, TcpStream, TcpStream, TcpStream) {
        let fl = TcpListener::bind("127.0.0.1:0").unwrap();
        let bl = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(fl.local_addr().unwrap()).unwrap();
        let (lb_client, _) = fl.accept().unwrap();
        let lb_backend = TcpStream::connect(bl.local_addr().unwrap()).unwrap();
        let (backend, _) = bl.accept().unwrap();
        for s in [&client, &backend] {
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        }
        (client, lb_client, lb_backend, backend)
    }

    fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        s.read_exact(&mut b).unwrap();
        b
    }

    /// An epoll set watching `fds` for `events`; returns (epfd, wait(ms) -> events seen).
    struct Ep(OwnedFd);
    impl Ep {
        fn new(fds: &[RawFd], events: u32) -> Ep {
            // SAFETY: plain syscalls on fds we own.
            let ep = unsafe { OwnedFd::from_raw_fd(libc::epoll_create1(libc::EPOLL_CLOEXEC)) };
            for &f in fds {
                let mut ev = libc::epoll_event {
                    events,
                    u64: f as u64,
                };
                assert_eq!(
                    unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, f, &mut ev) },
                    0
                );
            }
            Ep(ep)
        }
        fn wait(&self, ms: i32) -> Vec<(RawFd, u32)> {
            let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 8];
            let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), evs.as_mut_ptr(), 8, ms) };
            evs[..n.max(0) as usize]
                .iter()
                .map(|e| (e.u64 as RawFd, e.events))
                .collect()
        }
    }

    #[test]
    fn data_is_redirected_both_ways_including_what_was_queued_before() {
        let Some(sp) = splicer() else { return };
        let (mut client, lb_c, lb_b, mut backend) = pairs();
        (&lb_b).write_all(b"PROXY-HEADER").unwrap();
        client.write_all(b"early").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let (pc, pb) = sp.splice(lb_c.as_raw_fd(), lb_b.as_raw_fd()).unwrap();
        assert_eq!(read_n(&mut backend, 12), b"PROXY-HEADER");
        assert_eq!(
            read_n(&mut backend, 5),
            b"early",
            "queued data pushed through"
        );
        client.write_all(b"request").unwrap();
        assert_eq!(read_n(&mut backend, 7), b"request");
        backend.write_all(b"response").unwrap();
        assert_eq!(read_n(&mut client, 8), b"response");
        let big = vec![7u8; 4 << 20];
        let mut c2 = client.try_clone().unwrap();
        let t = std::thread::spawn(move || c2.write_all(&big).unwrap());
        let got = read_n(&mut backend, 4 << 20);
        t.join().unwrap();
        assert!(got.iter().all(|&b| b == 7));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(pc.moved(lb_c.as_raw_fd()).unwrap(), 5 + 7 + (4 << 20));
        assert_eq!(pb.delivered(lb_b.as_raw_fd()).unwrap(), 5 + 7 + (4 << 20));
        assert_eq!(pb.moved(lb_b.as_raw_fd()).unwrap(), 8);
        assert_eq!(pc.delivered(lb_c.as_raw_fd()).unwrap(), 8);
    }

    /// User space must learn of a FIN (to half-close the other side) without being woken for the
    /// data: with EPOLLRDHUP alone it is woken only for the FIN; with EPOLLIN it is woken per
    /// segment (the psock wakes readers after each redirect) but reads nothing.
    #[test]
    fn a_half_close_is_seen_by_user_space_and_data_does_not_wake_it() {
        let Some(sp) = splicer() else { return };
        let (mut client, lb_c, lb_b, mut backend) = pairs();
        sp.splice(lb_c.as_raw_fd(), lb_b.as_raw_fd()).unwrap();
        let rdhup = Ep::new(
            &[lb_c.as_raw_fd(), lb_b.as_raw_fd()],
            (libc::EPOLLRDHUP | libc::EPOLLET) as u32,
        );
        let rdin = Ep::new(
            &[lb_c.as_raw_fd(), lb_b.as_raw_fd()],
            (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
        );
        assert!(rdhup.wait(0).is_empty() && rdin.wait(0).is_empty());
        let mut wake_rdhup = 0;
        let mut wake_in = 0;
        for i in 0..20u8 {
            client.write_all(&[i; 100]).unwrap();
            assert_eq!(read_n(&mut backend, 100), vec![i; 100]);
            backend.write_all(&[i; 10]).unwrap();
            assert_eq!(read_n(&mut client, 10), vec![i; 10]);
            wake_rdhup += rdhup.wait(0).len();
            wake_in += rdin.wait(0).len();
        }
        eprintln!("wake-ups for 40 redirected messages: EPOLLRDHUP only {wake_rdhup}, EPOLLIN|EPOLLRDHUP {wake_in}");
        assert_eq!(wake_rdhup, 0);
        client.write_all(b"last").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let evs = rdhup.wait(1000);
        eprintln!("after the client's FIN: {evs:?}");
        // The FIN shows on the client's socket. (Once, in a full test run on a loaded machine, the
        // backend-side socket also reported EPOLLERR here; the e2e tests cover what a connection
        // does then. Kept visible in the output above rather than asserted away.)
        let fin: Vec<_> = evs.iter().filter(|e| e.0 == lb_c.as_raw_fd()).collect();
        assert_eq!(fin.len(), 1, "{evs:?}");
        assert!(fin[0].1 & libc::EPOLLRDHUP as u32 != 0);
        let mut b = [0u8; 16];
        lb_c.set_nonblocking(true).unwrap();
        let n = (&lb_c).read(&mut b);
        eprintln!("read on the spliced socket after FIN: {n:?}");
        assert_eq!(n.unwrap(), 0, "end of stream, nothing left for user space");
        assert_eq!(read_n(&mut backend, 4), b"last");
        // The backend may still answer after the client's half-close.
        backend.write_all(b"after").unwrap();
        assert_eq!(read_n(&mut client, 5), b"after");
        // Close the backend: its FIN shows on lb_b.
        backend.shutdown(Shutdown::Write).unwrap();
        let evs = rdhup.wait(1000);
        assert!(
            evs.iter()
                .any(|&(f, e)| f == lb_b.as_raw_fd() && e & libc::EPOLLRDHUP as u32 != 0),
            "{evs:?}"
        );
    }
}
