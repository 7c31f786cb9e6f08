//! The control plane: owns the running config, the listeners, pools, health checks and VRRP; applies
//! reloads as a diff; runs the shutdown sequence. The data plane never waits on it: it publishes new
//! frontend versions through watch channels and health through atomics.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config, Protocol};
use crate::events::{Events, Kind};
use crate::frontend::{self, Frontend};
use crate::metrics::Metrics;
use crate::overrides::{Change, ChangeError, Overrides};
use crate::pool::Pool;
use crate::services::controller::{self as svc_ctl, FileView, Shared};
use crate::services::rules::{self, ClusterRules, FileLimits, RouterVips, SvcParts, SvcRule};
use crate::status::ReloadResult;
use crate::{health, listener, udp};

/// Requests from the admin API to the control loop.
pub enum Command {
    Reload(oneshot::Sender<Result<(), String>>),
    Handover(oneshot::Sender<String>),
    /// After a handover: start the routers again (they stay stopped until then).
    Resume(oneshot::Sender<Result<(), String>>),
    /// A runtime change of one backend of the file (`POST /v1/backends/<pool>/<addr>`).
    Backend {
        pool: String,
        addr: SocketAddr,
        change: Change,
        reply: oneshot::Sender<Result<String, ChangeError>>,
    },
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
    #[error("vrrp: {0}")]
    Vrrp(String),
    #[error("bgp: {0}")]
    Bgp(String),
}

type ListenKey = (Protocol, SocketAddr);

struct RunningListener {
    name: String,
    pool: String,
    version: watch::Sender<Arc<Frontend>>,
    stop: CancellationToken,
}

struct RunningPool {
    pool: Arc<Pool>,
    /// Dropping it unsubscribes this version's backends from the shared checks.
    _checks: health::Subscription,
}

enum Bound {
    Tcp(tokio::net::TcpListener),
    Udp(tokio::net::UdpSocket),
}

/// What changes in the running state: pools and frontends put (added or changed) or taken out.
/// A reload computes it against everything; a Service change only from that Service's parts.
#[derive(Default)]
struct Delta {
    pools_put: Vec<config::Pool>,
    pools_gone: Vec<String>,
    fronts_put: Vec<config::Frontend>,
    fronts_gone: Vec<ListenKey>,
}

/// The Services provider as the server sees it: the file view it publishes, the rules it receives.
struct Services {
    view: watch::Sender<Arc<FileView>>,
    rules: watch::Receiver<Option<Arc<ClusterRules>>>,
    shared: Arc<Shared>,
    running: Option<svc_ctl::Running>,
}

pub struct Server {
    /// The config file as loaded.
    file: Option<Config>,
    /// The cluster rules last applied (from the controller or the state file).
    cluster: Arc<ClusterRules>,
    /// Each applied Service's frontends, pools, VIPs and problems.
    parts: HashMap<String, SvcParts>,
    /// Services' VIPs per VRRP router, counted (shared IPs).
    router_vips: RouterVips,
    /// The VRRP config running: the file's plus the Services' VIPs.
    vrrp_cfg: Option<keel_vrrp::VrrpConfig>,
    /// A failed VRRP start is retried from the control loop at these times.
    vrrp_backoff: keel_common::Backoff,
    vrrp_retry_at: Option<tokio::time::Instant>,
    services: Option<Services>,
    state_writer: Option<crate::services::state::Writer>,
    pub metrics: Arc<Metrics>,
    /// Every client connection and UDP session; shutdown waits on it to drain.
    tracker: TaskTracker,
    /// Woken by backends on health transitions.
    health_changed: Arc<Notify>,
    checks: health::Checks,
    pools: HashMap<String, RunningPool>,
    listeners: HashMap<ListenKey, RunningListener>,
    /// Pool name -> listeners whose frontend uses it (a changed pool refreshes exactly those).
    pool_users: HashMap<String, HashSet<ListenKey>>,
    pool_up: HashMap<String, bool>,
    /// Shared with blocking tasks: keel-vrrp's start/reload/shutdown wait on its thread, which must
    /// never stall the data plane (it may share one thread with it).
    vrrp: Option<Arc<keel_vrrp::Vrrp>>,
    /// Registered at the first start and kept: counters survive a handover and resume.
    vrrp_metrics: Option<keel_vrrp::VrrpMetrics>,
    /// What the status page reads; published after every change.
    status: Arc<crate::status::Source>,
    events: Arc<Events>,
    /// Config files applied, and the last reload's outcome (the status page).
    generation: u64,
    last_reload: Option<ReloadResult>,
    /// Runtime backend changes, kept in the state file.
    overrides: Overrides,
    /// Each router's last transition already told as an event.
    told_transitions: HashMap<String, std::time::SystemTime>,
    /// The `bgp:` VIPs on the dummy interface (None without a `bgp:` section).
    bgp: Option<crate::bgp::Announcer>,
    /// The announcer could not start: the status says why until it does.
    bgp_failed: Option<crate::bgp::StatusHandle>,
    bgp_metrics: Option<crate::bgp::BgpMetrics>,
    /// The `mode: nat` frontends' nftables table.
    nat: crate::nat::Nat,
    /// No nat rules could be installed: the nat frontends have proxy listeners meanwhile.
    nat_fallback: bool,
    /// The (frontend, backend) series of `keel_lb_nat_open_flows` set last (stale ones go).
    nat_flow_series: HashSet<(String, String)>,
}

impl Server {
    /// Binds every listener of `cfg` and starts serving; then starts VRRP (listeners first, so a VIP
    /// this node wins is served at once).
    pub async fn start(cfg: Config, metrics: Arc<Metrics>) -> Result<Server, ApplyError> {
        let events = Arc::new(Events::default());
        let state_file = cfg.admin.as_ref().and_then(|a| a.state_file.clone());
        let (overrides, problem) = Overrides::load(state_file);
        if let Some(e) = problem {
            tracing::error!(error = %e, "runtime backend changes unreadable; starting with the file's states");
        } else if overrides.keys().count() > 0 {
            tracing::info!(file = %overrides.path().map(|p| p.display().to_string()).unwrap_or_default(), backends = overrides.keys().count(), "runtime backend changes kept from the last run");
        }
        let mut s = Server {
            file: None,
            cluster: Arc::new(ClusterRules::default()),
            parts: HashMap::new(),
            router_vips: RouterVips::new(),
            vrrp_cfg: None,
            vrrp_backoff: keel_common::Backoff::new(
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(30),
            ),
            vrrp_retry_at: None,
            services: None,
            state_writer: None,
            metrics,
            tracker: TaskTracker::new(),
            health_changed: Arc::new(Notify::new()),
            checks: health::Checks::default(),
            pools: HashMap::new(),
            listeners: HashMap::new(),
            pool_users: HashMap::new(),
            pool_up: HashMap::new(),
            vrrp: None,
            vrrp_metrics: None,
            status: Arc::new(crate::status::Source::new(events.clone())),
            events,
            generation: 0,
            last_reload: None,
            overrides,
            told_transitions: HashMap::new(),
            bgp: None,
            bgp_metrics: None,
            nat: crate::nat::Nat::default(),
            nat_fallback: false,
            nat_flow_series: HashSet::new(),
            bgp_failed: None,
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
            s.state_writer = Some(crate::services::state::Writer::spawn(path));
        }
        s.apply(cfg).await?;
        s.sync_nat().await;
        if let Some(f) = &s.file {
            s.events
                .push(Kind::Reload, f.path.display().to_string(), "started");
        }
        s.start_services();
        Ok(s)
    }

    /// The config file running.
    pub fn config(&self) -> Option<&Config> {
        self.file.as_ref()
    }

    /// What the status endpoints read.
    pub fn status(&self) -> Arc<crate::status::Source> {
        self.status.clone()
    }

    /// Tells the status endpoints what runs now (versions and handles, no copies of counters).
    fn publish_view(&self) {
        let frontends = self
            .listeners
            .values()
            .map(|l| l.version.borrow().clone())
            .collect();
        let pools = self.pools.values().map(|p| p.pool.clone()).collect();
        self.status.publish(|v| {
            v.frontends = frontends;
            v.pools = pools;
            v.config_path = self
                .file
                .as_ref()
                .map(|f| f.path.clone())
                .unwrap_or_default();
            v.generation = self.generation;
            v.last_reload = self.last_reload.clone();
            v.overridden = self.overrides.keys().cloned().collect();
            v.vrrp = self.vrrp.as_ref().map(|x| x.status_handle());
            v.vrrp_cfg = self.vrrp_cfg.clone();
            v.vrrp_configured = self.vrrp_cfg.as_ref().map_or(0, |c| c.routers.len());
            v.state_file = self.overrides.path().map(|p| p.to_path_buf());
            v.bgp = self
                .bgp
                .as_ref()
                .map(|a| a.status_handle())
                .or_else(|| self.bgp_failed.clone());
            v.nat = self.nat.status();
        });
    }

    /// Shared Services state (sync results, rules) for the admin API; None without `services:`.
    pub fn services_shared(&self) -> Option<Arc<Shared>> {
        self.services.as_ref().map(|s| s.shared.clone())
    }

    /// Distinct health checks running (shared between pools).
    pub fn checks_running(&self) -> usize {
        self.checks.running()
    }

    fn file_view(file: &Config) -> Option<FileView> {
        let services = file.services.clone()?;
        let mut reserved: std::collections::HashSet<std::net::IpAddr> =
            file.frontends.iter().map(|f| f.listen.ip()).collect();
        if let Some(v) = &file.vrrp {
            reserved.extend(v.vips().iter().map(|v| v.addr));
        }
        if let Some(b) = &file.bgp {
            reserved.extend(b.vips.iter().map(|v| v.addr));
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
        self.publish_all();
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
        self.apply_full(file.clone(), &cluster, true).await?;
        self.generation += 1;
        self.publish_view();
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

    /// Renders `file` + every Service of `cluster` and applies the difference to what runs. A Service
    /// whose listener cannot be bound is left out (and reported) rather than failing everything; the
    /// file's own frontends must all bind. Cost grows with the total: reloads and node changes only.
    async fn apply_full(
        &mut self,
        file: Config,
        cluster: &ClusterRules,
        file_changed: bool,
    ) -> Result<(), ApplyError> {
        let limits = FileLimits::of(&file, default_svc_health());
        // A reload whose VRRP part cannot run (an interface missing) fails before anything changes.
        // At boot it does not stop serving: the start is retried.
        if let (true, Some(_), Some(v)) = (file_changed, &self.file, file.vrrp.clone()) {
            if self.vrrp_cfg.as_ref().map(|c| &c.routers) != Some(&v.routers) {
                match tokio::task::spawn_blocking(move || keel_vrrp::Vrrp::preflight(&v)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(ApplyError::Vrrp(e.to_string())),
                    Err(e) => return Err(ApplyError::Vrrp(e.to_string())),
                }
            }
        }
        let mut parts: HashMap<String, SvcParts> = cluster
            .services
            .iter()
            .map(|(k, r)| {
                (
                    k.clone(),
                    rules::render_service(k, r, &cluster.nodes, &limits),
                )
            })
            .collect();
        // Runtime backend changes on top of the file's pools; the ones it contradicts are dropped,
        // but only once this apply succeeds.
        let mut overrides = self.overrides.clone();
        let (file_pools, dropped) = overrides.apply(&file);
        // Bounded: each round leaves one more Service out.
        for _ in 0..=parts.len() {
            let mut want_fronts: Vec<config::Frontend> = file.frontends.clone();
            let mut want_pools: Vec<config::Pool> = file_pools.values().cloned().collect();
            for p in parts.values() {
                want_fronts.extend(p.frontends.iter().cloned());
                want_pools.extend(p.pools.iter().cloned());
            }
            let delta = self.diff(want_fronts, want_pools);
            match self.apply_delta(delta).await {
                Ok(()) => {
                    let mut vips = RouterVips::new();
                    for p in parts.values() {
                        rules::count_vips(&mut vips, p, true);
                    }
                    for (k, p) in &parts {
                        if !p.problems.is_empty() {
                            tracing::warn!(service = %k, problems = %p.problems.join("; "), "services: rule not (fully) applied");
                        }
                    }
                    self.parts = parts;
                    self.router_vips = vips;
                    let old_vrrp = self.vrrp_cfg.take();
                    self.vrrp_cfg = rules::vrrp_with(file.vrrp.as_ref(), &self.router_vips);
                    let booting = self.file.is_none();
                    let vrrp = self.apply_vrrp(old_vrrp, self.vrrp_cfg.clone()).await;
                    let bgp = self
                        .apply_bgp(rules::bgp_with(file.bgp.as_ref(), self.parts.values()))
                        .await;
                    if let Err(e) = &bgp {
                        tracing::error!(error = %e, "bgp");
                    }
                    if let Some(old) = &self.file {
                        if old.admin != file.admin {
                            tracing::warn!(
                                "admin listener changes take effect at the next restart"
                            );
                        }
                    }
                    self.file = Some(file);
                    self.overrides = overrides;
                    if !dropped.is_empty() {
                        for d in &dropped {
                            tracing::info!("{d}");
                            self.events.push(Kind::Control, "state file", d.clone());
                        }
                        // A failure is logged; the file is written again at the next change.
                        let _ = self.save_overrides().await;
                    }
                    self.publish_pool_health(true, None);
                    self.sync_bgp().await;
                    self.publish_all();
                    self.publish_view();
                    return match (vrrp, bgp) {
                        (Err(e), _) if file_changed && !booting => Err(ApplyError::Vrrp(e)),
                        (_, Err(e)) if file_changed && !booting => Err(ApplyError::Bgp(e)),
                        _ => Ok(()),
                    };
                }
                Err(ApplyError::Bind {
                    frontend,
                    proto,
                    addr,
                    err,
                }) if rules::is_service_name(&frontend) => {
                    let key = frontend.split(':').next().unwrap_or_default().to_string();
                    let Some(p) = parts.get_mut(&key) else {
                        return Err(ApplyError::Bind {
                            frontend,
                            proto,
                            addr,
                            err,
                        });
                    };
                    left_out(&key, p, proto, addr, &err);
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

    /// What to put and take out so the running state becomes `fronts` + `pools`.
    fn diff(&self, fronts: Vec<config::Frontend>, pools: Vec<config::Pool>) -> Delta {
        // `mode: nat` frontends have no listener: the nat table carries them (`sync_nat`), unless
        // no rules could be installed; then the proxy serves them.
        let fronts: Vec<config::Frontend> = fronts
            .into_iter()
            .filter(|f| self.gets_listener(f))
            .collect();
        let want_pools: HashSet<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        let want_keys: HashSet<ListenKey> = fronts.iter().map(|f| (f.protocol, f.listen)).collect();
        let pools_gone = self
            .pools
            .keys()
            .filter(|n| !want_pools.contains(n.as_str()))
            .cloned()
            .collect();
        let fronts_gone = self
            .listeners
            .keys()
            .filter(|k| !want_keys.contains(k))
            .copied()
            .collect();
        Delta {
            pools_put: pools
                .into_iter()
                .filter(|p| self.pools.get(&p.name).is_none_or(|r| r.pool.cfg != *p))
                .collect(),
            pools_gone,
            fronts_put: fronts
                .into_iter()
                .filter(|f| {
                    self.listeners
                        .get(&(f.protocol, f.listen))
                        .is_none_or(|l| l.version.borrow().cfg != *f)
                })
                .collect(),
            fronts_gone,
        }
    }

    /// New cluster rules from the controller. Node changes touch every Service's pools, so they go
    /// through the full render; otherwise only the Services that changed are rendered and applied.
    /// Then kept on disk (coalesced, off the control loop).
    async fn apply_cluster(&mut self, rules: Arc<ClusterRules>) {
        let Some(file) = self.file.clone() else {
            return;
        };
        let started = std::time::Instant::now();
        let changed: Vec<String> = if rules.nodes != self.cluster.nodes {
            match self.apply_full(file, &rules, false).await {
                Ok(()) => Vec::new(),
                Err(e) => {
                    tracing::error!(error = %e, "services: rules not applied; the previous ones keep running");
                    return;
                }
            }
        } else {
            let old = self.cluster.clone();
            let mut changed: Vec<String> = rules
                .services
                .iter()
                .filter(|(k, r)| {
                    old.services
                        .get(*k)
                        .is_none_or(|o| !Arc::ptr_eq(o, r) && o != *r)
                })
                .map(|(k, _)| k.clone())
                .collect();
            changed.extend(
                old.services
                    .keys()
                    .filter(|k| !rules.services.contains_key(*k))
                    .cloned(),
            );
            let limits = FileLimits::of(&file, default_svc_health());
            let vips_before = self.router_vips.clone();
            let bgp_before = rules::bgp_with(file.bgp.as_ref(), self.parts.values());
            for key in &changed {
                let rule = rules.services.get(key);
                self.apply_service(key, rule.map(|r| &**r), &rules.nodes, &limits)
                    .await;
            }
            if self.router_vips != vips_before {
                let old_vrrp = self.vrrp_cfg.take();
                self.vrrp_cfg = rules::vrrp_with(file.vrrp.as_ref(), &self.router_vips);
                // Failures are logged (and a failed start retried); the Services' rules stand.
                let _ = self.apply_vrrp(old_vrrp, self.vrrp_cfg.clone()).await;
            }
            let bgp_now = rules::bgp_with(file.bgp.as_ref(), self.parts.values());
            if bgp_now != bgp_before {
                if let Err(e) = self.apply_bgp(bgp_now).await {
                    tracing::error!(error = %e, "bgp: Services' VIPs");
                }
                self.sync_bgp().await;
            }
            changed
        };
        self.cluster = rules.clone();
        if changed.is_empty() {
            self.publish_all();
        } else {
            self.publish(&changed);
        }
        tracing::debug!(services = rules.services.len(), changed = changed.len(), took = ?started.elapsed(), "services: rules applied");
        if let Some(w) = &self.state_writer {
            w.save(rules);
        }
        self.publish_view();
    }

    /// Puts one Service's rule (or removes it: None) into the running state: only its own frontends,
    /// pools and VIPs are touched. A listener it cannot bind leaves the whole Service out, reported.
    async fn apply_service(
        &mut self,
        key: &str,
        rule: Option<&SvcRule>,
        nodes: &std::collections::BTreeMap<String, rules::NodeAddrs>,
        limits: &FileLimits,
    ) {
        let mut new = rule
            .map(|r| rules::render_service(key, r, nodes, limits))
            .unwrap_or_default();
        let old = self.parts.remove(key).unwrap_or_default();
        // Two rounds at most: as rendered, then (bind failed) without any of it.
        for _ in 0..2 {
            let new_pools: HashSet<&str> = new.pools.iter().map(|p| p.name.as_str()).collect();
            // Only frontends that get a listener (`mode: nat` ones are the nat table's).
            let listened: Vec<config::Frontend> = new
                .frontends
                .iter()
                .filter(|f| self.gets_listener(f))
                .cloned()
                .collect();
            let new_keys: HashSet<ListenKey> =
                listened.iter().map(|f| (f.protocol, f.listen)).collect();
            let delta = Delta {
                pools_put: new.pools.clone(),
                pools_gone: old
                    .pools
                    .iter()
                    .filter(|p| !new_pools.contains(p.name.as_str()))
                    .map(|p| p.name.clone())
                    .collect(),
                fronts_put: listened,
                fronts_gone: old
                    .frontends
                    .iter()
                    .map(|f| (f.protocol, f.listen))
                    .filter(|k| !new_keys.contains(k))
                    .collect(),
            };
            match self.apply_delta(delta).await {
                Ok(()) => break,
                Err(ApplyError::Bind {
                    proto, addr, err, ..
                }) => {
                    left_out(key, &mut new, proto, addr, &err);
                }
                // apply_delta binds; it has no VRRP part.
                Err(e @ (ApplyError::Vrrp(_) | ApplyError::Bgp(_))) => {
                    tracing::error!(service = %key, error = %e, "services: rule not applied");
                    break;
                }
            }
        }
        if !new.problems.is_empty() {
            tracing::warn!(service = %key, problems = %new.problems.join("; "), "services: rule not (fully) applied");
        }
        let changed_pools: Vec<String> = new.pools.iter().map(|p| p.name.clone()).collect();
        rules::count_vips(&mut self.router_vips, &old, false);
        rules::count_vips(&mut self.router_vips, &new, true);
        if rule.is_some() {
            self.parts.insert(key.to_string(), new);
        }
        self.publish_pool_health(true, Some(&changed_pools));
    }

    /// Tells the admin API and the metrics what now runs, for every Service.
    fn publish_all(&self) {
        let keys: Vec<String> = self.parts.keys().cloned().collect();
        if let Some(s) = &self.services {
            s.shared.reset_applied(self.cluster.clone());
        }
        self.publish(&keys);
    }

    /// Tells the admin API and the metrics what now runs for these Services.
    fn publish(&self, keys: &[String]) {
        let Some(s) = &self.services else {
            return;
        };
        s.shared.metrics.applied_rules.set(
            self.parts
                .values()
                .filter(|p| !p.frontends.is_empty())
                .count() as i64,
        );
        s.shared.update_applied(
            self.cluster.clone(),
            keys.iter().map(|k| {
                let parts = self.parts.get(k);
                let pools = parts
                    .into_iter()
                    .flat_map(|p| p.pools.iter())
                    .filter_map(|p| {
                        self.pools
                            .get(&p.name)
                            .map(|r| (p.name.clone(), r.pool.clone()))
                    })
                    .collect();
                let problems = parts.map(|p| p.problems.clone()).unwrap_or_default();
                (k.clone(), problems, pools)
            }),
        );
    }

    /// Applies a difference. Listeners are bound first: a failure changes nothing. Changed pools
    /// get a new version reusing their backends (health and connection counts survive); every
    /// frontend put, or whose pool changed, gets a new version; removed ones stop accepting and
    /// their connections drain on their own.
    async fn apply_delta(&mut self, d: Delta) -> Result<(), ApplyError> {
        let mut fresh: HashMap<ListenKey, Bound> = HashMap::new();
        for f in &d.fronts_put {
            let key = (f.protocol, f.listen);
            if self.listeners.contains_key(&key) || fresh.contains_key(&key) {
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

        let mut changed_pools: Vec<String> = Vec::new();
        for pc in d.pools_put {
            let name = pc.name.clone();
            match self.pools.remove(&name) {
                Some(o) if o.pool.cfg == pc => {
                    self.pools.insert(name, o);
                }
                old => {
                    let pool = Arc::new(Pool::build(
                        &pc,
                        old.as_ref().map(|o| &*o.pool),
                        &self.metrics,
                        !rules::is_service_name(&name),
                        &self.health_changed,
                        &self.events,
                    ));
                    // Subscribed before the old version lets go: checks both share keep running.
                    let checks = self.checks.subscribe(&pool);
                    drop(old);
                    tracing::info!(pool = %name, backends = pool.backends.len(), balance = ?pc.balance, "pool configured");
                    self.pools.insert(
                        name.clone(),
                        RunningPool {
                            pool,
                            _checks: checks,
                        },
                    );
                    changed_pools.push(name);
                }
            }
        }
        for name in &d.pools_gone {
            if let Some(old) = self.pools.remove(name) {
                for b in &old.pool.backends {
                    if b.metrics.is_some() {
                        self.metrics.forget_backend(name, &b.addr.to_string());
                    }
                }
                let _ = self.metrics.pool_up.remove_label_values(&[name]);
                self.pool_up.remove(name);
                tracing::info!(pool = %name, "pool removed; its connections drain");
            }
        }

        let put_keys: HashSet<ListenKey> = d
            .fronts_put
            .iter()
            .map(|f| (f.protocol, f.listen))
            .collect();
        let put_names: HashSet<String> = d.fronts_put.iter().map(|f| f.name.clone()).collect();
        let mut refresh = d.fronts_put;
        for p in &changed_pools {
            for k in self.pool_users.get(p).into_iter().flatten() {
                if put_keys.contains(k) {
                    continue;
                }
                if let Some(l) = self.listeners.get(k) {
                    refresh.push(l.version.borrow().cfg.clone());
                }
            }
        }
        for f in refresh {
            let key = (f.protocol, f.listen);
            let Some(pool) = self.pools.get(&f.pool).map(|p| p.pool.clone()) else {
                tracing::error!(frontend = %f.name, pool = %f.pool, "frontend without its pool; not changed");
                continue;
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
                metrics: self.metrics.frontend(&f.name, f.protocol),
            });
            if let Some(running) = self.listeners.get_mut(&key) {
                if running.name != f.name && !put_names.contains(&running.name) {
                    self.metrics.forget_frontend(&running.name);
                }
                if running.pool != f.pool {
                    if let Some(u) = self.pool_users.get_mut(&running.pool) {
                        u.remove(&key);
                    }
                    self.pool_users
                        .entry(f.pool.clone())
                        .or_default()
                        .insert(key);
                }
                running.name = f.name.clone();
                running.pool = f.pool.clone();
                running.version.send_replace(version);
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
            self.pool_users
                .entry(f.pool.clone())
                .or_default()
                .insert(key);
            self.listeners.insert(
                key,
                RunningListener {
                    name: f.name.clone(),
                    pool: f.pool.clone(),
                    version: tx,
                    stop,
                },
            );
        }
        for key in d.fronts_gone {
            if put_keys.contains(&key) {
                continue;
            }
            let Some(old) = self.listeners.remove(&key) else {
                continue;
            };
            old.stop.cancel();
            if let Some(u) = self.pool_users.get_mut(&old.pool) {
                u.remove(&key);
                if u.is_empty() {
                    self.pool_users.remove(&old.pool);
                }
            }
            if !put_names.contains(&old.name) {
                self.metrics.forget_frontend(&old.name);
            }
            tracing::info!(frontend = %old.name, listen = %key.1, protocol = ?key.0, "listener removed; its connections drain");
        }
        Ok(())
    }

    /// Starts, reloads or stops VRRP to run `new`. A start that fails is retried with backoff from
    /// the control loop (keel-lb serves meanwhile, without failover, and says so on /healthz).
    async fn apply_vrrp(
        &mut self,
        old: Option<keel_vrrp::VrrpConfig>,
        new: Option<keel_vrrp::VrrpConfig>,
    ) -> Result<(), String> {
        self.metrics
            .vrrp_configured
            .set(new.as_ref().map_or(0, |n| n.routers.len() as i64));
        let result = match (self.vrrp.clone(), new) {
            (Some(v), Some(n)) => {
                if old.as_ref() != Some(&n) {
                    match tokio::task::spawn_blocking(move || v.reload(n)).await {
                        Ok(Ok(())) => {
                            tracing::info!("vrrp reloaded");
                            Ok(())
                        }
                        Ok(Err(e)) => Err(format!(
                            "reload failed; routers keep their previous config: {e}"
                        )),
                        Err(e) => Err(format!("reload task failed: {e}")),
                    }
                } else {
                    Ok(())
                }
            }
            (Some(_), None) => {
                if let Some(v) = self.vrrp.take() {
                    tracing::info!("vrrp section removed; stopping virtual routers");
                    stop_vrrp(v).await;
                }
                if let Some(m) = &self.vrrp_metrics {
                    m.clear();
                }
                Ok(())
            }
            (None, Some(n)) => {
                let metrics = match &self.vrrp_metrics {
                    Some(m) => Ok(m.clone()),
                    None => keel_vrrp::VrrpMetrics::register(&self.metrics.registry)
                        .map(|m| self.vrrp_metrics.insert(m).clone())
                        .map_err(|e| format!("vrrp metrics: {e}")),
                };
                match metrics {
                    Err(e) => Err(e),
                    Ok(m) => {
                        match tokio::task::spawn_blocking(move || keel_vrrp::Vrrp::start(n, m))
                            .await
                        {
                            Ok(Ok(v)) => {
                                tracing::info!("vrrp started");
                                self.vrrp = Some(Arc::new(v));
                                self.vrrp_backoff.reset();
                                self.vrrp_retry_at = None;
                                self.pool_up.clear(); // re-announce every pool's health to the new routers
                                Ok(())
                            }
                            Ok(Err(e)) => Err(format!("failed to start: {e}")),
                            Err(e) => Err(format!("start task failed: {e}")),
                        }
                    }
                }
            }
            (None, None) => Ok(()),
        };
        if let Err(e) = &result {
            if self.vrrp.is_none() && self.vrrp_cfg.is_some() {
                let wait = self.vrrp_backoff.next_delay();
                self.vrrp_retry_at = Some(tokio::time::Instant::now() + wait);
                tracing::error!(error = %e, retry_in = ?wait, "VRRP is not running; serving WITHOUT virtual-IP failover");
            } else {
                tracing::error!(error = %e, "vrrp");
            }
        }
        self.update_vrrp_gauges();
        self.publish_view();
        result
    }

    /// Retries a VRRP start that failed, when its backoff is due; refreshes the routers gauges.
    async fn vrrp_tick(&mut self) {
        let due = self
            .vrrp_retry_at
            .is_some_and(|t| tokio::time::Instant::now() >= t);
        if due && self.vrrp.is_none() && self.vrrp_cfg.is_some() {
            tracing::info!(
                attempt = self.vrrp_backoff.attempts(),
                "retrying the VRRP start"
            );
            let cfg = self.vrrp_cfg.clone();
            if self.apply_vrrp(None, cfg).await.is_ok() {
                self.publish_pool_health(true, None);
            }
        }
        self.update_vrrp_gauges();
        self.tell_transitions();
        self.status.sample_rates();
    }

    /// Each VRRP transition not yet told becomes a recent event (checked once a second).
    fn tell_transitions(&mut self) {
        let Some(v) = &self.vrrp else { return };
        for r in v.status() {
            let Some(t) = r.last_transition else { continue };
            let key = format!(
                "{}/{}/{}/{}",
                r.name,
                r.vrid,
                r.interface,
                r.family.as_str()
            );
            if self.told_transitions.get(&key) == Some(&t.at) {
                continue;
            }
            self.told_transitions.insert(key, t.at);
            self.events.push(
                Kind::Vrrp,
                format!("{} (VRID {} on {})", r.name, r.vrid, r.interface),
                format!("{} -> {}: {}", t.from.as_str(), t.to.as_str(), t.reason),
            );
        }
    }

    /// A runtime change of one backend of the file, applied like a reload of the same file (only
    /// that pool gets a new version) and kept in the state file.
    async fn set_backend(
        &mut self,
        pool: &str,
        addr: SocketAddr,
        change: Change,
    ) -> Result<String, ChangeError> {
        let Some(file) = self.file.clone() else {
            return Err(ChangeError::NotFound("no running config".into()));
        };
        let before = self.overrides.clone();
        let now = crate::events::unix(std::time::SystemTime::now());
        let said = self.overrides.set(&file, pool, addr, change, now)?;
        let cluster = self.cluster.clone();
        if let Err(e) = self.apply_full(file, &cluster, false).await {
            self.overrides = before;
            return Err(ChangeError::Failed(format!("not applied: {e}")));
        }
        tracing::info!(pool, backend = %addr, "runtime change: {said}");
        self.events
            .push(Kind::Control, format!("{pool}/{addr}"), said.clone());
        let saved = self.save_overrides().await;
        self.publish_view();
        Ok(match saved {
            Ok(Some(p)) => format!("{said}; kept in {}", p.display()),
            Ok(None) => {
                format!("{said}; no state file (admin.state_file), so it lasts until keel-lb stops")
            }
            Err(e) => format!("{said}; NOT kept across a restart: {e}"),
        })
    }

    /// Writes the state file off the control loop; the path written, None without one.
    async fn save_overrides(&self) -> Result<Option<std::path::PathBuf>, String> {
        let Some(path) = self.overrides.path().map(|p| p.to_path_buf()) else {
            return Ok(None);
        };
        let bytes = self.overrides.encode();
        let p = path.clone();
        let r = tokio::task::spawn_blocking(move || crate::overrides::save(&p, &bytes))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| format!("{}: {e}", path.display())));
        if let Err(e) = &r {
            tracing::error!(error = %e, "runtime backend changes not saved");
        }
        r.map(|()| Some(path))
    }

    /// Starts, reconfigures or stops the BGP announcer for the file's `bgp:` section. A failed start
    /// (no CAP_NET_ADMIN) is retried at the next sync tick.
    async fn apply_bgp(
        &mut self,
        new: Option<crate::bgp::config::BgpConfig>,
    ) -> Result<(), String> {
        match (self.bgp.as_mut(), new) {
            (Some(a), Some(c)) => a.reconfigure(c).await,
            (Some(_), None) => {
                if let Some(a) = self.bgp.take() {
                    tracing::info!("bgp section removed; withdrawing its VIPs");
                    a.release().await;
                }
                self.publish_view();
                Ok(())
            }
            (None, None) => Ok(()),
            (None, Some(c)) => {
                let metrics = match &self.bgp_metrics {
                    Some(m) => m.clone(),
                    None => crate::bgp::BgpMetrics::register(&self.metrics.registry)
                        .map(|m| self.bgp_metrics.insert(m).clone())
                        .map_err(|e| format!("bgp metrics: {e}"))?,
                };
                let a = crate::bgp::Announcer::start(c, metrics).await?;
                self.bgp = Some(a);
                self.publish_view();
                Ok(())
            }
        }
    }

    /// Brings the BGP VIPs to what pool health and a planned leave say (idempotent: also run every
    /// tick, so an address removed by hand comes back).
    async fn sync_bgp(&mut self) {
        if self.bgp.is_none() {
            let cfg = self
                .file
                .as_ref()
                .and_then(|f| rules::bgp_with(f.bgp.as_ref(), self.parts.values()));
            let Some(cfg) = cfg else {
                return;
            };
            if let Err(e) = self.apply_bgp(Some(cfg.clone())).await {
                // Logged when the reason changes, not every second; the status keeps it.
                let before = self.bgp_failed.as_ref().and_then(|h| h.start_error());
                if before.as_deref() != Some(e.as_str()) {
                    tracing::error!(error = %e, "bgp: cannot start; nothing is announced (retried every second)");
                }
                self.bgp_failed = Some(crate::bgp::StatusHandle::failed(&cfg, e));
                self.publish_view();
                return;
            }
            if self.bgp_failed.take().is_some() {
                tracing::info!("bgp: started");
                self.publish_view();
            }
        }
        let up = self.bgp_pool_up();
        if let Some(a) = self.bgp.as_mut() {
            if let Err(e) = a.sync(&up).await {
                tracing::error!(error = %e, "bgp");
            }
        }
    }

    /// A frontend has a proxy listener: `mode: proxy`, or `mode: nat` while no rules could be
    /// installed (the nat table carries the rest).
    fn gets_listener(&self, f: &config::Frontend) -> bool {
        f.mode == config::Mode::Proxy || self.nat_fallback
    }

    /// The `mode: nat` frontends of the file and the Services with their pools' backends that may
    /// take new connections now.
    fn nat_frontends(&self) -> Vec<crate::nat::NatFrontend> {
        let Some(file) = &self.file else {
            return Vec::new();
        };
        // The file's, then the Services' (in a stable order: the table is compared as text).
        let mut keys: Vec<&String> = self.parts.keys().collect();
        keys.sort();
        file.frontends
            .iter()
            .chain(
                keys.into_iter()
                    .flat_map(|k| self.parts[k].frontends.iter()),
            )
            .filter(|f| f.mode == config::Mode::Nat)
            .map(|f| {
                let pool = self.pools.get(&f.pool).map(|p| &p.pool);
                crate::nat::NatFrontend {
                    name: f.name.clone(),
                    listen: f.listen,
                    protocol: f.protocol,
                    hash_source: pool.is_some_and(|p| p.cfg.balance == config::Balance::Maglev),
                    connect: f.timeouts.connect,
                    idle: f.timeouts.idle,
                    udp_session: f.timeouts.udp_session,
                    backends: pool
                        .map(|p| {
                            p.backends
                                .iter()
                                .filter(|b| b.available())
                                .map(|b| (b.addr, b.weight()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    unavailable: pool
                        .map(|p| {
                            p.backends
                                .iter()
                                .filter(|b| !b.available())
                                .map(|b| (b.addr, !b.healthy()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    cut_down_after: pool.and_then(|p| p.cfg.shutdown_sessions_on_down),
                }
            })
            .collect()
    }

    /// Brings the nat table to the config and backend health (cheap when nothing changed: the
    /// script is compared before nft runs).
    async fn sync_nat(&mut self) {
        let fronts = self.nat_frontends();
        if self.nat.sync(&fronts).await {
            self.publish_view();
        }
        let fallback = self.nat.fallback();
        if fallback != self.nat_fallback {
            self.nat_fallback = fallback;
            if fallback {
                tracing::warn!("nat: no rules in place; the proxy serves the mode: nat frontends until they are");
            } else {
                tracing::info!("nat: rules installed; the mode: nat frontends leave the proxy (its connections drain)");
            }
            if let Some(file) = self.file.clone() {
                let cluster = self.cluster.clone();
                if let Err(e) = self.apply_full(file, &cluster, false).await {
                    tracing::error!(error = %e, "nat: moving the mode: nat frontends");
                }
            }
            self.publish_view();
        }
        // 1 also without nat frontends (nothing to install): 0 always means something is wrong.
        self.metrics
            .nat_installed
            .set(i64::from(self.nat.as_configured()));
        if let Some(counts) = self.nat.count_flows().await {
            let now: HashSet<(String, String)> = counts
                .iter()
                .map(|(p, _)| (p.frontend.clone(), p.backend.to_string()))
                .collect();
            for (fe, backend) in self.nat_flow_series.difference(&now) {
                let _ = self
                    .metrics
                    .nat_open_flows
                    .remove_label_values(&[fe, backend]);
            }
            for (p, n) in &counts {
                self.metrics
                    .nat_open_flows
                    .with_label_values(&[&p.frontend, &p.backend.to_string()])
                    .set(i64::try_from(*n).unwrap_or(i64::MAX));
            }
            self.nat_flow_series = now;
            self.publish_view();
        }
        for p in self.nat.take_cuts() {
            self.metrics
                .nat_flows_cut
                .with_label_values(&[&p.frontend, &p.backend.to_string()])
                .inc();
        }
        for (fe, backend, n) in self.nat.new_connections().await {
            self.metrics
                .nat_connections
                .with_label_values(&[&fe, &backend.to_string()])
                .inc_by(n);
        }
    }

    /// Pool health as BGP announcements see it: a pool counts once one of its available backends
    /// passed a health check, not before its first check.
    fn bgp_pool_up(&self) -> HashMap<String, bool> {
        self.pools
            .iter()
            .map(|(n, rp)| (n.clone(), rp.pool.has_checked_available()))
            .collect()
    }

    fn update_vrrp_gauges(&self) {
        let running = self.vrrp.as_ref().map_or(0, |v| {
            v.status()
                .iter()
                .filter(|r| r.state != keel_vrrp::State::Initialize)
                .count() as i64
        });
        self.metrics.vrrp_running.set(running);
    }

    /// Recomputes each pool's "has a healthy backend" and tells VRRP and the metrics what changed.
    /// `only`: just these pools (a Service's own), else all.
    fn publish_pool_health(&mut self, quiet_first: bool, only: Option<&[String]>) {
        let names: Vec<String> = match only {
            Some(n) => n.to_vec(),
            None => self.pools.keys().cloned().collect(),
        };
        for name in &names {
            let Some(rp) = self.pools.get(name) else {
                continue;
            };
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
        let Some(path) = self.file.as_ref().map(|c| c.path.clone()) else {
            return Err("no running config".into());
        };
        // Parsed off the runtime: a big or hostile file must never stall the data plane.
        let p = path.clone();
        let loaded = tokio::task::spawn_blocking(move || config::load(&p))
            .await
            .map_err(|e| format!("loading the config failed: {e}"));
        let result = match loaded {
            Ok(Ok(c)) => self.apply(c).await.map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e),
        };
        self.last_reload = Some(ReloadResult {
            at: crate::events::unix(std::time::SystemTime::now()),
            ok: result.is_ok(),
            error: result.as_ref().err().cloned(),
        });
        self.events.push(
            Kind::Reload,
            path.display().to_string(),
            match &result {
                Ok(()) => "reloaded".to_string(),
                Err(e) => format!("FAILED, the previous config keeps running: {e}"),
            },
        );
        self.publish_view();
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

    async fn handover(&mut self) -> String {
        let up = self.bgp_pool_up();
        if let Some(a) = self.bgp.as_mut() {
            // Withdrawn, still serving; POST /resume announces again.
            return match a.set_draining(true, &up).await {
                Ok(()) => {
                    "bgp routes withdrawn; still serving; POST /resume announces again".into()
                }
                Err(e) => format!("bgp: {e}"),
            };
        }
        match (&self.vrrp, &self.file) {
            (Some(v), Some(c)) => {
                let outcome = v.handover(c.handover_timeout).await;
                tracing::info!(
                    ?outcome,
                    "vrrp handover finished; POST /resume starts the routers again"
                );
                self.update_vrrp_gauges();
                format!("{outcome:?}")
            }
            _ => "vrrp is not running".into(),
        }
    }

    /// Starts the routers again after a handover stopped them (a fresh VRRP with the running config).
    async fn resume(&mut self) -> Result<(), String> {
        let up = self.bgp_pool_up();
        if let Some(a) = self.bgp.as_mut() {
            a.set_draining(false, &up).await?;
            tracing::info!("bgp: announcing again after a handover");
            if self.vrrp_cfg.is_none() {
                return Ok(());
            }
        }
        if self.vrrp_cfg.is_none() {
            return Err("no vrrp section: nothing to resume".into());
        }
        if let Some(v) = self.vrrp.take() {
            stop_vrrp(v).await;
        }
        let cfg = self.vrrp_cfg.clone();
        self.apply_vrrp(None, cfg).await?;
        self.publish_pool_health(true, None);
        tracing::info!("vrrp resumed after a handover");
        Ok(())
    }

    /// The control loop: signals, admin commands, health changes; returns after graceful shutdown.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        self.metrics.last_reload_ok.set(1);
        let mut vrrp_tick = tokio::time::interval(std::time::Duration::from_secs(1));
        vrrp_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = vrrp_tick.tick() => {
                    self.vrrp_tick().await;
                    self.sync_bgp().await;
                    self.sync_nat().await;
                }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading");
                    let _ = self.reload().await;
                    self.sync_nat().await;
                }
                Some(cmd) = commands.recv() => match cmd {
                    Command::Reload(reply) => {
                        let r = self.reload().await;
                        self.sync_nat().await;
                        let _ = reply.send(r);
                    }
                    Command::Handover(reply) => {
                        let r = self.handover().await;
                        let _ = reply.send(r);
                    }
                    Command::Resume(reply) => {
                        let r = self.resume().await;
                        let _ = reply.send(r);
                    }
                    Command::Backend { pool, addr, change, reply } => {
                        let r = self.set_backend(&pool, addr, change).await;
                        self.sync_nat().await;
                        let _ = reply.send(r);
                    }
                },
                _ = self.health_changed.notified() => {
                    self.publish_pool_health(false, None);
                    self.sync_bgp().await;
                    self.sync_nat().await;
                }
                Some(rules) = next_rules(&mut self.services) => {
                    self.apply_cluster(rules).await;
                    self.sync_nat().await;
                }
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
            .file
            .as_ref()
            .map(|c| (c.shutdown_drain, c.handover_timeout))
            .unwrap_or((config::DEFAULT_DRAIN, config::DEFAULT_HANDOVER));
        if let Some(v) = self.vrrp.take() {
            let outcome = v.handover(handover).await;
            tracing::info!(?outcome, "vrrp handover before shutdown");
            stop_vrrp(v).await;
        }
        // BGP: withdraw first, keep accepting while the routers converge, then drain.
        let bgp = self.bgp.take();
        if let Some(mut a) = bgp {
            if let Err(e) = a.set_draining(true, &self.bgp_pool_up()).await {
                tracing::error!(error = %e, "bgp: withdrawing before shutdown");
            }
            let wait = a.withdraw_wait();
            tracing::info!(
                ?wait,
                "bgp routes withdrawn; still accepting while routers converge"
            );
            tokio::time::sleep(wait).await;
            self.bgp = Some(a);
        }
        for l in self.listeners.values() {
            l.stop.cancel();
        }
        self.checks.stop_all();
        if let Some(w) = self.state_writer.take() {
            w.flush().await;
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
        if let Some(a) = self.bgp.take() {
            a.release().await;
        }
        // Flows NATed here end with the table (after a handover their packets arrive elsewhere).
        self.nat.remove().await;
    }
}

/// A Service whose listener cannot be bound is left out whole (frontends, pools, VIPs), and why
/// is kept with its other problems.
fn left_out(
    key: &str,
    parts: &mut SvcParts,
    proto: Protocol,
    addr: SocketAddr,
    err: &std::io::Error,
) {
    tracing::error!(service = %key, %addr, error = %err, "services: cannot listen; this Service is left out");
    let mut problems = std::mem::take(&mut parts.problems);
    problems.push(format!("cannot listen on {proto:?} {addr}: {err}"));
    *parts = SvcParts {
        problems,
        ..SvcParts::default()
    };
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
