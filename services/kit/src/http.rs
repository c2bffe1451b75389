//! The outbound HTTP client of the services (the analyzer's providers, the notifier's webhooks):
//! plain HTTP/1.1, pooled, with a deadline per request and a cap on the response size.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

/// Largest response body read.
const MAX_BODY: usize = 16 << 20;

/// A pooled HTTP client.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        HttpClient { client: Client::builder(TokioExecutor::new()).build(connector) }
    }
}

/// A response: status and body.
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Seconds from a `Retry-After` header given as a number, if any.
    pub retry_after: Option<u64>,
    /// Body.
    pub body: Bytes,
}

impl HttpClient {
    /// Sends one request; every failure (connect, timeout, oversized body) is a message.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Response, String> {
        let mut request = http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request.body(Full::new(body.into())).map_err(|e| format!("bad request to {url}: {e}"))?;
        let call = async {
            let response = self.client.request(request).await.map_err(|e| {
                let mut message = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    message = format!("{message}: {s}");
                    source = s.source();
                }
                format!("{method} {url}: {message}")
            })?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("{method} {url}: reading the body: {e}"))?
                .to_bytes();
            Ok(Response { status, retry_after, body })
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(format!("{method} {url}: no answer within {}", crate::args::format_duration(timeout))),
        }
    }
}
