//! `hopngo-migrator`: the migrator process.

use clap::Parser as _;
use hopngo_migrator::server::{Args, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = hopngo_kit::telemetry::init("hopngo-migrator", &args.telemetry)?;
    let shutdown = hopngo_kit::shutdown::on_signal();
    if let Err(err) = run(args, shutdown, None).await {
        tracing::error!("{err:#}");
        eprintln!("hopngo-migrator: {err:#}");
        std::process::exit(1);
    }
    Ok(())
}
