//! Scale benchmark (`cargo bench -p hopngo-e2e --bench scale`; a bench binary that prints a
//! table, not a timed test). Release builds of the real binaries as processes, one throwaway
//! PostgreSQL (fsync and synchronous_commit on), the fakes of the testkit for the services a
//! part does not measure:
//!
//! 1. Baseline: single-row UPDATE transactions, 32 connections, on the same server.
//! 2. Durable transitions/s of scheduler replicas (1, then 2, then 3 on one database) keeping 32
//!    ten-step canaries in flight, as a ratio to the baseline, and each replica's share.
//! 3. 10,000 active releases (canaries paused at 10 % under background analysis that never
//!    ends, so each wakes every poll interval to read its run) over the 3 replicas: wake-up
//!    lateness, wake-ups per replica, peak RSS and CPU per replica.
//! 4. The analyzer with 10,000 runs measuring every 10 s: lateness, peak RSS, CPU.
//! 5. The notifier's log at 1,000,000 events: append rate, subscribe latency from the
//!    beginning, from a cursor mid-log, the last 200, one release's events, the notifier's peak
//!    RSS, and the time the retention takes to remove 900,000 of them.
//!
//! `HOPNGO_SCALE_RELEASES`, `HOPNGO_SCALE_RUNS` and `HOPNGO_SCALE_EVENTS` make it smaller.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hopngo_e2e::{binary, scrape_sum};
use hopngo_kit::pg::{EphemeralPostgres, PgOptions};
use hopngo_proto::{
    analyzer::AnalysisPhase,
    events::Event,
    notifier::{self as npb, notifier_service_client::NotifierServiceClient, subscribe_request::Start},
    release::{self as pb, release_service_client::ReleaseServiceClient},
};
use hopngo_testkit::{
    access::{as_user, channel},
    bench::{Service, analyzer_lateness},
    fakes::Fakes,
    measure::{cpu_seconds, histogram_buckets, quantile_upper_bound, scrape},
};
use sqlx::postgres::PgPoolOptions;

const WRITERS: usize = 32;
const WINDOW: Duration = Duration::from_secs(10);
const REPLICAS: usize = 3;
const SERVICES: usize = 100;
/// How often a release waiting on analysis reads its run: the scheduler's `--poll-interval`.
const POLL: Duration = Duration::from_secs(10);

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One line of the table: what, the figure, and its target or baseline.
struct Row(String, String, String);

fn config(environments: usize) -> String {
    let mut yaml = String::from("environments:\n  - name: throughput\n");
    for e in 0..environments {
        yaml.push_str(&format!("  - name: env-{e}\n    progressDeadline: 2h\n"));
    }
    yaml.push_str(
        "analysisTemplates:\n  - name: slo\n    metrics:\n      - name: errors\n        successCondition: result < 0.01\n        provider: {prometheus: {address: \"http://127.0.0.1:9090\", query: x}}\nservices:\n",
    );
    for i in 0..WRITERS {
        // Ten timed pauses: each wake commits one or two transitions, like a release on timers.
        yaml.push_str(&format!("  - name: tp-{i}\n    strategy:\n      canary:\n        steps:\n"));
        for _ in 0..10 {
            yaml.push_str("          - pause: {duration: 1ms}\n");
        }
    }
    for s in 0..SERVICES {
        yaml.push_str(&format!(
            "  - name: svc-{s}\n    strategy:\n      canary:\n        steps:\n          - setWeight: 10\n          - pause: {{duration: 2h}}\n        analysis: {{templates: [slo], startingStep: 1}}\n"
        ));
    }
    yaml
}

/// Single-row UPDATE transactions per second, `WRITERS` connections, for `WINDOW`.
async fn baseline(url: &str) -> f64 {
    let pool = PgPoolOptions::new().max_connections(WRITERS as u32).connect(url).await.unwrap();
    sqlx::query("CREATE TABLE bench_rows (id INT PRIMARY KEY, n BIGINT NOT NULL)").execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO bench_rows SELECT i, 0 FROM generate_series(0, $1) i")
        .bind(WRITERS as i32)
        .execute(&pool)
        .await
        .unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + WINDOW;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..WRITERS as i32 {
        let (pool, done) = (pool.clone(), done.clone());
        tasks.spawn(async move {
            while Instant::now() < stop {
                sqlx::query("UPDATE bench_rows SET n = n + 1 WHERE id = $1").bind(i).execute(&pool).await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    tasks.join_all().await;
    pool.close().await;
    done.load(Ordering::Relaxed) as f64 / WINDOW.as_secs_f64()
}

async fn create(grpc: &str, service: String, environment: String, artifact: &str) -> String {
    let mut client = ReleaseServiceClient::new(channel(grpc));
    let request = pb::CreateReleaseRequest { service, environment, artifact: artifact.into(), ..Default::default() };
    client.create_release(as_user(request, "bench", &[])).await.unwrap().into_inner().release.unwrap().id
}

/// Creates a release of every (service, environment) pair, 32 at a time, spread over the
/// replicas' addresses.
async fn create_all(replicas: &[String], environments: usize, artifact: &'static str) {
    let pairs: Vec<(String, String)> =
        (0..environments).flat_map(|e| (0..SERVICES).map(move |s| (format!("svc-{s}"), format!("env-{e}")))).collect();
    let pairs = Arc::new(std::sync::Mutex::new(pairs));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (pairs, grpc) = (pairs.clone(), replicas[w % replicas.len()].clone());
        tasks.spawn(async move {
            loop {
                let Some((s, e)) = pairs.lock().unwrap().pop() else { return };
                create(&grpc, s, e, artifact).await;
            }
        });
    }
    tasks.join_all().await;
}

/// CPU seconds of every PostgreSQL server process (this benchmark's cluster is the only one
/// running; its connections are pooled, so they outlive a measuring window).
fn postgres_cpu_seconds() -> f64 {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres"))
        .map(cpu_seconds)
        .sum()
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(pool).await.unwrap()
}

/// Sums the replicas' cumulative histogram buckets.
fn merged(pages: &[String], name: &str) -> Vec<(f64, f64)> {
    let mut sum: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for page in pages {
        for (le, c) in histogram_buckets(page, name) {
            let e = sum.entry(format!("{le:020.6}")).or_insert((le, 0.0));
            e.1 += c;
        }
    }
    let mut buckets: Vec<(f64, f64)> = sum.into_values().collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

async fn scheduler_part(url: &str, rows: &mut Vec<Row>, base: f64) {
    let releases = env_count("HOPNGO_SCALE_RELEASES", 10_000);
    let environments = releases.div_ceil(SERVICES);
    let fakes = Fakes::start().await.unwrap();
    fakes.analyzer.polls_before_verdict(u32::MAX);
    fakes.analyzer.verdict("*", AnalysisPhase::Successful);
    let dir = std::env::temp_dir().join(format!("hopngo-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_file = dir.join("delivery.yaml");
    std::fs::write(&config_file, config(environments)).unwrap();
    let bin = binary("hopngo-scheduler", "hopngo-scheduler").unwrap();
    let mut args: Vec<String> =
        ["--database-url", url, "--poll-interval", &format!("{}s", POLL.as_secs())].map(String::from).to_vec();
    args.extend(fakes.endpoint_args());
    let mut first = args.clone();
    first.extend(["--apply-config".to_string(), config_file.display().to_string()]);
    let mut replicas = vec![Service::start(&bin, &first).await.unwrap()];
    let pool = PgPoolOptions::new().max_connections(4).connect(url).await.unwrap();

    // Durable transitions with 1, 2 and 3 replicas: 32 drivers, each creating the next release
    // of its service as soon as the last one settled (read from PostgreSQL every 20 ms).
    let stop = Arc::new(AtomicBool::new(false));
    let grpc = replicas[0].grpc.clone();
    for i in 0..WRITERS {
        create(&grpc, format!("tp-{i}"), "throughput".into(), "v0").await;
    }
    let mut drivers = tokio::task::JoinSet::new();
    for i in 0..WRITERS {
        let (stop, grpc, pool) = (stop.clone(), grpc.clone(), pool.clone());
        drivers.spawn(async move {
            let mut version = 1;
            while !stop.load(Ordering::Relaxed) {
                let id = create(&grpc, format!("tp-{i}"), "throughput".into(), &format!("v{version}")).await;
                version += 1;
                let id: sqlx::types::Uuid = id.parse().unwrap();
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let settled: bool =
                        sqlx::query_scalar("SELECT settled FROM scheduler.release_state WHERE release_id = $1")
                            .bind(id)
                            .fetch_one(&pool)
                            .await
                            .unwrap();
                    if settled || stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            }
        });
    }
    for n in 1..=REPLICAS {
        if n > 1 {
            replicas.push(Service::start(&bin, &args).await.unwrap());
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut before = Vec::new();
        let mut cpu = Vec::new();
        for r in &replicas {
            before.push(scrape_sum(&r.admin, "hopngo_scheduler_transitions_total").await.unwrap());
            cpu.push(cpu_seconds(r.pid));
        }
        let own_cpu = cpu_seconds(std::process::id());
        let pg_cpu = postgres_cpu_seconds();
        tokio::time::sleep(WINDOW).await;
        let pg_cpu = (postgres_cpu_seconds() - pg_cpu) / WINDOW.as_secs_f64();
        let mut shares = Vec::new();
        for (i, (r, b)) in replicas.iter().zip(&before).enumerate() {
            shares.push(scrape_sum(&r.admin, "hopngo_scheduler_transitions_total").await.unwrap() - b);
            cpu[i] = (cpu_seconds(r.pid) - cpu[i]) / WINDOW.as_secs_f64();
        }
        let own_cpu = (cpu_seconds(std::process::id()) - own_cpu) / WINDOW.as_secs_f64();
        let cpu: Vec<String> = cpu.iter().map(|c| format!("{c:.2}")).collect();
        let total: f64 = shares.iter().sum();
        let rate = total / WINDOW.as_secs_f64();
        let split: Vec<String> = shares.iter().map(|s| format!("{:.0} %", 100.0 * s / total.max(1.0))).collect();
        rows.push(Row(
            format!("durable transitions/s, {n} replica{}", if n > 1 { "s" } else { "" }),
            format!(
                "{rate:.0} (ratio {:.2}; shares {}; cores: scheduler {}, PostgreSQL {pg_cpu:.2}, fakes and drivers {own_cpu:.2})",
                rate / base,
                split.join(" / "),
                cpu.join(" / ")
            ),
            format!("baseline {base:.0} single-row transactions/s"),
        ));
    }
    stop.store(true, Ordering::Relaxed);
    drivers.join_all().await;

    // 10,000 releases: the first of each pair goes straight to stable; the second is a canary
    // that stays paused at 10 % under a background analysis that never ends.
    let setup = Instant::now();
    let grpcs: Vec<String> = replicas.iter().map(|r| r.grpc.clone()).collect();
    create_all(&grpcs, environments, "v1").await;
    let stable = "SELECT count(*) FROM scheduler.releases r JOIN scheduler.release_state s ON s.release_id = r.id \
                  WHERE r.environment <> 'throughput' AND s.settled";
    while count(&pool, stable).await < (environments * SERVICES) as i64 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    create_all(&grpcs, environments, "v2").await;
    let active = environments * SERVICES;
    while fakes.analyzer.runs().iter().filter(|r| r.labels.get("kind").is_some_and(|k| k == "background")).count()
        < active
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let setup = setup.elapsed();
    // Every release into its rhythm, then two poll intervals measured.
    tokio::time::sleep(POLL + Duration::from_secs(5)).await;
    let name = "hopngo_scheduler_wake_lateness_seconds";
    let mut pages = Vec::new();
    let mut cpu = Vec::new();
    for r in &replicas {
        pages.push(scrape(&r.admin).await);
        cpu.push(cpu_seconds(r.pid));
    }
    let window = POLL * 2;
    tokio::time::sleep(window).await;
    let mut after = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        after.push(scrape(&r.admin).await);
        cpu[i] = (cpu_seconds(r.pid) - cpu[i]) / window.as_secs_f64();
    }
    let (p99, wakes) = quantile_upper_bound(&merged(&pages, name), &merged(&after, name), 0.99);
    let (p50, _) = quantile_upper_bound(&merged(&pages, name), &merged(&after, name), 0.50);
    let per_replica: Vec<String> = pages
        .iter()
        .zip(&after)
        .map(|(b, a)| {
            let (_, n) = quantile_upper_bound(&histogram_buckets(b, name), &histogram_buckets(a, name), 0.5);
            format!("{:.0} %", 100.0 * n / wakes.max(1.0))
        })
        .collect();
    let unsettled = count(
        &pool,
        "SELECT count(*) FROM scheduler.release_state s JOIN scheduler.releases r ON r.id = s.release_id \
         WHERE NOT s.settled AND r.environment <> 'throughput'",
    )
    .await;
    rows.push(Row(
        format!("active releases ({} replicas)", REPLICAS),
        format!("{unsettled} (set up in {:.0}s: {active} stable, then {active} canaries)", setup.as_secs_f64()),
        "10,000".into(),
    ));
    rows.push(Row(
        format!("wake-ups in {}s", window.as_secs()),
        format!(
            "{wakes:.0} ({:.0}/s; {active} every {}s is {:.0}/s); shares {}",
            wakes / window.as_secs_f64(),
            POLL.as_secs(),
            active as f64 / POLL.as_secs_f64(),
            per_replica.join(" / ")
        ),
        String::new(),
    ));
    rows.push(Row("wake-up lateness".into(), format!("p50 <= {p50}s, p99 <= {p99}s"), "p99 <= 1s".into()));
    let rss: Vec<String> = replicas.iter().map(|r| format!("{:.1}", r.peak_rss_mib())).collect();
    rows.push(Row("scheduler peak RSS per replica, MiB".into(), rss.join(" / "), "<= 128 MiB each".into()));
    let cpu: Vec<String> = cpu.iter().map(|c| format!("{c:.2}")).collect();
    rows.push(Row("scheduler CPU per replica, cores".into(), cpu.join(" / "), "2 cores in all".into()));
    drop(replicas);
    pool.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

async fn analyzer_part(url: &str, rows: &mut Vec<Row>) {
    let runs = env_count("HOPNGO_SCALE_RUNS", 10_000);
    let interval = Duration::from_secs(10);
    let bin = binary("hopngo-analyzer", "hopngo-analyzer").unwrap();
    let l = analyzer_lateness(&bin, url, runs, interval, Duration::from_secs(40)).await.unwrap();
    rows.push(Row(
        format!("analyzer: {runs} runs every {}s", interval.as_secs()),
        format!(
            "{:.0} measurements/s of {:.0}/s (started in {:.0}s)",
            l.measurements / 40.0,
            runs as f64 / interval.as_secs_f64(),
            l.setup_secs
        ),
        String::new(),
    ));
    rows.push(Row(
        "analyzer measurement lateness".into(),
        format!("p50 <= {}s, p99 <= {}s", l.p50, l.p99),
        "p99 <= 1s".into(),
    ));
    rows.push(Row(
        "analyzer peak RSS, CPU".into(),
        format!("{:.1} MiB, {:.2} cores", l.peak_rss_mib, l.cpu),
        String::new(),
    ));
}

fn event(release: &str, service: &str, sequence: u64) -> Event {
    let mut e = hopngo_e2e::step_event(release, sequence, format!("step {sequence}"));
    e.service = service.into();
    e
}

/// Time to the first event of a subscription, and to the `n`-th.
async fn subscribe(
    grpc: &str,
    start: Start,
    filter: Option<npb::EventFilter>,
    n: usize,
) -> (Duration, Duration, usize) {
    let mut client = NotifierServiceClient::new(channel(grpc));
    let t = Instant::now();
    let request = npb::SubscribeRequest { start: Some(start), filter, subscriber: "bench".into(), stop_at_head: true };
    let mut stream = client.subscribe(request).await.unwrap().into_inner();
    let (mut first, mut got) = (None, 0);
    while let Some(item) = stream.message().await.unwrap() {
        if matches!(item.item, Some(npb::subscribe_response::Item::Event(_))) {
            got += 1;
            first.get_or_insert_with(|| t.elapsed());
            if got == n {
                break;
            }
        }
    }
    (first.unwrap_or_default(), t.elapsed(), got)
}

async fn notifier_part(url: &str, rows: &mut Vec<Row>) {
    let total = env_count("HOPNGO_SCALE_EVENTS", 1_000_000);
    const PER_CALL: usize = 1_000;
    const RELEASES: usize = 1_000;
    let bin = binary("hopngo-notifier", "hopngo-notifier").unwrap();
    let args = ["--database-url", url, "--retention", "0s"].map(String::from);
    let notifier = Service::start(&bin, &args).await.unwrap();
    let ids: Vec<String> = (0..RELEASES).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let t = Instant::now();
    let calls = total / PER_CALL;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (next, ids, grpc) = (next.clone(), ids.clone(), notifier.grpc.clone());
        tasks.spawn(async move {
            let mut client = NotifierServiceClient::new(channel(&grpc));
            loop {
                let call = next.fetch_add(1, Ordering::Relaxed) as usize;
                if call >= calls {
                    return;
                }
                // Call k carries event k+1 of each of a thousand releases.
                let events = (0..PER_CALL)
                    .map(|j| {
                        let release = (call * PER_CALL + j) % RELEASES;
                        let sequence = (call * PER_CALL + j) / RELEASES + 1;
                        event(&ids[release], &format!("svc-{}", release % 100), sequence as u64)
                    })
                    .collect();
                client.publish_events(npb::PublishEventsRequest { events }).await.unwrap();
            }
        });
    }
    tasks.join_all().await;
    let append = t.elapsed();
    rows.push(Row(
        format!("notifier: {total} events appended"),
        format!(
            "{:.0}s ({:.0} events/s, {PER_CALL} a call, 4 callers)",
            append.as_secs_f64(),
            total as f64 / append.as_secs_f64()
        ),
        String::new(),
    ));
    let grpc = notifier.grpc.clone();
    let (first, all, _) = subscribe(&grpc, Start::FromBeginning(true), None, 10_000).await;
    rows.push(Row(
        "subscribe from the beginning".into(),
        format!("first event {:.1} ms, 10,000 in {:.0} ms", ms(first), ms(all)),
        String::new(),
    ));
    let middle = (total / 2).to_string();
    let (first, all, _) = subscribe(&grpc, Start::AfterCursor(middle), None, 10_000).await;
    rows.push(Row(
        "subscribe from a cursor mid-log".into(),
        format!("first event {:.1} ms, 10,000 in {:.0} ms", ms(first), ms(all)),
        String::new(),
    ));
    let (first, all, got) = subscribe(&grpc, Start::Last(200), None, 200).await;
    rows.push(Row(
        "subscribe to the last 200".into(),
        format!("first {:.1} ms, all {got} in {:.1} ms", ms(first), ms(all)),
        String::new(),
    ));
    let one = npb::EventFilter { release_id: ids[RELEASES / 2].clone(), ..Default::default() };
    let (first, all, got) = subscribe(&grpc, Start::FromBeginning(true), Some(one), usize::MAX).await;
    rows.push(Row(
        "one release's events from the beginning".into(),
        format!("first {:.1} ms, all {got} in {:.0} ms", ms(first), ms(all)),
        String::new(),
    ));
    rows.push(Row("notifier peak RSS".into(), format!("{:.1} MiB", notifier.peak_rss_mib()), String::new()));

    // The retention: nine tenths of the log made old, then the notifier's own prune.
    let pool = PgPoolOptions::new().max_connections(2).connect(url).await.unwrap();
    let old = (total * 9 / 10) as i64;
    sqlx::query("UPDATE notifier.events SET received_at = now() - interval '2 days' WHERE position <= $1")
        .bind(old)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("VACUUM ANALYZE notifier.events").execute(&pool).await.unwrap();
    let store = hopngo_notifier::store::Store::connect(url, 2).await.unwrap();
    let t = Instant::now();
    let (removed, _, _) = store
        .prune(time::OffsetDateTime::now_utc() - time::Duration::days(1), hopngo_notifier::store::PRUNE_BATCH)
        .await
        .unwrap();
    rows.push(Row(
        "retention prune".into(),
        format!("{removed} events removed in {:.0} ms (while the notifier runs)", ms(t.elapsed())),
        String::new(),
    ));
    pool.close().await;
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        // `cargo test --benches` lists benches; this binary has no libtest harness.
        return;
    }
    let pg = tokio::task::spawn_blocking(|| {
        EphemeralPostgres::start(&PgOptions { durable: true, max_connections: 300, settings: vec![] })
    })
    .await
    .unwrap()
    .expect("PostgreSQL");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&pg.url("postgres")).await.unwrap();
    for db in ["scale_baseline", "scale_scheduler", "scale_analyzer", "scale_notifier"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}"))).execute(&mut conn).await.unwrap();
    }
    let mut rows = Vec::new();
    let t = Instant::now();
    let base = baseline(&pg.url("scale_baseline")).await;
    rows.push(Row(
        "baseline: single-row UPDATE transactions/s".into(),
        format!("{base:.0} ({WRITERS} connections)"),
        String::new(),
    ));
    eprintln!("scale: baseline done at {:.0}s", t.elapsed().as_secs_f64());
    scheduler_part(&pg.url("scale_scheduler"), &mut rows, base).await;
    eprintln!("scale: scheduler done at {:.0}s", t.elapsed().as_secs_f64());
    analyzer_part(&pg.url("scale_analyzer"), &mut rows).await;
    eprintln!("scale: analyzer done at {:.0}s", t.elapsed().as_secs_f64());
    notifier_part(&pg.url("scale_notifier"), &mut rows).await;
    eprintln!("scale: notifier done at {:.0}s", t.elapsed().as_secs_f64());
    let width = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let value_width = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
    println!("PostgreSQL: throwaway cluster, fsync=on, synchronous_commit=on; release builds; 2 cores");
    for Row(what, value, target) in &rows {
        println!("{what:<width$}  {value:<value_width$}  {target}");
    }
}
