//! An in-memory Kubernetes API server over real HTTP on loopback, for testing what talks to a
//! cluster where no cluster can run. It behaves like the real one for what HopNGo uses:
//! - typed paths (`/api/v1/namespaces/{ns}/services/{name}`,
//!   `/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}[/status]`) for Services, Pods,
//!   Deployments, ReplicaSets, Gateway API HTTPRoutes and Gateways, Argo Rollouts, Leases and
//!   EndpointSlices (leader election);
//!   cluster-wide lists;
//! - `metadata.resourceVersion` (one counter), `uid`, `generation` (bumped when anything but
//!   status/metadata changes), `creationTimestamp`;
//! - create (409 AlreadyExists), get/delete (404 with a `Status` body), update (409 Conflict on
//!   a stale resourceVersion), 422 Invalid for a bad name or a body whose kind does not match;
//! - JSON patch (RFC 6902), JSON merge patch (strategic merge patch is read as a merge patch),
//!   server-side apply (also as `dryRun=All`: checked, not stored) with
//!   `managedFields` per manager (409 with the conflicting fields unless `force=true`; fields a
//!   manager stops applying are removed), the `status` subresource;
//! - list with `labelSelector` (`k=v`, `k!=v`, `k`) and watch (`ADDED`/`MODIFIED`/`DELETED`,
//!   `BOOKMARK` when asked, 410 Gone as an `ERROR` event for a resourceVersion older than the
//!   retained history, `timeoutSeconds`);
//! - unknown namespaces are 404, like the real server's `namespaces "x" not found`; a verb the
//!   test forbids is 403, as RBAC answers;
//! - simulated controllers: Deployments' pods and status (`controllers`), Argo Rollouts' status
//!   for the patches its CLI sends (`rollouts`).
//!
//! Checked against the official Python client (`tests/kube_fake.rs`).

mod controllers;
mod fields;
mod rollouts;

pub use controllers::PodFailure;

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use bytes::Bytes;
use fields::Path;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::{Method, Request, Response, StatusCode, body::Frame, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::broadcast, task::JoinSet};
use tokio_stream::StreamExt as _;

/// A kind the fake serves.
#[derive(Debug)]
pub struct Kind {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Plural, as in paths.
    pub plural: &'static str,
    /// Kind, as in bodies.
    pub kind: &'static str,
}

impl Kind {
    fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }
}

/// Every kind served; each but the Lease and the EndpointSlice has a `status` subresource.
pub const KINDS: &[Kind] = &[
    Kind { group: "", version: "v1", plural: "services", kind: "Service" },
    Kind { group: "", version: "v1", plural: "pods", kind: "Pod" },
    Kind { group: "apps", version: "v1", plural: "deployments", kind: "Deployment" },
    Kind { group: "apps", version: "v1", plural: "replicasets", kind: "ReplicaSet" },
    Kind { group: "gateway.networking.k8s.io", version: "v1", plural: "httproutes", kind: "HTTPRoute" },
    Kind { group: "gateway.networking.k8s.io", version: "v1", plural: "gateways", kind: "Gateway" },
    Kind { group: "argoproj.io", version: "v1alpha1", plural: "rollouts", kind: "Rollout" },
    Kind { group: "coordination.k8s.io", version: "v1", plural: "leases", kind: "Lease" },
    Kind { group: "discovery.k8s.io", version: "v1", plural: "endpointslices", kind: "EndpointSlice" },
];

/// The index in [`KINDS`] of a served plural.
fn kind_index(plural: &str) -> usize {
    KINDS.iter().position(|k| k.plural == plural).expect("a served kind")
}

/// The hash a controller labels a pod template's pods with (`pod-template-hash`).
fn template_hash(template: &Value) -> String {
    use std::hash::{DefaultHasher, Hash as _, Hasher as _};
    let mut hasher = DefaultHasher::new();
    template.to_string().hash(&mut hasher);
    format!("{:010x}", hasher.finish() & 0xff_ffff_ffff)
}

/// Calls `on` with every change of `plural` until the fake stops: a controller's watch. A
/// controller that falls behind skips what it missed (the next change of an object brings it up
/// to date).
async fn follow(shared: &Shared, plural: &str, mut on: impl FnMut(Event)) {
    let kind = kind_index(plural);
    let mut events = shared.events.subscribe();
    loop {
        match events.recv().await {
            Ok(event) if event.kind == kind => on(event),
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// One watch event.
#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    kind: usize,
    namespace: String,
    verb: &'static str,
    object: Value,
}

#[derive(Clone, Debug)]
struct Manager {
    name: String,
    operation: &'static str,
    subresource: bool,
    fields: BTreeSet<Path>,
    time: String,
}

#[derive(Clone, Debug)]
struct Stored {
    value: Value,
    managers: Vec<Manager>,
}

struct Store {
    rv: u64,
    namespaces: BTreeSet<String>,
    objects: BTreeMap<(usize, String, String), Stored>,
    history: VecDeque<Event>,
    history_limit: usize,
    uid: u64,
}

struct Shared {
    store: Mutex<Store>,
    events: broadcast::Sender<Event>,
    bookmark_every: Duration,
    ready_after: Duration,
    /// Images (by substring) whose pods fail, and how.
    failures: Mutex<Vec<(String, PodFailure)>>,
    /// (verb, plural) pairs the caller may not do: 403 Forbidden.
    forbidden: Mutex<BTreeSet<(String, String)>>,
    /// Every request but watches, in arrival order.
    calls: Mutex<Vec<Call>>,
    latency: Duration,
    /// The pod network's first address and how many pods got one so far.
    pod_network: std::net::Ipv4Addr,
    pods_addressed: std::sync::atomic::AtomicU32,
}

impl Shared {
    /// The pod network's next address (wrapping within its /16, far more than a test makes).
    fn next_pod_address(&self) -> std::net::Ipv4Addr {
        let n = self.pods_addressed.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 65_534 + 1;
        std::net::Ipv4Addr::from(u32::from(self.pod_network).wrapping_add(n))
    }
}

/// A request the fake answered (watches aside), for a test to count or inspect.
#[derive(Clone, Debug)]
pub struct Call {
    /// HTTP method.
    pub method: String,
    /// Plural of the kind.
    pub plural: &'static str,
    /// Namespace, if namespaced.
    pub namespace: Option<String>,
    /// Object name, unless a list or create.
    pub name: Option<String>,
    /// On the `status` subresource.
    pub status: bool,
    /// Content type of the body.
    pub content_type: String,
    /// The body (JSON, or an apply's YAML read as JSON); `null` without one.
    pub body: Value,
    /// When it arrived.
    pub at: std::time::Instant,
}

/// The running fake.
pub struct FakeKube {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    controllers: tokio::task::JoinHandle<()>,
}

/// How the fake starts.
#[derive(Clone, Debug)]
pub struct FakeKubeOptions {
    /// Namespaces that exist.
    pub namespaces: Vec<String>,
    /// Watch events kept for resuming a watch; older resourceVersions get 410 Gone.
    pub history: usize,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_every: Duration,
    /// How long after a Deployment changes its pods are ready.
    pub ready_after: Duration,
    /// Added to every answer but watches (a real API server's round trip, for benchmarks).
    pub latency: Duration,
    /// Pods get consecutive addresses after this one (`status.podIP`), kept while the pod lives.
    /// A test that serves what the pods would (a metrics page) picks a loopback network.
    pub pod_network: std::net::Ipv4Addr,
}

impl Default for FakeKubeOptions {
    fn default() -> Self {
        FakeKubeOptions {
            namespaces: vec!["default".into()],
            history: 1000,
            bookmark_every: Duration::from_secs(1),
            ready_after: Duration::from_millis(100),
            latency: Duration::ZERO,
            pod_network: std::net::Ipv4Addr::new(10, 244, 0, 0),
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// An API error as the server sends it: a `Status` object.
struct ApiFailure {
    code: StatusCode,
    reason: &'static str,
    message: String,
    details: Value,
}

fn failure(code: StatusCode, reason: &'static str, message: impl Into<String>) -> ApiFailure {
    ApiFailure { code, reason, message: message.into(), details: json!({}) }
}

impl ApiFailure {
    fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "details": self.details, "code": self.code.as_u16(),
        })
    }
}

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("a valid response")
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// What a request addresses.
struct Target {
    kind: usize,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn route(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some(name.to_string()), false),
        [plural, name, "status"] => (*plural, Some(name.to_string()), true),
        _ => return None,
    };
    let kind = KINDS.iter().position(|k| k.group == group && k.version == version && k.plural == plural)?;
    if (name.is_some() && namespace.is_none()) || (status && ["leases", "endpointslices"].contains(&KINDS[kind].plural))
    {
        // Leases and EndpointSlices have no status subresource.
        return None;
    }
    Some(Target { kind, namespace, name, status })
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decoding of a query component (`+` is a space).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated (all must hold).
fn selects(selector: &str, labels: &Value) -> bool {
    selector.split(',').map(str::trim).filter(|s| !s.is_empty()).all(|term| {
        let label = |k: &str| labels.get(k.trim()).and_then(Value::as_str);
        if let Some((k, v)) = term.split_once("!=") {
            label(k) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            label(k) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            label(k).is_none()
        } else {
            label(term).is_some()
        }
    })
}

fn dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

impl Store {
    fn check_namespace(&self, namespace: &str) -> Result<(), ApiFailure> {
        if self.namespaces.contains(namespace) {
            Ok(())
        } else {
            Err(failure(StatusCode::NOT_FOUND, "NotFound", format!("namespaces \"{namespace}\" not found")))
        }
    }

    fn not_found(kind: usize, name: &str) -> ApiFailure {
        let k = &KINDS[kind];
        let resource = if k.group.is_empty() { k.plural.to_string() } else { format!("{}.{}", k.plural, k.group) };
        ApiFailure {
            details: json!({"name": name, "group": k.group, "kind": k.plural}),
            ..failure(StatusCode::NOT_FOUND, "NotFound", format!("{resource} \"{name}\" not found"))
        }
    }

    /// The object as served: its value with `managedFields` rendered.
    fn render(stored: &Stored, kind: usize) -> Value {
        let mut value = stored.value.clone();
        let entries: Vec<Value> = stored
            .managers
            .iter()
            .filter(|m| !m.fields.is_empty())
            .map(|m| {
                let mut entry = json!({
                    "manager": m.name, "operation": m.operation, "apiVersion": KINDS[kind].api_version(),
                    "time": m.time, "fieldsType": "FieldsV1", "fieldsV1": fields::fields_v1(&m.fields),
                });
                if m.subresource {
                    entry["subresource"] = json!("status");
                }
                entry
            })
            .collect();
        value["metadata"]["managedFields"] = Value::Array(entries);
        value
    }

    fn record(
        &mut self,
        events: &broadcast::Sender<Event>,
        kind: usize,
        namespace: &str,
        verb: &'static str,
        object: Value,
    ) {
        let rv = object["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()).unwrap_or(self.rv);
        let event = Event { rv, kind, namespace: namespace.to_string(), verb, object };
        self.history.push_back(event.clone());
        while self.history.len() > self.history_limit {
            self.history.pop_front();
        }
        let _ = events.send(event);
    }

    /// Deletes an object: a new resourceVersion and a DELETED event; returns it as served.
    fn remove(&mut self, events: &broadcast::Sender<Event>, key: &(usize, String, String)) -> Option<Value> {
        let removed = self.objects.remove(key)?;
        self.rv += 1;
        let mut served = Store::render(&removed, key.0);
        served["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(events, key.0, &key.1, "DELETED", served.clone());
        Some(served)
    }

    /// Stores a write that is not an apply (update, patch): `manager` owns the fields it changed
    /// (in `status` through the subresource, elsewhere otherwise).
    fn update(
        &mut self,
        events: &broadcast::Sender<Event>,
        key: (usize, String, String),
        current: &Stored,
        next: Value,
        manager: &str,
        status: bool,
    ) -> Value {
        let mut managers = current.managers.clone();
        let (only, except) = part(status);
        take_ownership(&mut managers, manager, fields::changed(&current.value, &next, only, except), status);
        self.commit(events, key, next, managers)
    }

    /// Stores `value` as the new state of an object, bumping resourceVersion (and generation when
    /// more than status or metadata changed); returns the object as served.
    fn commit(
        &mut self,
        events: &broadcast::Sender<Event>,
        key: (usize, String, String),
        mut value: Value,
        managers: Vec<Manager>,
    ) -> Value {
        let previous = self.objects.get(&key).cloned();
        let verb = if previous.is_some() { "MODIFIED" } else { "ADDED" };
        if let Some(prev) = &previous {
            let without = |v: &Value| {
                let mut v = v.clone();
                if let Some(m) = v.as_object_mut() {
                    m.remove("status");
                    m.remove("metadata");
                }
                v
            };
            let mut generation = prev.value["metadata"]["generation"].as_u64().unwrap_or(1);
            if without(&prev.value) != without(&value) {
                generation += 1;
            }
            value["metadata"]["generation"] = json!(generation);
            if prev.value == value && prev.managers.iter().map(|m| &m.fields).eq(managers.iter().map(|m| &m.fields)) {
                // Nothing changed: no new resourceVersion, no event.
                return Store::render(prev, key.0);
            }
        } else {
            self.uid += 1;
            value["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", self.uid));
            value["metadata"]["creationTimestamp"] = json!(now());
            value["metadata"]["generation"] = json!(1);
        }
        self.rv += 1;
        value["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let stored = Stored { value, managers };
        let served = Store::render(&stored, key.0);
        let namespace = key.1.clone();
        self.objects.insert(key.clone(), stored);
        self.record(events, key.0, &namespace, verb, served.clone());
        served
    }
}

/// Normalises a body for `kind` at `namespace`/`name`: apiVersion and kind must match (422
/// otherwise), and name and namespace are filled from the path.
fn checked_body(mut body: Value, kind: usize, namespace: &str, name: Option<&str>) -> Result<Value, ApiFailure> {
    let k = &KINDS[kind];
    if !body.is_object() {
        return Err(failure(StatusCode::BAD_REQUEST, "BadRequest", "the body is not an object"));
    }
    for (field, want) in [("apiVersion", k.api_version()), ("kind", k.kind.to_string())] {
        match body.get(field).and_then(Value::as_str) {
            Some(v) if v == want => {}
            None => body[field] = json!(want),
            Some(other) => {
                return Err(failure(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("the {field} in the body ({other}) does not match the path ({want})"),
                ));
            }
        }
    }
    if !body["metadata"].is_object() {
        body["metadata"] = json!({});
    }
    let in_body = body["metadata"]["name"].as_str().map(str::to_string);
    let name = match (name, in_body) {
        (Some(path), Some(body)) if path != body => {
            return Err(failure(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("the name of the object ({body}) does not match the name on the URL ({path})"),
            ));
        }
        (Some(path), _) => path.to_string(),
        (None, Some(body)) => body,
        (None, None) => String::new(),
    };
    if !dns_subdomain(&name) {
        return Err(ApiFailure {
            details: json!({"name": name, "kind": k.kind, "causes": [{"reason": "FieldValueInvalid", "field": "metadata.name"}]}),
            ..failure(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!(
                    "{} \"{name}\" is invalid: metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
                    k.kind
                ),
            )
        });
    }
    body["metadata"]["name"] = json!(name);
    body["metadata"]["namespace"] = json!(namespace);
    Ok(body)
}

fn manager_name(req_query: &BTreeMap<String, String>, user_agent: &str) -> String {
    req_query
        .get("fieldManager")
        .cloned()
        .unwrap_or_else(|| user_agent.split('/').next().unwrap_or("unknown").to_string())
}

/// Ownership after a non-apply write by `manager`: it owns what it changed; others lose those
/// fields.
fn take_ownership(managers: &mut Vec<Manager>, manager: &str, changed: BTreeSet<Path>, status: bool) {
    if changed.is_empty() {
        return;
    }
    for m in managers.iter_mut() {
        m.fields.retain(|p| !changed.contains(p));
    }
    let time = now();
    match managers.iter_mut().find(|m| m.name == manager && m.operation == "Update" && m.subresource == status) {
        Some(m) => {
            m.fields.extend(changed);
            m.time = time;
        }
        None => managers.push(Manager {
            name: manager.to_string(),
            operation: "Update",
            subresource: status,
            fields: changed,
            time,
        }),
    }
}

impl FakeKube {
    /// Starts a fake with the `default` namespace.
    pub async fn start() -> FakeKube {
        FakeKube::start_with(FakeKubeOptions::default()).await
    }

    /// Starts a fake.
    pub async fn start_with(options: FakeKubeOptions) -> FakeKube {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let addr = listener.local_addr().expect("bound");
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                rv: 100,
                namespaces: options.namespaces.into_iter().collect(),
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                history_limit: options.history.max(1),
                uid: 0,
            }),
            events,
            bookmark_every: options.bookmark_every,
            ready_after: options.ready_after,
            failures: Mutex::new(Vec::new()),
            forbidden: Mutex::new(BTreeSet::new()),
            calls: Mutex::new(Vec::new()),
            latency: options.latency,
            pod_network: options.pod_network,
            pods_addressed: std::sync::atomic::AtomicU32::new(0),
        });
        let task = tokio::spawn(serve(listener, Arc::clone(&shared)));
        let controllers = tokio::spawn({
            let shared = Arc::clone(&shared);
            async move {
                tokio::join!(controllers::run(Arc::clone(&shared)), rollouts::run(shared));
            }
        });
        // The controllers follow changes from their subscription on: wait for both, so an
        // object created right after start is seen.
        while shared.events.receiver_count() < 2 {
            tokio::task::yield_now().await;
        }
        FakeKube { addr, shared, task, controllers }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this server (no credentials), for clients that read one.
    pub fn kubeconfig(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.url()
        )
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.shared.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a namespace.
    pub fn create_namespace(&self, name: &str) {
        self.store().namespaces.insert(name.to_string());
    }

    /// An object as served (with managedFields), by plural, namespace and name.
    pub fn object(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let kind = kind_index(plural);
        let store = self.store();
        store.objects.get(&(kind, namespace.to_string(), name.to_string())).map(|s| Store::render(s, kind))
    }

    /// Creates `object` (of kind `plural`, in its `metadata.namespace`) as `manager` would with a
    /// create: what another tool (Argo CD, a chart) put in the cluster before the test.
    pub fn create(&self, plural: &str, manager: &str, object: Value) {
        let kind = kind_index(plural);
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        let name = object["metadata"]["name"].as_str().expect("a name").to_string();
        let body = checked_body(object, kind, &namespace, Some(&name)).unwrap_or_else(|f| panic!("{}", f.message));
        let mut managers = Vec::new();
        take_ownership(&mut managers, manager, fields::leaves(&body, None, None), false);
        let mut store = self.store();
        store.commit(&self.shared.events, (kind, namespace, name), body, managers);
    }

    /// Forgets watch history older than the newest `keep` events (a compaction), so resuming from
    /// an older resourceVersion gets 410 Gone.
    pub fn compact(&self, keep: usize) {
        let mut store = self.store();
        while store.history.len() > keep {
            store.history.pop_front();
        }
    }

    /// Pods of images containing `image` fail from now on (changes after this one show it).
    pub fn fail_image(&self, image: &str, failure: PodFailure) {
        self.shared.failures.lock().unwrap_or_else(|e| e.into_inner()).push((image.to_string(), failure));
    }

    /// The caller may no longer `verb` (`get`, `list`, `watch`, `create`, `update`, `patch`,
    /// `delete`) `plural`: 403 Forbidden, as RBAC answers.
    pub fn forbid(&self, verb: &str, plural: &str) {
        self.shared.forbidden.lock().unwrap_or_else(|e| e.into_inner()).insert((verb.to_string(), plural.to_string()));
    }

    /// Every request answered so far (watches aside).
    pub fn calls(&self) -> Vec<Call> {
        self.shared.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.store().rv
    }

    /// The writes after resourceVersion `since` (from the retained history), as `VERB
    /// plural/name`, but those of leader election (Leases, EndpointSlices): what a deployer
    /// changed in the cluster.
    pub fn writes_since(&self, since: u64) -> Vec<String> {
        let store = self.store();
        assert!(store.history.front().is_none_or(|e| e.rv <= since + 1), "the history no longer reaches {since}");
        store
            .history
            .iter()
            .filter(|e| e.rv > since && !["leases", "endpointslices"].contains(&KINDS[e.kind].plural))
            .map(|e| {
                format!("{} {}/{}", e.verb, KINDS[e.kind].plural, e.object["metadata"]["name"].as_str().unwrap_or(""))
            })
            .collect()
    }

    /// The pods with an address, as Prometheus' Kubernetes service discovery (`role: pod`) turns
    /// them into targets: one per declared container port, at `podIP:port`, with its
    /// `__meta_kubernetes_*` labels; in the JSON of an `http_sd_configs` answer, so a real
    /// Prometheus built without Kubernetes discovery (Debian's) applies the same relabeling.
    pub fn prometheus_pod_targets(&self) -> Value {
        let pods = kind_index("pods");
        let store = self.store();
        let mut groups = Vec::new();
        for ((kind, namespace, name), stored) in &store.objects {
            let pod = &stored.value;
            let Some(ip) = pod["status"]["podIP"].as_str().filter(|_| *kind == pods) else { continue };
            let mut pod_labels = serde_json::Map::new();
            let mut put = |key: String, value: &Value| {
                pod_labels.insert(key, json!(value.as_str().map_or_else(|| value.to_string(), str::to_string)));
            };
            put("__meta_kubernetes_namespace".into(), &json!(namespace));
            put("__meta_kubernetes_pod_name".into(), &json!(name));
            put("__meta_kubernetes_pod_ip".into(), &json!(ip));
            put("__meta_kubernetes_pod_phase".into(), &pod["status"]["phase"]);
            let ready = pod["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .map_or("unknown", |c| if c["status"] == "True" { "true" } else { "false" });
            put("__meta_kubernetes_pod_ready".into(), &json!(ready));
            for (field, meta) in [("labels", "label"), ("annotations", "annotation")] {
                for (key, value) in pod["metadata"][field].as_object().into_iter().flatten() {
                    let key = sanitize_label_name(key);
                    put(format!("__meta_kubernetes_pod_{meta}_{key}"), value);
                    put(format!("__meta_kubernetes_pod_{meta}present_{key}"), &json!("true"));
                }
            }
            if let Some(owner) = pod["metadata"]["ownerReferences"].as_array().and_then(|o| o.first()) {
                put("__meta_kubernetes_pod_controller_kind".into(), &owner["kind"]);
                put("__meta_kubernetes_pod_controller_name".into(), &owner["name"]);
            }
            for container in pod["spec"]["containers"].as_array().into_iter().flatten() {
                for port in container["ports"].as_array().into_iter().flatten() {
                    let mut target_labels = pod_labels.clone();
                    for (key, value) in [
                        ("container_name", &container["name"]),
                        ("container_image", &container["image"]),
                        ("container_init", &json!("false")),
                        ("container_port_name", &port["name"]),
                        ("container_port_number", &port["containerPort"]),
                        ("container_port_protocol", &port["protocol"]),
                    ] {
                        if !value.is_null() {
                            let text = value.as_str().map_or_else(|| value.to_string(), str::to_string);
                            target_labels.insert(format!("__meta_kubernetes_pod_{key}"), json!(text));
                        }
                    }
                    groups.push(json!({
                        "targets": [format!("{ip}:{}", port["containerPort"])],
                        "labels": target_labels,
                    }));
                }
            }
        }
        Value::Array(groups)
    }
}

/// A label name as Prometheus' discovery writes it: every character outside `[A-Za-z0-9_]`
/// becomes `_`.
fn sanitize_label_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.task.abort();
        self.controllers.abort();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    while let Ok((socket, _)) = listener.accept().await {
        let shared = Arc::clone(&shared);
        connections.spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(socket), service).await;
        });
    }
}

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let Some(target) = route(req.uri().path()) else {
        let f = failure(StatusCode::NOT_FOUND, "NotFound", "the server could not find the requested resource");
        return respond(f.code, &f.status());
    };
    let q = query(&req);
    let watching =
        req.method() == Method::GET && target.name.is_none() && q.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = match (req.method().clone(), &target.name) {
        _ if watching => "watch",
        (Method::GET, None) => "list",
        (Method::GET, Some(_)) => "get",
        (Method::POST, _) => "create",
        (Method::PUT, _) => "update",
        (Method::PATCH, _) => "patch",
        (Method::DELETE, _) => "delete",
        _ => "unknown",
    };
    let plural = KINDS[target.kind].plural;
    if shared.forbidden.lock().unwrap_or_else(|e| e.into_inner()).contains(&(verb.to_string(), plural.to_string())) {
        let k = &KINDS[target.kind];
        let resource = if k.group.is_empty() { plural.to_string() } else { format!("{plural}.{}", k.group) };
        let f = ApiFailure {
            details: json!({"name": target.name, "group": k.group, "kind": plural}),
            ..failure(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "{resource}{} is forbidden: User \"system:serviceaccount:hopngo:hopngo-deployer\" cannot {verb} resource \"{plural}\" in API group \"{}\" in the namespace \"{}\"",
                    target.name.as_ref().map(|n| format!(" \"{n}\"")).unwrap_or_default(),
                    k.group,
                    target.namespace.as_deref().unwrap_or_default()
                ),
            )
        };
        return respond(f.code, &f.status());
    }
    if watching {
        return watch(shared, &target, &q);
    }
    if !shared.latency.is_zero() {
        tokio::time::sleep(shared.latency).await;
    }
    match answer(shared, req, &target, &q).await {
        Ok((code, body)) => respond(code, &body),
        Err(f) => respond(f.code, &f.status()),
    }
}

async fn answer(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    target: &Target,
    q: &BTreeMap<String, String>,
) -> Result<(StatusCode, Value), ApiFailure> {
    let method = req.method().clone();
    let content_type = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let user_agent = req.headers().get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or("unknown").to_string();
    let bytes = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    shared.calls.lock().unwrap_or_else(|e| e.into_inner()).push(Call {
        method: method.to_string(),
        plural: KINDS[target.kind].plural,
        namespace: target.namespace.clone(),
        name: target.name.clone(),
        status: target.status,
        content_type: content_type.clone(),
        body: serde_saphyr::from_str(&String::from_utf8_lossy(&bytes)).unwrap_or(Value::Null),
        at: std::time::Instant::now(),
    });
    let manager = manager_name(q, &user_agent);
    let kind = target.kind;
    let mut store = shared.store.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(ns) = &target.namespace {
        store.check_namespace(ns)?;
    }
    let parse_json = |bytes: &Bytes| -> Result<Value, ApiFailure> {
        serde_json::from_slice(bytes)
            .map_err(|e| failure(StatusCode::BAD_REQUEST, "BadRequest", format!("the body is not JSON: {e}")))
    };
    match (method, &target.name) {
        (Method::GET, None) => {
            let selector = q.get("labelSelector").cloned().unwrap_or_default();
            let items: Vec<Value> = store
                .objects
                .iter()
                .filter(|((k, ns, _), s)| {
                    *k == kind
                        && target.namespace.as_ref().is_none_or(|n| n == ns)
                        && selects(&selector, &s.value["metadata"]["labels"])
                })
                .map(|(_, s)| Store::render(s, kind))
                .collect();
            let k = &KINDS[kind];
            Ok((
                StatusCode::OK,
                json!({"apiVersion": k.api_version(), "kind": format!("{}List", k.kind),
                       "metadata": {"resourceVersion": store.rv.to_string()}, "items": items}),
            ))
        }
        (Method::GET, Some(name)) => {
            let key = (kind, target.namespace.clone().unwrap_or_default(), name.clone());
            store
                .objects
                .get(&key)
                .map(|s| (StatusCode::OK, Store::render(s, kind)))
                .ok_or_else(|| Store::not_found(kind, name))
        }
        (Method::POST, None) => {
            let ns = target.namespace.clone().ok_or_else(|| {
                failure(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "create needs a namespace")
            })?;
            let mut body = checked_body(parse_json(&bytes)?, kind, &ns, None)?;
            let name = body["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let key = (kind, ns, name.clone());
            if store.objects.contains_key(&key) {
                let k = &KINDS[kind];
                return Err(ApiFailure {
                    details: json!({"name": name, "group": k.group, "kind": k.plural}),
                    ..failure(StatusCode::CONFLICT, "AlreadyExists", format!("{} \"{name}\" already exists", k.plural))
                });
            }
            if let Some(m) = body.as_object_mut() {
                m.remove("status");
            }
            let mut managers = Vec::new();
            take_ownership(&mut managers, &manager, fields::leaves(&body, None, None), false);
            let served = store.commit(&shared.events, key, body, managers);
            Ok((StatusCode::CREATED, served))
        }
        (Method::PUT, Some(name)) => {
            let ns = target.namespace.clone().unwrap_or_default();
            let key = (kind, ns.clone(), name.clone());
            let current = store.objects.get(&key).cloned().ok_or_else(|| Store::not_found(kind, name))?;
            let body = checked_body(parse_json(&bytes)?, kind, &ns, Some(name))?;
            check_version(&body, &current, kind, name)?;
            let next = replace_part(&current.value, &body, target.status);
            Ok((StatusCode::OK, store.update(&shared.events, key, &current, next, &manager, target.status)))
        }
        (Method::PATCH, Some(name)) => {
            let ns = target.namespace.clone().unwrap_or_default();
            let key = (kind, ns.clone(), name.clone());
            if content_type.starts_with("application/apply-patch") {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let applied: Value = serde_saphyr::from_str(&text).map_err(|e| {
                    failure(StatusCode::BAD_REQUEST, "BadRequest", format!("the apply body is not YAML: {e}"))
                })?;
                let Some(field_manager) = q.get("fieldManager").filter(|m| !m.is_empty()) else {
                    return Err(failure(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                    ));
                };
                let applied = checked_body(applied, kind, &ns, Some(name))?;
                let force = q.get("force").is_some_and(|f| f == "true");
                let current = store.objects.get(&key).cloned();
                let (code, next, managers) = apply(current, &applied, field_manager, force, target.status, kind, name)?;
                if q.get("dryRun").is_some_and(|d| d == "All") {
                    // Checked like a real apply (conflicts, validation), stored nowhere.
                    return Ok((code, Store::render(&Stored { value: next, managers }, kind)));
                }
                Ok((code, store.commit(&shared.events, key, next, managers)))
            } else {
                let current = store.objects.get(&key).cloned().ok_or_else(|| Store::not_found(kind, name))?;
                let patch = parse_json(&bytes)?;
                let mut patched = current.value.clone();
                if content_type.starts_with("application/json-patch+json") {
                    fields::json_patch(&mut patched, &patch).map_err(|e| {
                        failure(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "Invalid",
                            format!("the JSON patch cannot be applied: {e}"),
                        )
                    })?;
                } else if content_type.starts_with("application/merge-patch+json")
                    || content_type.starts_with("application/strategic-merge-patch+json")
                {
                    fields::merge_patch(&mut patched, &patch);
                } else {
                    return Err(failure(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        format!(
                            "the body of the request was in an unknown format ({content_type}); accepted: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
                        ),
                    ));
                }
                check_version(&patched, &current, kind, name)?;
                let next = checked_body(replace_part(&current.value, &patched, target.status), kind, &ns, Some(name))?;
                Ok((StatusCode::OK, store.update(&shared.events, key, &current, next, &manager, target.status)))
            }
        }
        (Method::DELETE, Some(name)) => {
            let key = (kind, target.namespace.clone().unwrap_or_default(), name.clone());
            let served = store.remove(&shared.events, &key).ok_or_else(|| Store::not_found(kind, name))?;
            Ok((StatusCode::OK, served))
        }
        _ => Err(failure(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )),
    }
}

fn conflict(kind: usize, name: &str) -> ApiFailure {
    let k = &KINDS[kind];
    ApiFailure {
        details: json!({"name": name, "group": k.group, "kind": k.plural}),
        ..failure(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                k.plural
            ),
        )
    }
}

fn check_version(body: &Value, current: &Stored, kind: usize, name: &str) -> Result<(), ApiFailure> {
    match body["metadata"]["resourceVersion"].as_str() {
        Some(rv) if !rv.is_empty() && current.value["metadata"]["resourceVersion"].as_str() != Some(rv) => {
            Err(conflict(kind, name))
        }
        _ => Ok(()),
    }
}

/// Which part of an object a write may change: only `status` through the subresource, anything
/// but `status` through the main resource.
fn part(status: bool) -> (Option<&'static str>, Option<&'static str>) {
    if status { (Some("status"), None) } else { (None, Some("status")) }
}

/// `current` with the part a write may change taken from `written`; metadata that only the
/// server sets is kept.
fn replace_part(current: &Value, written: &Value, status: bool) -> Value {
    let mut next = current.clone();
    if status {
        next["status"] = written.get("status").cloned().unwrap_or(Value::Null);
        if next["status"].is_null()
            && let Some(m) = next.as_object_mut()
        {
            m.remove("status");
        }
        return next;
    }
    let mut next = written.clone();
    match current.get("status") {
        Some(s) => next["status"] = s.clone(),
        None => {
            if let Some(m) = next.as_object_mut() {
                m.remove("status");
            }
        }
    }
    for server_field in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
        match current["metadata"].get(server_field) {
            Some(v) => next["metadata"][server_field] = v.clone(),
            None => {
                if let Some(m) = next["metadata"].as_object_mut() {
                    m.remove(server_field);
                }
            }
        }
    }
    if let Some(m) = next["metadata"].as_object_mut() {
        m.remove("managedFields");
    }
    next
}

/// Server-side apply of `applied` by `manager`.
fn apply(
    current: Option<Stored>,
    applied: &Value,
    manager: &str,
    force: bool,
    status: bool,
    kind: usize,
    name: &str,
) -> Result<(StatusCode, Value, Vec<Manager>), ApiFailure> {
    let (only, except) = part(status);
    let wanted = fields::leaves(applied, only, except);
    let created = current.is_none();
    let Stored { value: before, mut managers } = current.unwrap_or_else(|| Stored {
        value: json!({"apiVersion": applied["apiVersion"], "kind": applied["kind"],
                      "metadata": {"name": applied["metadata"]["name"], "namespace": applied["metadata"]["namespace"]}}),
        managers: Vec::new(),
    });
    let is_me = |m: &Manager| m.name == manager && m.operation == "Apply" && m.subresource == status;
    // Conflicts: a field another manager owns, applied with a different value.
    let mut conflicts: Vec<(String, String)> = Vec::new();
    for m in managers.iter().filter(|m| !is_me(m)) {
        for p in m.fields.intersection(&wanted) {
            if fields::get(&before, p) != fields::get(applied, p) {
                conflicts.push((m.name.clone(), fields::describe(p)));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let k = &KINDS[kind];
        let lines: Vec<String> = conflicts.iter().map(|(m, f)| format!("conflict with \"{m}\": {f}")).collect();
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(m, f)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": f}))
            .collect();
        return Err(ApiFailure {
            details: json!({"name": name, "group": k.group, "kind": k.plural, "causes": causes}),
            ..failure(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Apply failed with {} conflict{}: {}",
                    conflicts.len(),
                    if conflicts.len() == 1 { "" } else { "s" },
                    lines.join("\n")
                ),
            )
        });
    }
    if force {
        for m in managers.iter_mut().filter(|m| !is_me(m)) {
            m.fields.retain(|p| fields::get(&before, p) == fields::get(applied, p) || !wanted.contains(p));
        }
    }
    let previously: BTreeSet<Path> = managers.iter().filter(|m| is_me(m)).flat_map(|m| m.fields.clone()).collect();
    let mut next = before;
    // Fields this manager applied before and no longer does go, unless someone else owns them.
    for p in previously.difference(&wanted) {
        if !managers.iter().filter(|m| !is_me(m)).any(|m| m.fields.contains(p)) {
            fields::remove(&mut next, p);
        }
    }
    for p in &wanted {
        fields::copy(&mut next, applied, p);
    }
    let time = now();
    match managers.iter_mut().find(|m| is_me(m)) {
        Some(m) => {
            m.fields = wanted;
            m.time = time;
        }
        None => managers.push(Manager {
            name: manager.to_string(),
            operation: "Apply",
            subresource: status,
            fields: wanted,
            time,
        }),
    }
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, next, managers))
}

fn watch(shared: &Arc<Shared>, target: &Target, q: &BTreeMap<String, String>) -> Response<Body> {
    let kind = target.kind;
    let namespace = target.namespace.clone();
    let selector = q.get("labelSelector").cloned().unwrap_or_default();
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let timeout = q.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).map(Duration::from_secs);
    let since = q.get("resourceVersion").and_then(|r| r.parse::<u64>().ok()).filter(|r| *r > 0);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let line = |event: &str, object: &Value| Bytes::from(format!("{}\n", json!({"type": event, "object": object})));
    let mut live = shared.events.subscribe();
    // What the watch starts with: the current objects (no resourceVersion), the history after
    // `since`, or 410 Gone when `since` is older than the history kept.
    let mut start: Vec<Bytes> = Vec::new();
    let mut gone = false;
    let current_rv;
    {
        let store = shared.store.lock().unwrap_or_else(|e| e.into_inner());
        current_rv = store.rv;
        if let Some(ns) = &namespace
            && let Err(f) = store.check_namespace(ns)
        {
            return respond(f.code, &f.status());
        }
        let matches = |ev_kind: usize, ev_ns: &str, object: &Value| {
            ev_kind == kind
                && namespace.as_deref().is_none_or(|n| n == ev_ns)
                && selects(&selector, &object["metadata"]["labels"])
        };
        match since {
            None => {
                for ((k, ns, _), s) in &store.objects {
                    let object = Store::render(s, kind);
                    if matches(*k, ns, &object) {
                        start.push(line("ADDED", &object));
                    }
                }
            }
            Some(since) => {
                let oldest = store.history.front().map(|e| e.rv);
                if since < store.rv && oldest.is_none_or(|o| since + 1 < o) {
                    gone = true;
                    let status = failure(
                        StatusCode::GONE,
                        "Expired",
                        format!("too old resource version: {since} ({})", oldest.unwrap_or(store.rv)),
                    )
                    .status();
                    start.push(line("ERROR", &status));
                } else {
                    for e in store.history.iter().filter(|e| e.rv > since) {
                        if matches(e.kind, &e.namespace, &e.object) {
                            start.push(line(e.verb, &e.object));
                        }
                    }
                }
            }
        }
    }
    let last_sent = since.unwrap_or(current_rv);
    let bookmark_every = shared.bookmark_every;
    let api_version = KINDS[kind].api_version();
    let kind_name = KINDS[kind].kind;
    tokio::spawn(async move {
        for bytes in start {
            if tx.send(bytes).await.is_err() {
                return;
            }
        }
        if gone {
            return;
        }
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut last_rv = last_sent.max(current_rv);
        let mut tick = tokio::time::interval(bookmark_every);
        tick.tick().await;
        loop {
            let until_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = until_deadline => return,
                _ = tick.tick(), if bookmarks => {
                    let object = json!({"apiVersion": api_version, "kind": kind_name, "metadata": {"resourceVersion": last_rv.to_string()}});
                    if tx.send(line("BOOKMARK", &object)).await.is_err() {
                        return;
                    }
                }
                event = live.recv() => match event {
                    Ok(e) => {
                        if e.rv <= last_rv {
                            continue;
                        }
                        last_rv = e.rv;
                        if e.kind == kind
                            && namespace.as_deref().is_none_or(|n| n == e.namespace)
                            && selects(&selector, &e.object["metadata"]["labels"])
                            && tx.send(line(e.verb, &e.object)).await.is_err()
                        {
                            return;
                        }
                    }
                    // A watcher that fell behind is ended, as the real server ends slow watches.
                    Err(_) => return,
                },
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(StreamBody::new(stream).boxed())
        .expect("a valid response")
}
