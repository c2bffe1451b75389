//! The background analysis: measures beside the steps from its starting step until the last
//! step is done, and acts on its verdict like a step analysis would (abort, pause for a person,
//! notify, or a grace period that holds traffic where it is).

use time::OffsetDateTime;

use crate::domain::{
    decision::{Decision, decide},
    effects::{Effects, RunPhase},
    machine::{earliest, rfc3339},
    release::Phase,
    steps::{AnalysisRun, Next, StepCtx, analysis},
};
use hopngo_proto::transitions::TransitionKind;

/// What the steps do beside the background analysis.
pub enum Beside {
    /// The steps go on; look again at this time at the latest (the run is measuring).
    Steps(Option<OffsetDateTime>),
    /// The steps wait: return this.
    Stop(Next),
}

/// Watches the background analysis if the plan has one and it is due.
pub async fn watch<E: Effects>(cx: &mut StepCtx<'_, E>) -> Beside {
    let r = &*cx.r;
    let Some(bg) = r.plan.background.clone().filter(|bg| {
        !r.background_done && !r.promote_full && r.step_index >= bg.starting_step && r.step_index < r.plan.steps.len()
    }) else {
        return Beside::Steps(None);
    };
    if cx.r.background_run.is_none()
        && let Some(until) = cx.r.background_grace.hold(cx.now)
    {
        return Beside::Stop(analysis::held(cx.r, "background", until));
    }
    let label = if cx.r.background_grace.rechecked { "background-recheck" } else { "background" };
    let run = AnalysisRun::new(&bg.analysis, "background", "canary", label.to_string());
    let existing = cx.r.background_run.clone();
    let watched = analysis::watch(cx, existing, &run, |cx, id| {
        cx.r.background_run = Some(id.to_string());
    })
    .await;
    let (run_id, obs) = match watched.or_abort(cx, "background analysis", false) {
        Ok(seen) => seen,
        Err(next) => return Beside::Stop(next),
    };
    analysis::update_run(cx.r, &run_id, obs.phase, &obs.message);
    if matches!(obs.phase, RunPhase::Pending | RunPhase::Running) {
        let wake = Some(cx.later(cx.settings.poll_interval));
        if cx.r.background_grace.rechecked {
            // The plan waits for the re-check: traffic stays where the failure found it.
            let ends = cx.later(analysis::settle_time(&bg.analysis));
            let settle = *cx.r.background_grace.settle_until.get_or_insert(ends);
            if cx.now < settle {
                cx.r.message = format!(
                    "measuring again after a high-severity failure; traffic held until {} (aborts if it still fails)",
                    rfc3339(settle)
                );
                return Beside::Stop(Next::Wait(earliest(Some(settle), wake)));
            }
            // It did not last: the same run goes on watching, and a new failure gets a new grace.
            cx.r.background_grace = Default::default();
            cx.r.message = "background analysis passed again after the grace period; continuing".into();
        }
        return Beside::Steps(wake);
    }
    analysis::record_analysis_done(cx, &run_id, &obs);
    let what = format!("background analysis {}", analysis::verdict_text(&obs));
    match decide(obs.phase, obs.severity, cx.r.background_grace.rechecked) {
        Decision::Continue => cx.r.background_done = true,
        Decision::Abort => {
            cx.r.background_done = true;
            return Beside::Stop(cx.abort(&what, false));
        }
        Decision::Pause => {
            cx.r.background_done = true;
            cx.r.held_for_person = true;
            let text = format!("{what}; promote to continue or abort");
            // Also when a timed pause step had paused it: now it waits for a person.
            let from = cx.r.phase;
            cx.r.phase = Phase::Paused;
            cx.r.progress_deadline_at = None;
            cx.r.message = text.clone();
            cx.record(TransitionKind::Paused, from, text);
            return Beside::Stop(Next::Wait(None));
        }
        Decision::Notify => {
            cx.r.background_done = true;
            analysis::notify_only(cx, &what);
        }
        Decision::Grace => {
            cx.r.background_run = None;
            let until = analysis::start_grace(cx, &what);
            cx.r.background_grace.until = Some(until);
            return Beside::Stop(Next::Wait(Some(until)));
        }
    }
    Beside::Steps(None)
}
