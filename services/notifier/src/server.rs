//! Wiring of the notifier process: its database (or a throwaway cluster), the log, the webhook
//! dispatcher and the escalator, gRPC and admin servers, shutdown (streams end, deliveries in
//! flight finish).

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use hopngo_kit::{
    admin::{self, Metrics},
    args::{ListenArgs, TelemetryArgs, parse_duration},
    auth::SecurityArgs,
    http::HttpClient,
    pg::DatabaseArgs,
    server::{Bound, GrpcServer},
};
use hopngo_proto::notifier::notifier_service_server::NotifierServiceServer;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::{
    clock::{Clock, SystemClock},
    domain::{
        escalation::{Condition, Level, Policy},
        render::Links,
    },
    escalator::Escalator,
    grpc::Notifier,
    log::Log,
    metrics::NotifierMetrics,
    store::{PRUNE_BATCH, Store},
    subscribe::{SubscriptionSettings, Subscriptions},
    webhooks::{Dispatcher, WebhookSettings},
};

fn level(s: &str) -> Result<Level, String> {
    let (name, after) = s.split_once('=').ok_or_else(|| format!("{s:?} is not NAME=DELAY (e.g. team-lead=15m)"))?;
    Ok(Level { name: name.trim().to_string(), after: parse_duration(after.trim())? })
}

fn condition(s: &str) -> Result<Condition, String> {
    Condition::parse(s.trim()).ok_or_else(|| format!("{s:?} is not one of failed, aborted, stuck, awaiting-approval"))
}

/// Notifier settings; every flag also reads an environment variable.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "hopngo-notifier",
    version,
    about = "HopNGo notifier: the ordered, replayable release event log, subscriptions from a cursor, signed webhooks (CloudEvents, Slack) with retries and dead letters, escalation",
    mut_arg("listen", |a| a.default_value("127.0.0.1:50055").env("HOPNGO_NOTIFIER_LISTEN")),
    mut_arg("admin_listen", |a| a.default_value("127.0.0.1:9468").env("HOPNGO_NOTIFIER_ADMIN_LISTEN"))
)]
pub struct Args {
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub security: SecurityArgs,
    /// The notifier's database (tables in schema `notifier`).
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Connections to the database.
    #[arg(long, env = "HOPNGO_NOTIFIER_DB_CONNECTIONS", default_value_t = 8)]
    pub db_connections: u32,
    /// Idle time after which a subscription gets a heartbeat.
    #[arg(long, env = "HOPNGO_NOTIFIER_HEARTBEAT", default_value = "15s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// A subscriber whose buffer stays full this long is disconnected with its resume cursor.
    #[arg(long, env = "HOPNGO_NOTIFIER_SLOW_SUBSCRIBER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub slow_subscriber_timeout: Duration,
    /// Events buffered per subscriber (with the catch-up batch, what one subscriber can hold).
    #[arg(long, env = "HOPNGO_NOTIFIER_SUBSCRIBER_BUFFER", default_value_t = 64)]
    pub subscriber_buffer: usize,
    /// New events kept in memory for live subscribers (those further behind read the database).
    #[arg(long, env = "HOPNGO_NOTIFIER_LIVE_BUFFER", default_value_t = 4096)]
    pub live_buffer: usize,
    /// How often subscribers and webhooks look for events appended by other replicas.
    #[arg(long, env = "HOPNGO_NOTIFIER_POLL", default_value = "1s", value_parser = parse_duration)]
    pub poll: Duration,
    /// Deadline of one webhook request.
    #[arg(long, env = "HOPNGO_NOTIFIER_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub webhook_timeout: Duration,
    /// Attempts per event before it is dead-lettered.
    #[arg(long, env = "HOPNGO_NOTIFIER_WEBHOOK_MAX_ATTEMPTS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub webhook_max_attempts: u32,
    /// First retry delay (doubling, with jitter).
    #[arg(long, env = "HOPNGO_NOTIFIER_WEBHOOK_BACKOFF", default_value = "1s", value_parser = parse_duration)]
    pub webhook_backoff: Duration,
    /// Longest retry delay.
    #[arg(long, env = "HOPNGO_NOTIFIER_WEBHOOK_BACKOFF_MAX", default_value = "5m", value_parser = parse_duration)]
    pub webhook_backoff_max: Duration,
    /// Extra CA certificates (PEM files) trusted for https webhooks, besides the Mozilla roots.
    #[arg(long = "webhook-ca-file", env = "HOPNGO_NOTIFIER_WEBHOOK_CA_FILES", value_delimiter = ',')]
    pub webhook_ca_files: Vec<std::path::PathBuf>,
    /// Allow plain-http webhooks to hosts other than this machine (only on a trusted network).
    #[arg(long, env = "HOPNGO_NOTIFIER_ALLOW_REMOTE_WEBHOOKS")]
    pub allow_remote_webhooks: bool,
    /// Link to a release in messages, `{release_id}` replaced (e.g. your console's release page).
    #[arg(long, env = "HOPNGO_NOTIFIER_RELEASE_URL_TEMPLATE", default_value = "")]
    pub release_url_template: String,
    /// Escalation levels, `NAME=DELAY` after the condition began, in order.
    #[arg(
        long = "escalation-level",
        env = "HOPNGO_NOTIFIER_ESCALATION_LEVELS",
        value_delimiter = ',',
        value_parser = level,
        default_value = "on-call=0s,team-lead=15m,incident-commander=30m,executives=60m"
    )]
    pub escalation_levels: Vec<Level>,
    /// Conditions that escalate.
    #[arg(
        long = "escalate-on",
        env = "HOPNGO_NOTIFIER_ESCALATE_ON",
        value_delimiter = ',',
        value_parser = condition,
        default_value = "failed,aborted,stuck,awaiting-approval"
    )]
    pub escalate_on: Vec<Condition>,
    /// A running release with no event for this long is stuck.
    #[arg(long, env = "HOPNGO_NOTIFIER_STUCK_AFTER", default_value = "30m", value_parser = parse_duration)]
    pub stuck_after: Duration,
    /// Environments whose releases escalate (default: all).
    #[arg(long = "escalate-environment", env = "HOPNGO_NOTIFIER_ESCALATE_ENVIRONMENTS", value_delimiter = ',')]
    pub escalate_environments: Vec<String>,
    /// How long events (and delivery attempts, and finished releases) are kept; 0s keeps them
    /// forever. Events a webhook has not handled yet are kept regardless.
    #[arg(long, env = "HOPNGO_NOTIFIER_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub retention: Duration,
    /// How often the retention is applied.
    #[arg(long, env = "HOPNGO_NOTIFIER_PRUNE_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub prune_interval: Duration,
    /// How often escalations are checked.
    #[arg(long, env = "HOPNGO_NOTIFIER_ESCALATION_TICK", default_value = "1s", value_parser = parse_duration)]
    pub escalation_tick: Duration,
}

impl Args {
    fn policy(&self) -> anyhow::Result<Policy> {
        let policy = Policy {
            levels: self.escalation_levels.clone(),
            conditions: self.escalate_on.clone(),
            stuck_after: self.stuck_after,
            environments: self.escalate_environments.clone(),
        };
        policy.check().map_err(|e| anyhow::anyhow!("--escalation-level: {e}"))?;
        Ok(policy)
    }
}

/// Applies the retention every `interval` until `stop` (never, when `retention` is zero).
async fn prune(store: Store, clock: Arc<dyn Clock>, retention: Duration, interval: Duration, stop: CancellationToken) {
    if retention.is_zero() {
        return;
    }
    loop {
        match store.prune(clock.now() - retention, PRUNE_BATCH).await {
            Ok((0, 0, 0)) => {}
            Ok((events, deliveries, releases)) => {
                tracing::info!(events, deliveries, releases, "retention applied")
            }
            Err(err) => tracing::warn!(%err, "applying the retention failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Runs the notifier on wall-clock time; see [`run_with_clock`].
pub async fn run(args: Args, shutdown: CancellationToken, ready: Option<oneshot::Sender<Bound>>) -> anyhow::Result<()> {
    run_with_clock(args, Arc::new(SystemClock), shutdown, ready).await
}

/// Runs the notifier until `shutdown`; sends the bound gRPC address to `ready`. Prints
/// `hopngo-notifier listening grpc=ADDR admin=ADDR` once serving.
pub async fn run_with_clock(
    args: Args,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
    ready: Option<oneshot::Sender<Bound>>,
) -> anyhow::Result<()> {
    let security = args.security.load().map_err(anyhow::Error::msg)?;
    let policy = Arc::new(args.policy()?);
    let http = HttpClient::with_roots(&args.webhook_ca_files).map_err(|e| anyhow::anyhow!("--webhook-ca-file: {e}"))?;
    let (url, cluster) = args.database.resolve().await?;
    let store = Store::connect(&url, args.db_connections).await.context("connecting to the database")?;
    let metrics = Metrics::new();
    let notifier_metrics = NotifierMetrics::register(&metrics.registry);
    let log = Arc::new(Log::new(store.clone(), policy, args.live_buffer, notifier_metrics.clone()));

    let background = CancellationToken::new();
    let dispatcher = Arc::new(Dispatcher::new(
        Arc::clone(&log),
        http,
        WebhookSettings {
            timeout: args.webhook_timeout,
            max_attempts: args.webhook_max_attempts,
            backoff: args.webhook_backoff,
            backoff_max: args.webhook_backoff_max,
            poll: args.poll,
        },
        Links { release_url_template: args.release_url_template.clone() },
        Arc::clone(&clock),
        notifier_metrics.clone(),
    ));
    let dispatch_task = tokio::spawn(dispatcher.run(background.clone()));
    let escalator =
        Arc::new(Escalator::new(Arc::clone(&log), Arc::clone(&clock), args.escalation_tick, notifier_metrics.clone()));
    let escalate_task = tokio::spawn(Arc::clone(&escalator).run(background.clone()));
    let prune_task =
        tokio::spawn(prune(store.clone(), Arc::clone(&clock), args.retention, args.prune_interval, background.clone()));

    let listen = args.listen;
    let listener =
        tokio::net::TcpListener::bind(listen.listen).await.with_context(|| format!("binding {}", listen.listen))?;
    let grpc_addr = listener.local_addr()?;
    let admin_addr = match listen.admin_addr()? {
        Some(addr) => Some(admin::spawn(addr, metrics.clone(), background.clone()).await?),
        None => None,
    };
    println!(
        "hopngo-notifier listening grpc={grpc_addr} admin={}",
        admin_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into())
    );
    if let Some(ready) = ready {
        let _ = ready.send(Bound { grpc: grpc_addr, admin: admin_addr });
    }
    let subscriptions = Subscriptions {
        log: Arc::clone(&log),
        settings: SubscriptionSettings {
            heartbeat: args.heartbeat,
            slow_timeout: args.slow_subscriber_timeout,
            buffer: args.subscriber_buffer,
            poll: args.poll,
        },
        clock,
        metrics: notifier_metrics,
        // Half the pool at most: publishing and webhooks always find a connection.
        readers: Arc::new(tokio::sync::Semaphore::new((args.db_connections as usize / 2).max(1))),
    };
    let service = Notifier::new(escalator, subscriptions, args.allow_remote_webhooks, shutdown.clone());
    let served = GrpcServer::for_listen(&listen)
        .secure(&security)
        .add_service(NotifierServiceServer::new(service))
        .serve(listener, metrics, shutdown)
        .await;
    background.cancel();
    let _ = dispatch_task.await;
    let _ = escalate_task.await;
    let _ = prune_task.await;
    store.pool().close().await;
    drop(cluster);
    served
}
