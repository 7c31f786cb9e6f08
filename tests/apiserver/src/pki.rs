//! The test CA: serving certificate, client certificates, CSR signing as the kube-controller-manager
//! signer does it (`k8s.io/kubernetes/pkg/controller/certificates/authority/policies.go`).

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("certificate parse: {0}")]
    Parse(String),
}

pub struct Ca {
    key: KeyPair,
    params: CertificateParams,
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub not_after: SystemTime,
}

fn odt(t: SystemTime) -> OffsetDateTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn serial() -> rcgen::SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f;
    rcgen::SerialNumber::from_slice(&b)
}

/// `sha256:<hex>` of the certificate's SubjectPublicKeyInfo, as kubeadm's `--discovery-token-ca-cert-hash`.
pub fn spki_pin(cert_der: &[u8]) -> Result<String, PkiError> {
    let (_, c) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| PkiError::Parse(e.to_string()))?;
    Ok(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(c.tbs_certificate.subject_pki.raw))
    ))
}

pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn generate() -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kubernetes");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let now = SystemTime::now();
        let not_after = now + Duration::from_secs(10 * 365 * 86400);
        params.not_before = odt(now - Duration::from_secs(3600));
        params.not_after = odt(not_after);
        params.serial_number = Some(serial());
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key,
            params,
            not_after,
        })
    }

    pub fn pin(&self) -> String {
        spki_pin(&self.cert_der).unwrap_or_default()
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    /// Serving certificate for loopback names plus `extra_sans` (IPs or DNS names).
    pub fn serving_cert(&self, extra_sans: &[String]) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let mut names: Vec<String> = vec![
            "localhost".into(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
        ];
        names.extend(
            extra_sans
                .iter()
                .filter(|s| s.parse::<IpAddr>().is_err())
                .cloned(),
        );
        let mut params = CertificateParams::new(names)?;
        for ip in ["127.0.0.1", "::1"]
            .iter()
            .map(|s| s.to_string())
            .chain(extra_sans.iter().cloned())
        {
            if let Ok(ip) = ip.parse::<IpAddr>() {
                params.subject_alt_names.push(SanType::IpAddress(ip));
            }
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kube-apiserver");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let now = SystemTime::now();
        params.not_before = odt(now - Duration::from_secs(300));
        params.not_after = odt(now + Duration::from_secs(365 * 86400));
        params.serial_number = Some(serial());
        let cert = params.signed_by(&key, &self.issuer())?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A client certificate (CN = user, O = groups), as a kubeconfig or a test would hold.
    pub fn client_cert(
        &self,
        cn: &str,
        orgs: &[&str],
        valid_for: Duration,
    ) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for o in orgs {
            dn.push(DnType::OrganizationName, *o);
        }
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let now = SystemTime::now();
        params.not_before = odt(now - Duration::from_secs(300));
        params.not_after = odt(now + valid_for);
        params.serial_number = Some(serial());
        let cert = params.signed_by(&key, &self.issuer())?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a CSR as `PermissiveSigningPolicy.apply` does: backdated, short certificates keep their
    /// full TTL, usages from the CSR object, never past the CA's own expiry.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        ttl: Duration,
        backdate: Duration,
        usages: &[String],
    ) -> Result<String, PkiError> {
        // Kubernetes' `shortRequest` threshold: below 8h the end time is not backdated.
        const SHORT: Duration = Duration::from_secs(8 * 3600);
        let mut req = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let now = SystemTime::now();
        let not_before = now - backdate;
        let mut not_after = if ttl < SHORT {
            now + ttl
        } else {
            now + ttl - backdate
        };
        if not_after > self.not_after {
            not_after = self.not_after;
        }
        let p = &mut req.params;
        p.not_before = odt(not_before);
        p.not_after = odt(not_after);
        p.serial_number = Some(serial());
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages.clear();
        p.extended_key_usages.clear();
        for u in usages {
            match u.as_str() {
                "digital signature" => p.key_usages.push(KeyUsagePurpose::DigitalSignature),
                "key encipherment" => p.key_usages.push(KeyUsagePurpose::KeyEncipherment),
                "client auth" => p
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ClientAuth),
                "server auth" => p
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ServerAuth),
                _ => {}
            }
        }
        let cert = req.signed_by(&self.issuer())?;
        Ok(cert.pem())
    }
}

/// Subject and SANs of a PEM CSR, for validation (`capihelper.ParseCSR` + `ValidateKubeletClientCSR`).
#[derive(Debug, Default)]
pub struct CsrInfo {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub san_count: usize,
    pub dns_sans: usize,
    pub ip_sans: usize,
    pub email_sans: usize,
    pub uri_sans: usize,
}

pub fn parse_csr(pem_bytes: &[u8]) -> Result<CsrInfo, String> {
    use x509_parser::prelude::FromDer;
    let text = std::str::from_utf8(pem_bytes)
        .map_err(|_| "PEM block type must be CERTIFICATE REQUEST".to_string())?;
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE REQUEST-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    if body.is_empty() {
        return Err("PEM block type must be CERTIFICATE REQUEST".into());
    }
    use base64::Engine;
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|e| e.to_string())?;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| e.to_string())?;
    csr.verify_signature()
        .map_err(|_| "x509: invalid signature".to_string())?;
    let subj = &csr.certification_request_info.subject;
    let mut info = CsrInfo {
        common_name: subj
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .unwrap_or("")
            .to_string(),
        organizations: subj
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(String::from))
            .collect(),
        ..Default::default()
    };
    if let Some(exts) = csr.requested_extensions() {
        for e in exts {
            if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = e {
                info.san_count += san.general_names.len();
                for n in &san.general_names {
                    use x509_parser::extensions::GeneralName;
                    match n {
                        GeneralName::DNSName(_) => info.dns_sans += 1,
                        GeneralName::IPAddress(_) => info.ip_sans += 1,
                        GeneralName::RFC822Name(_) => info.email_sans += 1,
                        GeneralName::URI(_) => info.uri_sans += 1,
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(info)
}

/// CN and O of a verified peer certificate.
pub fn cert_identity(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    let subj = c.subject();
    let cn = subj.iter_common_name().next()?.as_str().ok()?.to_string();
    let orgs = subj
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(String::from))
        .collect();
    Some((cn, orgs))
}

/// Validity window of a PEM certificate (for tests and assertions).
pub fn cert_validity(pem_text: &str) -> Option<(SystemTime, SystemTime)> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).ok()?;
    let c = p.parse_x509().ok()?;
    let nb = UNIX_EPOCH + Duration::from_secs(c.validity().not_before.timestamp().max(0) as u64);
    let na = UNIX_EPOCH + Duration::from_secs(c.validity().not_after.timestamp().max(0) as u64);
    Some((nb, na))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_csr_with_backdate_and_short_ttl() {
        let ca = Ca::generate().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "system:nodes");
        dn.push(DnType::CommonName, "system:node:n1");
        p.distinguished_name = dn;
        let csr = p.serialize_request(&key).unwrap().pem().unwrap();
        let info = parse_csr(csr.as_bytes()).unwrap();
        assert_eq!(info.common_name, "system:node:n1");
        assert_eq!(info.organizations, vec!["system:nodes"]);
        assert_eq!(info.san_count, 0);
        let cert = ca
            .sign_csr(
                &csr,
                Duration::from_secs(3600),
                Duration::from_secs(300),
                &["digital signature".into(), "client auth".into()],
            )
            .unwrap();
        let (nb, na) = cert_validity(&cert).unwrap();
        assert_eq!(na.duration_since(nb).unwrap().as_secs(), 3900);
        assert!(ca.pin().starts_with("sha256:") && ca.pin().len() == 71);
    }
}
