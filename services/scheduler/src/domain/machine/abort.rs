//! After an abort: traffic goes back to the previous version, then the schema the release
//! changed is undone or frozen, then analysis runs still measuring are ended and the release
//! settles.

use crate::domain::{
    config::OnAbort,
    effects::{EffectError, Effects, MigrationAction, MigrationPhase, MigrationRequest, RolloutControl},
    machine::idempotency_key,
    plan::StepAction,
    release::{Phase, Release},
    steps::{
        Next, StepCtx,
        remote::{self, MigrationRun, Watched},
        traffic::rollback_state,
    },
};
use hopngo_proto::transitions::TransitionKind;

/// Returns traffic to the previous version, then settles the schema.
pub async fn roll_back<E: Effects>(cx: &mut StepCtx<'_, E>) -> Next {
    if cx.r.abort.as_ref().is_some_and(|a| a.traffic_back) {
        return schema_after_abort(cx).await;
    }
    if let Some(deadline) = cx.r.progress_deadline_at
        && cx.now >= deadline
    {
        let detail = cx.r.last_error.clone().unwrap_or_else(|| "not converged".into());
        return fail(cx, format!("could not return traffic to stable before the progress deadline: {detail}"));
    }
    let Some(rollback) = rollback_state(cx.r).filter(|_| cx.r.traffic_touched) else {
        cx.r.message = abort_summary(cx.r);
        if let Some(a) = cx.r.abort.as_mut() {
            a.traffic_back = true;
        }
        return schema_after_abort(cx).await;
    };
    if !cx.r.abort.as_ref().is_some_and(|a| a.rollback_applied) {
        // Argo mode: Argo's own abort first (all traffic to stable at once, as `kubectl argo
        // rollouts abort`), then the stable artifact back on the Rollout so it ends Healthy
        // rather than Degraded. Sending it twice changes nothing.
        if cx.r.plan.steps.iter().any(|s| matches!(s.action, StepAction::ArgoRollout { .. })) {
            let (service, environment) = (cx.r.service.clone(), cx.r.environment.clone());
            match cx.fx.control_rollout(&service, &environment, RolloutControl::Abort).await {
                Err(err) if err.retryable => return cx.retry_later(&err),
                // Refused (the Rollout is gone, say): setting the stable artifact still applies,
                // and the release's message keeps why Argo's abort was not sent.
                Err(err) => cx.r.message = format!("Argo's abort refused: {err}"),
                Ok(()) => {}
            }
        }
        let key = idempotency_key(cx.r, "abort");
        if let Err(err) = cx.fx.apply_target(&key, &rollback).await {
            return if err.retryable { cx.retry_later(&err) } else { refused(cx, &err) };
        }
        cx.r.failures = 0;
        if let Some(a) = cx.r.abort.as_mut() {
            a.rollback_applied = true;
        }
    }
    match cx.fx.target_status(&cx.r.service, &cx.r.environment).await {
        Err(err) if err.retryable => cx.retry_later(&err),
        Err(err) => refused(cx, &err),
        Ok(obs) if obs.converged && obs.canary_weight == 0 => {
            let r = &mut *cx.r;
            r.failures = 0;
            r.canary_weight = 0;
            r.routes = Default::default();
            r.switched = false;
            let from = r.phase;
            r.message = abort_summary(r);
            let message = r.message.clone();
            cx.record(TransitionKind::RolledBack, from, message);
            if let Some(a) = cx.r.abort.as_mut() {
                a.traffic_back = true;
            }
            schema_after_abort(cx).await
        }
        Ok(obs) => {
            cx.r.message = format!("returning traffic to stable: {}", obs.message);
            cx.poll_later()
        }
    }
}

/// What an abort did with the traffic (the message of a settled abort starts with it).
pub fn abort_summary(r: &Release) -> String {
    let reason = r.abort.as_ref().map(|a| a.reason.as_str()).unwrap_or("");
    if !r.traffic_touched {
        format!("aborted: {reason}")
    } else if rollback_state(r).is_none() {
        format!("aborted: {reason}; no earlier version to return to")
    } else {
        format!("traffic back on {}; aborted: {reason}", r.stable_artifact.as_deref().unwrap_or("stable"))
    }
}

/// Once traffic is back on the previous version (so no code that needs the new schema runs),
/// the schema the release's migrate step changed is undone or frozen, as its service says.
async fn schema_after_abort<E: Effects>(cx: &mut StepCtx<'_, E>) -> Next {
    let Some(change) = cx.r.schema.clone().filter(|c| !c.settled && c.before != c.after) else {
        return cleanup(cx).await;
    };
    let from = cx.r.phase;
    let settle = |cx: &mut StepCtx<'_, E>, kind: TransitionKind, text: String| {
        if let Some(c) = cx.r.schema.as_mut() {
            c.settled = true;
        }
        cx.r.message = format!("{}; {text}", abort_summary(cx.r));
        cx.record(kind, from, text);
    };
    let before = if change.before.is_empty() { "no version".to_string() } else { format!("version {}", change.before) };
    if change.on_abort == OnAbort::Freeze {
        let text = format!(
            "schema of {} stays at version {} (onAbort: freeze; it was at {before})",
            change.database, change.after
        );
        settle(cx, TransitionKind::SchemaFrozen, text);
        return cleanup(cx).await;
    }
    if cx.r.progress_deadline_at.is_some_and(|d| cx.now >= d) {
        let detail = cx.r.last_error.clone().unwrap_or_else(|| "the undo did not finish".into());
        let text = format!(
            "schema of {} could not be undone to {before} before the progress deadline ({detail}); it may be at version {}",
            change.database, change.after
        );
        settle(cx, TransitionKind::SchemaUndoFailed, text);
        return cleanup(cx).await;
    }
    let run = MigrationRun {
        label: "abort-undo".into(),
        request: MigrationRequest {
            database: change.database.clone(),
            locations: change.locations.clone(),
            action: MigrationAction::Undo { to_version: (!change.before.is_empty()).then(|| change.before.clone()) },
        },
    };
    let watched = remote::watch(cx, change.undo_run.clone(), &run, |cx, id| {
        if let Some(c) = cx.r.schema.as_mut() {
            c.undo_run = Some(id.to_string());
        }
    })
    .await;
    let (run_id, obs) = match watched {
        Watched::Seen { run_id, obs } => (run_id, obs),
        Watched::Later(next) => return next,
        Watched::Refused(refusal) => {
            let (kind, text) = match refusal.run_id {
                // Refused before anything ran (no undo script for a migration, a failed
                // migration in the history): the schema stays, as with `freeze`.
                None => (
                    TransitionKind::SchemaFrozen,
                    format!(
                        "schema of {} stays at version {}: the undo was refused ({})",
                        change.database, change.after, refusal.err
                    ),
                ),
                Some(run_id) => (
                    TransitionKind::SchemaUndoFailed,
                    format!("schema undo {run_id}: {}; the schema may be at version {}", refusal.err, change.after),
                ),
            };
            settle(cx, kind, text);
            return cleanup(cx).await;
        }
    };
    match obs.phase {
        MigrationPhase::Succeeded => {
            let text = format!("schema of {} undone to {before} (was {})", change.database, change.after);
            settle(cx, TransitionKind::SchemaUndone, text);
            cleanup(cx).await
        }
        MigrationPhase::Failed => {
            let text = format!(
                "schema undo of {} failed: {}; it is at version {}",
                change.database,
                obs.message,
                if obs.version_after.is_empty() { change.after.clone() } else { obs.version_after.clone() }
            );
            settle(cx, TransitionKind::SchemaUndoFailed, text);
            cleanup(cx).await
        }
        MigrationPhase::Pending | MigrationPhase::Running => {
            cx.r.failures = 0;
            cx.r.message = format!(
                "{}; undoing the schema of {} to {before} (run {run_id}): {}",
                abort_summary(cx.r),
                change.database,
                obs.message
            );
            cx.poll_later()
        }
    }
}

/// Terminates analysis runs still measuring, then settles.
pub async fn cleanup<E: Effects>(cx: &mut StepCtx<'_, E>) -> Next {
    let open: Vec<String> = cx.r.analysis_runs.iter().filter(|a| !a.done).map(|a| a.run_id.clone()).collect();
    for run_id in open {
        let reason = format!("release {}", cx.r.phase.as_str().to_lowercase());
        match cx.fx.terminate_analysis(&run_id, &reason).await {
            Ok(obs) => {
                crate::domain::steps::analysis::update_run(cx.r, &run_id, obs.phase, &obs.message);
                mark_run_done(cx.r, &run_id);
            }
            Err(err) if err.retryable && cx.r.failures < 10 => return cx.retry_later(&err),
            Err(err) => {
                // The analyzer ends runs on its own (count, TTL); settling must not hang on it.
                cx.r.message = format!("{}; analysis run {run_id} left running: {err}", cx.r.message);
                mark_run_done(cx.r, &run_id);
            }
        }
    }
    cx.r.failures = 0;
    cx.r.settled = true;
    Next::Wait(None)
}

fn mark_run_done(r: &mut Release, run_id: &str) {
    for a in r.analysis_runs.iter_mut().filter(|a| a.run_id == run_id) {
        a.done = true;
    }
}

/// The deployer refused the way back: a person must act.
fn refused<E: Effects>(cx: &mut StepCtx<'_, E>, err: &EffectError) -> Next {
    fail(cx, format!("could not return traffic to stable: {err}"))
}

fn fail<E: Effects>(cx: &mut StepCtx<'_, E>, message: String) -> Next {
    let from = cx.r.phase;
    cx.r.phase = Phase::Failed;
    cx.r.finished_at = Some(cx.now);
    cx.r.message = message.clone();
    cx.record(TransitionKind::Failed, from, message);
    Next::Continue
}
