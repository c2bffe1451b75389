//! Wiring of the dashboard process: channels to the control plane, the pages and their API, the
//! admin endpoint, shutdown (streams end, answers in flight finish).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use hopngo_client::{Addresses, Channels, Connection};
use hopngo_kit::{
    admin::{self, Metrics},
    args::{TelemetryArgs, parse_duration},
};
use tokio_util::sync::CancellationToken;

use crate::api::{AppState, DashboardMetrics};

/// Dashboard settings; every flag also reads an environment variable (the control plane's
/// addresses and CA the same ones `hopctl` reads).
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "hopngo-dashboard",
    version,
    about = "HopNGo web dashboard: the environments matrix, releases with their analysis charts, live events and escalations; every action is the API's, made with the signed-in person's own token"
)]
pub struct Args {
    /// Address of the web server. Plain HTTP, so loopback only: reach it from elsewhere through
    /// a TLS-terminating proxy on the same host, or an SSH or `kubectl port-forward` tunnel.
    #[arg(long, env = "HOPNGO_DASHBOARD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of the admin HTTP server (`/metrics`, `/healthz`, `/readyz`); `off` disables it.
    #[arg(long = "admin-listen", env = "HOPNGO_DASHBOARD_ADMIN_LISTEN", default_value = "127.0.0.1:9469")]
    pub admin_listen: String,
    /// Scheduler address.
    #[arg(long, env = "HOPNGO_SERVER", default_value = "https://127.0.0.1:50051")]
    pub server: String,
    /// Analyzer address.
    #[arg(long, env = "HOPNGO_ANALYZER", default_value = "https://127.0.0.1:50053")]
    pub analyzer: String,
    /// Migrator address.
    #[arg(long, env = "HOPNGO_MIGRATOR", default_value = "https://127.0.0.1:50054")]
    pub migrator: String,
    /// Notifier address.
    #[arg(long, env = "HOPNGO_NOTIFIER", default_value = "https://127.0.0.1:50055")]
    pub notifier: String,
    /// CA certificate (PEM) trusted for the control plane's `https` addresses besides the public
    /// roots; repeatable.
    #[arg(long = "ca-file", env = "HOPNGO_CA_FILE", value_delimiter = ',')]
    pub ca_files: Vec<PathBuf>,
    /// Mark the session cookie `Secure` (set it when browsers reach the dashboard over HTTPS
    /// through a proxy).
    #[arg(long = "secure-cookies", env = "HOPNGO_DASHBOARD_SECURE_COOKIES")]
    pub secure_cookies: bool,
    /// How long answers in flight may take to finish after a shutdown signal.
    #[arg(long = "drain-timeout", env = "HOPNGO_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Serves until `shutdown`; prints `hopngo-dashboard listening http=ADDR admin=ADDR` once
/// serving.
pub async fn run(args: Args, shutdown: CancellationToken) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "--listen {}: the dashboard serves plain HTTP, so only on loopback (put a TLS-terminating proxy in front of it)",
            args.listen
        );
    }
    let connection = Connection { token: None, ca_files: args.ca_files.clone(), insecure_skip_verify: false };
    let addresses = Addresses {
        scheduler: &args.server,
        analyzer: &args.analyzer,
        migrator: &args.migrator,
        notifier: &args.notifier,
    };
    let channels = Channels::connect(&addresses, &connection)?;
    let metrics = Metrics::new();
    let state = AppState {
        channels,
        secure_cookies: args.secure_cookies,
        metrics: DashboardMetrics::new(&metrics.registry),
        shutdown: shutdown.clone(),
    };
    let app = crate::assets::routes().merge(crate::api::routes(state));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let addr = listener.local_addr()?;
    let admin_addr = match args.admin_listen.as_str() {
        "off" => None,
        text => {
            let at: SocketAddr = text.parse().map_err(|e| anyhow::anyhow!("--admin-listen {text:?}: {e}"))?;
            Some(admin::spawn(at, metrics.clone(), shutdown.clone()).await.with_context(|| format!("binding {at}"))?)
        }
    };
    metrics.set_ready(true);
    println!(
        "hopngo-dashboard listening http={addr} admin={}",
        admin_addr.map_or("off".to_string(), |a| a.to_string())
    );
    tracing::info!(%addr, "dashboard serving");
    let draining = shutdown.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        draining.cancelled().await;
    });
    let drain_timeout = args.drain_timeout;
    let stopped = shutdown.clone();
    tokio::select! {
        result = server => result.context("serving")?,
        () = async move {
            stopped.cancelled().await;
            tokio::time::sleep(drain_timeout).await;
        } => tracing::warn!("answers still in flight after the drain timeout; stopping"),
    }
    metrics.set_ready(false);
    Ok(())
}
