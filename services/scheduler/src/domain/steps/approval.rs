//! `approval`: waits until enough distinct people approve (the approve and reject actions record
//! them); on timeout the policy approves or rejects.

use super::{Next, StepCtx};
use crate::domain::{
    config::TimeoutOutcome,
    effects::Effects,
    plan::ApprovalSpec,
    release::{Phase, StepStatus},
};
use hopngo_proto::transitions::TransitionKind;

/// Opens the gate once, then completes the step when the approvals are there.
pub fn run<E: Effects>(cx: &mut StepCtx<'_, E>, policy: &ApprovalSpec) -> Next {
    if !cx.r.cursor.applied {
        let timeout = policy.timeout.map(|t| cx.later(t.0));
        let r = &mut *cx.r;
        r.cursor.applied = true;
        r.cursor.until = timeout;
        let from = r.phase;
        r.phase = Phase::AwaitingApproval;
        r.progress_deadline_at = None;
        r.message = format!("waiting for {} approval(s)", policy.min_approvals);
        let message = r.message.clone();
        cx.record(TransitionKind::AwaitingApproval, from, message);
    }
    let count = cx.r.approvals_for_current_step().count() as u32;
    if count >= policy.min_approvals {
        return cx.complete(StepStatus::Succeeded, "approved");
    }
    match cx.r.cursor.until {
        Some(until) if cx.now >= until => match policy.on_timeout {
            TimeoutOutcome::Reject => cx.abort("approval timed out", true),
            TimeoutOutcome::Approve => cx.complete(StepStatus::Succeeded, "approval timed out; policy approves"),
        },
        until => Next::Wait(until),
    }
}
