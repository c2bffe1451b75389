//! Wake-ups and change notices. In-process they are a `Notify` and a broadcast channel; between
//! scheduler replicas they travel over PostgreSQL LISTEN/NOTIFY, sent after commit (never inside a
//! transition's transaction) and batched. They only make things faster: the engine also polls,
//! and watchers also re-read, so a lost notification delays nothing by more than a poll.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::{Notify, broadcast, futures::Notified, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAKE_CHANNEL: &str = "hopngo_scheduler_wake";
const CHANGED_CHANNEL: &str = "hopngo_release_changed";

/// Shared wake-up and change signals.
#[derive(Clone)]
pub struct Signals {
    engine: Arc<Notify>,
    outbox: Arc<Notify>,
    changes: broadcast::Sender<Uuid>,
    remote: Option<mpsc::UnboundedSender<Option<Uuid>>>,
}

impl Signals {
    /// Signals that stay in this process.
    pub fn local() -> Signals {
        Signals {
            engine: Arc::new(Notify::new()),
            outbox: Arc::new(Notify::new()),
            changes: broadcast::channel(1024).0,
            remote: None,
        }
    }

    /// Signals shared with other replicas through `pool`: spawns the sender (batching every 20 ms)
    /// and the listener; both stop with `shutdown`.
    pub fn shared(pool: PgPool, shutdown: CancellationToken) -> Signals {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut signals = Signals::local();
        signals.remote = Some(tx);
        tokio::spawn(send_batches(pool.clone(), rx, shutdown.clone()));
        tokio::spawn(listen(pool, signals.clone(), shutdown));
        signals
    }

    /// A release became due sooner than planned.
    pub fn wake(&self) {
        self.engine.notify_waiters();
        if let Some(remote) = &self.remote {
            let _ = remote.send(None);
        }
    }

    /// A release changed (its row was committed).
    pub fn changed(&self, id: Uuid) {
        self.outbox.notify_one();
        let _ = self.changes.send(id);
        if let Some(remote) = &self.remote {
            let _ = remote.send(Some(id));
        }
    }

    /// Resolves at the next wake-up (call `enable` on it before looking at the table).
    pub fn engine_woken(&self) -> Notified<'_> {
        self.engine.notified()
    }

    /// Resolves when new events may be waiting in the outbox.
    pub fn outbox_woken(&self) -> Notified<'_> {
        self.outbox.notified()
    }

    /// Receiver of changed release ids.
    pub fn subscribe(&self) -> broadcast::Receiver<Uuid> {
        self.changes.subscribe()
    }
}

async fn send_batches(pool: PgPool, mut rx: mpsc::UnboundedReceiver<Option<Uuid>>, shutdown: CancellationToken) {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            item = rx.recv() => match item { Some(item) => item, None => return },
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut wake = first.is_none();
        let mut ids: BTreeSet<Uuid> = first.into_iter().collect();
        while let Ok(item) = rx.try_recv() {
            match item {
                None => wake = true,
                Some(id) => {
                    ids.insert(id);
                }
            }
        }
        if wake {
            let _ = sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&pool).await;
        }
        // A payload holds at most ~8000 bytes: 200 ids of 37 characters.
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        for chunk in ids.chunks(200) {
            let _ = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANGED_CHANNEL)
                .bind(chunk.join(","))
                .execute(&pool)
                .await;
        }
    }
}

async fn listen(pool: PgPool, signals: Signals, shutdown: CancellationToken) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(err) => {
                tracing::warn!(%err, "LISTEN connection failed; relying on polling");
                tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(Duration::from_secs(2)) => continue }
            }
        };
        if let Err(err) = listener.listen_all([WAKE_CHANNEL, CHANGED_CHANNEL]).await {
            tracing::warn!(%err, "LISTEN failed; relying on polling");
            tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(Duration::from_secs(2)) => continue }
        }
        loop {
            let notification = tokio::select! {
                _ = shutdown.cancelled() => return,
                n = listener.recv() => n,
            };
            match notification {
                Ok(n) if n.channel() == WAKE_CHANNEL => signals.engine.notify_waiters(),
                Ok(n) => {
                    for id in n.payload().split(',').filter_map(|s| s.parse().ok()) {
                        let _ = signals.changes.send(id);
                    }
                    signals.outbox.notify_one();
                }
                Err(err) => {
                    tracing::debug!(%err, "LISTEN connection lost; reconnecting");
                    break;
                }
            }
        }
    }
}
