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

/// A channel whose requests carry trace context.
pub type TracedChannel = InterceptedService<Channel, TraceContext>;

/// A lazily connecting channel to `url` with connect and per-call timeouts.
pub fn channel(url: &str, call_timeout: Duration) -> Result<TracedChannel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(call_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(InterceptedService::new(endpoint.connect_lazy(), TraceContext))
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
