//! What authentication costs on the scheduler's API (`cargo bench -p hopngo-scheduler --bench
//! security`): `GetRelease` of a stored release (real PostgreSQL) on a warm connection through a
//! plain server and through the secured one (TLS + a JWT verified on every call, and TLS with the
//! scheduler's client certificate), p50/p99 over the same number of calls in the same process;
//! then the cost of a new connection (plain TCP vs a TLS handshake with and without a client
//! certificate). Both servers serve the same `Api` over the same database. Target: p99 overhead
//! of JWT + TLS ≤ 1 ms.
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
    limits::LimitArgs,
    pg::{EphemeralPostgres, PgOptions},
    server::GrpcServer,
    tls::{Tls, TlsArgs},
};
use hopngo_proto::release::{
    self as pb, release_service_client::ReleaseServiceClient, release_service_server::ReleaseServiceServer,
};
use hopngo_scheduler::{
    app::{App, Caller},
    grpc::Api,
    signals::Signals,
    store::Store,
};
use hopngo_testkit::{oidc::TestIssuer, pki::TestCa};
use tokio_util::sync::CancellationToken;
use tonic::{Request, transport::Channel};

const CONFIG: &str = "environments:\n  - name: bench\nservices:\n  - name: svc\n    strategy: {canary: {steps: [{setWeight: 50}, {pause: {}}]}}\n";

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn serve(server: GrpcServer, api: Api, shutdown: &CancellationToken) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(server.add_service(ReleaseServiceServer::new(api)).serve(listener, Metrics::new(), shutdown.clone()));
    addr
}

fn request(id: &str, token: Option<&str>) -> Request<pb::GetReleaseRequest> {
    let mut req = Request::new(pb::GetReleaseRequest { id: id.to_string() });
    if let Some(token) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    }
    req
}

/// Latencies of `calls` sequential calls on one warm connection, sorted.
async fn warm(channel: Channel, id: &str, token: Option<&str>, calls: usize) -> Vec<Duration> {
    let mut client = ReleaseServiceClient::new(channel);
    for _ in 0..100 {
        client.get_release(request(id, token)).await.expect("warm-up call");
    }
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        client.get_release(request(id, token)).await.expect("call");
        samples.push(started.elapsed());
    }
    samples.sort();
    samples
}

/// Time of connecting and making one call, `n` times on a new connection each, sorted.
async fn fresh(connect: impl Fn() -> Channel, id: &str, token: Option<&str>, n: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let mut client = ReleaseServiceClient::new(connect());
        client.get_release(request(id, token)).await.expect("call on a new connection");
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
    if std::env::args().any(|a| a == "--list") {
        // `cargo test --benches` lists benches; this binary has no libtest harness.
        return Ok(());
    }
    let mut pg = tokio::task::spawn_blocking(|| EphemeralPostgres::start(&PgOptions::default())).await??;
    let store = Store::connect(&pg.url("postgres"), 8).await?;
    store.migrate().await?;
    let app = App::new(store, Signals::local());
    let system = Caller::system("bench");
    app.apply_config(CONFIG, &system).await?;
    let release = app.create_release("svc", "bench", "1.0.0", "", ("", false), &system).await?;
    let id = release.id.to_string();
    let calls: usize = std::env::var("HOPNGO_BENCH_CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000);
    let connections = (calls / 10).max(10);
    let dir = std::env::temp_dir().join(format!("hopngo-bench-security-{}", std::process::id()));
    let ca = TestCa::new(&dir, "bench CA")?;
    let server_cert = ca.issue("scheduler-server", "server")?;
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
        // What is measured is authentication; reads are not rate limited anyway.
        limits: LimitArgs::default(),
    }
    .load()
    .map_err(anyhow::Error::msg)?;

    let shutdown = CancellationToken::new();
    let api = Api::new(app, shutdown.clone());
    let plain = serve(GrpcServer::new(Duration::from_secs(1)), api.clone(), &shutdown).await;
    let secured = serve(GrpcServer::new(Duration::from_secs(1)).secure(&security), api, &shutdown).await;
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
    let mut traced = ReleaseServiceClient::new(client::tls_channel(&secured_url, Duration::from_secs(5), &scheduler)?);
    traced.get_release(request(&id, None)).await?;

    println!("== GetRelease of a stored release on a warm connection, {calls} calls each");
    // Alternate the variants twice so a busy moment of the machine does not land on one of them.
    let mut plain_samples = warm(plain_channel(), &id, None, calls / 2).await;
    let mut jwt_samples = warm(person_channel(), &id, Some(&token), calls / 2).await;
    let mut mtls_samples = warm(service_channel(), &id, None, calls / 2).await;
    plain_samples.extend(warm(plain_channel(), &id, None, calls / 2).await);
    jwt_samples.extend(warm(person_channel(), &id, Some(&token), calls / 2).await);
    mtls_samples.extend(warm(service_channel(), &id, None, calls / 2).await);
    for samples in [&mut plain_samples, &mut jwt_samples, &mut mtls_samples] {
        samples.sort();
    }
    report("plain HTTP/2, no credentials", &plain_samples, &plain_samples);
    report("TLS + ES256 JWT (verified on every call)", &jwt_samples, &plain_samples);
    report("TLS + client certificate (the scheduler)", &mtls_samples, &plain_samples);

    println!("== a new connection and one call, {connections} times each");
    let plain_new = fresh(plain_channel, &id, None, connections).await;
    let jwt_new = fresh(person_channel, &id, Some(&token), connections).await;
    let mtls_new = fresh(service_channel, &id, None, connections).await;
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
    tokio::task::spawn_blocking(move || pg.stop()).await?;
    Ok(())
}
