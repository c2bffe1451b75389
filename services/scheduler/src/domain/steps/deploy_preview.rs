//! Blue/green `deployPreview`: the new version starts on the preview track, without traffic.

use super::{Next, StepCtx, traffic};
use crate::domain::effects::Effects;

/// Starts the preview with `replicas` and waits until it is ready.
pub async fn run<E: Effects>(cx: &mut StepCtx<'_, E>, replicas: u32) -> Next {
    let state = traffic::blue_green_state(cx.r, false, replicas);
    traffic::converge(cx, state, |_| {}).await
}
