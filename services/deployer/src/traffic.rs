//! A bounded traffic generator: sends requests to a target at a fixed rate, for a fixed time or
//! number of requests, and counts answers by version and status. It gives analyses data and
//! makes traffic shifts visible.

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio_util::sync::CancellationToken;

use crate::demo::VERSION_HEADER;

/// What to send.
#[derive(Clone, Debug)]
pub struct Load {
    /// URL of each request (e.g. `http://127.0.0.1:PORT/api/v1/info`).
    pub url: String,
    /// Requests per second.
    pub rate: u32,
    /// Stop after this long.
    pub duration: Duration,
    /// Stop after this many requests.
    pub max_requests: u64,
    /// Give up on a request after this long.
    pub timeout: Duration,
}

/// What came back: (version, status) → count; transport failures under status 0.
pub type Tally = BTreeMap<(String, u16), u64>;

/// Sends `load` until its duration or request count is reached, or `stop` is cancelled.
pub async fn run(load: &Load, stop: CancellationToken) -> Result<Tally, String> {
    if load.rate == 0 {
        return Err("rate: must be greater than 0".into());
    }
    let uri: http::Uri = load.url.parse().map_err(|e| format!("url: {e}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let start = tokio::time::Instant::now();
    let end = start + load.duration;
    let mut tasks = tokio::task::JoinSet::new();
    let mut tally = Tally::new();
    for i in 0..load.max_requests {
        let at = start + Duration::from_secs_f64(i as f64 / load.rate as f64);
        if at >= end {
            break;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(at) => {}
        }
        let (client, uri, timeout) = (client.clone(), uri.clone(), load.timeout);
        tasks.spawn(async move {
            let request = http::Request::get(uri).body(Empty::new()).expect("valid request");
            match tokio::time::timeout(timeout, client.request(request)).await {
                Ok(Ok(response)) => {
                    let version =
                        response.headers().get(VERSION_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    let status = response.status().as_u16();
                    let _ = response.into_body().collect().await;
                    (version, status)
                }
                _ => (String::new(), 0),
            }
        });
        while let Some(done) = tasks.try_join_next() {
            if let Ok(key) = done {
                *tally.entry(key).or_insert(0) += 1;
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok(key) = done {
            *tally.entry(key).or_insert(0) += 1;
        }
    }
    Ok(tally)
}
