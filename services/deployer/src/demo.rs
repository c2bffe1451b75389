//! The demo service: a small HTTP service that stands in for HopNGo's services on the local
//! backend. Its behaviour comes from flags or from its version's build metadata, so a "bad"
//! version is easy to make: `2.0.0+errors=0.3,latency=250ms,startup=2s` answers 30 % of API
//! requests with 500, adds 250 ms to each, and reports not ready for its first 2 s;
//! `errorsAfter=100` keeps the first 100 API requests of each replica good (a version that passes
//! its smoke tests and breaks under production traffic).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderValue, StatusCode, Uri},
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
}

impl Behaviour {
    /// Reads `errors=F`, `errorsAfter=N`, `latency=D`, `startup=D` from the build metadata of `version` (after `+`,
    /// comma-separated). A version without metadata behaves well.
    pub fn from_version(version: &str) -> Result<Behaviour, String> {
        let mut b = Behaviour::default();
        let Some((_, metadata)) = version.split_once('+') else { return Ok(b) };
        for item in metadata.split(',').filter(|s| !s.is_empty()) {
            let (key, value) = item.split_once('=').ok_or_else(|| format!("{item:?} is not key=value"))?;
            match key {
                "errors" => {
                    let rate: f64 = value.parse().map_err(|_| format!("errors={value:?} is not a number"))?;
                    if !(0.0..=1.0).contains(&rate) {
                        return Err(format!("errors={rate} is not in 0..=1"));
                    }
                    b.error_rate = rate;
                }
                "errorsAfter" => {
                    b.errors_after = value.parse().map_err(|_| format!("errorsAfter={value:?} is not a count"))?
                }
                "latency" => b.latency = hopngo_kit::args::parse_duration(value)?,
                "startup" => b.startup = hopngo_kit::args::parse_duration(value)?,
                other => {
                    return Err(format!("unknown behaviour {other:?} (errors, errorsAfter, latency, startup)"));
                }
            }
        }
        Ok(b)
    }
}

struct Demo {
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
    let state = Arc::new(Demo {
        name: name.to_string(),
        version: version.to_string(),
        behaviour,
        ready_at: tokio::time::Instant::now() + behaviour.startup,
        api_requests: std::sync::atomic::AtomicU64::new(0),
    });
    let app =
        Router::new().route("/healthz", get(healthz)).route("/api/v1/info", get(info)).fallback(api).with_state(state);
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

async fn info(State(demo): State<Arc<Demo>>) -> Response {
    api_response(&demo, "/api/v1/info").await
}

async fn api(State(demo): State<Arc<Demo>>, uri: Uri) -> Response {
    if !uri.path().starts_with("/api/v1/") {
        return with_version(&demo, (StatusCode::NOT_FOUND, "not found\n").into_response());
    }
    api_response(&demo, uri.path()).await
}

async fn api_response(demo: &Demo, path: &str) -> Response {
    if !demo.behaviour.latency.is_zero() {
        tokio::time::sleep(demo.behaviour.latency).await;
    }
    let served = demo.api_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let faulty = served >= demo.behaviour.errors_after && demo.behaviour.error_rate > 0.0;
    let response = if faulty && rand::random::<f64>() < demo.behaviour.error_rate {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({"error": "injected failure", "version": demo.version})),
        )
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
    }
}
