//! The weighted reverse proxy in front of one service in one environment. It splits requests
//! between tracks by the weight in force (changed atomically: the next request sees it; spread
//! evenly, so any 100 consecutive requests carry the weight ±1 rather than only on average),
//! honours `x-hopngo-track` to pin a request to a track (for testing a canary or a blue/green
//! preview), sends requests matching a header route to the canary and copies a share of those
//! matching a mirror route to it (its answers discarded), spreads a track's requests over its
//! replicas, and records per-track request counts by status class and latency histograms
//! (mirrored requests count under the canary: they are what it served).

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use bytes::Bytes;
use hopngo_delivery::routes::{Routes, StringMatch};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt as _, Either, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tokio_util::sync::CancellationToken;

/// Request header that pins a request to a track.
pub const TRACK_HEADER: &str = "x-hopngo-track";
/// Header a mirrored copy carries, so the canary can tell it from a request someone waits for.
pub const MIRROR_HEADER: &str = "x-hopngo-mirror";
/// Largest request body copied to the canary; a larger (or unsized, chunked) one is not mirrored.
pub const MAX_MIRRORED_BODY: u64 = 1 << 20;
/// Mirrored copies in flight at once per proxy: a slow canary sheds copies instead of piling
/// them up.
const MAX_MIRRORS_IN_FLIGHT: usize = 64;
/// How long a mirrored copy may take.
const MIRROR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A role a set of replicas plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Track {
    /// Canary model: most traffic.
    Stable,
    /// Canary model: the weighted share.
    Canary,
    /// Blue/green: all traffic.
    Active,
    /// Blue/green: reachable through the header only.
    Preview,
    /// Canary model, during an experiment: the stable version on fresh replicas, weighted like
    /// the canary.
    Baseline,
}

impl Track {
    /// Every track.
    pub const ALL: [Track; 5] = [Track::Stable, Track::Canary, Track::Active, Track::Preview, Track::Baseline];

    /// Lower-case name (metrics label, header value).
    pub fn as_str(self) -> &'static str {
        match self {
            Track::Stable => "stable",
            Track::Canary => "canary",
            Track::Active => "active",
            Track::Preview => "preview",
            Track::Baseline => "baseline",
        }
    }

    /// Parses [`Track::as_str`].
    pub fn parse(s: &str) -> Option<Track> {
        Track::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// A compiled string match. A path prefix matches whole segments, as Gateway API's
/// `PathPrefix` does (`/api` matches `/api` and `/api/x`, not `/apix`), so a route means the same
/// on both backends.
#[derive(Debug)]
enum Matcher {
    Exact(String),
    Prefix(String),
    PathPrefix(String),
    Regex(regex::Regex),
}

impl Matcher {
    fn new(m: &StringMatch, path: bool) -> Result<Matcher, String> {
        Ok(match m {
            StringMatch::Exact(v) => Matcher::Exact(v.clone()),
            StringMatch::Prefix(v) if path => Matcher::PathPrefix(v.trim_end_matches('/').to_string()),
            StringMatch::Prefix(v) => Matcher::Prefix(v.clone()),
            StringMatch::Regex(v) => Matcher::Regex(hopngo_delivery::routes::regex(v)?),
        })
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(v) => value == v,
            Matcher::Prefix(v) => value.starts_with(v.as_str()),
            Matcher::PathPrefix(v) => {
                value.strip_prefix(v.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            Matcher::Regex(r) => r.is_match(value),
        }
    }
}

/// Header matches that must all hold; a header sent several times matches if one value does.
#[derive(Debug, Default)]
struct HeaderMatchers(Vec<(HeaderName, Matcher)>);

impl HeaderMatchers {
    fn new<'a>(matches: impl Iterator<Item = (&'a String, &'a StringMatch)>) -> Result<HeaderMatchers, String> {
        let mut out = Vec::new();
        for (name, m) in matches {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("{name:?} is not a header name"))?;
            out.push((name, Matcher::new(m, false)?));
        }
        Ok(HeaderMatchers(out))
    }

    fn hold(&self, headers: &HeaderMap) -> bool {
        self.0.iter().all(|(name, m)| headers.get_all(name).iter().any(|v| v.to_str().is_ok_and(|v| m.matches(v))))
    }
}

#[derive(Debug)]
struct RequestMatcher {
    method: Option<Method>,
    path: Option<Matcher>,
    headers: HeaderMatchers,
}

#[derive(Debug)]
struct MirrorMatcher {
    percentage: u32,
    any_of: Vec<RequestMatcher>,
}

/// A target's header and mirror routes, compiled once when the target is applied. Two compare
/// equal when their routes do.
#[derive(Debug, Default)]
pub struct RouteRules {
    source: Routes,
    headers: Vec<HeaderMatchers>,
    mirrors: Vec<MirrorMatcher>,
}

impl PartialEq for RouteRules {
    fn eq(&self, other: &RouteRules) -> bool {
        self.source == other.source
    }
}

impl Eq for RouteRules {}

impl RouteRules {
    /// Compiles `routes` (checked already: an error here names what the check missed).
    pub fn compile(routes: &Routes) -> Result<RouteRules, String> {
        let headers = routes
            .headers
            .iter()
            .map(|r| HeaderMatchers::new(r.matches.iter().map(|m| (&m.header_name, &m.header_value))))
            .collect::<Result<_, _>>()?;
        let mut mirrors = Vec::new();
        for r in &routes.mirrors {
            let mut any_of = Vec::new();
            for m in &r.matches {
                let method = match &m.method {
                    Some(method) => {
                        Some(Method::from_bytes(method.value().as_bytes()).map_err(|_| "not a method".to_string())?)
                    }
                    None => None,
                };
                let path = m.path.as_ref().map(|p| Matcher::new(p, true)).transpose()?;
                any_of.push(RequestMatcher { method, path, headers: HeaderMatchers::new(m.headers.iter())? });
            }
            mirrors.push(MirrorMatcher { percentage: r.percentage, any_of });
        }
        Ok(RouteRules { source: routes.clone(), headers, mirrors })
    }

    /// Whether a header route sends the request to the canary.
    fn header_routed(&self, headers: &HeaderMap) -> bool {
        self.headers.iter().any(|h| h.hold(headers))
    }

    /// The share of requests like this one to copy (the first mirror route matching), if any.
    fn mirrored_share<B>(&self, req: &Request<B>) -> Option<u32> {
        self.mirrors
            .iter()
            .find(|m| {
                m.any_of.iter().any(|rm| {
                    rm.method.as_ref().is_none_or(|method| req.method() == method)
                        && rm.path.as_ref().is_none_or(|p| p.matches(req.uri().path()))
                        && rm.headers.hold(req.headers())
                })
            })
            .map(|m| m.percentage)
    }
}

/// Where requests go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routing {
    /// Ready replicas of each track.
    pub tracks: BTreeMap<Track, Vec<SocketAddr>>,
    /// Track that takes the traffic not sent to the weighted one (stable or active).
    pub primary: Option<Track>,
    /// Weighted track and its share of traffic in percent, 0..=100.
    pub weighted: Option<(Track, u32)>,
    /// An experiment's baseline takes as much as the weighted track, beside it.
    pub baseline: bool,
    /// Header and mirror routes to the weighted track.
    pub routes: Arc<RouteRules>,
}

impl Routing {
    /// Whether `track` has a ready replica to send requests to.
    pub fn has_replicas(&self, track: Track) -> bool {
        self.tracks.get(&track).is_some_and(|a| !a.is_empty())
    }

    /// Which track a request goes to: the pinned one if it has replicas, then the canary if a
    /// header route matches, else by weight.
    fn choose(&self, pinned: Option<Track>, headers: &HeaderMap, roll: u32) -> Option<Track> {
        if let Some(track) = pinned
            && self.has_replicas(track)
        {
            return Some(track);
        }
        if let Some((track, _)) = self.weighted
            && self.has_replicas(track)
            && self.routes.header_routed(headers)
        {
            return Some(track);
        }
        if let Some((track, weight)) = self.weighted
            && roll < weight
            && self.has_replicas(track)
        {
            return Some(track);
        }
        if let Some((_, weight)) = self.weighted
            && self.baseline
            && (weight..2 * weight).contains(&roll)
            && self.has_replicas(Track::Baseline)
        {
            return Some(Track::Baseline);
        }
        self.primary.filter(|t| self.has_replicas(*t))
    }
}

/// Per-track request metrics of every proxy of a process.
#[derive(Clone)]
pub struct ProxyMetrics {
    requests: IntCounterVec,
    seconds: HistogramVec,
}

impl ProxyMetrics {
    /// Registers the metrics in `registry`.
    pub fn new(registry: &Registry) -> ProxyMetrics {
        let requests = IntCounterVec::new(
            Opts::new("hopngo_proxy_requests_total", "Requests through the local proxy by track and status class"),
            &["service", "environment", "track", "class"],
        )
        .expect("static metric definition");
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "hopngo_proxy_request_duration_seconds",
                "Time to the upstream's response headers, by track",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["service", "environment", "track"],
        )
        .expect("static metric definition");
        let _ = registry.register(Box::new(requests.clone()));
        let _ = registry.register(Box::new(seconds.clone()));
        ProxyMetrics { requests, seconds }
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn class(status: StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// One track's metric handles, resolved once per proxy so a request does no label lookups.
struct TrackMetrics {
    requests: [prometheus::IntCounter; 5],
    seconds: prometheus::Histogram,
}

impl TrackMetrics {
    fn new(metrics: &ProxyMetrics, service: &str, environment: &str, track: Track) -> TrackMetrics {
        TrackMetrics {
            requests: CLASSES.map(|c| metrics.requests.with_label_values(&[service, environment, track.as_str(), c])),
            seconds: metrics.seconds.with_label_values(&[service, environment, track.as_str()]),
        }
    }
}

struct Shared {
    routing: RwLock<Arc<Routing>>,
    /// Request counter: drives the weighted split and the replica round-robin.
    next: AtomicUsize,
    /// Counter of requests a mirror route matched: drives its share.
    mirror_next: AtomicUsize,
    mirror_slots: Arc<tokio::sync::Semaphore>,
    client: Client<HttpConnector, Body>,
    /// Indexed like [`Track::ALL`].
    metrics: Vec<TrackMetrics>,
}

/// A running proxy: its address and the handle to change where it sends requests.
#[derive(Clone)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

type Body = Either<Incoming, Full<Bytes>>;

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(text.as_bytes()))));
    *response.status_mut() = status;
    response
}

impl Proxy {
    /// Binds `addr` and serves until `shutdown`.
    pub async fn start(
        addr: SocketAddr,
        service: &str,
        environment: &str,
        metrics: ProxyMetrics,
        shutdown: CancellationToken,
    ) -> std::io::Result<Proxy> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(64).build(connector);
        let shared = Arc::new(Shared {
            routing: RwLock::new(Arc::new(Routing::default())),
            next: AtomicUsize::new(0),
            mirror_next: AtomicUsize::new(0),
            mirror_slots: Arc::new(tokio::sync::Semaphore::new(MAX_MIRRORS_IN_FLIGHT)),
            client,
            metrics: Track::ALL.iter().map(|t| TrackMetrics::new(&metrics, service, environment, *t)).collect(),
        });
        let accept_shared = shared.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(err) => {
                            tracing::warn!(%err, "proxy accept failed");
                            continue;
                        }
                    },
                };
                let _ = stream.set_nodelay(true);
                let shared = accept_shared.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(forward(&shared, req).await) }
                    });
                    let conn =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = shutdown.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
        });
        Ok(Proxy { addr, shared })
    }

    /// Address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the routing; the next request uses the new one.
    pub fn set_routing(&self, routing: Routing) {
        *self.shared.routing.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(routing);
    }

    /// The routing in force.
    pub fn routing(&self) -> Arc<Routing> {
        self.shared.routing.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// 0..100 for the `n`-th request: the golden-ratio sequence spreads any run of requests evenly, so
/// a weight of w sends w of every 100 consecutive requests (±1) rather than w on average.
fn roll(n: usize) -> u32 {
    const GOLDEN: f64 = 0.618_033_988_749_894_9;
    ((n as f64 * GOLDEN).fract() * 100.0) as u32
}

/// Points `req` at `upstream` (its URI and Host).
fn aim<B>(req: &mut Request<B>, upstream: SocketAddr) -> Result<(), ()> {
    let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    *req.uri_mut() = format!("http://{upstream}{path}").parse().map_err(|_| ())?;
    if let Ok(host) = HeaderValue::from_str(&upstream.to_string()) {
        req.headers_mut().insert(http::header::HOST, host);
    }
    Ok(())
}

impl Shared {
    fn track_metrics(&self, track: Track) -> &TrackMetrics {
        &self.metrics[Track::ALL.iter().position(|t| *t == track).unwrap_or(0)]
    }

    /// Sends `req` upstream and records the answer under `track`.
    async fn send(&self, req: Request<Body>, track: Track) -> Response<Body> {
        let started = Instant::now();
        let response = match self.client.request(req).await {
            Ok(response) => response.map(Either::Left),
            Err(err) => {
                tracing::debug!(%err, "upstream request failed");
                plain(StatusCode::BAD_GATEWAY, "upstream failed\n")
            }
        };
        let metrics = self.track_metrics(track);
        metrics.seconds.observe(started.elapsed().as_secs_f64());
        metrics.requests[class(response.status())].inc();
        response
    }
}

/// What became of a request the proxy was to copy.
enum Copied {
    /// The copy for the mirror (boxed: it leaves for its own task), and the request itself.
    Both(Box<Request<Body>>, Request<Body>),
    /// Its body is too large or of unknown size: it goes on uncopied, untouched.
    Uncopied(Request<Incoming>),
    /// The client stopped sending its body.
    BodyLost,
}

/// Copies `req` for the mirror, reading its body (at most [`MAX_MIRRORED_BODY`]).
async fn copy(req: Request<Incoming>) -> Copied {
    if req.body().size_hint().exact().is_none_or(|n| n > MAX_MIRRORED_BODY) {
        return Copied::Uncopied(req);
    }
    let (parts, body) = req.into_parts();
    // The size is known and small: reading it whole is bounded.
    let Ok(collected) = body.collect().await else { return Copied::BodyLost };
    let bytes = collected.to_bytes();
    let mut mirror = Request::new(Either::Right(Full::new(bytes.clone())));
    *mirror.method_mut() = parts.method.clone();
    *mirror.uri_mut() = parts.uri.clone();
    *mirror.version_mut() = parts.version;
    *mirror.headers_mut() = parts.headers.clone();
    mirror.headers_mut().insert(MIRROR_HEADER, HeaderValue::from_static("1"));
    Copied::Both(Box::new(mirror), Request::from_parts(parts, Either::Right(Full::new(bytes))))
}

async fn forward(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let routing = shared.routing.read().unwrap_or_else(|e| e.into_inner()).clone();
    let pinned = req.headers().get(TRACK_HEADER).and_then(|v| v.to_str().ok()).and_then(Track::parse);
    let n = shared.next.fetch_add(1, Ordering::Relaxed);
    let Some(track) = routing.choose(pinned, req.headers(), roll(n)) else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "no ready replicas\n");
    };
    // A copy goes to the canary only when the canary is not answering the request itself.
    let mirror_to = routing.weighted.map(|(t, _)| t).filter(|t| *t != track && routing.has_replicas(*t)).filter(|_| {
        routing
            .routes
            .mirrored_share(&req)
            .is_some_and(|share| roll(shared.mirror_next.fetch_add(1, Ordering::Relaxed)) < share)
    });
    let mut req = match mirror_to {
        None => req.map(Either::Left),
        Some(canary) => match copy(req).await {
            Copied::Both(mut mirror, req) => {
                let replicas = &routing.tracks[&canary];
                if let Ok(slot) = shared.mirror_slots.clone().try_acquire_owned()
                    && aim(&mut mirror, replicas[n % replicas.len()]).is_ok()
                {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let _slot = slot;
                        // The answer is discarded: only the canary's metrics see it.
                        let _ = tokio::time::timeout(MIRROR_TIMEOUT, shared.send(*mirror, canary)).await;
                    });
                }
                req
            }
            Copied::Uncopied(req) => req.map(Either::Left),
            Copied::BodyLost => return plain(StatusCode::BAD_REQUEST, "request body could not be read\n"),
        },
    };
    let replicas = &routing.tracks[&track];
    if aim(&mut req, replicas[n % replicas.len()]).is_err() {
        return plain(StatusCode::BAD_REQUEST, "bad request target\n");
    }
    let mut response = shared.send(req, track).await;
    if let Ok(v) = HeaderValue::from_str(track.as_str()) {
        response.headers_mut().insert(TRACK_HEADER, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing(weight: u32) -> Routing {
        Routing {
            tracks: BTreeMap::from([
                (Track::Stable, vec![SocketAddr::from(([127, 0, 0, 1], 1))]),
                (Track::Canary, vec![SocketAddr::from(([127, 0, 0, 1], 2))]),
            ]),
            primary: Some(Track::Stable),
            weighted: Some((Track::Canary, weight)),
            baseline: false,
            routes: Arc::default(),
        }
    }

    fn none() -> HeaderMap {
        HeaderMap::new()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn rules(yaml: &str) -> Arc<RouteRules> {
        let routes: Routes = serde_saphyr::from_str(yaml).unwrap();
        assert!(routes.problems().is_empty(), "{:?}", routes.problems());
        Arc::new(RouteRules::compile(&routes).unwrap())
    }

    #[test]
    fn header_routes_send_matching_requests_to_the_canary_whatever_the_weight() {
        let mut r = routing(0);
        r.routes = rules(
            "headers:\n  - name: beta\n    match:\n      - {headerName: X-Beta, headerValue: {exact: 'yes'}}\n      - {headerName: x-region, headerValue: {regex: '^eu-'}}\n  - name: staff\n    match: [{headerName: cookie, headerValue: {prefix: staff=}}]\n",
        );
        let both = headers(&[("x-beta", "yes"), ("x-region", "eu-west")]);
        assert_eq!(r.choose(None, &both, 99), Some(Track::Canary));
        assert_eq!(r.choose(None, &headers(&[("x-beta", "yes")]), 0), Some(Track::Stable), "every match must hold");
        assert_eq!(r.choose(None, &headers(&[("x-beta", "YES"), ("x-region", "eu-1")]), 0), Some(Track::Stable));
        let repeated = headers(&[("cookie", "a=1"), ("cookie", "staff=1")]);
        assert_eq!(r.choose(None, &repeated, 0), Some(Track::Canary), "any value of a repeated header");
        assert_eq!(r.choose(Some(Track::Stable), &both, 0), Some(Track::Stable), "a pinned track wins");
        r.tracks.insert(Track::Canary, Vec::new());
        assert_eq!(r.choose(None, &both, 0), Some(Track::Stable), "no canary replica: the route waits");
    }

    #[test]
    fn mirror_routes_pick_requests_by_method_path_and_headers() {
        let rules = rules(
            "mirrors:\n  - name: reads\n    percentage: 30\n    match:\n      - {method: {exact: GET}, path: {prefix: /api/}}\n      - headers: {x-shadow: {exact: '1'}}\n",
        );
        let req = |method: &str, path: &str, h: &[(&'static str, &'static str)]| {
            let mut req = Request::builder().method(method).uri(path).body(()).unwrap();
            *req.headers_mut() = headers(h);
            req
        };
        assert_eq!(rules.mirrored_share(&req("GET", "/api/v1/info", &[])), Some(30));
        assert_eq!(rules.mirrored_share(&req("GET", "/api", &[])), Some(30), "the prefix itself");
        assert_eq!(rules.mirrored_share(&req("GET", "/apix", &[])), None, "whole segments only");
        assert_eq!(rules.mirrored_share(&req("POST", "/api/v1", &[])), None);
        assert_eq!(rules.mirrored_share(&req("POST", "/other", &[("x-shadow", "1")])), Some(30), "any match block");
        assert_eq!(
            *rules,
            *super::tests::rules(
                "mirrors:\n  - name: reads\n    percentage: 30\n    match:\n      - {method: {exact: GET}, path: {prefix: /api/}}\n      - headers: {x-shadow: {exact: '1'}}\n"
            )
        );
        assert_ne!(*rules, RouteRules::default());
    }

    #[test]
    fn weight_decides_unless_pinned() {
        let r = routing(25);
        assert_eq!(r.choose(None, &none(), 24), Some(Track::Canary));
        assert_eq!(r.choose(None, &none(), 25), Some(Track::Stable));
        assert_eq!(routing(0).choose(None, &none(), 0), Some(Track::Stable), "weight 0 sends none");
        assert_eq!(routing(100).choose(None, &none(), 99), Some(Track::Canary));
        assert_eq!(r.choose(Some(Track::Stable), &none(), 0), Some(Track::Stable));
        assert_eq!(routing(0).choose(Some(Track::Canary), &none(), 99), Some(Track::Canary));
        assert_eq!(
            r.choose(Some(Track::Preview), &none(), 99),
            Some(Track::Stable),
            "an absent pinned track falls back"
        );
    }

    #[test]
    fn an_experiments_baseline_takes_as_much_as_the_canary() {
        let mut r = routing(20);
        r.baseline = true;
        r.tracks.insert(Track::Baseline, vec![SocketAddr::from(([127, 0, 0, 1], 3))]);
        let tracks: Vec<Option<Track>> =
            [0, 19, 20, 39, 40, 99].iter().map(|roll| r.choose(None, &none(), *roll)).collect();
        let (s, c, b) = (Some(Track::Stable), Some(Track::Canary), Some(Track::Baseline));
        assert_eq!(tracks, [c, c, b, b, s, s]);
        assert_eq!(r.choose(Some(Track::Baseline), &none(), 99), b, "pinned");
        r.tracks.insert(Track::Baseline, Vec::new());
        assert_eq!(r.choose(None, &none(), 20), s, "no baseline replica: its share stays on stable");
    }

    #[test]
    fn the_split_is_even_over_any_window() {
        for weight in [1u32, 5, 25, 50, 99] {
            for start in [0usize, 17, 1000] {
                let hits = (start..start + 1000).filter(|n| roll(*n) < weight).count() as i64;
                assert!((hits - 10 * weight as i64).abs() <= 2, "weight {weight} from {start}: {hits} of 1000");
            }
        }
    }

    #[test]
    fn empty_tracks_fall_back_to_primary_or_nothing() {
        let mut r = routing(50);
        r.tracks.insert(Track::Canary, Vec::new());
        assert_eq!(r.choose(None, &none(), 0), Some(Track::Stable));
        r.tracks.insert(Track::Stable, Vec::new());
        assert_eq!(r.choose(None, &none(), 99), None);
    }
}
