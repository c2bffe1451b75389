//! Smoke tests for a service behind its proxy: a bounded number of requests pinned to one track
//! (`x-hopngo-track`), each of which must answer 2xx from the expected version (the `x-hopngo-version` header). The delivery
//! config runs it as a `verify` job (`hopngo-smoke`), so its exit code decides.

use std::time::Duration;

use hopngo_kit::http::HttpClient;

use crate::{demo::VERSION_HEADER, proxy::TRACK_HEADER};

/// What to check.
#[derive(Clone, Debug)]
pub struct Smoke {
    /// `host:port` of the service's proxy.
    pub address: String,
    /// Track to pin the requests to (`canary`, `preview`, `stable`, `active`).
    pub track: String,
    /// Version every answer must come from; empty: any.
    pub expect_version: String,
    /// Paths to request, in turn.
    pub paths: Vec<String>,
    /// Requests in all.
    pub requests: u32,
    /// Deadline of each request.
    pub timeout: Duration,
}

/// Sends the requests; `Ok` with a summary when every answer was right, else what went wrong.
pub async fn run(smoke: &Smoke) -> Result<String, String> {
    if smoke.address.is_empty() {
        return Err("no address to test (the deployer reported none)".into());
    }
    if smoke.paths.is_empty() || smoke.requests == 0 {
        return Err("nothing to request".into());
    }
    let http = HttpClient::default();
    let headers = [(TRACK_HEADER.to_string(), smoke.track.clone())];
    let mut failures: Vec<String> = Vec::new();
    for i in 0..smoke.requests {
        let path = &smoke.paths[i as usize % smoke.paths.len()];
        let url = format!("http://{}{path}", smoke.address);
        match http.send("GET", &url, &headers, "", smoke.timeout).await {
            Err(e) => failures.push(e),
            Ok(r) if !(200..300).contains(&r.status) => failures.push(format!("GET {path}: HTTP {}", r.status)),
            Ok(r) => {
                let version = r.headers.get(VERSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
                if !smoke.expect_version.is_empty() && version.as_deref() != Some(smoke.expect_version.as_str()) {
                    failures.push(format!(
                        "GET {path}: answered by {} instead of {}",
                        version.as_deref().unwrap_or("an unknown version"),
                        smoke.expect_version
                    ));
                }
            }
        }
    }
    if failures.is_empty() {
        Ok(format!(
            "{} requests to the {} track of {} answered 2xx{}",
            smoke.requests,
            smoke.track,
            smoke.address,
            if smoke.expect_version.is_empty() { String::new() } else { format!(" from {}", smoke.expect_version) }
        ))
    } else {
        let mut first: Vec<String> = failures.iter().take(3).cloned().collect();
        if failures.len() > 3 {
            first.push(format!("and {} more", failures.len() - 3));
        }
        Err(format!("{} of {} requests failed: {}", failures.len(), smoke.requests, first.join("; ")))
    }
}
