//! Runs the escalation policy: each tick, releases that may need a person are looked at; a
//! release quiet for too long becomes stuck, and every level that has come due is appended to the
//! log as an escalation event (which subscribers and webhooks receive like any other). Safe on
//! every replica: each change re-reads the release under lock and the log deduplicates on the
//! escalation event's id.

use std::{sync::Arc, time::Duration};

use hopngo_proto::{
    event_types,
    events::{Event, ReleaseEventData},
};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::{
    clock::Clock,
    convert::timestamp,
    domain::escalation::{Ack, Policy, ReleaseState},
    error::NotifierError,
    log::Log,
    metrics::NotifierMetrics,
    store::{CONDITION_EXTENSION, LEVEL_EXTENSION, TrackedRelease},
};

/// The escalation loop.
pub struct Escalator {
    log: Arc<Log>,
    clock: Arc<dyn Clock>,
    tick: Duration,
    metrics: NotifierMetrics,
}

/// Source of the events the notifier writes itself.
const SOURCE: &str = "/hopngo/notifier";

fn human(d: time::Duration) -> String {
    hopngo_kit::args::format_duration(Duration::from_secs(d.whole_seconds().max(0) as u64))
}

/// What the notifier says about a release.
struct Notice<'a> {
    id: String,
    event_type: &'a str,
    severity: i32,
    message: String,
    extensions: &'a [(&'a str, &'a str)],
}

/// An event the notifier writes about a release (escalation or acknowledgement).
fn notifier_event(last: &Event, state: &ReleaseState, now: OffsetDateTime, notice: Notice<'_>) -> Event {
    let Notice { id, event_type, severity, message, extensions } = notice;
    let data = last.data.clone().unwrap_or_default();
    Event {
        id,
        source: SOURCE.into(),
        spec_version: "1.0".into(),
        r#type: event_type.into(),
        subject: state.release_id.clone(),
        time: Some(timestamp(now)),
        release_id: state.release_id.clone(),
        // Not part of the release's own history.
        sequence: 0,
        service: state.service.clone(),
        environment: state.environment.clone(),
        severity,
        data: Some(ReleaseEventData {
            actor: "notifier".into(),
            message,
            transition: event_type.rsplit('.').nth(3).unwrap_or_default().to_string(),
            ..data
        }),
        extensions: extensions.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

/// The escalation events for levels that are due now, and the state after them.
fn escalate(policy: &Policy, tracked: TrackedRelease, now: OffsetDateTime) -> Option<(ReleaseState, Vec<Event>)> {
    let TrackedRelease { mut state, last } = tracked;
    let due = state.advance(policy, now)?;
    let (condition, since) = state.condition?;
    let events = due
        .clone()
        .map(|i| {
            let level = &policy.levels[i];
            let message = format!(
                "{} for {} and not acknowledged: escalated to {} (`hopctl ack {}` stops it)",
                condition.as_str(),
                human(now - since),
                level.name,
                state.release_id
            );
            let id = format!(
                "escalation/{}/{}/{}/{}",
                state.release_id,
                condition.as_str(),
                since.unix_timestamp_nanos() / 1000,
                level.name
            );
            notifier_event(
                &last,
                &state,
                now,
                Notice {
                    id,
                    event_type: event_types::ESCALATION_ESCALATED,
                    severity: if i == 0 { 3 } else { 4 },
                    message,
                    extensions: &[(LEVEL_EXTENSION, level.name.as_str()), (CONDITION_EXTENSION, condition.as_str())],
                },
            )
        })
        .collect();
    state.levels_notified = due.end.max(state.levels_notified);
    Some((state, events))
}

impl Escalator {
    /// An escalator ticking every `tick`.
    pub fn new(log: Arc<Log>, clock: Arc<dyn Clock>, tick: Duration, metrics: NotifierMetrics) -> Escalator {
        Escalator { log, clock, tick, metrics }
    }

    /// Runs until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if let Err(err) = self.tick_once().await {
                tracing::warn!(%err, "escalation tick failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.tick) => {}
            }
        }
    }

    /// One pass over the watched releases.
    pub async fn tick_once(&self) -> Result<(), NotifierError> {
        let policy = self.log.policy();
        let now = self.clock.now();
        for candidate in self.log.store().watched_releases(policy.levels.len()).await? {
            // Looked at without the lock first: most releases have nothing due.
            let mut probe = candidate.clone();
            if probe.advance(policy, now).is_none() {
                continue;
            }
            let before = probe.levels_notified;
            let changed =
                self.log.update_release(&candidate.release_id, |tracked| Ok(escalate(policy, tracked, now))).await?;
            if let Some(state) = changed {
                for level in &policy.levels[before.min(state.levels_notified)..state.levels_notified] {
                    self.metrics.escalations.with_label_values(&[&level.name]).inc();
                }
            }
        }
        self.metrics.escalations_open.set(self.log.store().open_escalations().await?);
        Ok(())
    }

    /// Acknowledges a release's open condition; repeating it changes nothing. `may` decides,
    /// from the release's service and environment, whether the caller may.
    pub async fn acknowledge(
        &self,
        release_id: &str,
        by: &str,
        may: impl FnOnce(&str, &str) -> Result<(), String>,
        comment: &str,
    ) -> Result<ReleaseState, NotifierError> {
        let now = self.clock.now();
        let changed = self
            .log
            .update_release(release_id, |TrackedRelease { mut state, last }| {
                may(&state.service, &state.environment).map_err(NotifierError::PermissionDenied)?;
                let Some((condition, _)) = state.condition else {
                    return Err(NotifierError::Precondition(format!(
                        "release {release_id} is {}: nothing to acknowledge",
                        state.phase
                    )));
                };
                if state.ack.is_some() {
                    return Ok(None);
                }
                state.ack = Some(Ack { by: by.into(), at: now, comment: comment.into() });
                let message = if comment.is_empty() {
                    format!("{} acknowledged by {by}", condition.as_str())
                } else {
                    format!("{} acknowledged by {by}: {comment}", condition.as_str())
                };
                let event = notifier_event(
                    &last,
                    &state,
                    now,
                    Notice {
                        id: format!("acknowledged/{release_id}/{}", now.unix_timestamp_nanos() / 1000),
                        event_type: event_types::ESCALATION_ACKNOWLEDGED,
                        severity: 1,
                        message,
                        extensions: &[(CONDITION_EXTENSION, condition.as_str())],
                    },
                );
                Ok(Some((state, vec![event])))
            })
            .await?;
        match changed {
            Some(state) => Ok(state),
            None => self
                .log
                .store()
                .release(release_id)
                .await?
                .ok_or_else(|| NotifierError::NotFound(format!("release {release_id}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escalation_events_name_level_and_condition_and_are_keyed_for_dedup() {
        let policy = Policy::runbook();
        let t0 = OffsetDateTime::from_unix_timestamp(1_764_633_600).unwrap();
        let last = Event {
            release_id: "r1".into(),
            data: Some(ReleaseEventData {
                artifact: "booking:2".into(),
                phase: "ABORTED".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let state = ReleaseState::observe(None, &policy, ("r1", "booking-service", "production"), "ABORTED", t0);
        let (after, events) = escalate(
            &policy,
            TrackedRelease { state: state.clone(), last: last.clone() },
            t0 + time::Duration::minutes(16),
        )
        .unwrap();
        assert_eq!(after.levels_notified, 2);
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].extensions[LEVEL_EXTENSION], "team-lead");
        assert_eq!(events[1].extensions[CONDITION_EXTENSION], "aborted");
        assert_eq!(events[1].r#type, event_types::ESCALATION_ESCALATED);
        assert_eq!(events[1].severity, 4);
        let d = events[1].data.as_ref().unwrap();
        assert_eq!((d.artifact.as_str(), d.transition.as_str()), ("booking:2", "escalated"));
        assert!(d.message.starts_with("aborted for 16m and not acknowledged: escalated to team-lead"), "{}", d.message);
        let (_, again) = escalate(&policy, TrackedRelease { state, last }, t0 + time::Duration::minutes(17)).unwrap();
        assert_eq!(again[1].id, events[1].id, "the same level of the same condition has one id");
        assert!(
            escalate(
                &policy,
                TrackedRelease { state: after, last: Event::default() },
                t0 + time::Duration::minutes(20)
            )
            .is_none()
        );
    }
}
