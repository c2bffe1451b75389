//! Publishes the event log to the notifier, in commit order, with retry: while the notifier is
//! down events wait in `release_events`, none are lost. One replica publishes at a time (a session
//! advisory lock), so events of a release never overtake each other.

use std::time::Duration;

use hopngo_kit::{
    client::{TracedChannel, service_channel},
    db::SessionLock,
};
use hopngo_proto::{
    check::{TextRule, conform},
    events::{Event, ReleaseEventData, Severity},
    limits,
    notifier::{PublishEventsRequest, notifier_service_client::NotifierServiceClient},
};
use tokio_util::sync::CancellationToken;

use crate::{
    error::SchedulerError,
    signals::Signals,
    store::{OutboxEvent, Store},
};

/// Advisory lock key held by the publishing replica.
const PUBLISHER_LOCK: i64 = 7218861937312;
/// Events per PublishEvents call.
const BATCH: i64 = 200;

/// The outbox relay.
pub struct Publisher {
    store: Store,
    client: NotifierServiceClient<TracedChannel>,
    signals: Signals,
    source: String,
}

fn timestamp(t: time::OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.unix_timestamp(), nanos: t.nanosecond() as i32 }
}

/// Stored event → contract event (CloudEvents attributes + typed data).
pub fn to_proto(e: &OutboxEvent, source: &str) -> Event {
    let p = &e.payload;
    let severity = match e.severity.as_str() {
        "WARNING" => Severity::Warning,
        "ERROR" => Severity::Error,
        "CRITICAL" => Severity::Critical,
        _ => Severity::Info,
    };
    Event {
        id: e.event_id.to_string(),
        source: source.to_string(),
        spec_version: "1.0".into(),
        r#type: e.event_type.clone(),
        subject: e.release_id.to_string(),
        time: Some(timestamp(e.created_at)),
        release_id: e.release_id.to_string(),
        sequence: e.sequence,
        service: p.service.clone(),
        environment: p.environment.clone(),
        severity: severity as i32,
        data: Some(ReleaseEventData {
            revision: p.revision,
            artifact: p.artifact.clone(),
            stable_artifact: p.stable_artifact.clone(),
            phase: p.phase.clone(),
            completion: p.completion.clone(),
            step_index: p.step_index,
            step_name: p.step_name.clone(),
            canary_weight: p.canary_weight,
            actor: p.actor.clone(),
            // Messages quote other services' errors and jobs' output; the notifier refuses what is
            // not printable, and one refused event would hold back every later one.
            message: conform(&p.message, TextRule { max_bytes: limits::EVENT_MESSAGE, multiline: true }),
            transition: p.transition.clone(),
            release_group_id: p.release_group_id.clone(),
        }),
        // CloudEvents' distributed tracing extension: the notifier continues the release's trace.
        extensions: e.traceparent.iter().map(|t| ("traceparent".to_string(), t.clone())).collect(),
    }
}

impl Publisher {
    /// A relay to the notifier at `url`.
    pub fn new(
        store: Store,
        url: &str,
        call_timeout: Duration,
        tls: Option<&hopngo_kit::tls::Tls>,
        signals: Signals,
    ) -> Result<Publisher, hopngo_kit::client::ChannelError> {
        Ok(Publisher {
            store,
            client: NotifierServiceClient::new(service_channel(url, call_timeout, tls)?),
            signals,
            source: "/hopngo/scheduler".into(),
        })
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(err) = self.lead(&shutdown).await {
                tracing::warn!(%err, "outbox relay interrupted");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Takes the publisher lock (or waits for it), then publishes until shutdown or an error.
    async fn lead(&mut self, shutdown: &CancellationToken) -> Result<(), SchedulerError> {
        let Some(mut lock) = SessionLock::try_take(self.store.pool(), PUBLISHER_LOCK).await? else {
            return Ok(());
        };
        let conn = lock.connection();
        let mut failures = 0u32;
        let result = loop {
            if shutdown.is_cancelled() {
                break Ok(());
            }
            let woken = self.signals.outbox_woken();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let batch = match Store::unpublished(&mut *conn, BATCH).await {
                Ok(b) => b,
                Err(e) => break Err(e),
            };
            if batch.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => break Ok(()),
                    _ = &mut woken => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
            let events: Vec<Event> = batch.iter().map(|e| to_proto(e, &self.source)).collect();
            match self.client.publish_events(PublishEventsRequest { events }).await {
                Ok(_) => {
                    failures = 0;
                    let ids: Vec<i64> = batch.iter().map(|e| e.id).collect();
                    if let Err(e) = Store::mark_published(&mut *conn, &ids).await {
                        break Err(e);
                    }
                }
                Err(status) => {
                    failures += 1;
                    let delay =
                        hopngo_kit::backoff::delay(failures, Duration::from_millis(200), Duration::from_secs(10));
                    tracing::info!(code = ?status.code(), message = status.message(), waiting = batch.len(), ?delay, "notifier unavailable; events wait");
                    tokio::select! {
                        _ = shutdown.cancelled() => break Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        };
        lock.release().await;
        result
    }
}
