//! What the security layer costs (`cargo bench -p hopngo-kit --bench security`): one unary RPC on a
//! warm connection through a plain server and through a secured one (TLS + JWT verified per call,
//! and TLS + client certificate), p50/p99 over the same number of calls in the same process; then
//! the cost of a new connection (plain TCP vs TLS handshake with and without a client
//! certificate). Target: p99 overhead of JWT + TLS ≤ 1 ms.
//!
//! `HOPNGO_BENCH_CALLS` changes the call count (default 5,000; connections are a tenth of it).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use hopngo_kit::{
    admin::Metrics,
    auth::{AuthArgs, SecurityArgs},
    client,
    server::GrpcServer,
    tls::{Tls, TlsArgs},
};
use hopngo_proto::deployer::{
    self as dpb,
    deployer_service_client::DeployerServiceClient,
    deployer_service_server::{DeployerService, DeployerServiceServer},
};
use hopngo_testkit::{oidc::TestIssuer, pki::TestCa};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, transport::Channel};

/// Answers GetTargetStatus at once, so what is measured is the path to the handler.
struct Fast;

#[tonic::async_trait]
impl DeployerService for Fast {
    async fn apply_target(
        &self,
        _: Request<dpb::ApplyTargetRequest>,
    ) -> Result<Response<dpb::ApplyTargetResponse>, Status> {
        Err(Status::unimplemented("not measured"))
    }
    async fn get_target_status(
        &self,
        _: Request<dpb::GetTargetStatusRequest>,
    ) -> Result<Response<dpb::GetTargetStatusResponse>, Status> {
        Ok(Response::new(dpb::GetTargetStatusResponse::default()))
    }
    async fn preflight(&self, _: Request<dpb::PreflightRequest>) -> Result<Response<dpb::PreflightResponse>, Status> {
        Err(Status::unimplemented("not measured"))
    }
    async fn control_rollout(
        &self,
        _: Request<dpb::ControlRolloutRequest>,
    ) -> Result<Response<dpb::ControlRolloutResponse>, Status> {
        Err(Status::unimplemented("not measured"))
    }
    async fn render_target(
        &self,
        _: Request<dpb::RenderTargetRequest>,
    ) -> Result<Response<dpb::RenderTargetResponse>, Status> {
        Err(Status::unimplemented("not measured"))
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn serve(server: GrpcServer, shutdown: &CancellationToken) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(server.add_service(DeployerServiceServer::new(Fast)).serve(
        listener,
        Metrics::new(),
        shutdown.clone(),
    ));
    addr
}

fn request(token: Option<&str>) -> Request<dpb::GetTargetStatusRequest> {
    let mut req = Request::new(dpb::GetTargetStatusRequest::default());
    if let Some(token) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    }
    req
}

/// Latencies of `calls` sequential calls on one warm connection, sorted.
async fn warm(channel: Channel, token: Option<&str>, calls: usize) -> Vec<Duration> {
    let mut client = DeployerServiceClient::new(channel);
    for _ in 0..100 {
        client.get_target_status(request(token)).await.expect("warm-up call");
    }
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        client.get_target_status(request(token)).await.expect("call");
        samples.push(started.elapsed());
    }
    samples.sort();
    samples
}

/// Time of connecting and making one call, `n` times on a new connection each, sorted.
async fn fresh(connect: impl Fn() -> Channel, token: Option<&str>, n: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let mut client = DeployerServiceClient::new(connect());
        client.get_target_status(request(token)).await.expect("call on a new connection");
        samples.push(started.elapsed());
    }
    samples.sort();
    samples
}

fn report(name: &str, samples: &[Duration], baseline: &[Duration]) {
    println!(
        "{name:<44} p50 {:>7.3} ms  p99 {:>7.3} ms  (p99 {:+.3} ms vs plain, ×{:.2})",
        ms(pct(samples, 0.5)),
        ms(pct(samples, 0.99)),
        ms(pct(samples, 0.99)) - ms(pct(baseline, 0.99)),
        pct(samples, 0.99).as_secs_f64() / pct(baseline, 0.99).as_secs_f64()
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let calls: usize = std::env::var("HOPNGO_BENCH_CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000);
    let connections = (calls / 10).max(10);
    let dir = std::env::temp_dir().join(format!("hopngo-bench-security-{}", std::process::id()));
    let ca = TestCa::new(&dir, "bench CA")?;
    let server_cert = ca.issue("deployer", "deployer")?;
    let scheduler_cert = ca.issue("scheduler", "scheduler")?;
    std::fs::write(dir.join("policy.yaml"), "bindings:\n  - {subjects: [group:viewers], roles: [viewer]}\n")?;
    let issuer = TestIssuer::shared();
    let token = issuer.token("vera@example.com", &["viewers"]);
    let security = SecurityArgs {
        auth: AuthArgs {
            oidc_issuer: Some(issuer.url().into()),
            policy_file: Some(dir.join("policy.yaml")),
            ..AuthArgs::default()
        },
        tls: TlsArgs {
            tls_cert: Some(server_cert.cert.clone()),
            tls_key: Some(server_cert.key.clone()),
            tls_ca: Some(server_cert.ca.clone()),
        },
    }
    .load()
    .map_err(anyhow::Error::msg)?;

    let shutdown = CancellationToken::new();
    let plain = serve(GrpcServer::new(Duration::from_secs(1)), &shutdown).await;
    let secured = serve(GrpcServer::new(Duration::from_secs(1)).secure(&security), &shutdown).await;
    let scheduler =
        Tls::load(&scheduler_cert.cert, &scheduler_cert.key, &scheduler_cert.ca).map_err(anyhow::Error::msg)?;
    let plain_channel = || Channel::from_shared(format!("http://{plain}")).expect("url").connect_lazy();
    let person_channel =
        || hopngo_testkit::pki::channel_without_certificate(secured, &ca.ca_file()).expect("TLS channel");
    let secured_url = format!("https://localhost:{}", secured.port());
    // A bare Channel (the same client type for every variant) over the kit's TLS connector.
    let service_channel = || {
        Channel::from_shared(secured_url.replace("https://", "http://"))
            .expect("url")
            .connect_with_connector_lazy(scheduler.connector())
    };
    // The kit's own TLS channel must reach the same server (what the services will use).
    let mut traced = DeployerServiceClient::new(client::tls_channel(&secured_url, Duration::from_secs(5), &scheduler)?);
    traced.get_target_status(dpb::GetTargetStatusRequest::default()).await?;

    println!("== one unary call on a warm connection, {calls} calls each (GetTargetStatus, empty answer)");
    // Alternate the variants twice so a busy moment of the machine does not land on one of them.
    let mut plain_samples = warm(plain_channel(), None, calls / 2).await;
    let mut jwt_samples = warm(person_channel(), Some(&token), calls / 2).await;
    let mut mtls_samples = warm(service_channel(), None, calls / 2).await;
    plain_samples.extend(warm(plain_channel(), None, calls / 2).await);
    jwt_samples.extend(warm(person_channel(), Some(&token), calls / 2).await);
    mtls_samples.extend(warm(service_channel(), None, calls / 2).await);
    for samples in [&mut plain_samples, &mut jwt_samples, &mut mtls_samples] {
        samples.sort();
    }
    report("plain HTTP/2, no credentials", &plain_samples, &plain_samples);
    report("TLS + ES256 JWT (verified on every call)", &jwt_samples, &plain_samples);
    report("TLS + client certificate (the scheduler)", &mtls_samples, &plain_samples);

    println!("== a new connection and one call, {connections} times each");
    let plain_new = fresh(plain_channel, None, connections).await;
    let jwt_new = fresh(person_channel, Some(&token), connections).await;
    let mtls_new = fresh(service_channel, None, connections).await;
    report("plain TCP connect + call", &plain_new, &plain_new);
    report("TLS handshake (no client cert) + JWT call", &jwt_new, &plain_new);
    report("TLS handshake with client cert + call", &mtls_new, &plain_new);
    println!(
        "handshake cost per new connection (p50 difference): TLS {:.3} ms, mutual TLS {:.3} ms",
        ms(pct(&jwt_new, 0.5)) - ms(pct(&plain_new, 0.5)),
        ms(pct(&mtls_new, 0.5)) - ms(pct(&plain_new, 0.5))
    );
    let overhead = ms(pct(&jwt_samples, 0.99)) - ms(pct(&plain_samples, 0.99));
    println!(
        "target: JWT + TLS p99 overhead <= 1 ms: {:.3} ms ({})",
        overhead,
        if overhead <= 1.0 { "met" } else { "NOT met" }
    );

    shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
