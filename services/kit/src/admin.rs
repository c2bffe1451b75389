//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (process up), `/readyz`
//! (serving; 503 while starting or draining).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};
use tokio_util::sync::CancellationToken;

/// The process's metrics registry plus the per-RPC server metrics every service records.
#[derive(Clone)]
pub struct Metrics {
    /// Registry served on `/metrics`; services register their own collectors in it.
    pub registry: Registry,
    rpc_total: IntCounterVec,
    rpc_seconds: HistogramVec,
    rpc_errors: IntCounterVec,
    ready: Arc<AtomicBool>,
}

impl Metrics {
    /// A fresh registry with the per-RPC metrics registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let rpc_total = IntCounterVec::new(
            Opts::new("hopngo_grpc_server_handled_total", "RPCs completed, by service, method and status code"),
            &["grpc_service", "grpc_method", "grpc_code"],
        )
        .expect("static metric definition");
        let rpc_seconds = HistogramVec::new(
            HistogramOpts::new(
                "hopngo_grpc_server_handling_seconds",
                "Time to the response headers, by service, method and status code",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["grpc_service", "grpc_method", "grpc_code"],
        )
        .expect("static metric definition");
        let rpc_errors = IntCounterVec::new(
            Opts::new(
                "hopngo_grpc_server_errors_total",
                "Failed RPCs by service, method and the kind of failure (the service's error label)",
            ),
            &["grpc_service", "grpc_method", "error"],
        )
        .expect("static metric definition");
        registry.register(Box::new(rpc_total.clone())).expect("first registration");
        registry.register(Box::new(rpc_seconds.clone())).expect("first registration");
        registry.register(Box::new(rpc_errors.clone())).expect("first registration");
        Metrics { registry, rpc_total, rpc_seconds, rpc_errors, ready: Arc::new(AtomicBool::new(false)) }
    }

    /// Records one completed RPC. `path` is the gRPC path `/pkg.Service/Method`; `error` is the
    /// failure's label ([`crate::error::ERROR_LABEL`]) when it has one.
    pub fn observe_rpc(&self, path: &str, code: tonic::Code, error: Option<&str>, elapsed: Duration) {
        let (service, method) = split_path(path);
        if let Some(error) = error {
            self.rpc_errors.with_label_values(&[service, method, error]).inc();
        }
        let code = format!("{code:?}");
        self.rpc_total.with_label_values(&[service, method, &code]).inc();
        self.rpc_seconds.with_label_values(&[service, method, &code]).observe(elapsed.as_secs_f64());
    }

    /// Marks the process ready (or not) for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// `registry` in Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buf).expect("text encoding into a Vec");
    String::from_utf8(buf).expect("prometheus text is UTF-8")
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn split_path(path: &str) -> (&str, &str) {
    let trimmed = path.trim_start_matches('/');
    trimmed.split_once('/').unwrap_or((trimmed, ""))
}

/// Serves the admin endpoint, plus a service's own `routes`, until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    routes: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(metrics)
        .merge(routes);
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

/// Binds `addr` and spawns [`serve`]; returns the bound address.
pub async fn spawn(addr: SocketAddr, metrics: Metrics, shutdown: CancellationToken) -> std::io::Result<SocketAddr> {
    spawn_with(addr, metrics, Router::new(), shutdown).await
}

/// [`spawn`] with a service's own `routes` beside the standard ones.
pub async fn spawn_with(
    addr: SocketAddr,
    metrics: Metrics,
    routes: Router,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(err) = serve(listener, metrics, routes, shutdown).await {
            tracing::error!(%err, "admin server stopped");
        }
    });
    Ok(bound)
}

async fn render_metrics(State(metrics): State<Metrics>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render())
}

async fn readyz(State(metrics): State<Metrics>) -> impl IntoResponse {
    if metrics.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_metrics_are_labelled_by_method_and_code() {
        let metrics = Metrics::new();
        metrics.observe_rpc(
            "/hopngo.release.v1.ReleaseService/GetRelease",
            tonic::Code::NotFound,
            Some("not-found"),
            Duration::from_millis(3),
        );
        let text = metrics.render();
        assert!(text.contains(
            r#"hopngo_grpc_server_handled_total{grpc_code="NotFound",grpc_method="GetRelease",grpc_service="hopngo.release.v1.ReleaseService"} 1"#
        ), "{text}");
        assert!(text.contains("hopngo_grpc_server_handling_seconds_bucket"));
        assert!(text.contains(
            r#"hopngo_grpc_server_errors_total{error="not-found",grpc_method="GetRelease",grpc_service="hopngo.release.v1.ReleaseService"} 1"#
        ), "{text}");
    }
}
