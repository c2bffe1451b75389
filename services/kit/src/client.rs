//! Outbound gRPC: lazily connected channels (start-up order between services does not matter)
//! whose calls carry the current W3C trace context and a deadline.

use std::time::Duration;

use opentelemetry::{global, propagation::Injector};
use tonic::{
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::tls::Tls;

/// A channel whose requests carry trace context.
pub type TracedChannel = InterceptedService<Channel, TraceContext>;

fn endpoint(url: String, call_timeout: Duration) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url)?
        .connect_timeout(Duration::from_secs(2))
        .timeout(call_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true))
}

/// A lazily connecting channel to `url` with connect and per-call timeouts.
pub fn channel(url: &str, call_timeout: Duration) -> Result<TracedChannel, tonic::transport::Error> {
    Ok(InterceptedService::new(endpoint(url.to_string(), call_timeout)?.connect_lazy(), TraceContext))
}

/// Why a TLS channel cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The URL is not one tonic accepts.
    #[error(transparent)]
    Url(#[from] tonic::transport::Error),
    /// Not an `https` URL.
    #[error("{0}: another service is reached over https when this one has a certificate")]
    NotHttps(String),
    /// An `https` URL without this service's certificate to present.
    #[error("{0}: https links to other services need this service's certificate (--tls-cert, --tls-key, --tls-ca)")]
    NoCertificate(String),
}

/// [`channel`] over TLS to an `https` URL, presenting this service's certificate (`tls`), which
/// the callee reads as the caller's identity. TLS is done here rather than by tonic so that
/// renewed certificates are used for new connections without a restart.
pub fn tls_channel(url: &str, call_timeout: Duration, tls: &Tls) -> Result<TracedChannel, ChannelError> {
    let rest = url.strip_prefix("https://").ok_or_else(|| ChannelError::NotHttps(url.to_string()))?;
    // The connector speaks TLS; tonic sees plain HTTP/2 on top of it.
    let channel = endpoint(format!("http://{rest}"), call_timeout)?.connect_with_connector_lazy(tls.connector());
    Ok(InterceptedService::new(channel, TraceContext))
}

/// The channel to another control-plane service: `https` URLs over TLS presenting this service's
/// certificate ([`tls_channel`]), `http` URLs plain ([`channel`]: loopback development and test
/// stand-ins; a service serving TLS refuses plain callers beyond loopback).
pub fn service_channel(url: &str, call_timeout: Duration, tls: Option<&Tls>) -> Result<TracedChannel, ChannelError> {
    match tls {
        Some(tls) if url.starts_with("https://") => tls_channel(url, call_timeout, tls),
        None if url.starts_with("https://") => Err(ChannelError::NoCertificate(url.to_string())),
        _ => Ok(channel(url, call_timeout)?),
    }
}

/// Interceptor injecting the current span's context as `traceparent`/`tracestate`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceContext;

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(&value)) {
            self.0.insert(key, value);
        }
    }
}

impl Interceptor for TraceContext {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let context = tracing::Span::current().context();
        global::get_text_map_propagator(|p| p.inject_context(&context, &mut MetadataInjector(req.metadata_mut())));
        Ok(req)
    }
}

/// Whether a failed call may be repeated as is (the callee did not act, or acts idempotently).
/// tonic reports the channel's own timeout as `Cancelled` ("Timeout expired"), so that counts.
pub fn is_retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::ResourceExhausted
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Aborted
            | tonic::Code::Cancelled
    )
}

/// Whether a failed call may nevertheless have taken effect (it timed out after being sent).
pub fn may_have_taken_effect(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unknown | tonic::Code::Internal
    )
}
