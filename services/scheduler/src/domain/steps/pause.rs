//! `pause`: waits for `duration`, or (without one) until a person promotes.

use std::time::Duration;

use super::{Next, StepCtx};
use crate::domain::{effects::Effects, machine::rfc3339, release::StepStatus};

/// Pauses, and completes the step once a timed pause has elapsed.
pub fn run<E: Effects>(cx: &mut StepCtx<'_, E>, duration: Option<Duration>) -> Next {
    let Some(duration) = duration else {
        let message = format!("paused at step {} until promoted", cx.r.step_index);
        return cx.pause(None, &message);
    };
    let ends = cx.later(duration);
    let until = *cx.r.cursor.until.get_or_insert(ends);
    if cx.now >= until {
        return cx.complete(StepStatus::Succeeded, "pause elapsed");
    }
    cx.pause(Some(until), &format!("paused until {}", rfc3339(until)))
}
