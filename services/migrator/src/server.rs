//! Wiring of the migrator process: its own database (or a throwaway cluster), the application
//! databases it may migrate, the run engine (which takes over unfinished runs), gRPC and admin
//! servers, shutdown (runs in progress get the drain timeout to finish).

use std::{collections::BTreeMap, str::FromStr as _, sync::Arc, time::Duration};

use anyhow::Context as _;
use hopngo_kit::{
    admin::{self, Metrics},
    args::{ListenArgs, TelemetryArgs, parse_duration},
    auth::SecurityArgs,
    pg::DatabaseArgs,
    server::{Bound, GrpcServer},
};
use hopngo_proto::migrator::migrator_service_server::MigratorServiceServer;
use sqlx::{ConnectOptions as _, Connection as _, postgres::PgConnectOptions};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::{
    domain::info::IgnorePattern,
    engine::{Databases, Engine},
    executor::DatabaseSettings,
    grpc::Migrator,
    store::Store,
};

fn name_value(s: &str) -> Result<(String, String), String> {
    let (name, value) = s.split_once('=').ok_or_else(|| format!("{s:?} is not NAME=VALUE"))?;
    if name.is_empty() || value.is_empty() {
        return Err(format!("{s:?}: both NAME and VALUE are needed"));
    }
    Ok((name.to_string(), value.to_string()))
}

/// Migrator settings; every flag also reads an environment variable.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "hopngo-migrator",
    version,
    about = "HopNGo migrator: Flyway-compatible PostgreSQL migrations (flyway_schema_history, CRC32 checksums, Flyway's advisory lock) as stored runs: migrate, baseline, repair, undo",
    mut_arg("listen", |a| a.default_value("127.0.0.1:50054").env("HOPNGO_MIGRATOR_LISTEN")),
    mut_arg("admin_listen", |a| a.default_value("127.0.0.1:9467").env("HOPNGO_MIGRATOR_ADMIN_LISTEN"))
)]
pub struct Args {
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub security: SecurityArgs,
    /// The migrator's own database (runs are kept in schema `migrator`).
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Connections to the migrator's own database.
    #[arg(long, env = "HOPNGO_MIGRATOR_DB_CONNECTIONS", default_value_t = 4)]
    pub db_connections: u32,
    /// How long a run stays with the replica carrying it out without a renewal (renewed every
    /// third of it): a replica that dies hands its runs over this long after its last renewal.
    #[arg(long, env = "HOPNGO_MIGRATOR_RUN_LEASE", default_value = "30s", value_parser = run_lease)]
    pub run_lease: std::time::Duration,
    /// An application database it may migrate, `NAME=postgres://...` (repeatable).
    #[arg(long = "target", env = "HOPNGO_MIGRATOR_TARGETS", value_delimiter = ',', value_parser = name_value)]
    pub targets: Vec<(String, String)>,
    /// Default script location of a database, `NAME=DIR` (repeatable; used when a request names
    /// none). A request may name these or directories below them.
    #[arg(long = "locations", env = "HOPNGO_MIGRATOR_LOCATIONS", value_delimiter = ',', value_parser = name_value)]
    pub locations: Vec<(String, String)>,
    /// A directory below which a request may name script locations for a database, `NAME=DIR`
    /// (repeatable), besides its --locations. Nothing else is ever read.
    #[arg(long = "location-root", env = "HOPNGO_MIGRATOR_LOCATION_ROOTS", value_delimiter = ',', value_parser = name_value)]
    pub location_roots: Vec<(String, String)>,
    /// How long a run waits for the migration lock (held by another migrator or Flyway).
    #[arg(long, env = "HOPNGO_MIGRATOR_LOCK_WAIT", default_value = "50s", value_parser = parse_duration)]
    pub lock_wait: Duration,
    /// Baseline a non-empty database without history on migrate (Flyway's baselineOnMigrate).
    #[arg(long, env = "HOPNGO_MIGRATOR_BASELINE_ON_MIGRATE")]
    pub baseline_on_migrate: bool,
    /// The version baselineOnMigrate baselines at.
    #[arg(long, env = "HOPNGO_MIGRATOR_BASELINE_VERSION", default_value = "1")]
    pub baseline_version: String,
    /// Allow transactional and non-transactional statements in one script (run outside a transaction).
    #[arg(long, env = "HOPNGO_MIGRATOR_MIXED")]
    pub mixed: bool,
    /// `installed_by` recorded in the history (default: the database user).
    #[arg(long, env = "HOPNGO_MIGRATOR_INSTALLED_BY")]
    pub installed_by: Option<String>,
    /// States validate does not report unless a request says otherwise (Flyway's ignoreMigrationPatterns).
    #[arg(long, env = "HOPNGO_MIGRATOR_IGNORE_MIGRATION_PATTERNS", value_delimiter = ',', default_value = "*:future")]
    pub ignore_migration_patterns: Vec<String>,
    /// Create target databases that do not exist yet (the embedded stack; never in production).
    #[arg(long, env = "HOPNGO_MIGRATOR_CREATE_TARGETS")]
    pub create_targets: bool,
}

impl Args {
    fn databases(&self) -> anyhow::Result<Databases> {
        for p in &self.ignore_migration_patterns {
            IgnorePattern::parse(p).map_err(|e| anyhow::anyhow!("--ignore-migration-patterns: {e}"))?;
        }
        crate::domain::version::Version::parse(&self.baseline_version)
            .map_err(|e| anyhow::anyhow!("--baseline-version: {e}"))?;
        let mut by_name = BTreeMap::new();
        for (name, url) in &self.targets {
            PgConnectOptions::from_str(url)
                .map_err(|e| anyhow::anyhow!("--target {name}: the URL does not parse: {e}"))?;
            let settings = DatabaseSettings {
                url: url.clone(),
                locations: self.locations.iter().filter(|(n, _)| n == name).map(|(_, l)| l.clone()).collect(),
                location_roots: self.location_roots.iter().filter(|(n, _)| n == name).map(|(_, l)| l.clone()).collect(),
                installed_by: self.installed_by.clone(),
                lock_wait: self.lock_wait,
                baseline_on_migrate: self.baseline_on_migrate,
                mixed: self.mixed,
                baseline_version: self.baseline_version.clone(),
            };
            if by_name.insert(name.clone(), settings).is_some() {
                anyhow::bail!("--target {name} is given twice");
            }
        }
        if let Some((name, _)) = self.locations.iter().find(|(n, _)| !by_name.contains_key(n)) {
            anyhow::bail!("--locations {name}=...: no --target {name}");
        }
        if let Some((name, _)) = self.location_roots.iter().find(|(n, _)| !by_name.contains_key(n)) {
            anyhow::bail!("--location-root {name}=...: no --target {name}");
        }
        Ok(Databases { by_name, ignore: self.ignore_migration_patterns.clone() })
    }
}

/// Creates a target database that does not exist (connecting to `postgres` on the same server).
async fn create_if_missing(name: &str, url: &str) -> anyhow::Result<()> {
    let options = PgConnectOptions::from_str(url)?;
    let database = options.get_database().unwrap_or(name).to_string();
    let mut admin = options.clone().database("postgres").connect().await.with_context(|| format!("--target {name}"))?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&database)
        .fetch_one(&mut admin)
        .await?;
    if !exists {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {}", crate::history::quote_ident(&database))))
            .execute(&mut admin)
            .await
            .with_context(|| format!("creating database {database}"))?;
    }
    admin.close().await?;
    Ok(())
}

/// Runs the migrator until `shutdown`; sends the bound gRPC address to `ready`. Prints
/// `hopngo-migrator listening grpc=ADDR admin=ADDR` once serving.
pub async fn run(args: Args, shutdown: CancellationToken, ready: Option<oneshot::Sender<Bound>>) -> anyhow::Result<()> {
    let databases = args.databases()?;
    if args.create_targets {
        for (name, settings) in &databases.by_name {
            create_if_missing(name, &settings.url).await?;
        }
    }
    let Args { listen, security, database, db_connections, run_lease, .. } = args;
    let security = security.load().map_err(anyhow::Error::msg)?;
    let (url, cluster) = database.resolve().await?;
    let store = Store::connect(&url, db_connections).await.context("connecting to the database")?;
    let metrics = Metrics::new();
    let engine = Engine::new(store.clone(), databases, run_lease);
    let recover_stop = CancellationToken::new();
    let recover_task = tokio::spawn(Arc::clone(&engine).recover(recover_stop.clone()));

    let listener =
        tokio::net::TcpListener::bind(listen.listen).await.with_context(|| format!("binding {}", listen.listen))?;
    let grpc_addr = listener.local_addr()?;
    let admin_addr = match listen.admin_addr()? {
        Some(addr) => Some(admin::spawn(addr, metrics.clone(), recover_stop.clone()).await?),
        None => None,
    };
    println!(
        "hopngo-migrator listening grpc={grpc_addr} admin={}",
        admin_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into())
    );
    if let Some(ready) = ready {
        let _ = ready.send(Bound { grpc: grpc_addr, admin: admin_addr });
    }
    let served = GrpcServer::for_listen(&listen)
        .secure(&security)
        .add_service(MigratorServiceServer::new(Migrator::new(store.clone(), Arc::clone(&engine))))
        .serve(listener, metrics, shutdown)
        .await;
    recover_stop.cancel();
    let _ = recover_task.await;
    // A run still going after the drain timeout is taken over by the next migrator to start.
    engine.drain(listen.drain_timeout).await;
    store.pool().close().await;
    drop(cluster);
    served
}

fn run_lease(text: &str) -> Result<std::time::Duration, String> {
    let lease = parse_duration(text)?;
    if lease < std::time::Duration::from_secs(3) {
        return Err(format!("{text} is shorter than 3s: renewals every third of it would race the lease"));
    }
    Ok(lease)
}
