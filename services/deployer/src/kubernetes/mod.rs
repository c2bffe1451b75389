//! The Kubernetes backend, native mode: the deployer owns each service's Deployments, Services
//! and HTTPRoute in the environment's namespace (see [`objects`]). Every write is a server-side
//! apply by one field manager ([`objects::FIELD_MANAGER`]), forced (the fields it sends are its
//! own) but never sending a field another manager took (an HPA's replica count). What runs is
//! read from watches (reflector caches), never by polling; an object is written only when the
//! cache shows it differs from what is desired, so a restarted deployer re-reads the cluster and
//! writes nothing that is already in force.
//!
//! Traffic follows readiness: the route sends the canary its weight, and a blue/green active
//! Service switches selector, only once the Deployment behind it is ready; a track dropped from
//! the target loses its traffic first and its Deployment after `scaleDownDelay`, once what
//! remains is ready.

pub mod argo;
mod driven;
pub mod objects;
pub mod route;
pub mod status;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use hopngo_delivery::DeliveryConfig;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod, core::v1::Service};
use kube::{
    Api, Client, Resource, ResourceExt as _,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{
        WatchStreamExt as _, reflector,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use self::{
    objects::{FIELD_MANAGER, LABEL_TRACK, Placement, Workload, track_name},
    route::HttpRoute,
    status::{artifact_of, covers, track_view},
};
use crate::{
    backend::{Backend, BackendError, Observed, RolloutAction, Target, TrackObserved},
    proxy::Track,
};

/// How often desired states are re-checked against the caches.
const RECONCILE_INTERVAL: Duration = Duration::from_millis(100);
/// How long the caches get to fill at start.
const CACHE_SYNC: Duration = Duration::from_secs(30);
/// Default of `scaleDownDelay`.
const DEFAULT_SCALE_DOWN_DELAY: Duration = Duration::from_secs(30);

/// Watched objects of one namespace.
struct Caches {
    deployments: Store<Deployment>,
    pods: Store<Pod>,
    services: Store<Service>,
    routes: Option<Store<HttpRoute>>,
    /// Every Rollout of the namespace (they are not ours to label), when a service is in Argo mode.
    rollouts: Option<Store<argo::Rollout>>,
}

/// How a service runs in an environment.
enum Mode<'a> {
    /// On Deployments the deployer owns.
    Native(Workload<'a>),
    /// Through its existing Argo Rollout.
    Argo { rollout: &'a hopngo_delivery::kubernetes::ArgoRolloutRef, namespace: &'a str },
}

/// A service and an environment.
type TargetKey = (String, String);
/// An object: kind, namespace, name.
type ObjectKey = (String, String, String);

/// An object the deployer wrote: what it sent and the resourceVersion the server answered.
#[derive(Clone)]
struct Written {
    body: Value,
    resource_version: u64,
}

/// The Kubernetes backend.
pub struct KubeBackend {
    config: DeliveryConfig,
    client: Client,
    caches: BTreeMap<String, Caches>,
    desired: Mutex<BTreeMap<TargetKey, Target>>,
    written: Mutex<HashMap<ObjectKey, Written>>,
    unwanted_since: Mutex<HashMap<(String, String), Instant>>,
    /// One reconcile at a time per service and environment: otherwise two could both see an
    /// object missing and write it. Targets touch disjoint objects, so they do not wait on each
    /// other (one abort is not queued behind 199 other services' reconciles).
    changes: Mutex<HashMap<TargetKey, Arc<tokio::sync::Mutex<()>>>>,
    writes: prometheus::IntCounterVec,
}

fn unavailable(context: &str, err: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(format!("{context}: {err}"))
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> BackendError {
    BackendError::Invalid { field: field.into(), reason: reason.into() }
}

/// A watch of one kind in one namespace, filling a cache until `stop`.
fn watch<K>(api: Api<K>, labels: Option<&str>, stop: &CancellationToken) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default().any_semantic();
    let config = match labels {
        Some(labels) => config.labels(labels),
        None => config,
    };
    let stream = reflector(writer, watcher(api, config)).default_backoff().applied_objects();
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                next = stream.next() => match next {
                    Some(Ok(_)) => {}
                    Some(Err(err)) => tracing::warn!(%err, "watch failed; retrying"),
                    None => return,
                },
            }
        }
    });
    reader
}

/// A client for the cluster of `kubeconfig` (default: `KUBECONFIG`, `~/.kube/config`, then the
/// in-cluster service account).
pub async fn client(kubeconfig: Option<PathBuf>) -> anyhow::Result<Client> {
    let client_config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(&path)?;
            kube::Config::from_custom_kubeconfig(file, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(client_config)?)
}

impl KubeBackend {
    /// Connects with `kubeconfig` (else the usual inference: `KUBECONFIG`, `~/.kube/config`, the
    /// in-cluster service account), starts watching every environment's namespace, waits for
    /// the caches and starts the reconcile loop. Writes are counted in `registry`.
    pub async fn connect(
        config: DeliveryConfig,
        kubeconfig: Option<PathBuf>,
        registry: &prometheus::Registry,
        stop: CancellationToken,
    ) -> anyhow::Result<Arc<KubeBackend>> {
        KubeBackend::with_client(config, client(kubeconfig).await?, registry, stop).await
    }

    /// [`KubeBackend::connect`] over a client the caller made.
    pub async fn with_client(
        config: DeliveryConfig,
        client: Client,
        registry: &prometheus::Registry,
        stop: CancellationToken,
    ) -> anyhow::Result<Arc<KubeBackend>> {
        let routed = config.services.iter().any(|s| s.kubernetes.as_ref().is_some_and(|k| k.route.is_some()));
        let argo = config.services.iter().any(|s| s.argo_rollout.is_some());
        let labels = format!("{}={}", objects::MANAGED.0, objects::MANAGED.1);
        let mut caches = BTreeMap::new();
        for env in &config.environments {
            let Some(k) = &env.kubernetes else { continue };
            let ns = k.namespace.as_str();
            caches.entry(ns.to_string()).or_insert_with(|| Caches {
                deployments: watch(Api::namespaced(client.clone(), ns), Some(&labels), &stop),
                pods: watch(Api::namespaced(client.clone(), ns), Some(&labels), &stop),
                services: watch(Api::namespaced(client.clone(), ns), Some(&labels), &stop),
                routes: routed.then(|| watch(Api::namespaced(client.clone(), ns), Some(&labels), &stop)),
                rollouts: argo.then(|| watch(Api::namespaced(client.clone(), ns), None, &stop)),
            });
        }
        for (ns, c) in &caches {
            let ready = async {
                c.deployments.wait_until_ready().await?;
                c.pods.wait_until_ready().await?;
                c.services.wait_until_ready().await?;
                if let Some(routes) = &c.routes {
                    routes.wait_until_ready().await?;
                }
                if let Some(rollouts) = &c.rollouts {
                    rollouts.wait_until_ready().await?;
                }
                Ok::<_, reflector::store::WriterDropped>(())
            };
            tokio::time::timeout(CACHE_SYNC, ready)
                .await
                .map_err(|_| anyhow::anyhow!("namespace {ns}: the watches did not list within {CACHE_SYNC:?} (does the namespace exist, may the deployer list it?)"))??;
        }
        let writes = prometheus::IntCounterVec::new(
            prometheus::Opts::new("hopngo_deployer_kube_writes_total", "Kubernetes API writes by kind and verb"),
            &["kind", "verb"],
        )?;
        registry.register(Box::new(writes.clone()))?;
        let backend = Arc::new(KubeBackend {
            config,
            client,
            caches,
            desired: Mutex::default(),
            written: Mutex::default(),
            unwanted_since: Mutex::default(),
            changes: Mutex::default(),
            writes,
        });
        let weak = Arc::downgrade(&backend);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RECONCILE_INTERVAL) => {}
                }
                let Some(backend) = weak.upgrade() else { return };
                let targets: Vec<Target> = backend.lock_desired().values().cloned().collect();
                // Argo mode is driven, not owned: the image is set when asked, never re-asserted.
                for target in targets.into_iter().filter(|t| backend.workload(&t.service, &t.environment).is_ok()) {
                    if let Err(err) = backend.reconcile(&target).await {
                        tracing::warn!(%err, service = %target.service, environment = %target.environment, "reconcile failed");
                    }
                }
            }
        });
        Ok(backend)
    }

    fn lock_desired(&self) -> std::sync::MutexGuard<'_, BTreeMap<TargetKey, Target>> {
        self.desired.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How the service runs in the environment, when the config runs it on Kubernetes.
    fn mode(&self, service: &str, environment: &str) -> Result<Mode<'_>, BackendError> {
        let (declared, env) = crate::backend::declared(&self.config, service, environment)?;
        let k_env = env.kubernetes.as_ref().ok_or_else(|| {
            invalid(
                "target.environment",
                format!("environments.{environment}.kubernetes is missing: no namespace to run in"),
            )
        })?;
        if let Some(rollout) = &declared.argo_rollout {
            return Ok(Mode::Argo { rollout, namespace: &k_env.namespace });
        }
        let spec = declared.kubernetes.as_ref().ok_or_else(|| {
            invalid(
                "target.service",
                format!(
                    "services.{service}.kubernetes is missing (nor has it an argoRollout): the Kubernetes backend has no image repository for it"
                ),
            )
        })?;
        Ok(Mode::Native(Workload {
            service: &declared.name,
            environment_name: &env.name,
            namespace: &k_env.namespace,
            spec,
            environment: k_env,
        }))
    }

    /// The service's workload in the environment, when the deployer owns it.
    fn workload(&self, service: &str, environment: &str) -> Result<Workload<'_>, BackendError> {
        match self.mode(service, environment)? {
            Mode::Native(w) => Ok(w),
            Mode::Argo { rollout, .. } => Err(invalid(
                "target.service",
                format!("{service:?} is released through its Argo Rollout {:?}", rollout.name),
            )),
        }
    }

    fn caches(&self, namespace: &str) -> Result<&Caches, BackendError> {
        self.caches
            .get(namespace)
            .ok_or_else(|| unavailable("watches", format!("namespace {namespace} is not watched")))
    }

    /// The Deployments of a service by slot.
    fn deployments(&self, w: &Workload<'_>) -> Result<BTreeMap<Track, Arc<Deployment>>, BackendError> {
        let c = self.caches(w.namespace)?;
        Ok(Track::ALL
            .into_iter()
            .filter_map(|slot| {
                let key = ObjectRef::new(&track_name(w.service, slot)).within(w.namespace);
                c.deployments.get(&key).map(|d| (slot, d))
            })
            .collect())
    }

    /// Pods of one slot of a service.
    fn pods(&self, w: &Workload<'_>, slot: Track) -> Vec<Arc<Pod>> {
        let Ok(c) = self.caches(w.namespace) else { return Vec::new() };
        c.pods.state_filter(|p| {
            let labels = p.labels();
            labels.get(objects::LABEL_SERVICE).map(String::as_str) == Some(w.service)
                && labels.get(LABEL_TRACK).map(String::as_str) == Some(slot.as_str())
        })
    }

    fn placements(&self, w: &Workload<'_>, target: &Target) -> Result<Vec<Placement>, BackendError> {
        let running: BTreeMap<Track, String> = self
            .deployments(w)?
            .into_iter()
            .filter_map(|(slot, d)| artifact_of(&d).map(|a| (slot, a.to_string())))
            .collect();
        Ok(objects::placements(target, &running, w.spec.route.is_some()))
    }

    /// Everything the next reconcile of `target` would apply, in order (workloads, then
    /// Services, then the route), with the Deployments it would delete.
    /// `track_delays`: start the scale-down delay of dropped slots (a reconcile does, a render or
    /// a status does not).
    fn desired_objects(&self, target: &Target, track_delays: bool) -> Result<(Vec<Value>, Vec<String>), BackendError> {
        let w = self.workload(&target.service, &target.environment)?;
        let placements = self.placements(&w, target)?;
        let running = self.deployments(&w)?;
        let ready = |p: &Placement| {
            let pods = self.pods(&w, p.slot);
            let pods: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
            track_view(p, running.get(&p.slot).map(|d| d.as_ref()), &pods).converged
        };
        let mut bodies = Vec::new();
        for p in &placements {
            let hpa = running.get(&p.slot).is_some_and(|d| replicas_owned_elsewhere(d));
            bodies.push(to_value(&objects::deployment(&w, p, hpa))?);
        }
        let track = |t: Track| placements.iter().find(|p| p.track == t);
        let blue_green = track(Track::Active).is_some();
        if blue_green {
            let active = track(Track::Active).expect("checked");
            // The active Service keeps the revision it selects until the new one is ready.
            let selected = self.selected_revision(&w, &track_name(w.service, Track::Active));
            let active_artifact = match selected {
                Some(current) if !ready(active) && current != objects::revision_label(&active.artifact) => running
                    .values()
                    .filter_map(|d| artifact_of(d))
                    .find(|a| objects::revision_label(a) == current)
                    .unwrap_or(&active.artifact)
                    .to_string(),
                _ => active.artifact.clone(),
            };
            let preview = track(Track::Preview).map(|p| p.artifact.as_str());
            for s in objects::blue_green_services(&w, &active_artifact, preview) {
                bodies.push(to_value(&s)?);
            }
        } else {
            for s in objects::canary_services(&w) {
                bodies.push(to_value(&s)?);
            }
            let canary_up = track(Track::Canary).is_some_and(&ready);
            let baseline_up = track(Track::Baseline).is_some_and(&ready);
            let weights = objects::Weights { canary: target.canary_weight, canary_up, baseline_up };
            if let Some(route) = objects::route(&w, weights, &target.routes) {
                bodies.push(to_value(&route)?);
            }
        }
        // Dropped slots go once what remains is ready and their delay has passed.
        let now = Instant::now();
        let delay = match w.spec.route.is_some() || blue_green {
            true => w.spec.scale_down_delay.map_or(DEFAULT_SCALE_DOWN_DELAY, |d| d.0),
            // Without a route the Service's selection is the traffic: go as soon as possible.
            false => Duration::ZERO,
        };
        let all_ready = placements.iter().all(&ready);
        let mut doomed = Vec::new();
        let mut since = self.unwanted_since.lock().unwrap_or_else(|e| e.into_inner());
        for slot in running.keys() {
            let name = track_name(w.service, *slot);
            let key = (w.namespace.to_string(), name.clone());
            if placements.iter().any(|p| p.slot == *slot) {
                if track_delays {
                    since.remove(&key);
                }
                continue;
            }
            let first = match since.get(&key) {
                Some(first) => *first,
                None if track_delays => *since.entry(key).or_insert(now),
                None => now,
            };
            if all_ready && now.duration_since(first) >= delay {
                doomed.push(name);
            }
        }
        Ok((bodies, doomed))
    }

    fn selected_revision(&self, w: &Workload<'_>, service: &str) -> Option<String> {
        let c = self.caches(w.namespace).ok()?;
        let s = c.services.get(&ObjectRef::new(service).within(w.namespace))?;
        s.spec.as_ref()?.selector.as_ref()?.get(objects::LABEL_REVISION).cloned()
    }

    /// Brings the cluster to `target`: applies what differs, deletes what is no longer wanted.
    async fn reconcile(&self, target: &Target) -> Result<(), BackendError> {
        let lock = Arc::clone(
            self.changes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry((target.service.clone(), target.environment.clone()))
                .or_default(),
        );
        let _changes = lock.lock().await;
        // The target in force now: the loop's copy may be older than an apply that ran while it
        // waited for the lock, and writing it would flap the route back for one cycle.
        let key = (target.service.clone(), target.environment.clone());
        let current = self.lock_desired().get(&key).cloned();
        let target = current.as_ref().unwrap_or(target);
        let (bodies, doomed) = self.desired_objects(target, true)?;
        let w = self.workload(&target.service, &target.environment)?;
        for body in bodies {
            self.apply_if_changed(w.namespace, body).await?;
        }
        for name in doomed {
            let api: Api<Deployment> = Api::namespaced(self.client.clone(), w.namespace);
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => self.writes.with_label_values(&["Deployment", "delete"]).inc(),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(err) => return Err(api_error(&format!("deleting Deployment {name}"), err)),
            }
            self.unwanted_since.lock().unwrap_or_else(|e| e.into_inner()).remove(&(w.namespace.to_string(), name));
        }
        Ok(())
    }

    /// The cached object of a body's kind and name, as JSON.
    fn cached(&self, namespace: &str, kind: &str, name: &str) -> Option<Value> {
        let c = self.caches.get(namespace)?;
        fn json<K: Resource<DynamicType = ()> + Clone + Serialize>(
            store: &Store<K>,
            ns: &str,
            name: &str,
        ) -> Option<Value> {
            store.get(&ObjectRef::new(name).within(ns)).and_then(|o| serde_json::to_value(o.as_ref()).ok())
        }
        match kind {
            "Deployment" => json(&c.deployments, namespace, name),
            "Service" => json(&c.services, namespace, name),
            "HTTPRoute" => json(c.routes.as_ref()?, namespace, name),
            _ => None,
        }
    }

    /// Applies `body` unless the cluster already has it (or the cache has not yet caught up
    /// with our own last write of it).
    async fn apply_if_changed(&self, namespace: &str, body: Value) -> Result<(), BackendError> {
        let kind = body["kind"].as_str().unwrap_or_default().to_string();
        let name = body["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let key = (kind.clone(), namespace.to_string(), name.clone());
        if let Some(cached) = self.cached(namespace, &kind, &name)
            && (self.sent_and_unseen(&key, &body, resource_version(&cached)) || covers(&body, &cached))
        {
            return Ok(());
        }
        let resource_version = match kind.as_str() {
            "Deployment" => self.apply::<Deployment>(namespace, &name, &body).await?,
            "Service" => self.apply::<Service>(namespace, &name, &body).await?,
            "HTTPRoute" => self.apply::<HttpRoute>(namespace, &name, &body).await?,
            other => return Err(invalid("target", format!("cannot apply a {other}"))),
        };
        self.writes.with_label_values(&[&kind, "apply"]).inc();
        self.remember(key, body, resource_version);
        Ok(())
    }

    /// Whether `body` is what we last sent for `key` and the cache (at `cached_rv`) has not seen
    /// that write yet: sending it again would write the same thing twice.
    fn sent_and_unseen(&self, key: &ObjectKey, body: &Value, cached_rv: u64) -> bool {
        let written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        written.get(key).is_some_and(|w| w.body == *body && cached_rv < w.resource_version)
    }

    /// Remembers a write and the resourceVersion the server answered it with.
    fn remember(&self, key: ObjectKey, body: Value, resource_version: u64) {
        self.written.lock().unwrap_or_else(|e| e.into_inner()).insert(key, Written { body, resource_version });
    }

    async fn apply<K>(&self, namespace: &str, name: &str, body: &Value) -> Result<u64, BackendError>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let applied = api
            .patch(name, &params, &Patch::Apply(body))
            .await
            .map_err(|e| api_error(&format!("applying {} {namespace}/{name}", K::kind(&())), e))?;
        Ok(meta_version(applied.meta()))
    }

    /// What applying `target` to the objects it owns would write: the bodies whose fields
    /// differ from the cluster's, as YAML documents, and comments for the rest.
    fn render_owned(&self, w: &Workload<'_>, target: &Target) -> Result<String, BackendError> {
        let (bodies, doomed) = self.desired_objects(target, false)?;
        let mut out = String::new();
        for body in bodies {
            let kind = body["kind"].as_str().unwrap_or_default().to_string();
            let name = body["metadata"]["name"].as_str().unwrap_or_default().to_string();
            if self.cached(w.namespace, &kind, &name).is_some_and(|c| covers(&body, &c)) {
                out.push_str(&format!("# unchanged: {kind} {}/{name}\n", w.namespace));
                continue;
            }
            out.push_str(&format!("---\n# server-side apply as {FIELD_MANAGER}: {kind} {}/{name}\n", w.namespace));
            out.push_str(&serde_saphyr::to_string(&body).map_err(|e| unavailable("rendering", e))?);
        }
        for name in doomed {
            out.push_str(&format!("# delete: Deployment {}/{name} (no track uses it)\n", w.namespace));
        }
        Ok(out)
    }

    /// The target of a release of `artifact` at `weight` per cent (none: straight to stable),
    /// beside what the service runs now in the cluster, for `hopngo-deployer render`.
    pub fn release_target(
        &self,
        service: &str,
        environment: &str,
        artifact: &str,
        weight: u32,
        replicas: u32,
    ) -> Result<Target, BackendError> {
        let (declared, _) = crate::backend::declared(&self.config, service, environment)?;
        let blue_green = declared.strategy.blue_green.is_some();
        let (live, new) = if blue_green { (Track::Active, Track::Preview) } else { (Track::Stable, Track::Canary) };
        let running = match self.mode(service, environment)? {
            Mode::Native(w) => self.deployments(&w)?.get(&live).and_then(|d| artifact_of(d).map(str::to_string)),
            Mode::Argo { .. } => None,
        };
        let track = |track: Track, artifact: &str| crate::backend::TrackSpec {
            track,
            artifact: artifact.to_string(),
            replicas,
        };
        let tracks = match running.filter(|r| r != artifact) {
            Some(stable) if blue_green || weight > 0 => vec![track(live, &stable), track(new, artifact)],
            _ => vec![track(live, artifact)],
        };
        let canary_weight = if blue_green || tracks.len() == 1 { 0 } else { weight.min(100) };
        Ok(Target {
            service: service.into(),
            environment: environment.into(),
            tracks,
            canary_weight,
            routes: Default::default(),
        })
    }
}

/// In-cluster address of the Service `name` of a workload.
fn service_address(w: &Workload<'_>, name: &str) -> String {
    format!("{name}.{}.svc:{}", w.namespace, w.spec.service_port)
}

fn to_value<T: Serialize>(object: &T) -> Result<Value, BackendError> {
    serde_json::to_value(object).map_err(|e| unavailable("serializing", e))
}

fn resource_version(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// An object's resourceVersion as a number (etcd's revision; 0 when absent).
fn meta_version(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> u64 {
    meta.resource_version.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Whether a manager other than the deployer owns the Deployment's replica count (an HPA, a
/// person's `kubectl scale`).
fn replicas_owned_elsewhere(d: &Deployment) -> bool {
    d.metadata.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() != Some(FIELD_MANAGER)
            && m.subresource.as_deref().is_none_or(|s| s != "status")
            && m.fields_v1.as_ref().is_some_and(|f| f.0["f:spec"].get("f:replicas").is_some())
    })
}

/// An API failure in a person's terms, naming the object. Only an object the server finds
/// invalid (422) is refused for good; forbidden (RBAC), not found (a namespace) and conflicts may
/// be fixed while the release waits, so the scheduler retries them until its progress deadline.
fn api_error(context: &str, err: kube::Error) -> BackendError {
    match err {
        kube::Error::Api(s) if s.code == 422 => invalid("target", format!("{context}: invalid: {}", s.message)),
        kube::Error::Api(s) => {
            let what = match s.code {
                403 => "forbidden",
                404 => "not found",
                409 => "conflict with another field manager",
                _ => "refused",
            };
            unavailable(context, format!("{what}: {}", s.message))
        }
        other => unavailable(context, other),
    }
}

impl Backend for KubeBackend {
    fn check_names(&self, service: &str, environment: &str) -> Result<(), BackendError> {
        self.mode(service, environment).map(|_| ())
    }

    fn check(&self, target: &Target) -> Result<(), BackendError> {
        match self.mode(&target.service, &target.environment)? {
            Mode::Argo { .. } => driven::check(target)?,
            Mode::Native(w) if w.spec.route.is_none() && !target.routes.is_empty() => {
                return Err(invalid(
                    "target.header_routes",
                    format!(
                        "{:?} has no kubernetes.route: header and mirror routes are rules of its HTTPRoute",
                        target.service
                    ),
                ));
            }
            Mode::Native(w) if w.spec.route.is_none() && target.tracks.iter().any(|t| t.track == Track::Baseline) => {
                return Err(invalid(
                    "target.tracks",
                    format!(
                        "{:?} has no kubernetes.route: a BASELINE track's weight is its HTTPRoute's",
                        target.service
                    ),
                ));
            }
            Mode::Native(_) => {}
        }
        for (i, t) in target.tracks.iter().enumerate() {
            if let Some(reason) = hopngo_delivery::kubernetes::image_artifact_problem(&t.artifact) {
                return Err(invalid(format!("target.tracks[{i}].artifact"), reason));
            }
        }
        Ok(())
    }

    async fn address(&self, service: &str, environment: &str) -> Option<String> {
        let w = self.workload(service, environment).ok()?;
        self.lock_desired()
            .contains_key(&(service.to_string(), environment.to_string()))
            .then(|| service_address(&w, w.service))
    }

    async fn apply(&self, target: &Target) -> Result<(), BackendError> {
        self.check(target)?;
        if let Mode::Argo { rollout, namespace } = self.mode(&target.service, &target.environment)? {
            // Recorded first: a Rollout that is missing now is reported by status until it exists.
            self.lock_desired().insert((target.service.clone(), target.environment.clone()), target.clone());
            return self.set_rollout_image(rollout, namespace, target).await;
        }
        self.lock_desired().insert((target.service.clone(), target.environment.clone()), target.clone());
        self.reconcile(target).await
    }

    async fn status(&self, service: &str, environment: &str) -> Option<Observed> {
        let target = self.lock_desired().get(&(service.to_string(), environment.to_string())).cloned()?;
        let w = match self.mode(service, environment).ok()? {
            Mode::Native(w) => w,
            Mode::Argo { rollout, namespace } => return self.rollout_status(rollout, namespace, &target),
        };
        let placements = self.placements(&w, &target).ok()?;
        let running = self.deployments(&w).ok()?;
        let mut observed = Observed::default();
        let mut waiting = Vec::new();
        for p in &placements {
            let pods = self.pods(&w, p.slot);
            let pods: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
            let view = track_view(p, running.get(&p.slot).map(|d| d.as_ref()), &pods);
            if !view.converged {
                waiting.push(view.message.clone());
            }
            observed.tracks.push(TrackObserved {
                track: Some(p.track),
                artifact: p.artifact.clone(),
                desired: view.desired,
                ready: view.ready,
                message: view.message,
                restarts: view.restarts,
                reason: view.reason,
                address: service_address(&w, &track_name(w.service, p.track)),
            });
        }
        let (bodies, _) = self.desired_objects(&target, false).ok()?;
        let pending: Vec<String> = bodies
            .iter()
            .filter(|b| {
                let kind = b["kind"].as_str().unwrap_or_default();
                let name = b["metadata"]["name"].as_str().unwrap_or_default();
                self.cached(w.namespace, kind, name).is_none_or(|c| !covers(b, &c))
            })
            .map(|b| {
                format!(
                    "{} {}",
                    b["kind"].as_str().unwrap_or_default(),
                    b["metadata"]["name"].as_str().unwrap_or_default()
                )
            })
            .collect();
        let weight_in_force = match &w.spec.route {
            Some(_) => self
                .caches(w.namespace)
                .ok()
                .and_then(|c| c.routes.as_ref()?.get(&ObjectRef::new(w.service).within(w.namespace)))
                .and_then(|r| objects::routed_weight(&r, w.service))
                .unwrap_or(0),
            None if waiting.is_empty() => target.canary_weight,
            None => 0,
        };
        observed.canary_weight = weight_in_force;
        observed.converged = waiting.is_empty() && pending.is_empty() && weight_in_force == target.canary_weight;
        observed.message = if observed.converged {
            String::new()
        } else if !waiting.is_empty() {
            waiting.join("; ")
        } else {
            format!("being applied: {}", pending.join(", "))
        };
        Some(observed)
    }

    fn render(&self, target: &Target) -> Result<String, BackendError> {
        self.check(target)?;
        match self.mode(&target.service, &target.environment)? {
            Mode::Native(w) => self.render_owned(&w, target),
            Mode::Argo { rollout, namespace } => self.render_rollout(rollout, namespace, target),
        }
    }

    async fn control(&self, service: &str, environment: &str, action: RolloutAction) -> Result<(), BackendError> {
        match self.mode(service, environment)? {
            Mode::Argo { rollout, namespace } => self.control_rollout(rollout, namespace, action).await,
            Mode::Native(_) => Err(invalid(
                "service",
                format!(
                    "{service:?} has no argoRollout: the deployer owns its Deployments (nothing to promote in Argo)"
                ),
            )),
        }
    }

    async fn preflight(&self, service: &str, environment: &str) -> Vec<(String, bool, String)> {
        let w = match self.mode(service, environment) {
            Ok(Mode::Native(w)) => w,
            Ok(Mode::Argo { rollout, namespace }) => return self.rollout_preflight(rollout, namespace),
            Err(e) => return vec![("kubernetes".into(), false, e.to_string())],
        };
        let mut checks = Vec::new();
        let watched = self.caches(w.namespace).is_ok();
        checks.push((
            "namespace".into(),
            watched,
            if watched { format!("{} is watched", w.namespace) } else { format!("{} is not watched", w.namespace) },
        ));
        // A dry-run apply of the service's Service shows the namespace exists and the deployer may write.
        let api: Api<Service> = Api::namespaced(self.client.clone(), w.namespace);
        let probe = objects::service(&w, w.service.to_string(), &[]);
        let params = PatchParams::apply(FIELD_MANAGER).force().dry_run();
        let body = to_value(&probe);
        let write = match body {
            Ok(body) => api.patch(w.service, &params, &Patch::Apply(&body)).await.map(|_| ()),
            Err(e) => return vec![("kubernetes".into(), false, e.to_string())],
        };
        checks.push(match write {
            Ok(()) => ("write".into(), true, format!("may apply Services in {}", w.namespace)),
            Err(e) => {
                ("write".into(), false, api_error(&format!("Service {}/{}", w.namespace, w.service), e).to_string())
            }
        });
        if w.spec.route.is_some()
            && let Some(gateway) = &w.environment.gateway
        {
            checks.push(self.gateway_check(&w, gateway).await);
        }
        checks
    }
}

impl KubeBackend {
    /// The Gateway a service's HTTPRoute attaches to exists (and has the listener it names): a
    /// route without its parent carries no traffic, whatever its weights say.
    async fn gateway_check(
        &self,
        w: &Workload<'_>,
        gateway: &hopngo_delivery::kubernetes::GatewayRef,
    ) -> (String, bool, String) {
        let namespace = gateway.namespace.as_deref().unwrap_or(w.namespace);
        let what =
            format!("Gateway {namespace}/{} (environments.{}.kubernetes.gateway)", gateway.name, w.environment_name);
        let kind = kube::core::GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "Gateway");
        let api: Api<kube::core::DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &kube::core::ApiResource::from_gvk(&kind));
        match api.get_opt(&gateway.name).await {
            Err(e) => ("gateway".into(), false, api_error(&what, e).to_string()),
            Ok(None) => ("gateway".into(), false, format!("{what} does not exist: the route would carry no traffic")),
            Ok(Some(found)) => {
                let listeners = found.data["spec"]["listeners"].as_array().cloned().unwrap_or_default();
                match &gateway.section_name {
                    Some(section) if !listeners.iter().any(|l| l["name"] == section.as_str()) => {
                        ("gateway".into(), false, format!("{what} has no listener {section:?} (sectionName)"))
                    }
                    _ => ("gateway".into(), true, format!("{what} exists")),
                }
            }
        }
    }
}
