//! Moving bytes between a client and a backend, both directions at once, with half-close: when one
//! side finishes sending, the other side's write half is shut down and the opposite direction keeps
//! flowing until it finishes too.
//!
//! Small messages are copied through one buffer per worker thread (an idle connection holds no
//! buffer at all; only a partial write keeps its remainder). A direction that moves a full buffer in
//! one read is a bulk flow and switches to `splice(2)` through a pipe of its own, so bulk data never
//! crosses into user space.

use std::cell::RefCell;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use futures::FutureExt;
use prometheus::IntCounter;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

const BUF: usize = 64 * 1024;
/// Pipe capacity asked for in splice mode; the kernel may grant less (pipe-max-size), which is fine.
const PIPE_SIZE: i32 = 512 * 1024;

thread_local! {
    static COPY_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; BUF]);
}

/// Counters a direction bumps as bytes pass.
pub struct Counters<'a> {
    pub from_src: [Option<&'a IntCounter>; 2],
}

/// Relays until both directions are finished, either side fails, or nothing moved for `idle`.
/// `long_lived`: called once if the connection is still relayed after that long (no allocation, no
/// timer of its own: the idle watchdog's timer wakes first then). Returns (client→backend,
/// backend→client) byte counts.
pub async fn relay(
    client: &TcpStream,
    backend: &TcpStream,
    idle: Duration,
    up: Counters<'_>,
    down: Counters<'_>,
    long_lived: Option<(Duration, &(dyn Fn() + Sync))>,
) -> io::Result<(u64, u64)> {
    let shared = Shared {
        start: Instant::now(),
        last: AtomicU64::new(0),
        finished: AtomicU8::new(0),
    };
    tokio::select! {
        r = futures::future::try_join(
            pump(client, backend, &shared, up),
            pump(backend, client, &shared, down),
        ) => r,
        () = watchdog(&shared, idle, long_lived) => Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")),
    }
}

/// What both directions and the watchdog share, behind one reference each (every byte of the
/// relay's state is kept by every idle connection).
struct Shared {
    start: Instant,
    /// Milliseconds after `start` of the last move.
    last: AtomicU64,
    /// Directions finished.
    finished: AtomicU8,
}

impl Shared {
    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Returns once nothing moved for `idle`; calls the hook once at `start + after` on the way.
async fn watchdog(s: &Shared, idle: Duration, mut hook: Option<(Duration, &(dyn Fn() + Sync))>) {
    // Set before each wait below.
    let sleep = tokio::time::sleep_until(s.start);
    tokio::pin!(sleep);
    loop {
        let now = Instant::now();
        if let Some((after, h)) = hook {
            if now >= s.start + after {
                h();
                hook = None;
            }
        }
        let seen = Duration::from_millis(s.last.load(Ordering::Relaxed));
        let deadline = s.start + seen + idle;
        if now >= deadline {
            return;
        }
        let wake = hook.map_or(deadline, |(after, _)| deadline.min(s.start + after));
        sleep.as_mut().reset(wake);
        (&mut sleep).await;
    }
}

// Waiting through `poll_*_ready` keeps a few bytes in the connection's task, where tokio's
// `writable()`/`readable()` futures keep about 150 each (an intrusive waiter); every idle
// connection carries its task, so this is memory per connection. Each direction's waker slot has
// one user here: a pump reads one socket and writes the other.
async fn writable(s: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| s.poll_write_ready(cx)).await
}

async fn readable(s: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| s.poll_read_ready(cx)).await
}

async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    shared: &Shared,
    c: Counters<'_>,
) -> io::Result<u64> {
    let mut total = 0u64;
    let mut pending: Vec<u8> = Vec::new();
    let mut pipe: Option<Pipe> = None;
    loop {
        if !pending.is_empty() {
            writable(dst).await?;
            match dst.try_write(&pending) {
                Ok(w) => {
                    pending.drain(..w);
                    if pending.is_empty() {
                        // Give the memory back: an idle connection should hold nothing.
                        pending = Vec::new();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        if let Some(p) = pipe.as_mut() {
            // Splice mode: fill the (empty) pipe from src, then drain it into dst.
            readable(src).await?;
            let n = match src.try_io(Interest::READABLE, || p.fill(src.as_raw_fd())) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            shared.touch();
            count(&c, n);
            total += n as u64;
            while p.len > 0 {
                match dst.try_io(Interest::WRITABLE, || p.drain(dst.as_raw_fd())) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => writable(dst).await?,
                    Err(e) => return Err(e),
                }
            }
            continue;
        }
        // EPOLLRDHUP already seen: the peer's FIN is queued behind the data, so a short read below
        // is the last data of this direction and its end-of-stream follows at once.
        readable(src).await?;
        // Readable now, so `ready` answers on its first poll: polled in place it is never part of
        // the task's state (136 bytes per direction).
        let eof_follows = src
            .ready(Interest::READABLE)
            .now_or_never()
            .transpose()?
            .is_some_and(|r| r.is_read_closed());
        let r = COPY_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            let mut got = 0;
            // A short read means the socket is drained: tell tokio "would block" so it clears the
            // readiness now (tick-aware: data arriving meanwhile is not missed) instead of paying
            // one more read that returns EAGAIN.
            let r = src.try_io(Interest::READABLE, || {
                let n = (&*socket2::SockRef::from(src)).read(&mut buf[..])?;
                got = n;
                if n > 0 && n < buf.len() {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => {}
                Err(e) => return Err(e),
                Ok(()) => {}
            }
            let n = got;
            let mut off = 0;
            let out = socket2::SockRef::from(dst);
            // Last data before the half-close: MSG_MORE holds it back for the shutdown (or close)
            // that follows right after, so data and FIN leave in one segment instead of two. The
            // end of stream is certain here, so nothing waits on a cork.
            let flags = if eof_follows && n < buf.len() {
                libc::MSG_MORE
            } else {
                0
            };
            while off < n {
                // Straight to the socket: it is almost always writable, and tokio's `try_write`
                // would refuse until it has seen a writable event.
                match out.send_with_flags(&buf[off..n], flags) {
                    Ok(w) => off += w,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if off < n {
                pending.extend_from_slice(&buf[off..n]);
            }
            Ok(n)
        });
        match r {
            Ok(0) => break,
            Ok(n) => {
                shared.touch();
                count(&c, n);
                total += n as u64;
                if n == BUF {
                    // A full buffer in one read: bulk. Without a pipe (fds exhausted) keep copying.
                    pipe = Pipe::new().ok();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    // src finished: flush what we hold, then tell dst no more data comes (half-close).
    while !pending.is_empty() {
        writable(dst).await?;
        match dst.try_write(&pending) {
            Ok(w) => {
                pending.drain(..w);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    // The first direction to finish half-closes. When the second finishes, both sides are done and
    // the close that follows sends the FIN: one syscall per connection saved.
    if shared.finished.fetch_add(1, Ordering::Relaxed) == 0 {
        let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
    }
    Ok(total)
}

fn count(c: &Counters<'_>, n: usize) {
    for ctr in c.from_src.into_iter().flatten() {
        ctr.inc_by(n as u64);
    }
}

/// A non-blocking pipe and how many bytes it holds.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    len: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: plain fcntl on an fd we own; failure only leaves the default size.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        Ok(Pipe { r, w, len: 0 })
    }

    /// Moves up to a pipe's worth from socket `from` into the pipe; 0 means end of stream.
    fn fill(&mut self, from: RawFd) -> io::Result<usize> {
        let n = splice(from, self.w.as_raw_fd(), PIPE_SIZE as usize)?;
        self.len += n;
        Ok(n)
    }

    fn drain(&mut self, to: RawFd) -> io::Result<usize> {
        let n = splice(self.r.as_raw_fd(), to, self.len)?;
        self.len -= n;
        Ok(n)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both fds are open for the duration of the call; null offsets are allowed for pipes and
    // sockets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A relay between two loopback pairs: returns (test's client end, test's backend end) and the
    /// relay task, which closes both of its sockets when it returns (as `frontend::handle` does).
    async fn relayed() -> (
        TcpStream,
        TcpStream,
        tokio::task::JoinHandle<io::Result<(u64, u64)>>,
    ) {
        relayed_with(Duration::from_secs(3600), Default::default()).await
    }

    /// As `relayed`, with a `long_lived` hook after `after` that counts its calls in `calls`.
    async fn relayed_with(
        after: Duration,
        calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) -> (
        TcpStream,
        TcpStream,
        tokio::task::JoinHandle<io::Result<(u64, u64)>>,
    ) {
        let fl = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bl = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(fl.local_addr().unwrap()).await.unwrap();
        let (lb_client, _) = fl.accept().await.unwrap();
        let lb_backend = TcpStream::connect(bl.local_addr().unwrap()).await.unwrap();
        let (backend, _) = bl.accept().await.unwrap();
        let task = tokio::spawn(async move {
            let c = IntCounter::new("c", "c").unwrap();
            let hook = || {
                calls.fetch_add(1, Ordering::Relaxed);
            };
            relay(
                &lb_client,
                &lb_backend,
                Duration::from_secs(30),
                Counters {
                    from_src: [Some(&c), Some(&c)],
                },
                Counters {
                    from_src: [Some(&c), Some(&c)],
                },
                Some((after, &hook)),
            )
            .await
        });
        (client, backend, task)
    }

    async fn read_to_eof(s: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
            .await
            .expect("end of stream within 5s")
            .unwrap();
        got
    }

    /// The long-lived hook (backend keepalive in `frontend`) runs once for a connection that lives
    /// past it, idle or not, and never for one that ends sooner.
    #[tokio::test]
    async fn the_long_lived_hook_runs_once_and_only_for_connections_that_live_past_it() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::Arc;
        let calls = Arc::new(AtomicUsize::new(0));
        let (mut client, mut backend, task) =
            relayed_with(Duration::from_millis(300), calls.clone()).await;
        client.write_all(b"quick").await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(read_to_eof(&mut backend).await, b"quick");
        backend.shutdown().await.unwrap();
        assert_eq!(read_to_eof(&mut client).await, b"");
        task.await.unwrap().unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 0);

        let (mut client, mut backend, task) =
            relayed_with(Duration::from_millis(300), calls.clone()).await;
        // Traffic on both sides of the mark, then quiet well past it.
        for _ in 0..3 {
            client.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            backend.read_exact(&mut b).await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        client.shutdown().await.unwrap();
        backend.shutdown().await.unwrap();
        assert_eq!(read_to_eof(&mut client).await, b"");
        task.await.unwrap().unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    /// The backend answers and closes while the client still sends: the last data (held with
    /// MSG_MORE for the half-close) reaches the client with its end of stream, and the client can
    /// still send afterwards.
    #[tokio::test]
    async fn last_data_and_half_close_reach_the_client_while_it_still_sends() {
        let (mut client, mut backend, task) = relayed().await;
        client.write_all(b"request").await.unwrap();
        let mut req = [0u8; 7];
        backend.read_exact(&mut req).await.unwrap();
        backend.write_all(b"response").await.unwrap();
        backend.shutdown().await.unwrap();
        assert_eq!(read_to_eof(&mut client).await, b"response");
        client.write_all(b"more").await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(read_to_eof(&mut backend).await, b"more");
        let (up, down) = task.await.unwrap().unwrap();
        assert_eq!((up, down), (11, 8));
    }

    /// The client finished first; the backend's last data then ends the relay without a
    /// half-close: closing the sockets must still deliver it, with the end of stream.
    #[tokio::test]
    async fn last_data_reaches_the_client_when_the_relay_ends_on_it() {
        let (mut client, mut backend, task) = relayed().await;
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(read_to_eof(&mut backend).await, b"request");
        backend.write_all(b"response").await.unwrap();
        backend.shutdown().await.unwrap();
        assert_eq!(read_to_eof(&mut client).await, b"response");
        assert_eq!(task.await.unwrap().unwrap(), (7, 8));
    }
}
