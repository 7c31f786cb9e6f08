//! Shared by the Services e2e tests: one bridge with the API test server (`api`), LB hosts, three
//! node hosts standing in for kubelet + kube-proxy (`node_sim.py`), and a client; keel-lb started
//! with a `services:` section; kubectl (the real one) drives the cluster.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use keel_e2e::netns::{wait_until, Proc, Topology};

pub const API: &str = "198.18.2.5";
pub const POOL_FIRST: &str = "198.18.2.100";
pub const POOL: &str = "198.18.2.100-198.18.2.103";
pub const POOL6: &str = "2001:db8:2::100-2001:db8:2::103";
pub const NODES: &[&str] = &["node1", "node2", "node3"];

pub fn host_addrs(host: &str) -> [String; 2] {
    let n = match host {
        "api" => 5,
        "lb1" => 11,
        "lb2" => 12,
        "node1" => 21,
        "node2" => 22,
        "node3" => 23,
        _ => 50,
    };
    [format!("198.18.2.{n}/24"), format!("2001:db8:2::{n}/64")]
}

pub fn ip4(host: &str) -> String {
    host_addrs(host)[0]
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

pub struct Lab {
    pub t: Topology,
    pub dir: tempfile::TempDir,
    pub api: Option<Proc>,
    nodes: Vec<Proc>,
}

impl Lab {
    pub fn new(name: &str, lbs: &[&str]) -> Lab {
        let mut t = Topology::new(name);
        t.bridge();
        for h in ["api", "client"].iter().chain(lbs).chain(NODES) {
            let a = host_addrs(h);
            t.host(h, &[&a[0], &a[1]]);
        }
        let dir = tempfile::tempdir().unwrap();
        let mut lab = Lab {
            t,
            dir,
            api: None,
            nodes: Vec::new(),
        };
        lab.start_api();
        lab
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    pub fn start_api(&mut self) {
        let _ = std::fs::remove_file(self.path("api/admin.kubeconfig"));
        let log = std::fs::File::create(self.path("api.log")).unwrap();
        let bin = keel_e2e::bin("keel-test-apiserver");
        let child = self
            .t
            .command("api", bin.to_str().unwrap())
            .args(["--listen", &format!("{API}:6443"), "--san", API, "--dir"])
            .arg(self.path("api"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.api = Some(Proc::from_child(child, "keel-test-apiserver".into()));
        assert!(
            wait_until(Duration::from_secs(20), || self
                .path("api/admin.kubeconfig")
                .exists()),
            "the API test server did not start"
        );
    }

    pub fn stop_api(&mut self) {
        if let Some(mut p) = self.api.take() {
            p.kill();
        }
    }

    /// kubectl (the real one) from the client host, as the cluster admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        let kc = self.path("api/admin.kubeconfig");
        let mut c = self.t.command("client", "kubectl");
        c.env("HOME", self.dir.path())
            .env_remove("KUBECONFIG")
            .arg("--kubeconfig")
            .arg(&kc)
            .args(["--request-timeout", "20s"])
            .args(args)
            .stdin(Stdio::null());
        c.output().unwrap()
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        assert!(
            o.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    /// `kubectl create -f -` with this manifest.
    pub fn create(&self, yaml: &str) {
        let p = self.path(&format!("m{}.yaml", rand_suffix()));
        std::fs::write(&p, yaml).unwrap();
        self.kubectl_ok(&["create", "--validate=false", "-f", p.to_str().unwrap()]);
    }

    pub fn apply_json(&self, kind: &str, ns: &str, name: &str) -> serde_json::Value {
        let out = self.kubectl_ok(&["get", kind, "-n", ns, name, "-o", "json"]);
        serde_json::from_str(&out).unwrap()
    }

    /// Registers the node hosts as Nodes (InternalIP = their address) and starts their stand-ins.
    pub fn nodes(&mut self, tcp: &[u16], udp: &[u16], hc: &[u16]) {
        for n in NODES {
            let [v4, v6] = host_addrs(n);
            let v4 = v4.split('/').next().unwrap();
            let v6 = v6.split('/').next().unwrap();
            self.create(&format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {n}\nstatus:\n  addresses:\n  - {{type: InternalIP, address: \"{v4}\"}}\n  - {{type: InternalIP, address: \"{v6}\"}}\n  - {{type: Hostname, address: {n}}}\n"
            ));
            std::fs::create_dir_all(self.path(n)).unwrap();
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/svc_lab/node_sim.py");
            let mut args: Vec<String> = vec![
                script.into(),
                n.to_string(),
                self.path(n).display().to_string(),
            ];
            for (flag, ports) in [("--tcp", tcp), ("--udp", udp), ("--hc", hc)] {
                if !ports.is_empty() {
                    args.push(flag.into());
                    args.extend(ports.iter().map(u16::to_string));
                }
            }
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            self.nodes.push(self.t.spawn(n, "python3", &a));
        }
        // Each stand-in answers kube-proxy's healthz once it is up.
        for n in NODES {
            let url = format!("http://{}:10256/healthz", ip4(n));
            assert!(
                wait_until(Duration::from_secs(20), || self
                    .t
                    .exec("client", &["curl", "-fsS", "--max-time", "1", &url])
                    .status
                    .success()),
                "node stand-in {n} did not start"
            );
        }
    }

    /// Sets the local endpoint count kube-proxy reports on `node` for healthCheckNodePort `port`.
    pub fn set_local_endpoints(&self, node: &str, port: u16, n: u32) {
        std::fs::write(self.path(&format!("{node}/hc-{port}")), n.to_string()).unwrap();
    }

    /// keel-lb's config for `host`: a VRRP router for the pool and a `services:` section.
    pub fn lb_config(&self, host: &str, priority: u8, extra_services: &str) -> PathBuf {
        let yaml = format!(
            "admin:\n  listen: 127.0.0.1:9100\nshutdown:\n  drain: 1s\n  handover_timeout: 2s\nvrrp:\n  routers:\n    - name: svc4\n      vrid: 71\n      interface: eth0\n      priority: {priority}\n      advert_interval: 100ms\n      vips: [198.18.2.99/24]\n    - name: svc6\n      vrid: 72\n      interface: eth0\n      priority: {priority}\n      advert_interval: 100ms\n      vips: [2001:db8:2::99/64]\nservices:\n  kubeconfig: {kc}\n  state_file: {state}\n  instance: {host}\n  writer_lease:\n    duration: 3s\n  health:\n    interval: 300ms\n    timeout: 300ms\n    rise: 1\n    fall: 2\n  address_pools:\n    - name: default\n      addresses: [\"{POOL}\", \"{POOL6}\"]\n      vrrp_routers: [svc4, svc6]\n{extra_services}",
            kc = self.path("api/admin.kubeconfig").display(),
            state = self.path(&format!("{host}-state/services.json")).display(),
        );
        let p = self.path(&format!("{host}.yaml"));
        std::fs::write(&p, yaml).unwrap();
        p
    }

    pub fn keel(&self, host: &str, priority: u8) -> Proc {
        self.keel_with(host, priority, "")
    }

    pub fn keel_with(&self, host: &str, priority: u8, extra: &str) -> Proc {
        let cfg = self.lb_config(host, priority, extra);
        self.spawn_keel(host, &cfg)
    }

    /// keel-lb in `host` with config `cfg`, logging (appended) to `<host>.log`.
    pub fn spawn_keel(&self, host: &str, cfg: &std::path::Path) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("{host}.log")))
            .unwrap();
        let bin = keel_e2e::bin("keel-lb");
        let child = self
            .t
            .command(host, bin.to_str().unwrap())
            .args(["run", "-c", cfg.to_str().unwrap()])
            .env("RUST_LOG", "info,keel_lb=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc::from_child(child, format!("keel-lb in {host}"))
    }

    pub fn log(&self, host: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{host}.log"))).unwrap_or_default()
    }

    /// One TCP request from the client to `ip:port`: the answering node's name, or None.
    pub fn tcp(&self, ip: &str, port: u16) -> Option<String> {
        let target = if ip.contains(':') {
            format!("TCP6:[{ip}]:{port},connect-timeout=1")
        } else {
            format!("TCP4:{ip}:{port},connect-timeout=1")
        };
        let o = self
            .t
            .exec("client", &["timeout", "3", "socat", "-T2", "-", &target]);
        let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
        (!s.is_empty()).then_some(s)
    }

    pub fn udp(&self, ip: &str, port: u16) -> Option<String> {
        let target = format!("UDP4:{ip}:{port}");
        let o = self
            .t
            .command("client", "timeout")
            .args(["3", "socat", "-T1", "-", &target])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                if let Some(mut i) = c.stdin.take() {
                    let _ = i.write_all(b"hi\n");
                }
                c.wait_with_output()
            })
            .ok()?;
        let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
        (!s.is_empty()).then_some(s)
    }

    /// Waits for `f` to return Some, up to `limit`; panics naming `what` with the LB logs.
    pub fn wait<T>(&self, what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if start.elapsed() > limit {
                panic!(
                    "{what}: not within {limit:?}\n--- lb1 /services ---\n{}\n--- lb1 ---\n{}\n--- lb2 ---\n{}\n--- api ---\n{}",
                    self.admin("lb1", "/services"),
                    tail(&self.log("lb1")),
                    tail(&self.log("lb2")),
                    tail(&std::fs::read_to_string(self.path("api.log")).unwrap_or_default())
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The Service's `status.loadBalancer.ingress[*].ip`.
    pub fn ingress(&self, ns: &str, name: &str) -> Vec<String> {
        let o = self.kubectl(&["get", "svc", "-n", ns, name, "-o", "json"]);
        if !o.status.success() {
            return vec![];
        }
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v.pointer("/status/loadBalancer/ingress")
            .and_then(|i| i.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["ip"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Reasons of the Events about Service `ns/name` (events.k8s.io/v1, as kube's recorder writes).
    pub fn event_reasons(&self, ns: &str, name: &str) -> Vec<String> {
        let o = self.kubectl(&["get", "events.v1.events.k8s.io", "-n", ns, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e.pointer("/regarding/name").and_then(|n| n.as_str()) == Some(name))
                    .filter_map(|e| e["reason"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn admin(&self, host: &str, path: &str) -> String {
        let url = format!("http://127.0.0.1:9100{path}");
        String::from_utf8_lossy(
            &self
                .t
                .exec(host, &["curl", "-sS", "--max-time", "5", &url])
                .stdout,
        )
        .to_string()
    }

    pub fn has_addr(&self, host: &str, ip: &str) -> bool {
        let out = self
            .t
            .exec(host, &["ip", "-o", "addr", "show", "dev", "eth0"]);
        String::from_utf8_lossy(&out.stdout).contains(&format!(" {ip}/"))
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// A Service manifest: `ports` as (name, protocol, port, nodePort).
pub fn service(
    ns: &str,
    name: &str,
    ports: &[(&str, &str, u16, u16)],
    extra_spec: &str,
    annotations: &str,
) -> String {
    let mut p = String::new();
    for (n, proto, port, np) in ports {
        p.push_str(&format!(
            "  - {{name: {n}, protocol: {proto}, port: {port}, targetPort: {port}, nodePort: {np}}}\n"
        ));
    }
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n  annotations: {{{annotations}}}\nspec:\n  type: LoadBalancer\n  selector: {{app: {name}}}\n{extra_spec}  ports:\n{p}"
    )
}

impl Lab {
    /// keel-lb's least-privilege identity: applies configs/kubernetes/keel-lb-rbac.yaml with kubectl
    /// and writes a kubeconfig with the admin one's server and CA and a 24 h token of ServiceAccount
    /// kube-system/keel-lb (`kubectl create token keel-lb -n kube-system --duration 24h`).
    pub fn keel_lb_kubeconfig(&self) -> PathBuf {
        let yaml = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../configs/kubernetes/keel-lb-rbac.yaml"
        );
        self.kubectl_ok(&["apply", "-f", yaml]);
        let token = self
            .kubectl_ok(&[
                "create",
                "token",
                "keel-lb",
                "-n",
                "kube-system",
                "--duration",
                "24h",
            ])
            .trim()
            .to_string();
        assert!(!token.is_empty(), "kubectl create token printed no token");
        let admin = std::fs::read_to_string(self.path("api/admin.kubeconfig")).unwrap();
        let mut kc: serde_yaml::Value = serde_yaml::from_str(&admin).unwrap();
        let users = kc["users"].as_sequence_mut().unwrap();
        assert_eq!(users.len(), 1, "the admin kubeconfig has one user");
        let mut user = serde_yaml::Mapping::new();
        user.insert("token".into(), token.into());
        users[0]["user"] = serde_yaml::Value::Mapping(user);
        let p = self.path("keel-lb.kubeconfig");
        std::fs::write(&p, serde_yaml::to_string(&kc).unwrap()).unwrap();
        p
    }

    /// [`Lab::keel`] with `services.kubeconfig` set to `kubeconfig` (e.g. [`Lab::keel_lb_kubeconfig`]).
    pub fn keel_with_kubeconfig(
        &self,
        host: &str,
        priority: u8,
        kubeconfig: &std::path::Path,
    ) -> Proc {
        let admin = format!(
            "  kubeconfig: {}\n",
            self.path("api/admin.kubeconfig").display()
        );
        let yaml = std::fs::read_to_string(self.lb_config(host, priority, "")).unwrap();
        assert!(yaml.contains(&admin), "{yaml}");
        let yaml = yaml.replace(&admin, &format!("  kubeconfig: {}\n", kubeconfig.display()));
        let cfg = self.path(&format!("{host}-kubeconfig.yaml"));
        std::fs::write(&cfg, yaml).unwrap();
        self.spawn_keel(host, &cfg)
    }
}
