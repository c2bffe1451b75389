//! Webhook delivery. One replica at a time delivers (a session advisory lock); each webhook has
//! its own task that walks the log from the webhook's cursor, one event at a time, so a webhook
//! sees its events in log order. An event is retried with exponential backoff and jitter up to
//! the retry limit, then dead-lettered; every attempt is in the delivery log, and the cursor moves
//! in the same transaction as the final attempt's record (at-least-once across crashes: receivers
//! deduplicate on `webhook-id` / `ce-id`).

use std::{collections::HashMap, sync::Arc, time::Duration};

use hopngo_kit::{db::SessionLock, http::HttpClient};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    clock::Clock,
    domain::{
        render::{Format, Links, render},
        signature,
    },
    error::NotifierError,
    log::Log,
    metrics::NotifierMetrics,
    store::{DISPATCH_LOCK, DeliveryRecord, LoggedEvent, StoredWebhook},
};

/// Events read per query.
const BATCH: i64 = 100;
/// Longest response excerpt kept in the delivery log.
const EXCERPT: usize = 200;

/// How webhooks are called.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// Deadline of one request.
    pub timeout: Duration,
    /// Attempts per event before it is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay.
    pub backoff: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// How often the webhook list and the log are re-read without a wake-up.
    pub poll: Duration,
}

/// The delivering side.
pub struct Dispatcher {
    log: Arc<Log>,
    http: HttpClient,
    settings: WebhookSettings,
    links: Links,
    clock: Arc<dyn Clock>,
    metrics: NotifierMetrics,
}

/// How an event's delivery ended.
enum Settled {
    /// Delivered or dead-lettered; the cursor moved past it.
    Yes,
    /// Shutting down before it was settled.
    Stopped,
    /// The webhook was replayed meanwhile.
    Replayed,
}

/// What one attempt came to.
enum Outcome {
    Delivered,
    /// Try again, not sooner than the receiver's `Retry-After` if it sent one.
    Retry(Option<Duration>),
    Refused,
}

/// The wait before attempt `attempt + 1`: the backoff, or longer when the receiver asked
/// (`Retry-After`), never beyond the longest retry delay.
fn retry_delay(attempt: u32, asked: Option<Duration>, settings: &WebhookSettings) -> Duration {
    let backoff = hopngo_kit::backoff::delay(attempt, settings.backoff, settings.backoff_max);
    asked.map_or(backoff, |asked| asked.max(backoff).min(settings.backoff_max))
}

impl Dispatcher {
    /// A dispatcher calling webhooks with `http`.
    pub fn new(
        log: Arc<Log>,
        http: HttpClient,
        settings: WebhookSettings,
        links: Links,
        clock: Arc<dyn Clock>,
        metrics: NotifierMetrics,
    ) -> Dispatcher {
        Dispatcher { log, http, settings, links, clock, metrics }
    }

    /// Runs until `shutdown`: waits to be the delivering replica, then keeps one task per webhook.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(err) = Arc::clone(&self).lead(&shutdown).await {
                tracing::warn!(%err, "webhook delivery interrupted");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.settings.poll) => {}
            }
        }
    }

    async fn lead(self: Arc<Self>, shutdown: &CancellationToken) -> Result<(), NotifierError> {
        // The lock lives as long as this connection: a replica that dies hands over at once.
        let Some(mut lock) = SessionLock::try_take(self.log.store().pool(), DISPATCH_LOCK).await? else {
            return Ok(());
        };
        tracing::info!("delivering webhooks (this replica holds the dispatch lock)");
        self.metrics.webhook_leader.set(1);
        let mut tasks: HashMap<Uuid, (CancellationToken, tokio::task::JoinHandle<()>)> = HashMap::new();
        let result = loop {
            let hooks = match self.log.store().webhooks().await {
                Ok(h) => h,
                Err(e) => break Err(e),
            };
            tasks.retain(|id, (stop, handle)| {
                let keep = hooks.iter().any(|h| h.id == *id) && !handle.is_finished();
                if !keep {
                    stop.cancel();
                }
                keep
            });
            for hook in hooks {
                tasks.entry(hook.id).or_insert_with(|| {
                    let stop = shutdown.child_token();
                    let handle = tokio::spawn(Arc::clone(&self).follow(hook.id, stop.clone()));
                    (stop, handle)
                });
            }
            // Still holding the lock? A lost connection means another replica may take over.
            if let Err(e) = lock.check().await {
                break Err(e.into());
            }
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = tokio::time::sleep(self.settings.poll) => {}
            }
        };
        for (_, (stop, handle)) in tasks {
            stop.cancel();
            let _ = handle.await;
        }
        self.metrics.webhook_leader.set(0);
        lock.release().await;
        result
    }

    /// Delivers one webhook's events until it is deleted or `stop`.
    async fn follow(self: Arc<Self>, id: Uuid, stop: CancellationToken) {
        let mut live = self.log.live();
        while !stop.is_cancelled() {
            match self.step(id, &stop).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(NotifierError::NotFound(_)) => return,
                Err(err) => tracing::warn!(%err, webhook = %id, "webhook delivery paused"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = live.recv() => {}
                _ = tokio::time::sleep(self.settings.poll) => {}
            }
        }
    }

    /// Handles the next batch; true when there may be more right away.
    async fn step(&self, id: Uuid, stop: &CancellationToken) -> Result<bool, NotifierError> {
        let store = self.log.store();
        let hook = store.webhook(id).await?.ok_or_else(|| NotifierError::NotFound(format!("webhook {id}")))?;
        let head = store.head().await?;
        if hook.cursor >= head {
            return Ok(false);
        }
        let batch = store.events_after(hook.cursor, head, &hook.filter, BATCH).await?;
        let complete = (batch.len() as i64) < BATCH;
        for l in &batch {
            match self.deliver(&hook, l, stop).await? {
                Settled::Yes => {}
                Settled::Stopped => return Ok(false),
                // Replayed meanwhile: start over from the new cursor.
                Settled::Replayed => return Ok(true),
            }
        }
        if complete {
            store.advance_webhook(id, hook.generation, head).await?;
        }
        Ok(true)
    }

    /// Delivers one event with retries.
    async fn deliver(
        &self,
        hook: &StoredWebhook,
        l: &LoggedEvent,
        stop: &CancellationToken,
    ) -> Result<Settled, NotifierError> {
        let store = self.log.store();
        let format = Format::parse(&hook.format).map_err(NotifierError::Internal)?;
        let key = signature::key(&hook.secret).map_err(NotifierError::Internal)?;
        let rendered = render(format, &l.event, &self.links);
        // Attempts made before a restart count toward the limit.
        let mut attempt = store.attempts(hook.id, hook.generation, l.position).await? + 1;
        loop {
            let timestamp = self.clock.now().unix_timestamp();
            let mut headers = rendered.headers.clone();
            headers.push(("user-agent".into(), concat!("hopngo-notifier/", env!("CARGO_PKG_VERSION")).into()));
            headers.push(("webhook-id".into(), l.event.id.clone()));
            headers.push(("webhook-timestamp".into(), timestamp.to_string()));
            headers.push(("webhook-signature".into(), signature::sign(&key, &l.event.id, timestamp, &rendered.body)));
            let started = std::time::Instant::now();
            let sent = self.http.send("POST", &hook.url, &headers, rendered.body.clone(), self.settings.timeout).await;
            let (outcome, status_code, message) = match sent {
                Ok(r) if (200..300).contains(&r.status) => (Outcome::Delivered, r.status, excerpt(&r.body)),
                Ok(r) if r.status == 408 || r.status == 429 || r.status >= 500 => {
                    (Outcome::Retry(r.retry_after.map(Duration::from_secs)), r.status, excerpt(&r.body))
                }
                Ok(r) => {
                    (Outcome::Refused, r.status, format!("refused by the receiver, not retried: {}", excerpt(&r.body)))
                }
                Err(e) => (Outcome::Retry(None), 0, e),
            };
            let last = attempt >= self.settings.max_attempts;
            let (delivered, dead_lettered, label) = match outcome {
                Outcome::Delivered => (true, false, "delivered"),
                Outcome::Refused => (false, true, "dead-letter"),
                Outcome::Retry(_) if last => (false, true, "dead-letter"),
                Outcome::Retry(_) => (false, false, "retry"),
            };
            self.metrics.deliveries.with_label_values(&[label]).inc();
            self.metrics.delivery_seconds.with_label_values(&[label]).observe(started.elapsed().as_secs_f64());
            let message = if dead_lettered && !matches!(outcome, Outcome::Refused) {
                format!("gave up after {attempt} attempts: {message}")
            } else {
                message
            };
            let current = store
                .record_delivery(&DeliveryRecord {
                    id: Uuid::now_v7(),
                    webhook_id: hook.id,
                    event_id: l.event.id.clone(),
                    position: l.position,
                    attempt,
                    status_code: status_code as u32,
                    message,
                    attempted_at: self.clock.now(),
                    delivered,
                    dead_lettered,
                    generation: hook.generation,
                })
                .await?;
            if delivered || dead_lettered {
                if dead_lettered {
                    tracing::warn!(webhook = %hook.id, event = %l.event.id, "webhook event dead-lettered");
                }
                return Ok(if current { Settled::Yes } else { Settled::Replayed });
            }
            let asked = match outcome {
                Outcome::Retry(asked) => asked,
                _ => None,
            };
            let delay = retry_delay(attempt, asked, &self.settings);
            tokio::select! {
                _ = stop.cancelled() => return Ok(Settled::Stopped),
                _ = tokio::time::sleep(delay) => {}
            }
            // Deleted or replayed meanwhile: stop retrying this one.
            match store.webhook(hook.id).await? {
                None => return Err(NotifierError::NotFound(format!("webhook {}", hook.id))),
                Some(now) if now.generation != hook.generation => return Ok(Settled::Replayed),
                Some(_) => {}
            }
            attempt += 1;
        }
    }
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(EXCERPT) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_lengthens_the_backoff_up_to_its_cap() {
        let settings = WebhookSettings {
            timeout: Duration::from_secs(1),
            max_attempts: 5,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            poll: Duration::from_secs(1),
        };
        for _ in 0..50 {
            assert!(retry_delay(1, None, &settings) <= Duration::from_millis(100));
            assert_eq!(retry_delay(1, Some(Duration::from_secs(7)), &settings), Duration::from_secs(7));
            assert_eq!(retry_delay(1, Some(Duration::from_secs(3600)), &settings), Duration::from_secs(30));
            assert!(
                retry_delay(1, Some(Duration::ZERO), &settings) >= Duration::from_millis(50),
                "never sooner than the backoff"
            );
        }
    }
}
