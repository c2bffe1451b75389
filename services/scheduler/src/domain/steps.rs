//! The step kinds. Each kind is one module with one entry point, `run`, that moves the release
//! through its step as far as it can now and returns what happens [`Next`]; [`run`] below picks
//! the module for the current step. Steps see the release through a [`StepCtx`] and change it
//! only through its methods and the release's fields, so every change is recorded the same way.
//! ARCHITECTURE.md, "Adding a step kind", walks through adding one.

pub(super) mod analysis;
mod approval;
mod argo_rollout;
#[cfg(test)]
mod checkpoint;
mod deploy_preview;
mod deploy_stable;
mod experiment;
mod maintenance_window;
mod migrate;
mod pause;
mod preflight;
pub(super) mod remote;
mod scale_down_old;
mod set_canary_scale;
mod set_header_route;
mod set_mirror_route;
mod set_weight;
mod switch_active;
pub(super) mod traffic;

use std::time::Duration;

use time::OffsetDateTime;

pub(super) use analysis::AnalysisRun;
pub use traffic::preview_state;

use super::{
    effects::{EffectError, Effects},
    machine::{ENGINE, Settings, Transition, abort_now, after, complete_step, pause, record},
    plan::StepAction,
    release::{Phase, Release, StepStatus},
};
use hopngo_proto::transitions::TransitionKind;

/// What happens after a step (or the engine) has done what it can now.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Look again right away: something changed that the next look acts on.
    Continue,
    /// Nothing more to do until this time (`None`: until a person acts).
    Wait(Option<OffsetDateTime>),
}

/// What a step works with: the release, the time of this look, the other services, the engine's
/// timing, and the transitions made so far in this look.
pub struct StepCtx<'a, E> {
    /// The release, changed in place.
    pub r: &'a mut Release,
    /// Now, for this whole look.
    pub now: OffsetDateTime,
    /// The other services.
    pub fx: &'a E,
    /// Engine timing.
    pub settings: &'a Settings,
    /// Transitions made, in order.
    pub out: &'a mut Vec<Transition>,
}

impl<E: Effects> StepCtx<'_, E> {
    /// The time `d` from now.
    pub fn later(&self, d: Duration) -> OffsetDateTime {
        after(self.now, d)
    }

    /// Look again after the poll interval (something is converging or measuring).
    pub fn poll_later(&self) -> Next {
        Next::Wait(Some(self.later(self.settings.poll_interval)))
    }

    /// Records a transition made by the engine (from phase `from` to the release's phase now).
    pub fn record(&mut self, kind: TransitionKind, from: Phase, message: impl Into<String>) {
        record(self.r, kind, ENGINE, from, message, self.out);
    }

    /// The current step ended with `status`; the next one starts.
    pub fn complete(&mut self, status: StepStatus, message: &str) -> Next {
        complete_step(self.r, self.now, status, ENGINE, message, self.out);
        Next::Continue
    }

    /// Aborts the release (`failed_step`: the current step is why).
    pub fn abort(&mut self, reason: &str, failed_step: bool) -> Next {
        abort_now(self.r, self.now, ENGINE, reason, failed_step, self.out);
        Next::Continue
    }

    /// Pauses until `resumes_at`, or until a person promotes.
    pub fn pause(&mut self, resumes_at: Option<OffsetDateTime>, message: &str) -> Next {
        pause(self.r, resumes_at, message, self.out);
        Next::Wait(resumes_at)
    }

    /// Remembers the run the current step started (an analysis or a migration).
    pub fn remember_step_run(&mut self, run_id: &str) {
        self.r.cursor.run_id = Some(run_id.to_string());
        if let Some(rec) = self.r.steps.get_mut(self.r.step_index) {
            rec.run_id = Some(run_id.to_string());
        }
    }

    /// A call failed in a way that may pass: look again after a backoff that grows with each
    /// failure in a row.
    pub fn retry_later(&mut self, err: &EffectError) -> Next {
        let r = &mut *self.r;
        r.failures += 1;
        r.last_error = Some(err.to_string());
        let delay = hopngo_kit::backoff::delay(r.failures, self.settings.retry_base, self.settings.retry_max);
        r.message = format!("waiting for {} (attempt {}): {}", err.dependency, r.failures, err.message);
        Next::Wait(Some(after(self.now, delay)))
    }
}

/// Runs the current step: `action` is the plan's step at the release's `step_index`.
pub(super) async fn run<E: Effects>(cx: &mut StepCtx<'_, E>, action: &StepAction) -> Next {
    match action {
        StepAction::SetWeight { weight } => set_weight::run(cx, *weight).await,
        StepAction::SetCanaryScale { scale } => set_canary_scale::run(cx, *scale).await,
        StepAction::SetHeaderRoute { route } => set_header_route::run(cx, route).await,
        StepAction::SetMirrorRoute { route } => set_mirror_route::run(cx, route).await,
        StepAction::Experiment { experiment } => experiment::run(cx, experiment).await,
        StepAction::DeployPreview { replicas } => deploy_preview::run(cx, *replicas).await,
        StepAction::SwitchActive => switch_active::run(cx).await,
        StepAction::DeployStable => deploy_stable::run(cx).await,
        StepAction::ScaleDownOld { delay } => scale_down_old::run(cx, delay.0).await,
        StepAction::Pause { duration } => pause::run(cx, duration.map(|d| d.0)),
        StepAction::Analysis { analysis }
        | StepAction::Verify { analysis }
        | StepAction::PrePromotionAnalysis { analysis }
        | StepAction::PostPromotionAnalysis { analysis } => {
            analysis::run(cx, analysis, action.analysis_run().map_or("step", |(_, kind)| kind)).await
        }
        StepAction::MaintenanceWindow { windows } => maintenance_window::run(cx, windows),
        StepAction::Preflight { dependencies } => preflight::run(cx, dependencies).await,
        StepAction::Approval { policy } => approval::run(cx, policy),
        StepAction::Migrate { database, locations, target_version, on_abort } => {
            migrate::run(cx, database, locations, target_version, *on_abort).await
        }
        StepAction::ArgoRollout { full } => argo_rollout::run(cx, *full).await,
        #[cfg(test)]
        StepAction::Checkpoint { label } => checkpoint::run(cx, label),
    }
}

/// Whether a promote skips the current step of this kind (`paused`: the release is paused at it).
/// Steps that change something (traffic, schema) are never skipped one by one: they finish, or
/// `promote --full` skips them all.
pub(super) fn promote_skips(action: &StepAction, paused: bool) -> bool {
    match action {
        StepAction::Pause { .. } => true,
        StepAction::Analysis { .. }
        | StepAction::PrePromotionAnalysis { .. }
        | StepAction::PostPromotionAnalysis { .. } => true,
        // A verification is skipped only once it has stopped for a person (inconclusive).
        StepAction::Verify { .. } => paused,
        // Deploying outside the window is a person's explicit call.
        StepAction::MaintenanceWindow { .. } => true,
        StepAction::SetWeight { .. }
        | StepAction::SetCanaryScale { .. }
        | StepAction::SetHeaderRoute { .. }
        | StepAction::SetMirrorRoute { .. }
        // A person's promote accepts a marginal experiment; it still ends (baseline removed).
        | StepAction::Experiment { .. }
        | StepAction::DeployPreview { .. }
        | StepAction::SwitchActive
        | StepAction::DeployStable
        | StepAction::ScaleDownOld { .. }
        | StepAction::Preflight { .. }
        | StepAction::Approval { .. }
        | StepAction::Migrate { .. } => false,
        // Argo's own steps are not skipped one by one: a promote resumes the paused release and
        // is forwarded to Argo, `--full` skips them all.
        StepAction::ArgoRollout { .. } => false,
        #[cfg(test)]
        StepAction::Checkpoint { .. } => false,
    }
}

/// What `promote --full` does with a remaining step of this kind.
pub(super) enum FullPromotion {
    /// Skipped with every other remaining step.
    Skipped,
    /// Still runs: the full promotion skips up to it (preflight's checks are not optional).
    Runs,
    /// The full promotion is refused while such a step remains.
    Refused(Unskippable),
}

/// Steps a full promotion cannot skip, in the order the refusal names them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Unskippable {
    /// Approvals are never skipped.
    Approval,
    /// New code must not take traffic before its schema exists.
    Migration,
}

impl Unskippable {
    /// Why the full promotion is refused.
    pub(super) fn reason(self) -> &'static str {
        match self {
            Unskippable::Approval => "an approval step remains; approvals cannot be skipped",
            Unskippable::Migration => "a migrate step remains; migrations cannot be skipped",
        }
    }
}

/// What `promote --full` does with a step of this kind.
pub(super) fn on_full_promotion(action: &StepAction) -> FullPromotion {
    match action {
        StepAction::Approval { .. } => FullPromotion::Refused(Unskippable::Approval),
        StepAction::Migrate { .. } => FullPromotion::Refused(Unskippable::Migration),
        StepAction::Preflight { .. } => FullPromotion::Runs,
        // The Rollout must still get the artifact; the step forwards the full promotion to Argo.
        StepAction::ArgoRollout { .. } => FullPromotion::Runs,
        StepAction::SetWeight { .. }
        | StepAction::Pause { .. }
        | StepAction::Analysis { .. }
        | StepAction::Verify { .. }
        | StepAction::SetCanaryScale { .. }
        // The full promotion's final state has no routes: skipping them loses nothing.
        | StepAction::SetHeaderRoute { .. }
        | StepAction::SetMirrorRoute { .. }
        | StepAction::Experiment { .. }
        | StepAction::DeployPreview { .. }
        | StepAction::PrePromotionAnalysis { .. }
        | StepAction::SwitchActive
        | StepAction::PostPromotionAnalysis { .. }
        | StepAction::ScaleDownOld { .. }
        | StepAction::DeployStable
        | StepAction::MaintenanceWindow { .. } => FullPromotion::Skipped,
        #[cfg(test)]
        StepAction::Checkpoint { .. } => FullPromotion::Skipped,
    }
}
