//! What the engine asks of the other services, in domain terms. The gRPC adapter in
//! `crate::deps` implements [`Effects`] over the deployer, analyzer and migrator contracts; unit
//! tests implement it in memory.

use std::{collections::BTreeMap, future::Future};

use serde::{Deserialize, Serialize};

use super::{
    config::{
        experiment::{JudgeDef, Thresholds},
        routes::Routes,
    },
    plan::AnalysisSpec,
};

/// A track of the desired state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Track {
    /// Canary model: most traffic.
    Stable,
    /// Canary model: `canary_weight` percent.
    Canary,
    /// Blue/green: all traffic.
    Active,
    /// Blue/green: tests only.
    Preview,
    /// Canary model, during an experiment: the stable artifact on fresh replicas, weighted like
    /// the canary.
    Baseline,
}

/// Desired state of one track.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackState {
    /// Track.
    pub track: Track,
    /// Artifact.
    pub artifact: String,
    /// Replicas.
    pub replicas: u32,
}

/// Desired state of a service in an environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredState {
    /// Service.
    pub service: String,
    /// Environment.
    pub environment: String,
    /// Tracks.
    pub tracks: Vec<TrackState>,
    /// Canary weight.
    pub canary_weight: u32,
    /// Header and mirror routes to the canary.
    pub routes: Routes,
}

/// Observed state, reduced to what the engine needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetObservation {
    /// Desired replicas ready and weight in force.
    pub converged: bool,
    /// Weight in force.
    pub canary_weight: u32,
    /// Idempotency key of the desired state in force.
    pub idempotency_key: String,
    /// What is not converged.
    pub message: String,
    /// Where the service's traffic enters (`host:port`), as the backend reports it.
    pub address: String,
    /// The Argo Rollout's own progress, for a service released through its Rollout.
    pub rollout: Option<RolloutProgress>,
}

/// What Argo's controller reports about a service's Rollout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolloutProgress {
    /// Healthy, Progressing, Paused, Degraded.
    pub phase: String,
    /// Argo's message.
    pub message: String,
    /// Current canary step.
    pub step: u32,
    /// Canary steps.
    pub steps: u32,
    /// Canary traffic share.
    pub weight: u32,
    /// Paused, by a pause step or by hand.
    pub paused: bool,
    /// Paused until someone promotes (a pause step without a duration, or by hand).
    pub awaiting_promotion: bool,
    /// The update was aborted (by Argo's own analysis, or by hand).
    pub aborted: bool,
}

/// What the engine asks Argo to do to a Rollout (the deployer's ControlRollout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutControl {
    /// End the current pause.
    Promote,
    /// Skip every remaining step.
    PromoteFull,
    /// Send all traffic back to stable now.
    Abort,
}

/// What preflight checks for a release.
#[derive(Clone, Debug, PartialEq)]
pub struct PreflightRequest {
    /// Service.
    pub service: String,
    /// Environment.
    pub environment: String,
    /// Every analysis the plan will run, with the arguments it will run with.
    pub analyses: Vec<(AnalysisSpec, BTreeMap<String, String>)>,
    /// Database and script locations, if the plan migrates.
    pub migrations: Option<(String, Vec<String>)>,
    /// Services that must be running in the environment.
    pub dependencies: Vec<String>,
}

/// One preflight result.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PreflightCheck {
    /// `backend/<check>`, `metrics/<metric>`, `migrations/<database>`, `dependency/<service>`.
    pub name: String,
    /// Passed.
    pub ok: bool,
    /// Detail or reason.
    pub message: String,
}

/// Phase of an analysis run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunPhase {
    /// Not started.
    Pending,
    /// Measuring.
    Running,
    /// Passed.
    Successful,
    /// Failed.
    Failed,
    /// Could not measure.
    Error,
    /// Undecided.
    Inconclusive,
}

impl RunPhase {
    /// Name used in the release view.
    pub fn as_str(self) -> &'static str {
        match self {
            RunPhase::Pending => "PENDING",
            RunPhase::Running => "RUNNING",
            RunPhase::Successful => "SUCCESSFUL",
            RunPhase::Failed => "FAILED",
            RunPhase::Error => "ERROR",
            RunPhase::Inconclusive => "INCONCLUSIVE",
        }
    }
}

/// Observed analysis run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunObservation {
    /// Phase.
    pub phase: RunPhase,
    /// Message.
    pub message: String,
    /// Worst severity among the metrics that did not pass (critical when unknown).
    pub severity: super::config::Severity,
}

/// An analysis run with the values it measured: per metric, oldest first (no data and values
/// that are not numbers are NaN).
#[derive(Clone, Debug, PartialEq)]
pub struct RunSamples {
    /// The run.
    pub observation: RunObservation,
    /// Values by metric name.
    pub samples: BTreeMap<String, Vec<f64>>,
}

/// One metric's two samples and how to judge them.
#[derive(Clone, Debug, PartialEq)]
pub struct JudgedMetric {
    /// Metric name.
    pub name: String,
    /// Baseline sample.
    pub baseline: Vec<f64>,
    /// Canary sample.
    pub canary: Vec<f64>,
    /// How it is judged.
    pub judge: JudgeDef,
}

/// What the analyzer's judge is asked.
#[derive(Clone, Debug, PartialEq)]
pub struct JudgeRequest {
    /// Metrics.
    pub metrics: Vec<JudgedMetric>,
    /// Weight per group.
    pub group_weights: BTreeMap<String, f64>,
    /// Pass and marginal scores.
    pub thresholds: Thresholds,
}

/// What the judge said of one metric (statistics that are undefined, such as the mean ratio
/// of a zero baseline, are `None`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricJudgement {
    /// Metric name.
    pub name: String,
    /// Group.
    pub group: String,
    /// `PASS`, `HIGH`, `LOW`, `NODATA`, `NODATA_FAIL_METRIC`, `ERROR`.
    pub classification: String,
    /// Baseline points used.
    pub baseline_count: u32,
    /// Baseline mean.
    pub baseline_mean: Option<f64>,
    /// Canary points used.
    pub canary_count: u32,
    /// Canary mean.
    pub canary_mean: Option<f64>,
    /// Mann-Whitney p-value.
    pub p_value: Option<f64>,
    /// mean(canary) / mean(baseline).
    pub mean_ratio: Option<f64>,
    /// P(canary > baseline) + P(equal) / 2.
    pub cles: Option<f64>,
    /// Shift interval, lower bound.
    pub ci_lower: Option<f64>,
    /// Shift interval, upper bound.
    pub ci_upper: Option<f64>,
    /// This result failed the whole judgement.
    pub critical: bool,
    /// Why.
    pub reason: String,
}

/// The judge's verdict.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Judgement {
    /// 0..=100.
    pub score: f64,
    /// `pass`, `marginal`, `fail`.
    pub verdict: String,
    /// Why.
    pub reason: String,
    /// Per metric.
    pub metrics: Vec<MetricJudgement>,
    /// Per group.
    pub group_scores: BTreeMap<String, f64>,
}

/// Phase of a migration run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrationPhase {
    /// Waiting for the lock.
    Pending,
    /// Applying.
    Running,
    /// Done.
    Succeeded,
    /// Failed.
    Failed,
}

/// Observed migration run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationObservation {
    /// Phase.
    pub phase: MigrationPhase,
    /// Message.
    pub message: String,
    /// Schema version before the run (empty: nothing applied).
    pub version_before: String,
    /// Schema version after the run.
    pub version_after: String,
}

/// What a migration run does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MigrationAction {
    /// Apply pending migrations (up to a version).
    Migrate {
        /// Target version (latest when absent).
        target_version: Option<String>,
    },
    /// Undo applied migrations down to a version (every one when absent).
    Undo {
        /// Version to end at.
        to_version: Option<String>,
    },
}

/// A migration to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationRequest {
    /// Database.
    pub database: String,
    /// Script locations.
    pub locations: Vec<String>,
    /// What to do.
    pub action: MigrationAction,
}

/// A failed call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectError {
    /// Which dependency (`deployer`, `analyzer`, `migrator`).
    pub dependency: &'static str,
    /// Whether repeating the call may succeed (unavailable, timeout); otherwise it was refused.
    pub retryable: bool,
    /// Whether the call may have taken effect although it failed (a timeout).
    pub uncertain: bool,
    /// Detail.
    pub message: String,
}

impl std::fmt::Display for EffectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.dependency, self.message)
    }
}

/// Calls to other services. Every starting call carries an idempotency key, so a repeat after a
/// crash has no further effect.
pub trait Effects: Sync {
    /// Deployer ApplyTarget.
    fn apply_target(&self, key: &str, desired: &DesiredState) -> impl Future<Output = Result<(), EffectError>> + Send;
    /// Deployer GetTargetStatus.
    fn target_status(
        &self,
        service: &str,
        environment: &str,
    ) -> impl Future<Output = Result<TargetObservation, EffectError>> + Send;
    /// Deployer ControlRollout.
    fn control_rollout(
        &self,
        service: &str,
        environment: &str,
        action: RolloutControl,
    ) -> impl Future<Output = Result<(), EffectError>> + Send;
    /// Analyzer StartAnalysisRun; returns the run id.
    fn start_analysis(
        &self,
        key: &str,
        spec: &AnalysisSpec,
        args: &BTreeMap<String, String>,
        labels: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<String, EffectError>> + Send;
    /// Analyzer GetAnalysisRun.
    fn analysis_status(&self, run_id: &str) -> impl Future<Output = Result<RunObservation, EffectError>> + Send;
    /// Analyzer GetAnalysisRun with the values measured.
    fn analysis_samples(&self, run_id: &str) -> impl Future<Output = Result<RunSamples, EffectError>> + Send;
    /// Analyzer Judge.
    fn judge(&self, request: &JudgeRequest) -> impl Future<Output = Result<Judgement, EffectError>> + Send;
    /// Analyzer TerminateAnalysisRun; returns the run as it ended.
    fn terminate_analysis(
        &self,
        run_id: &str,
        reason: &str,
    ) -> impl Future<Output = Result<RunObservation, EffectError>> + Send;
    /// Migrator StartMigration (migrate or undo); returns the run id.
    fn start_migration(
        &self,
        key: &str,
        request: &MigrationRequest,
    ) -> impl Future<Output = Result<String, EffectError>> + Send;
    /// Migrator GetMigrationRun.
    fn migration_status(&self, run_id: &str) -> impl Future<Output = Result<MigrationObservation, EffectError>> + Send;
    /// The preflight checklist: deployer Preflight, analyzer CheckProviders, migrator Validate,
    /// the dependencies' status. A check that answers "no" is a failed check; a dependency that
    /// cannot be asked (unavailable) is an error, so the caller can try again.
    fn preflight(
        &self,
        request: &PreflightRequest,
    ) -> impl Future<Output = Result<Vec<PreflightCheck>, EffectError>> + Send;
}
