//! Which events a subscription or webhook receives.

use hopngo_proto::event_types;
use serde::{Deserialize, Serialize};

/// Severity values (those of `hopngo.events.v1.Severity`); unspecified counts as info.
pub const INFO: i32 = 1;
/// Highest severity value.
pub const CRITICAL: i32 = 4;

/// The routing fields of a logged event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventMeta {
    /// Release.
    pub release_id: String,
    /// Service.
    pub service: String,
    /// Environment.
    pub environment: String,
    /// CloudEvents type.
    pub event_type: String,
    /// Severity, 1..=4.
    pub severity: i32,
    /// Escalation level, for escalation events.
    pub escalation_level: Option<String>,
}

/// A checked filter; empty lists match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Services.
    pub services: Vec<String>,
    /// Environments.
    pub environments: Vec<String>,
    /// Exact event types.
    pub types: Vec<String>,
    /// Minimum severity, 1..=4.
    pub min_severity: i32,
    /// One release, or empty.
    pub release_id: String,
    /// Escalation levels; when set only escalation events of these levels match.
    pub escalation_levels: Vec<String>,
}

/// A filter field that is wrong: (field, reason).
pub type FilterError = (String, String);

impl Filter {
    /// Checks a filter as given by a caller; `levels` are the escalation policy's level names.
    /// Field paths are relative to the filter (`types[2]`).
    pub fn checked(mut self, levels: &[String]) -> Result<Filter, FilterError> {
        for (i, t) in self.types.iter().enumerate() {
            if !event_types::ALL.contains(&t.as_str()) {
                let hint = event_types::ALL
                    .iter()
                    .find(|known| {
                        known.contains(t.as_str())
                            || event_types::without_version(known) == event_types::without_version(t)
                    })
                    .map(|k| format!("; did you mean {k:?}?"))
                    .unwrap_or_else(|| "; `hopctl event-types` lists them".to_string());
                return Err((format!("types[{i}]"), format!("unknown event type {t:?}{hint}")));
            }
        }
        if !(0..=CRITICAL).contains(&self.min_severity) {
            return Err(("min_severity".into(), format!("{} is not a severity", self.min_severity)));
        }
        if !self.release_id.is_empty() && uuid::Uuid::parse_str(&self.release_id).is_err() {
            return Err(("release_id".into(), format!("{:?} is not a release id (a UUID)", self.release_id)));
        }
        for (i, l) in self.escalation_levels.iter().enumerate() {
            if !levels.contains(l) {
                return Err((
                    format!("escalation_levels[{i}]"),
                    format!("no escalation level {l:?}; the policy's levels are {}", levels.join(", ")),
                ));
            }
        }
        for (name, list) in [("services", &self.services), ("environments", &self.environments)] {
            if let Some(i) = list.iter().position(|s| s.trim().is_empty()) {
                return Err((format!("{name}[{i}]"), "must not be empty".into()));
            }
        }
        self.min_severity = self.min_severity.max(0);
        Ok(self)
    }

    /// Whether the filter selects an event.
    pub fn matches(&self, e: &EventMeta) -> bool {
        (self.services.is_empty() || self.services.contains(&e.service))
            && (self.environments.is_empty() || self.environments.contains(&e.environment))
            && (self.types.is_empty() || self.types.contains(&e.event_type))
            && e.severity.max(INFO) >= self.min_severity
            && (self.release_id.is_empty() || self.release_id == e.release_id)
            && (self.escalation_levels.is_empty()
                || e.escalation_level.as_ref().is_some_and(|l| self.escalation_levels.contains(l)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> EventMeta {
        EventMeta {
            release_id: "0190c0de-0000-7000-8000-000000000001".into(),
            service: "booking-service".into(),
            environment: "staging".into(),
            event_type: event_types::RELEASE_ABORTED.into(),
            severity: 3,
            escalation_level: None,
        }
    }

    #[test]
    fn empty_filter_matches_all_and_each_field_narrows() {
        let e = meta();
        assert!(Filter::default().matches(&e));
        let f = |g: fn(&mut Filter)| {
            let mut f = Filter::default();
            g(&mut f);
            f.matches(&e)
        };
        assert!(f(|f| f.services = vec!["booking-service".into()]));
        assert!(!f(|f| f.services = vec!["gateway".into()]));
        assert!(!f(|f| f.environments = vec!["production".into()]));
        assert!(f(|f| f.types = vec![event_types::RELEASE_ABORTED.into()]));
        assert!(!f(|f| f.types = vec![event_types::SERVICE_DEPLOYED.into()]));
        assert!(f(|f| f.min_severity = 3));
        assert!(!f(|f| f.min_severity = 4));
        assert!(!f(|f| f.release_id = "0190c0de-0000-7000-8000-000000000002".into()));
        assert!(!f(|f| f.escalation_levels = vec!["on-call".into()]), "levels select escalation events only");
        let mut escalated = meta();
        escalated.escalation_level = Some("on-call".into());
        let on_call = Filter { escalation_levels: vec!["on-call".into()], ..Default::default() };
        assert!(on_call.matches(&escalated));
    }

    #[test]
    fn bad_filters_name_the_field() {
        let levels = vec!["on-call".to_string()];
        let bad = |f: Filter| f.checked(&levels).unwrap_err();
        let (field, reason) = bad(Filter { types: vec!["service.deployed".into()], ..Default::default() });
        assert_eq!(field, "types[0]");
        assert!(reason.contains("dev.cdevents.service.deployed.0.3.0"), "{reason}");
        let (_, reason) =
            bad(Filter { types: vec!["dev.cdevents.service.deployed.0.2.0".into()], ..Default::default() });
        assert!(reason.contains("did you mean \"dev.cdevents.service.deployed.0.3.0\""), "{reason}");
        assert_eq!(bad(Filter { min_severity: 9, ..Default::default() }).0, "min_severity");
        assert_eq!(bad(Filter { release_id: "r1".into(), ..Default::default() }).0, "release_id");
        assert_eq!(
            bad(Filter { escalation_levels: vec!["ceo".into()], ..Default::default() }).0,
            "escalation_levels[0]"
        );
        assert_eq!(bad(Filter { services: vec![" ".into()], ..Default::default() }).0, "services[0]");
        assert!(
            Filter { types: vec![event_types::SERVICE_UPGRADED.into()], ..Default::default() }.checked(&levels).is_ok()
        );
    }
}
