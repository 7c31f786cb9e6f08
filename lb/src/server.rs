//! The control plane: owns the running config, the listeners, pools, health checks and VRRP; applies
//! reloads as a diff; runs the shutdown sequence. The data plane never waits on it: it publishes new
//! frontend versions through watch channels and health through atomics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config, Protocol};
use crate::frontend::{self, Frontend};
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::services::controller::{self as svc_ctl, FileView, Shared};
use crate::services::rules::{self, ClusterRules, Problems};
use crate::{health, listener, udp};

/// Requests from the admin API to the control loop.
pub enum Command {
    Reload(oneshot::Sender<Result<(), String>>),
    Handover(oneshot::Sender<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot listen on {proto:?} {addr} (frontend {frontend}): {err}")]
    Bind {
        frontend: String,
        proto: Protocol,
        addr: SocketAddr,
        err: std::io::Error,
    },
}

struct RunningListener {
    name: String,
    version: watch::Sender<Arc<Frontend>>,
    stop: CancellationToken,
}

struct RunningPool {
    pool: Arc<Pool>,
    checks: CancellationToken,
}

enum Bound {
    Tcp(tokio::net::TcpListener),
    Udp(tokio::net::UdpSocket),
}

/// The Services provider as the server sees it: the file view it publishes, the rules it receives.
struct Services {
    view: watch::Sender<Arc<FileView>>,
    rules: watch::Receiver<Option<Arc<ClusterRules>>>,
    shared: Arc<Shared>,
    running: Option<svc_ctl::Running>,
}

pub struct Server {
    /// What is running: the file plus the Services' rules.
    cfg: Option<Config>,
    /// The config file as loaded.
    file: Option<Config>,
    /// The cluster rules last applied (from the controller or the state file).
    cluster: Arc<ClusterRules>,
    /// Why some Services' rules are not running (clash with the file, bind failure, ...).
    problems: Arc<Problems>,
    services: Option<Services>,
    pub metrics: Arc<Metrics>,
    /// Every client connection and UDP session; shutdown waits on it to drain.
    tracker: TaskTracker,
    /// Woken by backends on health transitions.
    health_changed: Arc<Notify>,
    pools: HashMap<String, RunningPool>,
    listeners: HashMap<(Protocol, SocketAddr), RunningListener>,
    pool_up: HashMap<String, bool>,
    /// Shared with blocking tasks: keel-vrrp's start/reload/shutdown wait on its thread, which must
    /// never stall the data plane (it may share one thread with it).
    vrrp: Option<Arc<keel_vrrp::Vrrp>>,
}

impl Server {
    /// Binds every listener of `cfg` and starts serving; then starts VRRP (listeners first, so a VIP
    /// this node wins is served at once).
    pub async fn start(cfg: Config, metrics: Arc<Metrics>) -> Result<Server, ApplyError> {
        let mut s = Server {
            cfg: None,
            file: None,
            cluster: Arc::new(ClusterRules::default()),
            problems: Arc::new(Problems::new()),
            services: None,
            metrics,
            tracker: TaskTracker::new(),
            health_changed: Arc::new(Notify::new()),
            pools: HashMap::new(),
            listeners: HashMap::new(),
            pool_up: HashMap::new(),
            vrrp: None,
        };
        // Rules kept from the last run serve from the first moment, API server or not.
        if let Some(path) = cfg.services.as_ref().and_then(|c| c.state_file.clone()) {
            match crate::services::state::load(&path) {
                Ok(Some(r)) => {
                    tracing::info!(file = %path.display(), services = r.services.len(), nodes = r.nodes.len(), "services: serving the rules kept from the last run until the cluster is read");
                    s.cluster = Arc::new(r);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "services: kept rules unreadable; starting without them")
                }
            }
        }
        s.apply(cfg).await?;
        s.start_services();
        Ok(s)
    }

    pub fn config(&self) -> Option<&Config> {
        self.cfg.as_ref()
    }

    /// Shared Services state (sync results, rules) for the admin API; None without `services:`.
    pub fn services_shared(&self) -> Option<Arc<Shared>> {
        self.services.as_ref().map(|s| s.shared.clone())
    }

    fn file_view(file: &Config) -> Option<FileView> {
        let services = file.services.clone()?;
        let mut reserved: std::collections::HashSet<std::net::IpAddr> =
            file.frontends.iter().map(|f| f.listen.ip()).collect();
        if let Some(v) = &file.vrrp {
            reserved.extend(v.vips().iter().map(|v| v.addr));
        }
        Some(FileView {
            services,
            listeners: rules::file_listeners(file),
            reserved,
        })
    }

    fn start_services(&mut self) {
        let Some(view) = self.file.as_ref().and_then(Self::file_view) else {
            return;
        };
        let shared = Shared::new(&self.metrics.registry);
        let (view_tx, view_rx) = watch::channel(Arc::new(view));
        let rules = shared.rules.subscribe();
        let running = svc_ctl::spawn(view_rx, shared.clone());
        tracing::info!("services: watching the workload cluster's Services of type LoadBalancer");
        self.services = Some(Services {
            view: view_tx,
            rules,
            shared,
            running: Some(running),
        });
    }

    /// Applies a validated config file as a difference against the running state, with the Services'
    /// rules rendered next to it. Listeners are bound before anything changes, so a failure leaves
    /// the running config untouched.
    pub async fn apply(&mut self, file: Config) -> Result<(), ApplyError> {
        let cluster = self.cluster.clone();
        let first = self.file.is_none();
        let before_kubeconfig = self
            .file
            .as_ref()
            .and_then(|f| f.services.as_ref())
            .map(|s| s.kubeconfig.clone());
        self.apply_with(file.clone(), &cluster, true).await?;
        if let (Some(svc), Some(view)) = (&self.services, Self::file_view(&file)) {
            if before_kubeconfig.as_ref() != Some(&view.services.kubeconfig) {
                tracing::warn!("services: a new kubeconfig takes effect at the next restart");
            }
            svc.view.send_if_modified(|v| {
                let changed = **v != view;
                if changed {
                    *v = Arc::new(view);
                }
                changed
            });
        } else if !first && before_kubeconfig.is_some() != file.services.is_some() {
            tracing::warn!("services: adding or removing the services section takes effect at the next restart");
        }
        Ok(())
    }

    /// Renders `file` + `cluster` and applies it. A Service whose listener cannot be bound is left
    /// out (and reported) rather than failing everything; the file's own frontends must all bind.
    async fn apply_with(
        &mut self,
        file: Config,
        cluster: &ClusterRules,
        file_changed: bool,
    ) -> Result<(), ApplyError> {
        let health = file
            .services
            .as_ref()
            .map(|s| s.health.clone())
            .unwrap_or_else(default_svc_health);
        let mut cluster = cluster.clone();
        let mut extra: Problems = Problems::new();
        // Bounded: each round drops at least one Service.
        for _ in 0..=cluster.services.len() {
            let (merged, mut problems) = rules::render(&file, &cluster, &health, file.timeouts);
            match self.apply_config(merged).await {
                Ok(()) => {
                    for (k, v) in extra {
                        problems.entry(k).or_default().extend(v);
                    }
                    for (k, v) in &problems {
                        tracing::warn!(service = %k, problems = %v.join("; "), "services: rule not (fully) applied");
                    }
                    self.problems = Arc::new(problems);
                    self.file = Some(file);
                    if let Some(s) = &self.services {
                        s.shared
                            .metrics
                            .applied_rules
                            .set(cluster.services.len() as i64);
                        s.shared.set_applied(self.applied_view(&cluster));
                    }
                    return Ok(());
                }
                Err(ApplyError::Bind {
                    frontend,
                    proto,
                    addr,
                    err,
                }) if rules::is_service_name(&frontend) => {
                    let key = frontend.split(':').next().unwrap_or_default().to_string();
                    if cluster.services.remove(&key).is_none() {
                        return Err(ApplyError::Bind {
                            frontend,
                            proto,
                            addr,
                            err,
                        });
                    }
                    tracing::error!(service = %key, %addr, error = %err, "services: cannot listen; this Service is left out");
                    extra
                        .entry(key)
                        .or_default()
                        .push(format!("cannot listen on {proto:?} {addr}: {err}"));
                }
                Err(e) => {
                    if !file_changed {
                        tracing::error!(error = %e, "services: rules not applied");
                    }
                    return Err(e);
                }
            }
        }
        Err(ApplyError::Bind {
            frontend: "services".into(),
            proto: Protocol::Tcp,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            err: std::io::Error::other("no Service rule could be applied"),
        })
    }

    fn applied_view(&self, cluster: &ClusterRules) -> svc_ctl::Applied {
        let by_addr: HashMap<std::net::IpAddr, &str> = cluster
            .nodes
            .iter()
            .flat_map(|(n, a)| {
                a.v4.iter()
                    .chain(a.v6.iter())
                    .map(move |ip| (*ip, n.as_str()))
            })
            .collect();
        let backends = self
            .pools
            .iter()
            .filter(|(name, _)| rules::is_service_name(name))
            .map(|(name, rp)| {
                let list = rp
                    .pool
                    .backends
                    .iter()
                    .map(|b| {
                        let node = by_addr.get(&b.addr.ip()).copied().unwrap_or("").to_string();
                        (node, b.clone())
                    })
                    .collect();
                (name.clone(), list)
            })
            .collect();
        svc_ctl::Applied {
            rules: Arc::new(cluster.clone()),
            problems: self.problems.clone(),
            backends,
        }
    }

    /// New cluster rules from the controller: rendered with the file and applied; then kept on disk.
    async fn apply_cluster(&mut self, rules: Arc<ClusterRules>) {
        let Some(file) = self.file.clone() else {
            return;
        };
        let started = std::time::Instant::now();
        match self.apply_with(file, &rules, false).await {
            Ok(()) => {
                self.cluster = rules.clone();
                tracing::debug!(services = rules.services.len(), took = ?started.elapsed(), "services: rules applied");
                if let Some(path) = self
                    .file
                    .as_ref()
                    .and_then(|f| f.services.as_ref())
                    .and_then(|s| s.state_file.clone())
                {
                    let r = rules.clone();
                    match tokio::task::spawn_blocking(move || {
                        crate::services::state::save(&path, &r)
                    })
                    .await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "services: rules not kept on disk")
                        }
                        Err(e) => tracing::error!(error = %e, "services: state writer failed"),
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "services: rules not applied; the previous ones keep running")
            }
        }
    }

    /// Applies a complete (rendered) config as a difference against the running one.
    async fn apply_config(&mut self, new: Config) -> Result<(), ApplyError> {
        let mut fresh: HashMap<(Protocol, SocketAddr), Bound> = HashMap::new();
        for f in &new.frontends {
            let key = (f.protocol, f.listen);
            if self.listeners.contains_key(&key) {
                continue;
            }
            let bound = match f.protocol {
                Protocol::Tcp => listener::tcp(f.listen).map(Bound::Tcp),
                Protocol::Udp => listener::udp(f.listen).map(Bound::Udp),
            }
            .map_err(|err| ApplyError::Bind {
                frontend: f.name.clone(),
                proto: f.protocol,
                addr: f.listen,
                err,
            })?;
            fresh.insert(key, bound);
        }

        // Pools: unchanged ones keep running as they are; changed ones get a new version that reuses
        // their backends; removed ones stop checking (their connections drain on their own).
        let mut pools = HashMap::new();
        for (name, pc) in &new.pools {
            match self.pools.remove(name) {
                Some(old) if old.pool.cfg == *pc => {
                    pools.insert(name.clone(), old);
                }
                old => {
                    if let Some(o) = &old {
                        o.checks.cancel();
                    }
                    let pool = Arc::new(Pool::build(
                        pc,
                        old.as_ref().map(|o| &*o.pool),
                        &self.metrics,
                        &self.health_changed,
                    ));
                    let checks = CancellationToken::new();
                    health::spawn_checks(&pool, &checks);
                    tracing::info!(pool = %name, backends = pool.backends.len(), balance = ?pc.balance, "pool configured");
                    pools.insert(name.clone(), RunningPool { pool, checks });
                }
            }
        }
        for (name, old) in self.pools.drain() {
            old.checks.cancel();
            for b in &old.pool.backends {
                self.metrics.forget_backend(&name, &b.addr.to_string());
            }
            let _ = self.metrics.pool_up.remove_label_values(&[&name]);
            self.pool_up.remove(&name);
            tracing::info!(pool = %name, "pool removed; its connections drain");
        }
        self.pools = pools;

        // Frontends: every one gets a new version (its pool may have changed); the connection limit's
        // semaphore is kept when the limit is unchanged.
        let old_cfg = self.cfg.take();
        let mut listeners = HashMap::new();
        // Names whose series leave /metrics, unless a frontend of the new config still uses them.
        let mut forget = Vec::new();
        for f in &new.frontends {
            let key = (f.protocol, f.listen);
            let Some(pool) = self.pools.get(&f.pool).map(|p| p.pool.clone()) else {
                continue; // validation guarantees the pool exists
            };
            let old_version = self.listeners.get(&key).map(|l| l.version.borrow().clone());
            let limit = match &old_version {
                Some(o) if o.cfg.max_connections == f.max_connections => o.limit.clone(),
                _ => Arc::new(Semaphore::new(f.max_connections)),
            };
            let version = Arc::new(Frontend {
                cfg: f.clone(),
                pool,
                limit,
                metrics: self.metrics.frontend(&f.name),
            });
            if let Some(running) = self.listeners.remove(&key) {
                if running.name != f.name {
                    forget.push(running.name.clone());
                }
                running.version.send_replace(version);
                listeners.insert(
                    key,
                    RunningListener {
                        name: f.name.clone(),
                        ..running
                    },
                );
                continue;
            }
            let (tx, rx) = watch::channel(version);
            let stop = CancellationToken::new();
            match fresh.remove(&key) {
                Some(Bound::Tcp(l)) => {
                    tokio::spawn(frontend::serve_tcp(
                        l,
                        rx,
                        stop.clone(),
                        self.tracker.clone(),
                    ));
                }
                Some(Bound::Udp(s)) => {
                    tokio::spawn(udp::serve_udp(s, rx, stop.clone(), self.tracker.clone()));
                }
                None => continue,
            }
            tracing::info!(frontend = %f.name, listen = %f.listen, protocol = ?f.protocol, pool = %f.pool, "listening");
            listeners.insert(
                key,
                RunningListener {
                    name: f.name.clone(),
                    version: tx,
                    stop,
                },
            );
        }
        for ((proto, addr), old) in self.listeners.drain() {
            old.stop.cancel();
            forget.push(old.name.clone());
            tracing::info!(frontend = %old.name, listen = %addr, protocol = ?proto, "listener removed; its connections drain");
        }
        self.listeners = listeners;
        for name in forget {
            if new.frontend(&name).is_none() {
                self.metrics.forget_frontend(&name);
            }
        }

        if let Some(old) = &old_cfg {
            if old.admin != new.admin {
                tracing::warn!("admin listener changes take effect at the next restart");
            }
        }
        self.apply_vrrp(
            old_cfg.as_ref().and_then(|c| c.vrrp.clone()),
            new.vrrp.clone(),
        )
        .await;
        self.cfg = Some(new);
        self.publish_pool_health(true);
        Ok(())
    }

    async fn apply_vrrp(
        &mut self,
        old: Option<keel_vrrp::VrrpConfig>,
        new: Option<keel_vrrp::VrrpConfig>,
    ) {
        match (self.vrrp.clone(), new) {
            (Some(v), Some(n)) => {
                if old.as_ref() != Some(&n) {
                    match tokio::task::spawn_blocking(move || v.reload(n)).await {
                        Ok(Ok(())) => tracing::info!("vrrp reloaded"),
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "vrrp reload failed; routers keep their previous config")
                        }
                        Err(e) => tracing::error!(error = %e, "vrrp reload task failed"),
                    }
                }
            }
            (Some(_), None) => {
                if let Some(v) = self.vrrp.take() {
                    tracing::info!("vrrp section removed; stopping virtual routers");
                    stop_vrrp(v).await;
                }
            }
            (None, Some(n)) => {
                let registry = self.metrics.registry.clone();
                match tokio::task::spawn_blocking(move || keel_vrrp::Vrrp::start(n, &registry))
                    .await
                {
                    Ok(Ok(v)) => {
                        tracing::info!("vrrp started");
                        self.vrrp = Some(Arc::new(v));
                        self.pool_up.clear(); // re-announce every pool's health to the new routers
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "VRRP failed to start; serving WITHOUT virtual-IP failover")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "VRRP start task failed; serving WITHOUT virtual-IP failover")
                    }
                }
            }
            (None, None) => {}
        }
    }

    /// Recomputes each pool's "has a healthy backend" and tells VRRP and the metrics what changed.
    fn publish_pool_health(&mut self, quiet_first: bool) {
        for (name, rp) in &self.pools {
            let up = rp.pool.has_available();
            let before = self.pool_up.insert(name.clone(), up);
            if before == Some(up) {
                continue;
            }
            self.metrics
                .pool_up
                .with_label_values(&[name])
                .set(i64::from(up));
            if let Some(v) = &self.vrrp {
                v.set_pool_health(name, up);
            }
            match (before, up, quiet_first) {
                (None, _, true) => {}
                (_, true, _) => tracing::info!(pool = %name, "pool has healthy backends again"),
                (_, false, _) => tracing::warn!(pool = %name, "pool has NO healthy backend"),
            }
        }
    }

    /// Reads the config file again; a bad file leaves everything running as it was.
    pub async fn reload(&mut self) -> Result<(), String> {
        let Some(path) = self.cfg.as_ref().map(|c| c.path.clone()) else {
            return Err("no running config".into());
        };
        let result = match config::load(&path) {
            Ok(c) => self.apply(c).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match &result {
            Ok(()) => {
                self.metrics.reloads.with_label_values(&["success"]).inc();
                self.metrics.last_reload_ok.set(1);
                tracing::info!(config = %path.display(), "config reloaded");
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["failure"]).inc();
                self.metrics.last_reload_ok.set(0);
                tracing::error!(config = %path.display(), error = %e, "reload failed; the previous config keeps running");
            }
        }
        result
    }

    async fn handover(&self) -> String {
        match (&self.vrrp, &self.cfg) {
            (Some(v), Some(c)) => {
                let outcome = v.handover(c.handover_timeout).await;
                tracing::info!(?outcome, "vrrp handover finished");
                format!("{outcome:?}")
            }
            _ => "vrrp is not running".into(),
        }
    }

    /// The control loop: signals, admin commands, health changes; returns after graceful shutdown.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        self.metrics.last_reload_ok.set(1);
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading");
                    let _ = self.reload().await;
                }
                Some(cmd) = commands.recv() => match cmd {
                    Command::Reload(reply) => {
                        let r = self.reload().await;
                        let _ = reply.send(r);
                    }
                    Command::Handover(reply) => {
                        let r = self.handover().await;
                        let _ = reply.send(r);
                    }
                },
                _ = self.health_changed.notified() => self.publish_pool_health(false),
                Some(rules) = next_rules(&mut self.services) => self.apply_cluster(rules).await,
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break }
            }
        }
        self.shutdown().await;
        Ok(())
    }

    /// Hand the VIPs over (still serving), stop accepting, drain up to the configured time.
    pub async fn shutdown(mut self) {
        if let Some(r) = self.services.as_mut().and_then(|s| s.running.take()) {
            // Gives the writer Lease up so the peer takes over at once.
            let _ = tokio::task::spawn_blocking(move || r.shutdown()).await;
        }
        let (drain, handover) = self
            .cfg
            .as_ref()
            .map(|c| (c.shutdown_drain, c.handover_timeout))
            .unwrap_or((config::DEFAULT_DRAIN, config::DEFAULT_HANDOVER));
        if let Some(v) = self.vrrp.take() {
            let outcome = v.handover(handover).await;
            tracing::info!(?outcome, "vrrp handover before shutdown");
            stop_vrrp(v).await;
        }
        for l in self.listeners.values() {
            l.stop.cancel();
        }
        for p in self.pools.values() {
            p.checks.cancel();
        }
        self.tracker.close();
        let open = self.tracker.len();
        tracing::info!(connections = open, drain = ?drain, "stopped accepting; draining");
        tokio::select! {
            _ = self.tracker.wait() => tracing::info!("drained; exiting"),
            _ = tokio::time::sleep(drain) => tracing::warn!(
                connections = self.tracker.len(),
                "drain time over; closing the remaining connections"
            ),
        }
    }
}

fn default_svc_health() -> crate::services::config::SvcHealth {
    crate::services::config::SvcHealth {
        cluster: crate::services::config::ClusterHealth::KubeProxy,
        kube_proxy_port: 10256,
        interval: std::time::Duration::from_secs(2),
        timeout: std::time::Duration::from_secs(1),
        rise: 2,
        fall: 2,
    }
}

/// The controller's next rule snapshot; pending forever without a Services provider.
async fn next_rules(services: &mut Option<Services>) -> Option<Arc<ClusterRules>> {
    let Some(s) = services.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        if s.rules.changed().await.is_err() {
            return std::future::pending().await;
        }
        if let Some(r) = s.rules.borrow_and_update().clone() {
            return Some(r);
        }
    }
}

/// Stops the routers on a blocking thread (keel-vrrp joins its own thread).
async fn stop_vrrp(v: Arc<keel_vrrp::Vrrp>) {
    match Arc::try_unwrap(v) {
        Ok(v) => {
            if let Err(e) = tokio::task::spawn_blocking(move || v.shutdown()).await {
                tracing::error!(error = %e, "vrrp shutdown task failed");
            }
        }
        // A reload or handover still holds it; its Drop stops the routers when that finishes.
        Err(_) => tracing::warn!("vrrp still in use; it stops when released"),
    }
}
