//! How transitions are told to the world: CDEvents types (CloudEvents binding) where CDEvents has
//! one, the `dev.cdeventsx.hopngo-*` custom namespace otherwise, and a severity for filtering.

use hopngo_proto::event_types as types;
use serde::{Deserialize, Serialize};

use super::{
    machine::{Transition, TransitionKind},
    release::Release,
};

/// Event severity.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventSeverity {
    /// Progress.
    Info,
    /// Needs a look.
    Warning,
    /// Went wrong.
    Error,
    /// Needs a person now.
    Critical,
}

impl EventSeverity {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventSeverity::Info => "INFO",
            EventSeverity::Warning => "WARNING",
            EventSeverity::Error => "ERROR",
            EventSeverity::Critical => "CRITICAL",
        }
    }
}

/// CloudEvents `type` of a transition.
pub fn event_type(kind: TransitionKind, r: &Release) -> &'static str {
    match kind {
        TransitionKind::Created => types::RELEASE_CREATED,
        TransitionKind::Started => types::RELEASE_STARTED,
        TransitionKind::StepCompleted => types::RELEASE_STEP_COMPLETED,
        TransitionKind::StepSkipped => types::RELEASE_STEP_SKIPPED,
        TransitionKind::WeightChanged => types::CANARY_WEIGHT_CHANGED,
        TransitionKind::Paused | TransitionKind::Waiting => types::RELEASE_PAUSED,
        TransitionKind::Promoted => types::RELEASE_PROMOTED,
        TransitionKind::AwaitingApproval => types::APPROVAL_CREATED,
        TransitionKind::ApprovalRecorded => types::APPROVAL_UPDATED,
        TransitionKind::Approved | TransitionKind::Rejected => types::APPROVAL_CLOSED,
        TransitionKind::AnalysisStarted => types::ANALYSIS_STARTED,
        TransitionKind::AnalysisCompleted => types::ANALYSIS_COMPLETED,
        TransitionKind::Aborted => types::RELEASE_ABORTED,
        TransitionKind::RolledBack => types::SERVICE_ROLLEDBACK,
        TransitionKind::Succeeded if r.undo_of_revision.is_some() => types::SERVICE_ROLLEDBACK,
        TransitionKind::Succeeded if r.stable_artifact.is_none() => types::SERVICE_DEPLOYED,
        TransitionKind::Succeeded => types::SERVICE_UPGRADED,
        TransitionKind::Failed => types::RELEASE_FAILED,
        TransitionKind::Superseded => types::RELEASE_SUPERSEDED,
        TransitionKind::Retried => types::RELEASE_RETRIED,
        TransitionKind::SchemaUndone => types::SCHEMA_UNDONE,
        TransitionKind::SchemaUndoFailed => types::SCHEMA_UNDO_FAILED,
        TransitionKind::SchemaFrozen => types::SCHEMA_FROZEN,
    }
}

/// Severity of a transition.
pub fn severity(kind: TransitionKind) -> EventSeverity {
    match kind {
        TransitionKind::Failed => EventSeverity::Critical,
        TransitionKind::Aborted | TransitionKind::Rejected | TransitionKind::SchemaUndoFailed => EventSeverity::Error,
        TransitionKind::Paused
        | TransitionKind::AwaitingApproval
        | TransitionKind::RolledBack
        | TransitionKind::SchemaUndone
        | TransitionKind::SchemaFrozen => EventSeverity::Warning,
        _ => EventSeverity::Info,
    }
}

/// The stored event payload (mirrors `hopngo.events.v1.ReleaseEventData` plus routing fields).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct EventPayload {
    /// Service.
    pub service: String,
    /// Environment.
    pub environment: String,
    /// Revision.
    pub revision: u64,
    /// Artifact.
    pub artifact: String,
    /// Stable artifact at creation.
    pub stable_artifact: String,
    /// Phase after.
    pub phase: String,
    /// Completion after.
    pub completion: String,
    /// Step index after.
    pub step_index: u32,
    /// Step name after.
    pub step_name: String,
    /// Canary weight after.
    pub canary_weight: u32,
    /// Actor.
    pub actor: String,
    /// Message.
    pub message: String,
    /// Transition name.
    pub transition: String,
    /// Release group.
    pub release_group_id: String,
}

/// Builds the payload of one transition.
pub fn payload(r: &Release, t: &Transition) -> EventPayload {
    EventPayload {
        service: r.service.clone(),
        environment: r.environment.clone(),
        revision: r.revision,
        artifact: r.artifact.clone(),
        stable_artifact: r.stable_artifact.clone().unwrap_or_default(),
        phase: t.to.as_str().to_string(),
        completion: r.completion.filter(|_| t.to.is_terminal()).map(|c| c.as_str().to_string()).unwrap_or_default(),
        step_index: t.step_index as u32,
        step_name: r.plan.steps.get(t.step_index).map(|s| s.name.clone()).unwrap_or_default(),
        canary_weight: t.canary_weight,
        actor: t.actor.clone(),
        message: t.message.clone(),
        transition: t.kind.as_str().to_string(),
        release_group_id: r.group_id.map(|g| g.to_string()).unwrap_or_default(),
    }
}
