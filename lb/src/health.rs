//! Active health checks: TCP connect, or an HTTP(S) GET of a path expecting a status. One task per
//! checked backend, started per pool version and cancelled when the pool changes. Results feed the
//! backend's rise/fall counter; transitions flip its atomic health flag, which the data plane reads.

use std::net::SocketAddr;
use std::sync::Arc;
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

/// Starts one check task per backend in rotation (or draining: its health still matters to its
/// established clients' metrics); they stop when `cancel` fires.
pub fn spawn_checks(pool: &Arc<Pool>, cancel: &CancellationToken) {
    let cfg = pool.cfg.health.clone();
    let tls = if cfg.kind == CheckKind::Https {
        match tls_connector(&cfg) {
            Ok(t) => Some(t),
            Err(e) => {
                // Validation checked the file exists; it may have changed since. Checks then fail,
                // which is the honest outcome: we cannot verify the backends.
                tracing::error!(pool = %pool.name(), error = %e, "https health checks cannot verify backends");
                None
            }
        }
    } else {
        None
    };
    for b in &pool.backends {
        if b.state() == AdminState::Disabled {
            continue;
        }
        let b = b.clone();
        let cfg = cfg.clone();
        let tls = tls.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = run(b, cfg, tls) => {}
            }
        });
    }
}

async fn run(b: Arc<Backend>, cfg: HealthCheck, tls: Option<TlsConnector>) {
    // Spread the first checks of a pool over one interval so they do not fire in lockstep.
    let jitter = rand::random_range(0..=cfg.interval.as_millis().min(u64::MAX as u128) as u64 / 4);
    tokio::time::sleep(Duration::from_millis(jitter)).await;
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let addr = SocketAddr::new(b.addr.ip(), cfg.port.unwrap_or(b.addr.port()));
        let started = Instant::now();
        let result =
            match tokio::time::timeout(cfg.timeout, check_once(&cfg, addr, tls.as_ref())).await {
                Ok(r) => r,
                Err(_) => Err(CheckError::Timeout(cfg.timeout)),
            };
        b.metrics
            .check_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            b.metrics.check_failures.inc();
            tracing::debug!(pool = %b.pool, backend = %b.addr, error = %e, "health check failed");
        }
        match b.record(result.is_ok(), cfg.rise, cfg.fall) {
            Some(true) => {
                tracing::info!(pool = %b.pool, backend = %b.addr, "backend up: health checks pass")
            }
            Some(false) => tracing::warn!(
                pool = %b.pool,
                backend = %b.addr,
                error = %result.as_ref().err().map(|e| e.to_string()).unwrap_or_default(),
                "backend down: health checks fail"
            ),
            None => {}
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
}
