//! The kinds of change a release goes through. Part of the contract: each becomes one event (its
//! name is the event data's `transition`) and one audit row, and subscribers match on the names.

use std::{fmt, str::FromStr};

macro_rules! transition_kinds {
    ($($(#[doc = $doc:literal])* $kind:ident = $name:literal,)+) => {
        /// Kinds of transition; each becomes one event and one audit row.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum TransitionKind {
            $($(#[doc = $doc])* $kind,)+
        }

        impl TransitionKind {
            /// Every kind, in lifecycle order.
            pub const ALL: &[TransitionKind] = &[$(TransitionKind::$kind,)+];

            /// The name used in events and the audit log.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(TransitionKind::$kind => $name,)+
                }
            }
        }
    };
}

transition_kinds! {
    /// Release stored.
    Created = "created",
    /// Engine started the plan.
    Started = "started",
    /// A step finished.
    StepCompleted = "step-completed",
    /// A step was skipped by a promote.
    StepSkipped = "step-skipped",
    /// New traffic split applied.
    WeightChanged = "weight-changed",
    /// Paused until someone promotes (a pause step without duration, a failed analysis).
    Paused = "paused",
    /// Paused on a timer (a timed pause step): nothing for anyone to do.
    Waiting = "waiting",
    /// A person promoted.
    Promoted = "promoted",
    /// Waiting for approvals.
    AwaitingApproval = "awaiting-approval",
    /// One approval recorded (not yet enough).
    ApprovalRecorded = "approval-recorded",
    /// Approvals complete.
    Approved = "approved",
    /// Rejected.
    Rejected = "rejected",
    /// Analysis run started.
    AnalysisStarted = "analysis-started",
    /// Analysis run completed.
    AnalysisCompleted = "analysis-completed",
    /// Aborted.
    Aborted = "aborted",
    /// Traffic back on stable after an abort.
    RolledBack = "rolled-back",
    /// New artifact stable.
    Succeeded = "succeeded",
    /// The return to stable failed.
    Failed = "failed",
    /// Replaced by a newer release.
    Superseded = "superseded",
    /// Restarted after an abort.
    Retried = "retried",
    /// The abort undid the release's migrations.
    SchemaUndone = "schema-undone",
    /// The abort could not undo the release's migrations.
    SchemaUndoFailed = "schema-undo-failed",
    /// The abort left the release's migrations in place (`onAbort: freeze`).
    SchemaFrozen = "schema-frozen",
}

impl fmt::Display for TransitionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a transition kind (events from elsewhere, such as the notifier's own
/// escalations, carry other names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownTransition(pub String);

impl FromStr for TransitionKind {
    type Err = UnknownTransition;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TransitionKind::ALL.iter().copied().find(|k| k.as_str() == s).ok_or_else(|| UnknownTransition(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_read_back() {
        let names: std::collections::BTreeSet<&str> = TransitionKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), TransitionKind::ALL.len());
        for kind in TransitionKind::ALL {
            assert_eq!(kind.as_str().parse::<TransitionKind>(), Ok(*kind));
        }
        assert_eq!("escalated".parse::<TransitionKind>(), Err(UnknownTransition("escalated".into())));
    }
}
