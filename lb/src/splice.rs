//! A kernel-spliced connection's life in user space (`splice: kernel`). Once [`sockmap`] has spliced
//! the two sockets, data never reaches keel-lb; it is woken only for what the kernel cannot do:
//!
//! - half-close: a FIN shows as read readiness (EPOLLRDHUP; redirected data wakes nobody). The
//!   other socket is shut down for writing only once everything received before the FIN has been
//!   queued to it: the redirect is sent by a kernel worker, so the FIN can be seen before its data
//!   left. Progress is read from the kernel's counters (TCP_INFO bytes_received / bytes_acked and
//!   SIOCOUTQ);
//! - idle timeout: TCP_INFO's time since data last arrived, on both sockets;
//! - byte counters: bytes received on each socket since splicing, added to the metrics at least
//!   every [`REFRESH`] and when the connection ends;
//! - errors (a reset): read readiness too, and the read returns the error.
//!
//! [`sockmap`]: crate::sockmap

use std::io;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::relay::Counters;
use crate::sockmap::{self, Position, SpliceError, Splicer};

/// Byte counters of a long spliced connection lag by at most this much.
const REFRESH: Duration = Duration::from_secs(10);

/// Upper bound on the maps' size: each map preallocates a 16-byte bucket per entry (rounded up to a
/// power of two), so 256 Ki pairs cost 2 x 8 MiB of kernel memory. Connections beyond it are relayed.
const MAX_PAIRS: u64 = 256 * 1024;

static SPLICER: OnceLock<Option<Splicer>> = OnceLock::new();

/// The process's splicer, set up on first use; `None` (logged once, with the reason) where the
/// kernel or the privileges do not allow it.
pub fn splicer() -> Option<&'static Splicer> {
    SPLICER
        .get_or_init(|| {
            // A spliced pair holds two fds, so the maps never need more room than the fd limit.
            let pairs = nofile_limit().div_ceil(2).clamp(1, MAX_PAIRS) as u32;
            match Splicer::new(pairs) {
                Ok(s) => {
                    tracing::info!(connections = pairs, "kernel splicing ready (BPF sockmap)");
                    Some(s)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "kernel splicing unavailable; splice: kernel frontends relay in user space");
                    None
                }
            }
        })
        .as_ref()
}

fn nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    r.rlim_cur
}

/// What came of trying to splice a connection.
pub enum Outcome {
    Spliced(Position, Position),
    /// Not spliced, nothing redirected: relay it in user space.
    Relay,
    /// Half spliced: close it.
    Broken(io::Error),
}

pub fn try_splice(client: &TcpStream, backend: &TcpStream) -> Outcome {
    let Some(s) = splicer() else {
        return Outcome::Relay;
    };
    match s.splice(client.as_raw_fd(), backend.as_raw_fd()) {
        Ok((c, b)) => Outcome::Spliced(c, b),
        Err(SpliceError::Before(e)) => {
            tracing::debug!(error = %e, "cannot splice this connection; relaying it");
            Outcome::Relay
        }
        Err(SpliceError::Partial(e)) => Outcome::Broken(e),
    }
}

/// One direction: what `src` receives the kernel sends on `dst`.
struct Direction<'a> {
    src: &'a TcpStream,
    dst: &'a TcpStream,
    /// `src`'s position (what it received since splicing).
    from: Position,
    /// `dst`'s position (what was queued to it since splicing).
    to: Position,
    counted: u64,
    done: bool,
    c: Counters<'a>,
}

impl Direction<'_> {
    fn moved(&self) -> io::Result<u64> {
        self.from.moved(self.src.as_raw_fd())
    }

    /// Adds what moved since the last call to the counters.
    fn count(&mut self) -> io::Result<u64> {
        let m = self.moved()?;
        if m > self.counted {
            for ctr in self.c.from_src.into_iter().flatten() {
                ctr.inc_by(m - self.counted);
            }
            self.counted = m;
        }
        Ok(m)
    }

    /// `src` is readable: on a spliced socket that is an end of stream or an error, never data.
    fn end_of_stream(&self) -> io::Result<bool> {
        let mut b = [0u8; 1];
        match self.src.try_read(&mut b) {
            Ok(0) => Ok(true),
            Ok(_) => Err(io::Error::other(
                "data reached user space on a spliced socket",
            )),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            // The kernel's redirect worker (`sk_psock_backlog`, net/core/skmsg.c) reports a send
            // it could not make *to* this socket as the socket's error, and a read returns it:
            // seen when the peer's FIN, redirected after we half-closed this socket, fails with
            // EPIPE. That says nothing about what this socket receives; reading it clears the
            // error, and data that did not go out is caught by `finish` (delivered < moved). A
            // real reset after a FIN also reads as EPIPE once, then as end of stream with the
            // socket closed, which `finish` reports.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                tracing::debug!(error = %e, "send error reported on a spliced socket; reading on");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Waits until everything `src` received was queued to `dst` (the kernel's worker sends
    /// redirected data after the FIN is visible), then half-closes `dst` unless the other
    /// direction has finished already (then the close that follows sends the FIN). Gives up after
    /// `idle` without progress.
    async fn finish(&mut self, other_done: bool, idle: Duration) -> io::Result<()> {
        let want = self.count()?;
        let mut last = (self.to.delivered(self.dst.as_raw_fd())?, Instant::now());
        tracing::debug!(moved = want, delivered = last.0, "spliced direction ended");
        let mut pause = Duration::from_micros(200);
        while last.0 < want {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
            let d = self.to.delivered(self.dst.as_raw_fd())?;
            if d != last.0 {
                last = (d, Instant::now());
            } else if last.1.elapsed() >= idle {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "idle timeout while the kernel held data for a peer that does not read",
                ));
            }
        }
        if !other_done {
            socket2::SockRef::from(self.dst).shutdown(std::net::Shutdown::Write)?;
        }
        self.done = true;
        Ok(())
    }
}

/// Serves a spliced connection until both directions finished, either side failed, or no data
/// arrived on either socket for `idle`. Returns (client→backend, backend→client) byte counts.
pub async fn serve(
    client: &TcpStream,
    backend: &TcpStream,
    (pc, pb): (Position, Position),
    idle: Duration,
    up: Counters<'_>,
    down: Counters<'_>,
) -> io::Result<(u64, u64)> {
    let mut d = [
        Direction {
            src: client,
            dst: backend,
            from: pc,
            to: pb,
            counted: 0,
            done: false,
            c: up,
        },
        Direction {
            src: backend,
            dst: client,
            from: pb,
            to: pc,
            counted: 0,
            done: false,
            c: down,
        },
    ];
    let r = drive(&mut d, idle).await;
    // Whatever ended it, count what moved.
    let (a, b) = (d[0].count(), d[1].count());
    r.and(Ok((a.unwrap_or(d[0].counted), b.unwrap_or(d[1].counted))))
}

async fn drive(d: &mut [Direction<'_>; 2], idle: Duration) -> io::Result<()> {
    let mut refresh = Instant::now() + REFRESH;
    while !(d[0].done && d[1].done) {
        let quiet = Duration::from_millis(u64::from(
            sockmap::tcp_info(d[0].src.as_raw_fd())?
                .last_data_recv_ms
                .min(sockmap::tcp_info(d[1].src.as_raw_fd())?.last_data_recv_ms),
        ));
        if quiet >= idle {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
        }
        let wake = (Instant::now() + (idle - quiet)).min(refresh);
        let ended = tokio::select! {
            r = d[0].src.ready(Interest::READABLE), if !d[0].done => { r?; 0 }
            r = d[1].src.ready(Interest::READABLE), if !d[1].done => { r?; 1 }
            () = tokio::time::sleep_until(wake) => {
                if Instant::now() >= refresh {
                    d[0].count()?;
                    d[1].count()?;
                    refresh = Instant::now() + REFRESH;
                }
                continue;
            }
        };
        if d[ended].end_of_stream()? {
            let other_done = d[1 - ended].done;
            d[ended].finish(other_done, idle).await?;
        }
    }
    Ok(())
}
