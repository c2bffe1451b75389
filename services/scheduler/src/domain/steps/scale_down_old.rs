//! Blue/green `scaleDownOld`: the old version keeps running on preview for `delay` after the
//! switch (a quick way back), then goes.

use std::time::Duration;

use super::{Next, StepCtx, traffic};
use crate::domain::{effects::Effects, machine::rfc3339};

/// Waits out the delay, then leaves only the new version.
pub async fn run<E: Effects>(cx: &mut StepCtx<'_, E>, delay: Duration) -> Next {
    let ends = cx.later(delay);
    let until = *cx.r.cursor.until.get_or_insert(ends);
    if cx.now < until {
        cx.r.message = format!("old version scales down at {}", rfc3339(until));
        return Next::Wait(Some(until));
    }
    let state = traffic::final_state(cx.r);
    traffic::converge(cx, state, |_| {}).await
}
