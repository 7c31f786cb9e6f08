//! UDP frontends: per-client sessions. The first datagram from a client picks a backend and opens a
//! connected socket to it; the backend's replies go back to the client from the frontend's address.
//! A session ends after `udp_session` without traffic. The frontend's connection limit bounds the
//! number of sessions; datagrams that would exceed it are dropped (and counted).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::Backend;
use crate::balance::client_key;
use crate::frontend::{Frontend, OpenGuard};

thread_local! {
    static DGRAM: RefCell<Vec<u8>> = RefCell::new(vec![0; 65_536]);
}

struct Session {
    sock: UdpSocket,
    backend: Arc<Backend>,
    /// Milliseconds since `start` of the last datagram in either direction.
    last: AtomicU64,
    start: Instant,
}

impl Session {
    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

type Sessions = Arc<Mutex<HashMap<SocketAddr, Arc<Session>>>>;

pub async fn serve_udp(
    sock: UdpSocket,
    mut version: watch::Receiver<Arc<Frontend>>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let sock = Arc::new(sock);
    let sessions: Sessions = Arc::default();
    let mut fe = version.borrow_and_update().clone();
    loop {
        tokio::select! {
            r = sock.readable() => if let Err(e) = r {
                tracing::warn!(frontend = %fe.cfg.name, error = %e, "udp socket failed");
                return;
            },
            _ = stop.cancelled() => break,
        }
        if version.has_changed().unwrap_or(false) {
            fe = version.borrow_and_update().clone();
        }
        // Drain what is queued; each datagram goes to its client's session.
        for _ in 0..64 {
            let r = DGRAM.with(|buf| {
                let mut buf = buf.borrow_mut();
                let (n, peer) = sock.try_recv_from(&mut buf[..])?;
                Ok::<_, io::Error>(forward(
                    &fe,
                    &sock,
                    &sessions,
                    &stop,
                    &tracker,
                    peer,
                    &buf[..n],
                ))
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

/// Sends one client datagram on; returns the reply task of a new session, if one was created.
fn forward(
    fe: &Arc<Frontend>,
    listener: &Arc<UdpSocket>,
    sessions: &Sessions,
    stop: &CancellationToken,
    _tracker: &TaskTracker,
    peer: SocketAddr,
    data: &[u8],
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    let existing = sessions.lock().ok()?.get(&peer).cloned();
    if let Some(s) = existing {
        s.touch();
        send(fe, &s, data);
        return None;
    }
    let Ok(permit) = fe.limit.clone().try_acquire_owned() else {
        fe.metrics.dropped.inc();
        return None;
    };
    let mut session = None;
    for b in fe.pool.candidates(client_key(peer.ip())) {
        match open(b.addr) {
            Ok(sock) => {
                session = Some(Arc::new(Session {
                    sock,
                    backend: b.clone(),
                    last: AtomicU64::new(0),
                    start: Instant::now(),
                }));
                break;
            }
            Err(e) if crate::frontend::local_exhaustion(&e) => {
                tracing::warn!(frontend = %fe.cfg.name, error = %e, "cannot open a udp session socket; dropping datagram");
                break;
            }
            Err(e) => {
                tracing::debug!(backend = %b.addr, error = %e, "udp session socket failed");
                fe.pool.connect_failed(b);
            }
        }
    }
    let Some(session) = session else {
        fe.metrics.dropped.inc();
        fe.metrics.no_backend.inc();
        return None;
    };
    if let Ok(mut map) = sessions.lock() {
        map.insert(peer, session.clone());
    }
    send(fe, &session, data);
    Some(replies(
        fe.clone(),
        listener.clone(),
        sessions.clone(),
        session,
        peer,
        permit,
        stop.clone(),
    ))
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
    sessions: Sessions,
    s: Arc<Session>,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
    stop: CancellationToken,
) {
    let _open = OpenGuard::new(&fe.metrics);
    let _counted = s.backend.connection_started();
    let idle = fe.cfg.timeouts.udp_session;
    loop {
        let deadline =
            s.start + std::time::Duration::from_millis(s.last.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            r = s.sock.readable() => if r.is_err() { break },
            _ = tokio::time::sleep_until(deadline) => {
                let seen = s.start + std::time::Duration::from_millis(s.last.load(Ordering::Relaxed));
                if Instant::now() >= seen + idle { break }
                continue;
            }
            _ = stop.cancelled() => break,
        }
        let r = DGRAM.with(|buf| {
            let mut buf = buf.borrow_mut();
            let n = s.sock.try_recv(&mut buf[..])?;
            socket2::SockRef::from(&*listener).send_to(&buf[..n], &peer.into())
        });
        match r {
            Ok(n) => {
                s.touch();
                if let Some(m) = &s.backend.metrics {
                    m.bytes_in.inc_by(n as u64);
                }
                fe.metrics.bytes_out.inc_by(n as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                // ICMP port unreachable from the backend: it counts like a failed connect.
                fe.pool.connect_failed(&s.backend);
            }
            Err(e) => tracing::debug!(backend = %s.backend.addr, error = %e, "udp reply failed"),
        }
    }
    if let Ok(mut map) = sessions.lock() {
        if map.get(&peer).is_some_and(|cur| Arc::ptr_eq(cur, &s)) {
            map.remove(&peer);
        }
    }
}
