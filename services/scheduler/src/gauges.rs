//! What the control plane's alerts and dashboards read about releases as a whole, counted from
//! the database every `--gauge-interval` (so every replica reports the same numbers, whoever
//! advanced the releases): releases not settled by phase, releases due but not advanced (the
//! engine is not keeping up, or stuck), and events the outbox has not handed to the notifier.

use std::time::Duration;

use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};
use tokio_util::sync::CancellationToken;

use crate::{domain::release::Phase, store::Store};

/// How long past its wake-up time a release counts as overdue.
pub const OVERDUE_AFTER: Duration = Duration::from_secs(60);

/// The gauges.
#[derive(Clone)]
pub struct ReleaseGauges {
    releases: IntGaugeVec,
    overdue: IntGauge,
    outbox_backlog: IntGauge,
}

impl ReleaseGauges {
    /// Registers the gauges in `registry`.
    pub fn register(registry: &Registry) -> ReleaseGauges {
        let g = ReleaseGauges {
            releases: IntGaugeVec::new(
                Opts::new("hopngo_scheduler_releases", "Releases not settled yet, by phase"),
                &["phase"],
            )
            .expect("static"),
            overdue: IntGauge::new(
                "hopngo_scheduler_releases_overdue",
                "Releases due more than a minute ago that no worker has advanced",
            )
            .expect("static"),
            outbox_backlog: IntGauge::new(
                "hopngo_scheduler_outbox_backlog",
                "Release events not yet handed to the notifier",
            )
            .expect("static"),
        };
        registry.register(Box::new(g.releases.clone())).expect("first registration");
        registry.register(Box::new(g.overdue.clone())).expect("first registration");
        registry.register(Box::new(g.outbox_backlog.clone())).expect("first registration");
        g
    }

    /// Counts once.
    pub async fn update(&self, store: &Store) -> Result<(), crate::error::SchedulerError> {
        let counts = store.release_counts(OVERDUE_AFTER).await?;
        for phase in Phase::ALL {
            let n = counts.by_phase.iter().find(|(p, _)| *p == phase).map_or(0, |(_, n)| *n);
            self.releases.with_label_values(&[phase.as_str()]).set(n);
        }
        self.overdue.set(counts.overdue);
        self.outbox_backlog.set(counts.outbox_backlog);
        Ok(())
    }

    /// Counts every `interval` until `stop`.
    pub async fn run(self, store: Store, interval: Duration, stop: CancellationToken) {
        loop {
            if let Err(e) = self.update(&store).await {
                tracing::warn!(error = %e, "counting releases for the gauges");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}
