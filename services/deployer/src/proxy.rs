//! The weighted reverse proxy in front of one service in one environment. It splits requests
//! between tracks by the weight in force (changed atomically: the next request sees it; spread
//! evenly, so any 100 consecutive requests carry the weight ±1 rather than only on average),
//! honours `x-hopngo-track` to pin a request to a track (for testing a canary or a blue/green
//! preview), spreads a track's requests over its replicas, and records per-track request counts
//! by status class and latency histograms.

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
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tokio_util::sync::CancellationToken;

/// Request header that pins a request to a track.
pub const TRACK_HEADER: &str = "x-hopngo-track";

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
}

impl Track {
    /// Every track.
    pub const ALL: [Track; 4] = [Track::Stable, Track::Canary, Track::Active, Track::Preview];

    /// Lower-case name (metrics label, header value).
    pub fn as_str(self) -> &'static str {
        match self {
            Track::Stable => "stable",
            Track::Canary => "canary",
            Track::Active => "active",
            Track::Preview => "preview",
        }
    }

    /// Parses [`Track::as_str`].
    pub fn parse(s: &str) -> Option<Track> {
        Track::ALL.into_iter().find(|t| t.as_str() == s)
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
}

impl Routing {
    /// Which track a request goes to: the pinned one if it has replicas, else by weight.
    fn choose(&self, pinned: Option<Track>, roll: u32) -> Option<Track> {
        if let Some(track) = pinned
            && self.tracks.get(&track).is_some_and(|a| !a.is_empty())
        {
            return Some(track);
        }
        if let Some((track, weight)) = self.weighted
            && roll < weight
            && self.tracks.get(&track).is_some_and(|a| !a.is_empty())
        {
            return Some(track);
        }
        self.primary.filter(|t| self.tracks.get(t).is_some_and(|a| !a.is_empty()))
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
    client: Client<HttpConnector, Incoming>,
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

async fn forward(shared: &Shared, mut req: Request<Incoming>) -> Response<Body> {
    let routing = shared.routing.read().unwrap_or_else(|e| e.into_inner()).clone();
    let pinned = req.headers().get(TRACK_HEADER).and_then(|v| v.to_str().ok()).and_then(Track::parse);
    let n = shared.next.fetch_add(1, Ordering::Relaxed);
    let Some(track) = routing.choose(pinned, roll(n)) else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "no ready replicas\n");
    };
    let replicas = &routing.tracks[&track];
    let upstream = replicas[n % replicas.len()];
    let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let uri = match format!("http://{upstream}{path}").parse() {
        Ok(uri) => uri,
        Err(_) => return plain(StatusCode::BAD_REQUEST, "bad request target\n"),
    };
    *req.uri_mut() = uri;
    if let Ok(host) = HeaderValue::from_str(&upstream.to_string()) {
        req.headers_mut().insert(http::header::HOST, host);
    }
    let started = Instant::now();
    let response = match shared.client.request(req).await {
        Ok(response) => response.map(Either::Left),
        Err(err) => {
            tracing::debug!(%err, %upstream, "upstream request failed");
            plain(StatusCode::BAD_GATEWAY, "upstream failed\n")
        }
    };
    let metrics = &shared.metrics[Track::ALL.iter().position(|t| *t == track).unwrap_or(0)];
    metrics.seconds.observe(started.elapsed().as_secs_f64());
    metrics.requests[class(response.status())].inc();
    let mut response = response;
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
        }
    }

    #[test]
    fn weight_decides_unless_pinned() {
        let r = routing(25);
        assert_eq!(r.choose(None, 24), Some(Track::Canary));
        assert_eq!(r.choose(None, 25), Some(Track::Stable));
        assert_eq!(routing(0).choose(None, 0), Some(Track::Stable), "weight 0 sends none");
        assert_eq!(routing(100).choose(None, 99), Some(Track::Canary));
        assert_eq!(r.choose(Some(Track::Stable), 0), Some(Track::Stable));
        assert_eq!(routing(0).choose(Some(Track::Canary), 99), Some(Track::Canary));
        assert_eq!(r.choose(Some(Track::Preview), 99), Some(Track::Stable), "an absent pinned track falls back");
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
        assert_eq!(r.choose(None, 0), Some(Track::Stable));
        r.tracks.insert(Track::Stable, Vec::new());
        assert_eq!(r.choose(None, 99), None);
    }
}
