//! The TLS bootstrap's pure parts: the node's key and CSR exactly as kube-controller-manager's
//! approver wants them (`sarapprove.go`: O exactly `[system:nodes]`, CN `system:node:<name>`, no
//! SANs, usages digital signature + client auth), the CSR object's deterministic name, the
//! outcome of a CSR object, checks on the issued certificate, and when to renew it.

use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData};
use sha2::{Digest, Sha256};

pub const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const USAGES: [&str; 2] = ["digital signature", "client auth"];
pub const NODES_GROUP: &str = "system:nodes";

#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("cannot generate or load the node key: {0}")]
    Key(String),
    #[error("cannot build the certificate request: {0}")]
    Request(String),
    #[error("issued certificate is unusable: {0}")]
    BadCertificate(String),
}

pub fn common_name(node: &str) -> String {
    format!("system:node:{node}")
}

/// A new ECDSA P-256 key (what kubelet generates for its client certificate).
pub fn new_key() -> Result<KeyPair, CsrError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| CsrError::Key(e.to_string()))
}

pub fn load_key(pem: &str) -> Result<KeyPair, CsrError> {
    KeyPair::from_pem(pem).map_err(|e| CsrError::Key(e.to_string()))
}

/// The PKCS#10 request: subject only, no SANs, no extensions.
pub fn request_pem(key: &KeyPair, node: &str) -> Result<String, CsrError> {
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| CsrError::Request(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, NODES_GROUP);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name(node));
    params
        .serialize_request(key)
        .and_then(|r| r.pem())
        .map_err(|e| CsrError::Request(e.to_string()))
}

/// The CSR object's name: derived from the public key and the subject (as kubelet's
/// `digestedName`), so a restarted agent with the same key finds its CSR instead of filing another.
pub fn csr_name(key: &KeyPair, node: &str) -> String {
    let mut h = Sha256::new();
    h.update(key.der_bytes());
    h.update([0]);
    h.update(common_name(node).as_bytes());
    h.update([0]);
    h.update(USAGES.join(",").as_bytes());
    format!("node-csr-{}", &hex::encode(h.finalize())[..40])
}

/// The CertificateSigningRequest object to create.
pub fn csr_object(name: &str, request_pem: &str) -> CertificateSigningRequest {
    CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request_pem.as_bytes().to_vec()),
            signer_name: SIGNER.to_string(),
            usages: Some(USAGES.iter().map(|u| u.to_string()).collect()),
            ..Default::default()
        },
        status: None,
    }
}

/// What a CSR object says about our request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    Issued(String),
    Denied(String),
    Failed(String),
}

pub fn outcome(csr: &CertificateSigningRequest) -> Outcome {
    let Some(status) = &csr.status else {
        return Outcome::Pending;
    };
    for c in status.conditions.iter().flatten() {
        let why = || {
            format!(
                "{}: {}",
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default()
            )
        };
        if c.status == "True" && c.type_ == "Denied" {
            return Outcome::Denied(why());
        }
        if c.status == "True" && c.type_ == "Failed" {
            return Outcome::Failed(why());
        }
    }
    match &status.certificate {
        Some(cert) if !cert.0.is_empty() => {
            Outcome::Issued(String::from_utf8_lossy(&cert.0).into_owned())
        }
        _ => Outcome::Pending,
    }
}

/// Whether a CSR object found under our deterministic name is ours (same public key and subject).
pub fn is_ours(csr: &CertificateSigningRequest, key: &KeyPair, node: &str) -> bool {
    let pem = &csr.spec.request.0;
    let Ok((_, parsed)) = x509_parser::pem::parse_x509_pem(pem) else {
        return false;
    };
    let Ok((_, req)) = <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<_>>::from_der(&parsed.contents)
    else {
        return false;
    };
    let info = &req.certification_request_info;
    let cn_ok = info
        .subject
        .iter_common_name()
        .any(|cn| cn.as_str().ok() == Some(common_name(node).as_str()));
    cn_ok && info.subject_pki.subject_public_key.data.as_ref() == key.der_bytes()
}

/// What the agent needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub public_key: Vec<u8>,
}

/// Parses the first certificate of a PEM bundle.
pub fn cert_info(pem: &str) -> Result<CertInfo, CsrError> {
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .ok_or_else(|| CsrError::BadCertificate("no PEM certificate".into()))?
        .map_err(|e| CsrError::BadCertificate(e.to_string()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| CsrError::BadCertificate(e.to_string()))?;
    let subject = cert.subject();
    let info = CertInfo {
        common_name: subject
            .iter_common_name()
            .filter_map(|c| c.as_str().ok())
            .next()
            .unwrap_or_default()
            .to_string(),
        organizations: subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_string))
            .collect(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
    };
    Ok(info)
}

/// Checks that an issued (or stored) certificate is for this node and this key.
pub fn check_cert(info: &CertInfo, key: &KeyPair, node: &str) -> Result<(), CsrError> {
    if info.common_name != common_name(node) {
        return Err(CsrError::BadCertificate(format!(
            "subject CN is {:?}, expected {:?}",
            info.common_name,
            common_name(node)
        )));
    }
    if info.public_key != key.der_bytes() {
        return Err(CsrError::BadCertificate(
            "certificate does not match the node key".into(),
        ));
    }
    Ok(())
}

/// client-go's certificate manager: renew at `fraction` (drawn from 70-90 %) of the validity.
pub fn renew_at(info: &CertInfo, fraction: f64) -> i64 {
    let life = (info.not_after - info.not_before).max(0) as f64;
    info.not_before + (life * fraction.clamp(0.0, 1.0)) as i64
}

pub fn jittered_fraction() -> f64 {
    use rand::Rng;
    rand::rng().random_range(0.7..=0.9)
}

/// Whether stored credentials can be used as they are at `now` (unix seconds): not expired, and
/// not so close to expiry that a renewal is already due.
pub fn usable(info: &CertInfo, now: i64) -> bool {
    now >= info.not_before - 300 && now < info.not_after
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::prelude::FromDer;

    #[test]
    fn csr_has_exactly_the_shape_the_approver_accepts() {
        let key = new_key().unwrap();
        let pem = request_pem(&key, "worker-1").unwrap();
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        assert_eq!(p.label, "CERTIFICATE REQUEST");
        let (_, req) = X509CertificationRequest::from_der(&p.contents).unwrap();
        req.verify_signature().unwrap();
        let info = &req.certification_request_info;
        let cns: Vec<_> = info
            .subject
            .iter_common_name()
            .map(|c| c.as_str().unwrap())
            .collect();
        let orgs: Vec<_> = info
            .subject
            .iter_organization()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(cns, ["system:node:worker-1"]);
        assert_eq!(orgs, ["system:nodes"]);
        // No SANs, no extensions at all.
        assert!(req.requested_extensions().map(|e| e.count()).unwrap_or(0) == 0);
        assert_eq!(
            info.subject_pki.algorithm.algorithm.to_id_string(),
            "1.2.840.10045.2.1" // id-ecPublicKey
        );

        let obj = csr_object(&csr_name(&key, "worker-1"), &pem);
        assert_eq!(
            obj.spec.signer_name,
            "kubernetes.io/kube-apiserver-client-kubelet"
        );
        assert_eq!(
            obj.spec.usages.as_deref().unwrap(),
            ["digital signature", "client auth"]
        );
        assert!(is_ours(&obj, &key, "worker-1"));
        assert!(!is_ours(&obj, &new_key().unwrap(), "worker-1"));
        assert!(!is_ours(&obj, &key, "worker-2"));
    }

    #[test]
    fn csr_name_is_stable_per_key_and_node() {
        let key = new_key().unwrap();
        let again = load_key(&key.serialize_pem()).unwrap();
        assert_eq!(csr_name(&key, "a"), csr_name(&again, "a"));
        assert_ne!(csr_name(&key, "a"), csr_name(&key, "b"));
        assert_ne!(csr_name(&key, "a"), csr_name(&new_key().unwrap(), "a"));
        assert!(crate::config::names::dns1123_subdomain(&csr_name(&key, "a")).is_ok());
    }

    fn issue(key: &KeyPair, cn: &str) -> String {
        let ca_key = new_key().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.distinguished_name
            .push(DnType::OrganizationName, "system:nodes");
        let _ = ca_cert;
        p.signed_by(key, &issuer).unwrap().pem()
    }

    #[test]
    fn issued_certificate_must_match_key_and_node() {
        let key = new_key().unwrap();
        let info = cert_info(&issue(&key, "system:node:w1")).unwrap();
        assert_eq!(info.organizations, ["system:nodes"]);
        check_cert(&info, &key, "w1").unwrap();
        assert!(check_cert(&info, &key, "w2").is_err());
        assert!(check_cert(&info, &new_key().unwrap(), "w1").is_err());
    }

    #[test]
    fn renewal_falls_between_70_and_90_percent_of_life() {
        let info = CertInfo {
            common_name: String::new(),
            organizations: vec![],
            not_before: 1000,
            not_after: 11000,
            public_key: vec![],
        };
        assert_eq!(renew_at(&info, 0.7), 8000);
        assert_eq!(renew_at(&info, 0.9), 10000);
        for _ in 0..100 {
            let f = jittered_fraction();
            assert!((0.7..=0.9).contains(&f));
        }
        assert!(usable(&info, 5000));
        assert!(!usable(&info, 11000));
    }

    #[test]
    fn outcome_reads_denied_failed_and_issued() {
        use k8s_openapi::api::certificates::v1::{
            CertificateSigningRequestCondition as Cond, CertificateSigningRequestStatus as St,
        };
        let mut csr = csr_object("x", "pem");
        assert_eq!(outcome(&csr), Outcome::Pending);
        csr.status = Some(St {
            conditions: Some(vec![Cond {
                type_: "Denied".into(),
                status: "True".into(),
                reason: Some("NotAllowed".into()),
                message: Some("no".into()),
                ..Default::default()
            }]),
            certificate: None,
        });
        assert_eq!(outcome(&csr), Outcome::Denied("NotAllowed: no".into()));
        csr.status = Some(St {
            conditions: Some(vec![Cond {
                type_: "Approved".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            certificate: Some(ByteString(b"-----BEGIN CERTIFICATE-----".to_vec())),
        });
        assert!(matches!(outcome(&csr), Outcome::Issued(_)));
    }
}
