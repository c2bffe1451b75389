//! A release and its durable state. The whole struct is stored as one JSONB document beside a few
//! indexed columns; the engine and the user actions in [`super::machine`] are the only writers.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    config::routes::Routes,
    plan::{CanaryScale, Plan},
};

/// Where a release is in its life (DESIGN §3).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    /// Stored, not started.
    Pending,
    /// Executing the plan.
    Progressing,
    /// At a pause or an inconclusive analysis.
    Paused,
    /// Waiting for approvals.
    AwaitingApproval,
    /// New artifact is stable.
    Succeeded,
    /// Stopped; traffic returns to stable.
    Aborted,
    /// Stopped, and the return to stable could not be completed.
    Failed,
    /// Replaced by a newer release.
    Superseded,
}

impl Phase {
    /// Every phase.
    pub const ALL: [Phase; 8] = [
        Phase::Pending,
        Phase::Progressing,
        Phase::Paused,
        Phase::AwaitingApproval,
        Phase::Succeeded,
        Phase::Aborted,
        Phase::Failed,
        Phase::Superseded,
    ];

    /// Whether no more steps run.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Aborted | Phase::Failed | Phase::Superseded)
    }

    /// Name stored in the database and used in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "PENDING",
            Phase::Progressing => "PROGRESSING",
            Phase::Paused => "PAUSED",
            Phase::AwaitingApproval => "AWAITING_APPROVAL",
            Phase::Succeeded => "SUCCEEDED",
            Phase::Aborted => "ABORTED",
            Phase::Failed => "FAILED",
            Phase::Superseded => "SUPERSEDED",
        }
    }

    /// Parses [`Phase::as_str`].
    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// How a finished release ended.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Completion {
    /// All steps passed.
    Promoted,
    /// Promoted with `full`.
    FastPromoted,
    /// Aborted before the new artifact took all traffic.
    Aborted,
    /// Aborted after a blue/green switch: switched back.
    RolledBack,
    /// Superseded.
    Superseded,
}

impl Completion {
    /// Name used in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Completion::Promoted => "PROMOTED",
            Completion::FastPromoted => "FAST_PROMOTED",
            Completion::Aborted => "ABORTED",
            Completion::RolledBack => "ROLLED_BACK",
            Completion::Superseded => "SUPERSEDED",
        }
    }
}

/// Progress of one step.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepStatus {
    /// Not reached.
    Pending,
    /// Current.
    Running,
    /// Done.
    Succeeded,
    /// Skipped by a promote.
    Skipped,
    /// Failed; the release was aborted.
    Failed,
}

/// What happened to one step.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct StepRecord {
    /// Status.
    pub status: StepStatus,
    /// Start.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// End.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// Latest message.
    #[serde(default)]
    pub message: String,
    /// Run started by the step.
    #[serde(default)]
    pub run_id: Option<String>,
}

impl StepRecord {
    fn pending() -> Self {
        StepRecord {
            status: StepStatus::Pending,
            started_at: None,
            finished_at: None,
            message: String::new(),
            run_id: None,
        }
    }
}

/// Progress inside the current step, reset when the step changes.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct StepCursor {
    /// The step's action (apply, start) has been issued.
    #[serde(default)]
    pub applied: bool,
    /// Run started by the step.
    #[serde(default)]
    pub run_id: Option<String>,
    /// Timer of a timed pause, approval timeout or scale-down delay.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
    /// The step's analysis after a high-severity failure.
    #[serde(default)]
    pub grace: Grace,
    /// Argo mode: Argo paused the Rollout for a person; a promote of the release goes to Argo.
    #[serde(default)]
    pub argo_paused: bool,
    /// Argo mode: `promote --full` was sent to the Rollout.
    #[serde(default)]
    pub argo_full_sent: bool,
}

/// Where an analysis stands after a high-severity failure: traffic is held until `until`, then
/// the analysis runs once more as the re-check (whose failure aborts).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Grace {
    /// End of the hold.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
    /// The current run is the re-check.
    #[serde(default)]
    pub rechecked: bool,
    /// A background re-check holds the release until then: long enough for its metrics to
    /// measure twice. Surviving it means the degradation did not last.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub settle_until: Option<OffsetDateTime>,
}

impl Grace {
    /// While the hold lasts, its end; once it is over, marks what runs next as the re-check.
    pub fn hold(&mut self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        match self.until {
            Some(until) if now < until => Some(until),
            Some(_) => {
                self.until = None;
                self.rechecked = true;
                None
            }
            None => None,
        }
    }
}

/// The kind of the run that measures the stable track beside a background analysis.
pub const REFERENCE_KIND: &str = "reference";

/// An analysis run started by the release.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct AnalysisRecord {
    /// Run id.
    pub run_id: String,
    /// `step`, `background`, `prePromotion`, `postPromotion`, `verify`.
    pub kind: String,
    /// Step index.
    pub step_index: usize,
    /// Latest phase seen.
    pub phase: String,
    /// Latest message.
    pub message: String,
    /// Whether the run has completed (or was terminated).
    #[serde(default)]
    pub done: bool,
    /// Worst severity among its metrics that did not pass, once it ended without passing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<super::config::Severity>,
}

/// An experiment step of one attempt: the canary against a baseline of the stable artifact.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentRecord {
    /// Step.
    pub step_index: usize,
    /// Attempt it belongs to.
    pub attempt: u32,
    /// The stable artifact on the baseline.
    pub baseline_artifact: String,
    /// The released artifact.
    pub canary_artifact: String,
    /// Traffic percentage of each track.
    pub weight: u32,
    /// Intervals to judge.
    pub intervals: u32,
    /// Pass and marginal scores.
    pub pass: f64,
    /// Below: fail.
    pub marginal: f64,
    /// Run measuring the baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_run: Option<String>,
    /// Run measuring the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_run: Option<String>,
    /// When both runs had started: intervals end at multiples of the interval after it.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// Judgements so far.
    #[serde(default)]
    pub judged: Vec<IntervalJudgement>,
    /// `pass`, `marginal` or `fail` once decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// The baseline has been removed and the canary's weight restored.
    #[serde(default)]
    pub ended: bool,
}

/// The judgement of every sample up to the end of one interval.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IntervalJudgement {
    /// 1-based.
    pub index: u32,
    /// 0..=100.
    pub score: f64,
    /// `pass`, `marginal`, `fail`.
    pub verdict: String,
    /// Why.
    pub reason: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Per metric.
    pub metrics: Vec<super::effects::MetricJudgement>,
    /// Per group.
    #[serde(default)]
    pub group_scores: std::collections::BTreeMap<String, f64>,
}

/// A decision.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ApprovalRecord {
    /// Who.
    pub user: String,
    /// Who vouched for the user (the token's issuer); empty for decisions made before
    /// authentication.
    #[serde(default)]
    pub issuer: String,
    /// The issuer's id of the user.
    #[serde(default)]
    pub subject: String,
    /// Approve or reject.
    pub approved: bool,
    /// Why.
    pub reason: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Step it was for.
    pub step_index: usize,
    /// Attempt it was for (a retry needs fresh approvals).
    pub attempt: u32,
}

/// Set once the release is aborted.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct AbortState {
    /// Why.
    pub reason: String,
    /// Who.
    pub actor: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The return-to-stable desired state has been applied.
    #[serde(default)]
    pub rollback_applied: bool,
    /// Traffic is confirmed back on stable (what is left: the schema).
    #[serde(default)]
    pub traffic_back: bool,
}

/// What the release's migrate step did to a database, and what its abort did about it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct SchemaChange {
    /// Database.
    pub database: String,
    /// Script locations.
    pub locations: Vec<String>,
    /// Schema version before the migrate step (empty: nothing applied).
    pub before: String,
    /// Schema version after it.
    pub after: String,
    /// What an abort does.
    pub on_abort: super::config::OnAbort,
    /// The undo run started by the abort.
    #[serde(default)]
    pub undo_run: Option<String>,
    /// The abort has dealt with the schema (undone, failed to, or frozen).
    #[serde(default)]
    pub settled: bool,
}

/// A release and all the engine needs to continue it after a crash.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Release {
    /// Id.
    pub id: Uuid,
    /// Service.
    pub service: String,
    /// Environment.
    pub environment: String,
    /// Revision.
    pub revision: u64,
    /// Artifact.
    pub artifact: String,
    /// Creator.
    pub created_by: String,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Terminal time.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// Delivery config version the plan came from.
    pub config_version: u64,
    /// The plan (immutable; stored in a column of its own, so it is not rewritten on every change).
    #[serde(skip)]
    pub plan: Plan,
    /// Stable artifact when created.
    pub stable_artifact: Option<String>,
    /// Phase.
    pub phase: Phase,
    /// Completion, once terminal.
    pub completion: Option<Completion>,
    /// Latest status line.
    pub message: String,
    /// Last reason given by a person (abort, promote, reject...).
    #[serde(default)]
    pub reason: String,
    /// Current step.
    pub step_index: usize,
    /// Per-step progress.
    pub steps: Vec<StepRecord>,
    /// Progress inside the current step.
    #[serde(default)]
    pub cursor: StepCursor,
    /// Traffic share of the new artifact.
    pub canary_weight: u32,
    /// Canary replica policy.
    #[serde(default)]
    pub canary_scale: CanaryScale,
    /// Header and mirror routes to the canary in force (removed at the end and on abort).
    #[serde(default, skip_serializing_if = "Routes::is_empty")]
    pub routes: Routes,
    /// The experiments run, with each interval's judgement.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub experiments: Vec<ExperimentRecord>,
    /// Blue/green: the new artifact is active.
    #[serde(default)]
    pub switched: bool,
    /// A desired state may have reached the deployer (so an abort must restore stable).
    #[serde(default)]
    pub traffic_touched: bool,
    /// Background analysis run.
    #[serde(default)]
    pub background_run: Option<String>,
    /// Background analysis completed (or was cleared by a promote).
    #[serde(default)]
    pub background_done: bool,
    /// The stable track measured with the background analysis's metrics, as dry runs beside it
    /// (so canary and stable can be compared): its run id, or why it could not start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background_reference: Option<Result<String, String>>,
    /// The background analysis after a high-severity failure (the whole release is held).
    #[serde(default)]
    pub background_grace: Grace,
    /// The background analysis paused the release for a person (medium severity, inconclusive):
    /// nothing moves until a promote.
    #[serde(default)]
    pub held_for_person: bool,
    /// When the latest pause ends by itself (a timed pause step, a maintenance window); `None`
    /// when it waits for a person. Meaningful while the phase is PAUSED.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub resumes_at: Option<OffsetDateTime>,
    /// Analysis runs started.
    #[serde(default)]
    pub analysis_runs: Vec<AnalysisRecord>,
    /// Decisions.
    #[serde(default)]
    pub approvals: Vec<ApprovalRecord>,
    /// Attempt, from 1.
    pub attempt: u32,
    /// `promote --full` requested.
    #[serde(default)]
    pub promote_full: bool,
    /// Abort details.
    #[serde(default)]
    pub abort: Option<AbortState>,
    /// Deadline for progress.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub progress_deadline_at: Option<OffsetDateTime>,
    /// Consecutive failed calls to dependencies.
    #[serde(default)]
    pub failures: u32,
    /// Last dependency error.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Nothing left for the engine to do.
    #[serde(default)]
    pub settled: bool,
    /// Release that superseded this one.
    #[serde(default)]
    pub superseded_by: Option<Uuid>,
    /// Undo target revision.
    #[serde(default)]
    pub undo_of_revision: Option<u64>,
    /// Release group.
    #[serde(default)]
    pub group_id: Option<Uuid>,
    /// The member of an ended train this release returns to its previous version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returns_release: Option<Uuid>,
    /// What the migrate step did to the schema.
    #[serde(default)]
    pub schema: Option<SchemaChange>,
    /// Results of the latest preflight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preflight: Vec<super::effects::PreflightCheck>,
    /// Where the service's traffic enters, as the deployer last reported it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// The trace every advance of the release continues (W3C `traceparent` of the request that
    /// created it), so one trace shows the release across services, replicas and restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
    /// Event sequence of the latest transition.
    pub version: u64,
}

/// What a new release needs.
pub struct NewRelease {
    /// Id.
    pub id: Uuid,
    /// Service.
    pub service: String,
    /// Environment.
    pub environment: String,
    /// Revision.
    pub revision: u64,
    /// Artifact.
    pub artifact: String,
    /// Creator.
    pub created_by: String,
    /// Now.
    pub now: OffsetDateTime,
    /// Config version.
    pub config_version: u64,
    /// Plan.
    pub plan: Plan,
    /// Stable artifact.
    pub stable_artifact: Option<String>,
    /// Undo target.
    pub undo_of_revision: Option<u64>,
    /// Group.
    pub group_id: Option<Uuid>,
    /// The train member it returns to its previous version.
    pub returns_release: Option<Uuid>,
    /// Reason.
    pub reason: String,
}

impl Release {
    /// A release in phase PENDING.
    pub fn new(n: NewRelease) -> Release {
        let steps = n.plan.steps.iter().map(|_| StepRecord::pending()).collect();
        Release {
            id: n.id,
            service: n.service,
            environment: n.environment,
            revision: n.revision,
            artifact: n.artifact,
            created_by: n.created_by,
            created_at: n.now,
            updated_at: n.now,
            finished_at: None,
            config_version: n.config_version,
            plan: n.plan,
            stable_artifact: n.stable_artifact,
            phase: Phase::Pending,
            completion: None,
            message: "waiting to start".into(),
            reason: n.reason,
            step_index: 0,
            steps,
            cursor: StepCursor::default(),
            canary_weight: 0,
            canary_scale: CanaryScale::default(),
            routes: Routes::default(),
            experiments: Vec::new(),
            switched: false,
            traffic_touched: false,
            background_run: None,
            background_done: false,
            background_reference: None,
            background_grace: Grace::default(),
            held_for_person: false,
            resumes_at: None,
            analysis_runs: Vec::new(),
            approvals: Vec::new(),
            attempt: 1,
            promote_full: false,
            abort: None,
            progress_deadline_at: None,
            failures: 0,
            last_error: None,
            settled: false,
            superseded_by: None,
            undo_of_revision: n.undo_of_revision,
            group_id: n.group_id,
            returns_release: n.returns_release,
            schema: None,
            preflight: Vec::new(),
            address: String::new(),
            trace_parent: None,
            version: 0,
        }
    }

    /// Whether the release may be promoted to the next environment: it succeeded by running its
    /// plan (not `promote --full`), every verify step and analysis passed (none skipped), there
    /// was at least one, and no analysis's final verdict was a failure above low severity (the
    /// SLO held). `Err` says why not.
    pub fn verification(&self) -> Result<(), String> {
        use super::config::Severity;
        if self.phase != Phase::Succeeded {
            return Err(format!("it is {}, not SUCCEEDED", self.phase.as_str()));
        }
        if self.completion == Some(Completion::FastPromoted) {
            return Err("it was promoted with --full, so its remaining checks did not run".into());
        }
        let mut checks = 0;
        for (i, (step, record)) in self.plan.steps.iter().zip(&self.steps).enumerate() {
            if step.action.analysis().is_none() {
                continue;
            }
            match record.status {
                StepStatus::Succeeded => checks += 1,
                StepStatus::Skipped => return Err(format!("step {i} ({}) was skipped by a promote", step.name)),
                other => return Err(format!("step {i} ({}) is {other:?}", step.name)),
            }
        }
        if checks == 0 && self.plan.background.is_none() {
            return Err("its plan has no verify step or analysis".into());
        }
        // The latest run of each step (a re-check after a grace period replaces the first run).
        let mut latest: Vec<&AnalysisRecord> = Vec::new();
        for run in &self.analysis_runs {
            match latest.iter_mut().find(|r| r.kind == run.kind && r.step_index == run.step_index) {
                Some(slot) => *slot = run,
                None => latest.push(run),
            }
        }
        // The stable reference measures dry runs: it decides nothing.
        for run in latest.into_iter().filter(|r| r.kind != REFERENCE_KIND) {
            let failed = matches!(run.phase.as_str(), "FAILED" | "ERROR" | "INCONCLUSIVE");
            if failed && run.severity != Some(Severity::Low) {
                return Err(format!("its {} analysis {} ended {}: {}", run.kind, run.run_id, run.phase, run.message));
            }
        }
        Ok(())
    }

    /// Approvals counted for the current step of the current attempt.
    pub fn approvals_for_current_step(&self) -> impl Iterator<Item = &ApprovalRecord> {
        self.approvals
            .iter()
            .filter(move |a| a.approved && a.step_index == self.step_index && a.attempt == self.attempt)
    }
}
