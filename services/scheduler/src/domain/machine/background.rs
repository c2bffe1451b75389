//! The background analysis: measures beside the steps from its starting step until the last
//! step is done, and acts on its verdict like a step analysis would (abort, pause for a person,
//! notify, or a grace period that holds traffic where it is).

use time::OffsetDateTime;

use crate::domain::{
    decision::{Decision, decide},
    effects::{Effects, RunPhase},
    machine::{earliest, idempotency_key, rfc3339},
    plan::AnalysisSpec,
    release::{AnalysisRecord, Phase, REFERENCE_KIND},
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
        start_reference(cx, &bg.analysis).await;
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

/// The background analysis's metrics that measure a track, as dry runs (they decide nothing):
/// what the stable track is measured with beside the canary. None when no metric looks at a
/// track (a job, a query of the whole service): there is nothing to compare.
pub fn reference_spec(spec: &AnalysisSpec) -> Option<AnalysisSpec> {
    let metrics: Vec<_> = spec
        .metrics
        .iter()
        .filter(|m| {
            m.provider.job.is_none()
                && serde_json::to_string(&m.provider).is_ok_and(|text| text.contains("{{args.track}}"))
        })
        .cloned()
        .map(|mut m| {
            m.dry_run = true;
            m
        })
        .collect();
    (!metrics.is_empty()).then(|| AnalysisSpec { metrics, ..spec.clone() })
}

/// Starts, once per attempt, the stable track's reference run. It never holds the release: a
/// refusal is recorded and not tried again, a failure to reach the analyzer is tried again at
/// the next look (the same idempotency key returns the same run).
async fn start_reference<E: Effects>(cx: &mut StepCtx<'_, E>, spec: &AnalysisSpec) {
    if cx.r.background_reference.is_some() {
        return;
    }
    let Some(reference) = reference_spec(spec) else {
        cx.r.background_reference = Some(Err("no metric of the background analysis measures a track".into()));
        return;
    };
    let key = idempotency_key(cx.r, "background-reference");
    let args = analysis::builtin_args(cx.r, &reference, "stable");
    let labels = analysis::labels(cx.r, REFERENCE_KIND);
    match cx.fx.start_analysis(&key, &reference, &args, &labels).await {
        Ok(run_id) => {
            cx.r.analysis_runs.push(AnalysisRecord {
                run_id: run_id.clone(),
                kind: REFERENCE_KIND.into(),
                step_index: cx.r.step_index,
                phase: RunPhase::Running.as_str().into(),
                message: "the stable track, measured for comparison (dry run)".into(),
                done: false,
                severity: None,
            });
            cx.r.background_reference = Some(Ok(run_id));
        }
        Err(err) if err.retryable => {}
        Err(err) => cx.r.background_reference = Some(Err(err.to_string())),
    }
}
