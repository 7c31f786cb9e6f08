//! UDP frontends: per-client sessions. The first datagram from a client picks a backend and opens a
//! connected socket to it; the backend's replies go back to the client from the frontend's address.
//!
//! A session ends after `udp_session` without traffic, when the backend has sent
//! `close_after_replies` replies and answered every request (DNS), or when a full table evicts it:
//! the frontend's `max_connections` bounds the sessions, and a new one replaces the least recently
//! used ([`table`]). A client address may hold `max_sessions_per_source` sessions; beyond that its
//! datagrams that would open one are dropped (and counted). A session whose backend went down or was
//! drained (a reload that removes a backend drains it) moves to a usable backend on its next datagram.

mod socket;
pub mod table;

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::Backend;
use crate::balance::client_key;
use crate::frontend::{Frontend, OpenGuard};
use table::{Refused, Table};

thread_local! {
    static DGRAM: RefCell<Vec<u8>> = RefCell::new(vec![0; 65_536]);
}

struct Session {
    sock: UdpSocket,
    backend: Arc<Backend>,
    /// Milliseconds since the table's epoch of the last datagram in either direction.
    last: AtomicU64,
    /// Datagrams from the client (counted under the table lock, so a close decision taken under
    /// it never strands a request just forwarded).
    requests: AtomicU64,
    replies: AtomicU64,
    /// Cancelled when the session is evicted or replaced (and on shutdown: a child of its stop).
    cancel: CancellationToken,
}

/// The sessions of one listener, across frontend versions.
struct Sessions {
    table: Mutex<Table<Arc<Session>>>,
    epoch: Instant,
}

impl Sessions {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn touch(&self, s: &Session) {
        s.last.store(self.now(), Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Table<Arc<Session>>> {
        // The table holds no invariant a panicking holder could break half-way that matters more
        // than serving traffic.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub async fn serve_udp(
    sock: UdpSocket,
    mut version: watch::Receiver<Arc<Frontend>>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let sock = Arc::new(sock);
    let sessions = Arc::new(Sessions {
        table: Mutex::default(),
        epoch: Instant::now(),
    });
    let mut fe = version.borrow_and_update().clone();
    configure(&sock, &fe, None);
    let mut control = socket::Control::default();
    let mut drops = socket::Drops::default();
    loop {
        tokio::select! {
            r = sock.readable() => if let Err(e) = r {
                tracing::warn!(frontend = %fe.cfg.name, error = %e, "udp socket failed");
                return;
            },
            _ = stop.cancelled() => break,
        }
        if version.has_changed().unwrap_or(false) {
            let old = fe.cfg.udp.receive_buffer;
            fe = version.borrow_and_update().clone();
            configure(&sock, &fe, Some(old));
        }
        // Drain what is queued; each datagram goes to its client's session.
        for _ in 0..64 {
            let r = DGRAM.with(|buf| {
                let mut buf = buf.borrow_mut();
                let (n, peer, dropped) = socket::try_recv(&sock, &mut buf[..], &mut control)?;
                if let Some(d) = dropped {
                    fe.metrics.udp.kernel_drops.inc_by(drops.observe(d).into());
                }
                Ok::<_, io::Error>(forward(&fe, &sock, &sessions, &stop, peer, &buf[..n]))
            });
            match r {
                Ok(Some(fut)) => {
                    tracker.spawn(fut);
                }
                Ok(None) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(frontend = %fe.cfg.name, error = %e, "udp receive failed");
                    break;
                }
            }
        }
    }
    tracing::info!(frontend = %fe.cfg.name, listen = %fe.cfg.listen, "stopped receiving");
}

/// Applies the listening socket's settings of a new frontend version (`old`: the receive buffer
/// the previous version asked for; None at start).
fn configure(sock: &UdpSocket, fe: &Frontend, old: Option<Option<u32>>) {
    if old.is_none() {
        if let Err(e) = socket::count_drops(sock) {
            tracing::warn!(frontend = %fe.cfg.name, error = %e, "cannot count kernel drops (SO_RXQ_OVFL)");
        }
    }
    let want = fe.cfg.udp.receive_buffer;
    let effective = match want {
        Some(b) if old != Some(want) => socket::set_receive_buffer(sock, b),
        _ => socket::receive_buffer(sock),
    };
    match effective {
        Ok(n) => {
            fe.metrics.udp.receive_buffer.set(n as i64);
            if want.is_some() && old != Some(want) {
                tracing::info!(frontend = %fe.cfg.name, requested = want, effective = n, "udp receive buffer set");
            }
        }
        Err(e) => {
            tracing::warn!(frontend = %fe.cfg.name, error = %e, "cannot set the udp receive buffer")
        }
    }
}

/// Sends one client datagram on; returns the reply task of a new session, if one was created.
fn forward(
    fe: &Arc<Frontend>,
    listener: &Arc<UdpSocket>,
    sessions: &Arc<Sessions>,
    stop: &CancellationToken,
    peer: SocketAddr,
    data: &[u8],
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    let replaced = {
        let mut table = sessions.lock();
        match table.get(&peer) {
            Some(s) if s.backend.available() => {
                let s = s.clone();
                s.requests.fetch_add(1, Ordering::Relaxed);
                drop(table);
                sessions.touch(&s);
                send(fe, &s, data);
                return None;
            }
            // Its backend went down or was drained: re-pick below, or keep it if none is usable.
            Some(s) => Some(s.clone()),
            None => {
                let admitted = table.admit(
                    peer,
                    fe.cfg.max_connections,
                    fe.cfg.udp.max_sessions_per_source,
                    |s| s.last.load(Ordering::Relaxed),
                );
                match admitted {
                    Ok(Some(evicted)) => {
                        evicted.cancel.cancel();
                        fe.metrics.udp.evictions.inc();
                    }
                    Ok(None) => {}
                    Err(Refused::SourceFull) => {
                        fe.metrics.udp.source_limited.inc();
                        fe.metrics.dropped.inc();
                        return None;
                    }
                }
                None
            }
        }
    };
    let Some(session) = open_session(fe, peer, stop) else {
        if let Some(old) = replaced {
            // No usable backend: the old one may still answer, which beats dropping.
            old.requests.fetch_add(1, Ordering::Relaxed);
            sessions.touch(&old);
            send(fe, &old, data);
            return None;
        }
        fe.metrics.dropped.inc();
        fe.metrics.no_backend.inc();
        return None;
    };
    let gone = sessions
        .lock()
        .insert(peer, session.clone(), sessions.now());
    if let Some(old) = gone {
        old.cancel.cancel();
        fe.metrics.udp.repicks.inc();
        tracing::debug!(frontend = %fe.cfg.name, client = %peer, from = %old.backend.addr, to = %session.backend.addr, "udp session moved to another backend");
    }
    sessions.touch(&session);
    send(fe, &session, data);
    Some(replies(
        fe.clone(),
        listener.clone(),
        sessions.clone(),
        session,
        peer,
    ))
}

/// A session to the first usable backend that takes a socket; None when none does.
fn open_session(fe: &Frontend, peer: SocketAddr, stop: &CancellationToken) -> Option<Arc<Session>> {
    for b in fe.pool.candidates(client_key(peer.ip())) {
        match open(b.addr) {
            Ok(sock) => {
                return Some(Arc::new(Session {
                    sock,
                    backend: b.clone(),
                    last: AtomicU64::new(0),
                    requests: AtomicU64::new(1),
                    replies: AtomicU64::new(0),
                    cancel: stop.child_token(),
                }));
            }
            Err(e) if crate::frontend::local_exhaustion(&e) => {
                tracing::warn!(frontend = %fe.cfg.name, error = %e, "cannot open a udp session socket; dropping datagram");
                return None;
            }
            Err(e) => {
                tracing::debug!(backend = %b.addr, error = %e, "udp session socket failed");
                fe.pool.connect_failed(b);
            }
        }
    }
    None
}

fn open(backend: SocketAddr) -> io::Result<UdpSocket> {
    let any = match backend.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let s = std::net::UdpSocket::bind(SocketAddr::new(any, 0))?;
    s.connect(backend)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

fn send(fe: &Frontend, s: &Session, data: &[u8]) {
    // Straight to the (non-blocking) socket: tokio's `try_send` refuses until it has seen the
    // socket writable, and a datagram either fits in the socket buffer now or is dropped anyway.
    match socket2::SockRef::from(&s.sock).send(data) {
        Ok(n) => {
            fe.metrics.bytes_in.inc_by(n as u64);
            if let Some(m) = &s.backend.metrics {
                m.bytes_out.inc_by(n as u64);
            }
        }
        Err(e) => {
            // UDP may drop; a full socket buffer or an ICMP error from the backend drops this one.
            fe.metrics.dropped.inc();
            tracing::debug!(backend = %s.backend.addr, error = %e, "udp send failed");
        }
    }
}

async fn replies(
    fe: Arc<Frontend>,
    listener: Arc<UdpSocket>,
    sessions: Arc<Sessions>,
    s: Arc<Session>,
    peer: SocketAddr,
) {
    let _open = OpenGuard::new(&fe.metrics);
    let _counted = s.backend.connection_started();
    let idle = fe.cfg.timeouts.udp_session;
    let close_after = fe.cfg.udp.close_after_replies.map(u64::from);
    let last = || sessions.epoch + Duration::from_millis(s.last.load(Ordering::Relaxed));
    loop {
        tokio::select! {
            r = s.sock.readable() => if r.is_err() { break },
            _ = tokio::time::sleep_until(last() + idle) => {
                if Instant::now() >= last() + idle { break }
                continue;
            }
            // Evicted or replaced: the table no longer holds it.
            _ = s.cancel.cancelled() => return,
        }
        let r = DGRAM.with(|buf| {
            let mut buf = buf.borrow_mut();
            let n = s.sock.try_recv(&mut buf[..])?;
            socket2::SockRef::from(&*listener).send_to(&buf[..n], &peer.into())
        });
        match r {
            Ok(n) => {
                sessions.touch(&s);
                if let Some(m) = &s.backend.metrics {
                    m.bytes_in.inc_by(n as u64);
                }
                fe.metrics.bytes_out.inc_by(n as u64);
                let replies = s.replies.fetch_add(1, Ordering::Relaxed) + 1;
                if close_after.is_some_and(|n| replies >= n) {
                    // Under the lock: a request forwarded meanwhile keeps the session open.
                    let mut table = sessions.lock();
                    if replies >= s.requests.load(Ordering::Relaxed) {
                        table.remove_if(&peer, |cur| Arc::ptr_eq(cur, &s));
                        fe.metrics.udp.closed_after_replies.inc();
                        return;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                // ICMP port unreachable from the backend: it counts like a failed connect.
                fe.pool.connect_failed(&s.backend);
            }
            Err(e) => tracing::debug!(backend = %s.backend.addr, error = %e, "udp reply failed"),
        }
    }
    sessions.lock().remove_if(&peer, |cur| Arc::ptr_eq(cur, &s));
}
