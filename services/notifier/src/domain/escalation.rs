//! Escalation: a release that is failed, aborted, stuck or waiting for approval needs a person.
//! Nobody acknowledging it escalates it level by level (on-call → team lead → incident commander
//! → executives) as time passes since the condition began; acknowledging stops it, and the
//! release leaving the condition ends it.

use std::time::Duration;

use time::OffsetDateTime;

/// Why a release needs a person.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Condition {
    /// Returning to stable could not be confirmed.
    Failed,
    /// Stopped; traffic on stable, the new version not released.
    Aborted,
    /// Still running, but nothing happened for the policy's `stuck_after`.
    Stuck,
    /// Waiting for approvals.
    AwaitingApproval,
}

impl Condition {
    /// Every condition.
    pub const ALL: [Condition; 4] =
        [Condition::Failed, Condition::Aborted, Condition::Stuck, Condition::AwaitingApproval];

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Failed => "failed",
            Condition::Aborted => "aborted",
            Condition::Stuck => "stuck",
            Condition::AwaitingApproval => "awaiting-approval",
        }
    }

    /// Reads a name.
    pub fn parse(s: &str) -> Option<Condition> {
        Condition::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// One level of a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Level {
    /// Who is told (`on-call`, `team-lead`, ...).
    pub name: String,
    /// How long after the condition began.
    pub after: Duration,
}

/// An escalation policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Levels, in order of `after`.
    pub levels: Vec<Level>,
    /// Conditions that escalate.
    pub conditions: Vec<Condition>,
    /// A running release with no event for this long is stuck.
    pub stuck_after: Duration,
    /// Environments whose releases escalate; empty means all.
    pub environments: Vec<String>,
}

impl Policy {
    /// The runbook's matrix: on-call at once, team lead after 15 min, incident commander after
    /// 30, executives after 60.
    pub fn runbook() -> Policy {
        let level = |name: &str, minutes: u64| Level { name: name.into(), after: Duration::from_secs(minutes * 60) };
        Policy {
            levels: vec![
                level("on-call", 0),
                level("team-lead", 15),
                level("incident-commander", 30),
                level("executives", 60),
            ],
            conditions: Condition::ALL.to_vec(),
            stuck_after: Duration::from_secs(30 * 60),
            environments: Vec::new(),
        }
    }

    /// Checks that levels are named once each and in order of time.
    pub fn check(&self) -> Result<(), String> {
        if self.levels.is_empty() {
            return Err("an escalation policy needs at least one level".into());
        }
        for (i, l) in self.levels.iter().enumerate() {
            if l.name.is_empty() || !l.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(format!("level {:?}: names are letters, digits, - and _", l.name));
            }
            if self.levels[..i].iter().any(|o| o.name == l.name) {
                return Err(format!("level {:?} is listed twice", l.name));
            }
            if i > 0 && l.after < self.levels[i - 1].after {
                return Err(format!(
                    "level {:?} comes before {:?} in time; list levels in order",
                    l.name,
                    self.levels[i - 1].name
                ));
            }
        }
        Ok(())
    }

    /// Level names.
    pub fn level_names(&self) -> Vec<String> {
        self.levels.iter().map(|l| l.name.clone()).collect()
    }

    fn watches(&self, environment: &str, c: Condition) -> bool {
        self.conditions.contains(&c)
            && (self.environments.is_empty() || self.environments.iter().any(|e| e == environment))
    }
}

/// Phases in which a release still runs (and so can be stuck).
fn is_running(phase: &str) -> bool {
    matches!(phase, "PENDING" | "PROGRESSING" | "PAUSED")
}

/// The condition a phase puts a release in (stuck is a matter of time, not of phase).
fn condition_of(phase: &str) -> Option<Condition> {
    match phase {
        "FAILED" => Some(Condition::Failed),
        "ABORTED" => Some(Condition::Aborted),
        "AWAITING_APPROVAL" => Some(Condition::AwaitingApproval),
        _ => None,
    }
}

/// An acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// Who.
    pub by: String,
    /// When.
    pub at: OffsetDateTime,
    /// Their comment.
    pub comment: String,
}

/// What the notifier tracks of a release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseState {
    /// Release.
    pub release_id: String,
    /// Service.
    pub service: String,
    /// Environment.
    pub environment: String,
    /// Phase after its latest event.
    pub phase: String,
    /// Time of its latest event.
    pub last_event_at: OffsetDateTime,
    /// Open condition and when it began.
    pub condition: Option<(Condition, OffsetDateTime)>,
    /// Levels told so far.
    pub levels_notified: usize,
    /// Acknowledgement of the open condition.
    pub ack: Option<Ack>,
}

impl ReleaseState {
    /// The state after an event of the release (in `phase` at `time`). A new condition starts its
    /// escalation from the first level; staying in the same condition keeps it going.
    pub fn observe(
        prev: Option<ReleaseState>,
        policy: &Policy,
        ids: (&str, &str, &str),
        phase: &str,
        time: OffsetDateTime,
    ) -> ReleaseState {
        let (release_id, service, environment) = ids;
        let condition = condition_of(phase).filter(|c| policy.watches(environment, *c));
        let mut s = prev.unwrap_or_else(|| ReleaseState {
            release_id: release_id.into(),
            service: service.into(),
            environment: environment.into(),
            phase: phase.into(),
            last_event_at: time,
            condition: None,
            levels_notified: 0,
            ack: None,
        });
        s.phase = phase.into();
        s.last_event_at = s.last_event_at.max(time);
        if s.condition.map(|(c, _)| c) != condition {
            s.condition = condition.map(|c| (c, time));
            s.levels_notified = 0;
            s.ack = None;
        }
        s
    }

    /// Opens the stuck condition when a running release has been quiet too long; true if it did.
    pub fn check_stuck(&mut self, policy: &Policy, now: OffsetDateTime) -> bool {
        let since = self.last_event_at + policy.stuck_after;
        if self.condition.is_none()
            && is_running(&self.phase)
            && policy.watches(&self.environment, Condition::Stuck)
            && now >= since
        {
            self.condition = Some((Condition::Stuck, since));
            self.levels_notified = 0;
            self.ack = None;
            return true;
        }
        false
    }

    /// Indexes of the levels due by `now` and not told yet (several when the notifier was down).
    pub fn due_levels(&self, policy: &Policy, now: OffsetDateTime) -> std::ops::Range<usize> {
        let Some((_, since)) = self.condition else { return 0..0 };
        if self.ack.is_some() {
            return 0..0;
        }
        let due = policy.levels.iter().take_while(|l| since + l.after <= now).count();
        self.levels_notified.min(due)..due
    }

    /// What time does to the state by `now`: the stuck condition opened if due, and the levels
    /// to tell now. None when nothing changes.
    pub fn advance(&mut self, policy: &Policy, now: OffsetDateTime) -> Option<std::ops::Range<usize>> {
        let opened = self.check_stuck(policy, now);
        let due = self.due_levels(policy, now);
        (opened || !due.is_empty()).then_some(due)
    }

    /// The next level and when it is due, if any.
    pub fn next_level<'p>(&self, policy: &'p Policy) -> Option<(&'p Level, OffsetDateTime)> {
        let (_, since) = self.condition?;
        if self.ack.is_some() {
            return None;
        }
        policy.levels.get(self.levels_notified).map(|l| (l, since + l.after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: (&str, &str, &str) = ("r1", "booking-service", "production");

    fn t(minutes: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_764_633_600).unwrap() + time::Duration::minutes(minutes)
    }

    #[test]
    fn levels_come_due_at_the_runbook_times() {
        let p = Policy::runbook();
        let s = ReleaseState::observe(None, &p, IDS, "ABORTED", t(0));
        assert_eq!(s.condition, Some((Condition::Aborted, t(0))));
        assert_eq!(s.due_levels(&p, t(0)), 0..1, "on-call at once");
        let mut s = s;
        s.levels_notified = 1;
        assert_eq!(s.due_levels(&p, t(14)), 1..1);
        assert_eq!(s.due_levels(&p, t(15)), 1..2);
        assert_eq!(s.next_level(&p).map(|(l, at)| (l.name.as_str(), at)), Some(("team-lead", t(15))));
        assert_eq!(s.due_levels(&p, t(61)), 1..4, "a notifier that was down catches up");
        s.levels_notified = 4;
        assert_eq!(s.next_level(&p), None);
        assert_eq!(s.due_levels(&p, t(600)), 4..4);
    }

    #[test]
    fn acknowledging_stops_it_and_a_new_condition_starts_over() {
        let p = Policy::runbook();
        let mut s = ReleaseState::observe(None, &p, IDS, "AWAITING_APPROVAL", t(0));
        s.levels_notified = 2;
        s.ack = Some(Ack { by: "bob".into(), at: t(20), comment: String::new() });
        assert_eq!(s.due_levels(&p, t(45)), 0..0);
        assert_eq!(s.next_level(&p), None);
        // Still waiting: another approval recorded keeps the same condition and its acknowledgement.
        let s = ReleaseState::observe(Some(s), &p, IDS, "AWAITING_APPROVAL", t(25));
        assert!(s.ack.is_some());
        // Approved and then aborted: a new condition, escalated from the first level again.
        let s = ReleaseState::observe(Some(s), &p, IDS, "PROGRESSING", t(30));
        assert_eq!(s.condition, None);
        let s = ReleaseState::observe(Some(s), &p, IDS, "ABORTED", t(40));
        assert_eq!((s.condition, s.levels_notified, s.ack.is_none()), (Some((Condition::Aborted, t(40))), 0, true));
    }

    #[test]
    fn a_quiet_running_release_becomes_stuck_and_any_event_clears_it() {
        let p = Policy::runbook();
        let mut s = ReleaseState::observe(None, &p, IDS, "PAUSED", t(0));
        assert!(!s.check_stuck(&p, t(29)));
        assert!(s.check_stuck(&p, t(31)));
        assert_eq!(s.condition, Some((Condition::Stuck, t(30))));
        assert_eq!(s.due_levels(&p, t(31)), 0..1);
        let s = ReleaseState::observe(Some(s), &p, IDS, "PROGRESSING", t(32));
        assert_eq!(s.condition, None);
        let mut done = ReleaseState::observe(None, &p, IDS, "SUCCEEDED", t(0));
        assert!(!done.check_stuck(&p, t(999)), "finished releases are never stuck");
    }

    #[test]
    fn policy_scope_and_checks() {
        let mut p = Policy::runbook();
        p.environments = vec!["production".into()];
        p.conditions = vec![Condition::Failed];
        assert_eq!(ReleaseState::observe(None, &p, IDS, "ABORTED", t(0)).condition, None);
        assert!(ReleaseState::observe(None, &p, IDS, "FAILED", t(0)).condition.is_some());
        assert_eq!(ReleaseState::observe(None, &p, ("r", "s", "staging"), "FAILED", t(0)).condition, None);
        assert!(p.check().is_ok());
        p.levels.swap(0, 1);
        assert!(p.check().unwrap_err().contains("in order"));
        p.levels.clear();
        assert!(p.check().is_err());
    }
}
