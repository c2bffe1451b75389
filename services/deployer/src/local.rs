//! The local backend: each track's replicas are child processes (the [`Supervisor`]), and a
//! weighted [`Proxy`] per service and environment splits traffic between them. A reconcile loop
//! turns the supervisor's readiness into proxy routing, so a replica that is not ready gets no
//! traffic and the weight in force is what the router really does.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use hopngo_delivery::DeliveryConfig;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::{
    backend::{Backend, BackendError, Observed, Target, TrackObserved},
    proxy::{Proxy, ProxyMetrics, RouteRules, Routing, Track},
    supervisor::{ReplicaSetSpec, ReplicaStatus, Supervisor, set_key},
};

/// How often readiness is turned into routing.
const RECONCILE_INTERVAL: Duration = Duration::from_millis(50);

struct Running {
    target: Target,
    /// The target's routes, compiled when it was applied.
    rules: Arc<RouteRules>,
    proxy: Proxy,
}

/// A ready replica, and what it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaEndpoint {
    /// Service.
    pub service: String,
    /// Environment.
    pub environment: String,
    /// Track whose traffic it takes.
    pub track: Track,
    /// The track's artifact.
    pub revision: String,
    /// Where it listens.
    pub address: SocketAddr,
}

/// The local backend.
pub struct LocalBackend {
    config: DeliveryConfig,
    proxy_port_base: Option<u16>,
    supervisor: Supervisor,
    metrics: ProxyMetrics,
    running: Mutex<HashMap<(String, String), Running>>,
    /// Held by an apply from its first replica set to its recorded target, and by each
    /// reconcile: otherwise a reconcile in between removes the new replica set as unwanted.
    changes: Mutex<()>,
    shutdown: CancellationToken,
}

impl LocalBackend {
    /// A backend running the services of `config` (their `local` section), logging under
    /// `log_dir`; proxies record into `metrics`.
    /// With `proxy_port_base`, the proxy of the i-th service in the j-th environment of the
    /// config listens on `base + i × environments + j` (known addresses for a local stack);
    /// without it, on any free port.
    pub fn new(
        config: DeliveryConfig,
        proxy_port_base: Option<u16>,
        log_dir: std::path::PathBuf,
        metrics: ProxyMetrics,
        shutdown: CancellationToken,
    ) -> std::io::Result<Arc<LocalBackend>> {
        let backend = Arc::new(LocalBackend {
            config,
            proxy_port_base,
            supervisor: Supervisor::new(log_dir)?,
            metrics,
            running: Mutex::new(HashMap::new()),
            changes: Mutex::new(()),
            shutdown: shutdown.clone(),
        });
        let weak = Arc::downgrade(&backend);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RECONCILE_INTERVAL) => {}
                }
                let Some(backend) = weak.upgrade() else { return };
                backend.reconcile().await;
            }
        });
        Ok(backend)
    }

    /// Address of the proxy of a service and environment, once applied.
    pub async fn proxy_addr(&self, service: &str, environment: &str) -> Option<SocketAddr> {
        self.running.lock().await.get(&(service.to_string(), environment.to_string())).map(|r| r.proxy.addr())
    }

    /// Starts the proxy of a target on `addr` (port 0: any) before its first apply, so it keeps
    /// a stable address across deployer restarts.
    pub async fn bind_proxy(&self, service: &str, environment: &str, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let mut running = self.running.lock().await;
        let key = (service.to_string(), environment.to_string());
        if let Some(r) = running.get(&key) {
            return Ok(r.proxy.addr());
        }
        let proxy = Proxy::start(addr, service, environment, self.metrics.clone(), self.shutdown.clone()).await?;
        let bound = proxy.addr();
        let target = Target::empty(service, environment);
        running.insert(key, Running { target, rules: Arc::default(), proxy });
        Ok(bound)
    }

    /// Where the proxy of a service and environment listens when it is first started.
    pub fn default_proxy_addr(&self, service: &str, environment: &str) -> SocketAddr {
        let port = self.proxy_port_base.and_then(|base| {
            let s = self.config.services.iter().position(|x| x.name == service)?;
            let e = self.config.environments.iter().position(|x| x.name == environment)?;
            u16::try_from(base as usize + s * self.config.environments.len() + e).ok()
        });
        SocketAddr::from(([127, 0, 0, 1], port.unwrap_or(0)))
    }

    /// The replicas that take traffic now (those the proxies route to), of one service and/or
    /// environment when given.
    pub async fn ready_replicas(&self, service: Option<&str>, environment: Option<&str>) -> Vec<ReplicaEndpoint> {
        let running = self.running.lock().await;
        let mut endpoints = Vec::new();
        for r in running.values() {
            let (s, e) = (&r.target.service, &r.target.environment);
            if service.is_some_and(|x| x != s) || environment.is_some_and(|x| x != e) {
                continue;
            }
            for (track, addresses) in &r.proxy.routing().tracks {
                let Some(spec) = r.target.tracks.iter().find(|t| t.track == *track) else { continue };
                endpoints.extend(addresses.iter().map(|address| ReplicaEndpoint {
                    service: s.clone(),
                    environment: e.clone(),
                    track: *track,
                    revision: spec.artifact.clone(),
                    address: *address,
                }));
            }
        }
        endpoints
    }

    /// Stops every replica.
    pub async fn shutdown(&self) {
        self.supervisor.shutdown().await;
    }

    /// The service, when it and the environment are declared by the delivery config.
    fn declared(&self, service: &str, environment: &str) -> Result<&hopngo_delivery::Service, BackendError> {
        crate::backend::declared(&self.config, service, environment).map(|(s, _)| s)
    }

    fn replica_spec(&self, target: &Target, artifact: &str, replicas: u32) -> Result<ReplicaSetSpec, BackendError> {
        let service = self.declared(&target.service, &target.environment)?;
        let local = service.local.as_ref().ok_or_else(|| BackendError::Invalid {
            field: "target.service".into(),
            reason: format!(
                "{:?} has no local.command in the delivery config: the local backend cannot run it",
                target.service
            ),
        })?;
        let spec = ReplicaSetSpec {
            service: target.service.clone(),
            environment: target.environment.clone(),
            version: artifact.to_string(),
            command: local.command.clone(),
            env: local.env.clone(),
            readiness_path: local.readiness_path.clone().unwrap_or_else(|| "/healthz".into()),
            replicas,
            pool: String::new(),
        };
        spec.validate()
            .map_err(|reason| BackendError::Invalid { field: format!("services.{}.local", target.service), reason })?;
        Ok(spec)
    }

    /// Turns readiness into routing, and stops replica sets no track uses any more.
    async fn reconcile(&self) {
        let _changes = self.changes.lock().await;
        self.reconcile_locked().await;
    }

    /// [`Self::reconcile`] with `changes` held by the caller.
    async fn reconcile_locked(&self) {
        let running = self.running.lock().await;
        let mut wanted = std::collections::BTreeSet::new();
        for r in running.values() {
            let routing = self.routing(&r.target, &r.rules).await;
            if *r.proxy.routing() != routing {
                r.proxy.set_routing(routing);
            }
            for t in &r.target.tracks {
                wanted.insert(track_set(&r.target.service, &r.target.environment, t));
            }
        }
        drop(running);
        for key in self.supervisor.keys().await {
            if !wanted.contains(&key) {
                self.supervisor.remove(&key).await;
            }
        }
    }

    async fn routing(&self, target: &Target, rules: &Arc<RouteRules>) -> Routing {
        let mut tracks = BTreeMap::new();
        for t in &target.tracks {
            let replicas = self.supervisor.status(&track_set(&target.service, &target.environment, t)).await;
            tracks.insert(t.track, ready_addrs(&replicas));
        }
        route(target, rules, tracks)
    }
}

/// The replica pool of a track: an experiment's baseline runs fresh replicas of its own, every
/// other track shares the set of its version.
fn pool(track: Track) -> &'static str {
    match track {
        Track::Baseline => "baseline",
        Track::Stable | Track::Canary | Track::Active | Track::Preview => "",
    }
}

/// Key of the replica set a track runs on.
fn track_set(service: &str, environment: &str, t: &crate::backend::TrackSpec) -> String {
    set_key(service, environment, &t.artifact, pool(t.track))
}

fn ready_addrs(replicas: &[ReplicaStatus]) -> Vec<SocketAddr> {
    replicas.iter().filter(|r| r.ready).map(|r| SocketAddr::from(([127, 0, 0, 1], r.port))).collect()
}

/// The routing of a target given each track's ready replicas.
fn route(target: &Target, rules: &Arc<RouteRules>, tracks: BTreeMap<Track, Vec<SocketAddr>>) -> Routing {
    let has = |t: Track| target.tracks.iter().any(|s| s.track == t);
    let primary = [Track::Stable, Track::Active].into_iter().find(|t| has(*t));
    let weighted = has(Track::Canary).then_some((Track::Canary, target.canary_weight));
    Routing { tracks, primary, weighted, baseline: has(Track::Baseline), routes: rules.clone() }
}

impl Backend for LocalBackend {
    async fn stop(&self) {
        self.shutdown().await;
    }

    fn render(&self, target: &Target) -> Result<String, BackendError> {
        Err(BackendError::Invalid {
            field: "target".into(),
            reason: format!("the local backend runs {:?} as processes: it writes no objects to render", target.service),
        })
    }

    async fn control(&self, service: &str, _: &str, _: crate::backend::RolloutAction) -> Result<(), BackendError> {
        Err(BackendError::Invalid {
            field: "service".into(),
            reason: format!("{service:?} has no Argo Rollout: the local backend runs processes"),
        })
    }

    fn check_names(&self, service: &str, environment: &str) -> Result<(), BackendError> {
        self.declared(service, environment).map(|_| ())
    }

    fn check(&self, target: &Target) -> Result<(), BackendError> {
        for t in &target.tracks {
            self.replica_spec(target, &t.artifact, t.replicas)?;
        }
        Ok(())
    }

    async fn address(&self, service: &str, environment: &str) -> Option<String> {
        self.proxy_addr(service, environment).await.map(|a| a.to_string())
    }

    async fn apply(&self, target: &Target) -> Result<(), BackendError> {
        let rules = RouteRules::compile(&target.routes)
            .map_err(|reason| BackendError::Invalid { field: "target.header_routes".into(), reason })?;
        let _changes = self.changes.lock().await;
        let mut specs = Vec::new();
        for t in &target.tracks {
            let spec = self.replica_spec(target, &t.artifact, t.replicas)?;
            specs.push(ReplicaSetSpec { pool: pool(t.track).into(), ..spec });
        }
        // Two tracks on one artifact (a blue/green switch in progress) share one replica set
        // with the larger count, unless one keeps a pool of its own.
        let mut by_artifact: BTreeMap<(String, String), ReplicaSetSpec> = BTreeMap::new();
        for spec in specs {
            by_artifact
                .entry((spec.version.clone(), spec.pool.clone()))
                .and_modify(|s| s.replicas = s.replicas.max(spec.replicas))
                .or_insert(spec);
        }
        for spec in by_artifact.into_values() {
            self.supervisor
                .ensure(spec)
                .await
                .map_err(|reason| BackendError::Invalid { field: "target".into(), reason })?;
        }
        self.bind_proxy(
            &target.service,
            &target.environment,
            self.default_proxy_addr(&target.service, &target.environment),
        )
        .await
        .map_err(|e| BackendError::Unavailable(format!("starting the proxy: {e}")))?;
        let mut running = self.running.lock().await;
        if let Some(r) = running.get_mut(&(target.service.clone(), target.environment.clone())) {
            r.rules = Arc::new(rules);
            r.target = target.clone();
        }
        drop(running);
        self.reconcile_locked().await;
        Ok(())
    }

    async fn status(&self, service: &str, environment: &str) -> Option<Observed> {
        let running = self.running.lock().await;
        let r = running.get(&(service.to_string(), environment.to_string()))?;
        let routing = r.proxy.routing();
        let mut observed = Observed::default();
        let mut waiting = Vec::new();
        let mut ready_tracks = BTreeMap::new();
        for t in &r.target.tracks {
            let replicas = self.supervisor.status(&track_set(service, environment, t)).await;
            ready_tracks.insert(t.track, ready_addrs(&replicas));
            let ready = replicas.iter().take(t.replicas as usize).filter(|x| x.ready).count() as u32;
            let message = replicas.iter().find(|x| !x.ready).map(|x| x.message.clone()).unwrap_or_default();
            if ready < t.replicas {
                waiting.push(format!(
                    "{} {}/{} ready{}",
                    t.track.as_str(),
                    ready,
                    t.replicas,
                    if message.is_empty() { String::new() } else { format!(" ({message})") }
                ));
            }
            observed.tracks.push(TrackObserved {
                track: Some(t.track),
                artifact: t.artifact.clone(),
                desired: t.replicas,
                ready,
                message,
                restarts: replicas.iter().map(|x| x.restarts).sum(),
                ..Default::default()
            });
        }
        // The weight in force is what the router does: none while the canary has no ready replica.
        observed.canary_weight = match routing.weighted {
            Some((track, weight)) if routing.has_replicas(track) => weight,
            _ => 0,
        };
        let routing_current = *routing == route(&r.target, &r.rules, ready_tracks);
        observed.converged = waiting.is_empty() && routing_current && observed.canary_weight == r.target.canary_weight;
        observed.message = if observed.converged {
            String::new()
        } else if waiting.is_empty() {
            "routing being updated".into()
        } else {
            waiting.join("; ")
        };
        Some(observed)
    }

    async fn preflight(&self, service: &str, environment: &str) -> Vec<(String, bool, String)> {
        let target = Target::empty(service, environment);
        let mut checks = Vec::new();
        match self.replica_spec(&target, "preflight", 1) {
            Ok(spec) => {
                let program = &spec.command[0];
                let found = hopngo_kit::program::find(program);
                checks.push((
                    "command".into(),
                    found.is_some(),
                    match found {
                        Some(path) => format!("{program} found at {}", path.display()),
                        None => format!("{program} not found on PATH"),
                    },
                ));
            }
            Err(e) => checks.push(("command".into(), false, e.to_string())),
        }
        // An environment on Kubernetes must not quietly run as local processes: its analyses
        // use the templates' Kubernetes forms (Prometheus), which would find nothing here.
        if let Some(env) = self.config.environment(environment)
            && env.backend() != hopngo_delivery::Backend::Local
        {
            checks.push((
                "backend".into(),
                false,
                format!(
                    "environment {environment:?} runs on Kubernetes (it has kubernetes settings); this deployer runs the local backend"
                ),
            ));
        }
        let setpriv = std::path::Path::new("/usr/bin/setpriv").is_file();
        checks.push((
            "setpriv".into(),
            setpriv,
            if setpriv {
                "runs replicas with a parent-death signal".into()
            } else {
                "/usr/bin/setpriv (util-linux) is missing: replicas would outlive a killed deployer".into()
            },
        ));
        checks
    }
}
