//! What people do to a release (promote, abort, retry, approve, reject) and what happens to it
//! when another release replaces it: synchronous changes, each returning its transitions.

use hopngo_kit::identity::same_name;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{ActionError, ENGINE, Transition, abort_now, after, complete_step, record};
use crate::domain::{
    plan::{ApprovalSpec, CanaryScale, StepAction},
    release::{ApprovalRecord, Completion, Phase, Release, StepCursor, StepRecord, StepStatus},
    steps,
};
use hopngo_proto::transitions::TransitionKind;

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
        let unskippable = r.plan.steps[r.step_index..]
            .iter()
            .filter_map(|s| match steps::on_full_promotion(&s.action) {
                steps::FullPromotion::Refused(kind) => Some(kind),
                steps::FullPromotion::Skipped | steps::FullPromotion::Runs => None,
            })
            .min();
        if let Some(kind) = unskippable {
            return Err(ActionError::NotNow(kind.reason().into()));
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
    let skippable = steps::promote_skips(&step.action, r.phase == Phase::Paused);
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
    r.routes = Default::default();
    r.switched = false;
    r.background_run = None;
    r.background_done = false;
    r.background_reference = None;
    r.background_grace = Default::default();
    r.held_for_person = false;
    r.schema = None;
    r.promote_full = false;
    r.failures = 0;
    r.last_error = None;
    r.reason = reason.to_string();
    for rec in &mut r.steps {
        *rec = StepRecord {
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
    /// Who vouched for the user (the token's issuer).
    pub issuer: &'a str,
    /// The issuer's id of the user (the token's subject).
    pub subject: &'a str,
}

impl Decider<'_> {
    /// This person's decision on the step at `step_index` of `attempt`.
    fn decision(
        &self,
        approved: bool,
        reason: &str,
        at: OffsetDateTime,
        step_index: usize,
        attempt: u32,
    ) -> ApprovalRecord {
        ApprovalRecord {
            user: self.user.to_string(),
            issuer: self.issuer.to_string(),
            subject: self.subject.to_string(),
            approved,
            reason: reason.to_string(),
            at,
            step_index,
            attempt,
        }
    }
}

fn current_approval(r: &Release) -> Result<ApprovalSpec, ActionError> {
    if r.phase != Phase::AwaitingApproval {
        return Err(ActionError::NotNow(format!("the release is {}, not waiting for approval", r.phase.as_str())));
    }
    match r.plan.steps.get(r.step_index).map(|s| &s.action) {
        Some(StepAction::Approval { policy }) => Ok(policy.clone()),
        _ => Err(ActionError::NotNow("the current step is not an approval".into())),
    }
}

fn check_roles(policy: &ApprovalSpec, who: &Decider<'_>, verb: &str) -> Result<(), ActionError> {
    if !policy.roles.is_empty() && !policy.roles.iter().any(|role| who.roles.iter().any(|r| same_name(r, role))) {
        return Err(ActionError::Forbidden(format!(
            "{} may not {verb}: one of the roles {} is required",
            who.user,
            policy.roles.join(", ")
        )));
    }
    Ok(())
}

fn check_four_eyes(r: &Release, policy: &ApprovalSpec, who: &Decider<'_>) -> Result<(), ActionError> {
    if !policy.allow_self_approval && same_name(who.user, &r.created_by) {
        return Err(ActionError::Forbidden(format!(
            "{} created this release and cannot approve it (four-eyes rule)",
            who.user
        )));
    }
    Ok(())
}

/// Whether `who` has approved or rejected the step at `index` in the release's current attempt.
fn has_decided(r: &Release, who: &Decider<'_>, index: usize) -> bool {
    r.approvals.iter().any(|a| same_name(&a.user, who.user) && a.step_index == index && a.attempt == r.attempt)
}

fn check_decider(r: &Release, policy: &ApprovalSpec, who: &Decider<'_>, verb: &str) -> Result<(), ActionError> {
    check_roles(policy, who, verb)?;
    if has_decided(r, who, r.step_index) {
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
    check_four_eyes(r, &policy, who)?;
    let decision = who.decision(true, reason, now, r.step_index, r.attempt);
    r.approvals.push(decision);
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

/// A group's approval (`ApproveReleaseGroup`): the approval this release waits for now, if any,
/// and every approval step still ahead of it, decided by one person at once. Each step's roles
/// and four-eyes rule apply; all are checked before any is recorded. Returns the transitions and
/// how many approval steps were decided (0: none ahead, or all decided by this person already).
pub fn approve_ahead(
    r: &mut Release,
    who: &Decider<'_>,
    reason: &str,
    now: OffsetDateTime,
) -> Result<(Vec<Transition>, usize), ActionError> {
    if r.phase.is_terminal() {
        return Ok((Vec::new(), 0));
    }
    let waiting = r.phase == Phase::AwaitingApproval;
    // Steps not started yet: the current one too unless its gate is open already.
    let first_ahead = if waiting || r.cursor.applied { r.step_index + 1 } else { r.step_index };
    let mut ahead = Vec::new();
    for (index, step) in r.plan.steps.iter().enumerate().skip(first_ahead) {
        let StepAction::Approval { policy } = &step.action else { continue };
        if has_decided(r, who, index) {
            continue;
        }
        check_roles(policy, who, "approve")?;
        check_four_eyes(r, policy, who)?;
        ahead.push(index);
    }
    let mut out = Vec::new();
    let mut decided = 0;
    // Someone who already decided the open gate (ApproveRelease) approves only what is ahead.
    if waiting && !has_decided(r, who, r.step_index) {
        out = approve(r, who, reason, now)?;
        decided += 1;
    }
    for index in ahead {
        let decision = who.decision(true, reason, now, index, r.attempt);
        r.approvals.push(decision);
        let from = r.phase;
        let step = r.plan.steps[index].name.clone();
        record(
            r,
            TransitionKind::ApprovalRecorded,
            who.user,
            from,
            format!("{step} approved ahead by {}: {reason}", who.user),
            &mut out,
        );
        decided += 1;
    }
    Ok((out, decided))
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
    let decision = who.decision(false, reason, now, r.step_index, r.attempt);
    r.approvals.push(decision);
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
