//! Wakes a release the moment an analysis run it waits for completes, instead of at its next
//! poll: one `WatchAnalysisRun` stream per open run. Only a shortcut — if a stream breaks, the
//! engine's polling still finds the verdict.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use hopngo_kit::client::TracedChannel;
use hopngo_proto::analyzer::{WatchAnalysisRunRequest, analyzer_service_client::AnalyzerServiceClient};
use sqlx::PgPool;
use uuid::Uuid;

use crate::signals::Signals;

/// Watches open analysis runs.
#[derive(Clone)]
pub struct AnalysisWatcher {
    client: AnalyzerServiceClient<TracedChannel>,
    pool: PgPool,
    signals: Signals,
    watched: Arc<Mutex<HashSet<String>>>,
}

impl AnalysisWatcher {
    /// A watcher calling the analyzer at `url` (no per-call deadline: the streams are long).
    pub fn new(
        url: &str,
        tls: Option<&hopngo_kit::tls::Tls>,
        pool: PgPool,
        signals: Signals,
    ) -> Result<AnalysisWatcher, hopngo_kit::client::ChannelError> {
        let channel = hopngo_kit::client::service_channel(url, std::time::Duration::from_secs(24 * 3600), tls)?;
        Ok(AnalysisWatcher { client: AnalyzerServiceClient::new(channel), pool, signals, watched: Arc::default() })
    }

    /// Starts watching `run_id` for `release` unless it is watched already.
    pub fn watch(&self, release: Uuid, run_id: &str) {
        if !self.watched.lock().unwrap_or_else(|e| e.into_inner()).insert(run_id.to_string()) {
            return;
        }
        let this = self.clone();
        let run_id = run_id.to_string();
        tokio::spawn(async move {
            let completed = this.until_completed(&run_id).await;
            this.watched.lock().unwrap_or_else(|e| e.into_inner()).remove(&run_id);
            if completed {
                let woke = sqlx::query(
                    "UPDATE release_state SET next_wake_at = clock_timestamp() \
                     WHERE release_id = $1 AND next_wake_at > clock_timestamp()",
                )
                .bind(release)
                .execute(&this.pool)
                .await;
                if let Err(err) = woke {
                    tracing::debug!(%err, %release, "waking a release after its analysis completed");
                }
                this.signals.wake();
            }
        });
    }

    async fn until_completed(&self, run_id: &str) -> bool {
        let request = WatchAnalysisRunRequest { id: run_id.to_string() };
        let Ok(response) = self.client.clone().watch_analysis_run(request).await else { return false };
        let mut stream = response.into_inner();
        while let Ok(Some(item)) = stream.message().await {
            if item.run.is_some_and(|r| r.completed_at.is_some()) {
                return true;
            }
        }
        false
    }
}
