//! What the engine asks of the other services, in domain terms. The gRPC adapter in
//! `crate::deps` implements [`Effects`] over the deployer, analyzer and migrator contracts; unit
//! tests implement it in memory.

use std::{collections::BTreeMap, future::Future};

use super::{config::routes::Routes, plan::AnalysisSpec};

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
