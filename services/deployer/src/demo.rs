//! The demo service: a small HTTP service that stands in for HopNGo's services on the local
//! backend. Its behaviour comes from flags or from its version's build metadata, so a "bad"
//! version is easy to make: `2.0.0+errors=0.3,latency=250ms,startup=2s` answers 30 % of API
//! requests with 500, adds 250 ms to each, and reports not ready for its first 2 s;
//! `errorsAfter=100` keeps the first 100 API requests of each replica good (a version that passes
//! its smoke tests and breaks under production traffic); `businessFailures=0.3` makes 30 % of its
//! business operations fail while every answer stays a fast 200 (a version only business metrics
//! catch).
//!
//! Business operations are HopNGo's: `/api/v1/login` (login), `/api/v1/bookings` (booking),
//! `/api/v1/payments` (payment); `/api/v1/search` is a plain route, measured for its latency.
//! `/metrics` serves what an instrumented HopNGo service exports on Kubernetes: the
//! OpenTelemetry HTTP server histogram `http_server_request_duration_seconds` by method, status
//! code and matched route (`http_route`, empty for a path no route matches), and
//! `hopngo_business_operations_total` by operation and outcome (`success`, `failure`; every
//! combination exported from the start, so a rate over a quiet window is 0, not missing).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderValue, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio_util::sync::CancellationToken;

/// Response header carrying the version that answered.
pub const VERSION_HEADER: &str = "x-hopngo-version";

/// How the service behaves.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Behaviour {
    /// Share of API requests answered with 500, 0.0..=1.0.
    pub error_rate: f64,
    /// Added to every API request.
    pub latency: Duration,
    /// Time after start before `/healthz` reports ready.
    pub startup: Duration,
    /// API requests answered well before `error_rate` applies.
    pub errors_after: u64,
    /// Share of business operations that fail, answered 200 all the same, 0.0..=1.0.
    pub business_failures: f64,
}

impl Behaviour {
    /// Reads `errors=F`, `errorsAfter=N`, `latency=D`, `startup=D`, `businessFailures=F` from the
    /// build metadata of `version` (after `+`, comma-separated). A version without metadata
    /// behaves well.
    pub fn from_version(version: &str) -> Result<Behaviour, String> {
        let mut b = Behaviour::default();
        let Some((_, metadata)) = version.split_once('+') else { return Ok(b) };
        for item in metadata.split(',').filter(|s| !s.is_empty()) {
            let (key, value) = item.split_once('=').ok_or_else(|| format!("{item:?} is not key=value"))?;
            match key {
                "errors" => b.error_rate = share(key, value)?,
                "businessFailures" => b.business_failures = share(key, value)?,
                "errorsAfter" => {
                    b.errors_after = value.parse().map_err(|_| format!("errorsAfter={value:?} is not a count"))?
                }
                "latency" => b.latency = hopngo_kit::args::parse_duration(value)?,
                "startup" => b.startup = hopngo_kit::args::parse_duration(value)?,
                other => {
                    return Err(format!(
                        "unknown behaviour {other:?} (errors, errorsAfter, latency, startup, businessFailures)"
                    ));
                }
            }
        }
        Ok(b)
    }
}

/// A share in 0..=1 (`errors=0.3`).
pub fn share(key: &str, value: &str) -> Result<f64, String> {
    let rate: f64 = value.parse().map_err(|_| format!("{key}={value:?} is not a number"))?;
    if !(0.0..=1.0).contains(&rate) {
        return Err(format!("{key}={rate} is not in 0..=1"));
    }
    Ok(rate)
}

/// The business operation a route performs: (route, operation).
const BUSINESS_ROUTES: [(&str, &str); 3] =
    [("/api/v1/login", "login"), ("/api/v1/bookings", "booking"), ("/api/v1/payments", "payment")];

/// Routes with a name of their own in `http_route`; any other `/api/v1/...` path is served too.
const ROUTES: [&str; 5] = ["/api/v1/info", "/api/v1/login", "/api/v1/bookings", "/api/v1/payments", "/api/v1/search"];

struct Demo {
    metrics: prometheus::Registry,
    request_seconds: prometheus::HistogramVec,
    business_operations: prometheus::IntCounterVec,
    name: String,
    version: String,
    behaviour: Behaviour,
    ready_at: tokio::time::Instant,
    api_requests: std::sync::atomic::AtomicU64,
}

/// Serves the demo service on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    name: &str,
    version: &str,
    behaviour: Behaviour,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let metrics = prometheus::Registry::new();
    let request_seconds = prometheus::HistogramVec::new(
        prometheus::HistogramOpts::new("http_server_request_duration_seconds", "Duration of HTTP server requests")
            // OpenTelemetry's advised boundaries for this instrument.
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]),
        &["http_request_method", "http_response_status_code", "http_route"],
    )
    .expect("static metric definition");
    metrics.register(Box::new(request_seconds.clone())).expect("one registration in a new registry");
    let business_operations = prometheus::IntCounterVec::new(
        prometheus::Opts::new("hopngo_business_operations_total", "Business operations by outcome"),
        &["operation", "outcome"],
    )
    .expect("static metric definition");
    for (_, operation) in BUSINESS_ROUTES {
        for outcome in ["success", "failure"] {
            business_operations.with_label_values(&[operation, outcome]);
        }
    }
    metrics.register(Box::new(business_operations.clone())).expect("one registration in a new registry");
    let state = Arc::new(Demo {
        metrics,
        request_seconds,
        business_operations,
        name: name.to_string(),
        version: version.to_string(),
        behaviour,
        ready_at: tokio::time::Instant::now() + behaviour.startup,
        api_requests: std::sync::atomic::AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_page))
        .fallback(api)
        .with_state(state);
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

/// Binds `addr` and spawns [`serve`]; returns the bound address.
pub async fn spawn(
    addr: SocketAddr,
    name: &str,
    version: &str,
    behaviour: Behaviour,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let (name, version) = (name.to_string(), version.to_string());
    tokio::spawn(async move { serve(listener, &name, &version, behaviour, shutdown).await });
    Ok(bound)
}

fn with_version(demo: &Demo, mut response: Response) -> Response {
    if let Ok(v) = HeaderValue::from_str(&demo.version) {
        response.headers_mut().insert(VERSION_HEADER, v);
    }
    response
}

async fn healthz(State(demo): State<Arc<Demo>>) -> Response {
    let response = if tokio::time::Instant::now() >= demo.ready_at {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    };
    with_version(&demo, response)
}

async fn metrics_page(State(demo): State<Arc<Demo>>) -> Response {
    let page = hopngo_kit::admin::render(&demo.metrics);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], page).into_response()
}

async fn api(State(demo): State<Arc<Demo>>, method: Method, uri: Uri) -> Response {
    if !uri.path().starts_with("/api/v1/") {
        return with_version(&demo, (StatusCode::NOT_FOUND, "not found\n").into_response());
    }
    api_response(&demo, &method, uri.path()).await
}

async fn api_response(demo: &Demo, method: &Method, path: &str) -> Response {
    let started = tokio::time::Instant::now();
    let operation = BUSINESS_ROUTES.iter().find(|(route, _)| *route == path).map(|(_, operation)| *operation);
    let response = api_answer(demo, path, operation).await;
    // A method outside the standard ones is `_OTHER`, as the semantic conventions say, so a
    // caller cannot grow the series without bound.
    let method = match *method {
        Method::GET | Method::HEAD | Method::POST | Method::PUT | Method::DELETE | Method::PATCH | Method::OPTIONS => {
            method.as_str()
        }
        _ => "_OTHER",
    };
    let route = ROUTES.iter().find(|route| **route == path).copied().unwrap_or("");
    demo.request_seconds
        .with_label_values(&[method, response.status().as_str(), route])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn api_answer(demo: &Demo, path: &str, operation: Option<&str>) -> Response {
    if !demo.behaviour.latency.is_zero() {
        tokio::time::sleep(demo.behaviour.latency).await;
    }
    let served = demo.api_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let faulty = served >= demo.behaviour.errors_after && demo.behaviour.error_rate > 0.0;
    let response = if faulty && rand::random::<f64>() < demo.behaviour.error_rate {
        if let Some(operation) = operation {
            demo.business_operations.with_label_values(&[operation, "failure"]).inc();
        }
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({"error": "injected failure", "version": demo.version})),
        )
            .into_response()
    } else if let Some(operation) = operation {
        // A failed operation is still a well-formed answer: only the business counter sees it.
        let failed = demo.behaviour.business_failures > 0.0 && rand::random::<f64>() < demo.behaviour.business_failures;
        let outcome = if failed { "failure" } else { "success" };
        demo.business_operations.with_label_values(&[operation, outcome]).inc();
        Json(serde_json::json!({
            "service": demo.name, "version": demo.version, "path": path, "operation": operation, "outcome": outcome,
        }))
        .into_response()
    } else {
        Json(serde_json::json!({"service": demo.name, "version": demo.version, "path": path})).into_response()
    };
    with_version(demo, response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaviour_comes_from_build_metadata() {
        assert_eq!(Behaviour::from_version("1.4.2").unwrap(), Behaviour::default());
        let b = Behaviour::from_version("2.0.0+errors=0.3,latency=250ms,startup=2s").unwrap();
        assert_eq!(b.error_rate, 0.3);
        assert_eq!(b.latency, Duration::from_millis(250));
        assert_eq!(b.startup, Duration::from_secs(2));
        assert!(Behaviour::from_version("1+errors=2").unwrap_err().contains("not in 0..=1"));
        assert!(Behaviour::from_version("1+colour=red").unwrap_err().contains("unknown behaviour"));
        assert_eq!(Behaviour::from_version("1+errors=1,errorsAfter=40").unwrap().errors_after, 40);
        assert_eq!(Behaviour::from_version("1+businessFailures=0.25").unwrap().business_failures, 0.25);
        assert!(Behaviour::from_version("1+businessFailures=x").unwrap_err().contains("not a number"));
    }
}
