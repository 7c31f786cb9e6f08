//! Managed-kubelet mode (production): the agent does the TLS bootstrap, then hands kubelet its
//! kubeconfig, a KubeletConfiguration with the pool's `registerWithTaints`, and the `--node-labels`
//! flag (kubelet's config file cannot carry node labels), starts the service and waits for kubelet
//! to register the Node.
//!
//! kubelet does not rotate this certificate (`rotateCertificates: false`): the agent renews it and
//! rewrites the kubelet kubeconfig, the same way kubeadm hands kubelet a kubeconfig.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};

use crate::config::{Config, Taint};
use crate::join::credentials::{self, NodeCredentials};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("starting the kubelet service {service} failed: {reason}")]
    Service { service: String, reason: String },
    #[error(
        "kubelet did not register node {node} within {waited:?}: check `journalctl -u {service}`"
    )]
    NotRegistered {
        node: String,
        service: String,
        waited: Duration,
    },
}

fn file_err(path: &Path, reason: impl ToString) -> KubeletError {
    KubeletError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The KubeletConfiguration: the base file's fields, with the agent's fields on top.
pub fn kubelet_config(base: Option<&str>, taints: &[Taint]) -> Result<String, String> {
    let mut doc: serde_yaml::Mapping = match base {
        Some(text) => serde_yaml::from_str(text).map_err(|e| format!("base_config: {e}"))?,
        None => serde_yaml::Mapping::new(),
    };
    let mut set = |k: &str, v: serde_yaml::Value| {
        doc.insert(serde_yaml::Value::String(k.to_string()), v);
    };
    set("apiVersion", "kubelet.config.k8s.io/v1beta1".into());
    set("kind", "KubeletConfiguration".into());
    set("registerNode", true.into());
    set("rotateCertificates", false.into());
    let taints: Vec<serde_yaml::Value> = taints
        .iter()
        .map(|t| {
            let mut m = serde_yaml::Mapping::new();
            m.insert("key".into(), t.key.clone().into());
            if !t.value.is_empty() {
                m.insert("value".into(), t.value.clone().into());
            }
            m.insert("effect".into(), t.effect.as_str().into());
            serde_yaml::Value::Mapping(m)
        })
        .collect();
    set("registerWithTaints", serde_yaml::Value::Sequence(taints));
    serde_yaml::to_string(&doc).map_err(|e| e.to_string())
}

/// The environment file the kubelet unit reads (`EnvironmentFile=`, like kubeadm-flags.env).
pub fn flags_env(
    node: &str,
    labels: &BTreeMap<String, String>,
    config_path: &Path,
    kubeconfig: &Path,
) -> String {
    let labels = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut args = vec![
        format!("--hostname-override={node}"),
        format!("--config={}", config_path.display()),
        format!("--kubeconfig={}", kubeconfig.display()),
    ];
    if !labels.is_empty() {
        args.push(format!("--node-labels={labels}"));
    }
    format!("KEEL_KUBELET_ARGS=\"{}\"\n", args.join(" "))
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), KubeletError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    }
    crate::files::write_atomic(path, text.as_bytes(), secret).map_err(|e| file_err(path, e))
}

/// Writes kubelet's kubeconfig (the node identity), its config and flags.
pub fn write_files(cfg: &Config, creds: &NodeCredentials) -> Result<(), KubeletError> {
    let k = &cfg.kubelet;
    write_kubeconfig(cfg, creds)?;
    let base = match &k.base_config {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| file_err(p, e))?),
        None => None,
    };
    let text =
        kubelet_config(base.as_deref(), &cfg.node.taints).map_err(|e| file_err(&k.config, e))?;
    write(&k.config, &text, false)?;
    write(
        &k.flags_file,
        &flags_env(&cfg.node.name, &cfg.node.labels, &k.config, &k.kubeconfig),
        false,
    )?;
    tracing::info!(node = %cfg.node.name, kubeconfig = %k.kubeconfig.display(), config = %k.config.display(), "kubelet files written");
    Ok(())
}

/// Rewrites kubelet's kubeconfig (also after every certificate renewal).
pub fn write_kubeconfig(cfg: &Config, creds: &NodeCredentials) -> Result<(), KubeletError> {
    let text = credentials::render_kubeconfig(
        &creds.server,
        &creds.ca_pem,
        &crate::join::csr::common_name(&cfg.node.name),
        &creds.cert_pem,
        &creds.key_pem,
    );
    write(&cfg.kubelet.kubeconfig, &text, true)
}

/// Enables and (re)starts the kubelet service.
pub fn start_service(service: &str) -> Result<(), KubeletError> {
    let err = |reason: String| KubeletError::Service {
        service: service.to_string(),
        reason,
    };
    #[cfg(unix)]
    let steps: Vec<Vec<&str>> = vec![
        vec!["systemctl", "daemon-reload"],
        vec!["systemctl", "enable", service],
        vec!["systemctl", "restart", service],
    ];
    #[cfg(windows)]
    let steps: Vec<Vec<&str>> = vec![vec!["sc.exe", "start", service]];
    for argv in steps {
        let out = std::process::Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .map_err(|e| err(format!("{}: {e}", argv.join(" "))))?;
        if !out.status.success() {
            return Err(err(format!(
                "{} exited with {}: {}",
                argv.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    tracing::info!(service, "kubelet service started");
    Ok(())
}

/// Polls (with backoff) until kubelet has registered the Node.
pub async fn wait_for_node(
    client: &Client,
    cfg: &Config,
    metrics: &Metrics,
) -> Result<Node, KubeletError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + cfg.kubelet.register_timeout;
    let mut backoff =
        keel_common::Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    loop {
        match crate::apiclient::observe(metrics, "get", "nodes", nodes.get_opt(&cfg.node.name))
            .await
        {
            Ok(Some(n)) => {
                tracing::info!(node = %cfg.node.name, "kubelet registered the node");
                return Ok(n);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(node = %cfg.node.name, error = %e, "waiting for kubelet to register the node")
            }
        }
        let delay = backoff.next_delay();
        if tokio::time::Instant::now() + delay > deadline {
            return Err(KubeletError::NotRegistered {
                node: cfg.node.name.clone(),
                service: cfg.kubelet.service.clone(),
                waited: cfg.kubelet.register_timeout,
            });
        }
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Effect;

    #[test]
    fn kubelet_config_keeps_base_fields_and_sets_taints() {
        let taints = [Taint {
            key: "os".into(),
            value: "windows".into(),
            effect: Effect::NoSchedule,
        }];
        let text = kubelet_config(
            Some("cgroupDriver: systemd\nrotateCertificates: true\n"),
            &taints,
        )
        .unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(v["cgroupDriver"], "systemd");
        assert_eq!(v["rotateCertificates"], false);
        assert_eq!(v["kind"], "KubeletConfiguration");
        assert_eq!(v["registerWithTaints"][0]["key"], "os");
        assert_eq!(v["registerWithTaints"][0]["effect"], "NoSchedule");
        assert!(kubelet_config(Some("- not a mapping"), &taints).is_err());
    }

    #[test]
    fn flags_carry_node_labels() {
        let labels = BTreeMap::from([("keel.io/pool".to_string(), "gpu".to_string())]);
        let env = flags_env("w1", &labels, Path::new("/c.yaml"), Path::new("/k.conf"));
        assert_eq!(
            env,
            "KEEL_KUBELET_ARGS=\"--hostname-override=w1 --config=/c.yaml --kubeconfig=/k.conf --node-labels=keel.io/pool=gpu\"\n"
        );
    }
}
