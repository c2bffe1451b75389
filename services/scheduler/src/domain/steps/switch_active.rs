//! Blue/green `switchActive`: the new version takes all traffic; the old one stays on preview
//! until `scaleDownOld`.

use super::{Next, StepCtx, traffic};
use crate::domain::effects::Effects;

/// Switches and waits until the switch is in force.
pub async fn run<E: Effects>(cx: &mut StepCtx<'_, E>) -> Next {
    let state = traffic::blue_green_state(cx.r, true, cx.r.plan.replicas);
    traffic::converge(cx, state, |r| {
        r.switched = true;
        r.canary_weight = 100;
    })
    .await
}
