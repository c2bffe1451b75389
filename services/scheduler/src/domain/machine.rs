//! The release state machine: [`advance`] moves a release as far as it can without waiting
//! (calling other services through [`Effects`]), and the user actions (promote, abort, retry,
//! approve, reject, supersede) change it synchronously. Both return the transitions they made; the
//! store commits the new state, one event and one audit row per transition in one transaction.
//!
//! What each step kind does lives in `super::steps` (one module per kind); this module decides
//! which of them runs, and keeps the changes every part of the engine makes the same way
//! (completing a step, aborting, pausing, recording a transition).

mod abort;
mod actions;
mod background;
mod finalize;

use std::time::Duration;

use time::OffsetDateTime;

pub use actions::{Decider, abort, approve, approve_ahead, cancel_unstarted, promote, reject, retry, supersede};
pub use hopngo_proto::transitions::TransitionKind;

use super::{
    effects::Effects,
    release::{AbortState, Completion, Phase, Release, StepCursor, StepStatus},
    steps::{self, Next, StepCtx},
};

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

/// Records a transition (from phase `from` to the release's phase now).
pub(in crate::domain) fn record(
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

pub(in crate::domain) fn after(now: OffsetDateTime, d: Duration) -> OffsetDateTime {
    now + time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

pub(in crate::domain) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

pub(in crate::domain) fn earliest(a: Option<OffsetDateTime>, b: Option<OffsetDateTime>) -> Option<OffsetDateTime> {
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

/// Moves the release as far as it can go now. Bounded, so a worker never holds one release long.
pub async fn advance<E: Effects>(r: &mut Release, now: OffsetDateTime, fx: &E, settings: &Settings) -> Advance {
    let mut out = Vec::new();
    let mut waiting = None;
    let mut cx = StepCtx { r: &mut *r, now, fx, settings, out: &mut out };
    for _ in 0..64 {
        if let Next::Wait(wake_at) = look(&mut cx).await {
            waiting = Some(wake_at);
            break;
        }
    }
    let Some(wake_at) = waiting else {
        r.updated_at = now;
        return Advance { transitions: out, wake_at: Some(now) };
    };
    if !out.is_empty() || wake_at.is_some() || r.settled {
        r.updated_at = now;
    }
    Advance { transitions: out, wake_at }
}

/// One look at the release: what its phase calls for.
async fn look<E: Effects>(cx: &mut StepCtx<'_, E>) -> Next {
    if cx.r.settled {
        return Next::Wait(None);
    }
    match cx.r.phase {
        Phase::Pending => start(cx),
        Phase::Succeeded | Phase::Superseded | Phase::Failed => abort::cleanup(cx).await,
        Phase::Aborted => abort::roll_back(cx).await,
        Phase::Progressing | Phase::Paused | Phase::AwaitingApproval => run(cx).await,
    }
}

fn start<E: Effects>(cx: &mut StepCtx<'_, E>) -> Next {
    let r = &mut *cx.r;
    let from = r.phase;
    r.phase = Phase::Progressing;
    r.progress_deadline_at = Some(after(cx.now, r.plan.progress_deadline.0));
    r.message = "started".into();
    if let Some(rec) = r.steps.get_mut(0) {
        rec.status = StepStatus::Running;
        rec.started_at = Some(cx.now);
    }
    let message = format!("revision {} of {}", r.revision, r.artifact);
    cx.record(TransitionKind::Started, from, message);
    Next::Continue
}

/// A release on its way: the background analysis beside the steps, the progress deadline, a full
/// promotion's skip, then the current step (or, after the last one, completion).
async fn run<E: Effects>(cx: &mut StepCtx<'_, E>) -> Next {
    let background_wake = match background::watch(cx).await {
        background::Beside::Steps(wake) => wake,
        background::Beside::Stop(next) => return next,
    };
    let next = if let Some(next) = past_deadline(cx).or_else(|| skip_for_full_promotion(cx)) {
        next
    } else if cx.r.held_for_person {
        // A background analysis asked for a person: no step moves (not even an elapsed pause).
        Next::Wait(None)
    } else if let Some(step) = cx.r.plan.steps.get(cx.r.step_index) {
        let action = step.action.clone();
        steps::run(cx, &action).await
    } else {
        finalize::finalize(cx).await
    };
    match next {
        Next::Wait(wake) if cx.r.phase == Phase::Progressing || background_wake.is_some() => {
            // The progress deadline must be noticed even if nothing else wakes the release.
            let deadline = if cx.r.phase == Phase::Progressing { cx.r.progress_deadline_at } else { None };
            Next::Wait(earliest(earliest(wake, background_wake), deadline))
        }
        other => other,
    }
}

/// Aborts a progressing release whose progress deadline has passed.
fn past_deadline<E: Effects>(cx: &mut StepCtx<'_, E>) -> Option<Next> {
    let r = &*cx.r;
    if r.phase != Phase::Progressing || r.progress_deadline_at.is_none_or(|deadline| cx.now < deadline) {
        return None;
    }
    let step = r.plan.steps.get(r.step_index).map(|s| s.name.clone()).unwrap_or_else(|| "completion".into());
    // What it was waiting on (the last retried failure, else what the step last reported, such as
    // the deployer's "canary 0/1 ready (ImagePullBackOff: ...)"), so a person can act on it.
    let waiting_on = r.last_error.clone().or_else(|| (!r.message.is_empty()).then(|| r.message.clone()));
    let detail = waiting_on.map(|e| format!(": {e}")).unwrap_or_default();
    let reason = format!(
        "progress deadline exceeded ({}) at step {} ({step}){detail}",
        hopngo_kit::args::format_duration(r.plan.progress_deadline.0),
        r.step_index
    );
    Some(cx.abort(&reason, true))
}

/// `promote --full` skips every remaining step but the preflight checks.
fn skip_for_full_promotion<E: Effects>(cx: &mut StepCtx<'_, E>) -> Option<Next> {
    let r = &mut *cx.r;
    let skip_to = r.plan.steps[r.step_index.min(r.plan.steps.len())..]
        .iter()
        .position(|s| matches!(steps::on_full_promotion(&s.action), steps::FullPromotion::Runs))
        .map_or(r.plan.steps.len(), |p| r.step_index + p);
    if !r.promote_full || r.step_index >= skip_to {
        return None;
    }
    let index = r.step_index;
    for i in index..skip_to {
        if let Some(rec) = r.steps.get_mut(i) {
            rec.status = StepStatus::Skipped;
            rec.finished_at = Some(cx.now);
        }
    }
    r.step_index = skip_to;
    r.cursor = StepCursor::default();
    r.progress_deadline_at = Some(after(cx.now, r.plan.progress_deadline.0));
    if let Some(rec) = r.steps.get_mut(skip_to) {
        rec.status = StepStatus::Running;
        rec.started_at = Some(cx.now);
    }
    let from = r.phase;
    r.phase = Phase::Progressing;
    let range = if skip_to == r.plan.steps.len() { format!("{index}..") } else { format!("{index}..{skip_to}") };
    cx.record(TransitionKind::StepSkipped, from, format!("steps {range} skipped by promote --full"));
    Some(Next::Continue)
}

/// Aborts: records why, and leaves the return to stable to the engine.
pub(in crate::domain) fn abort_now(
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

pub(in crate::domain) fn complete_step(
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
pub(in crate::domain) fn pause(
    r: &mut Release,
    resumes_at: Option<OffsetDateTime>,
    message: &str,
    out: &mut Vec<Transition>,
) {
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

#[cfg(test)]
mod tests;
