//! Token discovery exactly as `kubeadm join --discovery-token` does it
//! (kubernetes `cmd/kubeadm/app/discovery/token/token.go`):
//!
//! 1. GET `kube-public/cluster-info` anonymously WITHOUT TLS verification (we do not know the CA yet),
//!    polling until it carries `jws-kubeconfig-<token-id>`;
//! 2. verify that detached JWS (HS256, `kid` = token id, key = token secret) over the kubeconfig;
//! 3. find a CA certificate in that kubeconfig whose SubjectPublicKeyInfo SHA-256 matches a pin;
//! 4. GET `cluster-info` again over TLS verified with that CA and require a byte-identical kubeconfig.
//!
//! Steps 2-4 are pure functions here ([`verify_jws`], [`parse_cluster_info`], [`pinned_ca`],
//! [`verify_cluster_info`]); [`discover`] is the thin driver that does the two fetches.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use sha2::Sha256;

use crate::apiclient::{self, ApiClients};
pub use crate::config::token::{BootstrapToken, Pin};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cluster-info has no kubeconfig key")]
    NoKubeconfig,
    #[error("cluster-info is not signed for token id {token_id:?} (no jws-kubeconfig-{token_id}): the token does not exist, expired, or is not for signing")]
    NotSignedForToken { token_id: String },
    #[error("cluster-info signature for token id {token_id:?} is malformed: {reason}")]
    MalformedJws { token_id: String, reason: String },
    #[error("cluster-info signature for token id {token_id:?} does not verify with the token secret: wrong token, or cluster-info was tampered with")]
    SignatureMismatch { token_id: String },
    #[error("cluster-info kubeconfig is invalid: {0}")]
    BadKubeconfig(String),
    #[error("no CA certificate in cluster-info matches the configured pins (found {found}); check cluster.ca_pins (kubeadm: --discovery-token-ca-cert-hash)")]
    PinMismatch { found: String },
    #[error(
        "cluster-info fetched over verified TLS differs from the signed copy: refusing to join"
    )]
    ChangedAfterVerification,
    #[error("cluster-info was not signed for token id {token_id:?} within {waited:?}; last error: {last}")]
    Timeout {
        token_id: String,
        waited: Duration,
        last: String,
    },
    #[error("verified fetch of cluster-info failed: {0}")]
    VerifiedFetch(String),
    #[error("cannot build an API client: {0}")]
    Client(String),
}

impl DiscoveryError {
    /// Errors worth polling again for: the signature may simply not be there yet.
    fn is_pending(&self) -> bool {
        matches!(
            self,
            DiscoveryError::NotSignedForToken { .. } | DiscoveryError::NoKubeconfig
        )
    }
}

/// Verifies the detached JWS `header..signature` over `payload` (kubeadm's `DetachedTokenIsValid`).
pub fn verify_jws(
    detached: &str,
    payload: &[u8],
    token: &BootstrapToken,
) -> Result<(), DiscoveryError> {
    let malformed = |reason: &str| DiscoveryError::MalformedJws {
        token_id: token.id.clone(),
        reason: reason.to_string(),
    };
    let mut parts = detached.trim().split('.');
    let (Some(header_b64), Some(""), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("not a detached JWS (header..signature)"));
    };
    let header = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| malformed("header is not base64url"))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|_| malformed("header is not JSON"))?;
    if header.get("alg").and_then(|v| v.as_str()) != Some("HS256") {
        return Err(malformed("alg is not HS256"));
    }
    match header.get("kid").and_then(|v| v.as_str()) {
        Some(kid) if kid == token.id => {}
        Some(_) => return Err(malformed("kid does not name this token id")),
        None => return Err(malformed("kid missing")),
    }
    let signature = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| malformed("signature is not base64url"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(token.secret().as_bytes())
        .map_err(|_| malformed("unusable token secret"))?;
    mac.update(header_b64.as_bytes());
    mac.update(b".");
    mac.update(URL_SAFE_NO_PAD.encode(payload).as_bytes());
    // verify_slice compares in constant time.
    mac.verify_slice(&signature)
        .map_err(|_| DiscoveryError::SignatureMismatch {
            token_id: token.id.clone(),
        })
}

/// Signs `payload` the way the token signer controller does (used by tests and tools).
pub fn sign_jws(payload: &[u8], token: &BootstrapToken) -> String {
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"HS256","kid":"{}"}}"#, token.id));
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(token.secret().as_bytes()) else {
        return String::new(); // HMAC takes keys of any length
    };
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(URL_SAFE_NO_PAD.encode(payload).as_bytes());
    format!(
        "{header}..{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// What a cluster-info kubeconfig tells us.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterInfo {
    pub server: String,
    /// DER certificates from `certificate-authority-data`, in file order.
    pub ca_certs: Vec<Vec<u8>>,
}

pub fn parse_cluster_info(kubeconfig: &str) -> Result<ClusterInfo, DiscoveryError> {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig)
        .map_err(|e| DiscoveryError::BadKubeconfig(e.to_string()))?;
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| DiscoveryError::BadKubeconfig("no cluster".into()))?;
    let server = cluster
        .server
        .clone()
        .ok_or_else(|| DiscoveryError::BadKubeconfig("cluster has no server".into()))?;
    let data = cluster
        .certificate_authority_data
        .as_deref()
        .ok_or_else(|| DiscoveryError::BadKubeconfig("no certificate-authority-data".into()))?;
    let pem = STANDARD.decode(data.trim()).map_err(|_| {
        DiscoveryError::BadKubeconfig("certificate-authority-data is not base64".into())
    })?;
    let ca_certs = rustls_pemfile::certs(&mut pem.as_slice())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DiscoveryError::BadKubeconfig(format!("certificate-authority-data: {e}")))?;
    if ca_certs.is_empty() {
        return Err(DiscoveryError::BadKubeconfig(
            "certificate-authority-data holds no certificate".into(),
        ));
    }
    Ok(ClusterInfo { server, ca_certs })
}

/// The first CA certificate whose SPKI hash is pinned.
pub fn pinned_ca<'a>(info: &'a ClusterInfo, pins: &[Pin]) -> Result<&'a [u8], DiscoveryError> {
    let mut found = Vec::new();
    for der in &info.ca_certs {
        let pin = Pin::of_cert(der).map_err(DiscoveryError::BadKubeconfig)?;
        if pins.contains(&pin) {
            return Ok(der);
        }
        found.push(pin.to_string());
    }
    Err(DiscoveryError::PinMismatch {
        found: found.join(", "),
    })
}

/// A cluster-info whose signature and CA pin verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The kubeconfig text exactly as signed, for the byte comparison of step 4.
    pub kubeconfig: String,
    pub info: ClusterInfo,
    /// The pinned CA, DER.
    pub ca_der: Vec<u8>,
}

impl Verified {
    pub fn ca_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.ca_der)
    }
}

/// Steps 2 and 3 on the `data` of the anonymously fetched ConfigMap.
pub fn verify_cluster_info(
    data: &BTreeMap<String, String>,
    token: &BootstrapToken,
    pins: &[Pin],
) -> Result<Verified, DiscoveryError> {
    let kubeconfig = data.get("kubeconfig").ok_or(DiscoveryError::NoKubeconfig)?;
    let jws = data
        .get(&format!("jws-kubeconfig-{}", token.id))
        .ok_or_else(|| DiscoveryError::NotSignedForToken {
            token_id: token.id.clone(),
        })?;
    verify_jws(jws, kubeconfig.as_bytes(), token)?;
    let info = parse_cluster_info(kubeconfig)?;
    let ca_der = pinned_ca(&info, pins)?.to_vec();
    Ok(Verified {
        kubeconfig: kubeconfig.clone(),
        info,
        ca_der,
    })
}

/// Step 4: the copy fetched over verified TLS must be byte-identical.
pub fn confirm_second_fetch(
    verified: &Verified,
    data: &BTreeMap<String, String>,
) -> Result<(), DiscoveryError> {
    match data.get("kubeconfig") {
        Some(k) if k.as_bytes() == verified.kubeconfig.as_bytes() => Ok(()),
        _ => Err(DiscoveryError::ChangedAfterVerification),
    }
}

pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The driver: polls anonymously (with backoff) until cluster-info verifies, then confirms over
/// verified TLS. Nothing is written here; the caller persists the CA only on success.
pub async fn discover(
    server: &http::Uri,
    token: &BootstrapToken,
    pins: &[Pin],
    timeout: Duration,
    metrics: &Metrics,
) -> Result<Verified, DiscoveryError> {
    let insecure =
        apiclient::anonymous_insecure(server).map_err(|e| DiscoveryError::Client(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + timeout;
    tracing::info!(server = %server, token_id = %token.id, pins = ?pins,
        "discovery: fetching cluster-info without checking the server's certificate (the CA is not known yet); its content is verified instead: the kubeconfig's JWS signature (HS256) with the bootstrap token's secret, then the CA certificate in it against cluster.ca_pins (SHA-256 of its public key); only that CA is trusted afterwards");
    // kubeadm polls every 5 s; start faster, never slower.
    let mut backoff = keel_common::Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
    let verified = loop {
        let api: Api<ConfigMap> = Api::namespaced(insecure.clone(), "kube-public");
        let res = apiclient::observe(metrics, "get", "configmaps", api.get("cluster-info")).await;
        let err = match res {
            Ok(cm) => match verify_cluster_info(&cm.data.unwrap_or_default(), token, pins) {
                Ok(v) => break v,
                Err(e) if e.is_pending() => e.to_string(),
                Err(e) => return Err(e),
            },
            Err(e) => format!("GET kube-public/cluster-info: {e}"),
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(DiscoveryError::Timeout {
                token_id: token.id.clone(),
                waited: timeout,
                last: err,
            });
        }
        // The last wait is cut to the deadline, then one final attempt.
        let delay = backoff.next_delay().min(deadline - now);
        tracing::info!(server = %server, token_id = %token.id, error = %err, retry_in = ?delay, "waiting for signed cluster-info");
        tokio::time::sleep(delay).await;
    };
    tracing::info!(server = %server, ca_pin = %Pin::of_cert(&verified.ca_der).map_err(DiscoveryError::BadKubeconfig)?, "cluster-info signature and CA pin verified");
    let clients = ApiClients::new(server.clone(), verified.ca_pem());
    let trusted = clients
        .anonymous()
        .map_err(|e| DiscoveryError::Client(e.to_string()))?;
    let api: Api<ConfigMap> = Api::namespaced(trusted, "kube-public");
    // A few tries only: a TLS failure against the pinned CA means the first answer did not come
    // from the cluster we trust, and must end the join rather than be retried into success.
    let mut backoff = keel_common::Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
    let mut attempt = 0;
    loop {
        attempt += 1;
        match apiclient::observe(metrics, "get", "configmaps", api.get("cluster-info")).await {
            Ok(cm) => {
                confirm_second_fetch(&verified, &cm.data.unwrap_or_default())?;
                return Ok(verified);
            }
            Err(e) if attempt >= 5 || tokio::time::Instant::now() > deadline => {
                return Err(DiscoveryError::VerifiedFetch(e.to_string()))
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(server = %server, error = %e, retry_in = ?delay, "verified fetch of cluster-info failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Fixture: HS256 over `header_b64 "." base64url(payload)` computed independently with Python's
    // hmac/hashlib (not with this module), header `{"alg":"HS256","kid":"abcdef"}` as go-jose writes it.
    const TOKEN: &str = "abcdef.0123456789abcdef";
    const PAYLOAD: &str = "apiVersion: v1\nkind: Config\n";
    const JWS: &str = include_str!("../../tests/fixtures/jws-abcdef.txt");

    fn token() -> BootstrapToken {
        BootstrapToken::parse(TOKEN).unwrap()
    }

    #[test]
    fn token_shape_is_checked_and_secret_redacted() {
        assert!(BootstrapToken::parse("abcdef.0123456789abcdef").is_ok());
        assert!(BootstrapToken::parse("ABCDEF.0123456789abcdef").is_err());
        assert!(BootstrapToken::parse("abcde.0123456789abcdef").is_err());
        assert!(BootstrapToken::parse("abcdef0123456789abcdef").is_err());
        assert!(!format!("{:?}", token()).contains("0123456789abcdef"));
    }

    #[test]
    fn fixture_jws_verifies_and_our_signer_matches_it() {
        verify_jws(JWS.trim(), PAYLOAD.as_bytes(), &token()).unwrap();
        assert_eq!(sign_jws(PAYLOAD.as_bytes(), &token()), JWS.trim());
    }

    #[test]
    fn jws_with_wrong_secret_or_payload_or_kid_is_refused() {
        let other = BootstrapToken::parse("abcdef.ffffffffffffffff").unwrap();
        assert!(matches!(
            verify_jws(JWS.trim(), PAYLOAD.as_bytes(), &other),
            Err(DiscoveryError::SignatureMismatch { .. })
        ));
        assert!(matches!(
            verify_jws(JWS.trim(), b"apiVersion: v2\n", &token()),
            Err(DiscoveryError::SignatureMismatch { .. })
        ));
        let other_id = BootstrapToken::parse("zzzzzz.0123456789abcdef").unwrap();
        assert!(matches!(
            verify_jws(JWS.trim(), PAYLOAD.as_bytes(), &other_id),
            Err(DiscoveryError::MalformedJws { .. })
        ));
        // An attached (non-detached) JWS or an alg downgrade is refused.
        let attached = JWS.trim().replacen("..", ".eA.", 1);
        assert!(verify_jws(&attached, PAYLOAD.as_bytes(), &token()).is_err());
        let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"abcdef"}"#);
        assert!(verify_jws(&format!("{none_header}.."), PAYLOAD.as_bytes(), &token()).is_err());
    }

    fn fixture_kubeconfig() -> (String, Vec<u8>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kubernetes");
        let cert = params.self_signed(&key).unwrap();
        let kc = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    server: https://198.18.0.100:6443\n    certificate-authority-data: {}\ncontexts: []\nusers: []\ncurrent-context: \"\"\npreferences: {{}}\n",
            STANDARD.encode(cert.pem())
        );
        (kc, cert.der().to_vec())
    }

    #[test]
    fn pin_is_sha256_of_spki_and_parses_both_ways() {
        let (_, der) = fixture_kubeconfig();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let expected = hex::encode(<Sha256 as sha2::Digest>::digest(
            cert.tbs_certificate.subject_pki.raw,
        ));
        let pin = Pin::of_cert(&der).unwrap();
        assert_eq!(pin.to_string(), format!("sha256:{expected}"));
        assert_eq!(Pin::parse(&pin.to_string()).unwrap(), pin);
        assert!(Pin::parse("md5:00").is_err());
        assert!(Pin::parse("sha256:abcd").is_err());
    }

    #[test]
    fn cluster_info_verifies_end_to_end_and_refuses_wrong_pin() {
        let (kc, der) = fixture_kubeconfig();
        let t = token();
        let mut data = BTreeMap::new();
        data.insert("kubeconfig".to_string(), kc.clone());
        assert!(matches!(
            verify_cluster_info(&data, &t, &[Pin::of_cert(&der).unwrap()]),
            Err(DiscoveryError::NotSignedForToken { .. })
        ));
        data.insert(
            "jws-kubeconfig-abcdef".to_string(),
            sign_jws(kc.as_bytes(), &t),
        );
        let v = verify_cluster_info(&data, &t, &[Pin::of_cert(&der).unwrap()]).unwrap();
        assert_eq!(v.ca_der, der);
        assert_eq!(v.info.server, "https://198.18.0.100:6443");
        let e = verify_cluster_info(&data, &t, &[Pin([7; 32])]).unwrap_err();
        assert!(matches!(e, DiscoveryError::PinMismatch { .. }), "{e}");
        assert!(e.to_string().contains("ca_pins"));

        confirm_second_fetch(&v, &data).unwrap();
        let mut changed = data.clone();
        changed.insert("kubeconfig".into(), format!("{kc}\n"));
        assert!(matches!(
            confirm_second_fetch(&v, &changed),
            Err(DiscoveryError::ChangedAfterVerification)
        ));
    }

    #[test]
    fn pem_round_trips() {
        let (_, der) = fixture_kubeconfig();
        let pem = pem_encode("CERTIFICATE", &der);
        let back: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back[0].as_ref(), der.as_slice());
    }
}
