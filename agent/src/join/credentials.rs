//! The agent's state directory: what a join leaves behind, written atomically (temp file + rename)
//! so a crash at any line leaves either the old or the new file, never half of one.
//!
//! Layout (`state_dir`):
//! - `ca.crt`            the cluster CA, written only after discovery verified it;
//! - `pki/pending.key`   the key of a CSR in flight (0600); a restart reuses it, so it finds its CSR;
//! - `node.kubeconfig`   the node identity: server, CA, certificate and key embedded (0600). Its
//!   presence with a valid certificate means "joined": a restarted agent does not join again;
//! - `instance-id`       random id of this installation, to tell two machines claiming one name apart;
//! - `status.json`       the last status, for `keel-agent status`.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::join::csr::{self, CertInfo};

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CredentialsError + '_ {
    move |source| CredentialsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

use crate::files::write_atomic;

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// The node identity as loaded from `node.kubeconfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeCredentials {
    pub server: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub cert: CertInfo,
}

/// A kubeconfig with everything embedded, for the node identity (and for kubelet).
pub fn render_kubeconfig(
    server: &str,
    ca_pem: &str,
    user: &str,
    cert_pem: &str,
    key_pem: &str,
) -> String {
    let v = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "default", "cluster": {
            "server": server,
            "certificate-authority-data": STANDARD.encode(ca_pem),
        }}],
        "users": [{"name": user, "user": {
            "client-certificate-data": STANDARD.encode(cert_pem),
            "client-key-data": STANDARD.encode(key_pem),
        }}],
        "contexts": [{"name": "default", "context": {"cluster": "default", "user": user}}],
        "current-context": "default",
    });
    serde_yaml::to_string(&v).unwrap_or_default()
}

/// Reads back a kubeconfig written by [`render_kubeconfig`] (first cluster, first user).
pub fn parse_kubeconfig(path: &Path, text: &str) -> Result<NodeCredentials, CredentialsError> {
    let invalid = |reason: String| CredentialsError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let v: serde_json::Value = serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let cluster = &v["clusters"][0]["cluster"];
    let user = &v["users"][0]["user"];
    let field = |obj: &serde_json::Value, name: &str| -> Result<String, CredentialsError> {
        obj[name]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| invalid(format!("no {name}")))
    };
    let decode = |obj: &serde_json::Value, name: &str| -> Result<String, CredentialsError> {
        let bytes = STANDARD
            .decode(field(obj, name)?.trim())
            .map_err(|_| invalid(format!("{name} is not base64")))?;
        String::from_utf8(bytes).map_err(|_| invalid(format!("{name} is not PEM text")))
    };
    let cert_pem = decode(user, "client-certificate-data")?;
    let cert = csr::cert_info(&cert_pem).map_err(|e| invalid(e.to_string()))?;
    Ok(NodeCredentials {
        server: field(cluster, "server")?,
        ca_pem: decode(cluster, "certificate-authority-data")?,
        key_pem: decode(user, "client-key-data")?,
        cert_pem,
        cert,
    })
}

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn ca_file(&self) -> PathBuf {
        self.root.join("ca.crt")
    }

    pub fn node_kubeconfig(&self) -> PathBuf {
        self.root.join("node.kubeconfig")
    }

    pub fn pending_key_file(&self) -> PathBuf {
        self.root.join("pki").join("pending.key")
    }

    pub fn status_file(&self) -> PathBuf {
        self.root.join("status.json")
    }

    pub fn instance_id_file(&self) -> PathBuf {
        self.root.join("instance-id")
    }

    /// Makes the state dir private before anything is written to it: mode 0700 on Unix; on Windows a
    /// protected DACL (SYSTEM and Administrators, inherited by every file), read back and logged.
    pub fn prepare(&self) -> Result<(), CredentialsError> {
        self.ensure()?;
        #[cfg(windows)]
        {
            use crate::platform::windows::{protect_dir, PRIVATE_DIR_SDDL};
            let dacl = protect_dir(&self.root).map_err(io(&self.root))?;
            if dacl == PRIVATE_DIR_SDDL {
                tracing::info!(dir = %self.root.display(), %dacl, "state dir protected: SYSTEM and Administrators only");
            } else {
                // Set, yet the system reports another DACL (Wine keeps none on its files): say so.
                tracing::warn!(dir = %self.root.display(), asked = PRIVATE_DIR_SDDL, reported = %dacl, "state dir NOT verified private: the system reports another DACL than the one set");
            }
        }
        Ok(())
    }

    fn ensure(&self) -> Result<(), CredentialsError> {
        create_private_dir(&self.root.join("pki")).map_err(io(&self.root))
    }

    fn read_optional(path: &Path) -> Result<Option<String>, CredentialsError> {
        match std::fs::read_to_string(path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(path)(e)),
        }
    }

    pub fn load_ca(&self) -> Result<Option<String>, CredentialsError> {
        Self::read_optional(&self.ca_file())
    }

    pub fn save_ca(&self, pem: &str) -> Result<(), CredentialsError> {
        self.ensure()?;
        let p = self.ca_file();
        write_atomic(&p, pem.as_bytes(), false).map_err(io(&p))
    }

    pub fn load_pending_key(&self) -> Result<Option<String>, CredentialsError> {
        Self::read_optional(&self.pending_key_file())
    }

    pub fn save_pending_key(&self, pem: &str) -> Result<(), CredentialsError> {
        self.ensure()?;
        let p = self.pending_key_file();
        write_atomic(&p, pem.as_bytes(), true).map_err(io(&p))
    }

    pub fn remove_pending_key(&self) -> Result<(), CredentialsError> {
        let p = self.pending_key_file();
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&p)(e)),
            _ => Ok(()),
        }
    }

    /// A crash between writing the node kubeconfig and removing the pending key leaves a key that
    /// is already in use: remove it. A pending key for another certificate is a renewal in flight
    /// and stays, so the renewal resumes with its CSR.
    pub fn remove_pending_key_if_current(
        &self,
        creds: &NodeCredentials,
    ) -> Result<(), CredentialsError> {
        use rcgen::PublicKeyData;
        if let Some(pem) = self.load_pending_key()? {
            if csr::load_key(&pem).is_ok_and(|k| k.der_bytes() == creds.cert.public_key.as_slice())
            {
                self.remove_pending_key()?;
            }
        }
        Ok(())
    }

    pub fn load_node(&self) -> Result<Option<NodeCredentials>, CredentialsError> {
        let p = self.node_kubeconfig();
        match Self::read_optional(&p)? {
            Some(text) => parse_kubeconfig(&p, &text).map(Some),
            None => Ok(None),
        }
    }

    pub fn save_node(
        &self,
        server: &str,
        node: &str,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<(), CredentialsError> {
        self.ensure()?;
        let p = self.node_kubeconfig();
        let text = render_kubeconfig(server, ca_pem, &csr::common_name(node), cert_pem, key_pem);
        write_atomic(&p, text.as_bytes(), true).map_err(io(&p))
    }

    /// This installation's id, created on first use.
    pub fn instance_id(&self) -> Result<String, CredentialsError> {
        let p = self.instance_id_file();
        if let Some(id) = Self::read_optional(&p)? {
            let id = id.trim().to_string();
            if !id.is_empty() {
                return Ok(id);
            }
        }
        self.ensure()?;
        let id = {
            use rand::Rng;
            hex::encode(rand::rng().random::<[u8; 16]>())
        };
        write_atomic(&p, id.as_bytes(), false).map_err(io(&p))?;
        Ok(id)
    }

    /// Removes every credential (leave). The status file stays so `status` can say "left".
    pub fn remove_credentials(&self) -> Result<(), CredentialsError> {
        for p in [
            self.node_kubeconfig(),
            self.pending_key_file(),
            self.ca_file(),
            self.instance_id_file(),
        ] {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&p)(e)),
                _ => {}
            }
        }
        let _ = std::fs::remove_dir(self.root.join("pki"));
        Ok(())
    }

    /// Names of credential files present (tests and `leave` use it to prove nothing is left).
    pub fn credential_files(&self) -> Vec<PathBuf> {
        [
            self.node_kubeconfig(),
            self.pending_key_file(),
            self.ca_file(),
        ]
        .into_iter()
        .filter(|p| p.exists())
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(key: &rcgen::KeyPair, cn: &str) -> String {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.self_signed(key).unwrap().pem()
    }

    #[test]
    fn node_kubeconfig_round_trips_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path().join("keel"));
        let key = csr::new_key().unwrap();
        let cert = self_signed(&key, "system:node:w1");
        sd.save_node(
            "https://127.0.0.1:6443",
            "w1",
            "CA",
            &cert,
            &key.serialize_pem(),
        )
        .unwrap();
        let back = sd.load_node().unwrap().unwrap();
        assert_eq!(back.server, "https://127.0.0.1:6443");
        assert_eq!(back.ca_pem, "CA");
        assert_eq!(back.key_pem, key.serialize_pem());
        assert_eq!(back.cert.common_name, "system:node:w1");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(sd.node_kubeconfig())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            sd.save_pending_key("k").unwrap();
            let mode = std::fs::metadata(sd.pending_key_file())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = std::fs::metadata(sd.root()).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0);
        }
        sd.remove_credentials().unwrap();
        assert!(sd.credential_files().is_empty());
    }

    #[test]
    fn atomic_write_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        write_atomic(&p, b"one", false).unwrap();
        write_atomic(&p, b"two", true).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn instance_id_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path());
        let a = sd.instance_id().unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(sd.instance_id().unwrap(), a);
    }
}
