//! The last applied cluster rules on disk (JSON, written atomically), read at start so keel-lb serves
//! Services before, or without, reaching the API server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::rules::ClusterRules;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("{path}: not a keel-lb state file: {err}")]
    Parse {
        path: String,
        err: serde_json::Error,
    },
}

#[derive(serde::Deserialize)]
struct File {
    version: u32,
    rules: ClusterRules,
}

#[derive(serde::Serialize)]
struct FileRef<'a> {
    version: u32,
    rules: &'a ClusterRules,
}

const VERSION: u32 = 1;

/// None when there is no file yet.
pub fn load(path: &Path) -> Result<Option<ClusterRules>, StateError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(StateError::Io {
                path: path.display().to_string(),
                err,
            })
        }
    };
    let f: File = serde_json::from_slice(&text).map_err(|err| StateError::Parse {
        path: path.display().to_string(),
        err,
    })?;
    Ok((f.version == VERSION).then_some(f.rules))
}

/// Write to a temporary file beside it, fsync, rename: a crash leaves the old or the new file.
pub fn save(path: &Path, rules: &ClusterRules) -> Result<(), StateError> {
    use std::io::Write;
    let io = |err| StateError::Io {
        path: path.display().to_string(),
        err,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let body = serde_json::to_vec(&FileRef {
        version: VERSION,
        rules,
    })
    .map_err(|e| io(std::io::Error::other(e)))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&body).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Keeps the newest rules on disk off the control loop. Writes are coalesced: a burst of changes
/// costs one write per `COALESCE`, not one per change (each write is the whole set).
pub struct Writer {
    tx: watch::Sender<Option<Arc<ClusterRules>>>,
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

const COALESCE: Duration = Duration::from_millis(500);

impl Writer {
    pub fn spawn(path: PathBuf) -> Writer {
        let (tx, mut rx) = watch::channel::<Option<Arc<ClusterRules>>>(None);
        let p = path.clone();
        let task = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let Some(rules) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let p = p.clone();
                match tokio::task::spawn_blocking(move || save(&p, &rules)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "services: rules not kept on disk"),
                    Err(e) => tracing::error!(error = %e, "services: state writer failed"),
                }
                tokio::time::sleep(COALESCE).await;
            }
        });
        Writer { tx, path, task }
    }

    pub fn save(&self, rules: Arc<ClusterRules>) {
        self.tx.send_replace(Some(rules));
    }

    /// Writes the newest rules now (shutdown: a coalesced write may still be pending).
    pub async fn flush(self) {
        self.task.abort();
        let _ = self.task.await;
        let rules = self.tx.borrow().clone();
        if let Some(rules) = rules {
            let p = self.path;
            match tokio::task::spawn_blocking(move || save(&p, &rules)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "services: rules not kept on disk"),
                Err(e) => tracing::error!(error = %e, "services: state writer failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::rules::{BalanceName, NodeAddrs, Proto, SvcPort, SvcRule};

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/state.json");
        assert!(load(&p).unwrap().is_none());
        let mut r = ClusterRules::default();
        r.nodes.insert(
            "n1".into(),
            NodeAddrs {
                v4: Some("198.18.1.1".parse().unwrap()),
                v6: None,
            },
        );
        r.services.insert(
            "default/web".into(),
            Arc::new(SvcRule {
                key: "default/web".into(),
                ips: vec![("198.18.100.1".parse().unwrap(), Some("vi".into()))],
                ports: vec![SvcPort {
                    name: "http".into(),
                    protocol: Proto::TCP,
                    port: 80,
                    node_port: 30080,
                }],
                local: None,
                proxy_protocol: false,
                nat: false,
                balance: BalanceName::RoundRobin,
            }),
        );
        save(&p, &r).unwrap();
        assert_eq!(load(&p).unwrap(), Some(r));
        std::fs::write(&p, b"{nope").unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("state.json"));
    }
}
