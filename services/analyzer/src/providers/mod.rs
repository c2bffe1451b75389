//! Metric providers: where a measurement's value comes from.

pub mod job;
pub mod prometheus;
pub mod scrape;
pub mod web;

use std::sync::Arc;

use crate::{
    domain::run::{Observation, Provider},
    policy::{Policy, PolicySource},
};

/// The providers with their shared state (HTTP connection pool, scrape histories) and the policy
/// of what they may reach and run.
#[derive(Clone)]
pub struct Providers {
    http: hopngo_kit::http::HttpClient,
    scrapes: scrape::ScrapeCache,
    policy: Arc<PolicySource>,
}

impl Providers {
    /// Providers under `policy`.
    pub fn new(policy: Arc<PolicySource>) -> Providers {
        Providers { http: Default::default(), scrapes: Default::default(), policy }
    }

    /// The policy in force (what requests may name).
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.current()
    }

    /// Takes one measurement; rates and quantiles cover no time before `since` (a run's start).
    pub async fn measure(&self, provider: &Provider, since: Option<std::time::Instant>) -> Observation {
        match provider {
            Provider::Prometheus { address, query, timeout, range } => {
                prometheus::measure(&self.http, address, query, *timeout, *range).await
            }
            Provider::Scrape { url, expression, window, timeout } => {
                self.scrapes.measure(&self.http, url, expression, *window, *timeout, since).await
            }
            Provider::Web { url, method, headers, body, json_path, timeout } => {
                web::measure(&self.http, method, url, headers, body, json_path, *timeout).await
            }
            Provider::Job { command, timeout, env } => {
                job::measure(command, env, *timeout, &self.policy.current().jobs_run).await
            }
        }
    }

    /// Whether `provider` can be used, without a measurement that counts: Prometheus answers the
    /// query (no data is fine: nothing runs yet), a scrape endpoint serves the text format, a web
    /// endpoint accepts a connection (its request may not be safe to repeat), a job's program
    /// exists.
    pub async fn check(&self, provider: &Provider) -> Result<String, String> {
        match provider {
            Provider::Prometheus { address, query, timeout, range } => {
                match prometheus::measure(&self.http, address, query, *timeout, *range).await {
                    Observation::Error(e) => Err(e),
                    Observation::Value { .. } => Ok(format!("{address} answers the query")),
                }
            }
            Provider::Scrape { url, timeout, .. } => scrape::ScrapeCache::check(&self.http, url, *timeout).await,
            Provider::Web { url, timeout, .. } => web::connect(url, *timeout).await,
            Provider::Job { command, .. } => {
                let program = command.first().map(String::as_str).unwrap_or_default();
                match hopngo_kit::program::find(program) {
                    Some(path) => Ok(format!("{program} found at {}", path.display())),
                    None => Err(format!("{program:?} not found on PATH")),
                }
            }
        }
    }

    /// Starts the history of a scrape provider's URL for a run started at `since`, so its first
    /// rate covers time already passed. Errors are left to the measurement.
    pub async fn prime(&self, provider: &Provider, since: std::time::Instant) {
        if let Provider::Scrape { url, window, timeout, .. } = provider {
            let not_before = since.checked_sub(scrape::REUSE);
            let _ = self.scrapes.scrape(&self.http, url, *window, *timeout, not_before).await;
        }
    }
}
