//! The taint policy's API writer: read the Node, merge, replace, with optimistic concurrency.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Node;

use super::{merge, owned_from, DesiredTaint, OWNED_ANNOTATION};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("forbidden to change taints of node {node} as this identity (NodeRestriction); configure health.privileged_kubeconfig: {message}")]
    Forbidden { node: String, message: String },
    #[error("taint update of node {node} failed: {source}")]
    Api {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("taint update of node {node} kept conflicting")]
    Conflict { node: String },
}

/// Reads the Node, merges, and replaces it (optimistic concurrency: a 409 re-reads and retries).
/// Returns the taints now owned.
pub async fn apply(
    client: &kube::Client,
    node: &str,
    desired: &[DesiredTaint],
) -> Result<BTreeSet<String>, ApplyError> {
    let api: kube::Api<Node> = kube::Api::all(client.clone());
    for _ in 0..5 {
        let mut n = api.get(node).await.map_err(|source| ApplyError::Api {
            node: node.into(),
            source,
        })?;
        let owned = owned_from(&n);
        let current = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let m = merge(&current, &owned, desired);
        if !m.changed {
            return Ok(m.owned);
        }
        let spec = n.spec.get_or_insert_with(Default::default);
        spec.taints = (!m.taints.is_empty()).then_some(m.taints);
        let ann = n.metadata.annotations.get_or_insert_with(Default::default);
        if m.owned.is_empty() {
            ann.remove(OWNED_ANNOTATION);
        } else {
            ann.insert(
                OWNED_ANNOTATION.into(),
                m.owned.iter().cloned().collect::<Vec<_>>().join(","),
            );
        }
        match api.replace(node, &Default::default(), &n).await {
            Ok(_) => return Ok(m.owned),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(kube::Error::Api(s)) if s.code == 403 => {
                return Err(ApplyError::Forbidden {
                    node: node.into(),
                    message: s.message.clone(),
                })
            }
            Err(source) => {
                return Err(ApplyError::Api {
                    node: node.into(),
                    source,
                })
            }
        }
    }
    Err(ApplyError::Conflict { node: node.into() })
}
