//! `setWeight`: the canary takes `weight` percent of the traffic.

use super::{Next, StepCtx, traffic};
use crate::domain::effects::Effects;

/// Applies the weight and waits until it is in force.
pub async fn run<E: Effects>(cx: &mut StepCtx<'_, E>, weight: u32) -> Next {
    let state = traffic::canary_state(cx.r, weight);
    traffic::converge(cx, state, |r| r.canary_weight = weight).await
}
