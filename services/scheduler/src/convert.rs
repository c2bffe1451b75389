//! Domain → contract conversions for the release API.

use hopngo_proto::release as pb;
use time::OffsetDateTime;

use crate::{
    app::Group,
    domain::{
        plan::{PlanStrategy, StepAction},
        release::{Completion, Phase, Release, StepStatus},
    },
};

fn experiment(e: &crate::domain::release::ExperimentRecord) -> pb::Experiment {
    let nan = |x: Option<f64>| x.unwrap_or(f64::NAN);
    pb::Experiment {
        step_index: e.step_index as u32,
        baseline_artifact: e.baseline_artifact.clone(),
        canary_artifact: e.canary_artifact.clone(),
        weight: e.weight,
        intervals: e.intervals,
        judged: e
            .judged
            .iter()
            .map(|j| pb::ExperimentInterval {
                index: j.index,
                score: j.score,
                verdict: j.verdict.clone(),
                reason: j.reason.clone(),
                judged_at: Some(ts(j.at)),
                metrics: j
                    .metrics
                    .iter()
                    .map(|m| pb::ExperimentMetric {
                        name: m.name.clone(),
                        group: m.group.clone(),
                        classification: m.classification.clone(),
                        baseline_count: m.baseline_count,
                        baseline_mean: nan(m.baseline_mean),
                        canary_count: m.canary_count,
                        canary_mean: nan(m.canary_mean),
                        p_value: nan(m.p_value),
                        mean_ratio: nan(m.mean_ratio),
                        cles: nan(m.cles),
                        ci_lower: nan(m.ci_lower),
                        ci_upper: nan(m.ci_upper),
                        critical: m.critical,
                        reason: m.reason.clone(),
                    })
                    .collect(),
                group_scores: j.group_scores.clone().into_iter().collect(),
            })
            .collect(),
        baseline_run_id: e.baseline_run.clone().unwrap_or_default(),
        canary_run_id: e.canary_run.clone().unwrap_or_default(),
        verdict: e.verdict.clone().unwrap_or_default(),
        pass_threshold: e.pass,
        marginal_threshold: e.marginal,
    }
}

fn ts(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.unix_timestamp(), nanos: t.nanosecond() as i32 }
}

/// Phase → enum.
pub fn phase(p: Phase) -> pb::ReleasePhase {
    match p {
        Phase::Pending => pb::ReleasePhase::Pending,
        Phase::Progressing => pb::ReleasePhase::Progressing,
        Phase::Paused => pb::ReleasePhase::Paused,
        Phase::AwaitingApproval => pb::ReleasePhase::AwaitingApproval,
        Phase::Succeeded => pb::ReleasePhase::Succeeded,
        Phase::Aborted => pb::ReleasePhase::Aborted,
        Phase::Failed => pb::ReleasePhase::Failed,
        Phase::Superseded => pb::ReleasePhase::Superseded,
    }
}

/// Enum → phase.
pub fn phase_from(p: pb::ReleasePhase) -> Option<Phase> {
    Some(match p {
        pb::ReleasePhase::Unspecified => return None,
        pb::ReleasePhase::Pending => Phase::Pending,
        pb::ReleasePhase::Progressing => Phase::Progressing,
        pb::ReleasePhase::Paused => Phase::Paused,
        pb::ReleasePhase::AwaitingApproval => Phase::AwaitingApproval,
        pb::ReleasePhase::Succeeded => Phase::Succeeded,
        pb::ReleasePhase::Aborted => Phase::Aborted,
        pb::ReleasePhase::Failed => Phase::Failed,
        pb::ReleasePhase::Superseded => Phase::Superseded,
    })
}

fn completion(c: Option<Completion>) -> pb::Completion {
    match c {
        None => pb::Completion::Unspecified,
        Some(Completion::Promoted) => pb::Completion::Promoted,
        Some(Completion::FastPromoted) => pb::Completion::FastPromoted,
        Some(Completion::Aborted) => pb::Completion::Aborted,
        Some(Completion::RolledBack) => pb::Completion::RolledBack,
        Some(Completion::Superseded) => pb::Completion::Superseded,
    }
}

fn step_kind(a: &StepAction) -> pb::StepKind {
    match a {
        StepAction::SetWeight { .. } => pb::StepKind::SetWeight,
        StepAction::Pause { .. } => pb::StepKind::Pause,
        StepAction::Analysis { .. } => pb::StepKind::Analysis,
        StepAction::Approval { .. } => pb::StepKind::Approval,
        StepAction::Verify { .. } => pb::StepKind::Verify,
        StepAction::Migrate { .. } => pb::StepKind::Migrate,
        StepAction::SetCanaryScale { .. } => pb::StepKind::SetCanaryScale,
        StepAction::SetHeaderRoute { .. } => pb::StepKind::SetHeaderRoute,
        StepAction::SetMirrorRoute { .. } => pb::StepKind::SetMirrorRoute,
        StepAction::Experiment { .. } => pb::StepKind::Experiment,
        StepAction::DeployPreview { .. } => pb::StepKind::DeployPreview,
        StepAction::PrePromotionAnalysis { .. } => pb::StepKind::PrePromotionAnalysis,
        StepAction::SwitchActive => pb::StepKind::SwitchActive,
        StepAction::PostPromotionAnalysis { .. } => pb::StepKind::PostPromotionAnalysis,
        StepAction::ScaleDownOld { .. } => pb::StepKind::ScaleDownOld,
        StepAction::DeployStable => pb::StepKind::DeployStable,
        StepAction::MaintenanceWindow { .. } => pb::StepKind::MaintenanceWindow,
        StepAction::Preflight { .. } => pb::StepKind::Preflight,
        StepAction::ArgoRollout { .. } => pb::StepKind::ArgoRollout,
        #[cfg(test)]
        StepAction::Checkpoint { .. } => pb::StepKind::Unspecified,
    }
}

fn step_status(s: StepStatus) -> pb::StepStatus {
    match s {
        StepStatus::Pending => pb::StepStatus::Pending,
        StepStatus::Running => pb::StepStatus::Running,
        StepStatus::Succeeded => pb::StepStatus::Succeeded,
        StepStatus::Skipped => pb::StepStatus::Skipped,
        StepStatus::Failed => pb::StepStatus::Failed,
    }
}

/// Release → message.
pub fn release(r: &Release) -> pb::Release {
    let steps = r
        .plan
        .steps
        .iter()
        .zip(&r.steps)
        .enumerate()
        .map(|(i, (step, rec))| {
            let (weight, duration, templates) = match &step.action {
                StepAction::SetWeight { weight } => (*weight, None, Vec::new()),
                StepAction::Pause { duration } => (0, *duration, Vec::new()),
                StepAction::ScaleDownOld { delay } => (0, Some(*delay), Vec::new()),
                action => (0, None, action.analysis().map(|a| a.templates.clone()).unwrap_or_default()),
            };
            pb::Step {
                index: i as u32,
                name: step.name.clone(),
                kind: step_kind(&step.action) as i32,
                status: step_status(rec.status) as i32,
                summary: r.plan.step_summary(i),
                weight,
                duration: duration
                    .map(|d| prost_types::Duration { seconds: d.0.as_secs() as i64, nanos: d.0.subsec_nanos() as i32 }),
                templates,
                started_at: rec.started_at.map(ts),
                finished_at: rec.finished_at.map(ts),
                message: rec.message.clone(),
                run_id: rec.run_id.clone().unwrap_or_default(),
            }
        })
        .collect();
    let pending_approval = match (r.phase, r.plan.steps.get(r.step_index).map(|s| &s.action)) {
        (Phase::AwaitingApproval, Some(StepAction::Approval { policy })) => Some(pb::ApprovalRequirement {
            min_approvals: policy.min_approvals,
            roles: policy.roles.clone(),
            allow_self_approval: policy.allow_self_approval,
            expires_at: r.cursor.until.map(ts),
            approvals: r.approvals_for_current_step().count() as u32,
        }),
        _ => None,
    };
    pb::Release {
        id: r.id.to_string(),
        service: r.service.clone(),
        environment: r.environment.clone(),
        revision: r.revision,
        artifact: r.artifact.clone(),
        strategy: match r.plan.strategy {
            PlanStrategy::Canary => pb::Strategy::Canary,
            PlanStrategy::BlueGreen => pb::Strategy::BlueGreen,
            PlanStrategy::Direct => pb::Strategy::Initial,
        } as i32,
        phase: phase(r.phase) as i32,
        completion: completion(r.completion) as i32,
        message: r.message.clone(),
        current_step_index: r.step_index as u32,
        steps,
        canary_weight: r.canary_weight,
        traffic_routes: r.routes.describe(),
        experiments: r.experiments.iter().map(experiment).collect(),
        stable_artifact: r.stable_artifact.clone().unwrap_or_default(),
        analysis_runs: r
            .analysis_runs
            .iter()
            .map(|a| pb::AnalysisSummary {
                run_id: a.run_id.clone(),
                kind: a.kind.clone(),
                step_index: a.step_index as u32,
                phase: a.phase.clone(),
                message: a.message.clone(),
            })
            .collect(),
        approvals: r
            .approvals
            .iter()
            .map(|a| pb::Approval {
                user: a.user.clone(),
                issuer: a.issuer.clone(),
                subject: a.subject.clone(),
                approved: a.approved,
                reason: a.reason.clone(),
                decided_at: Some(ts(a.at)),
                step_index: a.step_index as u32,
            })
            .collect(),
        pending_approval,
        created_by: r.created_by.clone(),
        created_at: Some(ts(r.created_at)),
        updated_at: Some(ts(r.updated_at)),
        finished_at: r.finished_at.map(ts),
        progress_deadline_at: r.progress_deadline_at.filter(|_| !r.settled).map(ts),
        resumes_at: r.resumes_at.filter(|_| r.phase == Phase::Paused && !r.held_for_person).map(ts),
        attempt: r.attempt,
        superseded_by: r.superseded_by.map(|u| u.to_string()).unwrap_or_default(),
        undo_of_revision: r.undo_of_revision.unwrap_or(0),
        release_group_id: r.group_id.map(|u| u.to_string()).unwrap_or_default(),
        returns_release_id: r.returns_release.map(|u| u.to_string()).unwrap_or_default(),
        settled: r.settled,
        version: r.version,
        reason: r.reason.clone(),
        preflight_checks: r
            .preflight
            .iter()
            .map(|c| pb::PreflightCheck { name: c.name.clone(), ok: c.ok, message: c.message.clone() })
            .collect(),
        verification: Some(match r.verification() {
            Ok(()) => pb::Verification { verified: true, reason: String::new() },
            Err(reason) => pb::Verification { verified: false, reason },
        }),
    }
}

/// Group → message.
pub fn group(g: &Group) -> pb::ReleaseGroup {
    let status = g.status();
    pb::ReleaseGroup {
        id: g.row.id.to_string(),
        environment: g.row.environment.clone(),
        kind: g.row.kind.clone(),
        releases: g.members.iter().map(release).collect(),
        phase: phase(status.phase) as i32,
        created_by: g.row.created_by.clone(),
        created_at: Some(ts(g.row.created_at)),
        reason: g.row.reason.clone(),
        dependencies: g
            .row
            .dependencies
            .iter()
            .map(|d| pb::GroupDependency { service: d.service.clone(), depends_on: d.depends_on.clone() })
            .collect(),
        settled: status.settled,
        message: status.message,
    }
}

/// A timestamp of a request; out of range is the caller's mistake.
pub fn time_from(field: &str, t: prost_types::Timestamp) -> Result<OffsetDateTime, crate::error::SchedulerError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)).map_err(
        |_| crate::error::SchedulerError::invalid(field, format!("{}s {}ns is not a valid time", t.seconds, t.nanos)),
    )
}

/// An audit row → contract.
pub fn audit_entry(e: &crate::store::AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        id: e.id as u64,
        time: Some(ts(e.at)),
        actor: e.actor.clone(),
        action: e.action.clone(),
        outcome: match e.outcome.as_str() {
            "refused" => pb::AuditOutcome::Refused,
            _ => pb::AuditOutcome::Allowed,
        } as i32,
        release_id: e.release_id.map(|id| id.to_string()).unwrap_or_default(),
        service: e.service.clone(),
        environment: e.environment.clone(),
        reason: e.reason.clone(),
        request_id: e.request_id.clone(),
        message: e.message.clone(),
        from_phase: e.from_phase.clone().unwrap_or_default(),
        to_phase: e.to_phase.clone().unwrap_or_default(),
        issuer: e.issuer.clone(),
        subject: e.subject.clone(),
        groups: e.groups.clone(),
        rpc: e.rpc.clone(),
    }
}

/// A stored freeze → contract.
pub fn freeze(f: &crate::store::FreezeRow) -> pb::Freeze {
    pb::Freeze {
        id: f.id.to_string(),
        environment: f.environment.clone(),
        start_time: Some(ts(f.starts_at)),
        end_time: Some(ts(f.ends_at)),
        reason: f.reason.clone(),
        created_by: f.created_by.clone(),
        create_time: Some(ts(f.created_at)),
        ended_time: f.ended_at.map(ts),
        ended_by: f.ended_by.clone(),
        end_reason: f.end_reason.clone(),
    }
}

/// A freeze window open now → contract.
pub fn open_window(w: &crate::domain::freeze::OpenWindow) -> pb::FrozenWindow {
    pb::FrozenWindow {
        environment: w.environment.clone(),
        window: w.window.clone(),
        reason: w.reason.clone(),
        end_time: Some(ts(w.closes_at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        config::{Dur, StepDef},
        plan::{AnalysisSpec, ApprovalSpec, CanaryScale, PlanMode, compile},
    };

    /// One plan action of each kind. The proto walk below finds a kind missing here.
    fn one_of_each() -> Vec<StepAction> {
        let analysis = AnalysisSpec::default();
        let approval = ApprovalSpec {
            min_approvals: 1,
            roles: Vec::new(),
            allow_self_approval: false,
            timeout: None,
            on_timeout: crate::domain::config::TimeoutOutcome::Reject,
        };
        vec![
            StepAction::SetWeight { weight: 10 },
            StepAction::Pause { duration: None },
            StepAction::Analysis { analysis: analysis.clone() },
            StepAction::Approval { policy: approval },
            StepAction::Verify { analysis: analysis.clone() },
            StepAction::Migrate {
                database: "db".into(),
                locations: Vec::new(),
                target_version: None,
                on_abort: Default::default(),
            },
            StepAction::SetCanaryScale { scale: CanaryScale::Replicas(1) },
            StepAction::DeployPreview { replicas: 1 },
            StepAction::PrePromotionAnalysis { analysis: analysis.clone() },
            StepAction::SwitchActive,
            StepAction::PostPromotionAnalysis { analysis },
            StepAction::ScaleDownOld { delay: Dur(std::time::Duration::from_secs(1)) },
            StepAction::DeployStable,
            StepAction::MaintenanceWindow { windows: Vec::new() },
            StepAction::Preflight { dependencies: Vec::new() },
            StepAction::ArgoRollout { full: false },
            StepAction::SetHeaderRoute { route: serde_json::from_str(r#"{"name": "h"}"#).unwrap() },
            StepAction::SetMirrorRoute { route: serde_json::from_str(r#"{"name": "m"}"#).unwrap() },
            StepAction::Experiment {
                experiment: crate::domain::plan::ExperimentSpec {
                    analysis: AnalysisSpec::default(),
                    weight: 10,
                    replicas: 1,
                    interval: Dur(std::time::Duration::from_secs(60)),
                    intervals: 1,
                    thresholds: Default::default(),
                    group_weights: Default::default(),
                    judges: Default::default(),
                },
            },
        ]
    }

    /// A canary step of each kind people write, as they write it.
    fn written(kind: &str) -> &'static str {
        match kind {
            "setWeight" => "setWeight: 10",
            "pause" => "pause: {}",
            "analysis" => "analysis: {templates: [slo]}",
            "approval" => "approval: {}",
            "verify" => "verify: {job: {command: [\"true\"]}}",
            "migrate" => "migrate: {}",
            "setCanaryScale" => "setCanaryScale: {replicas: 1}",
            "setHeaderRoute" => "setHeaderRoute: {name: h, match: [{headerName: x-h, headerValue: {exact: '1'}}]}",
            "setMirrorRoute" => "setMirrorRoute: {name: m, match: [{method: {exact: GET}}]}",
            "experiment" => "experiment: {templates: [slo], weight: 10, interval: 10s}",
            other => panic!("no example of the config step kind {other:?}: add one here"),
        }
    }

    #[test]
    fn config_step_kinds_plan_actions_and_proto_step_kinds_map_one_to_one() {
        // Plan ↔ proto: every proto kind is one action's, and no two actions share one.
        let actions = one_of_each();
        let mut proto_kinds = Vec::new();
        for value in 1.. {
            let Ok(kind) = pb::StepKind::try_from(value) else { break };
            proto_kinds.push(kind);
        }
        assert_eq!(actions.len(), proto_kinds.len(), "one action per proto StepKind");
        for kind in &proto_kinds {
            let of_kind: Vec<&str> = actions.iter().filter(|a| step_kind(a) == *kind).map(|a| a.kind_name()).collect();
            assert_eq!(of_kind.len(), 1, "{kind:?} is the kind of {of_kind:?}");
        }
        let names: std::collections::BTreeSet<&str> = actions.iter().map(|a| a.kind_name()).collect();
        assert_eq!(names.len(), actions.len(), "kind names are distinct");

        // Config → plan: each kind people write compiles into the action of the same name.
        for kind in StepDef::kinds() {
            let yaml = format!(
                "environments: [{{name: staging}}]\n\
                 analysisTemplates:\n  - name: slo\n    metrics:\n      - name: m\n        interval: 5s\n        count: 2\n        successCondition: result < 1\n        provider: {{prometheus: {{address: \"http://127.0.0.1:9090\", query: \"x{{track='{{{{args.track}}}}'}}\"}}}}\n\
                 services:\n  - name: svc\n    migrations: {{database: db, locations: [m]}}\n    strategy:\n      canary:\n        steps:\n          - {}\n",
                written(kind)
            );
            let config = crate::domain::config::DeliveryConfig::load(&yaml).unwrap_or_else(|p| panic!("{kind}: {p:?}"));
            let plan = compile(&config, "svc", "staging", PlanMode::Normal).unwrap();
            let compiled: Vec<&str> = plan.steps.iter().map(|s| s.action.kind_name()).collect();
            assert!(compiled.contains(kind), "{kind} compiles into {compiled:?}");
            assert!(names.contains(kind), "{kind} is a plan action");
        }
    }
}
