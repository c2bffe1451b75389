//! `maintenanceWindow`: waits for one of the environment's maintenance windows (paused, so the
//! progress deadline does not run; a promote skips the wait).

use time::OffsetDateTime;

use super::{Next, StepCtx};
use crate::domain::{
    config::{
        MaintenanceWindow,
        window::{WindowState, window_state},
    },
    effects::Effects,
    machine::rfc3339,
    release::StepStatus,
};

/// Completes the step while a window is open; pauses until the next one opens otherwise.
pub fn run<E: Effects>(cx: &mut StepCtx<'_, E>, windows: &[MaintenanceWindow]) -> Next {
    let parsed: Result<Vec<_>, String> = windows.iter().map(|w| w.parse()).collect();
    let parsed = match parsed {
        Ok(p) => p,
        Err(e) => return cx.abort(&format!("maintenance window: {e}"), true),
    };
    let at = |secs: i64| OffsetDateTime::from_unix_timestamp(secs).map(rfc3339).unwrap_or_else(|_| secs.to_string());
    match window_state(&parsed, cx.now.unix_timestamp()) {
        WindowState::Open { closes_at } => {
            cx.complete(StepStatus::Succeeded, &format!("maintenance window open until {}", at(closes_at)))
        }
        WindowState::Closed { opens_at } => {
            let until = OffsetDateTime::from_unix_timestamp(opens_at).unwrap_or(cx.now).max(cx.now);
            let message = format!("waiting for the maintenance window opening at {} (promote to go now)", at(opens_at));
            cx.pause(Some(until), &message)
        }
        WindowState::Never => cx.abort("no maintenance window opens within five years", true),
    }
}
