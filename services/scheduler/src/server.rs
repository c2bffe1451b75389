//! Wiring of the scheduler process: database (or a throwaway cluster), schema, engine workers,
//! outbox relay, gRPC and admin servers, and the shutdown order (health NOT_SERVING, drain RPCs
//! and streams, stop workers after the release in hand, close the pool).

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use hopngo_kit::{
    admin::{self, Metrics},
    args::{ListenArgs, TelemetryArgs, parse_duration},
    auth::SecurityArgs,
    pg::DatabaseArgs,
    server::{Bound, GrpcServer},
};
use hopngo_proto::{
    config::config_service_server::ConfigServiceServer, identity::identity_service_server::IdentityServiceServer,
    release::release_service_server::ReleaseServiceServer,
};
use tokio::sync::oneshot;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    app::{App, Caller},
    deps::{Endpoints, GrpcEffects},
    domain::machine::Settings,
    engine::{Engine, EngineMetrics},
    gauges::ReleaseGauges,
    grpc::Api,
    outbox::Publisher,
    refusals::RefusalWriter,
    signals::Signals,
    store::Store,
    watcher::AnalysisWatcher,
};

/// Scheduler settings; every flag also reads an environment variable.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "hopngo-scheduler",
    version,
    about = "HopNGo scheduler: release API, delivery config and durable release engine"
)]
pub struct Args {
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub security: SecurityArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Connections in the database pool.
    #[arg(long, env = "HOPNGO_DB_MAX_CONNECTIONS", default_value_t = 40)]
    pub db_max_connections: u32,
    /// Deployer address.
    #[arg(long, env = "HOPNGO_DEPLOYER_URL", default_value = "http://127.0.0.1:50052")]
    pub deployer_url: String,
    /// Analyzer address.
    #[arg(long, env = "HOPNGO_ANALYZER_URL", default_value = "http://127.0.0.1:50053")]
    pub analyzer_url: String,
    /// Migrator address.
    #[arg(long, env = "HOPNGO_MIGRATOR_URL", default_value = "http://127.0.0.1:50054")]
    pub migrator_url: String,
    /// Notifier address.
    #[arg(long, env = "HOPNGO_NOTIFIER_URL", default_value = "http://127.0.0.1:50055")]
    pub notifier_url: String,
    /// Deadline of each call to another service.
    #[arg(long, env = "HOPNGO_CALL_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub call_timeout: Duration,
    /// Engine workers (releases advanced at once).
    #[arg(long, env = "HOPNGO_ENGINE_WORKERS", default_value_t = 16)]
    pub workers: usize,
    /// How often a converging or measuring release is looked at.
    #[arg(long, env = "HOPNGO_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// How long a high-severity analysis failure may last: the release holds traffic, measures
    /// again after this long, and aborts if it still fails.
    #[arg(long, env = "HOPNGO_HIGH_SEVERITY_GRACE", default_value = "5m", value_parser = parse_duration)]
    pub high_severity_grace: Duration,
    /// How long preflight keeps asking a dependency that does not answer before the release is
    /// aborted with that as the reason.
    #[arg(long, env = "HOPNGO_PREFLIGHT_PATIENCE", default_value = "30s", value_parser = parse_duration)]
    pub preflight_patience: Duration,
    /// Use PostgreSQL LISTEN/NOTIFY to wake sooner (everything still completes without it).
    #[arg(long, env = "HOPNGO_LISTEN_NOTIFY", default_value_t = true, action = clap::ArgAction::Set)]
    pub listen_notify: bool,
    /// How often the release gauges (releases by phase, overdue, outbox backlog) are counted
    /// from the database.
    #[arg(long, env = "HOPNGO_GAUGE_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub gauge_interval: Duration,
    /// Delivery config to apply at start (like `hopctl config apply -f`).
    #[arg(long, env = "HOPNGO_APPLY_CONFIG")]
    pub apply_config: Option<PathBuf>,
}

/// Runs the scheduler until `shutdown`. Prints `hopngo-scheduler listening grpc=ADDR admin=ADDR`
/// on stdout once serving (process-level tests and the embedded stack read it).
pub async fn run(args: Args, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with(args, shutdown, None).await
}

/// [`run`], also sending the bound gRPC address to `ready` (in-process tests).
pub async fn run_with(
    args: Args,
    shutdown: CancellationToken,
    ready: Option<oneshot::Sender<Bound>>,
) -> anyhow::Result<()> {
    let Args {
        listen,
        telemetry: _,
        security,
        database,
        db_max_connections,
        deployer_url,
        analyzer_url,
        migrator_url,
        notifier_url,
        call_timeout,
        workers,
        poll_interval,
        high_severity_grace,
        preflight_patience,
        listen_notify,
        gauge_interval,
        apply_config,
    } = args;

    let security = security.load().map_err(anyhow::Error::msg)?;
    let (url, cluster) = database.resolve().await?;
    let store = Store::connect(&url, db_max_connections).await.context("connecting to the database")?;
    store.migrate().await.context("applying the scheduler schema")?;

    let metrics = Metrics::new();
    let engine_metrics = EngineMetrics::new(&metrics.registry);
    let signals =
        if listen_notify { Signals::shared(store.pool().clone(), shutdown.clone()) } else { Signals::local() };

    let endpoints = Endpoints { deployer: deployer_url, analyzer: analyzer_url.clone(), migrator: migrator_url };
    let effects = Arc::new(GrpcEffects::new(&endpoints, call_timeout, security.tls.as_ref())?);
    let app = App::new(store.clone(), signals.clone()).with_deployer(Arc::clone(&effects));
    if let Some(path) = apply_config {
        let yaml = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let caller = Caller::system("hopngo-scheduler");
        let (version, changed, _) =
            app.apply_config(&yaml, &caller).await.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        tracing::info!(version, changed, file = %path.display(), "delivery config applied");
    }

    let watcher = AnalysisWatcher::new(&analyzer_url, security.tls.as_ref(), store.pool().clone(), signals.clone())?;
    let settings = Settings { poll_interval, high_severity_grace, preflight_patience, ..Settings::default() };
    let tracker = TaskTracker::new();
    let engine = Engine::new(store.clone(), effects, settings, signals.clone(), engine_metrics);
    engine.watch_analyses(watcher);
    // Workers stop on their own token, after the gRPC server has drained.
    let workers_stop = CancellationToken::new();
    engine.spawn(workers, &tracker, workers_stop.clone());
    let publisher = Publisher::new(store.clone(), &notifier_url, call_timeout, security.tls.as_ref(), signals.clone())?;
    tracker.spawn(publisher.run(workers_stop.clone()));
    let gauges = ReleaseGauges::register(&metrics.registry);
    tracker.spawn(gauges.run(store.clone(), gauge_interval, workers_stop.clone()));

    let listener =
        tokio::net::TcpListener::bind(listen.listen).await.with_context(|| format!("binding {}", listen.listen))?;
    let grpc_addr: SocketAddr = listener.local_addr()?;
    let admin_addr = match listen.admin_addr()? {
        Some(addr) => Some(admin::spawn(addr, metrics.clone(), workers_stop.clone()).await?),
        None => None,
    };
    println!(
        "hopngo-scheduler listening grpc={grpc_addr} admin={}",
        admin_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into())
    );
    tracing::info!(%grpc_addr, ?admin_addr, workers, "scheduler serving");
    if let Some(ready) = ready {
        let _ = ready.send(Bound { grpc: grpc_addr, admin: admin_addr });
    }

    let refusals = RefusalWriter::spawn(store.clone(), &metrics.registry, &tracker, workers_stop.clone());
    let api = Api::new(app, shutdown.clone());
    let served = GrpcServer::for_listen(&listen)
        .secure(&security)
        .audit_refusals(Arc::new(refusals))
        .add_service(ReleaseServiceServer::new(api.clone()))
        .add_service(ConfigServiceServer::new(api.clone()))
        .add_service(IdentityServiceServer::new(api))
        .serve(listener, metrics, shutdown.clone())
        .await;

    workers_stop.cancel();
    tracker.close();
    tracker.wait().await;
    store.pool().close().await;
    drop(cluster);
    served
}
