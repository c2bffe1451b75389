//! `/metrics/replicas` on the deployer's admin endpoint (local backend): the `/metrics` page of
//! every ready replica, each series labelled with the replica's `service`, `environment`,
//! `track`, `revision` (its artifact) and `instance` (its address), plus `up` per replica. That is
//! what Prometheus' pod discovery and HopNGo's scrape job make of the pods on Kubernetes, so on
//! the local backend the analyzer's scrape provider measures what the services count themselves
//! (business operations), not only what the proxies see.
//!
//! `?service=NAME&environment=NAME` narrows it to one service and/or environment (an analysis
//! reads only its own). Only replicas the deployer started are read, each with a timeout and a
//! size limit; a replica that does not answer is `up 0` and contributes nothing else.

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;
use hopngo_metrics_lang::scrape::{Sample, Snapshot, parse_exposition};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use crate::local::{LocalBackend, ReplicaEndpoint};

/// Where the page is served.
pub const PATH: &str = "/metrics/replicas";
/// How long one replica may take to answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest page read from one replica.
const MAX_PAGE_BYTES: usize = 4 << 20;
/// The labels this page sets; a replica's own label of the same name becomes `exported_NAME`,
/// as Prometheus does.
const TARGET_LABELS: [&str; 5] = ["service", "environment", "track", "revision", "instance"];

#[derive(Clone)]
struct Replicas {
    /// Set once this replica leads and its backend runs.
    backend: Arc<OnceLock<Arc<LocalBackend>>>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

/// The route, reading the backend once `backend` is set.
pub fn routes(backend: Arc<OnceLock<Arc<LocalBackend>>>) -> Router {
    let state = Replicas { backend, client: Client::builder(TokioExecutor::new()).build_http() };
    Router::new().route(PATH, get(page)).with_state(state)
}

async fn page(State(replicas): State<Replicas>, uri: Uri) -> Response {
    let (service, environment) = match filter(uri.query().unwrap_or("")) {
        Ok(filter) => filter,
        Err(reason) => return (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response(),
    };
    let Some(backend) = replicas.backend.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "on standby: the leading deployer serves its replicas' metrics\n")
            .into_response();
    };
    let endpoints = backend.ready_replicas(service.as_deref(), environment.as_deref()).await;
    let pages = futures::future::join_all(endpoints.iter().map(|e| scrape(&replicas.client, e.address))).await;
    let mut merged = Snapshot::default();
    for (endpoint, page) in endpoints.iter().zip(pages) {
        let target = target_labels(endpoint);
        let up = match page {
            Ok(snapshot) => {
                for sample in snapshot.families.into_values().flatten() {
                    push(&mut merged, relabel(sample, &target));
                }
                1.0
            }
            Err(err) => {
                tracing::debug!(%err, instance = %endpoint.address, "replica metrics not read");
                0.0
            }
        };
        push(&mut merged, Sample { name: "up".into(), labels: target, value: up });
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], merged.to_exposition()).into_response()
}

/// `service` and `environment` from the query; names only, so nothing a caller writes reaches
/// another request.
fn filter(query: &str) -> Result<(Option<String>, Option<String>), String> {
    let (mut service, mut environment) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match key {
            "service" => &mut service,
            "environment" => &mut environment,
            _ => return Err(format!("unknown parameter {:?} (service, environment)", truncated(key))),
        };
        let is_name = !value.is_empty()
            && value.len() <= 63
            && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !is_name {
            return Err(format!("{key}: {:?} is not a name (lower-case letters, digits, '-')", truncated(value)));
        }
        if slot.replace(value.to_string()).is_some() {
            return Err(format!("{key}: given twice"));
        }
    }
    Ok((service, environment))
}

fn truncated(text: &str) -> String {
    text.chars().take(64).collect()
}

async fn scrape(client: &Client<HttpConnector, Empty<Bytes>>, address: SocketAddr) -> Result<Snapshot, String> {
    let request =
        http::Request::get(format!("http://{address}/metrics")).body(Empty::new()).map_err(|e| e.to_string())?;
    let read = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_PAGE_BYTES).collect().await.map_err(|e| e.to_string())?;
        String::from_utf8(body.to_bytes().to_vec()).map_err(|_| "the page is not UTF-8".to_string())
    };
    let text = tokio::time::timeout(SCRAPE_TIMEOUT, read).await.map_err(|_| "timed out".to_string())??;
    parse_exposition(&text)
}

fn target_labels(endpoint: &ReplicaEndpoint) -> Vec<(String, String)> {
    let values = [
        endpoint.service.clone(),
        endpoint.environment.clone(),
        endpoint.track.as_str().to_string(),
        endpoint.revision.clone(),
        endpoint.address.to_string(),
    ];
    let mut labels: Vec<(String, String)> = TARGET_LABELS.iter().map(|l| l.to_string()).zip(values).collect();
    labels.sort();
    labels
}

fn relabel(mut sample: Sample, target: &[(String, String)]) -> Sample {
    for (name, _) in &mut sample.labels {
        if TARGET_LABELS.contains(&name.as_str()) {
            *name = format!("exported_{name}");
        }
    }
    sample.labels.extend(target.iter().cloned());
    sample.labels.sort();
    sample
}

fn push(snapshot: &mut Snapshot, sample: Sample) {
    snapshot.families.entry(sample.name.clone()).or_default().push(sample);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_takes_names_only() {
        assert_eq!(filter("").unwrap(), (None, None));
        assert_eq!(
            filter("service=booking-service&environment=staging").unwrap(),
            (Some("booking-service".into()), Some("staging".into()))
        );
        assert!(filter("service=../x").unwrap_err().contains("is not a name"));
        assert!(filter("service=a&service=b").unwrap_err().contains("given twice"));
        assert!(filter("target=http://x").unwrap_err().contains("unknown parameter"));
        assert!(filter("service=").unwrap_err().contains("is not a name"));
    }

    #[test]
    fn a_replica_label_the_page_sets_is_kept_as_exported() {
        let endpoint = ReplicaEndpoint {
            service: "booking-service".into(),
            environment: "staging".into(),
            track: crate::proxy::Track::Canary,
            revision: "1.1.0".into(),
            address: "127.0.0.1:4000".parse().unwrap(),
        };
        let sample = Sample {
            name: "hopngo_business_operations_total".into(),
            labels: vec![("operation".into(), "booking".into()), ("service".into(), "mine".into())],
            value: 3.0,
        };
        let labelled = relabel(sample, &target_labels(&endpoint));
        let names: Vec<&str> = labelled.labels.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["environment", "exported_service", "instance", "operation", "revision", "service", "track"]);
        let value = |n: &str| labelled.labels.iter().find(|(l, _)| l == n).unwrap().1.clone();
        assert_eq!(
            (value("service"), value("exported_service"), value("track")),
            ("booking-service".into(), "mine".into(), "canary".into())
        );
    }
}
