//! `hopngo-deployer`: the deployer process (local backend).

use clap::Parser as _;
use hopngo_deployer::server::{Args, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = hopngo_kit::telemetry::init("hopngo-deployer", &args.telemetry)?;
    let shutdown = hopngo_kit::shutdown::on_signal();
    if let Err(err) = run(args, shutdown, None).await {
        tracing::error!("{err:#}");
        eprintln!("hopngo-deployer: {err:#}");
        std::process::exit(1);
    }
    Ok(())
}
