//! `hopngo-smoke`: smoke tests against one track of a service behind its proxy (the delivery
//! config's `verify` job). Exit code 0 when every request answered 2xx from the expected version.

use clap::Parser;
use hopngo_deployer::smoke::{Smoke, run};

/// Sends a bounded number of requests pinned to a track and checks every answer.
#[derive(Parser, Debug)]
#[command(name = "hopngo-smoke", version)]
struct Args {
    /// `host:port` of the service's proxy.
    #[arg(long, env = "HOPNGO_SMOKE_ADDRESS")]
    address: String,
    /// Track to test: canary, preview, stable or active.
    #[arg(long, env = "HOPNGO_SMOKE_TRACK", default_value = "canary")]
    track: String,
    /// Version every answer must come from (empty: any).
    #[arg(long, env = "HOPNGO_SMOKE_EXPECT_VERSION", default_value = "")]
    expect_version: String,
    /// Paths to request, in turn.
    #[arg(long, env = "HOPNGO_SMOKE_PATH", value_delimiter = ',', default_value = "/healthz,/api/v1/info")]
    path: Vec<String>,
    /// Requests in all (at most 1000).
    #[arg(long, env = "HOPNGO_SMOKE_REQUESTS", default_value_t = 20)]
    requests: u32,
    /// Deadline of each request.
    #[arg(long, env = "HOPNGO_SMOKE_TIMEOUT", default_value = "2s", value_parser = hopngo_kit::args::parse_duration)]
    timeout: std::time::Duration,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if !matches!(args.track.as_str(), "canary" | "preview" | "stable" | "active") {
        eprintln!("hopngo-smoke: --track {:?} is not canary, preview, stable or active", args.track);
        std::process::exit(2);
    }
    if args.requests > 1000 {
        eprintln!("hopngo-smoke: --requests is at most 1000");
        std::process::exit(2);
    }
    let smoke = Smoke {
        address: args.address,
        track: args.track,
        expect_version: args.expect_version,
        paths: args.path,
        requests: args.requests,
        timeout: args.timeout,
    };
    match run(&smoke).await {
        Ok(summary) => println!("smoke tests passed: {summary}"),
        Err(e) => {
            println!("smoke tests failed: {e}");
            std::process::exit(1);
        }
    }
}
