//! gRPC server bootstrap shared by every service: health (`grpc.health.v1`), reflection (v1 and
//! v1alpha, with the health descriptors so `buf curl` and grpcurl list everything), a tower layer
//! that records per-RPC metrics and continues the caller's W3C trace, and a graceful drain.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use http::{Request, Response};
use opentelemetry::{global, propagation::Extractor};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    body::Body,
    server::NamedService,
    service::{Routes, RoutesBuilder},
};
use tonic_health::ServingStatus;
use tower::{Layer, Service};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{
    admin::Metrics,
    auth::{AuthLayer, Authenticator, RefusalLog, Security},
    limits::Limits,
    tls::Tls,
};

/// Largest header block a call may send.
const MAX_HEADER_LIST: u32 = 64 * 1024;
/// Most calls in flight on one connection.
const MAX_CONCURRENT_STREAMS: u32 = 256;

/// The services every server adds to its own: health and reflection (both versions).
const PLUMBING: [&str; 3] =
    ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// Where a service listens once it has bound its ports: what it reports to whoever started it
/// in-process, so a caller that asked for port 0 learns the port without racing for it.
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    pub grpc: std::net::SocketAddr,
    /// The admin (metrics) listener, unless it is off.
    pub admin: Option<std::net::SocketAddr>,
}

/// Collects a service's gRPC services, then serves them with the shared plumbing.
pub struct GrpcServer {
    routes: RoutesBuilder,
    names: Vec<&'static str>,
    drain_timeout: Duration,
    authenticator: Option<Authenticator>,
    tls: Option<Tls>,
    refusals: Option<Arc<dyn RefusalLog>>,
    limits: Limits,
    gate: Option<tokio::sync::watch::Receiver<bool>>,
    shutdown_delay: Duration,
    health_listen: Option<std::net::SocketAddr>,
}

impl GrpcServer {
    /// An empty server; `drain_timeout` bounds how long in-flight RPCs may run after shutdown.
    pub fn new(drain_timeout: Duration) -> Self {
        GrpcServer {
            routes: Routes::builder(),
            names: Vec::new(),
            drain_timeout,
            authenticator: None,
            tls: None,
            refusals: None,
            limits: Limits::default(),
            gate: None,
            shutdown_delay: Duration::ZERO,
            health_listen: None,
        }
    }

    /// A server with the drain timeout and shutdown delay of `listen`.
    pub fn for_listen(listen: &crate::args::ListenArgs) -> Self {
        GrpcServer {
            shutdown_delay: listen.shutdown_delay,
            health_listen: listen.health_listen,
            ..GrpcServer::new(listen.drain_timeout)
        }
    }

    /// Reports the business services SERVING (health and `/readyz`) only while `gate` holds
    /// true: a standby replica is alive (health's overall status stays SERVING, for liveness
    /// probes) but not ready, so a Kubernetes Service sends its calls to the leader.
    pub fn serving_when(mut self, gate: tokio::sync::watch::Receiver<bool>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Serves over TLS when `security` has a certificate (plain HTTP/2, loopback only, when not)
    /// and requires every call but health and reflection to prove who it is and hold the RPC's
    /// permission.
    pub fn secure(mut self, security: &Security) -> Self {
        self.authenticator = Some(security.authenticator.clone());
        self.tls = security.tls.clone();
        self.limits = security.limits.clone();
        self
    }

    /// Reports every call the authentication layer refuses to `log` (the scheduler's audit log).
    pub fn audit_refusals(mut self, log: Arc<dyn RefusalLog>) -> Self {
        self.refusals = Some(log);
        self
    }

    /// Adds a business service; it is reported SERVING by health once the server runs.
    pub fn add_service<S>(mut self, svc: S) -> Self
    where
        S: tower::Service<Request<Body>, Error = Infallible> + NamedService + Clone + Send + Sync + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(svc);
        self
    }

    /// Serves on `listener` until `shutdown` is cancelled. On shutdown health turns NOT_SERVING
    /// first; calls are still accepted for the shutdown delay (while load balancers notice);
    /// then the listener closes, connections are told to go away (HTTP/2 GOAWAY: clients open
    /// new ones elsewhere), and in-flight RPCs get `drain_timeout` to finish. Streams are
    /// expected to watch the same token and end by themselves.
    pub async fn serve(
        self,
        listener: TcpListener,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        crate::tls::check_plaintext_listen(listener.local_addr()?, self.tls.as_ref()).map_err(anyhow::Error::msg)?;
        // What this port serves, and nothing else: reflection lists exactly these, and health
        // answers for each of them.
        let gated = self.gate.is_some();
        let mut names = self.names.clone();
        names.extend(PLUMBING);
        let (reporter, health) = tonic_health::server::health_reporter();
        let open = self.gate.as_ref().is_none_or(|gate| *gate.borrow());
        for name in &names {
            let serving = open || PLUMBING.contains(name);
            reporter
                .set_service_status(*name, if serving { ServingStatus::Serving } else { ServingStatus::NotServing })
                .await;
        }
        reporter.set_service_status("", ServingStatus::Serving).await;
        let gate = self.gate.map(|mut gate| {
            let (reporter, business, metrics, shutdown) =
                (reporter.clone(), self.names.clone(), metrics.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    let serving = *gate.borrow_and_update();
                    let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
                    for name in &business {
                        reporter.set_service_status(*name, status).await;
                    }
                    metrics.set_ready(serving);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        changed = gate.changed() => if changed.is_err() { return },
                    }
                }
            })
        });

        let reflection = || {
            names.iter().fold(
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(hopngo_proto::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
                |builder, name| builder.with_service_name(*name),
            )
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        // Health alone in plain text, for probes that cannot speak TLS; it stops with the server.
        let probes_stop = CancellationToken::new();
        let _probes_stop = probes_stop.clone().drop_guard();
        if let Some(addr) = self.health_listen {
            let listener = TcpListener::bind(addr).await.with_context(|| format!("binding --health-listen {addr}"))?;
            let probes = tonic::transport::Server::builder()
                .add_service(health.clone())
                .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
                    probes_stop.cancelled().await
                });
            tokio::spawn(async move {
                if let Err(err) = probes.await {
                    tracing::warn!(%err, "the health port stopped");
                }
            });
        }

        let mut routes = self.routes;
        routes.add_service(health).add_service(reflection_v1).add_service(reflection_v1alpha);

        let drain_started = CancellationToken::new();
        let shutdown_delay = self.shutdown_delay;
        let signal = {
            let shutdown = shutdown.clone();
            let drain_started = drain_started.clone();
            let metrics = metrics.clone();
            async move {
                shutdown.cancelled().await;
                if let Some(gate) = gate {
                    // Ends at the cancellation: nothing turns SERVING again after this.
                    let _ = gate.await;
                }
                metrics.set_ready(false);
                for name in &names {
                    reporter.set_service_status(*name, ServingStatus::NotServing).await;
                }
                reporter.set_service_status("", ServingStatus::NotServing).await;
                tokio::time::sleep(shutdown_delay).await;
                drain_started.cancel();
            }
        };
        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            // Bounds per connection: headers (a bearer token is at most 16 KiB) and concurrent
            // calls; messages are bounded by tonic's 4 MiB decoding limit and the edge checks.
            .http2_max_header_list_size(MAX_HEADER_LIST)
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .layer(RpcLayer { metrics: metrics.clone() })
            .layer(AuthLayer::new(self.authenticator).with_refusal_log(self.refusals).with_limits(self.limits))
            .add_routes(routes.routes())
            // Accepted sockets get TCP_NODELAY there: without it, small stream messages wait for
            // delayed ACKs (~40 ms).
            .serve_with_incoming_shutdown(crate::tls::incoming(listener, self.tls), signal);
        if !gated {
            metrics.set_ready(true);
        }
        let drain_timeout = self.drain_timeout;
        tokio::select! {
            result = server => result?,
            _ = async { drain_started.cancelled().await; tokio::time::sleep(drain_timeout).await } => {
                tracing::warn!(?drain_timeout, "drain timeout: closing remaining connections");
            }
        }
        Ok(())
    }
}

/// Tower layer recording RPC metrics and continuing the caller's trace.
#[derive(Clone)]
pub struct RpcLayer {
    metrics: Metrics,
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService { inner, metrics: self.metrics.clone() }
    }
}

/// Service produced by [`RpcLayer`].
#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: Metrics,
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

impl<S, B> Service<Request<Body>> for RpcService<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The ready clone stays here; the one that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = req.uri().path().to_owned();
        let metrics = self.metrics.clone();
        let quiet = path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.");
        let span = if quiet {
            tracing::Span::none()
        } else {
            let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
            let span =
                tracing::info_span!("rpc", otel.kind = "server", rpc.path = %path, trace_id = tracing::field::Empty);
            let _ = span.set_parent(parent);
            crate::telemetry::record_trace_id(&span);
            span
        };
        let started = Instant::now();
        Box::pin(
            async move {
                let response = inner.call(req).await?;
                // Errors come trailers-only (status in the headers); success is reported in the
                // trailers, which this layer does not wait for.
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(tonic::Code::from)
                    .unwrap_or(tonic::Code::Ok);
                let error = response.headers().get(crate::error::ERROR_LABEL).and_then(|v| v.to_str().ok());
                metrics.observe_rpc(&path, code, error, started.elapsed());
                Ok(response)
            }
            .instrument(span),
        )
    }
}
