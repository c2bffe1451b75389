//! The release engine: workers claim due releases (`next_wake_at <= now`, `FOR UPDATE SKIP
//! LOCKED`) and advance them; one dispatcher per replica watches `next_wake_at` and wakes them. The claim and the transition are one transaction, so a crashed
//! scheduler's row locks vanish with its connections and another replica continues at once; the
//! calls made meanwhile carry idempotency keys, so repeating them does no harm. Wake-ups only
//! shorten the wait; every worker also polls.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, Registry};
use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument as _;

use crate::{
    creation::{self, NewReleaseIn},
    domain::{
        effects::Effects,
        machine::{self, Settings},
        plan::PlanMode,
        release::{Phase, Release, StepStatus},
        train,
    },
    error::SchedulerError,
    signals::Signals,
    store::{PlanCache, Store},
};

/// Longest a worker sleeps without looking at the table.
const MAX_IDLE: Duration = Duration::from_secs(1);

/// Engine metrics.
#[derive(Clone)]
pub struct EngineMetrics {
    ticks: IntCounter,
    transitions: IntCounter,
    lateness: Histogram,
    tick_seconds: Histogram,
    step_seconds: HistogramVec,
    abort_seconds: Histogram,
}

impl EngineMetrics {
    /// Registers the metrics in `registry`.
    pub fn new(registry: &Registry) -> EngineMetrics {
        let ticks = IntCounter::new("hopngo_scheduler_ticks_total", "Releases advanced by the engine").expect("static");
        let transitions =
            IntCounter::new("hopngo_scheduler_transitions_total", "Durable transitions committed by the engine")
                .expect("static");
        let lateness = Histogram::with_opts(
            HistogramOpts::new("hopngo_scheduler_wake_lateness_seconds", "Claim time minus scheduled wake time")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0]),
        )
        .expect("static");
        let tick_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "hopngo_scheduler_tick_seconds",
                "Time to advance one release, calls and commit included",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
        )
        .expect("static");
        for c in [&ticks, &transitions] {
            let _ = registry.register(Box::new(c.clone()));
        }
        for h in [&lateness, &tick_seconds] {
            let _ = registry.register(Box::new(h.clone()));
        }
        let step_seconds = HistogramVec::new(
            HistogramOpts::new("hopngo_scheduler_step_duration_seconds", "Time a plan step took, by kind and outcome")
                .buckets(vec![0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 86400.0]),
            &["kind", "status"],
        )
        .expect("static");
        let abort_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "hopngo_scheduler_abort_seconds",
                "From an abort being recorded to the release settled (traffic back on stable, schema dealt with)",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0]),
        )
        .expect("static");
        let _ = registry.register(Box::new(step_seconds.clone()));
        let _ = registry.register(Box::new(abort_seconds.clone()));
        EngineMetrics { ticks, transitions, lateness, tick_seconds, step_seconds, abort_seconds }
    }

    /// Observes what this advance ended: steps that finished (`finished_before` says which
    /// had already), and an abort that settled.
    fn ended(&self, release: &Release, finished_before: &[bool], was_settled: bool) {
        for (i, step) in release.steps.iter().enumerate() {
            if finished_before.get(i).copied().unwrap_or(false) {
                continue;
            }
            if let (Some(started), Some(finished), Some(plan)) =
                (step.started_at, step.finished_at, release.plan.steps.get(i))
            {
                let status = match step.status {
                    StepStatus::Succeeded => "succeeded",
                    StepStatus::Skipped => "skipped",
                    StepStatus::Failed => "failed",
                    StepStatus::Pending | StepStatus::Running => continue,
                };
                self.step_seconds
                    .with_label_values(&[plan.action.kind_name(), status])
                    .observe((finished - started).as_seconds_f64().max(0.0));
            }
        }
        if release.settled
            && !was_settled
            && matches!(release.phase, Phase::Aborted | Phase::Failed)
            && let Some(aborted) = release.finished_at
        {
            self.abort_seconds.observe((time::OffsetDateTime::now_utc() - aborted).as_seconds_f64().max(0.0));
        }
    }
}

/// The engine.
pub struct Engine<E> {
    store: Store,
    effects: Arc<E>,
    settings: Settings,
    signals: Signals,
    metrics: EngineMetrics,
    /// Wakes idle workers.
    work: Notify,
    /// Tells the dispatcher a release became due earlier than it planned to look.
    reschedule: Notify,
    /// When the dispatcher plans to look next (database clock, µs since epoch).
    planned_wake: AtomicI64,
    /// Plans of the releases being advanced.
    plans: PlanCache,
    /// Wakes releases when their analysis runs complete (optional shortcut).
    watcher: std::sync::OnceLock<crate::watcher::AnalysisWatcher>,
}

impl<E: Effects + Send + 'static> Engine<E> {
    /// An engine over `store` calling `effects`.
    pub fn new(
        store: Store,
        effects: Arc<E>,
        settings: Settings,
        signals: Signals,
        metrics: EngineMetrics,
    ) -> Arc<Self> {
        Arc::new(Engine {
            store,
            effects,
            settings,
            signals,
            metrics,
            work: Notify::new(),
            reschedule: Notify::new(),
            planned_wake: AtomicI64::new(i64::MAX),
            plans: PlanCache::default(),
            watcher: std::sync::OnceLock::new(),
        })
    }

    /// Wakes releases as soon as the analysis runs they wait for complete.
    pub fn watch_analyses(&self, watcher: crate::watcher::AnalysisWatcher) {
        let _ = self.watcher.set(watcher);
    }

    /// Starts `workers` workers and the dispatcher on `tracker`; they stop when `shutdown` is
    /// cancelled, workers after finishing the release in hand.
    pub fn spawn(self: &Arc<Self>, workers: usize, tracker: &TaskTracker, shutdown: CancellationToken) {
        for n in 0..workers {
            let engine = self.clone();
            let shutdown = shutdown.clone();
            tracker
                .spawn(async move { engine.work(shutdown).await }.instrument(tracing::info_span!("engine_worker", n)));
        }
        let engine = self.clone();
        tracker.spawn(
            async move { engine.dispatch(workers, shutdown).await }
                .instrument(tracing::info_span!("engine_dispatcher")),
        );
    }

    /// Workers claim until nothing is due, then sleep until the dispatcher wakes them (or a poll
    /// interval passes, so a lost wake-up costs at most [`MAX_IDLE`]).
    async fn work(&self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            // Listen before looking, so a wake-up between the look and the wait is not lost.
            let woken = self.work.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match self.tick().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(%err, "engine tick failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    continue;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = &mut woken => {}
                _ = tokio::time::sleep(MAX_IDLE) => {}
            }
        }
    }

    /// One query stream per replica decides when work is due: it sleeps until the earliest
    /// `next_wake_at` (at most [`MAX_IDLE`]), or until a commit or a NOTIFY brings it forward,
    /// then wakes as many workers as releases are due.
    async fn dispatch(&self, workers: usize, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            let woken = self.signals.engine_woken();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let rescheduled = self.reschedule.notified();
            tokio::pin!(rescheduled);
            rescheduled.as_mut().enable();
            let idle = match self.due().await {
                Ok((due, next_in, now_micros)) => {
                    for _ in 0..due.min(workers as i64) {
                        self.work.notify_one();
                    }
                    let idle = next_in.map(Duration::from_secs_f64).unwrap_or(MAX_IDLE).min(MAX_IDLE);
                    self.planned_wake.store(now_micros + idle.as_micros() as i64, Ordering::SeqCst);
                    idle
                }
                Err(err) => {
                    tracing::warn!(%err, "engine dispatcher query failed");
                    self.planned_wake.store(i64::MAX, Ordering::SeqCst);
                    MAX_IDLE
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = &mut woken => {}
                _ = &mut rescheduled => {}
                _ = tokio::time::sleep(idle) => {}
            }
        }
    }

    /// Releases due now, seconds until the next one, and the database clock (µs since epoch).
    async fn due(&self) -> Result<(i64, Option<f64>, i64), SchedulerError> {
        // Both sub-selects walk the `next_wake_at` index; the count stops at one wake-up per worker.
        let row: (i64, Option<f64>, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM release_state WHERE next_wake_at <= c.now LIMIT 256) due), \
                    (SELECT EXTRACT(EPOCH FROM (next_wake_at - c.now))::float8 FROM release_state \
                     WHERE next_wake_at > c.now ORDER BY next_wake_at LIMIT 1), \
                    (EXTRACT(EPOCH FROM c.now) * 1000000)::bigint \
             FROM (SELECT clock_timestamp() AS now) c",
        )
        .fetch_one(self.store.pool())
        .await?;
        Ok(row)
    }

    /// Claims and advances one due release. Returns whether there was one.
    pub async fn tick(&self) -> Result<bool, SchedulerError> {
        let started = std::time::Instant::now();
        let mut tx = self.store.pool().begin().await?;
        let Some((mut release, now, due)) = Store::claim_due(&mut tx, &self.plans).await? else {
            return Ok(false);
        };
        self.metrics.lateness.observe((now - due).as_seconds_f64().max(0.0));
        let span = tracing::info_span!(
            "advance",
            release = %release.id,
            service = %release.service,
            env = %release.environment,
            trace_id = tracing::field::Empty
        );
        hopngo_kit::telemetry::continue_trace(&span, release.trace_parent.as_deref());
        let was_settled = release.settled;
        let finished_before: Vec<bool> = release.steps.iter().map(|s| s.finished_at.is_some()).collect();
        let advance =
            machine::advance(&mut release, now, self.effects.as_ref(), &self.settings).instrument(span.clone()).await;
        Store::save(&mut tx, &mut release, &advance.transitions, advance.wake_at).instrument(span.clone()).await?;
        let mut changed = vec![release.id];
        if release.settled && !was_settled && release.group_id.is_some() {
            self.continue_group(&mut tx, &release, now, &mut changed).instrument(span).await?;
        }
        tx.commit().await?;
        if let Some(at) = advance.wake_at
            && ((at.unix_timestamp_nanos() / 1000) as i64) < self.planned_wake.load(Ordering::SeqCst)
        {
            // Due before the dispatcher means to look again.
            self.reschedule.notify_one();
        }
        if let Some(watcher) = self.watcher.get()
            && !release.settled
        {
            for run in release.analysis_runs.iter().filter(|a| !a.done) {
                watcher.watch(release.id, &run.run_id);
            }
        }
        for id in changed {
            self.signals.changed(id);
        }
        self.metrics.ended(&release, &finished_before, was_settled);
        self.metrics.ticks.inc();
        self.metrics.transitions.inc_by(advance.transitions.len() as u64);
        self.metrics.tick_seconds.observe(started.elapsed().as_secs_f64());
        Ok(true)
    }

    /// A group member settled: start the next one if it succeeded (a train's return: whatever its
    /// end), else end the rest unstarted, and a train returns the members it released.
    async fn continue_group(
        &self,
        conn: &mut sqlx::PgConnection,
        settled: &Release,
        now: time::OffsetDateTime,
        changed: &mut Vec<uuid::Uuid>,
    ) -> Result<(), SchedulerError> {
        if settled.phase == Phase::Succeeded || settled.returns_release.is_some() {
            if let Some(mut next) = Store::lock_next_member(conn, settled).await? {
                Store::save(conn, &mut next, &[], Some(now)).await?;
                changed.push(next.id);
            }
            return Ok(());
        }
        let Some(group_id) = settled.group_id else { return Ok(()) };
        let Some((group, releases)) = Store::group_in(conn, group_id).await? else { return Ok(()) };
        let what = if group.kind == train::TRAIN { "train" } else { "rollback" };
        let reason = format!(
            "not started: {} {} ended {} in the same {what}",
            settled.service,
            settled.revision,
            settled.phase.as_str()
        );
        while let Some(mut next) = Store::lock_next_member(conn, settled).await? {
            let transitions = machine::cancel_unstarted(&mut next, &reason, now);
            next.updated_at = now;
            Store::save(conn, &mut next, &transitions, None).await?;
            changed.push(next.id);
        }
        if group.kind == train::TRAIN {
            self.return_members(conn, (group_id, &releases), settled, changed).await?;
        }
        Ok(())
    }

    /// An ended train's members that were released go back to their previous versions, newest
    /// first, one after another: emergency releases (straight back, watched to health) appended
    /// to the group, the first due now. A member that had no previous version, or that a newer
    /// release has replaced since, stays as it is (the group's message says so).
    async fn return_members(
        &self,
        conn: &mut sqlx::PgConnection,
        (group_id, releases): (uuid::Uuid, &[Release]),
        ended: &Release,
        changed: &mut Vec<uuid::Uuid>,
    ) -> Result<(), SchedulerError> {
        let released: Vec<&Release> =
            releases.iter().filter(|r| r.returns_release.is_none() && r.phase == Phase::Succeeded).rev().collect();
        if released.is_empty() {
            return Ok(());
        }
        let Some(current) = self.store.config(None).await? else { return Ok(()) };
        let reason = format!("train ended: {} {} ended {}", ended.service, ended.artifact, ended.phase.as_str());
        // The services' rows in name order, so two trains ending at once cannot wait on each
        // other (the ended member's own service is not among them: user actions lock a service's
        // row before its releases, and this transaction holds the ended member's).
        let mut names: Vec<&str> = released.iter().map(|m| m.service.as_str()).collect();
        names.sort_unstable();
        let mut locked = std::collections::HashMap::new();
        for name in names {
            locked.insert(name, Store::lock_service_environment(conn, name, &ended.environment).await?);
        }
        let mut position = releases.len() as i32;
        for member in released {
            let se = &locked[member.service.as_str()];
            if let Some(why) = train::not_returnable(member, se.last_revision) {
                tracing::info!(group = %group_id, service = %member.service, "not returned: {why}");
                continue;
            }
            let Some(previous) = member.stable_artifact.as_deref() else { continue };
            let undo_of_revision = self
                .store
                .revisions(&member.service, &member.environment)
                .await?
                .iter()
                .find(|r| {
                    r.revision < member.revision
                        && r.release.phase == Phase::Succeeded
                        && r.release.artifact == previous
                })
                .map(|r| r.revision);
            let new = NewReleaseIn {
                service: &member.service,
                environment: &member.environment,
                artifact: previous,
                reason: &reason,
                request_id: None,
                undo_of_revision,
                group: Some((group_id, position)),
                returns_release: Some(member.id),
                mode: PlanMode::Emergency,
                actor: machine::ENGINE,
                start_now: position == releases.len() as i32,
            };
            match creation::insert(conn, &current, se, new, changed).await {
                Ok(_) => position += 1,
                // The service has left the config since: there is no plan to return it with.
                Err(SchedulerError::Invalid { reason, .. }) => {
                    tracing::warn!(group = %group_id, service = %member.service, "not returned: {reason}");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
