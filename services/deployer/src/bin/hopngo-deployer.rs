//! `hopngo-deployer`: the deployer process, and `hopngo-deployer render`, which prints what a
//! release would write to the cluster without writing it.

use clap::Parser as _;
use hopngo_deployer::server::{Args, RenderArgs, render, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("render") {
        let args = RenderArgs::parse_from(std::env::args().skip(1));
        if let Err(err) = render(args).await {
            eprintln!("hopngo-deployer render: {err:#}");
            std::process::exit(1);
        }
        return Ok(());
    }
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
