//! Serialisable views of API messages, for JSON/YAML output and for programs that log them.

use hopngo_proto::{
    analyzer as apb, config as cpb, events as epb, identity as ipb, migrator as mpb, notifier as npb, release as pb,
    transitions::TransitionKind,
};
use serde::Serialize;

/// A timestamp as RFC 3339 text.
pub fn time(t: &Option<prost_types::Timestamp>) -> Option<String> {
    let t = t.as_ref()?;
    let dt = time::OffsetDateTime::from_unix_timestamp(t.seconds).ok()? + time::Duration::nanoseconds(t.nanos as i64);
    dt.format(&time::format_description::well_known::Rfc3339).ok()
}

fn duration(d: &Option<prost_types::Duration>) -> Option<String> {
    let d = d.as_ref()?;
    Some(if d.nanos == 0 {
        format!("{}s", d.seconds)
    } else {
        format!("{}ms", d.seconds * 1000 + d.nanos as i64 / 1_000_000)
    })
}

/// Enum value name without its prefix (`RELEASE_PHASE_PAUSED` → `PAUSED`).
pub fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_string()
}

/// Phase name.
pub fn phase_name(p: i32) -> String {
    pb::ReleasePhase::try_from(p).map(|p| short(p.as_str_name(), "RELEASE_PHASE_")).unwrap_or_else(|_| p.to_string())
}

fn completion_name(c: i32) -> Option<String> {
    match pb::Completion::try_from(c) {
        Ok(pb::Completion::Unspecified) => None,
        Ok(c) => Some(short(c.as_str_name(), "COMPLETION_")),
        Err(_) => Some(c.to_string()),
    }
}

/// A plan step.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    pub index: u32,
    pub name: String,
    pub kind: String,
    pub status: String,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub run_id: String,
}

/// An analysis run.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisView {
    pub run_id: String,
    pub kind: String,
    pub step_index: u32,
    pub phase: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A decision.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalView {
    pub user: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub issuer: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subject: String,
    pub approved: bool,
    pub reason: String,
    pub decided_at: Option<String>,
    pub step_index: u32,
}

/// What a waiting approval needs.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingApprovalView {
    pub min_approvals: u32,
    pub approvals: u32,
    pub roles: Vec<String>,
    pub allow_self_approval: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// A release.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseView {
    pub id: String,
    pub service: String,
    pub environment: String,
    pub revision: u64,
    pub artifact: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stable_artifact: String,
    pub strategy: String,
    pub phase: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion: Option<String>,
    pub message: String,
    pub current_step_index: u32,
    pub canary_weight: u32,
    /// Header and mirror routes to the canary in force, one line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub traffic_routes: Vec<String>,
    pub steps: Vec<StepView>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub analysis_runs: Vec<AnalysisView>,
    /// Experiments with each interval's judgement.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub experiments: Vec<ExperimentView>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_approval: Option<PendingApprovalView>,
    pub created_by: String,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress_deadline_at: Option<String>,
    /// While PAUSED: when the pause ends by itself (unset: it waits for a person).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumes_at: Option<String>,
    pub attempt: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub superseded_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undo_of_revision: Option<u64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub release_group_id: String,
    /// For a train's return: the member it returns to its previous version.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub returns_release_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub preflight_checks: Vec<PreflightCheckView>,
    pub verified: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub not_verified_because: String,
    pub settled: bool,
    pub version: u64,
}

/// An experiment: the canary against a baseline of the stable artifact.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentView {
    pub step_index: u32,
    pub baseline_artifact: String,
    pub canary_artifact: String,
    pub weight: u32,
    pub intervals: u32,
    pub pass_threshold: f64,
    pub marginal_threshold: f64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub verdict: String,
    pub baseline_run_id: String,
    pub canary_run_id: String,
    pub judged: Vec<ExperimentIntervalView>,
}

/// The judgement of one interval.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentIntervalView {
    pub index: u32,
    pub score: f64,
    pub verdict: String,
    pub reason: String,
    pub judged_at: Option<String>,
    pub metrics: Vec<ExperimentMetricView>,
    pub group_scores: std::collections::BTreeMap<String, f64>,
}

/// One metric's statistics (undefined ones, such as the ratio to a zero mean, left out).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentMetricView {
    pub name: String,
    pub group: String,
    pub classification: String,
    pub baseline_count: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_mean: Option<f64>,
    pub canary_count: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary_mean: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cles: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ci_lower: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ci_upper: Option<f64>,
    pub critical: bool,
    pub reason: String,
}

impl From<&pb::Experiment> for ExperimentView {
    fn from(e: &pb::Experiment) -> Self {
        let finite = |x: f64| x.is_finite().then_some(x);
        ExperimentView {
            step_index: e.step_index,
            baseline_artifact: e.baseline_artifact.clone(),
            canary_artifact: e.canary_artifact.clone(),
            weight: e.weight,
            intervals: e.intervals,
            pass_threshold: e.pass_threshold,
            marginal_threshold: e.marginal_threshold,
            verdict: e.verdict.clone(),
            baseline_run_id: e.baseline_run_id.clone(),
            canary_run_id: e.canary_run_id.clone(),
            judged: e
                .judged
                .iter()
                .map(|j| ExperimentIntervalView {
                    index: j.index,
                    score: j.score,
                    verdict: j.verdict.clone(),
                    reason: j.reason.clone(),
                    judged_at: time(&j.judged_at),
                    metrics: j
                        .metrics
                        .iter()
                        .map(|m| ExperimentMetricView {
                            name: m.name.clone(),
                            group: m.group.clone(),
                            classification: m.classification.clone(),
                            baseline_count: m.baseline_count,
                            baseline_mean: finite(m.baseline_mean),
                            canary_count: m.canary_count,
                            canary_mean: finite(m.canary_mean),
                            p_value: finite(m.p_value),
                            mean_ratio: finite(m.mean_ratio),
                            cles: finite(m.cles),
                            ci_lower: finite(m.ci_lower),
                            ci_upper: finite(m.ci_upper),
                            critical: m.critical,
                            reason: m.reason.clone(),
                        })
                        .collect(),
                    group_scores: j.group_scores.clone().into_iter().collect(),
                })
                .collect(),
        }
    }
}

/// One preflight check.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PreflightCheckView {
    pub name: String,
    pub ok: bool,
    pub message: String,
}

impl ReleaseView {
    /// What a paused release waits for, as of `now`: the time left of a timed pause (nothing for
    /// anyone to do), or a person.
    pub fn pause_text(&self, now: time::OffsetDateTime) -> Option<String> {
        if self.phase != "PAUSED" {
            return None;
        }
        let Some(resumes) = self
            .resumes_at
            .as_deref()
            .and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
        else {
            return Some("waiting for a person (promote to continue, or abort)".into());
        };
        let left = (resumes - now).whole_seconds().max(0);
        let left = match left {
            0..120 => format!("{left} s"),
            120..7200 => format!("{} min {} s", left / 60, left % 60),
            _ => format!("{} h {} min", left / 3600, left % 3600 / 60),
        };
        Some(format!("waiting {left} (timed pause, nothing to do)"))
    }
}

impl From<&pb::Release> for ReleaseView {
    fn from(r: &pb::Release) -> Self {
        ReleaseView {
            id: r.id.clone(),
            service: r.service.clone(),
            environment: r.environment.clone(),
            revision: r.revision,
            artifact: r.artifact.clone(),
            stable_artifact: r.stable_artifact.clone(),
            strategy: pb::Strategy::try_from(r.strategy)
                .map(|s| short(s.as_str_name(), "STRATEGY_"))
                .unwrap_or_default(),
            phase: phase_name(r.phase),
            completion: completion_name(r.completion),
            message: r.message.clone(),
            current_step_index: r.current_step_index,
            canary_weight: r.canary_weight,
            traffic_routes: r.traffic_routes.clone(),
            steps: r
                .steps
                .iter()
                .map(|s| StepView {
                    index: s.index,
                    name: s.name.clone(),
                    kind: pb::StepKind::try_from(s.kind)
                        .map(|k| short(k.as_str_name(), "STEP_KIND_"))
                        .unwrap_or_default(),
                    status: pb::StepStatus::try_from(s.status)
                        .map(|k| short(k.as_str_name(), "STEP_STATUS_"))
                        .unwrap_or_default(),
                    summary: s.summary.clone(),
                    duration: duration(&s.duration),
                    started_at: time(&s.started_at),
                    finished_at: time(&s.finished_at),
                    message: s.message.clone(),
                    run_id: s.run_id.clone(),
                })
                .collect(),
            analysis_runs: r
                .analysis_runs
                .iter()
                .map(|a| AnalysisView {
                    run_id: a.run_id.clone(),
                    kind: a.kind.clone(),
                    step_index: a.step_index,
                    phase: a.phase.clone(),
                    message: a.message.clone(),
                })
                .collect(),
            experiments: r.experiments.iter().map(ExperimentView::from).collect(),
            approvals: r
                .approvals
                .iter()
                .map(|a| ApprovalView {
                    user: a.user.clone(),
                    issuer: a.issuer.clone(),
                    subject: a.subject.clone(),
                    approved: a.approved,
                    reason: a.reason.clone(),
                    decided_at: time(&a.decided_at),
                    step_index: a.step_index,
                })
                .collect(),
            pending_approval: r.pending_approval.as_ref().map(|p| PendingApprovalView {
                min_approvals: p.min_approvals,
                approvals: p.approvals,
                roles: p.roles.clone(),
                allow_self_approval: p.allow_self_approval,
                expires_at: time(&p.expires_at),
            }),
            created_by: r.created_by.clone(),
            created_at: time(&r.created_at),
            updated_at: time(&r.updated_at),
            finished_at: time(&r.finished_at),
            progress_deadline_at: time(&r.progress_deadline_at),
            resumes_at: time(&r.resumes_at),
            attempt: r.attempt,
            superseded_by: r.superseded_by.clone(),
            undo_of_revision: (r.undo_of_revision > 0).then_some(r.undo_of_revision),
            release_group_id: r.release_group_id.clone(),
            returns_release_id: r.returns_release_id.clone(),
            reason: r.reason.clone(),
            preflight_checks: r
                .preflight_checks
                .iter()
                .map(|c| PreflightCheckView { name: c.name.clone(), ok: c.ok, message: c.message.clone() })
                .collect(),
            verified: r.verification.as_ref().is_some_and(|v| v.verified),
            not_verified_because: r
                .verification
                .as_ref()
                .filter(|v| !v.verified && r.phase == pb::ReleasePhase::Succeeded as i32)
                .map(|v| v.reason.clone())
                .unwrap_or_default(),
            settled: r.settled,
            version: r.version,
        }
    }
}

/// A revision.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionView {
    pub revision: u64,
    pub artifact: String,
    pub release_id: String,
    pub phase: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion: Option<String>,
    pub created_by: String,
    pub created_at: Option<String>,
    pub current: bool,
}

impl From<&pb::Revision> for RevisionView {
    fn from(r: &pb::Revision) -> Self {
        RevisionView {
            revision: r.revision,
            artifact: r.artifact.clone(),
            release_id: r.release_id.clone(),
            phase: phase_name(r.phase),
            completion: completion_name(r.completion),
            created_by: r.created_by.clone(),
            created_at: time(&r.created_at),
            current: r.current,
        }
    }
}

/// One row of the audit log.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntryView {
    pub id: u64,
    pub time: Option<String>,
    pub actor: String,
    pub action: String,
    pub outcome: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub release_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub service: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub environment: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    pub message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub issuer: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subject: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub rpc: String,
}

impl From<&pb::AuditEntry> for AuditEntryView {
    fn from(e: &pb::AuditEntry) -> Self {
        AuditEntryView {
            id: e.id,
            time: time(&e.time),
            actor: e.actor.clone(),
            action: e.action.clone(),
            outcome: pb::AuditOutcome::try_from(e.outcome)
                .map(|o| short(o.as_str_name(), "AUDIT_OUTCOME_"))
                .unwrap_or_else(|_| e.outcome.to_string()),
            release_id: e.release_id.clone(),
            service: e.service.clone(),
            environment: e.environment.clone(),
            reason: e.reason.clone(),
            request_id: e.request_id.clone(),
            message: e.message.clone(),
            issuer: e.issuer.clone(),
            subject: e.subject.clone(),
            groups: e.groups.clone(),
            rpc: e.rpc.clone(),
        }
    }
}

/// A release group.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupView {
    pub id: String,
    pub environment: String,
    pub kind: String,
    pub phase: String,
    pub settled: bool,
    pub message: String,
    pub created_by: String,
    pub created_at: Option<String>,
    pub reason: String,
    /// What each member waited for (trains), in execution order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<GroupDependencyView>,
    pub releases: Vec<ReleaseView>,
}

/// The members one member of a group waited for.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupDependencyView {
    pub service: String,
    pub depends_on: Vec<String>,
}

impl GroupView {
    /// The members (a train's returns excluded), in execution order.
    pub fn members(&self) -> impl Iterator<Item = &ReleaseView> {
        self.releases.iter().filter(|r| r.returns_release_id.is_empty())
    }

    /// A train's returns, in execution order.
    pub fn returns(&self) -> impl Iterator<Item = &ReleaseView> {
        self.releases.iter().filter(|r| !r.returns_release_id.is_empty())
    }
}

impl From<&pb::ReleaseGroup> for GroupView {
    fn from(g: &pb::ReleaseGroup) -> Self {
        GroupView {
            id: g.id.clone(),
            environment: g.environment.clone(),
            kind: g.kind.clone(),
            phase: phase_name(g.phase),
            settled: g.settled,
            message: g.message.clone(),
            created_by: g.created_by.clone(),
            created_at: time(&g.created_at),
            reason: g.reason.clone(),
            dependencies: g
                .dependencies
                .iter()
                .map(|d| GroupDependencyView { service: d.service.clone(), depends_on: d.depends_on.clone() })
                .collect(),
            releases: g.releases.iter().map(ReleaseView::from).collect(),
        }
    }
}

/// A config summary.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigSummaryView {
    pub environments: Vec<String>,
    pub services: Vec<String>,
    pub analysis_templates: Vec<String>,
}

impl From<Option<&cpb::ConfigSummary>> for ConfigSummaryView {
    fn from(s: Option<&cpb::ConfigSummary>) -> Self {
        s.map(|s| ConfigSummaryView {
            environments: s.environments.clone(),
            services: s.services.clone(),
            analysis_templates: s.analysis_templates.clone(),
        })
        .unwrap_or_default()
    }
}

/// A config version.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigView {
    pub version: u64,
    pub applied_by: String,
    pub applied_at: Option<String>,
    pub summary: ConfigSummaryView,
    pub yaml: String,
}

impl From<&cpb::GetConfigResponse> for ConfigView {
    fn from(c: &cpb::GetConfigResponse) -> Self {
        ConfigView {
            version: c.version,
            applied_by: c.applied_by.clone(),
            applied_at: time(&c.applied_at),
            summary: c.summary.as_ref().into(),
            yaml: c.yaml.clone(),
        }
    }
}

/// Analysis phase name (`ANALYSIS_PHASE_FAILED` → `FAILED`).
pub fn analysis_phase_name(p: i32) -> String {
    apb::AnalysisPhase::try_from(p).map(|p| short(p.as_str_name(), "ANALYSIS_PHASE_")).unwrap_or_else(|_| p.to_string())
}

/// Metric severity name (`CRITICAL`, `HIGH`, ...; empty when unset).
pub fn severity_name(s: i32) -> String {
    match apb::MetricSeverity::try_from(s) {
        Ok(apb::MetricSeverity::Unspecified) => String::new(),
        Ok(s) => short(s.as_str_name(), "METRIC_SEVERITY_"),
        Err(_) => s.to_string(),
    }
}

/// One measurement.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeasurementView {
    pub phase: String,
    pub value: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub no_data: bool,
}

impl From<&apb::Measurement> for MeasurementView {
    fn from(m: &apb::Measurement) -> Self {
        MeasurementView {
            phase: analysis_phase_name(m.phase),
            value: m.value.clone(),
            message: m.message.clone(),
            started_at: time(&m.started_at),
            finished_at: time(&m.finished_at),
            no_data: m.no_data,
        }
    }
}

/// One metric of a run.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricResultView {
    pub name: String,
    pub phase: String,
    pub severity: String,
    pub dry_run: bool,
    pub count: u32,
    pub successful: u32,
    pub failed: u32,
    pub inconclusive: u32,
    pub error: u32,
    pub consecutive_error: u32,
    pub consecutive_success: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub success_condition: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub failure_condition: String,
    pub measurements: Vec<MeasurementView>,
}

/// An analysis run.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRunView {
    pub id: String,
    pub phase: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub severity: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub args: std::collections::BTreeMap<String, String>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub metrics: Vec<MetricResultView>,
}

impl AnalysisRunView {
    /// Completed.
    pub fn completed(&self) -> bool {
        self.completed_at.is_some()
    }
}

impl From<&apb::AnalysisRun> for AnalysisRunView {
    fn from(r: &apb::AnalysisRun) -> Self {
        AnalysisRunView {
            id: r.id.clone(),
            phase: analysis_phase_name(r.phase),
            severity: severity_name(r.severity),
            message: r.message.clone(),
            labels: r.labels.clone().into_iter().collect(),
            args: r.args.clone().into_iter().collect(),
            started_at: time(&r.started_at),
            completed_at: time(&r.completed_at),
            metrics: r
                .metrics
                .iter()
                .map(|m| MetricResultView {
                    name: m.name.clone(),
                    phase: analysis_phase_name(m.phase),
                    severity: severity_name(m.severity),
                    dry_run: m.dry_run,
                    count: m.count,
                    successful: m.successful,
                    failed: m.failed,
                    inconclusive: m.inconclusive,
                    error: m.error,
                    consecutive_error: m.consecutive_error,
                    consecutive_success: m.consecutive_success,
                    message: m.message.clone(),
                    success_condition: m.success_condition.clone(),
                    failure_condition: m.failure_condition.clone(),
                    measurements: m.measurements.iter().map(MeasurementView::from).collect(),
                })
                .collect(),
        }
    }
}

/// Migration state name (`MIGRATION_STATE_OUT_OF_ORDER` → `OUT_OF_ORDER`).
pub fn migration_state_name(s: i32) -> String {
    mpb::MigrationState::try_from(s)
        .map(|s| short(s.as_str_name(), "MIGRATION_STATE_"))
        .unwrap_or_else(|_| s.to_string())
}

/// One migration (info) or what a run did to one.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationView {
    pub version: String,
    pub description: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub script: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub installed_rank: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub installed_on: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub installed_by: String,
    pub execution_time_ms: i32,
    pub state: String,
    /// Flyway's name of the state.
    pub state_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub action: String,
    pub transactional: bool,
    pub undoable: bool,
}

impl From<&mpb::MigrationInfo> for MigrationView {
    fn from(m: &mpb::MigrationInfo) -> Self {
        MigrationView {
            version: m.version.clone(),
            description: m.description.clone(),
            kind: m.r#type.clone(),
            script: m.script.clone(),
            checksum: m.checksum,
            installed_rank: m.installed_rank,
            installed_on: time(&m.installed_on),
            installed_by: m.installed_by.clone(),
            execution_time_ms: m.execution_time_ms,
            state: migration_state_name(m.state),
            state_name: m.state_name.clone(),
            action: m.action.clone(),
            transactional: m.transactional,
            undoable: m.undoable,
        }
    }
}

/// `Info`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationInfoView {
    pub current_version: String,
    pub migrations: Vec<MigrationView>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl From<&mpb::InfoResponse> for MigrationInfoView {
    fn from(r: &mpb::InfoResponse) -> Self {
        MigrationInfoView {
            current_version: r.current_version.clone(),
            migrations: r.migrations.iter().map(MigrationView::from).collect(),
            warnings: r.warnings.clone(),
        }
    }
}

/// A migration run.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationRunView {
    pub id: String,
    pub database: String,
    pub command: String,
    pub phase: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub target_version: String,
    pub message: String,
    pub version_before: String,
    pub version_after: String,
    pub changes: Vec<MigrationView>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub interrupted: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub idempotency_key: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

impl MigrationRunView {
    /// Ended (succeeded or failed).
    pub fn finished(&self) -> bool {
        self.finished_at.is_some()
    }
}

impl From<&mpb::MigrationRun> for MigrationRunView {
    fn from(r: &mpb::MigrationRun) -> Self {
        MigrationRunView {
            id: r.id.clone(),
            database: r.database.clone(),
            command: mpb::MigrationCommand::try_from(r.command)
                .map(|c| short(c.as_str_name(), "MIGRATION_COMMAND_"))
                .unwrap_or_else(|_| r.command.to_string()),
            phase: mpb::MigrationPhase::try_from(r.phase)
                .map(|p| short(p.as_str_name(), "MIGRATION_PHASE_"))
                .unwrap_or_else(|_| r.phase.to_string()),
            target_version: r.target_version.clone(),
            message: r.message.clone(),
            version_before: r.version_before.clone(),
            version_after: r.version_after.clone(),
            changes: r.applied.iter().map(MigrationView::from).collect(),
            warnings: r.warnings.clone(),
            interrupted: r.interrupted,
            idempotency_key: r.idempotency_key.clone(),
            started_at: time(&r.started_at),
            finished_at: time(&r.finished_at),
        }
    }
}

/// Event severity name (`INFO`, `WARNING`, `ERROR`, `CRITICAL`).
pub fn event_severity_name(s: i32) -> String {
    match epb::Severity::try_from(s) {
        Ok(epb::Severity::Unspecified) => "INFO".into(),
        Ok(s) => short(s.as_str_name(), "SEVERITY_"),
        Err(_) => s.to_string(),
    }
}

/// A release event from the notifier's log.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    pub cursor: String,
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub source: String,
    pub time: Option<String>,
    pub release_id: String,
    pub sequence: u64,
    pub service: String,
    pub environment: String,
    pub severity: String,
    pub revision: u64,
    pub artifact: String,
    pub phase: String,
    pub transition: String,
    pub step_name: String,
    pub canary_weight: u32,
    pub actor: String,
    pub message: String,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub extensions: std::collections::BTreeMap<String, String>,
}

impl EventView {
    /// The view of an event at `cursor`.
    pub fn new(cursor: &str, e: &epb::Event) -> EventView {
        let d = e.data.clone().unwrap_or_default();
        EventView {
            cursor: cursor.to_string(),
            id: e.id.clone(),
            event_type: e.r#type.clone(),
            source: e.source.clone(),
            time: time(&e.time),
            release_id: e.release_id.clone(),
            sequence: e.sequence,
            service: e.service.clone(),
            environment: e.environment.clone(),
            severity: event_severity_name(e.severity),
            revision: d.revision,
            artifact: d.artifact,
            phase: d.phase,
            transition: d.transition,
            step_name: d.step_name,
            canary_weight: d.canary_weight,
            actor: d.actor,
            message: d.message,
            extensions: e.extensions.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }
}

/// An event filter.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventFilterView {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    pub min_severity: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub release_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub escalation_levels: Vec<String>,
}

impl From<Option<&npb::EventFilter>> for EventFilterView {
    fn from(f: Option<&npb::EventFilter>) -> Self {
        let f = f.cloned().unwrap_or_default();
        EventFilterView {
            services: f.services,
            environments: f.environments,
            types: f.types,
            min_severity: event_severity_name(f.min_severity),
            release_id: f.release_id,
            escalation_levels: f.escalation_levels,
        }
    }
}

/// A webhook subscription.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub format: String,
    pub filter: EventFilterView,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub secret: String,
    pub created_at: Option<String>,
    pub cursor: String,
    pub delivered: u64,
    pub dead_lettered: u64,
}

impl From<&npb::Webhook> for WebhookView {
    fn from(w: &npb::Webhook) -> Self {
        WebhookView {
            id: w.id.clone(),
            url: w.url.clone(),
            format: w.format.clone(),
            filter: EventFilterView::from(w.filter.as_ref()),
            secret: w.secret.clone(),
            created_at: time(&w.created_at),
            cursor: w.cursor.clone(),
            delivered: w.delivered,
            dead_lettered: w.dead_lettered,
        }
    }
}

/// One webhook delivery attempt.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    pub webhook_id: String,
    pub event_id: String,
    pub cursor: String,
    pub attempt: u32,
    pub status_code: u32,
    pub delivered: bool,
    pub dead_lettered: bool,
    pub message: String,
    pub attempted_at: Option<String>,
}

impl From<&npb::Delivery> for DeliveryView {
    fn from(d: &npb::Delivery) -> Self {
        DeliveryView {
            webhook_id: d.webhook_id.clone(),
            event_id: d.event_id.clone(),
            cursor: d.cursor.clone(),
            attempt: d.attempt,
            status_code: d.status_code,
            delivered: d.delivered,
            dead_lettered: d.dead_lettered,
            message: d.message.clone(),
            attempted_at: time(&d.attempted_at),
        }
    }
}

/// An escalation.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EscalationView {
    pub release_id: String,
    pub service: String,
    pub environment: String,
    pub condition: String,
    pub since: Option<String>,
    pub levels_notified: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub next_level: String,
    pub next_at: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub acknowledged_by: String,
    pub acknowledged_at: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub comment: String,
}

impl From<&npb::Escalation> for EscalationView {
    fn from(e: &npb::Escalation) -> Self {
        EscalationView {
            release_id: e.release_id.clone(),
            service: e.service.clone(),
            environment: e.environment.clone(),
            condition: e.condition.clone(),
            since: time(&e.since),
            levels_notified: e.levels_notified.clone(),
            next_level: e.next_level.clone(),
            next_at: time(&e.next_at),
            acknowledged_by: e.acknowledged_by.clone(),
            acknowledged_at: time(&e.acknowledged_at),
            comment: e.comment.clone(),
        }
    }
}

/// One moment in a release's life: a transition (from the notifier's event log) or an analysis
/// measurement that did not pass.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    pub time: Option<String>,
    /// Seconds since the release was created.
    pub offset_seconds: f64,
    /// `release`, or `analysis <run id>`.
    pub source: String,
    pub what: String,
}

/// A release's timeline, with the runbook's key figure when an analysis aborted it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimelineView {
    pub release_id: String,
    pub service: String,
    pub environment: String,
    pub artifact: String,
    pub phase: String,
    pub entries: Vec<TimelineEntry>,
    /// From the first failing measurement to the deployer confirming all traffic back on the
    /// previous version, when both happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_to_stable_seconds: Option<f64>,
}

fn seconds(t: &Option<prost_types::Timestamp>) -> Option<f64> {
    t.as_ref().map(|t| t.seconds as f64 + t.nanos as f64 / 1e9)
}

/// The first failing measurement of `runs` (of metrics that are not dry runs) and the moment
/// the release's traffic was confirmed back on stable (its `rolled-back` transition): the time
/// the runbook wants at most 2 s.
pub fn failure_to_stable(events: &[epb::Event], runs: &[apb::AnalysisRun]) -> Option<f64> {
    let back = events
        .iter()
        .find(|e| e.data.as_ref().is_some_and(|d| d.transition == TransitionKind::RolledBack.as_str()))
        .and_then(|e| seconds(&e.time))?;
    let failed = |m: &&apb::Measurement| {
        matches!(apb::AnalysisPhase::try_from(m.phase), Ok(apb::AnalysisPhase::Failed | apb::AnalysisPhase::Error))
    };
    // Dry-run metrics (the stable track's reference among them) decide nothing.
    let first = runs
        .iter()
        .flat_map(|r| r.metrics.iter())
        .filter(|m| !m.dry_run)
        .flat_map(|m| m.measurements.iter())
        .filter(failed)
        .filter_map(|m| seconds(&m.finished_at))
        .filter(|t| *t <= back)
        .fold(None, |min: Option<f64>, t| Some(min.map_or(t, |m| m.min(t))))?;
    Some(back - first)
}

impl TimelineView {
    /// Merges a release's events (in log order) and its runs' measurements that did not pass.
    pub fn new(r: &pb::Release, events: &[epb::Event], runs: &[apb::AnalysisRun]) -> TimelineView {
        let start = seconds(&r.created_at).unwrap_or_default();
        let mut entries: Vec<TimelineEntry> = events
            .iter()
            .map(|e| {
                let d = e.data.clone().unwrap_or_default();
                TimelineEntry {
                    time: time(&e.time),
                    offset_seconds: seconds(&e.time).unwrap_or(start) - start,
                    source: "release".into(),
                    what: if d.message.is_empty() { d.transition } else { format!("{}: {}", d.transition, d.message) },
                }
            })
            .collect();
        for run in runs {
            for metric in run.metrics.iter().filter(|m| !m.dry_run) {
                for m in &metric.measurements {
                    let phase = apb::AnalysisPhase::try_from(m.phase).unwrap_or_default();
                    if matches!(phase, apb::AnalysisPhase::Successful | apb::AnalysisPhase::Running) {
                        continue;
                    }
                    let value = if m.value.is_empty() { "no value".to_string() } else { m.value.clone() };
                    let detail = if m.message.is_empty() { String::new() } else { format!(" ({})", m.message) };
                    entries.push(TimelineEntry {
                        time: time(&m.finished_at),
                        offset_seconds: seconds(&m.finished_at).unwrap_or(start) - start,
                        source: format!("analysis {}", run.id),
                        what: format!(
                            "{} measured {value}: {}{detail}",
                            metric.name,
                            short(phase.as_str_name(), "ANALYSIS_PHASE_")
                        ),
                    });
                }
            }
        }
        // Stable: events keep their log order when a measurement has the same time.
        entries.sort_by(|a, b| a.offset_seconds.total_cmp(&b.offset_seconds));
        TimelineView {
            release_id: r.id.clone(),
            service: r.service.clone(),
            environment: r.environment.clone(),
            artifact: r.artifact.clone(),
            phase: phase_name(r.phase),
            entries,
            failure_to_stable_seconds: failure_to_stable(events, runs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64, millis: i32) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: millis * 1_000_000 })
    }

    fn event(transition: &str, t: Option<prost_types::Timestamp>) -> epb::Event {
        epb::Event {
            time: t,
            data: Some(epb::ReleaseEventData { transition: transition.into(), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn a_timed_pause_says_how_long_it_waits_and_that_nobody_has_to_act() {
        let paused = |resumes_at| {
            ReleaseView::from(&pb::Release { phase: pb::ReleasePhase::Paused as i32, resumes_at, ..Default::default() })
        };
        let now = time::OffsetDateTime::from_unix_timestamp(1_000).unwrap();
        assert_eq!(paused(at(1_042, 0)).pause_text(now).unwrap(), "waiting 42 s (timed pause, nothing to do)");
        assert_eq!(
            paused(at(1_000 + 600, 0)).pause_text(now).unwrap(),
            "waiting 10 min 0 s (timed pause, nothing to do)"
        );
        assert_eq!(paused(at(900, 0)).pause_text(now).unwrap(), "waiting 0 s (timed pause, nothing to do)");
        assert!(paused(None).pause_text(now).unwrap().contains("waiting for a person"));
        let running =
            ReleaseView::from(&pb::Release { phase: pb::ReleasePhase::Progressing as i32, ..Default::default() });
        assert_eq!(running.pause_text(now), None);
    }

    fn measurement(phase: apb::AnalysisPhase, t: Option<prost_types::Timestamp>) -> apb::Measurement {
        apb::Measurement { phase: phase as i32, finished_at: t, ..Default::default() }
    }

    #[test]
    fn failure_to_stable_runs_from_the_first_failing_measurement_to_rolled_back() {
        use apb::AnalysisPhase::{Failed, Successful};
        let run = apb::AnalysisRun {
            metrics: vec![
                apb::MetricResult {
                    measurements: vec![measurement(Successful, at(100, 0)), measurement(Failed, at(101, 250))],
                    ..Default::default()
                },
                apb::MetricResult { measurements: vec![measurement(Failed, at(101, 900))], ..Default::default() },
                apb::MetricResult {
                    dry_run: true,
                    measurements: vec![measurement(Failed, at(100, 500))],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let events = [event("aborted", at(101, 300)), event("rolled-back", at(101, 700))];
        let got = failure_to_stable(&events, std::slice::from_ref(&run)).unwrap();
        assert!((got - 0.45).abs() < 1e-9, "{got}");
        assert_eq!(failure_to_stable(&events[..1], &[run]), None, "not rolled back (yet)");
        assert_eq!(failure_to_stable(&events, &[]), None, "no analysis failed: aborted by a person");
    }
}

/// Who the control plane takes the caller for, and what they may do where.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WhoAmIView {
    pub user: String,
    pub groups: Vec<String>,
    pub issuer: String,
    pub subject: String,
    pub grants: Vec<GrantView>,
}

/// What the caller may do with one service in one environment.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantView {
    pub environment: String,
    pub service: String,
    pub roles: Vec<String>,
    pub permissions: Vec<String>,
}

impl From<&ipb::WhoAmIResponse> for WhoAmIView {
    fn from(w: &ipb::WhoAmIResponse) -> Self {
        WhoAmIView {
            user: w.user.clone(),
            groups: w.groups.clone(),
            issuer: w.issuer.clone(),
            subject: w.subject.clone(),
            grants: w
                .grants
                .iter()
                .map(|g| GrantView {
                    environment: g.environment.clone(),
                    service: g.service.clone(),
                    roles: g.roles.clone(),
                    permissions: g.permissions.clone(),
                })
                .collect(),
        }
    }
}

/// An ad-hoc freeze.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FreezeView {
    pub id: String,
    pub environment: String,
    pub from: Option<String>,
    pub until: Option<String>,
    pub reason: String,
    pub created_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ended_by: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub end_reason: String,
}

impl From<&pb::Freeze> for FreezeView {
    fn from(f: &pb::Freeze) -> Self {
        FreezeView {
            id: f.id.clone(),
            environment: f.environment.clone(),
            from: time(&f.start_time),
            until: time(&f.end_time),
            reason: f.reason.clone(),
            created_by: f.created_by.clone(),
            ended_at: time(&f.ended_time),
            ended_by: f.ended_by.clone(),
            end_reason: f.end_reason.clone(),
        }
    }
}

/// A freeze window of the delivery config that is open now.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FrozenWindowView {
    pub environment: String,
    pub window: String,
    pub reason: String,
    pub until: Option<String>,
}

/// Freezes and open freeze windows.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FreezesView {
    pub freezes: Vec<FreezeView>,
    pub windows: Vec<FrozenWindowView>,
}

impl From<&pb::ListFreezesResponse> for FreezesView {
    fn from(r: &pb::ListFreezesResponse) -> Self {
        FreezesView {
            freezes: r.freezes.iter().map(FreezeView::from).collect(),
            windows: r
                .windows
                .iter()
                .map(|w| FrozenWindowView {
                    environment: w.environment.clone(),
                    window: w.window.clone(),
                    reason: w.reason.clone(),
                    until: time(&w.end_time),
                })
                .collect(),
        }
    }
}
