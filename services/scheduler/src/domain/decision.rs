//! The runbook's decision matrix: what a release does with an analysis verdict, by the severity
//! of the worst metric that did not pass.
//!
//! | verdict                 | critical | high                                   | medium | low    |
//! |-------------------------|----------|----------------------------------------|--------|--------|
//! | failed / error          | abort    | hold, re-check after the grace period; abort if it fails again | pause  | notify |
//! | inconclusive            | pause    | pause                                  | pause  | notify |
//!
//! "Notify" records the failure as an event (which reaches the notifier) and carries on.

use super::{config::Severity, effects::RunPhase};

/// What to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The analysis passed (or is still running): go on.
    Continue,
    /// Abort the release now.
    Abort,
    /// Hold traffic where it is and measure again after the grace period.
    Grace,
    /// Pause for a person (promote continues, abort aborts).
    Pause,
    /// Record and notify, then go on.
    Notify,
}

/// Decides on a completed verdict; `rechecked` is true when this verdict is the re-check after a
/// grace period.
pub fn decide(phase: RunPhase, severity: Severity, rechecked: bool) -> Decision {
    match (phase, severity) {
        (RunPhase::Pending | RunPhase::Running | RunPhase::Successful, _) => Decision::Continue,
        (_, Severity::Low) => Decision::Notify,
        (RunPhase::Inconclusive, _) => Decision::Pause,
        (_, Severity::Critical) => Decision::Abort,
        (_, Severity::High) if rechecked => Decision::Abort,
        (_, Severity::High) => Decision::Grace,
        (_, Severity::Medium) => Decision::Pause,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix() {
        use Decision::*;
        use RunPhase::*;
        assert_eq!(decide(Successful, Severity::Critical, false), Continue);
        assert_eq!(decide(Failed, Severity::Critical, false), Abort);
        assert_eq!(decide(Error, Severity::Critical, false), Abort);
        assert_eq!(decide(Failed, Severity::High, false), Grace);
        assert_eq!(decide(Failed, Severity::High, true), Abort);
        assert_eq!(decide(Failed, Severity::Medium, false), Pause);
        assert_eq!(decide(Failed, Severity::Low, false), Notify);
        assert_eq!(decide(Inconclusive, Severity::Critical, false), Pause);
        assert_eq!(decide(Inconclusive, Severity::High, false), Pause);
        assert_eq!(decide(Inconclusive, Severity::Low, false), Notify);
    }
}
