//! Measures due runs. A dispatcher leases due runs from PostgreSQL (`FOR UPDATE SKIP LOCKED`, so
//! replicas share the work), measures each run's due metrics concurrently, judges them, and
//! writes the round back in one statement that also releases the lease. A replica that dies
//! mid-round loses only that round: its lease runs out and another replica (or itself,
//! restarted) measures again from the stored state.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
    time::Duration,
};

use futures::future::join_all;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

use crate::{
    domain::run::{Measurement, Observation, assess, judge, next_due, record},
    providers::Providers,
    store::{self, Store, StoredRun},
};

/// Runs leased per query.
const CLAIM_BATCH: i64 = 256;
/// Rounds measured at once by one replica.
const MAX_CONCURRENT_ROUNDS: usize = 512;
/// Longest sleep between looks at the table (other replicas' new runs, expired leases).
const MAX_IDLE: Duration = Duration::from_secs(1);

/// The engine's metrics.
#[derive(Clone)]
pub struct EngineMetrics {
    lateness: HistogramVec,
    measurements: IntCounterVec,
    runs: IntCounterVec,
}

impl EngineMetrics {
    /// Registers in `registry`.
    pub fn new(registry: &Registry) -> EngineMetrics {
        let lateness = HistogramVec::new(
            HistogramOpts::new(
                "hopngo_analyzer_measurement_lateness_seconds",
                "Time from when a measurement was due to when it started",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["provider"],
        )
        .expect("valid histogram");
        let measurements = IntCounterVec::new(
            Opts::new("hopngo_analyzer_measurements_total", "Measurements taken, by provider and outcome"),
            &["provider", "phase"],
        )
        .expect("valid counter");
        let runs = IntCounterVec::new(
            Opts::new("hopngo_analyzer_runs_completed_total", "Analysis runs completed, by phase"),
            &["phase"],
        )
        .expect("valid counter");
        let _ = registry.register(Box::new(lateness.clone()));
        let _ = registry.register(Box::new(measurements.clone()));
        let _ = registry.register(Box::new(runs.clone()));
        EngineMetrics { lateness, measurements, runs }
    }

    /// Counts a run that has just completed (by a round or a termination).
    pub fn completed(&self, run: &StoredRun) {
        self.runs.with_label_values(&[run.phase.as_str()]).inc();
    }
}

/// The measuring loop and what API handlers need from it.
pub struct Engine {
    store: Store,
    providers: Providers,
    owner: Uuid,
    wake: Notify,
    /// One notice per watched run, so a change wakes only that run's watchers.
    watched: std::sync::Mutex<HashMap<Uuid, Weak<Notify>>>,
    metrics: EngineMetrics,
}

impl Engine {
    /// An engine over `store`.
    pub fn new(store: Store, providers: Providers, metrics: EngineMetrics) -> Arc<Engine> {
        Arc::new(Engine {
            store,
            providers,
            owner: Uuid::now_v7(),
            wake: Notify::new(),
            watched: std::sync::Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// The engine's metrics.
    pub fn metrics(&self) -> &EngineMetrics {
        &self.metrics
    }

    /// The providers (for one-off measurements).
    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    /// The notice of changes to run `id` on this replica (held for as long as it is watched).
    pub fn watch(&self, id: Uuid) -> Arc<Notify> {
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(notice) = watched.get(&id).and_then(Weak::upgrade) {
            return notice;
        }
        let notice = Arc::new(Notify::new());
        watched.insert(id, Arc::downgrade(&notice));
        notice
    }

    /// Tells the run's watchers it changed.
    pub fn changed(&self, id: Uuid) {
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        match watched.get(&id).and_then(Weak::upgrade) {
            Some(notice) => notice.notify_waiters(),
            None => {
                watched.remove(&id);
            }
        }
    }

    /// Makes the dispatcher look for due runs now (a run was started).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Dispatches until `shutdown`, then waits for the rounds in flight.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let rounds = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_ROUNDS));
        while !shutdown.is_cancelled() {
            let available = permits.available_permits().min(CLAIM_BATCH as usize) as i64;
            let claimed = if available == 0 {
                Vec::new()
            } else {
                match self.store.claim_due(self.owner, available).await {
                    Ok(c) => c,
                    Err(err) => {
                        tracing::warn!(%err, "claiming due analysis runs");
                        Vec::new()
                    }
                }
            };
            let full = claimed.len() as i64 == available && available > 0;
            for run in claimed {
                let permit = permits.clone().acquire_owned().await.expect("semaphore open");
                let engine = self.clone();
                rounds.spawn(async move {
                    engine.round(run).await;
                    drop(permit);
                });
            }
            if full {
                continue;
            }
            let sleep = match self.store.next_due().await {
                Ok(Some(at)) => {
                    let wait = at - OffsetDateTime::now_utc();
                    Duration::try_from(wait).unwrap_or(Duration::ZERO).min(MAX_IDLE)
                }
                _ => MAX_IDLE,
            };
            if sleep.is_zero() && permits.available_permits() == 0 {
                // Everything is busy: wait for a round to finish instead of spinning.
                let _ = permits.acquire().await;
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep.max(Duration::from_millis(2))) => {}
            }
        }
        rounds.close();
        rounds.wait().await;
    }

    /// Measures the run's due metrics, judges, stores.
    async fn round(&self, mut run: StoredRun) {
        let now = OffsetDateTime::now_utc();
        let due: Vec<(usize, OffsetDateTime)> = run
            .specs
            .iter()
            .zip(&run.states)
            .enumerate()
            .filter_map(|(i, (spec, st))| {
                next_due(spec, st, run.started_at, false).filter(|at| *at <= now).map(|at| (i, at))
            })
            .collect();
        let taken = join_all(due.iter().map(|(i, due_at)| {
            let spec = &run.specs[*i];
            async move {
                let started_at = OffsetDateTime::now_utc();
                let lateness = (started_at - *due_at).as_seconds_f64().max(0.0);
                self.metrics.lateness.with_label_values(&[spec.provider.kind()]).observe(lateness);
                let age = Duration::try_from(started_at - run.started_at).unwrap_or_default();
                let since = std::time::Instant::now().checked_sub(age);
                let observation = self.providers.measure(&spec.provider, since).await;
                let (phase, message, no_data) = judge(spec, &observation);
                let value = match &observation {
                    Observation::Value { value, .. } => value.render(),
                    Observation::Error(_) => String::new(),
                };
                self.metrics.measurements.with_label_values(&[spec.provider.kind(), phase.as_str()]).inc();
                let finished_at = OffsetDateTime::now_utc();
                (*i, Measurement { phase, value, message, started_at, finished_at, no_data })
            }
        }))
        .await;
        for (i, m) in taken {
            record(&run.specs[i], &mut run.states[i], m);
        }
        settle(&mut run, false, store::now());
        match self.store.save_round(self.owner, &run).await {
            Ok(true) => {
                if run.completed_at.is_some() {
                    self.metrics.completed(&run);
                }
                self.changed(run.id)
            }
            Ok(false) => tracing::debug!(run = %run.id, "round discarded: the run was terminated or its lease lost"),
            Err(err) => tracing::warn!(%err, run = %run.id, "storing a round; it will be measured again"),
        }
    }
}

/// Assesses the run and sets its phase, completion and next due time.
pub fn settle(run: &mut StoredRun, terminate: bool, now: OffsetDateTime) {
    let a = assess(&run.specs, &mut run.states, terminate);
    run.phase = a.phase;
    run.message = a.message;
    run.severity = a.severity;
    if a.phase.completed() {
        run.completed_at = Some(now);
        run.next_due_at = None;
    } else {
        run.next_due_at = run
            .specs
            .iter()
            .zip(&run.states)
            .filter_map(|(spec, st)| next_due(spec, st, run.started_at, a.terminating))
            .min()
            // Nothing left to measure but not complete: look again shortly.
            .or(Some(now + Duration::from_secs(1)));
    }
}
