//! `setCanaryScale`: how many replicas the canary runs, apart from its traffic weight.

use super::{Next, StepCtx, traffic};
use crate::domain::{effects::Effects, plan::CanaryScale};

/// Scales the canary at the weight in force.
pub async fn run<E: Effects>(cx: &mut StepCtx<'_, E>, scale: CanaryScale) -> Next {
    cx.r.canary_scale = scale;
    let state = traffic::canary_state(cx.r, cx.r.canary_weight);
    traffic::converge(cx, state, |_| {}).await
}
