//! `hopngo-dashboard`: the web dashboard process.

use clap::Parser as _;
use hopngo_dashboard::server::{Args, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = hopngo_kit::telemetry::init("hopngo-dashboard", &args.telemetry)?;
    let shutdown = hopngo_kit::shutdown::on_signal();
    if let Err(err) = run(args, shutdown).await {
        tracing::error!("{err:#}");
        eprintln!("hopngo-dashboard: {err:#}");
        std::process::exit(1);
    }
    Ok(())
}
