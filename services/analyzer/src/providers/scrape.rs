//! The scrape provider: reads a Prometheus text endpoint (such as the local proxy's `/metrics`)
//! and evaluates a scrape expression over the latest scrape and the one taken a `window` earlier.
//!
//! Scrapes are kept per URL for the longest window asked for, and shared: every metric of every
//! run reading the same URL uses the same history, and concurrent measurements within
//! [`REUSE`] share one request. A name absent from the scrape is no data (no traffic yet, or a
//! typo), never a zero. A URL's first measurement has no history, so it scrapes twice,
//! [`FIRST_SPAN`] apart (runs prime their URLs when they start, so this is rare).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::domain::{
    condition::Value,
    run::Observation,
    scrape::{ScrapeExpr, Snapshot, parse_exposition},
};
use hopngo_kit::http::HttpClient;

/// A scrape this recent is reused instead of scraping again.
pub const REUSE: Duration = Duration::from_millis(250);
/// Span of a URL's first rate when no earlier scrape exists.
pub const FIRST_SPAN: Duration = Duration::from_secs(1);
/// Scrapes kept per URL at most.
const MAX_KEPT: usize = 512;

#[derive(Default)]
struct History {
    scrapes: VecDeque<(Instant, Arc<Snapshot>)>,
    keep_for: Duration,
}

/// Scrape histories per URL.
#[derive(Clone, Default)]
pub struct ScrapeCache {
    urls: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<History>>>>>,
}

impl ScrapeCache {
    fn history(&self, url: &str) -> Arc<tokio::sync::Mutex<History>> {
        let mut urls = self.urls.lock().unwrap_or_else(|e| e.into_inner());
        urls.entry(url.to_string()).or_default().clone()
    }

    async fn fetch(http: &HttpClient, url: &str, timeout: Duration) -> Result<Snapshot, String> {
        let response = http.send("GET", url, &[], "", timeout).await?;
        if response.status != 200 {
            return Err(format!("GET {url}: HTTP {}", response.status));
        }
        parse_exposition(&String::from_utf8_lossy(&response.body)).map_err(|e| format!("GET {url}: {e}"))
    }

    /// Fetches `url` once without recording it: whether it serves the text format, and how many
    /// metric families.
    pub async fn check(http: &HttpClient, url: &str, timeout: Duration) -> Result<String, String> {
        let snapshot = Self::fetch(http, url, timeout).await?;
        Ok(format!("{url} serves {} metric families", snapshot.families.len()))
    }

    /// Scrapes `url` (or reuses a scrape younger than [`REUSE`] and not from before
    /// `not_before`) and records it.
    pub async fn scrape(
        &self,
        http: &HttpClient,
        url: &str,
        window: Duration,
        timeout: Duration,
        not_before: Option<Instant>,
    ) -> Result<(), String> {
        let history = self.history(url);
        let mut h = history.lock().await;
        Self::scrape_locked(&mut h, http, url, window, timeout, not_before).await.map(|_| ())
    }

    async fn scrape_locked(
        h: &mut History,
        http: &HttpClient,
        url: &str,
        window: Duration,
        timeout: Duration,
        not_before: Option<Instant>,
    ) -> Result<(Instant, Arc<Snapshot>), String> {
        h.keep_for = h.keep_for.max(window + Duration::from_secs(10));
        if let Some((at, snap)) = h.scrapes.back()
            && at.elapsed() < REUSE
            && not_before.is_none_or(|t| *at >= t)
        {
            return Ok((*at, snap.clone()));
        }
        let snapshot = Arc::new(Self::fetch(http, url, timeout).await?);
        let now = Instant::now();
        h.scrapes.push_back((now, snapshot.clone()));
        let keep_for = h.keep_for;
        while h.scrapes.len() > MAX_KEPT || h.scrapes.front().is_some_and(|(at, _)| now.duration_since(*at) > keep_for)
        {
            h.scrapes.pop_front();
        }
        Ok((now, snapshot))
    }

    /// Takes one measurement. No scrape from more than [`REUSE`] before `since` is used, so a run
    /// never counts what happened before it started (an earlier canary on the same track).
    pub async fn measure(
        &self,
        http: &HttpClient,
        url: &str,
        expression: &str,
        window: Duration,
        timeout: Duration,
        since: Option<Instant>,
    ) -> Observation {
        let expr = match ScrapeExpr::parse(expression) {
            Ok(e) => e,
            Err(e) => return Observation::Error(format!("expression: {e}")),
        };
        let history = self.history(url);
        let mut h = history.lock().await;
        let (now_at, now) = match Self::scrape_locked(&mut h, http, url, window, timeout, None).await {
            Ok(s) => s,
            Err(e) => return Observation::Error(e),
        };
        // The newest scrape at least `window` old, else the oldest one there is — never one from
        // more than [`REUSE`] before `since` (the slack lets runs starting together share one).
        let usable = |at: &Instant| since.is_none_or(|since| *at + REUSE >= since);
        let earlier = h
            .scrapes
            .iter()
            .rev()
            .find(|(at, _)| usable(at) && now_at.duration_since(*at) >= window)
            .or_else(|| {
                h.scrapes.iter().find(|(at, _)| usable(at) && now_at.duration_since(*at) >= Duration::from_millis(100))
            })
            .cloned();
        let (then_at, then, now_at, now) = match (earlier, expr.needs_window()) {
            (Some((then_at, then)), _) => (then_at, then, now_at, now),
            (None, false) => (now_at, now.clone(), now_at, now),
            (None, true) => {
                // Other runs reading this URL must not wait through this one's first span.
                drop(h);
                tokio::time::sleep(FIRST_SPAN.min(window)).await;
                let mut h = history.lock().await;
                match Self::scrape_locked(&mut h, http, url, window, timeout, Some(now_at)).await {
                    Ok((later_at, later)) => (now_at, now, later_at, later),
                    Err(e) => return Observation::Error(e),
                }
            }
        };
        let span = now_at.duration_since(then_at).as_secs_f64();
        let mut missing = Vec::new();
        match expr.eval(&now, Some(&then), span, &mut missing) {
            // A name absent from the scrape (no traffic yet, or a typo) is no data, never a 0.
            Ok(_) if !missing.is_empty() => Observation::Value {
                value: Value::Null,
                detail: format!("no series named {} at {url}", missing.join(", ")),
            },
            Ok(v) if v.is_nan() => {
                Observation::Value { value: Value::Num(v), detail: format!("0/0 over {span:.1}s (no traffic)") }
            }
            Ok(v) => Observation::Value { value: Value::Num(v), detail: String::new() },
            Err(e) => Observation::Error(e),
        }
    }
}
