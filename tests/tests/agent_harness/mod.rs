//! What the agent's end-to-end tests share: a test API server, agent configs in a temp dir, the
//! built `keel-agent` binary run as a child process (killed on drop), kubectl with the admin
//! identity, and bounded waits.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use keel_test_apiserver::{Options, TestServer};
use serde_json::Value;

pub struct Cluster {
    pub server: TestServer,
    pub dir: tempfile::TempDir,
    pub admin: PathBuf,
}

impl Cluster {
    pub async fn start() -> Cluster {
        let server = TestServer::start(Options::default())
            .await
            .expect("test server");
        let dir = tempfile::tempdir().expect("tempdir");
        let admin = dir.path().join("admin.kubeconfig");
        server
            .write_admin_kubeconfig(&admin)
            .expect("admin kubeconfig");
        Cluster { server, dir, admin }
    }

    /// Writes an agent config for node `name` (state in `<tmp>/<name>-<tag>/state`) and returns it.
    pub fn agent(&self, name: &str, token: &str, extra: &str) -> AgentSetup {
        self.agent_with(name, token, &self.server.ca_pin(), extra)
    }

    pub fn agent_with(&self, name: &str, token: &str, pin: &str, extra: &str) -> AgentSetup {
        let tag: u32 = rand::random();
        let dir = self.dir.path().join(format!("{name}-{tag:08x}"));
        std::fs::create_dir_all(&dir).expect("agent dir");
        let state = dir.join("state");
        let token_file = dir.join("token");
        std::fs::write(&token_file, token).expect("token file");
        let setup = AgentSetup {
            name: name.to_string(),
            dir: dir.clone(),
            config: dir.join("agent.yaml"),
            state,
            token_file,
            server_url: self.server.url(),
            pin: pin.to_string(),
            extra: extra.to_string(),
        };
        setup.write_config();
        setup
    }

    pub fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        kubectl(&self.admin, args)
    }

    pub fn node_json(&self, name: &str) -> Option<Value> {
        let (ok, out, _) = self.kubectl(&["get", "node", name, "-o", "json"]);
        ok.then(|| serde_json::from_str(&out).expect("node json"))
    }

    pub fn lease(&self, name: &str) -> Option<Value> {
        self.server.get(&format!(
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
        ))
    }

    /// Every CSR in the cluster (each test has its own server), via kubectl.
    pub fn csrs(&self) -> Vec<Value> {
        let (ok, out, err) = self.kubectl(&["get", "csr", "-o", "json"]);
        assert!(ok, "kubectl get csr: {err}");
        let v: Value = serde_json::from_str(&out).expect("csr list");
        v["items"].as_array().cloned().unwrap_or_default()
    }
}

pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--request-timeout", "20s"])
        .args(args)
        .output()
        .expect("run kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub struct AgentSetup {
    pub name: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub state: PathBuf,
    pub token_file: PathBuf,
    pub server_url: String,
    pub pin: String,
    pub extra: String,
}

impl AgentSetup {
    pub fn write_config(&self) {
        let text = format!(
            "cluster:\n  server: {}\n  token_file: {}\n  ca_pins: [\"{}\"]\n  discovery_timeout: 60s\n  csr_timeout: 60s\nnode:\n  name: {}\n  pool: pool-a\n  labels: {{example.com/team: infra}}\n  taints: [{{key: dedicated, value: infra, effect: NoSchedule}}]\nstate_dir: {}\n{}",
            self.server_url,
            self.token_file.display(),
            self.pin,
            self.name,
            self.state.display(),
            self.extra
        );
        std::fs::write(&self.config, text).expect("write agent config");
    }

    pub fn set_token(&self, token: &str) {
        std::fs::write(&self.token_file, token).expect("token file");
    }

    pub fn node_kubeconfig(&self) -> PathBuf {
        self.state.join("node.kubeconfig")
    }

    /// Credential files present in the state dir.
    pub fn credentials(&self) -> Vec<PathBuf> {
        ["node.kubeconfig", "ca.crt", "pki/pending.key"]
            .iter()
            .map(|f| self.state.join(f))
            .filter(|p| p.exists())
            .collect()
    }

    pub fn spawn(&self) -> AgentProc {
        self.spawn_env(&[])
    }

    /// `keel-agent run` with extra environment variables.
    pub fn spawn_env(&self, env: &[(&str, &Path)]) -> AgentProc {
        let log = self
            .dir
            .join(format!("agent-{}.log", rand::random::<u32>()));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(keel_e2e::bin("keel-agent"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env(
                "KEEL_LOG",
                "info,keel_agent=debug,kube_client::client::builder=off",
            )
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn keel-agent");
        AgentProc { child, log }
    }

    /// Runs `keel-agent <cmd> --config` to completion (bounded).
    pub async fn command(&self, cmd: &str, timeout: Duration) -> (ExitStatus, String) {
        self.command_with(cmd, &[], timeout).await
    }

    pub async fn command_with(
        &self,
        cmd: &str,
        args: &[&str],
        timeout: Duration,
    ) -> (ExitStatus, String) {
        let mut p = self.spawn_cmd(cmd, args);
        let status = p.wait_exit(timeout).await.unwrap_or_else(|| {
            panic!(
                "keel-agent {cmd} did not exit within {timeout:?}:\n{}",
                p.log_text()
            )
        });
        (status, p.log_text())
    }

    fn spawn_cmd(&self, cmd: &str, args: &[&str]) -> AgentProc {
        let log = self
            .dir
            .join(format!("agent-{cmd}-{}.log", rand::random::<u32>()));
        let file = std::fs::File::create(&log).expect("log file");
        let file2 = file.try_clone().expect("log file");
        let child = Command::new(keel_e2e::bin("keel-agent"))
            .arg(cmd)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("NO_COLOR", "1")
            .stdout(file2)
            .stderr(file)
            .spawn()
            .expect("spawn keel-agent");
        AgentProc { child, log }
    }
}

/// A running agent; killed (SIGKILL) on drop so a failing test leaves nothing behind.
pub struct AgentProc {
    pub child: Child,
    pub log: PathBuf,
}

impl AgentProc {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` every 200 ms until it returns true or `timeout` passes; panics with `what` and the
/// extra context text.
pub async fn wait_until(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "timed out after {timeout:?} waiting for {what}\n{}",
        context()
    );
}

pub fn label<'a>(node: &'a Value, key: &str) -> Option<&'a str> {
    node["metadata"]["labels"][key].as_str()
}
