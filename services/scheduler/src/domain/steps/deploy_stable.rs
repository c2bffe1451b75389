//! `deployStable`: straight to the stable (or active) track, as a first release or an emergency
//! rollback does.

use super::{Next, StepCtx, traffic};
use crate::domain::{effects::Effects, plan::TrafficModel};

/// Deploys the new version as the only one and waits until it runs.
pub async fn run<E: Effects>(cx: &mut StepCtx<'_, E>) -> Next {
    let state = traffic::final_state(cx.r);
    traffic::converge(cx, state, |r| {
        r.canary_weight = 100;
        r.switched = r.plan.traffic == TrafficModel::BlueGreen;
    })
    .await
}
