//! After the last step: the new version becomes the only one, and the release succeeds.

use crate::domain::{
    effects::Effects,
    machine::{earliest, idempotency_key},
    plan::PlanStrategy,
    release::{Completion, Phase},
    steps::{
        Next, StepCtx,
        traffic::{apply_once, final_state, observe},
    },
};
use hopngo_proto::transitions::TransitionKind;

/// Applies the final state (unless the plan's last step did), waits for it, and succeeds.
pub async fn finalize<E: Effects>(cx: &mut StepCtx<'_, E>) -> Next {
    // A direct plan has already deployed the final state in its last step.
    let done_by_plan = cx.r.plan.strategy == PlanStrategy::Direct && !cx.r.promote_full;
    if !done_by_plan {
        let key = idempotency_key(cx.r, "final");
        let state = final_state(cx.r);
        if let Err(next) = apply_once(cx, &key, &state, "the final state", false, |r| r.canary_weight = 100).await {
            return next;
        }
        match observe(cx, false).await {
            Err(next) => return next,
            Ok(obs) if !(obs.converged && obs.canary_weight == 0) => {
                cx.r.message = format!("promoting: {}", obs.message);
                let poll = cx.later(cx.settings.poll_interval);
                return Next::Wait(earliest(Some(poll), cx.r.progress_deadline_at));
            }
            Ok(_) => {}
        }
    }
    let r = &mut *cx.r;
    let from = r.phase;
    r.phase = Phase::Succeeded;
    r.completion = Some(if r.promote_full { Completion::FastPromoted } else { Completion::Promoted });
    r.finished_at = Some(cx.now);
    r.canary_weight = 100;
    r.routes = Default::default();
    r.progress_deadline_at = None;
    r.message = format!("{} is stable", r.artifact);
    let message = r.message.clone();
    cx.record(TransitionKind::Succeeded, from, message);
    Next::Continue
}
