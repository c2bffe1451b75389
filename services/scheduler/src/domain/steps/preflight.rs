//! `preflight`: the runbook's checklist, right before the first change. A failed check aborts the
//! release with every failure as the reason, and nothing has been touched. A dependency that does
//! not answer is asked again until `preflight_patience` runs out.

use super::{
    Next, StepCtx,
    analysis::{analysis_track, builtin_args},
};
use crate::domain::{
    effects::{Effects, PreflightRequest},
    plan::StepAction,
    release::StepStatus,
};

/// Asks for every check the plan needs and completes or aborts on the answer.
pub async fn run<E: Effects>(cx: &mut StepCtx<'_, E>, dependencies: &[String]) -> Next {
    let ends = cx.later(cx.settings.preflight_patience);
    let patience = *cx.r.cursor.until.get_or_insert(ends);
    let r = &*cx.r;
    let mut analyses = Vec::new();
    for (spec, kind) in r.plan.steps.iter().filter_map(|step| step.action.analysis_run()) {
        analyses.push((spec.clone(), builtin_args(r, spec, analysis_track(r, kind))));
    }
    if let Some(bg) = &r.plan.background {
        analyses.push((bg.analysis.clone(), builtin_args(r, &bg.analysis, "canary")));
    }
    let migrations = r.plan.steps.iter().find_map(|step| match &step.action {
        StepAction::Migrate { database, locations, .. } => Some((database.clone(), locations.clone())),
        _ => None,
    });
    let request = PreflightRequest {
        service: r.service.clone(),
        environment: r.environment.clone(),
        analyses,
        migrations,
        dependencies: dependencies.to_vec(),
    };
    let checks = match cx.fx.preflight(&request).await {
        Ok(checks) => checks,
        Err(err) if err.retryable && cx.now < patience => return cx.retry_later(&err),
        Err(err) => return cx.abort(&format!("preflight failed: {err}"), true),
    };
    let failed: Vec<String> = checks.iter().filter(|c| !c.ok).map(|c| format!("{}: {}", c.name, c.message)).collect();
    let total = checks.len();
    cx.r.preflight = checks;
    if failed.is_empty() {
        cx.complete(StepStatus::Succeeded, &format!("preflight passed ({total} checks)"))
    } else {
        cx.abort(&format!("preflight failed: {}", failed.join("; ")), true)
    }
}
