//! The outbound HTTP client of the services (the analyzer's providers, the notifier's webhooks):
//! HTTP/1.1 over plain TCP or TLS (rustls with ring; the Mozilla roots plus any CA files given),
//! pooled, with a deadline per request and a cap on the response size.

use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::pki_types::{CertificateDer, pem::PemObject as _};

/// Largest response body read.
const MAX_BODY: usize = 16 << 20;

/// A pooled HTTP client.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::with_roots(&[] as &[&Path]).expect("the built-in roots always load")
    }
}

impl HttpClient {
    /// A client that trusts the Mozilla roots and the certificates in `ca_files` (PEM).
    pub fn with_roots(ca_files: &[impl AsRef<Path>]) -> Result<HttpClient, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for file in ca_files {
            let file = file.as_ref();
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
                .and_then(|certs| certs.collect())
                .map_err(|e| format!("{}: not a PEM certificate file: {e}", file.display()))?;
            if certs.is_empty() {
                return Err(format!("{}: no certificate in it", file.display()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| format!("{}: {e}", file.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let https =
            HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(connector);
        Ok(HttpClient { client: Client::builder(TokioExecutor::new()).build(https) })
    }
}

/// A response: status and body.
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Seconds from a `Retry-After` header given as a number, if any.
    pub retry_after: Option<u64>,
    /// Response headers.
    pub headers: http::HeaderMap,
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
            let headers = response.headers().clone();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("{method} {url}: reading the body: {e}"))?
                .to_bytes();
            Ok(Response { status, retry_after, headers, body })
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(format!("{method} {url}: no answer within {}", crate::args::format_duration(timeout))),
        }
    }
}
