//! The kube-controller-manager loops Keel depends on, run in-process right after each write:
//! bootstrap signer + token cleaner, CSR approver (sarapprove.go) + signer, disruption (PDB status).

use crate::auth::{self, Attrs, User};
use crate::clock;
use crate::finalizers;
use crate::pki::{self, Ca};
use crate::resources::find;
use crate::selectors::selector_object_matches;
use crate::store::{meta_str, Store};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::time::Duration;

pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

/// What the in-process approver does with kubelet client CSRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrPolicy {
    /// Approve well-formed requests, as the real approver (default).
    Approve,
    /// Deny every kubelet client request (Denied condition).
    Deny,
    /// Leave requests pending.
    Ignore,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub csr_policy: CsrPolicy,
    pub cert_duration: Duration,
    pub cert_backdate: Duration,
    pub bookmark_interval: Duration,
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Detached JWS as `bootstrapsigner.computeDetachedSignature` produces it: `header..signature`.
pub fn detached_jws(content: &[u8], token_id: &str, token_secret: &str) -> String {
    let header = b64url(format!(r#"{{"alg":"HS256","kid":"{token_id}"}}"#).as_bytes());
    let payload = b64url(content);
    let signing_input = format!("{header}.{payload}");
    let mut mac = match Hmac::<Sha256>::new_from_slice(token_secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(signing_input.as_bytes());
    format!("{header}..{}", b64url(&mac.finalize().into_bytes()))
}

/// Re-signs `kube-public/cluster-info` for every unexpired token with usage-bootstrap-signing.
pub fn bootstrap_signer(store: &mut Store) {
    let (Some(secrets), Some(cms)) = (find("", "v1", "secrets"), find("", "v1", "configmaps"))
    else {
        return;
    };
    let tokens: Vec<auth::BootstrapSecret> = store
        .list(secrets, Some("kube-system"))
        .into_iter()
        .filter_map(auth::read_bootstrap_secret)
        .filter(|t| !t.expired && t.usage_signing)
        .collect();
    let Some(cm) = store.get(cms, "kube-public", "cluster-info").cloned() else {
        return;
    };
    let Some(kubeconfig) = cm
        .pointer("/data/kubeconfig")
        .and_then(|v| v.as_str())
        .map(String::from)
    else {
        return;
    };
    let mut new = cm.clone();
    let data = match new["data"].as_object_mut() {
        Some(d) => d,
        None => return,
    };
    data.retain(|k, _| !k.starts_with("jws-kubeconfig-"));
    for t in &tokens {
        data.insert(
            format!("jws-kubeconfig-{}", t.id),
            json!(detached_jws(kubeconfig.as_bytes(), &t.id, &t.secret)),
        );
    }
    if new != cm {
        let _ = store.update(cms, "kube-public", new);
    }
}

/// The token cleaner: deletes expired bootstrap token Secrets.
pub fn token_cleaner(store: &mut Store) {
    let Some(secrets) = find("", "v1", "secrets") else {
        return;
    };
    let expired: Vec<String> = store
        .list(secrets, Some("kube-system"))
        .into_iter()
        .filter(|s| auth::read_bootstrap_secret(s).is_some_and(|t| t.expired))
        .map(|s| meta_str(s, "name").to_string())
        .collect();
    for name in expired {
        tracing::info!(secret = %name, "deleting expired bootstrap token");
        let _ = store.delete(secrets, "kube-system", &name);
    }
}

fn has_condition(csr: &Value, t: &str) -> bool {
    csr.pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .is_some_and(|c| c.iter().any(|x| x["type"] == t && x["status"] != "False"))
}

fn condition(t: &str, reason: &str, message: &str) -> Value {
    let now = clock::now_rfc3339();
    json!({"type": t, "status": "True", "reason": reason, "message": message, "lastUpdateTime": now, "lastTransitionTime": now})
}

fn push_condition(csr: &mut Value, c: Value) {
    if !csr["status"].is_object() {
        csr["status"] = json!({});
    }
    match csr["status"]["conditions"].as_array_mut() {
        Some(a) => a.push(c),
        None => csr["status"]["conditions"] = json!([c]),
    }
}

fn usages(csr: &Value) -> Vec<String> {
    csr.pointer("/spec/usages")
        .and_then(|u| u.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn csr_request(csr: &Value) -> Option<Vec<u8>> {
    let b64 = csr.pointer("/spec/request")?.as_str()?;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// `ValidateKubeletClientCSR` (k8s.io/kubernetes/pkg/apis/certificates/v1/helpers.go).
pub fn validate_kubelet_client(info: &pki::CsrInfo, usages: &[String]) -> Result<(), String> {
    if info.organizations != ["system:nodes"] {
        return Err("subject organization is not system:nodes".into());
    }
    if info.dns_sans > 0 {
        return Err("DNS subjectAltNames are not allowed".into());
    }
    if info.email_sans > 0 {
        return Err("Email subjectAltNames are not allowed".into());
    }
    if info.ip_sans > 0 {
        return Err("IP subjectAltNames are not allowed".into());
    }
    if info.uri_sans > 0 || info.san_count > 0 {
        return Err("URI subjectAltNames are not allowed".into());
    }
    if !info.common_name.starts_with("system:node:") {
        return Err("subject common name does not begin with system:node:".into());
    }
    let mut u: Vec<&str> = usages.iter().map(|s| s.as_str()).collect();
    u.sort();
    u.dedup();
    let ok = u == ["client auth", "digital signature", "key encipherment"]
        || u == ["client auth", "digital signature"];
    if !ok {
        return Err("usages did not match [client auth digital signature key encipherment]".into());
    }
    Ok(())
}

fn sar_allows(store: &Store, csr: &Value, subresource: &str) -> bool {
    let user = User {
        name: csr
            .pointer("/spec/username")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .into(),
        uid: String::new(),
        groups: csr
            .pointer("/spec/groups")
            .and_then(|g| g.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let a = Attrs {
        verb: "create".into(),
        is_resource: true,
        group: "certificates.k8s.io".into(),
        resource: "certificatesigningrequests".into(),
        subresource: subresource.into(),
        ..Default::default()
    };
    auth::authorize_in(&user, &a, store, true).is_ok()
}

/// The CSR approver then the signer, for one CSR.
pub fn csr_controllers(store: &mut Store, ca: &Ca, settings: &Settings, name: &str) {
    let Some(def) = find("certificates.k8s.io", "v1", "certificatesigningrequests") else {
        return;
    };
    let Some(mut csr) = store.get(def, "", name).cloned() else {
        return;
    };
    let signer = csr
        .pointer("/spec/signerName")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let request = csr_request(&csr);
    let info = request.as_deref().map(pki::parse_csr);

    // Approver (sarapprove.go): only kubelet client requests; malformed ones are left pending.
    if !has_condition(&csr, "Approved")
        && !has_condition(&csr, "Denied")
        && signer == KUBELET_CLIENT_SIGNER
    {
        if let Some(Ok(info)) = &info {
            match settings.csr_policy {
                CsrPolicy::Deny => {
                    push_condition(
                        &mut csr,
                        condition(
                            "Denied",
                            "KeelTestDenied",
                            "denied by keel-test-apiserver (CSR approval switched off)",
                        ),
                    );
                    csr = store.update(def, "", csr).unwrap_or_default();
                }
                CsrPolicy::Ignore => {}
                CsrPolicy::Approve => {
                    if validate_kubelet_client(info, &usages(&csr)).is_ok() {
                        let username = csr
                            .pointer("/spec/username")
                            .and_then(|v| v.as_str())
                            .unwrap_or("");
                        let msg = if username == info.common_name
                            && sar_allows(store, &csr, "selfnodeclient")
                        {
                            Some("Auto approving self kubelet client certificate after SubjectAccessReview.")
                        } else if sar_allows(store, &csr, "nodeclient") {
                            Some("Auto approving kubelet client certificate after SubjectAccessReview.")
                        } else {
                            None
                        };
                        if let Some(msg) = msg {
                            tracing::info!(csr = %name, cn = %info.common_name, "auto-approving CSR");
                            push_condition(&mut csr, condition("Approved", "AutoApproved", msg));
                            csr = store.update(def, "", csr).unwrap_or_default();
                        }
                    }
                }
            }
        }
    }

    // Signer (pkg/controller/certificates/signer).
    let signed = csr
        .pointer("/status/certificate")
        .and_then(|c| c.as_str())
        .is_some_and(|c| !c.is_empty());
    if !has_condition(&csr, "Approved") || has_condition(&csr, "Failed") || signed {
        return;
    }
    let known = [
        KUBELET_CLIENT_SIGNER,
        "kubernetes.io/kube-apiserver-client",
        "kubernetes.io/kubelet-serving",
    ];
    if !known.contains(&signer.as_str()) {
        return;
    }
    let Some(Ok(info)) = info else { return };
    if signer == KUBELET_CLIENT_SIGNER {
        if let Err(e) = validate_kubelet_client(&info, &usages(&csr)) {
            push_condition(&mut csr, condition("Failed", "SignerValidationFailure", &e));
            let _ = store.update(def, "", csr);
            return;
        }
    }
    let mut ttl = settings.cert_duration;
    if let Some(secs) = csr
        .pointer("/spec/expirationSeconds")
        .and_then(|v| v.as_u64())
    {
        ttl = ttl.min(Duration::from_secs(secs));
    }
    let pem_text = String::from_utf8_lossy(request.as_deref().unwrap_or_default()).to_string();
    match ca.sign_csr(&pem_text, ttl, settings.cert_backdate, &usages(&csr)) {
        Ok(cert) => {
            csr["status"]["certificate"] =
                json!(base64::engine::general_purpose::STANDARD.encode(cert.as_bytes()));
            tracing::info!(csr = %name, "signed CSR");
            let _ = store.update(def, "", csr);
        }
        Err(e) => {
            push_condition(
                &mut csr,
                condition("Failed", "SignerValidationFailure", &e.to_string()),
            );
            let _ = store.update(def, "", csr);
        }
    }
}

fn pod_ready(p: &Value) -> bool {
    p["metadata"].get("deletionTimestamp").is_none()
        && p.pointer("/status/conditions")
            .and_then(|c| c.as_array())
            .is_some_and(|c| {
                c.iter()
                    .any(|x| x["type"] == "Ready" && x["status"] == "True")
            })
}

fn scaled(v: &Value, total: i64) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            // GetScaledValueFromIntOrPercent(..., roundUp=true)
            Some(p) => (p * total + 99) / 100,
            None => s.parse().unwrap_or(0),
        },
        _ => 0,
    }
}

/// Pods matching a PDB's selector (policy/v1: an empty selector matches every pod in the namespace).
pub fn pdb_pods<'a>(pdb: &Value, pods: &[&'a Value]) -> Vec<&'a Value> {
    let Some(sel) = pdb.pointer("/spec/selector") else {
        return Vec::new();
    };
    pods.iter()
        .copied()
        .filter(|p| selector_object_matches(sel, p.pointer("/metadata/labels")))
        .collect()
}

/// The disruption controller: recomputes the status of every PDB in `ns`.
pub fn disruption(store: &mut Store, ns: &str) {
    let (Some(pdbs_def), Some(pods_def)) = (
        find("policy", "v1", "poddisruptionbudgets"),
        find("", "v1", "pods"),
    ) else {
        return;
    };
    let pdbs: Vec<Value> = store
        .list(pdbs_def, Some(ns))
        .into_iter()
        .cloned()
        .collect();
    let pods: Vec<Value> = store
        .list(pods_def, Some(ns))
        .into_iter()
        .cloned()
        .collect();
    let pod_refs: Vec<&Value> = pods
        .iter()
        .filter(|p| {
            !matches!(
                p.pointer("/status/phase").and_then(|v| v.as_str()),
                Some("Succeeded" | "Failed")
            )
        })
        .collect();
    for pdb in pdbs {
        let matching = pdb_pods(&pdb, &pod_refs);
        let expected = matching.len() as i64;
        let healthy = matching.iter().filter(|p| pod_ready(p)).count() as i64;
        let desired = if let Some(min) = pdb.pointer("/spec/minAvailable") {
            scaled(min, expected)
        } else if let Some(max) = pdb.pointer("/spec/maxUnavailable") {
            (expected - scaled(max, expected)).max(0)
        } else {
            0
        };
        let allowed = (healthy - desired).max(0);
        let mut disrupted: BTreeMap<String, Value> = BTreeMap::new();
        if let Some(d) = pdb
            .pointer("/status/disruptedPods")
            .and_then(|d| d.as_object())
        {
            for (k, v) in d {
                if matching.iter().any(|p| meta_str(p, "name") == k) {
                    disrupted.insert(k.clone(), v.clone());
                }
            }
        }
        let mut new = pdb.clone();
        let prev_cond = pdb.pointer("/status/conditions/0").cloned();
        let (cstatus, reason) = if allowed > 0 {
            ("True", "SufficientPods")
        } else {
            ("False", "InsufficientPods")
        };
        let transition = match &prev_cond {
            Some(c) if c["status"] == cstatus => c["lastTransitionTime"].clone(),
            _ => json!(clock::now_rfc3339()),
        };
        new["status"] = json!({
            "observedGeneration": pdb["metadata"]["generation"].as_i64().unwrap_or(1),
            "disruptionsAllowed": allowed,
            "currentHealthy": healthy,
            "desiredHealthy": desired,
            "expectedPods": expected,
            "conditions": [{"type": "DisruptionAllowed", "status": cstatus, "reason": reason, "message": "",
                            "observedGeneration": pdb["metadata"]["generation"].as_i64().unwrap_or(1),
                            "lastTransitionTime": transition}],
        });
        if !disrupted.is_empty() {
            new["status"]["disruptedPods"] = json!(disrupted);
        }
        if new != pdb {
            let _ = store.update(pdbs_def, ns, new);
        }
    }
}

/// The namespace controller's deleter (pkg/controller/namespace/deletion): for a namespace being
/// deleted, deletes its content (objects with finalizers are marked and stay until those are
/// removed), reports progress in the namespace's conditions, and once nothing is left removes the
/// `kubernetes` spec finalizer, which lets the namespace go.
pub fn namespace_deleter(store: &mut Store, ns: &str) {
    let Some(nsdef) = find("", "v1", "namespaces") else {
        return;
    };
    let Some(nsobj) = store.get(nsdef, "", ns).cloned() else {
        return;
    };
    if !finalizers::is_deleting(&nsobj) {
        return;
    }
    let spec_fins = finalizers::spec_finalizers(&nsobj);
    if !spec_fins.iter().any(|f| f == finalizers::KUBERNETES) {
        // Finalized already: the namespace goes once nothing else holds it.
        if spec_fins.is_empty() && finalizers::finalizers(&nsobj).is_empty() {
            let _ = store.delete(nsdef, "", ns);
        }
        return;
    }
    let mut remaining: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_finalizer: BTreeMap<String, usize> = BTreeMap::new();
    for def in crate::resources::RESOURCES.iter().filter(|r| r.namespaced) {
        let objs: Vec<Value> = store.list(def, Some(ns)).into_iter().cloned().collect();
        for o in objs {
            let fins = finalizers::finalizers(&o);
            if fins.is_empty() {
                let _ = store.delete(def, ns, meta_str(&o, "name"));
                continue;
            }
            if !finalizers::is_deleting(&o) {
                let _ = store.mark_deleting(def, ns, o.clone(), Some(0));
            }
            *remaining
                .entry(format!("{}.{}", def.resource, def.group))
                .or_default() += 1;
            for f in fins {
                *by_finalizer.entry(f).or_default() += 1;
            }
        }
    }
    let summary = |m: &BTreeMap<String, usize>, f: &dyn Fn(&str, usize) -> String| {
        m.iter()
            .map(|(k, n)| f(k, *n))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // (type, the failing reason and message if failing, the ok reason, the ok message)
    type Row<'a> = (&'a str, Option<(&'a str, String)>, &'a str, &'a str);
    let failing: [Row; 5] = [
        (
            "NamespaceDeletionDiscoveryFailure",
            None,
            "ResourcesDiscovered",
            "All resources successfully discovered",
        ),
        (
            "NamespaceDeletionGroupVersionParsingFailure",
            None,
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed",
        ),
        (
            "NamespaceDeletionContentFailure",
            None,
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization",
        ),
        (
            "NamespaceContentRemaining",
            (!remaining.is_empty()).then(|| {
                (
                    "SomeResourcesRemain",
                    format!(
                        "Some resources are remaining: {}",
                        summary(&remaining, &|k, n| format!(
                            "{k} has {n} resource instances"
                        ))
                    ),
                )
            }),
            "ContentRemoved",
            "All content successfully removed",
        ),
        (
            "NamespaceFinalizersRemaining",
            (!by_finalizer.is_empty()).then(|| {
                (
                    "SomeFinalizersRemain",
                    format!(
                        "Some content in the namespace has finalizers remaining: {}",
                        summary(&by_finalizer, &|k, n| format!(
                            "{k} in {n} resource instances"
                        ))
                    ),
                )
            }),
            "ContentHasNoFinalizers",
            "All content-preserving finalizers finished",
        ),
    ];
    let prev: Vec<Value> = nsobj
        .pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .cloned()
        .unwrap_or_default();
    let conditions: Vec<Value> = failing
        .iter()
        .map(|(t, bad, ok_reason, ok_msg)| {
            let (status, reason, message) = match bad {
                Some((r, m)) => ("True", *r, m.clone()),
                None => ("False", *ok_reason, ok_msg.to_string()),
            };
            let since = prev
                .iter()
                .find(|c| c["type"] == *t && c["status"] == status)
                .map(|c| c["lastTransitionTime"].clone())
                .unwrap_or_else(|| json!(clock::now_rfc3339()));
            json!({"type": t, "status": status, "lastTransitionTime": since, "reason": reason, "message": message})
        })
        .collect();
    let mut updated = nsobj.clone();
    updated["status"]["conditions"] = json!(conditions);
    let updated = store.update(nsdef, "", updated.clone()).unwrap_or(updated);
    if !remaining.is_empty() {
        return;
    }
    // `finalize`: without the kubernetes finalizer (and no other) the namespace is deleted, as
    // the namespace registry's update does.
    let rest: Vec<String> = spec_fins
        .into_iter()
        .filter(|f| f != finalizers::KUBERNETES)
        .collect();
    if rest.is_empty() && finalizers::finalizers(&updated).is_empty() {
        let _ = store.delete(nsdef, "", ns);
    } else {
        let mut f = updated;
        f["spec"]["finalizers"] = json!(rest);
        let _ = store.update(nsdef, "", f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detached_jws_verifies_with_the_token_secret() {
        let jws = detached_jws(b"hello", "abcdef", "0123456789abcdef");
        let (header, sig) = jws.split_once("..").unwrap();
        assert_eq!(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(header)
                .unwrap(),
            br#"{"alg":"HS256","kid":"abcdef"}"#
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(b"0123456789abcdef").unwrap();
        mac.update(format!("{header}.{}", b64url(b"hello")).as_bytes());
        assert_eq!(sig, b64url(&mac.finalize().into_bytes()));
    }

    #[test]
    fn kubelet_client_validation_matches_upstream() {
        let good = pki::CsrInfo {
            common_name: "system:node:n1".into(),
            organizations: vec!["system:nodes".into()],
            ..Default::default()
        };
        let u = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(validate_kubelet_client(&good, &u(&["digital signature", "client auth"])).is_ok());
        assert!(validate_kubelet_client(
            &good,
            &u(&["digital signature", "key encipherment", "client auth"])
        )
        .is_ok());
        assert!(validate_kubelet_client(&good, &u(&["client auth"])).is_err());
        let bad_o = pki::CsrInfo {
            organizations: vec!["system:masters".into()],
            ..good
        };
        assert_eq!(
            validate_kubelet_client(&bad_o, &u(&["digital signature", "client auth"])),
            Err("subject organization is not system:nodes".into())
        );
    }

    #[test]
    fn pdb_min_available_percent_rounds_up() {
        assert_eq!(scaled(&json!("50%"), 3), 2);
        assert_eq!(scaled(&json!(1), 3), 1);
    }
}
