//! The steps that run an analysis and act on its verdict: `analysis`, `verify` and blue/green's
//! `prePromotionAnalysis` and `postPromotionAnalysis` (they differ only in the track they look
//! at and their `kind` label). The background analysis (`machine::background`) shares the
//! starting, the verdicts and the grace period here.

use std::{collections::BTreeMap, future::Future, time::Duration};

use time::OffsetDateTime;

use super::{
    Next, StepCtx,
    remote::{self, RemoteRun, Watched},
};
use crate::domain::{
    config::Severity,
    decision::{Decision, decide},
    effects::{EffectError, Effects, RunObservation, RunPhase},
    machine::{idempotency_key, rfc3339},
    plan::{AnalysisSpec, PlanStrategy, TrafficModel},
    release::{AnalysisRecord, Phase, Release, StepStatus},
};
use hopngo_proto::transitions::TransitionKind;

/// An analysis run on the analyzer.
pub struct AnalysisRun<'a> {
    spec: &'a AnalysisSpec,
    kind: &'a str,
    track: &'static str,
    label: String,
}

impl<'a> AnalysisRun<'a> {
    /// The run of `spec` for the release's current step (or background), as `kind` looking at
    /// `track`; `label` makes its idempotency key.
    pub fn new(spec: &'a AnalysisSpec, kind: &'a str, track: &'static str, label: String) -> AnalysisRun<'a> {
        AnalysisRun { spec, kind, track, label }
    }
}

impl RemoteRun for AnalysisRun<'_> {
    type Observation = RunObservation;

    fn start<E: Effects>(&self, fx: &E, r: &Release) -> impl Future<Output = Result<String, EffectError>> + Send {
        let key = idempotency_key(r, &self.label);
        let args = builtin_args(r, self.spec, self.track);
        let labels = labels(r, self.kind);
        async move { fx.start_analysis(&key, self.spec, &args, &labels).await }
    }

    fn status<E: Effects>(
        &self,
        fx: &E,
        run_id: &str,
    ) -> impl Future<Output = Result<RunObservation, EffectError>> + Send {
        fx.analysis_status(run_id)
    }
}

/// Starts (once) and polls an analysis run; a new run is listed on the release and announced,
/// and `started` remembers its id where the caller keeps it.
pub async fn watch<E: Effects>(
    cx: &mut StepCtx<'_, E>,
    existing: Option<String>,
    run: &AnalysisRun<'_>,
    started: impl FnOnce(&mut StepCtx<'_, E>, &str),
) -> Watched<RunObservation> {
    let kind = run.kind;
    remote::watch(cx, existing, run, |cx, id| {
        started(cx, id);
        cx.r.analysis_runs.push(AnalysisRecord {
            run_id: id.to_string(),
            kind: kind.to_string(),
            step_index: cx.r.step_index,
            phase: RunPhase::Pending.as_str().into(),
            message: String::new(),
            done: false,
            severity: None,
        });
        let from = cx.r.phase;
        cx.record(TransitionKind::AnalysisStarted, from, format!("{kind} analysis {id}"));
    })
    .await
}

/// Runs the step's analysis and acts on its verdict.
pub async fn run<E: Effects>(cx: &mut StepCtx<'_, E>, spec: &AnalysisSpec, kind: &str) -> Next {
    if cx.r.phase == Phase::Paused {
        // Inconclusive: waits for a person (promote skips, abort aborts).
        return Next::Wait(None);
    }
    if cx.r.cursor.run_id.is_none()
        && let Some(until) = cx.r.cursor.grace.hold(cx.now)
    {
        return held(cx.r, kind, until);
    }
    let label =
        if cx.r.cursor.grace.rechecked { format!("{}-recheck", cx.r.step_index) } else { cx.r.step_index.to_string() };
    let run = AnalysisRun::new(spec, kind, analysis_track(cx.r, kind), label);
    let existing = cx.r.cursor.run_id.clone();
    let watched = watch(cx, existing, &run, |cx, id| cx.remember_step_run(id)).await;
    let (run_id, obs) = match watched.or_abort(cx, "analysis", true) {
        Ok(seen) => seen,
        Err(next) => return next,
    };
    cx.r.failures = 0;
    update_run(cx.r, &run_id, obs.phase, &obs.message);
    if matches!(obs.phase, RunPhase::Pending | RunPhase::Running) {
        cx.r.message = format!("waiting for {kind} analysis {run_id}");
        return cx.poll_later();
    }
    record_analysis_done(cx, &run_id, &obs);
    let what = format!("{kind} analysis {}", verdict_text(&obs));
    match decide(obs.phase, obs.severity, cx.r.cursor.grace.rechecked) {
        Decision::Continue => cx.complete(StepStatus::Succeeded, "analysis successful"),
        Decision::Notify => {
            notify_only(cx, &what);
            cx.complete(StepStatus::Succeeded, &format!("{what}; notified only"))
        }
        Decision::Abort => cx.abort(&what, true),
        Decision::Pause => cx.pause(None, &format!("{what}; promote to continue or abort")),
        Decision::Grace => {
            cx.r.cursor.run_id = None;
            let until = start_grace(cx, &what);
            cx.r.cursor.grace.until = Some(until);
            Next::Wait(Some(until))
        }
    }
}

/// Which track an analysis of `kind` looks at: the new version's. A direct plan (first release)
/// has it on the stable or active track.
pub fn analysis_track(r: &Release, kind: &str) -> &'static str {
    match (kind, r.plan.strategy, r.plan.traffic) {
        ("prePromotion", ..) => "preview",
        ("postPromotion", ..) => "active",
        (_, PlanStrategy::Direct, TrafficModel::BlueGreen) => "active",
        (_, PlanStrategy::Direct, TrafficModel::Canary) => "stable",
        _ => "canary",
    }
}

/// The spec's arguments with the ones every run gets (what is released, where, on which track).
pub fn builtin_args(r: &Release, spec: &AnalysisSpec, track_name: &str) -> BTreeMap<String, String> {
    let mut args = spec.args.clone();
    args.insert("service".into(), r.service.clone());
    args.insert("environment".into(), r.environment.clone());
    args.insert("artifact".into(), r.artifact.clone());
    args.insert("revision".into(), r.revision.to_string());
    args.insert("release".into(), r.id.to_string());
    args.insert("track".into(), track_name.to_string());
    args.insert("address".into(), r.address.clone());
    args
}

/// The labels a run carries, so runs can be found by release, step and attempt.
pub fn labels(r: &Release, kind: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("release".to_string(), r.id.to_string()),
        ("service".to_string(), r.service.clone()),
        ("environment".to_string(), r.environment.clone()),
        ("kind".to_string(), kind.to_string()),
        ("step".to_string(), r.step_index.to_string()),
        ("attempt".to_string(), r.attempt.to_string()),
    ])
}

/// Copies a run's phase onto the release's list of runs.
pub fn update_run(r: &mut Release, run_id: &str, phase: RunPhase, message: &str) {
    for a in r.analysis_runs.iter_mut().filter(|a| a.run_id == run_id) {
        a.phase = phase.as_str().to_string();
        a.message = message.to_string();
        if !matches!(phase, RunPhase::Pending | RunPhase::Running) {
            a.done = true;
        }
    }
}

/// Records a run's verdict (with its severity when it did not succeed).
pub fn record_analysis_done<E: Effects>(cx: &mut StepCtx<'_, E>, run_id: &str, obs: &RunObservation) {
    if obs.phase != RunPhase::Successful {
        for a in cx.r.analysis_runs.iter_mut().filter(|a| a.run_id == run_id) {
            a.severity = Some(obs.severity);
        }
    }
    let from = cx.r.phase;
    let severity =
        if obs.phase == RunPhase::Successful { String::new() } else { format!(" ({})", severity_text(obs.severity)) };
    cx.record(
        TransitionKind::AnalysisCompleted,
        from,
        format!("analysis {run_id} {}{severity}: {}", obs.phase.as_str(), obs.message),
    );
}

fn severity_text(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::High => "high severity",
        Severity::Medium => "medium severity",
        Severity::Low => "low severity",
    }
}

/// "failed (critical): ..." for messages.
pub fn verdict_text(obs: &RunObservation) -> String {
    format!("{} ({}): {}", obs.phase.as_str().to_lowercase(), severity_text(obs.severity), obs.message)
}

/// Low severity: the failure is an event for the notifier; the release carries on.
pub fn notify_only<E: Effects>(cx: &mut StepCtx<'_, E>, what: &str) {
    let from = cx.r.phase;
    cx.r.message = format!("{what}; notified, continuing");
    cx.record(TransitionKind::AnalysisCompleted, from, format!("{what}; notify only"));
}

/// How long a background re-check must run without failing: every metric measured twice.
pub fn settle_time(spec: &AnalysisSpec) -> Duration {
    spec.metrics
        .iter()
        .map(|m| {
            let delay = m.initial_delay.map(|d| d.0).unwrap_or_default();
            delay + 2 * m.interval.map(|d| d.0).unwrap_or(Duration::from_secs(10))
        })
        .max()
        .unwrap_or(Duration::from_secs(20))
}

/// Waits out a grace period's hold.
pub fn held(r: &mut Release, kind: &str, until: OffsetDateTime) -> Next {
    r.message =
        format!("holding traffic after a high-severity {kind} analysis failure; measuring again at {}", rfc3339(until));
    Next::Wait(Some(until))
}

/// High severity: hold traffic where it is for the grace period, then measure again; the
/// progress deadline is pushed past the hold so it does not abort first.
pub fn start_grace<E: Effects>(cx: &mut StepCtx<'_, E>, what: &str) -> OffsetDateTime {
    let until = cx.later(cx.settings.high_severity_grace);
    let r = &mut *cx.r;
    r.progress_deadline_at = Some(crate::domain::machine::after(until, r.plan.progress_deadline.0));
    r.message = format!("{what}; holding traffic, measuring again at {} (aborts if it still fails)", rfc3339(until));
    let from = r.phase;
    let message = r.message.clone();
    cx.record(TransitionKind::AnalysisCompleted, from, message);
    until
}
