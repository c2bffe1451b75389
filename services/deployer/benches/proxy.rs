//! Proxy benchmark (`cargo bench -p hopngo-deployer --bench proxy`): the weighted proxy against
//! calling the demo service directly, in the same run on the same machine.
//!
//! 1. Throughput: 16 closed-loop clients (CPU-saturating on 2 cores), then 2, for 5 s each way;
//!    ratio proxy/direct (target >= 0.8).
//! 2. Latency at a fixed, bounded load (1,000 requests/s for 5 s, paced): p50/p99 each way and
//!    the p99 the proxy adds (target <= 1 ms); then with the most header and mirror routes a
//!    target can have, none matching, against no routes (target: <= 0.1 ms added at p99).
//! 3. Through the real DeployerService (gRPC, PostgreSQL, supervised demo processes): time from
//!    calling ApplyTarget(weight 0) on a 50 % canary to the last request that reached the canary
//!    (target <= 100 ms), over 10 rounds under steady load.

use hopngo_testkit::access::channel;
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use hopngo_deployer::{
    demo::{self, Behaviour},
    proxy::{Proxy, ProxyMetrics, RouteRules, Routing, Track},
};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio_util::sync::CancellationToken;

const CLIENTS: usize = 16;
const WINDOW: Duration = Duration::from_secs(5);
const RATE: u64 = 1000;

async fn throughput(target: SocketAddr, clients: usize) -> f64 {
    let deadline = Instant::now() + WINDOW;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        tasks.push(tokio::spawn(async move {
            let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let req = http::Request::get(format!("http://{target}/api/v1/info")).body(Empty::new()).unwrap();
                let response = client.request(req).await.unwrap();
                assert!(response.status().is_success());
                response.into_body().collect().await.unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / WINDOW.as_secs_f64()
}

/// Sends `RATE` requests per second for `WINDOW`, each on its own schedule (a late request does
/// not delay the next one's start); returns sorted latencies in microseconds.
async fn paced(target: SocketAddr) -> Vec<u64> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let start = tokio::time::Instant::now();
    let total = RATE * WINDOW.as_secs();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let client = client.clone();
        let at = start + Duration::from_micros(i * 1_000_000 / RATE);
        tokio::time::sleep_until(at).await;
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let req = http::Request::get(format!("http://{target}/api/v1/info")).body(Empty::new()).unwrap();
            let response = client.request(req).await.unwrap();
            response.into_body().collect().await.unwrap();
            t0.elapsed().as_micros() as u64
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    for t in tasks {
        latencies.push(t.await.unwrap());
    }
    latencies.sort_unstable();
    latencies
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let shutdown = CancellationToken::new();
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let service = demo::spawn(any, "booking", "1.0.0", Behaviour::default(), shutdown.clone()).await.unwrap();
    let registry = prometheus::Registry::new();
    let proxy = Proxy::start(any, "booking", "staging", ProxyMetrics::new(&registry), shutdown.clone()).await.unwrap();
    proxy.set_routing(Routing {
        tracks: BTreeMap::from([(Track::Stable, vec![service])]),
        primary: Some(Track::Stable),
        weighted: None,
        baseline: false,
        routes: Default::default(),
    });
    // Warm up connections and code paths.
    paced(service).await;
    paced(proxy.addr()).await;

    for clients in [CLIENTS, 2] {
        let direct = throughput(service, clients).await;
        let proxied = throughput(proxy.addr(), clients).await;
        println!(
            "throughput ({clients} closed-loop clients, {}s each): direct {direct:.0} req/s, proxied {proxied:.0} req/s, ratio {:.2} (target >= 0.8)",
            WINDOW.as_secs(),
            proxied / direct
        );
    }

    let d = paced(service).await;
    let p = paced(proxy.addr()).await;
    println!("latency at {RATE} req/s for {}s ({} requests each way):", WINDOW.as_secs(), d.len());
    println!("  direct:  p50 {} µs, p99 {} µs", quantile(&d, 0.5), quantile(&d, 0.99));
    println!("  proxied: p50 {} µs, p99 {} µs", quantile(&p, 0.5), quantile(&p, 0.99));
    let added = quantile(&p, 0.99) as i64 - quantile(&d, 0.99) as i64;
    println!("  added p99 {:.3} ms (target <= 1 ms)", added as f64 / 1000.0);

    // The most routes a target can have (8), none matching, so every request evaluates them all:
    // 7 header routes of two matches each (one an expression) and a mirror route.
    let mut yaml = String::from("headers:\n");
    for i in 0..7 {
        yaml.push_str(&format!(
            "  - name: h{i}\n    match:\n      - {{headerName: x-beta-{i}, headerValue: {{regex: '^(yes|true|on)$'}}}}\n      - {{headerName: x-region, headerValue: {{prefix: eu-}}}}\n"
        ));
    }
    yaml.push_str("mirrors:\n  - name: m\n    match: [{method: {exact: POST}, path: {prefix: /never}}]\n");
    let routes: hopngo_delivery::routes::Routes = serde_saphyr::from_str(&yaml).unwrap();
    assert!(routes.problems().is_empty(), "{:?}", routes.problems());
    let plain_routing = proxy.routing();
    proxy.set_routing(Routing {
        tracks: BTreeMap::from([(Track::Stable, vec![service]), (Track::Canary, vec![service])]),
        primary: Some(Track::Stable),
        weighted: Some((Track::Canary, 0)),
        baseline: false,
        routes: std::sync::Arc::new(RouteRules::compile(&routes).unwrap()),
    });
    let r = paced(proxy.addr()).await;
    proxy.set_routing((*plain_routing).clone());
    let p = paced(proxy.addr()).await;
    println!("  proxied, 8 routes evaluated per request: p50 {} µs, p99 {} µs", quantile(&r, 0.5), quantile(&r, 0.99));
    println!("  proxied, no routes (again):               p50 {} µs, p99 {} µs", quantile(&p, 0.5), quantile(&p, 0.99));
    let added = quantile(&r, 0.99) as i64 - quantile(&p, 0.99) as i64;
    println!("  routes add p99 {:.3} ms (target <= 0.1 ms)", added as f64 / 1000.0);
    shutdown.cancel();
    weight_zero_cutoff().await;
}

/// Section 3: ApplyTarget(weight 0) → last request to the canary.
async fn weight_zero_cutoff() {
    use clap::Parser as _;
    use hopngo_proto::deployer::{self as pb, deployer_service_client::DeployerServiceClient};
    let pg = tokio::task::spawn_blocking(|| hopngo_kit::pg::EphemeralPostgres::start(&Default::default()))
        .await
        .unwrap()
        .expect("PostgreSQL");
    let dir = std::env::temp_dir().join(format!("hopngo-proxy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("delivery.yaml");
    std::fs::write(
        &config,
        format!(
            "environments:\n  - name: bench\nservices:\n  - name: booking\n    strategy:\n      canary:\n        steps: [{{setWeight: 50}}]\n    local:\n      command: [\"{}\", --name, booking, --version, \"{{version}}\", --port, \"{{port}}\"]\n",
            env!("CARGO_BIN_EXE_hopngo-demo-service")
        ),
    )
    .unwrap();
    let mut argv = hopngo_testkit::server::server_args("hopngo-deployer", &pg.url("postgres"), "1s");
    argv.extend(
        ["--delivery-config", config.to_str().unwrap(), "--log-dir", dir.join("logs").to_str().unwrap()]
            .map(String::from),
    );
    argv.extend(["--log", "warn"].map(String::from));
    let args = hopngo_deployer::server::Args::parse_from(argv);
    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(hopngo_deployer::server::run(args, stop.clone(), Some(tx)));
    let addr = rx.await.unwrap().grpc;
    let mut deployer = DeployerServiceClient::new(channel(&format!("http://{addr}")));
    let target = |weight: u32| pb::ApplyTargetRequest {
        target: Some(pb::TargetSpec {
            service: "booking".into(),
            environment: "bench".into(),
            tracks: vec![
                pb::TrackSpec { track: pb::Track::Stable as i32, artifact: "1.0.0".into(), replicas: 1 },
                pb::TrackSpec { track: pb::Track::Canary as i32, artifact: "1.1.0".into(), replicas: 1 },
            ],
            canary_weight: weight,
            ..Default::default()
        }),
        idempotency_key: format!("bench/{weight}"),
    };
    let mut worst = Duration::ZERO;
    let mut apply_times = Vec::new();
    for _ in 0..10 {
        deployer.apply_target(target(50)).await.unwrap();
        loop {
            let status = deployer
                .get_target_status(pb::GetTargetStatusRequest {
                    service: "booking".into(),
                    environment: "bench".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status
                .unwrap();
            if status.converged {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pool = sqlx::PgPool::connect(&pg.url("postgres")).await.unwrap();
        let port: i32 = sqlx::query_scalar("SELECT proxy_port FROM deployer.targets").fetch_one(&pool).await.unwrap();
        pool.close().await;
        let proxy = SocketAddr::from(([127, 0, 0, 1], port as u16));
        // Steady load: 4 closed-loop clients recording when each canary-answered request was sent.
        let load_stop = CancellationToken::new();
        let mut load = Vec::new();
        for _ in 0..4 {
            let load_stop = load_stop.clone();
            load.push(tokio::spawn(async move {
                let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
                let mut last_canary: Option<Instant> = None;
                for _ in 0..100_000 {
                    if load_stop.is_cancelled() {
                        break;
                    }
                    let sent = Instant::now();
                    let req = http::Request::get(format!("http://{proxy}/api/v1/info")).body(Empty::new()).unwrap();
                    let response = client.request(req).await.unwrap();
                    let canary = response.headers().get("x-hopngo-version").is_some_and(|v| v == "1.1.0");
                    response.into_body().collect().await.unwrap();
                    if canary {
                        last_canary = Some(sent);
                    }
                }
                last_canary
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let called = Instant::now();
        deployer.apply_target(target(0)).await.unwrap();
        apply_times.push(called.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
        load_stop.cancel();
        for l in load {
            if let Some(last) = l.await.unwrap() {
                worst = worst.max(last.saturating_duration_since(called));
            }
        }
    }
    apply_times.sort();
    println!("ApplyTarget(weight 0) on a 50% canary under load, 10 rounds (gRPC + PostgreSQL + reconcile):");
    println!("  ApplyTarget took {:.1} ms (median)", apply_times[apply_times.len() / 2].as_secs_f64() * 1000.0);
    println!(
        "  last request to reach the canary was sent {:.1} ms after the call, worst round (target <= 100 ms)",
        worst.as_secs_f64() * 1000.0
    );
    stop.cancel();
    server.await.unwrap().unwrap();
    drop(pg);
    let _ = std::fs::remove_dir_all(dir);
}
