//! `hopngo-notifier`: the notifier process.

use clap::Parser as _;
use hopngo_notifier::server::{Args, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = hopngo_kit::telemetry::init("hopngo-notifier", &args.telemetry)?;
    let shutdown = hopngo_kit::shutdown::on_signal();
    if let Err(err) = run(args, shutdown, None).await {
        tracing::error!("{err:#}");
        eprintln!("hopngo-notifier: {err:#}");
        std::process::exit(1);
    }
    Ok(())
}
