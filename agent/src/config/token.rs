//! The join secrets as the config holds them: a bootstrap token and CA pins (parsed, never logged).

use std::fmt;

use sha2::{Digest, Sha256};

/// A bootstrap token `[a-z0-9]{6}.[a-z0-9]{16}`; the secret half never appears in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    pub id: String,
    secret: String,
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BootstrapToken({}.<redacted>)", self.id)
    }
}

impl BootstrapToken {
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let ok_part = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        match t.split_once('.') {
            Some((id, secret)) if ok_part(id, 6) && ok_part(secret, 16) => Ok(Self {
                id: id.to_string(),
                secret: secret.to_string(),
            }),
            _ => Err("bootstrap token must match [a-z0-9]{6}.[a-z0-9]{16}".to_string()),
        }
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The bearer token as sent to the API server.
    pub fn bearer(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

/// A CA pin `sha256:<64 hex>`: SHA-256 of the CA certificate's DER SubjectPublicKeyInfo.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pin(pub [u8; 32]);

impl Pin {
    pub fn parse(text: &str) -> Result<Self, String> {
        let hexpart = text.strip_prefix("sha256:").ok_or_else(|| {
            format!("CA pin {text:?} must be sha256:<64 hex digits> (other hash types are not supported)")
        })?;
        let bytes = hex::decode(hexpart)
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| format!("CA pin {text:?} must be sha256: followed by 64 hex digits"))?;
        let mut out = [0u8; 32];
        out.copy_from_slice(&bytes);
        Ok(Pin(out))
    }

    /// The pin of a DER certificate.
    pub fn of_cert(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("CA certificate does not parse: {e}"))?;
        Ok(Pin(
            Sha256::digest(cert.tbs_certificate.subject_pki.raw).into()
        ))
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
