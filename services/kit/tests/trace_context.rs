//! W3C trace context crosses a real gRPC call: the server span continues the client's trace, the
//! handler's log lines carry its trace id, and the call shows up in the per-RPC metrics with its
//! status code.

use std::time::Duration;

use hopngo_kit::{admin::Metrics, client, server::GrpcServer};
use hopngo_proto::deployer::{
    self as dpb,
    deployer_service_client::DeployerServiceClient,
    deployer_service_server::{DeployerService, DeployerServiceServer},
};
use opentelemetry::{global, trace::TracerProvider as _};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{InMemorySpanExporter, SdkTracerProvider},
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// Log lines, kept for the test to read.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

struct Deployer;

#[tonic::async_trait]
impl DeployerService for Deployer {
    async fn apply_target(
        &self,
        _: Request<dpb::ApplyTargetRequest>,
    ) -> Result<Response<dpb::ApplyTargetResponse>, Status> {
        Err(Status::invalid_argument("target: required"))
    }
    async fn get_target_status(
        &self,
        _: Request<dpb::GetTargetStatusRequest>,
    ) -> Result<Response<dpb::GetTargetStatusResponse>, Status> {
        Err(Status::not_found("no target"))
    }
    async fn preflight(&self, _: Request<dpb::PreflightRequest>) -> Result<Response<dpb::PreflightResponse>, Status> {
        tracing::info!("preflight handled");
        Ok(Response::new(dpb::PreflightResponse { ok: true, checks: Vec::new() }))
    }
    async fn control_rollout(
        &self,
        _: Request<dpb::ControlRolloutRequest>,
    ) -> Result<Response<dpb::ControlRolloutResponse>, Status> {
        Err(Status::invalid_argument("service: no argoRollout"))
    }
    async fn render_target(
        &self,
        _: Request<dpb::RenderTargetRequest>,
    ) -> Result<Response<dpb::RenderTargetResponse>, Status> {
        Err(Status::invalid_argument("target: nothing to render"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_span_continues_the_client_trace_and_rpcs_are_counted() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    global::set_text_map_propagator(TraceContextPropagator::new());
    let logs = Logs::default();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .with(tracing_subscriber::fmt::layer().json().with_writer(logs.clone()));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    let server =
        tokio::spawn(GrpcServer::new(Duration::from_secs(1)).add_service(DeployerServiceServer::new(Deployer)).serve(
            listener,
            metrics.clone(),
            shutdown.clone(),
        ));

    let mut deployer = DeployerServiceClient::new(client::channel(&url, Duration::from_secs(5)).unwrap());
    let call = tracing::info_span!("client-call");
    async {
        deployer.preflight(dpb::PreflightRequest::default()).await.unwrap();
        let err = deployer.get_target_status(dpb::GetTargetStatusRequest::default()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
    }
    .instrument(call)
    .await;
    // Spans are exported when they close; the server's closes as its response is sent.
    tokio::time::sleep(Duration::from_millis(200)).await;
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let client_span = spans.iter().find(|s| s.name == "client-call").expect("client span exported");
    let server_spans: Vec<_> = spans.iter().filter(|s| s.name == "rpc").collect();
    assert_eq!(server_spans.len(), 2, "{:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>());
    for server_span in server_spans {
        assert_eq!(server_span.span_context.trace_id(), client_span.span_context.trace_id(), "same trace");
        assert_eq!(server_span.parent_span_id, client_span.span_context.span_id(), "child of the client span");
    }

    // The handler's log line names the trace it served.
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = logged.lines().find(|l| l.contains("preflight handled")).expect("the handler logged");
    let trace_id = client_span.span_context.trace_id().to_string();
    assert!(line.contains(&format!("\"trace_id\":\"{trace_id}\"")), "{line}");

    let text = metrics.render();
    assert!(text.contains(r#"hopngo_grpc_server_handled_total{grpc_code="Ok",grpc_method="Preflight",grpc_service="hopngo.deployer.v1.DeployerService"} 1"#), "{text}");
    assert!(text.contains(r#"hopngo_grpc_server_handled_total{grpc_code="NotFound",grpc_method="GetTargetStatus",grpc_service="hopngo.deployer.v1.DeployerService"} 1"#), "{text}");
    shutdown.cancel();
    server.await.unwrap().unwrap();
}
