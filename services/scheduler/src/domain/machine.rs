//! The release state machine: [`advance`] moves a release as far as it can without waiting
//! (calling other services through [`Effects`]), and the user actions (promote, abort, retry,
//! approve, reject, supersede) change it synchronously. Both return the transitions they made; the
//! store commits the new state, one event and one audit row per transition in one transaction.

use std::{collections::BTreeMap, time::Duration};

use hopngo_kit::identity::same_name;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    config::{Severity, TimeoutOutcome},
    decision::{Decision, decide},
    effects::{
        DesiredState, EffectError, Effects, MigrationAction, MigrationPhase, MigrationRequest, PreflightRequest,
        RunObservation, RunPhase, Track, TrackState,
    },
    plan::{AnalysisSpec, CanaryScale, PlanStrategy, StepAction, TrafficModel},
    release::{
        AbortState, AnalysisRecord, ApprovalRecord, Completion, Phase, Release, SchemaChange, StepCursor, StepStatus,
    },
};

/// Kinds of transition; each becomes one event and one audit row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransitionKind {
    /// Release stored.
    Created,
    /// Engine started the plan.
    Started,
    /// A step finished.
    StepCompleted,
    /// A step was skipped by a promote.
    StepSkipped,
    /// New traffic split applied.
    WeightChanged,
    /// Paused until someone promotes (a pause step without duration, a failed analysis).
    Paused,
    /// Paused on a timer (a timed pause step): nothing for anyone to do.
    Waiting,
    /// A person promoted.
    Promoted,
    /// Waiting for approvals.
    AwaitingApproval,
    /// One approval recorded (not yet enough).
    ApprovalRecorded,
    /// Approvals complete.
    Approved,
    /// Rejected.
    Rejected,
    /// Analysis run started.
    AnalysisStarted,
    /// Analysis run completed.
    AnalysisCompleted,
    /// Aborted.
    Aborted,
    /// Traffic back on stable after an abort.
    RolledBack,
    /// New artifact stable.
    Succeeded,
    /// The return to stable failed.
    Failed,
    /// Replaced by a newer release.
    Superseded,
    /// Restarted after an abort.
    Retried,
    /// The abort undid the release's migrations.
    SchemaUndone,
    /// The abort could not undo the release's migrations.
    SchemaUndoFailed,
    /// The abort left the release's migrations in place (`onAbort: freeze`).
    SchemaFrozen,
}

impl TransitionKind {
    /// Short name used in events and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionKind::Created => "created",
            TransitionKind::Started => "started",
            TransitionKind::StepCompleted => "step-completed",
            TransitionKind::StepSkipped => "step-skipped",
            TransitionKind::WeightChanged => "weight-changed",
            TransitionKind::Paused => "paused",
            TransitionKind::Waiting => "waiting",
            TransitionKind::Promoted => "promoted",
            TransitionKind::AwaitingApproval => "awaiting-approval",
            TransitionKind::ApprovalRecorded => "approval-recorded",
            TransitionKind::Approved => "approved",
            TransitionKind::Rejected => "rejected",
            TransitionKind::AnalysisStarted => "analysis-started",
            TransitionKind::AnalysisCompleted => "analysis-completed",
            TransitionKind::Aborted => "aborted",
            TransitionKind::RolledBack => "rolled-back",
            TransitionKind::Succeeded => "succeeded",
            TransitionKind::Failed => "failed",
            TransitionKind::Superseded => "superseded",
            TransitionKind::Retried => "retried",
            TransitionKind::SchemaUndone => "schema-undone",
            TransitionKind::SchemaUndoFailed => "schema-undo-failed",
            TransitionKind::SchemaFrozen => "schema-frozen",
        }
    }
}

/// One change of a release.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// What happened.
    pub kind: TransitionKind,
    /// Who caused it (`scheduler` for the engine).
    pub actor: String,
    /// Phase before.
    pub from: Phase,
    /// Phase after.
    pub to: Phase,
    /// Step index after.
    pub step_index: usize,
    /// Traffic share after.
    pub canary_weight: u32,
    /// Human-readable detail.
    pub message: String,
}

/// Name of the engine as an actor.
pub const ENGINE: &str = "scheduler";

/// Engine timing.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How often to look at something that is converging or measuring.
    pub poll_interval: Duration,
    /// First retry delay after a failed call.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// How long a high-severity analysis failure may last before the release aborts.
    pub high_severity_grace: Duration,
    /// How long preflight keeps asking a dependency that does not answer before it fails.
    pub preflight_patience: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            poll_interval: Duration::from_secs(1),
            retry_base: Duration::from_millis(200),
            retry_max: Duration::from_secs(15),
            high_severity_grace: Duration::from_secs(300),
            preflight_patience: Duration::from_secs(30),
        }
    }
}

/// Result of [`advance`].
#[derive(Debug, Default)]
pub struct Advance {
    /// Transitions made, in order.
    pub transitions: Vec<Transition>,
    /// When the engine should look again (`None`: only on a user action).
    pub wake_at: Option<OffsetDateTime>,
}

/// Why a user action was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// The phase does not allow it.
    #[error("{0}")]
    NotNow(String),
    /// The caller may not.
    #[error("{0}")]
    Forbidden(String),
    /// A field is wrong.
    #[error("{field}: {reason}")]
    Invalid {
        /// Field.
        field: &'static str,
        /// Reason.
        reason: String,
    },
}

enum Flow {
    Continue,
    Wait(Option<OffsetDateTime>),
}

fn record(
    r: &mut Release,
    kind: TransitionKind,
    actor: &str,
    from: Phase,
    message: impl Into<String>,
    out: &mut Vec<Transition>,
) {
    out.push(Transition {
        kind,
        actor: actor.to_string(),
        from,
        to: r.phase,
        step_index: r.step_index,
        canary_weight: r.canary_weight,
        message: message.into(),
    });
}

fn after(now: OffsetDateTime, d: Duration) -> OffsetDateTime {
    now + time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn earliest(a: Option<OffsetDateTime>, b: Option<OffsetDateTime>) -> Option<OffsetDateTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Idempotency key of an action: `release/label/attempt`.
pub fn idempotency_key(r: &Release, label: &str) -> String {
    format!("{}/{}/{}", r.id, label, r.attempt)
}

fn canary_replicas(r: &Release, weight: u32) -> u32 {
    let stable = r.plan.replicas;
    match r.canary_scale {
        CanaryScale::Replicas(n) => n,
        CanaryScale::Weight(w) => (stable * w).div_ceil(100),
        CanaryScale::MatchTrafficWeight if weight == 0 => 0,
        CanaryScale::MatchTrafficWeight => (stable * weight).div_ceil(100).max(1),
    }
}

fn track(track: Track, artifact: &str, replicas: u32) -> TrackState {
    TrackState { track, artifact: artifact.to_string(), replicas }
}

fn desired(r: &Release, tracks: Vec<TrackState>, canary_weight: u32) -> DesiredState {
    DesiredState { service: r.service.clone(), environment: r.environment.clone(), tracks, canary_weight }
}

/// Desired state with the canary at `weight`.
fn canary_state(r: &Release, weight: u32) -> DesiredState {
    let stable = r.stable_artifact.as_deref().unwrap_or(&r.artifact);
    let mut tracks = vec![track(Track::Stable, stable, r.plan.replicas)];
    let canary = canary_replicas(r, weight);
    if canary > 0 || weight > 0 {
        tracks.push(track(Track::Canary, &r.artifact, canary.max(1)));
    }
    desired(r, tracks, weight)
}

/// Desired state with only the new artifact (promotion complete).
fn final_state(r: &Release) -> DesiredState {
    let t = match r.plan.traffic {
        TrafficModel::Canary => Track::Stable,
        TrafficModel::BlueGreen => Track::Active,
    };
    desired(r, vec![track(t, &r.artifact, r.plan.replicas)], 0)
}

/// Desired state with only the previous stable artifact (abort).
fn rollback_state(r: &Release) -> Option<DesiredState> {
    let stable = r.stable_artifact.as_deref()?;
    let t = match r.plan.traffic {
        TrafficModel::Canary => Track::Stable,
        TrafficModel::BlueGreen => Track::Active,
    };
    Some(desired(r, vec![track(t, stable, r.plan.replicas)], 0))
}

fn blue_green_state(r: &Release, switched: bool, preview_replicas: u32) -> DesiredState {
    let stable = r.stable_artifact.as_deref().unwrap_or(&r.artifact);
    let tracks = if switched {
        vec![track(Track::Active, &r.artifact, r.plan.replicas), track(Track::Preview, stable, r.plan.replicas)]
    } else {
        vec![track(Track::Active, stable, r.plan.replicas), track(Track::Preview, &r.artifact, preview_replicas)]
    };
    desired(r, tracks, 0)
}

fn builtin_args(r: &Release, spec: &AnalysisSpec, track_name: &str) -> BTreeMap<String, String> {
    let mut args = spec.args.clone();
    args.insert("service".into(), r.service.clone());
    args.insert("environment".into(), r.environment.clone());
    args.insert("artifact".into(), r.artifact.clone());
    args.insert("revision".into(), r.revision.to_string());
    args.insert("release".into(), r.id.to_string());
    args.insert("track".into(), track_name.to_string());
    args.insert("address".into(), r.address.clone());
    args
}

fn labels(r: &Release, kind: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("release".to_string(), r.id.to_string()),
        ("service".to_string(), r.service.clone()),
        ("environment".to_string(), r.environment.clone()),
        ("kind".to_string(), kind.to_string()),
        ("step".to_string(), r.step_index.to_string()),
        ("attempt".to_string(), r.attempt.to_string()),
    ])
}

/// Moves the release as far as it can go now. Bounded, so a worker never holds one release long.
pub async fn advance<E: Effects>(r: &mut Release, now: OffsetDateTime, fx: &E, settings: &Settings) -> Advance {
    let mut out = Vec::new();
    for _ in 0..64 {
        match step_once(r, now, fx, settings, &mut out).await {
            Flow::Continue => continue,
            Flow::Wait(wake_at) => {
                if !out.is_empty() || wake_at.is_some() || r.settled {
                    r.updated_at = now;
                }
                return Advance { transitions: out, wake_at };
            }
        }
    }
    r.updated_at = now;
    Advance { transitions: out, wake_at: Some(now) }
}

async fn step_once<E: Effects>(
    r: &mut Release,
    now: OffsetDateTime,
    fx: &E,
    s: &Settings,
    out: &mut Vec<Transition>,
) -> Flow {
    if r.settled {
        return Flow::Wait(None);
    }
    match r.phase {
        Phase::Pending => {
            let from = r.phase;
            r.phase = Phase::Progressing;
            r.progress_deadline_at = Some(after(now, r.plan.progress_deadline.0));
            r.message = "started".into();
            if let Some(rec) = r.steps.get_mut(0) {
                rec.status = StepStatus::Running;
                rec.started_at = Some(now);
            }
            record(r, TransitionKind::Started, ENGINE, from, format!("revision {} of {}", r.revision, r.artifact), out);
            Flow::Continue
        }
        Phase::Succeeded | Phase::Superseded | Phase::Failed => cleanup(r, now, fx, s).await,
        Phase::Aborted => roll_back(r, now, fx, s, out).await,
        Phase::Progressing | Phase::Paused | Phase::AwaitingApproval => run(r, now, fx, s, out).await,
    }
}

/// Terminates analysis runs still measuring, then settles.
async fn cleanup<E: Effects>(r: &mut Release, now: OffsetDateTime, fx: &E, s: &Settings) -> Flow {
    let open: Vec<String> = r.analysis_runs.iter().filter(|a| !a.done).map(|a| a.run_id.clone()).collect();
    for run_id in open {
        match fx.terminate_analysis(&run_id, &format!("release {}", r.phase.as_str().to_lowercase())).await {
            Ok(obs) => {
                update_run(r, &run_id, obs.phase, &obs.message);
                mark_run_done(r, &run_id);
            }
            Err(err) if err.retryable && r.failures < 10 => return retry_later(r, now, s, &err),
            Err(err) => {
                // The analyzer ends runs on its own (count, TTL); settling must not hang on it.
                r.message = format!("{}; analysis run {run_id} left running: {err}", r.message);
                mark_run_done(r, &run_id);
            }
        }
    }
    r.failures = 0;
    r.settled = true;
    Flow::Wait(None)
}

fn mark_run_done(r: &mut Release, run_id: &str) {
    for a in r.analysis_runs.iter_mut().filter(|a| a.run_id == run_id) {
        a.done = true;
    }
}

fn retry_later(r: &mut Release, now: OffsetDateTime, s: &Settings, err: &EffectError) -> Flow {
    r.failures += 1;
    r.last_error = Some(err.to_string());
    let delay = hopngo_kit::backoff::delay(r.failures, s.retry_base, s.retry_max);
    r.message = format!("waiting for {} (attempt {}): {}", err.dependency, r.failures, err.message);
    Flow::Wait(Some(after(now, delay)))
}

async fn roll_back<E: Effects>(
    r: &mut Release,
    now: OffsetDateTime,
    fx: &E,
    s: &Settings,
    out: &mut Vec<Transition>,
) -> Flow {
    if r.abort.as_ref().is_some_and(|a| a.traffic_back) {
        return schema_after_abort(r, now, fx, s, out).await;
    }
    if let Some(deadline) = r.progress_deadline_at
        && now >= deadline
    {
        let from = r.phase;
        r.phase = Phase::Failed;
        r.finished_at = Some(now);
        let detail = r.last_error.clone().unwrap_or_else(|| "not converged".into());
        r.message = format!("could not return traffic to stable before the progress deadline: {detail}");
        let message = r.message.clone();
        record(r, TransitionKind::Failed, ENGINE, from, message, out);
        return Flow::Continue;
    }
    let Some(rollback) = rollback_state(r).filter(|_| r.traffic_touched) else {
        r.message = abort_summary(r);
        if let Some(a) = r.abort.as_mut() {
            a.traffic_back = true;
        }
        return schema_after_abort(r, now, fx, s, out).await;
    };
    if !r.abort.as_ref().is_some_and(|a| a.rollback_applied) {
        let key = idempotency_key(r, "abort");
        if let Err(err) = fx.apply_target(&key, &rollback).await {
            return if err.retryable { retry_later(r, now, s, &err) } else { fail(r, now, &err, out) };
        }
        r.failures = 0;
        if let Some(a) = r.abort.as_mut() {
            a.rollback_applied = true;
        }
    }
    match fx.target_status(&r.service, &r.environment).await {
        Err(err) if err.retryable => retry_later(r, now, s, &err),
        Err(err) => fail(r, now, &err, out),
        Ok(obs) if obs.converged && obs.canary_weight == 0 => {
            r.failures = 0;
            r.canary_weight = 0;
            r.switched = false;
            let from = r.phase;
            r.message = abort_summary(r);
            let message = r.message.clone();
            record(r, TransitionKind::RolledBack, ENGINE, from, message, out);
            if let Some(a) = r.abort.as_mut() {
                a.traffic_back = true;
            }
            schema_after_abort(r, now, fx, s, out).await
        }
        Ok(obs) => {
            r.message = format!("returning traffic to stable: {}", obs.message);
            Flow::Wait(Some(after(now, s.poll_interval)))
        }
    }
}

/// What an abort did with the traffic (the message of a settled abort starts with it).
fn abort_summary(r: &Release) -> String {
    let reason = r.abort.as_ref().map(|a| a.reason.as_str()).unwrap_or("");
    if !r.traffic_touched {
        format!("aborted: {reason}")
    } else if rollback_state(r).is_none() {
        format!("aborted: {reason}; no earlier version to return to")
    } else {
        format!("traffic back on {}; aborted: {reason}", r.stable_artifact.as_deref().unwrap_or("stable"))
    }
}

/// Once traffic is back on the previous version (so no code that needs the new schema runs),
/// the schema the release's migrate step changed is undone or frozen, as its service says.
async fn schema_after_abort<E: Effects>(
    r: &mut Release,
    now: OffsetDateTime,
    fx: &E,
    s: &Settings,
    out: &mut Vec<Transition>,
) -> Flow {
    let Some(change) = r.schema.clone().filter(|c| !c.settled && c.before != c.after) else {
        return cleanup(r, now, fx, s).await;
    };
    let from = r.phase;
    let settle = |r: &mut Release, kind: TransitionKind, text: String, out: &mut Vec<Transition>| {
        if let Some(c) = r.schema.as_mut() {
            c.settled = true;
        }
        r.message = format!("{}; {text}", abort_summary(r));
        record(r, kind, ENGINE, from, text, out);
    };
    let before = if change.before.is_empty() { "no version".to_string() } else { format!("version {}", change.before) };
    if change.on_abort == super::config::OnAbort::Freeze {
        let text = format!(
            "schema of {} stays at version {} (onAbort: freeze; it was at {before})",
            change.database, change.after
        );
        settle(r, TransitionKind::SchemaFrozen, text, out);
        return cleanup(r, now, fx, s).await;
    }
    if r.progress_deadline_at.is_some_and(|d| now >= d) {
        let detail = r.last_error.clone().unwrap_or_else(|| "the undo did not finish".into());
        let text = format!(
            "schema of {} could not be undone to {before} before the progress deadline ({detail}); it may be at version {}",
            change.database, change.after
        );
        settle(r, TransitionKind::SchemaUndoFailed, text, out);
        return cleanup(r, now, fx, s).await;
    }
    let run_id = match &change.undo_run {
        Some(id) => id.clone(),
        None => {
            let request = MigrationRequest {
                database: change.database.clone(),
                locations: change.locations.clone(),
                action: MigrationAction::Undo {
                    to_version: (!change.before.is_empty()).then(|| change.before.clone()),
                },
            };
            match fx.start_migration(&idempotency_key(r, "abort-undo"), &request).await {
                Ok(id) => {
                    r.failures = 0;
                    if let Some(c) = r.schema.as_mut() {
                        c.undo_run = Some(id.clone());
                    }
                    id
                }
                Err(err) if err.retryable => return retry_later(r, now, s, &err),
                Err(err) => {
                    // Refused before anything ran (no undo script for a migration, a failed
                    // migration in the history): the schema stays, as with `freeze`.
                    let text = format!(
                        "schema of {} stays at version {}: the undo was refused ({err})",
                        change.database, change.after
                    );
                    settle(r, TransitionKind::SchemaFrozen, text, out);
                    return cleanup(r, now, fx, s).await;
                }
            }
        }
    };
    match fx.migration_status(&run_id).await {
        Err(err) if err.retryable => retry_later(r, now, s, &err),
        Err(err) => {
            let text = format!("schema undo {run_id}: {err}; the schema may be at version {}", change.after);
            settle(r, TransitionKind::SchemaUndoFailed, text, out);
            cleanup(r, now, fx, s).await
        }
        Ok(obs) => match obs.phase {
            MigrationPhase::Succeeded => {
                let text = format!("schema of {} undone to {before} (was {})", change.database, change.after);
                settle(r, TransitionKind::SchemaUndone, text, out);
                cleanup(r, now, fx, s).await
            }
            MigrationPhase::Failed => {
                let text = format!(
                    "schema undo of {} failed: {}; it is at version {}",
                    change.database,
                    obs.message,
                    if obs.version_after.is_empty() { change.after.clone() } else { obs.version_after.clone() }
                );
                settle(r, TransitionKind::SchemaUndoFailed, text, out);
                cleanup(r, now, fx, s).await
            }
            MigrationPhase::Pending | MigrationPhase::Running => {
                r.failures = 0;
                r.message = format!(
                    "{}; undoing the schema of {} to {before} (run {run_id}): {}",
                    abort_summary(r),
                    change.database,
                    obs.message
                );
                Flow::Wait(Some(after(now, s.poll_interval)))
            }
        },
    }
}

fn fail(r: &mut Release, now: OffsetDateTime, err: &EffectError, out: &mut Vec<Transition>) -> Flow {
    let from = r.phase;
    r.phase = Phase::Failed;
    r.finished_at = Some(now);
    r.message = format!("could not return traffic to stable: {err}");
    let message = r.message.clone();
    record(r, TransitionKind::Failed, ENGINE, from, message, out);
    Flow::Continue
}

/// Aborts: records why, and leaves the return to stable to the engine.
fn abort_now(
    r: &mut Release,
    now: OffsetDateTime,
    actor: &str,
    reason: &str,
    failed_step: bool,
    out: &mut Vec<Transition>,
) {
    let from = r.phase;
    if failed_step && let Some(rec) = r.steps.get_mut(r.step_index) {
        rec.status = StepStatus::Failed;
        rec.finished_at = Some(now);
        rec.message = reason.to_string();
    }
    r.phase = Phase::Aborted;
    r.completion = Some(if r.switched { Completion::RolledBack } else { Completion::Aborted });
    r.finished_at = Some(now);
    r.abort = Some(AbortState {
        reason: reason.to_string(),
        actor: actor.to_string(),
        at: now,
        rollback_applied: false,
        traffic_back: false,
    });
    r.progress_deadline_at = Some(after(now, r.plan.progress_deadline.0));
    r.failures = 0;
    r.message = format!("aborted: {reason}");
    record(r, TransitionKind::Aborted, actor, from, reason, out);
}

fn complete_step(
    r: &mut Release,
    now: OffsetDateTime,
    status: StepStatus,
    actor: &str,
    message: &str,
    out: &mut Vec<Transition>,
) {
    let from = r.phase;
    let index = r.step_index;
    let name = r.plan.steps.get(index).map(|s| s.name.clone()).unwrap_or_default();
    if let Some(rec) = r.steps.get_mut(index) {
        rec.status = status;
        rec.finished_at = Some(now);
        if !message.is_empty() {
            rec.message = message.to_string();
        }
    }
    r.step_index += 1;
    r.cursor = StepCursor::default();
    r.failures = 0;
    r.last_error = None;
    r.phase = Phase::Progressing;
    r.progress_deadline_at = Some(after(now, r.plan.progress_deadline.0));
    if let Some(rec) = r.steps.get_mut(r.step_index) {
        rec.status = StepStatus::Running;
        rec.started_at = Some(now);
    }
    let kind = if status == StepStatus::Skipped { TransitionKind::StepSkipped } else { TransitionKind::StepCompleted };
    let text = if message.is_empty() {
        format!("step {index} ({name}) done")
    } else {
        format!("step {index} ({name}): {message}")
    };
    r.message = text.clone();
    record(r, kind, actor, from, text, out);
}

/// Pauses until `resumes_at` ([`TransitionKind::Waiting`]: nothing for anyone to do), or until a
/// person promotes ([`TransitionKind::Paused`]).
fn pause(r: &mut Release, resumes_at: Option<OffsetDateTime>, message: &str, out: &mut Vec<Transition>) {
    if r.phase != Phase::Paused {
        let from = r.phase;
        let kind = if resumes_at.is_some() { TransitionKind::Waiting } else { TransitionKind::Paused };
        r.phase = Phase::Paused;
        r.resumes_at = resumes_at;
        r.progress_deadline_at = None;
        r.message = message.to_string();
        record(r, kind, ENGINE, from, message, out);
    }
}

async fn run<E: Effects>(
    r: &mut Release,
    now: OffsetDateTime,
    fx: &E,
    s: &Settings,
    out: &mut Vec<Transition>,
) -> Flow {
    let mut background_wake = None;
    if let Some(bg) = r.plan.background.clone()
        && !r.background_done
        && !r.promote_full
        && r.step_index >= bg.starting_step
        && r.step_index < r.plan.steps.len()
    {
        if r.background_run.is_none()
            && let Some(until) = r.background_grace.hold(now)
        {
            return held(r, "background", until);
        }
        let run_id = match &r.background_run {
            Some(id) => id.clone(),
            None => {
                let key =
                    idempotency_key(r, if r.background_grace.rechecked { "background-recheck" } else { "background" });
                let args = builtin_args(r, &bg.analysis, "canary");
                match fx.start_analysis(&key, &bg.analysis, &args, &labels(r, "background")).await {
                    Ok(id) => {
                        r.failures = 0;
                        r.background_run = Some(id.clone());
                        r.analysis_runs.push(AnalysisRecord {
                            run_id: id.clone(),
                            kind: "background".into(),
                            step_index: r.step_index,
                            phase: RunPhase::Pending.as_str().into(),
                            message: String::new(),
                            done: false,
                            severity: None,
                        });
                        let from = r.phase;
                        record(
                            r,
                            TransitionKind::AnalysisStarted,
                            ENGINE,
                            from,
                            format!("background analysis {id}"),
                            out,
                        );
                        id
                    }
                    Err(err) if err.retryable => return retry_later(r, now, s, &err),
                    Err(err) => {
                        abort_now(r, now, ENGINE, &format!("background analysis could not start: {err}"), false, out);
                        return Flow::Continue;
                    }
                }
            }
        };
        match fx.analysis_status(&run_id).await {
            Err(err) if err.retryable => return retry_later(r, now, s, &err),
            Err(err) => {
                abort_now(r, now, ENGINE, &format!("background analysis {run_id}: {err}"), false, out);
                return Flow::Continue;
            }
            Ok(obs) => {
                update_run(r, &run_id, obs.phase, &obs.message);
                if matches!(obs.phase, RunPhase::Pending | RunPhase::Running) {
                    background_wake = Some(after(now, s.poll_interval));
                    if r.background_grace.rechecked {
                        // The plan waits for the re-check: traffic stays where the failure found it.
                        let settle =
                            *r.background_grace.settle_until.get_or_insert(after(now, settle_time(&bg.analysis)));
                        if now < settle {
                            r.message = format!(
                                "measuring again after a high-severity failure; traffic held until {} (aborts if it still fails)",
                                rfc3339(settle)
                            );
                            return Flow::Wait(earliest(Some(settle), background_wake));
                        }
                        // It did not last: the same run goes on watching, and a new failure gets a new grace.
                        r.background_grace = Default::default();
                        r.message = "background analysis passed again after the grace period; continuing".into();
                    }
                } else {
                    record_analysis_done(r, &run_id, &obs, out);
                    let what = format!("background analysis {}", verdict_text(&obs));
                    match decide(obs.phase, obs.severity, r.background_grace.rechecked) {
                        Decision::Continue => r.background_done = true,
                        Decision::Abort => {
                            r.background_done = true;
                            abort_now(r, now, ENGINE, &what, false, out);
                            return Flow::Continue;
                        }
                        Decision::Pause => {
                            r.background_done = true;
                            r.held_for_person = true;
                            let text = format!("{what}; promote to continue or abort");
                            // Also when a timed pause step had paused it: now it waits for a person.
                            let from = r.phase;
                            r.phase = Phase::Paused;
                            r.progress_deadline_at = None;
                            r.message = text.clone();
                            record(r, TransitionKind::Paused, ENGINE, from, text, out);
                            return Flow::Wait(None);
                        }
                        Decision::Notify => {
                            r.background_done = true;
                            notify_only(r, &what, out);
                        }
                        Decision::Grace => {
                            r.background_run = None;
                            let until = start_grace(r, now, s, &what, out);
                            r.background_grace.until = Some(until);
                            return Flow::Wait(Some(until));
                        }
                    }
                }
            }
        }
    }

    if r.phase == Phase::Progressing
        && let Some(deadline) = r.progress_deadline_at
        && now >= deadline
    {
        let step = r.plan.steps.get(r.step_index).map(|s| s.name.clone()).unwrap_or_else(|| "completion".into());
        let detail = r.last_error.clone().map(|e| format!(": {e}")).unwrap_or_default();
        let reason = format!(
            "progress deadline exceeded ({}) at step {} ({step}){detail}",
            hopngo_kit::args::format_duration(r.plan.progress_deadline.0),
            r.step_index
        );
        abort_now(r, now, ENGINE, &reason, true, out);
        return Flow::Continue;
    }

    // promote --full skips every remaining step but the preflight checks.
    let skip_to = r.plan.steps[r.step_index.min(r.plan.steps.len())..]
        .iter()
        .position(|s| matches!(s.action, StepAction::Preflight { .. }))
        .map_or(r.plan.steps.len(), |p| r.step_index + p);
    if r.promote_full && r.step_index < skip_to {
        let index = r.step_index;
        for i in index..skip_to {
            if let Some(rec) = r.steps.get_mut(i) {
                rec.status = StepStatus::Skipped;
                rec.finished_at = Some(now);
            }
        }
        r.step_index = skip_to;
        r.cursor = StepCursor::default();
        r.progress_deadline_at = Some(after(now, r.plan.progress_deadline.0));
        if let Some(rec) = r.steps.get_mut(skip_to) {
            rec.status = StepStatus::Running;
            rec.started_at = Some(now);
        }
        let from = r.phase;
        r.phase = Phase::Progressing;
        let range = if skip_to == r.plan.steps.len() { format!("{index}..") } else { format!("{index}..{skip_to}") };
        record(r, TransitionKind::StepSkipped, ENGINE, from, format!("steps {range} skipped by promote --full"), out);
        return Flow::Continue;
    }

    if r.held_for_person {
        // A background analysis asked for a person: no step moves (not even an elapsed pause).
        return Flow::Wait(None);
    }

    if r.step_index >= r.plan.steps.len() {
        return finalize(r, now, fx, s, out).await;
    }

    let action = r.plan.steps[r.step_index].action.clone();
    let flow = match action {
        StepAction::SetWeight { weight } => {
            let state = canary_state(r, weight);
            converge(r, now, fx, s, out, state, |r| r.canary_weight = weight).await
        }
        StepAction::SetCanaryScale { scale } => {
            r.canary_scale = scale;
            let state = canary_state(r, r.canary_weight);
            converge(r, now, fx, s, out, state, |_| {}).await
        }
        StepAction::DeployPreview { replicas } => {
            let state = blue_green_state(r, false, replicas);
            converge(r, now, fx, s, out, state, |_| {}).await
        }
        StepAction::SwitchActive => {
            let state = blue_green_state(r, true, r.plan.replicas);
            converge(r, now, fx, s, out, state, |r| {
                r.switched = true;
                r.canary_weight = 100;
            })
            .await
        }
        StepAction::DeployStable => {
            let state = final_state(r);
            converge(r, now, fx, s, out, state, |r| {
                r.canary_weight = 100;
                r.switched = r.plan.traffic == TrafficModel::BlueGreen;
            })
            .await
        }
        StepAction::ScaleDownOld { delay } => {
            let until = *r.cursor.until.get_or_insert(after(now, delay.0));
            if now < until {
                r.message = format!("old version scales down at {}", rfc3339(until));
                return Flow::Wait(earliest(Some(until), background_wake));
            }
            let state = final_state(r);
            converge(r, now, fx, s, out, state, |_| {}).await
        }
        StepAction::Pause { duration } => match duration {
            None => {
                pause(r, None, &format!("paused at step {} until promoted", r.step_index), out);
                Flow::Wait(None)
            }
            Some(d) => {
                let until = *r.cursor.until.get_or_insert(after(now, d.0));
                if now >= until {
                    complete_step(r, now, StepStatus::Succeeded, ENGINE, "pause elapsed", out);
                    Flow::Continue
                } else {
                    pause(r, Some(until), &format!("paused until {}", rfc3339(until)), out);
                    Flow::Wait(Some(until))
                }
            }
        },
        StepAction::Analysis { .. }
        | StepAction::Verify { .. }
        | StepAction::PrePromotionAnalysis { .. }
        | StepAction::PostPromotionAnalysis { .. } => {
            let (spec, kind) = action.analysis_run().expect("an analysis step");
            analysis_step(r, now, fx, s, out, spec, kind).await
        }
        StepAction::MaintenanceWindow { windows } => window_step(r, now, &windows, out),
        StepAction::Preflight { dependencies } => preflight_step(r, now, fx, s, out, &dependencies).await,
        StepAction::Approval { policy } => {
            if !r.cursor.applied {
                r.cursor.applied = true;
                r.cursor.until = policy.timeout.map(|t| after(now, t.0));
                let from = r.phase;
                r.phase = Phase::AwaitingApproval;
                r.progress_deadline_at = None;
                r.message = format!("waiting for {} approval(s)", policy.min_approvals);
                let message = r.message.clone();
                record(r, TransitionKind::AwaitingApproval, ENGINE, from, message, out);
            }
            let count = r.approvals_for_current_step().count() as u32;
            if count >= policy.min_approvals {
                complete_step(r, now, StepStatus::Succeeded, ENGINE, "approved", out);
                return Flow::Continue;
            }
            match r.cursor.until {
                Some(until) if now >= until => match policy.on_timeout {
                    TimeoutOutcome::Reject => {
                        abort_now(r, now, ENGINE, "approval timed out", true, out);
                        Flow::Continue
                    }
                    TimeoutOutcome::Approve => {
                        complete_step(
                            r,
                            now,
                            StepStatus::Succeeded,
                            ENGINE,
                            "approval timed out; policy approves",
                            out,
                        );
                        Flow::Continue
                    }
                },
                until => Flow::Wait(until),
            }
        }
        StepAction::Migrate { database, locations, target_version, on_abort } => {
            let run_id = match r.cursor.run_id.clone() {
                Some(id) => id,
                None => {
                    let key = idempotency_key(r, &r.step_index.to_string());
                    let request = MigrationRequest {
                        database: database.clone(),
                        locations: locations.clone(),
                        action: MigrationAction::Migrate { target_version },
                    };
                    match fx.start_migration(&key, &request).await {
                        Ok(id) => {
                            r.failures = 0;
                            r.cursor.run_id = Some(id.clone());
                            if let Some(rec) = r.steps.get_mut(r.step_index) {
                                rec.run_id = Some(id.clone());
                            }
                            id
                        }
                        Err(err) if err.retryable => return retry_later(r, now, s, &err),
                        Err(err) => {
                            abort_now(r, now, ENGINE, &format!("migration could not start: {err}"), true, out);
                            return Flow::Continue;
                        }
                    }
                }
            };
            match fx.migration_status(&run_id).await {
                Err(err) if err.retryable => retry_later(r, now, s, &err),
                Err(err) => {
                    abort_now(r, now, ENGINE, &format!("migration {run_id}: {err}"), true, out);
                    Flow::Continue
                }
                Ok(obs) => match obs.phase {
                    MigrationPhase::Succeeded | MigrationPhase::Failed => {
                        // What an abort may have to undo, including what a failed run applied
                        // before its failure.
                        r.schema = Some(SchemaChange {
                            database,
                            locations,
                            before: obs.version_before.clone(),
                            after: obs.version_after.clone(),
                            on_abort,
                            undo_run: None,
                            settled: false,
                        });
                        if obs.phase == MigrationPhase::Failed {
                            abort_now(r, now, ENGINE, &format!("migration failed: {}", obs.message), true, out);
                            return Flow::Continue;
                        }
                        complete_step(
                            r,
                            now,
                            StepStatus::Succeeded,
                            ENGINE,
                            &format!("migrated: {}", obs.message),
                            out,
                        );
                        Flow::Continue
                    }
                    MigrationPhase::Pending | MigrationPhase::Running => {
                        r.failures = 0;
                        r.message = format!("migrating {database} (run {run_id}): {}", obs.message);
                        Flow::Wait(Some(after(now, s.poll_interval)))
                    }
                },
            }
        }
    };
    match flow {
        Flow::Wait(wake) if r.phase == Phase::Progressing || background_wake.is_some() => {
            // The progress deadline must be noticed even if nothing else wakes the release.
            let deadline = if r.phase == Phase::Progressing { r.progress_deadline_at } else { None };
            Flow::Wait(earliest(earliest(wake, background_wake), deadline))
        }
        other => other,
    }
}

fn update_run(r: &mut Release, run_id: &str, phase: RunPhase, message: &str) {
    for a in r.analysis_runs.iter_mut().filter(|a| a.run_id == run_id) {
        a.phase = phase.as_str().to_string();
        a.message = message.to_string();
        if !matches!(phase, RunPhase::Pending | RunPhase::Running) {
            a.done = true;
        }
    }
}

fn record_analysis_done(r: &mut Release, run_id: &str, obs: &RunObservation, out: &mut Vec<Transition>) {
    if obs.phase != RunPhase::Successful {
        for a in r.analysis_runs.iter_mut().filter(|a| a.run_id == run_id) {
            a.severity = Some(obs.severity);
        }
    }
    let from = r.phase;
    let severity =
        if obs.phase == RunPhase::Successful { String::new() } else { format!(" ({})", severity_text(obs.severity)) };
    record(
        r,
        TransitionKind::AnalysisCompleted,
        ENGINE,
        from,
        format!("analysis {run_id} {}{severity}: {}", obs.phase.as_str(), obs.message),
        out,
    );
}

fn severity_text(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::High => "high severity",
        Severity::Medium => "medium severity",
        Severity::Low => "low severity",
    }
}

fn verdict_text(obs: &RunObservation) -> String {
    format!("{} ({}): {}", obs.phase.as_str().to_lowercase(), severity_text(obs.severity), obs.message)
}

/// Low severity: the failure is an event for the notifier; the release carries on.
fn notify_only(r: &mut Release, what: &str, out: &mut Vec<Transition>) {
    let from = r.phase;
    r.message = format!("{what}; notified, continuing");
    record(r, TransitionKind::AnalysisCompleted, ENGINE, from, format!("{what}; notify only"), out);
}

/// How long a background re-check must run without failing: every metric measured twice.
fn settle_time(spec: &AnalysisSpec) -> Duration {
    spec.metrics
        .iter()
        .map(|m| {
            let delay = m.initial_delay.map(|d| d.0).unwrap_or_default();
            delay + 2 * m.interval.map(|d| d.0).unwrap_or(Duration::from_secs(10))
        })
        .max()
        .unwrap_or(Duration::from_secs(20))
}

/// Waits out a grace period's hold.
fn held(r: &mut Release, kind: &str, until: OffsetDateTime) -> Flow {
    r.message =
        format!("holding traffic after a high-severity {kind} analysis failure; measuring again at {}", rfc3339(until));
    Flow::Wait(Some(until))
}

/// High severity: hold traffic where it is for the grace period, then measure again; the
/// progress deadline is pushed past the hold so it does not abort first.
fn start_grace(
    r: &mut Release,
    now: OffsetDateTime,
    s: &Settings,
    what: &str,
    out: &mut Vec<Transition>,
) -> OffsetDateTime {
    let until = after(now, s.high_severity_grace);
    r.progress_deadline_at = Some(after(until, r.plan.progress_deadline.0));
    r.message = format!("{what}; holding traffic, measuring again at {} (aborts if it still fails)", rfc3339(until));
    let from = r.phase;
    let message = r.message.clone();
    record(r, TransitionKind::AnalysisCompleted, ENGINE, from, message, out);
    until
}

async fn analysis_step<E: Effects>(
    r: &mut Release,
    now: OffsetDateTime,
    fx: &E,
    s: &Settings,
    out: &mut Vec<Transition>,
    spec: &AnalysisSpec,
    kind: &str,
) -> Flow {
    let track_name = analysis_track(r, kind);
    if r.phase == Phase::Paused {
        // Inconclusive: waits for a person (promote skips, abort aborts).
        return Flow::Wait(None);
    }
    if r.cursor.run_id.is_none()
        && let Some(until) = r.cursor.grace.hold(now)
    {
        return held(r, kind, until);
    }
    let run_id = match r.cursor.run_id.clone() {
        Some(id) => id,
        None => {
            let label =
                if r.cursor.grace.rechecked { format!("{}-recheck", r.step_index) } else { r.step_index.to_string() };
            let key = idempotency_key(r, &label);
            let args = builtin_args(r, spec, track_name);
            match fx.start_analysis(&key, spec, &args, &labels(r, kind)).await {
                Ok(id) => {
                    r.failures = 0;
                    r.cursor.run_id = Some(id.clone());
                    if let Some(rec) = r.steps.get_mut(r.step_index) {
                        rec.run_id = Some(id.clone());
                    }
                    r.analysis_runs.push(AnalysisRecord {
                        run_id: id.clone(),
                        kind: kind.to_string(),
                        step_index: r.step_index,
                        phase: RunPhase::Pending.as_str().into(),
                        message: String::new(),
                        done: false,
                        severity: None,
                    });
                    let from = r.phase;
                    record(r, TransitionKind::AnalysisStarted, ENGINE, from, format!("{kind} analysis {id}"), out);
                    id
                }
                Err(err) if err.retryable => return retry_later(r, now, s, &err),
                Err(err) => {
                    abort_now(r, now, ENGINE, &format!("analysis could not start: {err}"), true, out);
                    return Flow::Continue;
                }
            }
        }
    };
    match fx.analysis_status(&run_id).await {
        Err(err) if err.retryable => retry_later(r, now, s, &err),
        Err(err) => {
            abort_now(r, now, ENGINE, &format!("analysis {run_id}: {err}"), true, out);
            Flow::Continue
        }
        Ok(obs) => {
            r.failures = 0;
            update_run(r, &run_id, obs.phase, &obs.message);
            match obs.phase {
                RunPhase::Pending | RunPhase::Running => {
                    r.message = format!("waiting for {kind} analysis {run_id}");
                    Flow::Wait(Some(after(now, s.poll_interval)))
                }
                _ => {
                    record_analysis_done(r, &run_id, &obs, out);
                    let what = format!("{kind} analysis {}", verdict_text(&obs));
                    match decide(obs.phase, obs.severity, r.cursor.grace.rechecked) {
                        Decision::Continue => {
                            complete_step(r, now, StepStatus::Succeeded, ENGINE, "analysis successful", out);
                            Flow::Continue
                        }
                        Decision::Notify => {
                            notify_only(r, &what, out);
                            complete_step(
                                r,
                                now,
                                StepStatus::Succeeded,
                                ENGINE,
                                &format!("{what}; notified only"),
                                out,
                            );
                            Flow::Continue
                        }
                        Decision::Abort => {
                            abort_now(r, now, ENGINE, &what, true, out);
                            Flow::Continue
                        }
                        Decision::Pause => {
                            pause(r, None, &format!("{what}; promote to continue or abort"), out);
                            Flow::Wait(None)
                        }
                        Decision::Grace => {
                            r.cursor.run_id = None;
                            let until = start_grace(r, now, s, &what, out);
                            r.cursor.grace.until = Some(until);
                            Flow::Wait(Some(until))
                        }
                    }
                }
            }
        }
    }
}

/// Which track an analysis of `kind` looks at: the new version's. A direct plan (first release)
/// has it on the stable or active track.
fn analysis_track(r: &Release, kind: &str) -> &'static str {
    match (kind, r.plan.strategy, r.plan.traffic) {
        ("prePromotion", ..) => "preview",
        ("postPromotion", ..) => "active",
        (_, PlanStrategy::Direct, TrafficModel::BlueGreen) => "active",
        (_, PlanStrategy::Direct, TrafficModel::Canary) => "stable",
        _ => "canary",
    }
}

/// Waits for one of the environment's maintenance windows (paused, so the progress deadline does
/// not run; a promote skips the wait).
fn window_step(
    r: &mut Release,
    now: OffsetDateTime,
    windows: &[super::config::MaintenanceWindow],
    out: &mut Vec<Transition>,
) -> Flow {
    use super::config::window::{WindowState, window_state};
    let parsed: Result<Vec<_>, String> = windows.iter().map(|w| w.parse()).collect();
    let parsed = match parsed {
        Ok(p) => p,
        Err(e) => {
            abort_now(r, now, ENGINE, &format!("maintenance window: {e}"), true, out);
            return Flow::Continue;
        }
    };
    let at = |secs: i64| OffsetDateTime::from_unix_timestamp(secs).map(rfc3339).unwrap_or_else(|_| secs.to_string());
    match window_state(&parsed, now.unix_timestamp()) {
        WindowState::Open { closes_at } => {
            complete_step(
                r,
                now,
                StepStatus::Succeeded,
                ENGINE,
                &format!("maintenance window open until {}", at(closes_at)),
                out,
            );
            Flow::Continue
        }
        WindowState::Closed { opens_at } => {
            let until = OffsetDateTime::from_unix_timestamp(opens_at).unwrap_or(now);
            pause(
                r,
                Some(until.max(now)),
                &format!("waiting for the maintenance window opening at {} (promote to go now)", at(opens_at)),
                out,
            );
            Flow::Wait(Some(until.max(now)))
        }
        WindowState::Never => {
            abort_now(r, now, ENGINE, "no maintenance window opens within five years", true, out);
            Flow::Continue
        }
    }
}

/// The runbook's checklist, right before the first change: a failed check aborts the release
/// with every failure as the reason, and nothing has been touched. A dependency that does not
/// answer is asked again until `preflight_patience` runs out.
async fn preflight_step<E: Effects>(
    r: &mut Release,
    now: OffsetDateTime,
    fx: &E,
    s: &Settings,
    out: &mut Vec<Transition>,
    dependencies: &[String],
) -> Flow {
    let patience = *r.cursor.until.get_or_insert(after(now, s.preflight_patience));
    let mut analyses = Vec::new();
    for (spec, kind) in r.plan.steps.iter().filter_map(|step| step.action.analysis_run()) {
        analyses.push((spec.clone(), builtin_args(r, spec, analysis_track(r, kind))));
    }
    if let Some(bg) = &r.plan.background {
        analyses.push((bg.analysis.clone(), builtin_args(r, &bg.analysis, "canary")));
    }
    let migrations = r.plan.steps.iter().find_map(|step| match &step.action {
        StepAction::Migrate { database, locations, .. } => Some((database.clone(), locations.clone())),
        _ => None,
    });
    let request = PreflightRequest {
        service: r.service.clone(),
        environment: r.environment.clone(),
        analyses,
        migrations,
        dependencies: dependencies.to_vec(),
    };
    let checks = match fx.preflight(&request).await {
        Ok(checks) => checks,
        Err(err) if err.retryable && now < patience => return retry_later(r, now, s, &err),
        Err(err) => {
            abort_now(r, now, ENGINE, &format!("preflight failed: {err}"), true, out);
            return Flow::Continue;
        }
    };
    let failed: Vec<String> = checks.iter().filter(|c| !c.ok).map(|c| format!("{}: {}", c.name, c.message)).collect();
    let total = checks.len();
    r.preflight = checks;
    if failed.is_empty() {
        complete_step(r, now, StepStatus::Succeeded, ENGINE, &format!("preflight passed ({total} checks)"), out);
    } else {
        abort_now(r, now, ENGINE, &format!("preflight failed: {}", failed.join("; ")), true, out);
    }
    Flow::Continue
}

/// Applies `state` once (with the step's key), then waits until the deployer reports it converged.
async fn converge<E: Effects>(
    r: &mut Release,
    now: OffsetDateTime,
    fx: &E,
    s: &Settings,
    out: &mut Vec<Transition>,
    state: DesiredState,
    on_applied: impl FnOnce(&mut Release),
) -> Flow {
    if !r.cursor.applied {
        let key = idempotency_key(r, &r.step_index.to_string());
        match fx.apply_target(&key, &state).await {
            Ok(()) => {
                r.failures = 0;
                r.cursor.applied = true;
                r.traffic_touched = true;
                let before = r.canary_weight;
                on_applied(r);
                if r.canary_weight != before {
                    let from = r.phase;
                    let message = format!("traffic to {}: {}%", r.artifact, r.canary_weight);
                    record(r, TransitionKind::WeightChanged, ENGINE, from, message, out);
                }
            }
            Err(err) => {
                if err.uncertain {
                    r.traffic_touched = true;
                }
                if err.retryable {
                    return retry_later(r, now, s, &err);
                }
                abort_now(r, now, ENGINE, &format!("deployer refused the desired state: {err}"), true, out);
                return Flow::Continue;
            }
        }
    }
    match fx.target_status(&r.service, &r.environment).await {
        Err(err) if err.retryable => retry_later(r, now, s, &err),
        Err(err) => {
            abort_now(r, now, ENGINE, &format!("deployer status: {err}"), true, out);
            Flow::Continue
        }
        Ok(obs) if obs.converged && obs.canary_weight == state.canary_weight => {
            if !obs.address.is_empty() {
                r.address = obs.address;
            }
            complete_step(r, now, StepStatus::Succeeded, ENGINE, "", out);
            Flow::Continue
        }
        Ok(obs) => {
            r.failures = 0;
            r.message = format!("converging: {}", obs.message);
            Flow::Wait(Some(after(now, s.poll_interval)))
        }
    }
}

async fn finalize<E: Effects>(
    r: &mut Release,
    now: OffsetDateTime,
    fx: &E,
    s: &Settings,
    out: &mut Vec<Transition>,
) -> Flow {
    // A direct plan has already deployed the final state in its last step.
    let done_by_plan = r.plan.strategy == PlanStrategy::Direct && !r.promote_full;
    if !done_by_plan && !r.cursor.applied {
        let key = idempotency_key(r, "final");
        let state = final_state(r);
        match fx.apply_target(&key, &state).await {
            Ok(()) => {
                r.cursor.applied = true;
                r.traffic_touched = true;
                r.failures = 0;
                if r.canary_weight != 100 {
                    r.canary_weight = 100;
                    let from = r.phase;
                    let message = format!("traffic to {}: 100%", r.artifact);
                    record(r, TransitionKind::WeightChanged, ENGINE, from, message, out);
                }
            }
            Err(err) if err.retryable => {
                if err.uncertain {
                    r.traffic_touched = true;
                }
                return retry_later(r, now, s, &err);
            }
            Err(err) => {
                abort_now(r, now, ENGINE, &format!("deployer refused the final state: {err}"), false, out);
                return Flow::Continue;
            }
        }
    }
    if !done_by_plan {
        match fx.target_status(&r.service, &r.environment).await {
            Err(err) if err.retryable => return retry_later(r, now, s, &err),
            Err(err) => {
                abort_now(r, now, ENGINE, &format!("deployer status: {err}"), false, out);
                return Flow::Continue;
            }
            Ok(obs) if !(obs.converged && obs.canary_weight == 0) => {
                r.message = format!("promoting: {}", obs.message);
                return Flow::Wait(earliest(Some(after(now, s.poll_interval)), r.progress_deadline_at));
            }
            Ok(_) => {}
        }
    }
    let from = r.phase;
    r.phase = Phase::Succeeded;
    r.completion = Some(if r.promote_full { Completion::FastPromoted } else { Completion::Promoted });
    r.finished_at = Some(now);
    r.canary_weight = 100;
    r.progress_deadline_at = None;
    r.message = format!("{} is stable", r.artifact);
    let message = r.message.clone();
    record(r, TransitionKind::Succeeded, ENGINE, from, message, out);
    Flow::Continue
}

// === user actions ===

/// `PromoteRelease`: skips the current pause (or an inconclusive or running analysis); with
/// `full`, every remaining step.
pub fn promote(
    r: &mut Release,
    full: bool,
    actor: &str,
    reason: &str,
    now: OffsetDateTime,
) -> Result<Vec<Transition>, ActionError> {
    let mut out = Vec::new();
    match r.phase {
        Phase::Progressing | Phase::Paused | Phase::Pending => {}
        Phase::AwaitingApproval => {
            return Err(ActionError::NotNow("the release waits for approval; approvals cannot be skipped".into()));
        }
        p => return Err(ActionError::NotNow(format!("the release is {}; nothing to promote", p.as_str()))),
    }
    if r.step_index >= r.plan.steps.len() {
        return Err(ActionError::NotNow("every step is done; the release is completing".into()));
    }
    r.reason = reason.to_string();
    if full {
        let remaining = &r.plan.steps[r.step_index..];
        if remaining.iter().any(|s| matches!(s.action, StepAction::Approval { .. })) {
            return Err(ActionError::NotNow("an approval step remains; approvals cannot be skipped".into()));
        }
        if remaining.iter().any(|s| matches!(s.action, StepAction::Migrate { .. })) {
            // New code must not take traffic before its schema exists.
            return Err(ActionError::NotNow("a migrate step remains; migrations cannot be skipped".into()));
        }
        if r.promote_full {
            return Err(ActionError::NotNow("a full promotion is already under way".into()));
        }
        r.promote_full = true;
        r.held_for_person = false;
        let from = r.phase;
        if r.phase == Phase::Paused {
            r.phase = Phase::Progressing;
        }
        r.progress_deadline_at = Some(after(now, r.plan.progress_deadline.0));
        record(r, TransitionKind::Promoted, actor, from, format!("promote --full: {reason}"), &mut out);
        return Ok(out);
    }
    let step = &r.plan.steps[r.step_index];
    let skippable = match &step.action {
        StepAction::Pause { .. } => true,
        StepAction::Analysis { .. }
        | StepAction::PrePromotionAnalysis { .. }
        | StepAction::PostPromotionAnalysis { .. } => true,
        StepAction::Verify { .. } => r.phase == Phase::Paused,
        // Deploying outside the window is a person's explicit call.
        StepAction::MaintenanceWindow { .. } => true,
        _ => false,
    };
    if r.held_for_person || (r.phase == Phase::Paused && !skippable) {
        // Paused by the background analysis: resume without it.
        r.held_for_person = false;
        let from = r.phase;
        r.phase = Phase::Progressing;
        r.progress_deadline_at = Some(after(now, r.plan.progress_deadline.0));
        r.message = "resumed by promote".into();
        record(r, TransitionKind::Promoted, actor, from, format!("resumed: {reason}"), &mut out);
        return Ok(out);
    }
    if !skippable {
        return Err(ActionError::NotNow(format!(
            "step {} ({}) is in progress and cannot be skipped; use --full to skip every remaining step",
            r.step_index, step.name
        )));
    }
    let status =
        if matches!(step.action, StepAction::Pause { .. }) { StepStatus::Succeeded } else { StepStatus::Skipped };
    let from = r.phase;
    record(r, TransitionKind::Promoted, actor, from, format!("promoted: {reason}"), &mut out);
    complete_step(r, now, status, actor, "promoted", &mut out);
    Ok(out)
}

/// `AbortRelease`.
pub fn abort(r: &mut Release, actor: &str, reason: &str, now: OffsetDateTime) -> Result<Vec<Transition>, ActionError> {
    if r.phase.is_terminal() {
        return Err(ActionError::NotNow(format!("the release is {}; nothing to abort", r.phase.as_str())));
    }
    let mut out = Vec::new();
    r.reason = reason.to_string();
    let text = if reason.is_empty() { format!("aborted by {actor}") } else { format!("aborted by {actor}: {reason}") };
    abort_now(r, now, actor, &text, false, &mut out);
    Ok(out)
}

/// `RetryRelease`: an aborted release starts again from its first step with a new attempt number
/// (so every call gets a new idempotency key, and approvals are asked for again).
pub fn retry(r: &mut Release, actor: &str, reason: &str, now: OffsetDateTime) -> Result<Vec<Transition>, ActionError> {
    if r.phase != Phase::Aborted {
        return Err(ActionError::NotNow(format!(
            "only an aborted release can be retried; this one is {}",
            r.phase.as_str()
        )));
    }
    if !r.settled {
        return Err(ActionError::NotNow("the abort is still returning traffic to stable; retry once it has".into()));
    }
    let from = r.phase;
    r.attempt += 1;
    r.phase = Phase::Pending;
    r.completion = None;
    r.finished_at = None;
    r.abort = None;
    r.settled = false;
    r.step_index = 0;
    r.cursor = StepCursor::default();
    r.canary_weight = 0;
    r.canary_scale = CanaryScale::default();
    r.switched = false;
    r.background_run = None;
    r.background_done = false;
    r.background_grace = Default::default();
    r.held_for_person = false;
    r.schema = None;
    r.promote_full = false;
    r.failures = 0;
    r.last_error = None;
    r.reason = reason.to_string();
    for rec in &mut r.steps {
        *rec = super::release::StepRecord {
            status: StepStatus::Pending,
            started_at: None,
            finished_at: None,
            message: String::new(),
            run_id: None,
        };
    }
    r.updated_at = now;
    r.message = format!("retry (attempt {})", r.attempt);
    let mut out = Vec::new();
    record(r, TransitionKind::Retried, actor, from, format!("attempt {}: {reason}", r.attempt), &mut out);
    Ok(out)
}

/// Identity of whoever approves or rejects.
pub struct Decider<'a> {
    /// User.
    pub user: &'a str,
    /// Roles.
    pub roles: &'a [String],
    /// No identity was sent.
    pub anonymous: bool,
}

fn current_approval(r: &Release) -> Result<super::plan::ApprovalSpec, ActionError> {
    if r.phase != Phase::AwaitingApproval {
        return Err(ActionError::NotNow(format!("the release is {}, not waiting for approval", r.phase.as_str())));
    }
    match r.plan.steps.get(r.step_index).map(|s| &s.action) {
        Some(StepAction::Approval { policy }) => Ok(policy.clone()),
        _ => Err(ActionError::NotNow("the current step is not an approval".into())),
    }
}

fn check_decider(
    r: &Release,
    policy: &super::plan::ApprovalSpec,
    who: &Decider<'_>,
    verb: &str,
) -> Result<(), ActionError> {
    if who.anonymous {
        return Err(ActionError::Forbidden(format!("to {verb} a release, send your identity (x-hopngo-user)")));
    }
    if !policy.roles.is_empty() && !policy.roles.iter().any(|role| who.roles.iter().any(|r| same_name(r, role))) {
        return Err(ActionError::Forbidden(format!(
            "{} may not {verb}: one of the roles {} is required",
            who.user,
            policy.roles.join(", ")
        )));
    }
    if r.approvals
        .iter()
        .any(|a| same_name(&a.user, who.user) && a.step_index == r.step_index && a.attempt == r.attempt)
    {
        return Err(ActionError::NotNow(format!("{} has already decided on this approval", who.user)));
    }
    Ok(())
}

/// `ApproveRelease`: four eyes unless the policy allows self-approval; distinct approvers.
pub fn approve(
    r: &mut Release,
    who: &Decider<'_>,
    reason: &str,
    now: OffsetDateTime,
) -> Result<Vec<Transition>, ActionError> {
    let policy = current_approval(r)?;
    check_decider(r, &policy, who, "approve")?;
    if !policy.allow_self_approval && same_name(who.user, &r.created_by) {
        return Err(ActionError::Forbidden(format!(
            "{} created this release and cannot approve it (four-eyes rule)",
            who.user
        )));
    }
    r.approvals.push(ApprovalRecord {
        user: who.user.to_string(),
        approved: true,
        reason: reason.to_string(),
        at: now,
        step_index: r.step_index,
        attempt: r.attempt,
    });
    let mut out = Vec::new();
    let count = r.approvals_for_current_step().count() as u32;
    let from = r.phase;
    if count >= policy.min_approvals {
        record(
            r,
            TransitionKind::Approved,
            who.user,
            from,
            format!("approved by {} ({count}/{}): {reason}", who.user, policy.min_approvals),
            &mut out,
        );
        complete_step(r, now, StepStatus::Succeeded, who.user, "approved", &mut out);
    } else {
        r.message = format!("{count} of {} approvals", policy.min_approvals);
        record(
            r,
            TransitionKind::ApprovalRecorded,
            who.user,
            from,
            format!("approved by {} ({count}/{}): {reason}", who.user, policy.min_approvals),
            &mut out,
        );
    }
    Ok(out)
}

/// `RejectRelease`: one rejection aborts.
pub fn reject(
    r: &mut Release,
    who: &Decider<'_>,
    reason: &str,
    now: OffsetDateTime,
) -> Result<Vec<Transition>, ActionError> {
    if reason.trim().is_empty() {
        return Err(ActionError::Invalid { field: "reason", reason: "a rejection needs a reason".into() });
    }
    let policy = current_approval(r)?;
    check_decider(r, &policy, who, "reject")?;
    r.approvals.push(ApprovalRecord {
        user: who.user.to_string(),
        approved: false,
        reason: reason.to_string(),
        at: now,
        step_index: r.step_index,
        attempt: r.attempt,
    });
    r.reason = reason.to_string();
    let mut out = Vec::new();
    let from = r.phase;
    record(r, TransitionKind::Rejected, who.user, from, format!("rejected by {}: {reason}", who.user), &mut out);
    abort_now(r, now, who.user, &format!("rejected by {}: {reason}", who.user), true, &mut out);
    Ok(out)
}

/// A newer release replaces this one. An abort still returning to stable is dropped: the newer
/// release sets the desired state from now on.
pub fn supersede(r: &mut Release, by: Uuid, actor: &str, now: OffsetDateTime) -> Vec<Transition> {
    let mut out = Vec::new();
    if r.phase == Phase::Aborted {
        if !r.settled {
            r.settled = true;
            r.message = format!("{}; return to stable left to release {by}", r.message);
        }
        return out;
    }
    if r.phase.is_terminal() {
        return out;
    }
    let from = r.phase;
    r.phase = Phase::Superseded;
    r.completion = Some(Completion::Superseded);
    r.superseded_by = Some(by);
    r.finished_at = Some(now);
    r.progress_deadline_at = None;
    r.message = format!("superseded by release {by}");
    let message = r.message.clone();
    record(r, TransitionKind::Superseded, actor, from, message, &mut out);
    out
}

/// Ends a group member that never started because an earlier member did not succeed.
pub fn cancel_unstarted(r: &mut Release, reason: &str, now: OffsetDateTime) -> Vec<Transition> {
    let mut out = Vec::new();
    if r.phase != Phase::Pending {
        return out;
    }
    r.reason = reason.to_string();
    abort_now(r, now, ENGINE, reason, false, &mut out);
    r.settled = true;
    out
}

#[cfg(test)]
mod tests;
