//! Shared helpers: a server per test, kubectl and curl as independent clients, bounded waits.
#![allow(dead_code)]

use keel_test_apiserver::{Options, TestServer};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};
use tokio::process::Command;

/// The default `kubectl` on PATH (or `$KEEL_KUBECTL`).
pub static KUBECTL: LazyPath = LazyPath::new(|| kubectl_default().display().to_string());
/// The oldest kubectl minor listed in tests/kubectl-versions.
pub static KUBECTL_OLD: LazyPath = LazyPath::new(|| kubectl_minor(0));
/// The newest kubectl minor listed in tests/kubectl-versions.
pub static KUBECTL_NEW: LazyPath = LazyPath::new(|| kubectl_minor(usize::MAX));

pub type LazyPath = std::sync::LazyLock<String>;

/// Finds `kubectl`: `$KEEL_KUBECTL` if set, else the first executable `kubectl` on PATH. Panics naming
/// where it looked, so a machine without kubectl fails these tests instead of skipping them.
pub fn kubectl_default() -> PathBuf {
    if let Some(p) = std::env::var_os("KEEL_KUBECTL") {
        let p = PathBuf::from(p);
        assert!(
            is_executable(&p),
            "KEEL_KUBECTL={} is not an executable file",
            p.display()
        );
        return p;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| is_executable(p))
        .unwrap_or_else(|| {
            panic!(
                "kubectl not found on PATH ({}); install it (see .ci/run) or set KEEL_KUBECTL",
                path.to_string_lossy()
            )
        })
}

/// The minors listed in tests/kubectl-versions, oldest first.
pub fn kubectl_versions() -> Vec<String> {
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kubectl-versions");
    let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    let mut v: Vec<(u32, u32, String)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (maj, min) = l
                .split_once('.')
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                .unwrap_or_else(|| panic!("{}: {l:?} is not <major>.<minor>", f.display()));
            (maj, min, l.to_string())
        })
        .collect();
    assert!(!v.is_empty(), "{} lists no kubectl versions", f.display());
    v.sort();
    v.into_iter().map(|(_, _, s)| s).collect()
}

/// `kubectl.<minor>` beside the resolved default kubectl, for the `i`th listed minor (clamped).
fn kubectl_minor(i: usize) -> String {
    let versions = kubectl_versions();
    kubectl_for(&versions[i.min(versions.len() - 1)])
}

/// `kubectl.<minor>` (e.g. `kubectl.1.27`) in the directory of the resolved default kubectl; panics
/// naming the missing path.
pub fn kubectl_for(minor: &str) -> String {
    let default = kubectl_default();
    let dir = std::fs::canonicalize(&default)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| panic!("cannot resolve {}", default.display()));
    let p = dir.join(format!("kubectl.{minor}"));
    assert!(
        is_executable(&p),
        "{} is missing: tests/kubectl-versions asks for kubectl {minor} beside {}",
        p.display(),
        default.display()
    );
    p.display().to_string()
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

pub struct Env {
    pub srv: TestServer,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub async fn start() -> Env {
        Self::with(Options::default()).await
    }

    pub async fn with(opts: Options) -> Env {
        let srv = TestServer::start(opts).await.unwrap();
        let dir = tempfile::Builder::new()
            .prefix("keel-apisrv-test")
            .tempdir()
            .unwrap();
        srv.write_admin_kubeconfig(&dir.path().join("admin.kubeconfig"))
            .unwrap();
        std::fs::write(dir.path().join("ca.crt"), srv.ca_pem()).unwrap();
        Env { srv, dir }
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    /// Runs `kubectl` (binary `bin`) with `kubeconfig`, a private HOME (discovery cache) and a time bound.
    pub async fn kubectl_as(&self, bin: &str, kubeconfig: &Path, args: &[&str]) -> Output {
        let mut c = Command::new(bin);
        c.env("HOME", self.dir.path())
            .env_remove("KUBECONFIG")
            .arg("--kubeconfig")
            .arg(kubeconfig);
        c.args(args).kill_on_drop(true);
        match tokio::time::timeout(Duration::from_secs(120), c.output()).await {
            Ok(o) => o.unwrap(),
            Err(_) => panic!("kubectl {args:?} did not finish within 120 s"),
        }
    }

    pub async fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(KUBECTL.as_str(), &self.path("admin.kubeconfig"), args)
            .await
    }

    /// Runs curl against the server with CA verification; returns (status, body).
    pub async fn curl(&self, args: &[&str], path: &str) -> (u16, String) {
        let url = format!("{}{}", self.srv.url(), path);
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "20", "--cacert"])
            .arg(self.path("ca.crt"));
        c.args(args)
            .args(["-w", "\n%{http_code}", &url])
            .kill_on_drop(true);
        let o = tokio::time::timeout(Duration::from_secs(30), c.output())
            .await
            .unwrap()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    pub async fn curl_admin(&self, args: &[&str], path: &str) -> (u16, String) {
        let h = format!("Authorization: Bearer {}", self.srv.admin_token());
        let mut a = vec!["-H", h.as_str()];
        a.extend_from_slice(args);
        self.curl(&a, path).await
    }
}

pub fn ok(o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "command failed: stdout={out} stderr={}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

pub fn err(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "command unexpectedly succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Polls `f` every 100 ms until it returns Some or `limit` passes.
pub async fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn node_json(name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
                            "lastHeartbeatTime": "2025-01-01T00:00:00Z", "lastTransitionTime": "2025-01-01T00:00:00Z"}],
            "addresses": [{"type": "InternalIP", "address": "198.18.0.10"}, {"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": "v1.33.0", "osImage": "Keel Linux", "kernelVersion": "6.1.0",
                         "containerRuntimeVersion": "containerd://1.7.0", "operatingSystem": "linux", "architecture": "amd64",
                         "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": ""}
        }
    })
}

pub fn ready_pod(name: &str, node: &str, labels: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                   "containerStatuses": [{"name": "c", "ready": true, "restartCount": 0, "image": "pause", "imageID": "", "started": true, "state": {"running": {}}}]}
    })
}

/// A PEM CSR with the given subject and optional DNS SAN.
pub fn csr_pem(cn: &str, orgs: &[&str], dns_san: Option<&str>) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p =
        rcgen::CertificateParams::new(dns_san.map(|d| vec![d.to_string()]).unwrap_or_default())
            .unwrap();
    let mut dn = rcgen::DistinguishedName::new();
    for o in orgs {
        dn.push(rcgen::DnType::OrganizationName, *o);
    }
    dn.push(rcgen::DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.serialize_request(&key).unwrap().pem().unwrap()
}

pub fn csr_object(name: &str, pem: &str, usages: &[&str]) -> serde_json::Value {
    use base64::Engine;
    serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {"request": base64::engine::general_purpose::STANDARD.encode(pem), "signerName": "kubernetes.io/kube-apiserver-client-kubelet", "usages": usages}
    })
}
