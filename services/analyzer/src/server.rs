//! Wiring of the analyzer process: database (or a throwaway cluster), the measuring engine, gRPC
//! and admin servers, shutdown (the engine finishes its rounds in flight).

use std::{path::PathBuf, sync::Arc};

use anyhow::Context as _;
use hopngo_kit::{
    admin::{self, Metrics},
    args::{ListenArgs, TelemetryArgs},
    auth::SecurityArgs,
    pg::DatabaseArgs,
    server::{Bound, GrpcServer},
};
use hopngo_proto::analyzer::analyzer_service_server::AnalyzerServiceServer;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::{
    engine::{Engine, EngineMetrics},
    grpc::Analyzer,
    policy::PolicySource,
    providers::Providers,
    store::Store,
};

/// Analyzer settings; every flag also reads an environment variable.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "hopngo-analyzer",
    version,
    about = "HopNGo analyzer: analysis runs (Prometheus, scrape, web, job providers) with Argo Rollouts semantics, and a Kayenta-style judge",
    mut_arg("listen", |a| a.default_value("127.0.0.1:50053").env("HOPNGO_ANALYZER_LISTEN")),
    mut_arg("admin_listen", |a| a.default_value("127.0.0.1:9466").env("HOPNGO_ANALYZER_ADMIN_LISTEN"))
)]
pub struct Args {
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub security: SecurityArgs,
    /// The database (runs are kept in schema `analyzer`).
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Database connections.
    #[arg(long, env = "HOPNGO_ANALYZER_DB_CONNECTIONS", default_value_t = 8)]
    pub db_connections: u32,
    /// The delivery config (the file the scheduler's config is applied from): which hosts
    /// providers may reach (`providers.allowedHosts`) and which jobs may run (those its templates
    /// and verify steps declare). Read again when it changes. Without it nothing is measured.
    #[arg(long, env = "HOPNGO_DELIVERY_CONFIG")]
    pub delivery_config: Option<PathBuf>,
    /// A round of measurements stays with the replica measuring it for the run's longest
    /// provider timeout plus this; a replica that dies mid-round hands the run over then (runs
    /// between rounds are taken by any replica at once).
    #[arg(long, env = "HOPNGO_ANALYZER_LEASE_SLACK", default_value = "15s", value_parser = hopngo_kit::args::parse_duration)]
    pub lease_slack: std::time::Duration,
}

/// Runs the analyzer until `shutdown`; sends the bound gRPC address to `ready`. Prints
/// `hopngo-analyzer listening grpc=ADDR admin=ADDR` once serving.
pub async fn run(args: Args, shutdown: CancellationToken, ready: Option<oneshot::Sender<Bound>>) -> anyhow::Result<()> {
    let Args { listen, telemetry: _, security, database, db_connections, delivery_config, lease_slack } = args;
    let security = security.load().map_err(anyhow::Error::msg)?;
    let policy = PolicySource::open(delivery_config).map_err(|e| anyhow::anyhow!("--delivery-config: {e}"))?;
    let (url, cluster) = database.resolve().await?;
    let store = Store::connect(&url, db_connections).await.context("connecting to the database")?;
    let metrics = Metrics::new();
    let engine = Engine::new(store.clone(), Providers::new(Arc::new(policy)), EngineMetrics::new(&metrics.registry));
    let engine_stop = CancellationToken::new();
    let engine_task = tokio::spawn(engine.clone().run(engine_stop.clone()));

    let listener =
        tokio::net::TcpListener::bind(listen.listen).await.with_context(|| format!("binding {}", listen.listen))?;
    let grpc_addr = listener.local_addr()?;
    let admin_addr = match listen.admin_addr()? {
        Some(addr) => Some(admin::spawn(addr, metrics.clone(), engine_stop.clone()).await?),
        None => None,
    };
    println!(
        "hopngo-analyzer listening grpc={grpc_addr} admin={}",
        admin_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into())
    );
    if let Some(ready) = ready {
        let _ = ready.send(Bound { grpc: grpc_addr, admin: admin_addr });
    }
    let served = GrpcServer::for_listen(&listen)
        .secure(&security)
        .add_service(AnalyzerServiceServer::new(Analyzer::new(store.clone(), Arc::clone(&engine), lease_slack)))
        .serve(listener, metrics, shutdown)
        .await;
    engine_stop.cancel();
    let _ = engine_task.await;
    store.pool().close().await;
    drop(cluster);
    served
}
