//! Kubernetes naming rules the agent checks at config time, so that a bad label or taint is refused
//! by `keel-agent check` with the rule's name instead of by the API server at registration.

/// DNS-1123 subdomain (`metadata.name` of a Node, label key prefixes): at most 253 characters of
/// lowercase alphanumerics, `-` and `.`, starting and ending with an alphanumeric.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err(format!(
            "{s:?} must be 1-253 characters (DNS-1123 subdomain)"
        ));
    }
    for part in s.split('.') {
        let ok = !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !part.starts_with('-')
            && !part.ends_with('-');
        if !ok {
            return Err(format!(
                "{s:?} is not a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', \
                 starting and ending with a letter or digit)"
            ));
        }
    }
    Ok(())
}

/// The name part of a qualified name and a label value share this shape (at most 63 characters).
fn name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A label or taint key: `[prefix/]name` (Kubernetes "qualified name").
pub fn qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        dns1123_subdomain(p).map_err(|e| format!("key {key:?}: prefix {e}"))?;
    }
    if !name_part(name) {
        return Err(format!(
            "key {key:?}: name part must be 1-63 characters of letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A label (or taint) value: empty, or 1-63 characters of the name shape.
pub fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || name_part(value) {
        Ok(())
    } else {
        Err(format!(
            "value {value:?} must be at most 63 characters of letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit"
        ))
    }
}

/// Labels the agent sets itself on every Node; a pool may not set them.
pub const AGENT_LABELS: [&str; 3] = [
    "kubernetes.io/hostname",
    "kubernetes.io/os",
    "kubernetes.io/arch",
];

/// Labels in the `kubernetes.io`/`k8s.io` namespaces that a node may set on itself
/// (kubelet's `KubeletLabels()`, allowed by NodeRestriction).
const KUBELET_LABELS: [&str; 11] = [
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
];

fn in_namespace(prefix: &str, ns: &str) -> bool {
    prefix == ns || prefix.ends_with(&format!(".{ns}"))
}

/// Whether a node may set `key` on its own Node, as NodeRestriction and kubelet's `--node-labels`
/// check decide (plugin/pkg/admission/noderestriction, cmd/kubelet/app/options). The error names the
/// rule.
pub fn node_may_set_label(key: &str) -> Result<(), String> {
    let Some((prefix, _)) = key.split_once('/') else {
        return Ok(());
    };
    if in_namespace(prefix, "node-restriction.kubernetes.io") {
        return Err(format!(
            "label {key:?} is refused by NodeRestriction: the node-restriction.kubernetes.io/ \
             prefix is reserved for labels only administrators set"
        ));
    }
    if in_namespace(prefix, "node-role.kubernetes.io") {
        return Err(format!(
            "label {key:?} is refused by NodeRestriction: a node may not set its own role \
             (node-role.kubernetes.io/*); set it with an administrator credential"
        ));
    }
    let in_k8s = in_namespace(prefix, "kubernetes.io") || in_namespace(prefix, "k8s.io");
    if !in_k8s
        || KUBELET_LABELS.contains(&key)
        || in_namespace(prefix, "kubelet.kubernetes.io")
        || in_namespace(prefix, "node.kubernetes.io")
    {
        return Ok(());
    }
    Err(format!(
        "label {key:?} is refused by NodeRestriction: unknown labels under kubernetes.io/k8s.io \
         may not be set by a node (allowed: {}, kubelet.kubernetes.io/*, node.kubernetes.io/*)",
        KUBELET_LABELS.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_subdomains() {
        assert!(dns1123_subdomain("worker-1.example.com").is_ok());
        assert!(dns1123_subdomain("Worker").is_err());
        assert!(dns1123_subdomain("-a").is_err());
        assert!(dns1123_subdomain("a..b").is_err());
        assert!(dns1123_subdomain(&"a".repeat(254)).is_err());
        assert!(dns1123_subdomain("").is_err());
    }

    #[test]
    fn qualified_names_and_values() {
        assert!(qualified_name("keel.io/pool").is_ok());
        assert!(qualified_name("gpu").is_ok());
        assert!(qualified_name("Keel.io/pool").is_err());
        assert!(qualified_name("keel.io/").is_err());
        assert!(qualified_name(&format!("x/{}", "a".repeat(64))).is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("Windows_2022.1").is_ok());
        assert!(label_value("-x").is_err());
        assert!(label_value("a b").is_err());
    }

    #[test]
    fn node_restriction_label_rules() {
        assert!(node_may_set_label("keel.io/pool").is_ok());
        assert!(node_may_set_label("topology.kubernetes.io/zone").is_ok());
        assert!(node_may_set_label("node.kubernetes.io/instance-type").is_ok());
        assert!(node_may_set_label("foo.node.kubernetes.io/x").is_ok());
        assert!(node_may_set_label("kubelet.kubernetes.io/x").is_ok());
        let e = node_may_set_label("node-role.kubernetes.io/worker").unwrap_err();
        assert!(e.contains("NodeRestriction") && e.contains("role"), "{e}");
        let e = node_may_set_label("node-restriction.kubernetes.io/pool").unwrap_err();
        assert!(e.contains("reserved"), "{e}");
        let e = node_may_set_label("kubernetes.io/anything").unwrap_err();
        assert!(e.contains("unknown labels"), "{e}");
        assert!(node_may_set_label("example.k8s.io/x").is_err());
    }
}
