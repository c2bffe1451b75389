//! Tracing set-up: env filter, plain or JSON lines, and OpenTelemetry spans exported over OTLP when
//! an endpoint is configured. The W3C trace-context propagator is always installed so trace ids
//! flow between services whether or not anything exports them.

use opentelemetry::{global, trace::TracerProvider as _};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

use crate::args::{LogFormat, TelemetryArgs};

/// Flushes and stops span export when dropped.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(err) = self.provider.shutdown() {
            eprintln!("trace export shutdown: {err}");
        }
    }
}

/// Installs the global subscriber. Call once, inside the tokio runtime (the OTLP exporter needs it).
pub fn init(service: &'static str, args: &TelemetryArgs) -> anyhow::Result<TelemetryGuard> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = Resource::builder().with_service_name(service).build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &args.otlp_endpoint {
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    global::set_tracer_provider(provider.clone());
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));

    let filter =
        EnvFilter::try_new(&args.log_filter).map_err(|e| anyhow::anyhow!("--log {:?}: {e}", args.log_filter))?;
    let fmt = match args.log_format {
        LogFormat::Plain => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init()?;
    Ok(TelemetryGuard { provider })
}

/// The W3C `traceparent` of `span` (its trace and its own id), to continue the trace elsewhere
/// or later: a release's ticks, an event's delivery. `None` when the span records nothing.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let mut carrier = std::collections::HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(&span.context(), &mut carrier));
    carrier.remove("traceparent")
}

/// Makes `span` a child of the span `traceparent` names (a W3C `traceparent`), and records
/// its trace id in the span's `trace_id` field (so log lines inside it carry it).
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if let Some(traceparent) = traceparent {
        let carrier = std::collections::HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
        let parent = global::get_text_map_propagator(|p| p.extract(&carrier));
        let _ = span.set_parent(parent);
    }
    record_trace_id(span);
}

/// Records `span`'s trace id in its `trace_id` field, when it has one.
pub fn record_trace_id(span: &tracing::Span) {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = span.context();
    let trace_id = context.span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}
