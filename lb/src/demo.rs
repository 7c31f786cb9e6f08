//! `keel-lb demo`: keel-lb for real on loopback, as any user, in front of three tiny built-in HTTP
//! backends that answer with their name. Backend `c` goes down for 10 s every 30 s, so the health
//! checks can be watched ejecting and restoring it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub fn config_text(port: u16) -> String {
    format!(
        "# keel-lb demo: built in, written to a temporary file by `keel-lb demo`.
admin:
  listen: 127.0.0.1:{admin}
shutdown:
  drain: 2s
frontends:
  - name: web
    listen: 127.0.0.1:{port}
    pool: demo
    max_connections: 1000
pools:
  demo:
    balance: round_robin
    health:
      type: http
      path: /health
      interval: 1s
      timeout: 500ms
      rise: 2
      fall: 2
    backends:
      - address: 127.0.0.1:{a}
      - address: 127.0.0.1:{b}
      - address: 127.0.0.1:{c}
",
        admin = port + 1,
        a = port + 2,
        b = port + 3,
        c = port + 4
    )
}

pub async fn run(port: u16) -> anyhow::Result<()> {
    anyhow::ensure!(port <= 65_530, "--port must leave room for port+4");
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let addr: SocketAddr = ([127, 0, 0, 1], port + 2 + i as u16).into();
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("demo backend {name} on {addr}"))?;
        tokio::spawn(backend(name, listener, *name == "c"));
    }
    let dir = std::env::temp_dir().join(format!("keel-lb-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("lb-demo.yaml");
    std::fs::write(&path, config_text(port))
        .with_context(|| format!("writing {}", path.display()))?;
    let cfg = crate::config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!(
        "
keel-lb demo: a load balancer on 127.0.0.1:{port} in front of three backends (a, b, c).
  send traffic:     for i in $(seq 6); do curl -s 127.0.0.1:{port}/; done
  backend c fails for 10 s every 30 s; watch it leave and rejoin in the logs below, and in
                    curl -s 127.0.0.1:{admin}/metrics | grep -E 'keel_lb_backend_(up|connections_total)'
  reload:           edit {cfg} (e.g. set a backend's `state: drain`), then
                    curl -X POST 127.0.0.1:{admin}/reload
  stop:             Ctrl-C (graceful: stop accepting, drain, exit 0)
",
        admin = port + 1,
        cfg = path.display()
    );
    let r = crate::run(cfg).await;
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// A tiny HTTP/1.1 server that answers every request with its name; `flaps` takes it down (listener
/// closed, connections refused) for 10 s every 30 s.
async fn backend(name: &'static str, listener: TcpListener, flaps: bool) {
    let addr = listener.local_addr().ok();
    let mut listener = Some(listener);
    let mut cycle = tokio::time::interval(Duration::from_secs(30));
    cycle.tick().await;
    loop {
        let Some(l) = listener.as_ref() else {
            tokio::time::sleep(Duration::from_secs(10)).await;
            listener = match addr {
                Some(a) => TcpListener::bind(a).await.ok(),
                None => None,
            };
            if listener.is_some() {
                tracing::info!(backend = name, "demo backend back up");
            }
            continue;
        };
        tokio::select! {
            r = l.accept() => if let Ok((mut s, _)) = r {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        let body = format!("hello from backend {name}\n");
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            },
            _ = cycle.tick(), if flaps => {
                tracing::warn!(backend = name, "demo backend going down for 10s");
                listener = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_common::Source;

    #[test]
    fn built_in_demo_config_is_valid_and_matches_the_shipped_example() {
        let built_in =
            crate::config::load_source(&Source::from_text("demo.yaml", config_text(8080))).unwrap();
        let shipped = Source::read(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/lb-demo.yaml"),
        )
        .unwrap();
        let mut shipped = crate::config::load_source(&shipped).unwrap();
        shipped.path = built_in.path.clone();
        assert_eq!(built_in, shipped);
    }
}
