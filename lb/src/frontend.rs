//! A frontend version and its TCP accept loop.
//!
//! The accept loop owns the listener. It takes a connection-limit permit *before* accepting, so at the
//! limit keel-lb simply stops accepting and the kernel's backlog (then the clients) wait: backpressure,
//! not a crash. Accept errors (out of file descriptors above all) back off and retry forever: a load
//! balancer must outlive a transient fd exhaustion. Reload hands the loop a new frontend version
//! through a watch channel; the loop checks it once per accept with an atomic version compare, and
//! connections keep the version they started with.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keel_common::Backoff;
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::Backend;
use crate::balance::client_key;
use crate::config;
use crate::metrics::FrontendMetrics;
use crate::pool::Pool;
use crate::proxy_protocol;
use crate::relay::{self, Counters};
use crate::splice;
use futures::future::Either;

/// One frontend version: what a connection accepted now is served with.
pub struct Frontend {
    pub cfg: config::Frontend,
    pub pool: Arc<Pool>,
    /// Connection limit; replaced (not resized) when the limit changes, so connections of the old
    /// version release permits nobody waits on any more.
    pub limit: Arc<Semaphore>,
    pub metrics: FrontendMetrics,
}

/// Counts an open client connection (or UDP session) in the frontend gauge.
pub struct OpenGuard<'a>(&'a FrontendMetrics);

impl OpenGuard<'_> {
    pub fn new(m: &FrontendMetrics) -> OpenGuard<'_> {
        m.total.inc();
        m.current.inc();
        OpenGuard(m)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.current.dec();
    }
}

/// Errors that concern one pending connection only: accept again at once.
fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EINTR
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}

/// This host ran out of something (fds, buffers, memory): nothing a backend did.
pub fn local_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// TCP keepalive and TCP_USER_TIMEOUT, so a peer that vanished without a FIN or RST (a dead VM, a
/// cut link) ends the connection and frees its permit in about `keepalive` + `user_timeout`, not
/// after the idle timeout. Probes every third of `keepalive`; the user timeout decides when to
/// give up (Linux ends a connection whose probes go unanswered past it).
fn set_liveness(s: SockRef<'_>, t: &config::Timeouts) -> io::Result<()> {
    // No TCP_KEEPCNT: with TCP_USER_TIMEOUT set (always), the kernel ends an unanswered keepalive
    // at the user timeout and ignores the probe count (tcp_keepalive_timer, net/ipv4/tcp_timer.c),
    // so setting it would cost a syscall per backend connection for nothing.
    let ka = TcpKeepalive::new()
        .with_time(t.keepalive)
        .with_interval((t.keepalive / 3).max(Duration::from_secs(1)));
    s.set_tcp_keepalive(&ka)?;
    s.set_tcp_user_timeout(Some(t.user_timeout))
}

/// How long a relayed connection lives before its backend socket gets keepalive and the user
/// timeout. Most connections (a request, a health probe) end sooner and never pay the four
/// setsockopt calls; one that lives on is covered from here (a dead peer is found at most this much
/// later than with the options set at connect). Client sockets inherit them from the listener.
const LONG_LIVED: Duration = Duration::from_secs(1);

fn backend_liveness(fe: &Frontend, upstream: &TcpStream) {
    if let Err(e) = set_liveness(SockRef::from(upstream), &fe.cfg.timeouts) {
        tracing::debug!(frontend = %fe.cfg.name, error = %e, "cannot set TCP keepalive / user timeout on a backend socket");
    }
}

/// Spliced, the connection is not watched per second (the kernel holds it): its backend socket gets
/// keepalive and the user timeout before splicing.
fn splice_with_liveness(
    fe: &Frontend,
    client: &TcpStream,
    upstream: &TcpStream,
) -> splice::Outcome {
    backend_liveness(fe, upstream);
    splice::try_splice(client, upstream)
}

/// On the listener: accepted sockets inherit keepalive and the user timeout on Linux (as they do
/// TCP_NODELAY), so clients cost no setsockopt of their own.
fn listener_liveness(listener: &TcpListener, fe: &Frontend) {
    if let Err(e) = set_liveness(SockRef::from(listener), &fe.cfg.timeouts) {
        tracing::warn!(frontend = %fe.cfg.name, error = %e, "cannot set TCP keepalive / user timeout on the listener");
    }
}

fn liveness_changed(a: &Frontend, b: &Frontend) -> bool {
    let (a, b) = (&a.cfg.timeouts, &b.cfg.timeouts);
    (a.keepalive, a.user_timeout) != (b.keepalive, b.user_timeout)
}

pub async fn serve_tcp(
    listener: TcpListener,
    mut version: watch::Receiver<Arc<Frontend>>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let mut fe = version.borrow_and_update().clone();
    listener_liveness(&listener, &fe);
    if fe.cfg.splice == config::Splice::Kernel {
        // Set up (or fail, logged) now, not on the first connection: creating the maps needs fds,
        // which may be short later.
        splice::splicer();
    }
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    // Registered with the token once, not once per accepted connection.
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    loop {
        // Checked here too: under a steady flood `accept` is always ready and, polled first below,
        // would never let the cancellation branch run.
        if stop.is_cancelled() {
            break;
        }
        if version.has_changed().unwrap_or(false) {
            let new = version.borrow_and_update().clone();
            if liveness_changed(&fe, &new) {
                listener_liveness(&listener, &new);
            }
            if new.cfg.splice == config::Splice::Kernel {
                splice::splicer();
            }
            fe = new;
        }
        // Below the limit (the usual case) the permit is taken without setting up the wait.
        let permit = match fe.limit.clone().try_acquire_owned() {
            Ok(p) => Ok(p),
            Err(_) => tokio::select! {
                p = fe.limit.clone().acquire_owned() => p,
                _ = &mut cancelled => break,
                // A reload may raise the limit while we wait at the old one.
                r = version.changed() => if r.is_err() { break } else { continue },
            },
        };
        let Ok(permit) = permit else { continue };
        let accepted = tokio::select! {
            biased;
            r = listener.accept() => r,
            _ = &mut cancelled => break,
        };
        match accepted {
            Ok((sock, peer)) => {
                backoff.reset();
                // A reload may have happened while we waited in accept: serve with the newest version.
                if version.has_changed().unwrap_or(false) {
                    let new = version.borrow_and_update().clone();
                    if liveness_changed(&fe, &new) {
                        listener_liveness(&listener, &new);
                        // This one was accepted with the old settings.
                        let _ = set_liveness(SockRef::from(&sock), &new.cfg.timeouts);
                    }
                    fe = new;
                }
                let fe = fe.clone();
                tracker.spawn(handle(fe, sock, peer, permit));
            }
            Err(e) if per_connection(&e) => continue,
            Err(e) => {
                fe.metrics.accept_errors.inc();
                let delay = backoff.next_delay();
                // EMFILE/ENFILE/ENOBUFS/ENOMEM: the pending connection stays queued; wait for
                // connections to close instead of spinning on a readable listener.
                if backoff.attempts() == 1 || backoff.attempts().is_power_of_two() {
                    tracing::warn!(frontend = %fe.cfg.name, error = %e, retry_in = ?delay, "accept failed; backing off");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = &mut cancelled => break,
                }
            }
        }
    }
    tracing::info!(frontend = %fe.cfg.name, listen = %fe.cfg.listen, "stopped accepting");
}

async fn connect(b: &Backend, t: &config::Timeouts) -> io::Result<TcpStream> {
    match tokio::time::timeout(t.connect, connect_nodelay(b.addr)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

/// A non-blocking connect with TCP_NODELAY set before the handshake. Success is read from the epoll
/// event itself: a socket in SYN_SENT never reports writable, and a failed handshake reports
/// EPOLLERR/EPOLLHUP, so `getsockopt(SO_ERROR)` (which tokio's `TcpStream::connect` always pays) is
/// only needed to name the error of a connect that failed. One syscall per connection saved.
async fn connect_nodelay(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_tcp_nodelay(true)?;
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(s))?;
    let ready = stream.ready(Interest::WRITABLE | Interest::ERROR).await?;
    if ready.is_error() || ready.is_write_closed() {
        return Err(stream.take_error()?.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::ConnectionReset,
                "connection closed during connect",
            )
        }));
    }
    Ok(stream)
}

async fn handle(
    fe: Arc<Frontend>,
    client: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    let _open = OpenGuard::new(&fe.metrics);
    debug_assert!(
        client.nodelay().unwrap_or(true),
        "TCP_NODELAY is inherited from the listener"
    );
    let mut chosen = None;
    for b in fe.pool.candidates(client_key(peer.ip())) {
        match connect(b, &fe.cfg.timeouts).await {
            Ok(s) => {
                chosen = Some((b.clone(), s));
                break;
            }
            Err(e) if local_exhaustion(&e) => {
                // Our own fds or memory ran out, not the backend: do not hold it against it.
                tracing::warn!(frontend = %fe.cfg.name, error = %e, "cannot open a backend socket; closing client connection");
                return;
            }
            Err(e) => {
                tracing::debug!(frontend = %fe.cfg.name, backend = %b.addr, error = %e, "connect failed; trying the next backend");
                fe.pool.connect_failed(b);
            }
        }
    }
    let Some((backend, mut upstream)) = chosen else {
        // Counted, and logged at debug only: a pool without healthy backends is logged once when it
        // goes down, not once per refused client.
        fe.metrics.no_backend.inc();
        tracing::debug!(frontend = %fe.cfg.name, pool = %fe.pool.name(), client = %peer, "no backend reachable; closing client connection");
        return;
    };
    let _counted = backend.connection_started();
    if fe.cfg.proxy_protocol {
        let local = client.local_addr().unwrap_or(fe.cfg.listen);
        let (hdr, n) = proxy_protocol::encode(peer, local);
        if let Err(e) = upstream.write_all(&hdr[..n]).await {
            tracing::debug!(backend = %backend.addr, error = %e, "writing PROXY header failed");
            return;
        }
        if let Some(m) = &backend.metrics {
            m.bytes_out.inc_by(n as u64);
        }
    }
    let m = &fe.metrics;
    let bm = backend.metrics.as_ref();
    let up = Counters {
        from_src: [Some(&m.bytes_in), bm.map(|b| &b.bytes_out)],
    };
    let down = Counters {
        from_src: [bm.map(|b| &b.bytes_in), Some(&m.bytes_out)],
    };
    let idle = fe.cfg.timeouts.idle;
    let liveness = || backend_liveness(&fe, &upstream);
    // After the PROXY header: it must reach the backend before anything the kernel redirects.
    let relayed = match fe.cfg.splice {
        config::Splice::User => Either::Left(relay::relay(
            &client,
            &upstream,
            idle,
            up,
            down,
            Some((LONG_LIVED, &liveness)),
        )),
        config::Splice::Kernel => match splice_with_liveness(&fe, &client, &upstream) {
            splice::Outcome::Spliced(pc, pb) => {
                m.spliced.inc();
                Either::Right(splice::serve(&client, &upstream, (pc, pb), idle, up, down))
            }
            splice::Outcome::Relay => {
                m.splice_fallbacks.inc();
                Either::Left(relay::relay(&client, &upstream, idle, up, down, None))
            }
            splice::Outcome::Broken(e) => {
                tracing::warn!(frontend = %fe.cfg.name, backend = %backend.addr, client = %peer, error = %e, "splicing failed half way; closing the connection");
                return;
            }
        },
    };
    let r = match fe.pool.cfg.shutdown_sessions_on_down {
        None => relayed.await,
        // Boxed: only pools that ask for it pay for the wait in each connection's task.
        Some(grace) => tokio::select! {
            r = relayed => r,
            () = Box::pin(backend.down_for(grace)) => {
                // Both sockets close as this returns: the client reconnects to a healthy backend
                // instead of staying pinned (an apiserver watch) to one that failed its checks.
                tracing::info!(frontend = %fe.cfg.name, backend = %backend.addr, client = %peer, "session shut down: backend marked down");
                fe.metrics.sessions_shut_down.inc();
                return;
            }
        },
    };
    if let Err(e) = r {
        tracing::debug!(frontend = %fe.cfg.name, backend = %backend.addr, client = %peer, error = %e, "connection ended");
    }
}
