//! `argoRollout` (Argo mode): the service's own Argo Rollout runs the release. The step sets the
//! new artifact on the Rollout (once, with the step's idempotency key) and follows what Argo
//! reports until the Rollout is Healthy on it. Around it the plan keeps what Argo lacks
//! (preflight, approvals, migrations, background analysis, events, audit, environment rollback).
//! - Argo waits for a person (a pause step without a duration): the release pauses; a promote
//!   of the release is forwarded to Argo (`promote`) once the release resumes.
//! - Argo pauses for a while, or progresses: the release waits, its progress deadline starting
//!   over at each look (Argo's own deadline does not count pauses either).
//! - Argo aborted the update (its own analysis, or a person in Argo): the release aborts with
//!   Argo's message, and the abort path takes the Rollout back to the stable artifact.
//! - `promote --full` (or an emergency plan) is forwarded as Argo's `promote --full`.

use super::{Next, StepCtx, traffic};
use crate::domain::{
    effects::{Effects, RolloutControl},
    machine::{after, idempotency_key},
    release::{Phase, StepStatus},
};
use hopngo_proto::transitions::TransitionKind;

/// Runs the Rollout to the release's artifact; `full` skips Argo's steps.
pub async fn run<E: Effects>(cx: &mut StepCtx<'_, E>, full: bool) -> Next {
    let state = traffic::final_state(cx.r);
    let key = idempotency_key(cx.r, &cx.r.step_index.to_string());
    if let Err(next) = traffic::apply_once(cx, &key, &state, "the Rollout's image", true, |_| {}).await {
        return next;
    }
    // What a person asked of the release, forwarded to Argo once each.
    if (full || cx.r.promote_full) && !cx.r.cursor.argo_full_sent {
        if let Err(next) = control(cx, RolloutControl::PromoteFull).await {
            return next;
        }
        cx.r.cursor.argo_full_sent = true;
    }
    if cx.r.cursor.argo_paused && cx.r.phase == Phase::Progressing {
        if let Err(next) = control(cx, RolloutControl::Promote).await {
            return next;
        }
        cx.r.cursor.argo_paused = false;
    }
    let obs = match traffic::observe(cx, true).await {
        Ok(obs) => obs,
        Err(next) => return next,
    };
    let Some(rollout) = obs.rollout else {
        return cx.abort(
            "the deployer reports no Argo Rollout for the service (is it still argoRollout in the config?)",
            true,
        );
    };
    if obs.converged {
        if !obs.address.is_empty() {
            cx.r.address = obs.address;
        }
        cx.r.canary_weight = 100;
        return cx.complete(StepStatus::Succeeded, "the Rollout is Healthy on the new artifact");
    }
    if rollout.aborted || rollout.phase == "Degraded" {
        let why = if rollout.message.is_empty() { &rollout.phase } else { &rollout.message };
        return cx.abort(&format!("Argo aborted the Rollout: {why}"), true);
    }
    if rollout.weight != cx.r.canary_weight {
        let from = cx.r.phase;
        cx.r.canary_weight = rollout.weight;
        let message =
            format!("traffic to {}: {}% (Argo step {}/{})", cx.r.artifact, rollout.weight, rollout.step, rollout.steps);
        cx.record(TransitionKind::WeightChanged, from, message);
    }
    let where_ = format!("step {}/{}, canary {}%", rollout.step, rollout.steps, rollout.weight);
    if rollout.awaiting_promotion {
        cx.r.cursor.argo_paused = true;
        let message = format!("Argo paused the Rollout at {where_}; promote the release to continue");
        // Paused for a person, but looked at again: Argo may be promoted outside HopNGo.
        let _ = cx.pause(None, &message);
        return cx.poll_later();
    }
    if cx.r.phase == Phase::Paused {
        // Promoted in Argo itself (kubectl argo rollouts promote): the release follows.
        let from = cx.r.phase;
        cx.r.phase = Phase::Progressing;
        cx.r.cursor.argo_paused = false;
        cx.record(TransitionKind::Promoted, from, format!("promoted in Argo, outside HopNGo ({where_})"));
    }
    // Argo is moving (or in a timed pause): that is progress.
    cx.r.progress_deadline_at = Some(after(cx.now, cx.r.plan.progress_deadline.0));
    cx.r.message = format!("Argo: {}", obs.message);
    cx.poll_later()
}

/// Sends `action` to the Rollout; `Err` is what the step returns (a retry, or the abort).
async fn control<E: Effects>(cx: &mut StepCtx<'_, E>, action: RolloutControl) -> Result<(), Next> {
    let (service, environment) = (cx.r.service.clone(), cx.r.environment.clone());
    match cx.fx.control_rollout(&service, &environment, action).await {
        Ok(()) => Ok(()),
        Err(err) if err.retryable => Err(cx.retry_later(&err)),
        Err(err) => Err(cx.abort(&format!("the deployer refused {action:?} on the Rollout: {err}"), true)),
    }
}
