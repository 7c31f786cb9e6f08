//! One way to serve HTTP/1.1 for every Keel listener (keel-lb's admin API; keel-agent's metrics and
//! orchestrator API): a connection cap taken *before* accept, bounded handshakes and header reads, a
//! lifetime cap per connection, a cap per client address, and backoff on accept errors. So idle or
//! slow clients can hold at most `max_connections` fds, never the process's last ones (health checks
//! and the data plane need them); one host holding idle connections cannot take them all (Prometheus
//! still scrapes while a neighbour floods the port); and an accept error such as EMFILE never spins.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::Backoff;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most; the next client waits in the kernel's backlog.
    pub max_connections: usize,
    /// Open connections from one client address at most; more are closed at once after accept.
    pub max_per_source: usize,
    /// From accept to the end of the (TLS) handshake.
    pub handshake_timeout: Duration,
    /// To read a request's headers (also bounds an idle keep-alive connection's wait).
    pub header_timeout: Duration,
    /// A connection is closed after this long, whatever it does (a scraper reconnects).
    pub max_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            max_per_source: 16,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            max_lifetime: Duration::from_secs(600),
        }
    }
}

/// Serves until `cancel` fires. `handshake` turns an accepted socket into the stream to speak HTTP
/// on plus a per-connection context (e.g. the client certificate's name), or None to refuse it;
/// `handler` answers each request with that context.
pub async fn serve<A, AF, IO, C, H, HF>(
    listener: TcpListener,
    limits: Limits,
    cancel: CancellationToken,
    handshake: A,
    handler: H,
) where
    A: Fn(TcpStream, SocketAddr) -> AF + Send + Sync + 'static,
    AF: Future<Output = Option<(IO, C)>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Clone + Send + Sync + 'static,
    H: Fn(Request<Incoming>, C) -> HF + Clone + Send + Sync + 'static,
    HF: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let sources = PerSource::new(limits.max_per_source);
    let handshake = Arc::new(handshake);
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        // The permit first: at the cap, new clients wait in the backlog, holding no fd of ours.
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => {
                backoff.reset();
                a
            }
            Err(e) => {
                drop(permit);
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?wait, "accept failed");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        // Over its address's share: closed now, so the permit goes back before the next accept.
        let Some(source) = sources.take(peer.ip()) else {
            tracing::debug!(peer = %peer, "http connection refused: too many from this address");
            continue;
        };
        let handshake = handshake.clone();
        let handler = handler.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _source = source;
            let conn = async move {
                let Ok(Some((io, ctx))) =
                    tokio::time::timeout(limits.handshake_timeout, handshake(tcp, peer)).await
                else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    let ctx = ctx.clone();
                    async move { Ok::<_, std::convert::Infallible>(handler(req, ctx).await) }
                });
                let r = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_timeout)
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
                if let Err(e) = r {
                    tracing::debug!(peer = %peer, error = %e, "http connection ended");
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::timeout(limits.max_lifetime, conn) => {}
            }
        });
    }
}

/// Open connections per client ([`crate::source::source_key`]: an IPv4 address or an IPv6 /64).
#[derive(Clone)]
struct PerSource {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One open connection of `ip`; dropping it gives the slot back.
struct SourceSlot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerSource {
    fn new(max: usize) -> PerSource {
        PerSource {
            max: max.max(1),
            open: Arc::default(),
        }
    }

    fn take(&self, ip: IpAddr) -> Option<SourceSlot> {
        let ip = crate::source::source_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            ip,
            open: self.open.clone(),
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// [`serve`] over plain TCP, without a per-connection context.
pub async fn serve_plain<H, HF>(
    listener: TcpListener,
    limits: Limits,
    cancel: CancellationToken,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> HF + Clone + Send + Sync + 'static,
    HF: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    serve(
        listener,
        limits,
        cancel,
        |tcp, _| async move { Some((tcp, ())) },
        move |req, ()| handler(req),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn ok_server(limits: Limits) -> (SocketAddr, CancellationToken) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let cancel = CancellationToken::new();
        tokio::spawn(serve_plain(l, limits, cancel.clone(), |_req| async {
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }));
        (addr, cancel)
    }

    async fn get(addr: SocketAddr) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    /// Idle clients hold at most `max_connections`; the next one is served once one goes.
    #[tokio::test]
    async fn idle_clients_cannot_take_more_than_the_cap() {
        let limits = Limits {
            max_connections: 4,
            header_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let (addr, _cancel) = ok_server(limits).await;
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // The cap is reached: a fifth request waits (it is in the backlog, not served)...
        let waiting = tokio::spawn(get(addr));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished());
        // ...until the header timeout closes the idle ones.
        let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    /// One address holding idle connections gets its share; another address is still served, and the
    /// first is served again once its connections go.
    #[tokio::test]
    async fn one_address_cannot_hold_every_connection() {
        let limits = Limits {
            max_connections: 8,
            max_per_source: 2,
            header_timeout: Duration::from_secs(30),
            ..Limits::default()
        };
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let cancel = CancellationToken::new();
        tokio::spawn(serve_plain(l, limits, cancel.clone(), |_req| async {
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }));
        // 127.0.0.2 floods: 20 idle connections; beyond its two, each is closed at once.
        let flooder = |_| async move {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            s.connect(SocketAddr::from(([127, 0, 0, 1], port))).await
        };
        let mut held = Vec::new();
        let mut closed = 0;
        for i in 0..20 {
            let mut c = flooder(i).await.unwrap();
            let mut b = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(200), c.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
                _ => held.push(c),
            }
        }
        assert_eq!(held.len(), 2, "the flooder holds its share only");
        assert_eq!(closed, 18);
        // 127.0.0.1 is served at once, while the flood holds on.
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            get(SocketAddr::from(([127, 0, 0, 1], port))),
        )
        .await
        .expect("served while another address floods")
        .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        drop(held);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut c = flooder(0).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        cancel.cancel();
    }

    /// The share is per client: an IPv6 host's addresses within its /64 count as one.
    #[test]
    fn an_ipv6_64_shares_one_share() {
        let p = PerSource::new(2);
        let a = |s: &str| -> IpAddr { s.parse().unwrap() };
        let first = p.take(a("2001:db8:0:1::1")).unwrap();
        let _second = p.take(a("2001:db8:0:1::2")).unwrap();
        assert!(p.take(a("2001:db8:0:1:ffff::3")).is_none());
        let other = p.take(a("2001:db8:0:2::1"));
        assert!(other.is_some());
        drop(first);
        assert!(p.take(a("2001:db8:0:1::4")).is_some());
    }

    /// A client that sends nothing is closed after the header timeout.
    #[tokio::test]
    async fn a_silent_client_is_closed_after_the_header_timeout() {
        let limits = Limits {
            header_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let (addr, _cancel) = ok_server(limits).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("not closed within 5 s");
        // Closed (0) or answered with 408 and closed: never left open.
        let n = n.unwrap_or(0);
        assert!(n == 0 || String::from_utf8_lossy(&buf[..n]).contains("408"));
    }
}
