//! Scheduler benchmark (a bench binary: `cargo bench -p hopngo-scheduler --bench engine`):
//! durable transition throughput with 32 concurrent releases, against a baseline of plain
//! single-row UPDATE + INSERT transactions run by this program on the same database at the same
//! concurrency. The engine runs in-process with effects that answer at once, so the figure is the
//! cost of claiming, advancing and committing (state + events + audit) — not of gRPC. (Active
//! releases at scale, over several replica processes, are `cargo bench -p hopngo-e2e --bench
//! scale`.)
//!
//! PostgreSQL is a throwaway cluster with fsync and synchronous_commit on.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hopngo_kit::pg::{EphemeralPostgres, PgOptions};
use hopngo_scheduler::{
    app::{App, Caller},
    domain::{
        effects::{
            DesiredState, EffectError, Effects, JudgeRequest, Judgement, MigrationObservation, MigrationPhase,
            MigrationRequest, PreflightCheck, PreflightRequest, RolloutControl, RunObservation, RunPhase, RunSamples,
            TargetObservation,
        },
        machine::Settings,
        plan::AnalysisSpec,
    },
    engine::{Engine, EngineMetrics},
    signals::Signals,
    store::Store,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

const CONCURRENCY: usize = 32;
const WINDOW: Duration = Duration::from_secs(10);

/// Effects that succeed at once: every desired state is converged, every run successful.
struct Instant0;

impl Effects for Instant0 {
    async fn apply_target(&self, _: &str, _: &DesiredState) -> Result<(), EffectError> {
        Ok(())
    }
    async fn target_status(&self, _: &str, _: &str) -> Result<TargetObservation, EffectError> {
        Ok(TargetObservation {
            converged: true,
            canary_weight: 0,
            idempotency_key: String::new(),
            message: String::new(),
            address: String::new(),
            rollout: None,
        })
    }
    async fn control_rollout(&self, _: &str, _: &str, _: RolloutControl) -> Result<(), EffectError> {
        Ok(())
    }
    async fn start_analysis(
        &self,
        key: &str,
        _: &AnalysisSpec,
        _: &BTreeMap<String, String>,
        _: &BTreeMap<String, String>,
    ) -> Result<String, EffectError> {
        Ok(key.to_string())
    }
    async fn analysis_status(&self, _: &str) -> Result<RunObservation, EffectError> {
        Ok(RunObservation { phase: RunPhase::Successful, message: String::new(), severity: Default::default() })
    }
    async fn analysis_samples(&self, id: &str) -> Result<RunSamples, EffectError> {
        Ok(RunSamples { observation: self.analysis_status(id).await?, samples: Default::default() })
    }
    async fn judge(&self, _: &JudgeRequest) -> Result<Judgement, EffectError> {
        Ok(Judgement { score: 100.0, verdict: "pass".into(), ..Default::default() })
    }
    async fn terminate_analysis(&self, _: &str, _: &str) -> Result<RunObservation, EffectError> {
        Ok(RunObservation { phase: RunPhase::Successful, message: String::new(), severity: Default::default() })
    }
    async fn start_migration(&self, key: &str, _: &MigrationRequest) -> Result<String, EffectError> {
        Ok(key.to_string())
    }
    async fn migration_status(&self, _: &str) -> Result<MigrationObservation, EffectError> {
        Ok(MigrationObservation {
            phase: MigrationPhase::Succeeded,
            message: String::new(),
            version_before: String::new(),
            version_after: String::new(),
        })
    }
    async fn preflight(&self, _: &PreflightRequest) -> Result<Vec<PreflightCheck>, EffectError> {
        Ok(Vec::new())
    }
}

fn throughput_config() -> String {
    let mut yaml = String::from("environments:\n  - name: bench\nservices:\n");
    for i in 0..CONCURRENCY {
        // Timed pauses: each tick commits one or two transitions, like a real release waiting on
        // timers, rather than racing through many steps in one transaction.
        yaml.push_str(&format!("  - name: svc-{i}\n    strategy:\n      canary:\n        steps:\n"));
        for _ in 0..10 {
            yaml.push_str("          - pause: {duration: 1ms}\n");
        }
    }
    yaml
}

async fn baseline(pool: &sqlx::PgPool) -> f64 {
    sqlx::query("CREATE TABLE bench_rows (id INT PRIMARY KEY, n BIGINT NOT NULL, payload JSONB NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE bench_log (id BIGSERIAL PRIMARY KEY, row_id INT NOT NULL, n BIGINT NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT now())")
        .execute(pool)
        .await
        .unwrap();
    for i in 0..CONCURRENCY as i32 {
        sqlx::query("INSERT INTO bench_rows VALUES ($1, 0, '{}')").bind(i).execute(pool).await.unwrap();
    }
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + WINDOW;
    let mut tasks = Vec::new();
    for i in 0..CONCURRENCY as i32 {
        let pool = pool.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                let mut tx = pool.begin().await.unwrap();
                sqlx::query("UPDATE bench_rows SET n = n + 1 WHERE id = $1").bind(i).execute(&mut *tx).await.unwrap();
                sqlx::query("INSERT INTO bench_log (row_id, n) VALUES ($1, 1)")
                    .bind(i)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / WINDOW.as_secs_f64()
}

fn counter(registry: &prometheus::Registry, name: &str) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter().map(|m| m.get_counter().get_value()))
        .sum()
}

async fn engine_throughput(url: &str) -> EngineRun {
    let store = Store::connect(url, (CONCURRENCY + 8) as u32).await.unwrap();
    store.migrate().await.unwrap();
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").execute(store.pool()).await.unwrap();
    let signals = Signals::local();
    let app = App::new(store.clone(), signals.clone());
    let caller = Caller::system("bench");
    app.apply_config(&throughput_config(), &caller).await.unwrap();
    let registry = prometheus::Registry::new();
    let metrics = EngineMetrics::new(&registry);
    let settings = Settings { poll_interval: Duration::from_millis(50), ..Settings::default() };
    let engine = Engine::new(store.clone(), Arc::new(Instant0), settings, signals, metrics);
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    engine.spawn(CONCURRENCY, &tracker, stop.clone());
    // Seed stable versions, then keep 32 releases in flight for the whole window.
    let services: Vec<String> = (0..CONCURRENCY).map(|i| format!("svc-{i}")).collect();
    for s in &services {
        app.create_release(s, "bench", "v0", "", ("", false), &caller).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // One driver per service: as soon as its release settles, the next one is created.
    let stop_drivers = CancellationToken::new();
    let mut drivers = Vec::new();
    for s in services.clone() {
        let app = app.clone();
        let caller = caller.clone();
        let stop = stop_drivers.clone();
        drivers.push(tokio::spawn(async move {
            let mut version = 1u64;
            let mut changes = app.signals().subscribe();
            while !stop.is_cancelled() {
                let r =
                    app.create_release(&s, "bench", &format!("v{version}"), "", ("", false), &caller).await.unwrap();
                version += 1;
                // Re-read only when the engine reports a change of this release (or every 100 ms).
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        change = changes.recv() => match change {
                            Ok(id) if id != r.id => continue,
                            _ => {}
                        },
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                    let settled: bool = sqlx::query_scalar("SELECT settled FROM release_state WHERE release_id = $1")
                        .bind(r.id)
                        .fetch_one(app.store().pool())
                        .await
                        .unwrap();
                    if settled {
                        break;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    let tr0 = counter(&registry, "hopngo_scheduler_transitions_total");
    let tk0 = counter(&registry, "hopngo_scheduler_ticks_total");
    tokio::time::sleep(WINDOW).await;
    let secs = t0.elapsed().as_secs_f64();
    let statements: Vec<(String, i64, f64)> = sqlx::query_as(
        "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 90), calls, total_exec_time FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) ORDER BY total_exec_time DESC LIMIT 6",
    )
    .fetch_all(store.pool())
    .await
    .unwrap_or_default();
    let mean_ms = |name: &str| {
        registry.gather().iter().filter(|f| f.name() == name).find_map(|f| {
            let h = f.get_metric().first()?.get_histogram();
            Some(1000.0 * h.get_sample_sum() / h.get_sample_count().max(1) as f64)
        })
    };
    let (tick_ms, late_ms) = (
        mean_ms("hopngo_scheduler_tick_seconds").unwrap_or(0.0),
        mean_ms("hopngo_scheduler_wake_lateness_seconds").unwrap_or(0.0),
    );
    let transitions = (counter(&registry, "hopngo_scheduler_transitions_total") - tr0) / secs;
    let ticks = (counter(&registry, "hopngo_scheduler_ticks_total") - tk0) / secs;
    stop_drivers.cancel();
    for d in drivers {
        d.await.unwrap();
    }
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    store.pool().close().await;
    EngineRun { transitions, ticks, tick_ms, late_ms, statements }
}

/// What the throughput run measured.
struct EngineRun {
    transitions: f64,
    ticks: f64,
    tick_ms: f64,
    late_ms: f64,
    statements: Vec<(String, i64, f64)>,
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        // `cargo test --benches` lists benches; this binary has no libtest harness.
        return;
    }
    let mut pg = tokio::task::spawn_blocking(|| {
        EphemeralPostgres::start(&PgOptions {
            durable: true,
            max_connections: 200,
            settings: vec![("shared_preload_libraries".into(), "pg_stat_statements".into())],
        })
    })
    .await
    .unwrap()
    .expect("PostgreSQL");
    let admin = pg.url("postgres");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await.unwrap();
    for db in ["bench_baseline", "bench_engine"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}"))).execute(&mut conn).await.unwrap();
    }
    println!(
        "PostgreSQL: throwaway cluster, fsync=on, synchronous_commit=on; {CONCURRENCY} concurrent writers; {}s windows",
        WINDOW.as_secs()
    );

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(CONCURRENCY as u32)
        .connect(&pg.url("bench_baseline"))
        .await
        .unwrap();
    let base = baseline(&pool).await;
    pool.close().await;
    println!("baseline: {base:.0} transactions/s (UPDATE one row + INSERT one row, {CONCURRENCY} concurrent)");

    let EngineRun { transitions, ticks, tick_ms, late_ms, statements } =
        engine_throughput(&pg.url("bench_engine")).await;
    println!(
        "engine:   {transitions:.0} durable transitions/s in {ticks:.0} transactions/s ({CONCURRENCY} concurrent releases)"
    );
    println!(
        "          transitions ratio {:.2}, transactions ratio {:.2} (target >= 0.5)",
        transitions / base,
        ticks / base
    );
    println!(
        "          mean time to advance a release {tick_ms:.1} ms, mean wake-up lateness {late_ms:.1} ms (CPU-bound: 2 cores)"
    );
    println!("          statements by total time (pg_stat_statements, whole run):");
    for (query, calls, ms) in &statements {
        println!("          {calls:>8} calls {ms:>7.0} ms  {query}");
    }

    pg.stop();
}
