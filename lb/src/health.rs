//! Active health checks: TCP connect, or an HTTP(S) GET of a path expecting a status. One task per
//! distinct target and check settings, shared by every pool whose backends it speaks for
//! ([`Checks`]); pool versions subscribe and unsubscribe. Results feed each backend's rise/fall
//! counter; transitions flip its atomic health flag, which the data plane reads.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::config::{AdminState, CheckKind, HealthCheck};
use crate::pool::Pool;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("tls: {0}")]
    Tls(std::io::Error),
    #[error("http: {0}")]
    Io(std::io::Error),
    #[error("http: unexpected status {got} (expected {want})")]
    Status { got: u16, want: u16 },
    #[error("http: malformed response {0:?}")]
    Malformed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("https check needs ca_file (the CA that signed the backends' certificates)")]
    NoCa,
    #[error("reading {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("{path}: no usable certificate: {err}")]
    Cert { path: String, err: String },
}

impl CheckError {
    /// The check could not run for a reason on this host (no fd, no memory, no buffer), not because
    /// of the backend.
    pub fn is_local(&self) -> bool {
        let io = match self {
            CheckError::Connect(e) | CheckError::Tls(e) | CheckError::Io(e) => e,
            _ => return false,
        };
        crate::frontend::local_exhaustion(io)
    }
}

/// Builds the TLS client for https checks: trust exactly the configured CA.
pub fn tls_connector(cfg: &HealthCheck) -> Result<TlsConnector, TlsSetupError> {
    let path = cfg.ca_file.as_ref().ok_or(TlsSetupError::NoCa)?;
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|err| TlsSetupError::Read {
        path: shown.clone(),
        err,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    let mut any = false;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| TlsSetupError::Cert {
            path: shown.clone(),
            err: e.to_string(),
        })?;
        roots.add(cert).map_err(|e| TlsSetupError::Cert {
            path: shown.clone(),
            err: e.to_string(),
        })?;
        any = true;
    }
    if !any {
        return Err(TlsSetupError::Cert {
            path: shown,
            err: "no PEM certificate found".into(),
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Cert {
            path: shown,
            err: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Every distinct check (target address plus check settings) runs once, however many pools'
/// backends it speaks for: with Services, every port of every Service on a node shares kube-proxy's
/// healthz, so checks grow with nodes, not with Services x nodes. Each result is fed to every
/// subscribed backend, which keeps its own rise/fall (passive connect failures count there too).
#[derive(Clone, Default)]
pub struct Checks {
    inner: Arc<Mutex<Hub>>,
}

#[derive(Default)]
struct Hub {
    targets: HashMap<Key, Arc<Target>>,
    next_id: u64,
}

type Key = (SocketAddr, HealthCheck);

struct Target {
    key: Key,
    /// Subscription id -> the backends it checks here.
    subs: Mutex<HashMap<u64, Vec<Weak<Backend>>>>,
    stop: CancellationToken,
}

/// A pool version's checks; dropping it unsubscribes its backends (a target nobody needs stops).
pub struct Subscription {
    hub: Weak<Mutex<Hub>>,
    id: u64,
    targets: Vec<Arc<Target>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Checks {
    /// Subscribes `pool`'s checked backends (not disabled ones) to their targets.
    pub fn subscribe(&self, pool: &Arc<Pool>) -> Subscription {
        let cfg = &pool.cfg.health;
        let mut hub = locked(&self.inner);
        hub.next_id += 1;
        let id = hub.next_id;
        let mut per_target: HashMap<SocketAddr, Vec<Weak<Backend>>> = HashMap::new();
        for b in &pool.backends {
            if b.state() == AdminState::Disabled {
                continue;
            }
            let addr = SocketAddr::new(b.addr.ip(), cfg.port.unwrap_or(b.addr.port()));
            per_target.entry(addr).or_default().push(Arc::downgrade(b));
        }
        let mut targets = Vec::with_capacity(per_target.len());
        for (addr, backends) in per_target {
            let key = (addr, cfg.clone());
            let t = match hub.targets.get(&key) {
                Some(t) => t.clone(),
                None => {
                    let t = Arc::new(Target {
                        key: key.clone(),
                        subs: Mutex::new(HashMap::new()),
                        stop: CancellationToken::new(),
                    });
                    spawn_target(t.clone(), pool.name());
                    hub.targets.insert(key, t.clone());
                    t
                }
            };
            locked(&t.subs).insert(id, backends);
            targets.push(t);
        }
        Subscription {
            hub: Arc::downgrade(&self.inner),
            id,
            targets,
        }
    }

    /// Distinct checks running (the admin API and tests read it).
    pub fn running(&self) -> usize {
        locked(&self.inner).targets.len()
    }

    /// Stops every check (shutdown).
    pub fn stop_all(&self) {
        for (_, t) in locked(&self.inner).targets.drain() {
            t.stop.cancel();
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        let mut hub = locked(&hub);
        for t in self.targets.drain(..) {
            let mut subs = locked(&t.subs);
            subs.remove(&self.id);
            if subs.is_empty() {
                t.stop.cancel();
                if hub.targets.get(&t.key).is_some_and(|x| Arc::ptr_eq(x, &t)) {
                    hub.targets.remove(&t.key);
                }
            }
        }
    }
}

fn spawn_target(t: Arc<Target>, first_pool: &str) {
    let cfg = t.key.1.clone();
    let tls = if cfg.kind == CheckKind::Https {
        match tls_connector(&cfg) {
            Ok(t) => Some(t),
            Err(e) => {
                // Validation checked the file exists; it may have changed since. Checks then fail,
                // which is the honest outcome: we cannot verify the backends.
                tracing::error!(pool = %first_pool, error = %e, "https health checks cannot verify backends");
                None
            }
        }
    } else {
        None
    };
    tokio::spawn(async move {
        let stop = t.stop.clone();
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = run(t, cfg, tls) => {}
        }
    });
}

async fn run(t: Arc<Target>, cfg: HealthCheck, tls: Option<TlsConnector>) {
    let addr = t.key.0;
    // Spread the first checks over one interval so they do not fire in lockstep.
    let jitter = rand::random_range(0..=cfg.interval.as_millis().min(u64::MAX as u128) as u64 / 4);
    tokio::time::sleep(Duration::from_millis(jitter)).await;
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: std::collections::HashSet<usize> = std::collections::HashSet::new();
    loop {
        tick.tick().await;
        let started = Instant::now();
        let result =
            match tokio::time::timeout(cfg.timeout, check_once(&cfg, addr, tls.as_ref())).await {
                Ok(r) => r,
                Err(_) => Err(CheckError::Timeout(cfg.timeout)),
            };
        let took = started.elapsed().as_secs_f64();
        if let Err(e) = &result {
            // Out of fds or memory here says nothing about the backend: never mark it down for it
            // (with VRRP tracking that would give the VIP away).
            if e.is_local() {
                tracing::warn!(target = %addr, error = %e, "health check could not run (local resources); result ignored");
                continue;
            }
            tracing::debug!(target = %addr, error = %e, "health check failed");
        }
        // Collected first: a backend's rise/fall may wake the control loop, which may subscribe.
        let backends: Vec<Arc<Backend>> = {
            let subs = locked(&t.subs);
            subs.values().flatten().filter_map(Weak::upgrade).collect()
        };
        seen.clear();
        let (mut ups, mut downs) = (0usize, 0usize);
        let why = result.as_ref().err().map(|e| e.to_string());
        let outcome = match &why {
            None => crate::backend::Seen::CheckPassed,
            Some(w) => crate::backend::Seen::CheckFailed(w),
        };
        for b in &backends {
            // A backend in two pool versions (mid-reload) counts one result once.
            if !seen.insert(Arc::as_ptr(b) as usize) {
                continue;
            }
            if let Some(m) = &b.metrics {
                m.check_seconds.observe(took);
                if result.is_err() {
                    m.check_failures.inc();
                }
            }
            match b.record(outcome, cfg.rise, cfg.fall) {
                Some(true) => ups += 1,
                Some(false) => downs += 1,
                None => {}
            }
        }
        if ups + downs == 0 {
            continue;
        }
        // One line per target, not per backend: a node behind every Service is one event.
        let first = backends.first().map(|b| b.pool.as_str()).unwrap_or("");
        let shown = |n: usize| {
            if n == 1 {
                format!("pool {first}")
            } else {
                format!("{n} backends (pool {first}, ...)")
            }
        };
        if ups > 0 {
            tracing::info!(target = %addr, backends = %shown(ups), "backend up: health checks pass");
        }
        if downs > 0 {
            tracing::warn!(
                target = %addr,
                backends = %shown(downs),
                error = %result.as_ref().err().map(|e| e.to_string()).unwrap_or_default(),
                "backend down: health checks fail"
            );
        }
    }
}

/// One check, without the timeout (the caller applies it).
pub async fn check_once(
    cfg: &HealthCheck,
    addr: SocketAddr,
    tls: Option<&TlsConnector>,
) -> Result<(), CheckError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(CheckError::Connect)?;
    match cfg.kind {
        CheckKind::Tcp => Ok(()),
        CheckKind::Http => http_get(tcp, cfg, addr).await,
        CheckKind::Https => {
            let tls = tls.ok_or_else(|| {
                CheckError::Tls(std::io::Error::other(
                    "no TLS configuration (see earlier error)",
                ))
            })?;
            let name = match &cfg.server_name {
                Some(n) => rustls::pki_types::ServerName::try_from(n.clone())
                    .map_err(|e| CheckError::Tls(std::io::Error::other(e)))?,
                None => rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
            };
            let stream = tls.connect(name, tcp).await.map_err(CheckError::Tls)?;
            http_get(stream, cfg, addr).await
        }
    }
}

async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    cfg: &HealthCheck,
    addr: SocketAddr,
) -> Result<(), CheckError> {
    let host = cfg.server_name.clone().unwrap_or_else(|| addr.to_string());
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: keel-lb\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        cfg.path
    );
    s.write_all(req.as_bytes()).await.map_err(CheckError::Io)?;
    // The status line is all we need; read until its end (bounded).
    let mut buf = [0u8; 512];
    let mut n = 0;
    while n < buf.len() {
        let r = s.read(&mut buf[n..]).await.map_err(CheckError::Io)?;
        if r == 0 {
            break;
        }
        n += r;
        if buf[..n].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    let line = line.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let status = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => code.parse::<u16>().ok(),
        _ => None,
    }
    .ok_or_else(|| CheckError::Malformed(line.chars().take(80).collect()))?;
    if status == cfg.expect_status {
        Ok(())
    } else {
        Err(CheckError::Status {
            got: status,
            want: cfg.expect_status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use tokio::net::TcpListener;

    /// An HTTP server that answers 200 on `/readyz` and 500 elsewhere; with TLS when given a config.
    async fn server(tls: Option<Arc<rustls::ServerConfig>>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(cfg) => {
                            if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(s).await {
                                answer(s).await;
                            }
                        }
                        None => answer(s).await,
                    }
                });
            }
        });
        addr
    }

    async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap_or(0);
        let req = String::from_utf8_lossy(&buf[..n]);
        let status = if req.starts_with("GET /readyz ") {
            "200 OK"
        } else {
            "500 Internal Server Error"
        };
        let _ = s
            .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
            .await;
        let _ = s.shutdown().await;
    }

    fn cfg(kind: CheckKind, path: &str) -> HealthCheck {
        HealthCheck {
            kind,
            path: path.into(),
            ..HealthCheck::default()
        }
    }

    /// A CA and a server certificate for `kubernetes` signed by it; returns the CA file and the
    /// server's TLS config.
    fn pki(dir: &std::path::Path) -> (PathBuf, Arc<rustls::ServerConfig>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["kubernetes".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let ca_file = dir.join("ca.crt");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        (ca_file, Arc::new(server))
    }

    #[tokio::test]
    async fn http_check_expects_the_configured_status() {
        let addr = server(None).await;
        check_once(&cfg(CheckKind::Http, "/readyz"), addr, None)
            .await
            .unwrap();
        let e = check_once(&cfg(CheckKind::Http, "/livez"), addr, None)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                CheckError::Status {
                    got: 500,
                    want: 200
                }
            ),
            "{e}"
        );
        let mut c = cfg(CheckKind::Http, "/livez");
        c.expect_status = 500;
        check_once(&c, addr, None).await.unwrap();
    }

    #[test]
    fn running_out_of_fds_is_not_the_backends_fault() {
        let e = CheckError::Connect(std::io::Error::from_raw_os_error(libc::EMFILE));
        assert!(e.is_local());
        let e = CheckError::Connect(std::io::Error::from_raw_os_error(libc::ECONNREFUSED));
        assert!(!e.is_local());
        assert!(!CheckError::Timeout(Duration::from_secs(1)).is_local());
    }

    #[tokio::test]
    async fn tcp_check_fails_on_a_closed_port() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        check_once(&cfg(CheckKind::Tcp, "/"), addr, None)
            .await
            .unwrap();
        drop(l);
        assert!(matches!(
            check_once(&cfg(CheckKind::Tcp, "/"), addr, None).await,
            Err(CheckError::Connect(_))
        ));
    }

    #[tokio::test]
    async fn https_check_verifies_the_ca_and_the_server_name() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_file, server_cfg) = pki(dir.path());
        let addr = server(Some(server_cfg)).await;
        let mut c = cfg(CheckKind::Https, "/readyz");
        c.ca_file = Some(ca_file);
        c.server_name = Some("kubernetes".into());
        let tls = tls_connector(&c).unwrap();
        check_once(&c, addr, Some(&tls)).await.unwrap();

        // The certificate does not name the IP address: without server_name verification fails.
        c.server_name = None;
        assert!(matches!(
            check_once(&c, addr, Some(&tls)).await,
            Err(CheckError::Tls(_))
        ));

        // Another CA: refused.
        let other = tempfile::tempdir().unwrap();
        let (other_ca, _) = pki(other.path());
        let mut c2 = cfg(CheckKind::Https, "/readyz");
        c2.ca_file = Some(other_ca);
        c2.server_name = Some("kubernetes".into());
        let tls2 = tls_connector(&c2).unwrap();
        assert!(matches!(
            check_once(&c2, addr, Some(&tls2)).await,
            Err(CheckError::Tls(_))
        ));
    }

    /// A healthz that counts requests and answers 200 or 503 as told.
    async fn counting_server(
        ok: Arc<std::sync::atomic::AtomicBool>,
        hits: Arc<std::sync::atomic::AtomicUsize>,
    ) -> SocketAddr {
        use std::sync::atomic::Ordering;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                hits.fetch_add(1, Ordering::SeqCst);
                let status = if ok.load(Ordering::SeqCst) {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 512];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        addr
    }

    fn pool_on(name: &str, backend_port: u16, check: &HealthCheck) -> Arc<Pool> {
        let cfg = crate::config::Pool {
            name: name.into(),
            balance: crate::config::Balance::RoundRobin,
            health: check.clone(),
            backends: vec![crate::config::Backend {
                addr: SocketAddr::from(([127, 0, 0, 1], backend_port)),
                weight: 1,
                state: AdminState::Active,
            }],
            shutdown_sessions_on_down: None,
        };
        let m = crate::metrics::Metrics::new();
        Arc::new(Pool::build(
            &cfg,
            None,
            &m,
            false,
            &Arc::new(tokio::sync::Notify::new()),
            &Arc::default(),
        ))
    }

    /// Fifty pools whose backends share one check target (kube-proxy's healthz on a node) cost one
    /// check per interval, and every backend follows its result; the check stops with its last user.
    #[tokio::test]
    async fn pools_sharing_a_target_share_one_check() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let ok = Arc::new(AtomicBool::new(true));
        let hits = Arc::new(AtomicUsize::new(0));
        let hz = counting_server(ok.clone(), hits.clone()).await;
        let mut check = cfg(CheckKind::Http, "/healthz");
        check.port = Some(hz.port());
        check.interval = Duration::from_millis(50);
        check.timeout = Duration::from_millis(500);
        check.rise = 1;
        check.fall = 1;
        let checks = Checks::default();
        let pools: Vec<Arc<Pool>> = (0..50)
            .map(|i| pool_on(&format!("ns/svc-{i}:80/TCP"), 30000 + i, &check))
            .collect();
        let subs: Vec<Subscription> = pools.iter().map(|p| checks.subscribe(p)).collect();
        assert_eq!(checks.running(), 1);

        tokio::time::sleep(Duration::from_millis(600)).await;
        let n = hits.load(Ordering::SeqCst);
        assert!(
            (3..=20).contains(&n),
            "{n} checks in 600 ms at a 50 ms interval: not shared"
        );

        ok.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while pools.iter().any(|p| p.backends[0].healthy()) {
            assert!(
                Instant::now() < deadline,
                "backends did not follow the shared check"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        drop(subs);
        assert_eq!(checks.running(), 0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = hits.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            hits.load(Ordering::SeqCst),
            after,
            "checks went on with no pool left"
        );
    }

    /// A new pool version subscribes before the old one lets go: the target keeps running.
    #[tokio::test]
    async fn a_new_pool_version_keeps_the_shared_check() {
        let ok = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let hz = counting_server(ok, Arc::default()).await;
        let mut check = cfg(CheckKind::Tcp, "/");
        check.port = Some(hz.port());
        let checks = Checks::default();
        let p1 = pool_on("a", 1, &check);
        let s1 = checks.subscribe(&p1);
        let s2 = checks.subscribe(&pool_on("a", 1, &check));
        drop(s1);
        assert_eq!(checks.running(), 1);
        let mut other = check.clone();
        other.path = "/other".into();
        let s3 = checks.subscribe(&pool_on("b", 1, &other));
        assert_eq!(
            checks.running(),
            2,
            "different settings are a different check"
        );
        drop((s2, s3));
        assert_eq!(checks.running(), 0);
    }
}
