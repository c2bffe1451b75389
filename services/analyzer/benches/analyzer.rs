//! Analyzer benchmark (`cargo bench -p hopngo-analyzer`), on a throwaway PostgreSQL with fsync on:
//!
//! 1. Measurement lateness with 1,000 concurrent runs measuring every 10 s (scrape provider over
//!    a proxy-sized metrics page), read from the analyzer's own lateness histogram, with the
//!    analyzer as a separate process so its peak RSS and CPU are its own. Baseline in the same
//!    process: 1,000 plain tokio timers with the same rhythm (the machine's timer noise floor).
//! 2. Time from the failing measurement to the release's abort being committed: the scheduler
//!    and the analyzer for real (fake deployer and notifier), 20 canaries whose background
//!    analysis fails at its first measurement.

use hopngo_testkit::access::channel;
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use clap::Parser as _;
use hopngo_kit::pg::{EphemeralPostgres, PgOptions};
use hopngo_proto::{
    analyzer::{self as apb, analyzer_service_client::AnalyzerServiceClient},
    release::{self as pb, release_service_client::ReleaseServiceClient},
};
use hopngo_testkit::{bench::analyzer_lateness, fakes::Fakes, prometheus::Endpoint};
use tokio_util::sync::CancellationToken;

const RUNS: usize = 1_000;
const INTERVAL: Duration = Duration::from_secs(10);
const MEASURE: Duration = Duration::from_secs(40);

async fn baseline_timer_lateness() -> (f64, f64) {
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..RUNS {
        let offset = INTERVAL.mul_f64(i as f64 / RUNS as f64);
        tasks.push(tokio::spawn(async move {
            let mut late = Vec::new();
            for k in 1..=4u32 {
                let due = start + offset + INTERVAL * k;
                tokio::time::sleep_until(due).await;
                late.push(due.elapsed().as_secs_f64());
            }
            late
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by(f64::total_cmp);
    (all[all.len() / 2], all[all.len() * 99 / 100])
}

async fn lateness(url: &str) {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_hopngo-analyzer"));
    let l = analyzer_lateness(bin, url, RUNS, INTERVAL, MEASURE).await.unwrap();
    println!("  set-up: {RUNS} runs started in {:.1}s", l.setup_secs);
    println!(
        "  {:.0} measurements in {}s ({:.0}/s; {RUNS} runs every {}s is {:.0}/s)",
        l.measurements,
        MEASURE.as_secs(),
        l.measurements / MEASURE.as_secs_f64(),
        INTERVAL.as_secs(),
        RUNS as f64 / INTERVAL.as_secs_f64()
    );
    println!(
        "  measurement lateness: p50 <= {}s, p99 <= {}s (histogram bucket bounds; target p99 <= 1s)",
        l.p50, l.p99
    );
    println!("  analyzer peak RSS: {:.1} MiB (target <= 256 MiB); CPU: {:.2} cores", l.peak_rss_mib, l.cpu);
}

fn abort_config(services: usize, web: &str) -> String {
    let mut yaml = format!(
        "environments:\n  - name: staging\nanalysisTemplates:\n  - name: slo\n    metrics:\n      - name: error-rate-abort\n        interval: 1s\n        failureCondition: result > 0.05\n        provider: {{web: {{url: \"{web}\", jsonPath: $.errorRate}}}}\nservices:\n"
    );
    for s in 0..services {
        yaml.push_str(&format!(
            "  - name: svc-{s}\n    strategy:\n      canary:\n        steps:\n          - setWeight: 25\n          - pause: {{}}\n        analysis: {{templates: [slo], startingStep: 1}}\n"
        ));
    }
    yaml
}

async fn abort_latency(scheduler_url: &str, analyzer_url: &str) {
    const SERVICES: usize = 20;
    let fakes = Fakes::start().await.unwrap();
    let web = Endpoint::start(r#"{"errorRate": 0.5}"#).await.unwrap();
    let analyzer_shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let analyzer_args = hopngo_analyzer::server::Args::parse_from(
        [
            "hopngo-analyzer",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--database-url",
            analyzer_url,
            "--delivery-config",
            hopngo_testkit::config::loopback_config(&[]).to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(hopngo_testkit::access::TestAccess::shared().service_args("analyzer")),
    );
    let analyzer = tokio::spawn(hopngo_analyzer::server::run(analyzer_args, analyzer_shutdown.clone(), Some(tx)));
    let analyzer_addr: SocketAddr = rx.await.unwrap().grpc;
    let dir = std::env::temp_dir().join(format!("hopngo-analyzer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("delivery.yaml");
    std::fs::write(&config, abort_config(SERVICES, &web.url("/errors"))).unwrap();
    let scheduler_args = hopngo_scheduler::server::Args::parse_from(
        [
            "hopngo-scheduler",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--database-url",
            scheduler_url,
            "--deployer-url",
            &fakes.deployer_server.url(),
            "--analyzer-url",
            &format!("https://{analyzer_addr}"),
            "--migrator-url",
            &fakes.migrator_server.url(),
            "--notifier-url",
            &fakes.notifier_server.url(),
            "--apply-config",
            config.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(hopngo_testkit::access::TestAccess::shared().service_args("scheduler")),
    );
    let scheduler_shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let scheduler =
        tokio::spawn(hopngo_scheduler::server::run_with(scheduler_args, scheduler_shutdown.clone(), Some(tx)));
    let scheduler_addr: SocketAddr = rx.await.unwrap().grpc;
    let releases = ReleaseServiceClient::new(channel(&format!("https://{scheduler_addr}")));
    let mut analyzer_client = AnalyzerServiceClient::new(channel(&format!("https://{analyzer_addr}")));
    let create = |service: String, artifact: &'static str| {
        let mut client = releases.clone();
        async move {
            let req = hopngo_testkit::access::as_user(
                pb::CreateReleaseRequest {
                    service,
                    environment: "staging".into(),
                    artifact: artifact.into(),
                    ..Default::default()
                },
                "bench",
                &[],
            );
            client.create_release(req).await.unwrap().into_inner().release.unwrap().id
        }
    };
    let settled = |id: String| {
        let mut client = releases.clone();
        async move {
            loop {
                let r = client.get_release(pb::GetReleaseRequest { id: id.clone() }).await.unwrap();
                let r = r.into_inner().release.unwrap();
                if r.settled {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    for s in 0..SERVICES {
        let id = create(format!("svc-{s}"), "1.0.0").await;
        settled(id).await;
    }
    // Each faulty canary is watched from its creation; the time its ABORTED state reaches a
    // watcher is when the abort was committed (plus the notification).
    let mut faulty = Vec::new();
    for s in 0..SERVICES {
        let id = create(format!("svc-{s}"), "2.0.0").await;
        let mut client = releases.clone();
        let watch_id = id.clone();
        let seen = tokio::spawn(async move {
            let mut stream = client.watch_release(pb::WatchReleaseRequest { id: watch_id }).await.unwrap().into_inner();
            while let Some(item) = stream.message().await.unwrap() {
                let r = item.release.unwrap();
                if pb::ReleasePhase::try_from(r.phase).unwrap() == pb::ReleasePhase::Aborted {
                    return std::time::SystemTime::now();
                }
            }
            panic!("the watch ended without an abort");
        });
        faulty.push((id, seen));
    }
    let mut latencies = Vec::new();
    for (id, seen) in faulty {
        let seen = seen.await.unwrap();
        let r = settled(id.clone()).await;
        assert_eq!(pb::ReleasePhase::try_from(r.phase).unwrap(), pb::ReleasePhase::Aborted, "{r:?}");
        let run_id = r.analysis_runs.iter().find(|a| a.kind == "background").unwrap().run_id.clone();
        let run = analyzer_client
            .get_analysis_run(apb::GetAnalysisRunRequest { id: run_id })
            .await
            .unwrap()
            .into_inner()
            .run
            .unwrap();
        let failing = run.metrics[0].measurements.last().unwrap().finished_at.unwrap();
        let failing = std::time::UNIX_EPOCH + Duration::new(failing.seconds as u64, failing.nanos as u32);
        latencies.push(seen.duration_since(failing).map(|d| d.as_secs_f64()).unwrap_or(0.0));
    }
    latencies.sort_by(f64::total_cmp);
    let by_ms: BTreeMap<&str, f64> =
        [("min", latencies[0]), ("p50", latencies[latencies.len() / 2]), ("max", latencies[latencies.len() - 1])]
            .into_iter()
            .collect();
    println!(
        "  {} faulty canaries: failing measurement → abort seen by a watcher: min {:.0} ms, p50 {:.0} ms, max {:.0} ms (target <= 1000 ms)",
        latencies.len(),
        by_ms["min"] * 1000.0,
        by_ms["p50"] * 1000.0,
        by_ms["max"] * 1000.0
    );
    scheduler_shutdown.cancel();
    let _ = scheduler.await;
    analyzer_shutdown.cancel();
    let _ = analyzer.await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        // `cargo test --benches` lists benches; this binary has no libtest harness.
        return;
    }
    let pg = tokio::task::spawn_blocking(|| {
        EphemeralPostgres::start(&PgOptions { durable: true, max_connections: 200, settings: vec![] })
    })
    .await
    .unwrap()
    .expect("PostgreSQL");
    let admin = pg.url("postgres");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await.unwrap();
    for db in ["bench_lateness", "bench_abort_analyzer", "bench_abort_scheduler"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}"))).execute(&mut conn).await.unwrap();
    }
    println!("PostgreSQL: throwaway cluster, fsync=on, synchronous_commit=on");
    println!("Baseline: {RUNS} tokio timers every {}s in this process", INTERVAL.as_secs());
    let (p50, p99) = baseline_timer_lateness().await;
    println!("  timer lateness: p50 {:.2} ms, p99 {:.2} ms", p50 * 1000.0, p99 * 1000.0);
    println!("Analyzer: {RUNS} runs, one scrape metric each, every {}s", INTERVAL.as_secs());
    lateness(&pg.url("bench_lateness")).await;
    println!("Scheduler + analyzer: automatic abort");
    abort_latency(&pg.url("bench_abort_scheduler"), &pg.url("bench_abort_analyzer")).await;
}
