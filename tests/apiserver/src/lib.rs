//! keel-test-apiserver: a Kubernetes API server for tests, faithful to upstream on what Keel uses:
//! real TLS, authentication (anonymous, bearer, bootstrap and service-account tokens, client
//! certificates), RBAC with the Node authorizer and NodeRestriction, cluster-info with JWS signatures,
//! CSR approval and signing, watches with bookmarks, evictions with PDBs, and fault injection.
//!
//! Where it deviates from upstream (know these before relying on the server in a test):
//! - RBAC grants the union of kubeadm's roles and bindings, kept as fixed data (rbac.rs; bindings may
//!   name those roles but they are not listed as objects, and no other bootstrap role such as
//!   `view`/`edit`/`admin` exists) and the stored `rbac.authorization.k8s.io/v1` objects; no
//!   aggregated ClusterRoles (`aggregationRule` is stored, never filled in) and no escalation or
//!   `bind` checks on writes of roles and bindings;
//! - service-account tokens (TokenRequest, `kubectl create token`) are opaque random strings the
//!   server remembers, not signed JWTs, so they are good for this server only and lost when it
//!   exits; no token Secrets (`kubernetes.io/service-account-token`) are filled in, and
//!   `--service-account-extend-token-expiration` does not apply;
//! - the Node authorizer (`AuthorizeNodeWithSelectors`, nodeauthz.rs) reads its graph from pods
//!   (bound pods and the secrets, configmaps, PVCs and service accounts they reference), so no PVs,
//!   ResourceClaims, VolumeAttachments or ResourceSlices; SelfSubjectReview has no `extra`
//!   (upstream adds a credential-id for certificates and service-account tokens);
//! - pods without finalizers are deleted at once (no graceful deletion; a pod that finalizers keep
//!   gets `deletionGracePeriodSeconds: 0`); a PDB's expected count is its matching pods;
//! - no garbage collector: `propagationPolicy` adds no `orphan`/`foregroundDeletion` finalizers; the
//!   namespace controller runs inside the write that makes it due, and `namespaces/finalize` is not
//!   served;
//! - Services: the ClusterIPs and NodePorts in use are read from the stored Services (no
//!   ServiceCIDR/IPAddress objects); `default/kubernetes` has no EndpointSlice; no core/v1 Endpoints;
//! - events.k8s.io/v1 Events share core/v1's storage (eventconv.rs) but server-side apply through
//!   events.k8s.io records managedFields in that version's field names; neither version validates
//!   Event fields (upstream requires e.g. eventTime, action and reportingController in v1);
//! - field selectors accept any dotted path; lists ignore `resourceVersion`/`resourceVersionMatch`;
//! - watches: no `sendInitialEvents`; bookmarks every 5 s by default (upstream about 1 min); one global
//!   history window of 50,000 events;
//! - server-side apply and managedFields follow structured-merge-diff on JSON, with list types from
//!   a fixed table (fieldset.rs; unlisted lists are atomic) and the merge itself done as a strategic
//!   merge; reset fields are approximated as `status` (main resource) and `spec` (status subresource);
//!   no cap of 10 Update entries, no last-applied-configuration interplay (lastAppliedManager);
//! - validation covers object metadata, names per kind, node taints/podCIDRs/providerID/addresses,
//!   Lease spec and CSRs (validation.rs) and Service spec (services.rs); other spec fields are not
//!   validated, and wrongly typed fields are refused (400) for Lease spec only;
//! - `/openapi` schemas come from k8s-openapi: list kinds get a generic description, IntOrString and
//!   Quantity lack v3's `anyOf`; no deprecated `/watch/` paths and no v3 documents for `api`, `apis`,
//!   `apis/<group>`; v3 only as JSON (406 when only protobuf is acceptable); unknown-field paths index
//!   lists as `[i]` (structured-merge-diff prints `[key="…"]` for map lists); duplicate keys are only
//!   found in JSON bodies; operation and parameter descriptions are short forms of upstream's;
//! - request bodies are JSON, except the protobuf bodies kubectl sends for CSR approval, eviction and
//!   `kubectl create service|namespace|configmap|secret` (other kinds' protobuf bodies are only read
//!   for their metadata);
//! - CSR validation covers the kubelet client signer only (no CertificateSubjectRestriction).

pub mod apply;
pub mod auth;
pub mod clock;
pub mod controllers;
mod dryrun;
pub mod eventconv;
pub mod faults;
pub mod field;
pub mod fieldset;
pub mod fieldvalidation;
pub mod finalizers;
mod handler;
pub mod ipalloc;
pub mod nodeauthz;
pub mod noderestriction;
pub mod openapi;
mod openapi_proto;
pub mod patch;
pub mod patch_meta;
pub mod pki;
pub mod portalloc;
mod proto;
pub mod rbac;
pub mod resources;
mod reviews;
pub mod selectors;
mod server;
pub mod serviceaccounts;
pub mod services;
pub mod status;
pub mod store;
mod strategy;
pub mod table;
pub mod validation;
mod watch;

pub use controllers::CsrPolicy;
pub use faults::Faults;

use anyhow::Context;
use controllers::Settings;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use store::Store;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen; port 0 picks a free port (kept across `restart`).
    pub bind: SocketAddr,
    /// Extra serving certificate SANs (IP addresses or DNS names).
    pub extra_sans: Vec<String>,
    /// Signer duration for CSRs (`--cluster-signing-duration`); `expirationSeconds` may shorten it.
    pub cert_duration: Duration,
    /// Auto-approve well-formed kubelet client CSRs (true) or deny them (false).
    pub approve_csrs: bool,
    /// `--service-cluster-ip-range`: one CIDR, or two of different families (dual-stack); the
    /// first is the default family. ClusterIPs are only strings in objects here.
    pub service_cluster_ip_ranges: Vec<String>,
    /// `--service-node-port-range`.
    pub service_node_port_range: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            extra_sans: Vec::new(),
            cert_duration: Duration::from_secs(3600),
            approve_csrs: true,
            service_cluster_ip_ranges: services::DEFAULT_CIDRS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            service_node_port_range: services::DEFAULT_NODE_PORTS.into(),
        }
    }
}

/// One request as the server saw it (for counting API cost per identity).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: String,
    pub user: String,
    pub status: u16,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, ... ("" for non-resource paths).
    pub verb: String,
}

pub(crate) struct State {
    pub store: Mutex<Store>,
    pub ca: Arc<pki::Ca>,
    pub tokens: auth::Tokens,
    pub faults: Faults,
    pub log: Mutex<Vec<RequestRecord>>,
    pub settings: Mutex<Settings>,
    pub addr: SocketAddr,
    /// A dry-run request's private copy (crate::dryrun): controllers do not run.
    pub dry_run: bool,
    /// The `AuthorizeNodeWithSelectors` feature gate (default on, as in v1.33).
    pub node_selectors: std::sync::atomic::AtomicBool,
    pub services: services::Config,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl State {
    pub fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    pub fn settings(&self) -> Settings {
        lock(&self.settings).clone()
    }

    pub fn url(&self) -> String {
        match self.addr {
            SocketAddr::V4(a) => format!("https://{a}"),
            SocketAddr::V6(a) => format!("https://[{}]:{}", a.ip(), a.port()),
        }
    }

    pub fn record(&self, r: RequestRecord) {
        lock(&self.log).push(r);
    }

    /// Runs the in-process controllers affected by a write to `group/resource` in `ns`.
    pub fn after_write(
        &self,
        store: &mut Store,
        group: &str,
        resource: &str,
        ns: &str,
        name: &str,
    ) {
        if self.dry_run {
            return;
        }
        match (group, resource) {
            ("", "secrets") if ns == "kube-system" => controllers::bootstrap_signer(store),
            ("", "configmaps") if ns == "kube-public" && name == "cluster-info" => {
                controllers::bootstrap_signer(store)
            }
            ("certificates.k8s.io", "certificatesigningrequests") => {
                controllers::csr_controllers(store, &self.ca, &self.settings(), name)
            }
            ("", "pods") | ("policy", "poddisruptionbudgets") => controllers::disruption(store, ns),
            ("", "namespaces") => serviceaccounts::ensure_default(store, name),
            ("", "serviceaccounts") if name == "default" => {
                serviceaccounts::ensure_default(store, ns)
            }
            _ => {}
        }
        // The namespace controller: a terminating namespace loses its content, then itself.
        let ns = if resource == "namespaces" { name } else { ns };
        if !ns.is_empty() {
            controllers::namespace_deleter(store, ns);
        }
    }
}

/// The kubeconfig kubeadm puts in `cluster-info` (clientcmd's serialisation of a Config with one
/// nameless cluster).
fn cluster_info_kubeconfig(url: &str, ca_pem: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: {url}\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\nkind: Config\npreferences: {{}}\nusers: null\n"
    )
}

fn random_token(len: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| CHARS[rand::random_range(0..CHARS.len())] as char)
        .collect()
}

struct Runner {
    stop: CancellationToken,
    task: JoinHandle<()>,
    ticker: JoinHandle<()>,
}

pub struct TestServer {
    state: Arc<State>,
    tls: Arc<rustls::ServerConfig>,
    runner: tokio::sync::Mutex<Option<Runner>>,
}

impl TestServer {
    pub async fn start(opts: Options) -> anyhow::Result<TestServer> {
        let services = services::Config::new(
            &opts.service_cluster_ip_ranges,
            &opts.service_node_port_range,
        )
        .map_err(|e| anyhow::anyhow!("service ranges: {e}"))?;
        let ca = pki::Ca::generate().context("generating the test CA")?;
        let listener = server::bind(opts.bind).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            store: Mutex::new(Store::new()),
            ca: Arc::new(ca),
            tokens: auth::Tokens {
                admin: random_token(32),
                privileged: random_token(32),
                issued: Default::default(),
            },
            faults: Faults::default(),
            log: Mutex::new(Vec::new()),
            settings: Mutex::new(Settings {
                csr_policy: if opts.approve_csrs {
                    CsrPolicy::Approve
                } else {
                    CsrPolicy::Deny
                },
                cert_duration: opts.cert_duration,
                cert_backdate: Duration::from_secs(300),
                bookmark_interval: Duration::from_secs(5),
            }),
            addr,
            dry_run: false,
            node_selectors: std::sync::atomic::AtomicBool::new(true),
            services,
        });
        seed(&state);
        let tls = server::tls_config(&state, &opts.extra_sans)?;
        let ts = TestServer {
            state,
            tls,
            runner: tokio::sync::Mutex::new(None),
        };
        *ts.runner.lock().await = Some(ts.spawn(listener));
        tracing::info!(url = %ts.url(), "test API server listening");
        Ok(ts)
    }

    fn spawn(&self, listener: tokio::net::TcpListener) -> Runner {
        let stop = CancellationToken::new();
        let task = tokio::spawn(server::serve(
            self.state.clone(),
            listener,
            self.tls.clone(),
            stop.clone(),
        ));
        let state = self.state.clone();
        let tick_stop = stop.clone();
        let ticker = tokio::spawn(async move {
            let mut iv = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = tick_stop.cancelled() => return,
                    _ = iv.tick() => {
                        let mut s = state.store();
                        controllers::token_cleaner(&mut s);
                        controllers::bootstrap_signer(&mut s);
                    }
                }
            }
        });
        Runner { stop, task, ticker }
    }

    pub fn url(&self) -> String {
        self.state.url()
    }

    pub fn addr(&self) -> SocketAddr {
        self.state.addr
    }

    pub fn ca_pem(&self) -> String {
        self.state.ca.cert_pem.clone()
    }

    /// `sha256:<hex>` of the CA certificate's SubjectPublicKeyInfo.
    pub fn ca_pin(&self) -> String {
        self.state.ca.pin()
    }

    pub fn admin_token(&self) -> String {
        self.state.tokens.admin.clone()
    }

    /// Bearer token of `system:serviceaccount:kube-system:keel-taint-manager` (may patch nodes and their taints).
    pub fn privileged_token(&self) -> String {
        self.state.tokens.privileged.clone()
    }

    pub fn write_admin_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        write_kubeconfig(
            path,
            &self.url(),
            &self.ca_pem(),
            &format!("    token: {}\n", self.admin_token()),
        )
    }

    /// Writes a kubeconfig authenticating with `token` (any bearer or bootstrap token).
    pub fn write_token_kubeconfig(&self, path: &Path, token: &str) -> anyhow::Result<()> {
        write_kubeconfig(
            path,
            &self.url(),
            &self.ca_pem(),
            &format!("    token: {token}\n"),
        )
    }

    /// A client certificate signed by the CA (CN = user, O = groups): `(cert_pem, key_pem)`.
    pub fn issue_client_cert(
        &self,
        cn: &str,
        groups: &[&str],
        valid_for: Duration,
    ) -> anyhow::Result<(String, String)> {
        let i = self.state.ca.client_cert(cn, groups, valid_for)?;
        Ok((i.cert_pem, i.key_pem))
    }

    /// Writes a kubeconfig authenticating with a fresh client certificate for `cn`/`groups`.
    pub fn write_cert_kubeconfig(
        &self,
        path: &Path,
        cn: &str,
        groups: &[&str],
    ) -> anyhow::Result<()> {
        use base64::Engine;
        let (cert, key) = self.issue_client_cert(cn, groups, Duration::from_secs(86400))?;
        let e = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        write_kubeconfig(
            path,
            &self.url(),
            &self.ca_pem(),
            &format!(
                "    client-certificate-data: {}\n    client-key-data: {}\n",
                e(&cert),
                e(&key)
            ),
        )
    }

    /// Creates a bootstrap token Secret (authentication + signing, kubeadm's extra group) valid for
    /// `ttl`, and signs cluster-info with it. Returns `"<id>.<secret>"`.
    pub fn create_bootstrap_token(&self, ttl: Duration) -> String {
        let id = random_token(6);
        let secret = random_token(16);
        let expiration = clock::rfc3339(clock::now() + ttl);
        self.put_bootstrap_token(&id, &secret, Some(&expiration), true, true);
        format!("{id}.{secret}")
    }

    /// Writes a bootstrap token Secret with full control over its fields.
    pub fn put_bootstrap_token(
        &self,
        id: &str,
        secret: &str,
        expiration: Option<&str>,
        authentication: bool,
        signing: bool,
    ) {
        let mut data = json!({
            "token-id": id,
            "token-secret": secret,
            "usage-bootstrap-authentication": authentication.to_string(),
            "usage-bootstrap-signing": signing.to_string(),
            "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token",
            "description": "keel-test-apiserver token",
        });
        if let Some(e) = expiration {
            data["expiration"] = json!(e);
        }
        self.put(
            &format!("/api/v1/namespaces/kube-system/secrets/bootstrap-token-{id}"),
            json!({"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
                   "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
                   "stringData": data}),
        );
    }

    pub fn faults(&self) -> Faults {
        self.state.faults.clone()
    }

    /// Drops every connection and listens again on the same address with the same state.
    pub async fn restart(&self) -> anyhow::Result<()> {
        let mut g = self.runner.lock().await;
        if let Some(r) = g.take() {
            r.stop.cancel();
            let _ = r.task.await;
            let _ = r.ticker.await;
        }
        // The port may take a moment to be free again.
        let mut last = None;
        for _ in 0..100 {
            match server::bind(self.state.addr).await {
                Ok(l) => {
                    *g = Some(self.spawn(l));
                    tracing::info!(url = %self.url(), "test API server restarted");
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Err(anyhow::anyhow!("rebinding {}: {:?}", self.state.addr, last))
    }

    /// Stops serving (connections are refused) until `restart`.
    pub async fn stop(&self) {
        if let Some(r) = self.runner.lock().await.take() {
            r.stop.cancel();
            let _ = r.task.await;
            let _ = r.ticker.await;
        }
    }

    pub fn set_approve_csrs(&self, approve: bool) {
        self.set_csr_policy(if approve {
            CsrPolicy::Approve
        } else {
            CsrPolicy::Deny
        });
    }

    pub fn set_csr_policy(&self, p: CsrPolicy) {
        lock(&self.state.settings).csr_policy = p;
    }

    /// The `AuthorizeNodeWithSelectors` feature gate (KEP-4601; on by default in v1.33). Off, nodes
    /// may read every Node and Pod again, as in v1.31 and before.
    pub fn set_authorize_node_with_selectors(&self, on: bool) {
        self.state
            .node_selectors
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn set_cert_duration(&self, d: Duration) {
        lock(&self.state.settings).cert_duration = d;
    }

    /// How far signed certificates are backdated (upstream: 5 minutes).
    pub fn set_cert_backdate(&self, d: Duration) {
        lock(&self.state.settings).cert_backdate = d;
    }

    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK (default 5 s; upstream ~1 min).
    pub fn set_bookmark_interval(&self, d: Duration) {
        lock(&self.state.settings).bookmark_interval = d;
    }

    /// Forgets watch history: watches from any older resourceVersion get 410 Expired.
    pub fn compact(&self) {
        self.state.store().compact();
    }

    /// Direct read of an object by its API path (no auth), e.g. `/api/v1/nodes/n1`.
    pub fn get(&self, path: &str) -> Option<Value> {
        let t = handler::parse_object_path(path)?;
        let s = self.state.store();
        s.get(t.0, &t.1, &t.2)
            .map(|o| crate::eventconv::output(t.0, handler::with_type(t.0, o.clone())))
    }

    /// Creates or replaces an object at `path` bypassing auth and admission (seeding tests).
    /// Status is kept as given. Panics on a path this server does not serve (a test bug).
    pub fn put(&self, path: &str, mut obj: Value) {
        let Some((def, ns, name)) = handler::parse_object_path(path) else {
            panic!("keel-test-apiserver: put to unknown path {path}");
        };
        if let Some(sd) = obj.as_object_mut().and_then(|o| o.remove("stringData")) {
            use base64::Engine;
            if let Some(m) = sd.as_object() {
                for (k, v) in m {
                    let enc = base64::engine::general_purpose::STANDARD
                        .encode(v.as_str().unwrap_or("").as_bytes());
                    obj["data"][k] = json!(enc);
                }
            }
        }
        obj["apiVersion"] = json!(def.api_version());
        obj["kind"] = json!(def.kind);
        obj["metadata"]["name"] = json!(name);
        let mut s = self.state.store();
        let existing = s.get(def, &ns, &name).cloned();
        if let Err(e) = strategy::prepare_put(&self.state, &s, def, existing.as_ref(), &mut obj) {
            panic!("keel-test-apiserver: put {path}: {}", e.message);
        }
        let r = if existing.is_some() {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            s.update(def, &ns, obj)
        } else {
            s.create(def, &ns, obj)
        };
        if let Err(e) = r {
            panic!("keel-test-apiserver: put {path}: {}", e.message);
        }
        self.state
            .after_write(&mut s, def.group, def.resource, &ns, &name);
    }

    /// Deletes an object at once, bypassing auth and finalizers. Returns whether it existed.
    pub fn delete(&self, path: &str) -> bool {
        let Some((def, ns, name)) = handler::parse_object_path(path) else {
            return false;
        };
        let mut s = self.state.store();
        let ok = s.delete(def, &ns, &name).is_ok();
        self.state
            .after_write(&mut s, def.group, def.resource, &ns, &name);
        ok
    }

    pub fn request_log(&self) -> Vec<RequestRecord> {
        lock(&self.state.log).clone()
    }

    pub fn clear_request_log(&self) {
        lock(&self.state.log).clear();
    }

    pub async fn shutdown(self) {
        self.stop().await;
    }
}

fn write_kubeconfig(path: &Path, url: &str, ca_pem: &str, user: &str) -> anyhow::Result<()> {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: keel-test\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\ncontexts:\n- name: keel-test\n  context:\n    cluster: keel-test\n    user: keel-test\ncurrent-context: keel-test\nusers:\n- name: keel-test\n  user:\n{user}"
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Namespaces (with their `default` ServiceAccount) and cluster-info that every kubeadm cluster has.
fn seed(state: &State) {
    let Some(nsdef) = resources::find("", "v1", "namespaces") else {
        return;
    };
    let mut s = state.store();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let _ = s.create(
            nsdef,
            "",
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}},
                   "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
        );
        serviceaccounts::ensure_default(&mut s, ns);
    }
    if let Some(svc) = resources::find("", "v1", "services") {
        let _ = s.create(
            svc,
            "default",
            services::kubernetes_service(&state.services, state.addr.port()),
        );
    }
    if let Some(cm) = resources::find("", "v1", "configmaps") {
        let _ = s.create(
            cm,
            "kube-public",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cluster-info"},
                   "data": {"kubeconfig": cluster_info_kubeconfig(&state.url(), &state.ca.cert_pem)}}),
        );
    }
}
