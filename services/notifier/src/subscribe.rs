//! gRPC subscriptions: replay from a cursor out of the database, then follow the live feed;
//! heartbeats while idle; a subscriber that stops reading is cut off with its resume cursor
//! instead of holding anything up.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::Stream;
use hopngo_proto::notifier::{Heartbeat, SubscribeResponse, subscribe_response::Item};
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::{
    clock::Clock,
    convert::timestamp,
    domain::{cursor, filter::Filter},
    error::NotifierError,
    log::Log,
    metrics::NotifierMetrics,
    store::{LoggedEvent, meta},
};

/// Metadata key of the resume cursor sent with a slow-subscriber disconnect.
pub const RESUME_CURSOR_TRAILER: &str = "x-hopngo-resume-cursor";
/// Events read from the database per query while catching up: what one subscriber holds besides
/// its buffer.
const CATCH_UP_BATCH: i64 = 100;

/// How subscriptions behave.
#[derive(Clone, Debug)]
pub struct SubscriptionSettings {
    /// Idle time before a heartbeat.
    pub heartbeat: Duration,
    /// How long a full buffer may stay full before the subscriber is cut off.
    pub slow_timeout: Duration,
    /// Items buffered per subscriber.
    pub buffer: usize,
    /// How often the database is checked for events appended by other replicas.
    pub poll: Duration,
}

/// Why the producer stopped.
enum Stop {
    /// The subscriber went away, or the server shuts down.
    Gone,
    /// The subscriber did not read for the slow timeout.
    Slow,
}

/// Whether the subscriber may see events of a service in an environment.
pub type Visibility = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

struct Producer {
    log: Arc<Log>,
    filter: Filter,
    visible: Visibility,
    settings: SubscriptionSettings,
    clock: Arc<dyn Clock>,
    out: mpsc::Sender<SubscribeResponse>,
    last: u64,
    stop_at: Option<u64>,
    readers: Arc<Semaphore>,
    /// Whether anything was sent yet.
    sent: bool,
}

impl Producer {
    async fn send(&mut self, item: Option<&LoggedEvent>) -> Result<(), Stop> {
        // What the caller may not see is skipped like a filtered-out event: the cursor still
        // moves past it.
        if let Some(l) = item {
            let m = meta(&l.event);
            if !(self.visible)(&m.service, &m.environment) {
                return Ok(());
            }
        }
        let response = match item {
            Some(l) => {
                SubscribeResponse { item: Some(Item::Event(l.event.clone())), cursor: cursor::format(l.position) }
            }
            None => SubscribeResponse {
                item: Some(Item::Heartbeat(Heartbeat { time: Some(timestamp(self.clock.now())) })),
                cursor: cursor::format(self.last),
            },
        };
        match self.out.send_timeout(response, self.settings.slow_timeout).await {
            Ok(()) => {
                self.sent = true;
                Ok(())
            }
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(Stop::Slow),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(Stop::Gone),
        }
    }

    /// Sends everything after `last` that is in the database now.
    async fn catch_up(&mut self) -> Result<(), Result<Stop, NotifierError>> {
        loop {
            // The newest event is never removed, so a subscriber at the head cannot be behind.
            let head = self.log.store().head().await.map_err(Err)?;
            if head <= self.last {
                return Ok(());
            }
            // Catching-up subscribers take turns at the database, so hundreds of them cannot
            // starve publishing of connections; none holds a turn while its client reads.
            let kept = {
                let _turn = self.readers.acquire().await.map_err(|_| Ok(Stop::Gone))?;
                self.log.store().events_kept_after(self.last, head, &self.filter, CATCH_UP_BATCH).await.map_err(Err)?
            };
            // A subscriber that fell behind the retention would skip events silently.
            let batch = kept.map_err(|oldest| {
                Err(NotifierError::Precondition(format!(
                    "the subscription fell behind the retention: events after cursor {} up to {} were removed",
                    self.last,
                    oldest - 1
                )))
            })?;
            let complete = (batch.len() as i64) < CATCH_UP_BATCH;
            for l in &batch {
                self.send(Some(l)).await.map_err(Ok)?;
                self.last = l.position;
            }
            if complete {
                // Filtered-out events up to the head count as seen.
                self.last = head;
            }
        }
    }

    async fn run(
        mut self,
        mut live: broadcast::Receiver<Arc<LoggedEvent>>,
        shutdown: CancellationToken,
    ) -> Result<Stop, NotifierError> {
        loop {
            match self.catch_up().await {
                Ok(()) => {}
                Err(Ok(stop)) => return Ok(stop),
                Err(Err(e)) => return Err(e),
            }
            // A subscriber learns at once that it is subscribed, and from which cursor, even
            // when nothing is there to replay.
            if !self.sent
                && self.stop_at.is_none()
                && let Err(stop) = self.send(None).await
            {
                return Ok(stop);
            }
            if self.stop_at.is_some_and(|head| self.last >= head) {
                // The last heartbeat tells where to continue from.
                return Ok(match self.send(None).await {
                    Ok(()) => Stop::Gone,
                    Err(stop) => stop,
                });
            }
            let mut heartbeat = tokio::time::interval_at(
                tokio::time::Instant::now() + self.settings.heartbeat,
                self.settings.heartbeat,
            );
            let mut poll =
                tokio::time::interval_at(tokio::time::Instant::now() + self.settings.poll, self.settings.poll);
            // Follow the live feed while it continues exactly where we are; anything else
            // (lag, another replica's events) goes back to the database.
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(Stop::Gone),
                    received = live.recv() => match received {
                        Ok(l) if l.position <= self.last => {}
                        Ok(l) if l.position == self.last + 1 => {
                            if self.filter.matches(&meta(&l.event)) {
                                if let Err(stop) = self.send(Some(&l)).await {
                                    return Ok(stop);
                                }
                                heartbeat.reset();
                            }
                            self.last = l.position;
                        }
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return Ok(Stop::Gone),
                    },
                    _ = poll.tick() => {
                        if self.log.store().head().await? > self.last {
                            break;
                        }
                    }
                    _ = heartbeat.tick() => {
                        if let Err(stop) = self.send(None).await {
                            return Ok(stop);
                        }
                    }
                }
            }
        }
    }
}

/// Opens subscriptions on a log.
#[derive(Clone)]
pub struct Subscriptions {
    /// The log.
    pub log: Arc<Log>,
    /// Behaviour.
    pub settings: SubscriptionSettings,
    /// Heartbeat times.
    pub clock: Arc<dyn Clock>,
    /// Metrics.
    pub metrics: NotifierMetrics,
    /// Turns at the database for catching-up subscribers.
    pub readers: Arc<Semaphore>,
}

impl Subscriptions {
    /// Opens a subscription after position `after` (read with `live` already subscribed); with
    /// `stop_at`, it ends once that position was looked at.
    pub fn open(
        &self,
        live: broadcast::Receiver<Arc<LoggedEvent>>,
        (filter, visible): (Filter, Visibility),
        range: (u64, Option<u64>),
        shutdown: CancellationToken,
    ) -> impl Stream<Item = Result<SubscribeResponse, tonic::Status>> + use<> {
        open(self.clone(), live, (filter, visible), range, shutdown)
    }
}

fn open(
    subscriptions: Subscriptions,
    live: broadcast::Receiver<Arc<LoggedEvent>>,
    (filter, visible): (Filter, Visibility),
    (after, stop_at): (u64, Option<u64>),
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<SubscribeResponse, tonic::Status>> {
    let Subscriptions { log, settings, clock, metrics, readers } = subscriptions;
    let (out, mut items) = mpsc::channel(settings.buffer.max(1));
    let cut_off = CancellationToken::new();
    let failure = Arc::new(std::sync::Mutex::new(None::<tonic::Status>));
    let producer = Producer { log, filter, visible, settings, clock, out, last: after, stop_at, readers, sent: false };
    {
        let cut_off = cut_off.clone();
        let failure = Arc::clone(&failure);
        let metrics = metrics.clone();
        tokio::spawn(async move {
            match producer.run(live, shutdown).await {
                Ok(Stop::Gone) => {}
                Ok(Stop::Slow) => {
                    metrics.disconnects.with_label_values(&["slow"]).inc();
                    cut_off.cancel();
                }
                Err(e) => {
                    *failure.lock().expect("failure lock") = Some(e.into());
                    cut_off.cancel();
                }
            }
        });
    }
    // What the transport has taken: the cursor a cut-off subscriber resumes after.
    let handed = Arc::new(AtomicU64::new(after));
    metrics.subscribers.inc();
    let gauge = SubscriberGauge(metrics);
    async_stream::stream! {
        let _gauge = gauge;
        loop {
            tokio::select! {
                biased;
                _ = cut_off.cancelled() => {
                    let failed = failure.lock().expect("failure lock").take();
                    yield Err(failed.unwrap_or_else(|| slow_status(handed.load(Ordering::SeqCst))));
                    break;
                }
                item = items.recv() => match item {
                    Some(item) => {
                        if let Ok(p) = item.cursor.parse() {
                            handed.store(p, Ordering::SeqCst);
                        }
                        yield Ok(item);
                    }
                    None => break,
                },
            }
        }
    }
}

/// The status a too-slow subscriber gets.
fn slow_status(resume_after: u64) -> tonic::Status {
    let cursor = cursor::format(resume_after);
    let mut status = tonic::Status::resource_exhausted(format!(
        "subscriber too slow: it did not read for the slow-subscriber timeout; resume after cursor {cursor}"
    ));
    if let Ok(value) = cursor.parse() {
        status.metadata_mut().insert(RESUME_CURSOR_TRAILER, value);
    }
    status
}

/// Keeps the subscriber gauge right however the stream ends.
struct SubscriberGauge(NotifierMetrics);

impl Drop for SubscriberGauge {
    fn drop(&mut self) {
        self.0.subscribers.dec();
    }
}
