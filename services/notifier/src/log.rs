//! The write side of the event log: every append (published events, escalations,
//! acknowledgements) goes through here, so this process's subscribers see new events in position
//! order on one broadcast channel. Other replicas' appends reach them through the database.

use std::sync::Arc;

use hopngo_proto::events::Event;
use tokio::sync::{Mutex, broadcast};

use crate::{
    domain::escalation::{Policy, ReleaseState},
    error::NotifierError,
    metrics::NotifierMetrics,
    store::{LoggedEvent, Store, TrackedRelease},
};

/// The log's writer and live feed.
pub struct Log {
    store: Store,
    policy: Arc<Policy>,
    // Held from before the transaction until the new events are broadcast: commit order and
    // broadcast order are the same.
    write: Mutex<()>,
    live: broadcast::Sender<Arc<LoggedEvent>>,
    metrics: NotifierMetrics,
}

impl Log {
    /// A log over `store`; `capacity` events are kept for live subscribers that fall behind
    /// (beyond that they read from the database).
    pub fn new(store: Store, policy: Arc<Policy>, capacity: usize, metrics: NotifierMetrics) -> Log {
        let (live, _) = broadcast::channel(capacity.max(16));
        Log { store, policy, write: Mutex::new(()), live, metrics }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The escalation policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// New events from now on (take it before reading the head, so nothing falls in between).
    pub fn live(&self) -> broadcast::Receiver<Arc<LoggedEvent>> {
        self.live.subscribe()
    }

    fn announce(&self, fresh: Vec<LoggedEvent>) {
        self.metrics.appended.inc_by(fresh.len() as u64);
        for l in fresh {
            // No receiver is fine: nobody is subscribed on this replica.
            let _ = self.live.send(Arc::new(l));
        }
    }

    /// Appends published events; returns (accepted, duplicates).
    pub async fn publish(&self, events: Vec<Event>) -> Result<(u32, u32), NotifierError> {
        let _write = self.write.lock().await;
        let (fresh, duplicates) = self.store.publish(events, &self.policy).await?;
        let accepted = fresh.len() as u32;
        self.announce(fresh);
        Ok((accepted, duplicates))
    }

    /// Changes a release's escalation state, appending the events `change` returns.
    pub async fn update_release<F>(&self, release_id: &str, change: F) -> Result<Option<ReleaseState>, NotifierError>
    where
        F: FnOnce(TrackedRelease) -> Result<Option<(ReleaseState, Vec<Event>)>, NotifierError>,
    {
        let _write = self.write.lock().await;
        let Some((state, fresh)) = self.store.update_release(release_id, change).await? else { return Ok(None) };
        self.announce(fresh);
        Ok(Some(state))
    }
}
