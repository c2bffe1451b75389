//! `hopngo-demo-service`: stands in for a HopNGo service on the local backend.

use std::net::SocketAddr;

use clap::Parser;
use hopngo_deployer::demo::{self, Behaviour};

/// A demo HTTP service: `/healthz`, `/api/v1/info`, `/api/v1/...`; every response carries
/// `x-hopngo-version`.
#[derive(Parser, Debug)]
#[command(name = "hopngo-demo-service")]
struct Args {
    /// Service name reported in responses.
    #[arg(long, env = "HOPNGO_DEMO_NAME", default_value = "demo")]
    name: String,
    /// Version reported in responses; build metadata sets the behaviour
    /// (`2.0.0+errors=0.3,latency=250ms,startup=2s`).
    #[arg(long, env = "HOPNGO_DEMO_VERSION")]
    version: String,
    /// Port on 127.0.0.1 (0: any free port; the bound address is printed).
    #[arg(long, env = "HOPNGO_DEMO_PORT", default_value_t = 0)]
    port: u16,
    /// Share of API requests answered with 500 (overrides the version's metadata).
    #[arg(long, env = "HOPNGO_DEMO_ERROR_RATE")]
    error_rate: Option<f64>,
    /// Latency added to each API request (overrides the version's metadata).
    #[arg(long, env = "HOPNGO_DEMO_LATENCY", value_parser = hopngo_kit::args::parse_duration)]
    latency: Option<std::time::Duration>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut behaviour = match Behaviour::from_version(&args.version) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("hopngo-demo-service: --version {:?}: {e}", args.version);
            std::process::exit(2);
        }
    };
    if let Some(rate) = args.error_rate {
        if !(0.0..=1.0).contains(&rate) {
            eprintln!("hopngo-demo-service: --error-rate {rate} is not in 0..=1");
            std::process::exit(2);
        }
        behaviour.error_rate = rate;
    }
    if let Some(latency) = args.latency {
        behaviour.latency = latency;
    }
    let shutdown = hopngo_kit::shutdown::on_signal();
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hopngo-demo-service: binding {addr}: {e}");
            std::process::exit(1);
        }
    };
    let bound = listener.local_addr().expect("bound socket has an address");
    println!("hopngo-demo-service listening http={bound} name={} version={}", args.name, args.version);
    if let Err(e) = demo::serve(listener, &args.name, &args.version, behaviour, shutdown).await {
        eprintln!("hopngo-demo-service: {e}");
        std::process::exit(1);
    }
}
