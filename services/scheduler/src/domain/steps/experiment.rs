//! `experiment`: the canary judged against a baseline of the stable artifact (Kayenta). Both run
//! `replicas` fresh replicas at `weight` percent each; two analysis runs measure the template's
//! metrics for each track; at the end of every interval every sample taken so far is judged. A
//! score below marginal aborts at once; the last interval's score decides: pass goes on, marginal
//! waits for a person (promote accepts it, abort aborts). The baseline is removed and the canary's
//! weight restored before the step ends; an abort's return to stable removes both.

use super::{
    Next, StepCtx,
    analysis::{AnalysisRun, update_run},
    remote::RemoteRun,
    traffic,
};
use crate::domain::{
    effects::{EffectError, Effects, JudgeRequest, JudgedMetric, RunPhase, RunSamples},
    machine::{after, idempotency_key, rfc3339},
    plan::ExperimentSpec,
    release::{AnalysisRecord, ExperimentRecord, IntervalJudgement, Phase, StepStatus},
};
use hopngo_proto::transitions::TransitionKind;

/// The tracks an experiment's runs measure, as their `track` argument says.
const TRACKS: [&str; 2] = ["baseline", "canary"];

/// Moves the experiment as far as it can go now.
pub async fn run<E: Effects>(cx: &mut StepCtx<'_, E>, spec: &ExperimentSpec) -> Next {
    if cx.r.phase == Phase::Paused {
        // Marginal: waits for a person (promote accepts, abort aborts).
        return Next::Wait(None);
    }
    let at = record(cx, spec);
    if cx.r.experiments[at].verdict.is_some() {
        return end(cx, at).await;
    }
    if cx.r.experiments[at].started_at.is_none() {
        return start(cx, at, spec).await;
    }
    judge_when_due(cx, at, spec).await
}

/// The record of this step and attempt, created on the first look.
fn record<E: Effects>(cx: &mut StepCtx<'_, E>, spec: &ExperimentSpec) -> usize {
    let r = &mut *cx.r;
    if let Some(at) = r.experiments.iter().position(|e| e.step_index == r.step_index && e.attempt == r.attempt) {
        return at;
    }
    r.experiments.push(ExperimentRecord {
        step_index: r.step_index,
        attempt: r.attempt,
        baseline_artifact: r.stable_artifact.clone().unwrap_or_else(|| r.artifact.clone()),
        canary_artifact: r.artifact.clone(),
        weight: spec.weight,
        intervals: spec.intervals,
        pass: spec.thresholds.pass,
        marginal: spec.thresholds.marginal,
        baseline_run: None,
        canary_run: None,
        started_at: None,
        judged: Vec::new(),
        verdict: None,
        ended: false,
    });
    r.experiments.len() - 1
}

/// Brings up both tracks, then starts both runs once the tracks serve their weight.
async fn start<E: Effects>(cx: &mut StepCtx<'_, E>, at: usize, spec: &ExperimentSpec) -> Next {
    let state = traffic::experiment_state(cx.r, spec);
    let key = idempotency_key(cx.r, &cx.r.step_index.to_string());
    if let Err(next) = traffic::apply_once(cx, &key, &state, "the experiment's tracks", true, |_| {}).await {
        return next;
    }
    match traffic::observe(cx, true).await {
        Err(next) => return next,
        Ok(obs) if obs.converged && obs.canary_weight == spec.weight => {}
        Ok(obs) => {
            cx.r.failures = 0;
            cx.r.message = format!("experiment: converging: {}", obs.message);
            return cx.poll_later();
        }
    }
    for track in TRACKS {
        if run_id(&cx.r.experiments[at], track).is_some() {
            continue;
        }
        let run = AnalysisRun::new(&spec.analysis, "experiment", track, format!("{}-{track}", cx.r.step_index));
        let id = match run.start(cx.fx, cx.r).await {
            Ok(id) => id,
            Err(err) => return refused(cx, &format!("the experiment's {track} analysis could not start"), &err),
        };
        let e = &mut cx.r.experiments[at];
        match track {
            "baseline" => e.baseline_run = Some(id.clone()),
            _ => e.canary_run = Some(id.clone()),
        }
        cx.r.analysis_runs.push(AnalysisRecord {
            run_id: id.clone(),
            kind: format!("experiment-{track}"),
            step_index: cx.r.step_index,
            phase: RunPhase::Pending.as_str().into(),
            message: String::new(),
            done: false,
            severity: None,
        });
        let from = cx.r.phase;
        cx.record(TransitionKind::AnalysisStarted, from, format!("experiment {track} analysis {id}"));
    }
    cx.r.failures = 0;
    cx.r.experiments[at].started_at = Some(cx.now);
    // The experiment takes as long as it takes; the deadline watches what comes after it.
    cx.r.progress_deadline_at = Some(after(after(cx.now, spec.duration()), cx.r.plan.progress_deadline.0));
    Next::Continue
}

fn run_id<'a>(e: &'a ExperimentRecord, track: &str) -> Option<&'a String> {
    match track {
        "baseline" => e.baseline_run.as_ref(),
        _ => e.canary_run.as_ref(),
    }
}

/// A failure: retried later if it may pass, else the release aborts saying `what`.
fn refused<E: Effects>(cx: &mut StepCtx<'_, E>, what: &str, err: &EffectError) -> Next {
    if err.retryable {
        return cx.retry_later(err);
    }
    cx.abort(&format!("{what}: {err}"), true)
}

/// At the end of the next interval: reads both samples, judges them, acts on the score.
async fn judge_when_due<E: Effects>(cx: &mut StepCtx<'_, E>, at: usize, spec: &ExperimentSpec) -> Next {
    let e = &cx.r.experiments[at];
    let index = e.judged.len() as u32 + 1;
    let started = e.started_at.unwrap_or(cx.now);
    let due = after(started, spec.interval.0 * index);
    if cx.now < due {
        let last = e.judged.last().map(|j| format!("; interval {} scored {:.0}", j.index, j.score)).unwrap_or_default();
        cx.r.message = format!("experiment: judging interval {index}/{} at {}{last}", spec.intervals, rfc3339(due));
        return Next::Wait(Some(due));
    }
    let mut samples: Vec<RunSamples> = Vec::new();
    for track in TRACKS {
        let Some(id) = run_id(&cx.r.experiments[at], track).cloned() else {
            return cx.abort(&format!("the experiment's {track} analysis was never started"), true);
        };
        let seen = match cx.fx.analysis_samples(&id).await {
            Ok(seen) => seen,
            Err(err) => return refused(cx, &format!("the experiment's {track} analysis {id}"), &err),
        };
        let obs = &seen.observation;
        update_run(cx.r, &id, obs.phase, &obs.message);
        if matches!(obs.phase, RunPhase::Failed | RunPhase::Error | RunPhase::Inconclusive) {
            let reason =
                format!("the experiment's {track} measurements failed ({}): {}", obs.phase.as_str(), obs.message);
            return cx.abort(&reason, true);
        }
        samples.push(seen);
    }
    let last = index >= spec.intervals;
    if last && samples.iter().any(|s| matches!(s.observation.phase, RunPhase::Pending | RunPhase::Running)) {
        cx.r.failures = 0;
        cx.r.message = format!("experiment: interval {index}/{}: waiting for the last measurements", spec.intervals);
        return cx.poll_later();
    }
    let (baseline, canary) = (&samples[0].samples, &samples[1].samples);
    let request = JudgeRequest {
        metrics: spec
            .analysis
            .metrics
            .iter()
            .map(|m| JudgedMetric {
                name: m.name.clone(),
                baseline: baseline.get(&m.name).cloned().unwrap_or_default(),
                canary: canary.get(&m.name).cloned().unwrap_or_default(),
                judge: spec.judges.get(&m.name).cloned().unwrap_or_default(),
            })
            .collect(),
        group_weights: spec.group_weights.clone(),
        thresholds: spec.thresholds,
    };
    let judgement = match cx.fx.judge(&request).await {
        Ok(j) => j,
        Err(err) => return refused(cx, "the experiment's judge", &err),
    };
    cx.r.failures = 0;
    let text = format!(
        "experiment interval {index}/{}: score {:.0} ({}): {}",
        spec.intervals, judgement.score, judgement.verdict, judgement.reason
    );
    let verdict = judgement.verdict.clone();
    let score = judgement.score;
    cx.r.experiments[at].judged.push(IntervalJudgement {
        index,
        score,
        verdict: verdict.clone(),
        reason: judgement.reason,
        at: cx.now,
        metrics: judgement.metrics,
        group_scores: judgement.group_scores,
    });
    let from = cx.r.phase;
    cx.record(TransitionKind::AnalysisCompleted, from, text.clone());
    let (pass, marginal) = (spec.thresholds.pass, spec.thresholds.marginal);
    match verdict.as_str() {
        "fail" => {
            cx.r.experiments[at].verdict = Some(verdict);
            cx.abort(&format!("{text} (below marginal {marginal})"), true)
        }
        _ if !last => Next::Continue,
        "pass" => {
            cx.r.experiments[at].verdict = Some(verdict);
            Next::Continue
        }
        _ => {
            cx.r.experiments[at].verdict = Some(verdict);
            cx.pause(None, &format!("{text} (pass is {pass}); promote to accept it or abort"))
        }
    }
}

/// The experiment is decided (passed, or marginal and accepted): the baseline goes and the
/// canary returns to the release's weight, then the step completes.
async fn end<E: Effects>(cx: &mut StepCtx<'_, E>, at: usize) -> Next {
    let state = traffic::canary_state(cx.r, cx.r.canary_weight);
    if !cx.r.experiments[at].ended {
        let key = idempotency_key(cx.r, &format!("{}-end", cx.r.step_index));
        if let Err(err) = cx.fx.apply_target(&key, &state).await {
            return refused(cx, "deployer refused removing the experiment's baseline", &err);
        }
        cx.r.experiments[at].ended = true;
    }
    match traffic::observe(cx, true).await {
        Err(next) => next,
        Ok(obs) if obs.converged && obs.canary_weight == state.canary_weight => {
            let e = &cx.r.experiments[at];
            let score = e.judged.last().map_or(0.0, |j| j.score);
            let how = e.verdict.clone().unwrap_or_default();
            cx.complete(StepStatus::Succeeded, &format!("experiment {how}: score {score:.0}"))
        }
        Ok(obs) => {
            cx.r.failures = 0;
            cx.r.message = format!("experiment over; removing the baseline: {}", obs.message);
            cx.poll_later()
        }
    }
}
