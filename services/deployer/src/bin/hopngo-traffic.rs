//! `hopngo-traffic`: bounded load against a service (through its proxy), with a count of answers
//! by version and status at the end.

use clap::Parser;
use hopngo_deployer::traffic::{Load, run};

/// Sends GET requests at a fixed rate for a bounded time and prints who answered.
#[derive(Parser, Debug)]
#[command(name = "hopngo-traffic", version)]
struct Args {
    /// URL to request; repeat for several targets (each gets the full rate).
    #[arg(long, env = "HOPNGO_TRAFFIC_URL", value_delimiter = ',', required = true)]
    url: Vec<String>,
    /// Requests per second.
    #[arg(long, env = "HOPNGO_TRAFFIC_RATE", default_value_t = 50)]
    rate: u32,
    /// How long to run (at most 1h).
    #[arg(long, env = "HOPNGO_TRAFFIC_DURATION", default_value = "60s", value_parser = hopngo_kit::args::parse_duration)]
    duration: std::time::Duration,
    /// Stop after this many requests.
    #[arg(long, env = "HOPNGO_TRAFFIC_MAX_REQUESTS", default_value_t = 1_000_000)]
    max_requests: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if args.duration > std::time::Duration::from_secs(3600) {
        eprintln!("hopngo-traffic: --duration is at most 1h");
        std::process::exit(2);
    }
    let stop = hopngo_kit::shutdown::on_signal();
    let mut runs = tokio::task::JoinSet::new();
    for url in &args.url {
        let load = Load {
            url: url.clone(),
            rate: args.rate,
            duration: args.duration,
            max_requests: args.max_requests,
            timeout: std::time::Duration::from_secs(5),
        };
        let stop = stop.clone();
        runs.spawn(async move { (load.url.clone(), run(&load, stop).await) });
    }
    let mut results = runs.join_all().await;
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let several = results.len() > 1;
    for (url, result) in results {
        match result {
            Ok(tally) => {
                if several {
                    println!("{url}");
                }
                for ((version, status), n) in tally {
                    let version = if version.is_empty() { "-" } else { &version };
                    println!("{n:>8}  {status:>3}  {version}");
                }
            }
            Err(e) => {
                eprintln!("hopngo-traffic: {url}: {e}");
                std::process::exit(2);
            }
        }
    }
}
