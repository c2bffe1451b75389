//! The event types the control plane emits (CloudEvents `type`): CDEvents types where CDEvents has
//! one, the CDEvents custom namespace `dev.cdeventsx.hopngo-*` otherwise. Part of the contract:
//! subscribers filter on these strings, so a type is added here before anything emits it.

/// A service got its first stable version.
pub const SERVICE_DEPLOYED: &str = "dev.cdevents.service.deployed.0.3.0";
/// A release replaced a stable version.
pub const SERVICE_UPGRADED: &str = "dev.cdevents.service.upgraded.0.3.0";
/// A service went back to an earlier version (abort, undo).
pub const SERVICE_ROLLEDBACK: &str = "dev.cdevents.service.rolledback.0.3.0";
/// A release waits for approval.
pub const APPROVAL_CREATED: &str = "dev.cdevents.approval.created.0.1.0";
/// An approval or rejection was recorded (more may be needed).
pub const APPROVAL_UPDATED: &str = "dev.cdevents.approval.updated.0.1.0";
/// The approval gate closed (approved or rejected).
pub const APPROVAL_CLOSED: &str = "dev.cdevents.approval.closed.0.1.0";
/// A release was stored.
pub const RELEASE_CREATED: &str = "dev.cdeventsx.hopngo-release.created.0.1.0";
/// A release started executing its plan.
pub const RELEASE_STARTED: &str = "dev.cdeventsx.hopngo-release.started.0.1.0";
/// A plan step completed.
pub const RELEASE_STEP_COMPLETED: &str = "dev.cdeventsx.hopngo-release.step-completed.0.1.0";
/// A plan step was skipped.
pub const RELEASE_STEP_SKIPPED: &str = "dev.cdeventsx.hopngo-release.step-skipped.0.1.0";
/// The canary's traffic share changed.
pub const CANARY_WEIGHT_CHANGED: &str = "dev.cdeventsx.hopngo-canary.weight-changed.0.1.0";
/// A release paused.
pub const RELEASE_PAUSED: &str = "dev.cdeventsx.hopngo-release.paused.0.1.0";
/// A release was promoted by a person.
pub const RELEASE_PROMOTED: &str = "dev.cdeventsx.hopngo-release.promoted.0.1.0";
/// An analysis run started.
pub const ANALYSIS_STARTED: &str = "dev.cdeventsx.hopngo-analysis.started.0.1.0";
/// An analysis run ended with a verdict.
pub const ANALYSIS_COMPLETED: &str = "dev.cdeventsx.hopngo-analysis.completed.0.1.0";
/// A release was aborted.
pub const RELEASE_ABORTED: &str = "dev.cdeventsx.hopngo-release.aborted.0.1.0";
/// A release failed: returning to stable could not be confirmed.
pub const RELEASE_FAILED: &str = "dev.cdeventsx.hopngo-release.failed.0.1.0";
/// A newer release replaced this one.
pub const RELEASE_SUPERSEDED: &str = "dev.cdeventsx.hopngo-release.superseded.0.1.0";
/// An aborted release was retried.
pub const RELEASE_RETRIED: &str = "dev.cdeventsx.hopngo-release.retried.0.1.0";
/// A release's schema migrations were undone after an abort.
pub const SCHEMA_UNDONE: &str = "dev.cdeventsx.hopngo-schema.undone.0.1.0";
/// Undoing a release's schema migrations failed.
pub const SCHEMA_UNDO_FAILED: &str = "dev.cdeventsx.hopngo-schema.undo-failed.0.1.0";
/// A release's schema was left as it was after an abort.
pub const SCHEMA_FROZEN: &str = "dev.cdeventsx.hopngo-schema.frozen.0.1.0";
/// The notifier escalated a release's condition to the next level of its policy.
pub const ESCALATION_ESCALATED: &str = "dev.cdeventsx.hopngo-escalation.escalated.0.1.0";
/// Someone acknowledged a release's condition; its escalation stopped.
pub const ESCALATION_ACKNOWLEDGED: &str = "dev.cdeventsx.hopngo-escalation.acknowledged.0.1.0";

/// Every type above.
pub const ALL: &[&str] = &[
    SERVICE_DEPLOYED,
    SERVICE_UPGRADED,
    SERVICE_ROLLEDBACK,
    APPROVAL_CREATED,
    APPROVAL_UPDATED,
    APPROVAL_CLOSED,
    RELEASE_CREATED,
    RELEASE_STARTED,
    RELEASE_STEP_COMPLETED,
    RELEASE_STEP_SKIPPED,
    CANARY_WEIGHT_CHANGED,
    RELEASE_PAUSED,
    RELEASE_PROMOTED,
    ANALYSIS_STARTED,
    ANALYSIS_COMPLETED,
    RELEASE_ABORTED,
    RELEASE_FAILED,
    RELEASE_SUPERSEDED,
    RELEASE_RETRIED,
    SCHEMA_UNDONE,
    SCHEMA_UNDO_FAILED,
    SCHEMA_FROZEN,
    ESCALATION_ESCALATED,
    ESCALATION_ACKNOWLEDGED,
];

/// A type without its trailing `.M.m.p` version (`dev.cdevents.service.deployed`).
pub fn without_version(t: &str) -> &str {
    let mut end = t.len();
    for _ in 0..3 {
        end = t[..end].rfind('.').unwrap_or(0);
    }
    &t[..end]
}

/// The short name people type and read: no namespace, no version (`service.deployed`,
/// `hopngo-canary.weight-changed`).
pub fn short_name(t: &str) -> &str {
    let t = without_version(t);
    t.strip_prefix("dev.cdevents.").or_else(|| t.strip_prefix("dev.cdeventsx.")).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_unique_and_drop_namespace_and_version() {
        assert_eq!(short_name(SERVICE_DEPLOYED), "service.deployed");
        assert_eq!(short_name(CANARY_WEIGHT_CHANGED), "hopngo-canary.weight-changed");
        assert_eq!(without_version("dev.cdevents.service.deployed.0.2.0"), "dev.cdevents.service.deployed");
        let mut names: Vec<&str> = ALL.iter().map(|t| short_name(t)).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }
}
