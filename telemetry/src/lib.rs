//! OpenTelemetry export for the controller and the dataplane: traces (and the dataplane's
//! audit records as logs) over OTLP, gRPC or HTTP/protobuf, configured the way every
//! OpenTelemetry user expects, from the standard variables:
//!
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`, `..._LOGS_ENDPOINT`): where
//!   to. Unset (and `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`): no export.
//! - `OTEL_EXPORTER_OTLP_PROTOCOL` (or `..._TRACES_PROTOCOL`): `grpc` or `http/protobuf`
//!   (the default, as the specification says).
//! - `OTEL_EXPORTER_OTLP_HEADERS`, `..._TIMEOUT`, `..._COMPRESSION`: read by the exporter.
//! - `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`: the resource (the service name
//!   defaults to the binary's).
//! - `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`: `parentbased_always_on` (the
//!   default), `parentbased_traceidratio`, `traceidratio`, `always_on`, `always_off`,
//!   `parentbased_always_off`.
//! - `OTEL_BSP_*`: the batch span processor's queue and delay.
//!
//! Spans come two ways. Work the binaries already describe with `tracing` spans (the
//! controller's compile and push, the dataplane's apply) goes through
//! `tracing-opentelemetry` ([`Telemetry::layer`]): only spans of the [`TARGET`] target, so
//! no other span and no log line becomes telemetry. A request's spans are made when the
//! request ends, from what its record holds ([`Telemetry::export`]): the sampling decision
//! is made once when it begins ([`Telemetry::sample`]), so a request that is not sampled
//! costs one comparison, and a sampled one builds its spans once, with the times it
//! measured anyway.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SdkTracerProvider, SpanData, SpanEvents, SpanLinks, SpanProcessor,
};

pub use opentelemetry::KeyValue as Attribute;
pub use opentelemetry::StringValue;
pub use opentelemetry::Value as AttributeValue;
pub use opentelemetry::trace::SpanKind as Kind;

/// The `tracing` target whose spans are exported; every other span and event stays local.
pub const TARGET: &str = "tollgate::trace";

/// A W3C trace context (`traceparent`): the trace, the span that is the parent, and
/// whether it is sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

impl TraceParent {
    /// Reads a `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`, lower case, ids not
    /// zero); `None` when it is not well formed.
    pub fn parse(v: &str) -> Option<Self> {
        let b = v.as_bytes();
        if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        // Version ff is invalid; a later version may append fields after a dash.
        if &b[..2] == b"ff" || (b.len() > 55 && (&b[..2] == b"00" || b[55] != b'-')) {
            return None;
        }
        fn hex(s: &str) -> Option<&str> {
            s.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
                .then_some(s)
        }
        let v = v.get(..55)?;
        hex(v.get(..2)?)?;
        let trace_id = u128::from_str_radix(hex(v.get(3..35)?)?, 16).ok()?;
        let span_id = u64::from_str_radix(hex(v.get(36..52)?)?, 16).ok()?;
        let flags = u8::from_str_radix(hex(v.get(53..55)?)?, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// As a `traceparent` header value.
    pub fn format(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }

    /// The trace id as its 32 hex digits.
    pub fn trace_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

/// A new span id (random, never zero).
pub fn new_span_id() -> u64 {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id;
        }
    }
}

fn new_trace_id() -> u128 {
    loop {
        let id = fastrand::u128(..);
        if id != 0 {
            return id;
        }
    }
}

/// Which traces are recorded, as `OTEL_TRACES_SAMPLER` says.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// This share of traces, by trace id (so every service that samples by ratio agrees).
    Ratio(f64),
    /// The parent's decision when there is a parent; `root`'s otherwise.
    ParentBased(Root),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
}

impl Sampler {
    /// From `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (the specification's
    /// default: `parentbased_always_on`; a ratio that does not parse is 1.0).
    pub fn from_values(name: Option<&str>, arg: Option<&str>) -> Result<Self, String> {
        let ratio = || {
            arg.and_then(|a| a.trim().parse::<f64>().ok())
                .filter(|r| (0.0..=1.0).contains(r))
                .unwrap_or(1.0)
        };
        Ok(
            match name.map(str::trim).unwrap_or("parentbased_always_on") {
                "always_on" => Self::AlwaysOn,
                "always_off" => Self::AlwaysOff,
                "traceidratio" => Self::Ratio(ratio()),
                "" | "parentbased_always_on" => Self::ParentBased(Root::AlwaysOn),
                "parentbased_always_off" => Self::ParentBased(Root::AlwaysOff),
                "parentbased_traceidratio" => Self::ParentBased(Root::Ratio(ratio())),
                other => return Err(format!("OTEL_TRACES_SAMPLER={other} is not supported")),
            },
        )
    }

    /// Whether a span of trace `trace_id`, under `parent` (from the client), is recorded.
    pub fn samples(&self, parent: Option<&TraceParent>, trace_id: u128) -> bool {
        let by_ratio = |r: f64| {
            // The lower 64 bits of the id (random in W3C trace ids), against the ratio.
            let x = (trace_id as u64) >> 1;
            (x as f64) < r * (1u64 << 63) as f64
        };
        match (self, parent) {
            (Self::AlwaysOn, _) => true,
            (Self::AlwaysOff, _) => false,
            (Self::Ratio(r), _) => by_ratio(*r),
            (Self::ParentBased(_), Some(p)) => p.sampled,
            (Self::ParentBased(Root::AlwaysOn), None) => true,
            (Self::ParentBased(Root::AlwaysOff), None) => false,
            (Self::ParentBased(Root::Ratio(r)), None) => by_ratio(*r),
        }
    }
}

/// A sampled request's trace: its trace id, its own span id, and its parent (the
/// client's span) if it had one.
#[derive(Clone, Debug)]
pub struct Sampled {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent: Option<u64>,
    /// When the traced work began.
    pub start: SystemTime,
}

impl Sampled {
    /// The `traceparent` of a child span `span_id` of this trace.
    pub fn child(&self, span_id: u64) -> TraceParent {
        TraceParent {
            trace_id: self.trace_id,
            span_id,
            sampled: true,
        }
    }
}

/// One finished span, made after the fact from what a request recorded.
#[derive(Debug)]
pub struct FinishedSpan {
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    pub trace_id: u128,
    pub span_id: u64,
    /// The parent span; `parent_remote` when it is another process's (the client's).
    pub parent: Option<u64>,
    pub parent_remote: bool,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// An error's description: the span's status is `Error` with it.
    pub error: Option<Cow<'static, str>>,
}

/// A span processor shared between the provider (for `tracing` spans) and
/// [`Telemetry::export`] (for spans made after the fact).
#[derive(Debug, Clone)]
struct Shared(Arc<BatchSpanProcessor>);

impl SpanProcessor for Shared {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.0.on_start(span, cx);
    }
    fn on_end(&self, span: SpanData) {
        self.0.on_end(span);
    }
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    // The exporter was given the resource before the processor was built.
    fn set_resource(&mut self, _resource: &Resource) {}
}

/// The process's OpenTelemetry export.
pub struct Telemetry {
    provider: SdkTracerProvider,
    spans: Shared,
    scope: InstrumentationScope,
    sampler: Sampler,
    logs: Option<SdkLoggerProvider>,
    logger: Option<opentelemetry_sdk::logs::SdkLogger>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("sampler", &self.sampler)
            .field("logs", &self.logs.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Grpc,
    HttpProtobuf,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn protocol(signal: &str) -> Result<Protocol, String> {
    let v = var(&format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"))
        .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match v.as_deref().map(str::trim) {
        None | Some("http/protobuf") => Ok(Protocol::HttpProtobuf),
        Some("grpc") => Ok(Protocol::Grpc),
        Some(other) => Err(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported (grpc or http/protobuf)"
        )),
    }
}

fn endpoint_set(signal: &str) -> bool {
    var(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")).is_some()
        || var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
}

/// The OTLP/HTTP client: hyper with rustls (http and https endpoints). The exporters
/// run on the SDK's own threads; each request is sent from the Tokio runtime the client
/// was made in.
#[derive(Debug, Clone)]
struct HttpClient {
    inner: opentelemetry_http::hyper::HyperClient<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    >,
    runtime: tokio::runtime::Handle,
}

impl HttpClient {
    fn new() -> Result<Self, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "OTLP export needs a Tokio runtime".to_string())?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        let timeout = var("OTEL_EXPORTER_OTLP_TIMEOUT")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(Duration::from_secs(10), Duration::from_millis);
        Ok(Self {
            inner: opentelemetry_http::hyper::HyperClient::new(https, timeout, None),
            runtime,
        })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let inner = self.inner.clone();
        self.runtime
            .spawn(async move { inner.send_bytes(request).await })
            .await
            .map_err(|e| Box::new(e) as opentelemetry_http::HttpError)?
    }
}

fn span_exporter(p: Protocol) -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::{WithHttpConfig, WithTonicConfig as _};
    let built = match p {
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_tls_config(
                opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                    .with_webpki_roots(),
            )
            .build(),
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(HttpClient::new()?)
            .build(),
    };
    built.map_err(|e| format!("the OTLP span exporter: {e}"))
}

fn log_exporter(p: Protocol) -> Result<opentelemetry_otlp::LogExporter, String> {
    use opentelemetry_otlp::{WithHttpConfig, WithTonicConfig as _};
    let built = match p {
        Protocol::Grpc => opentelemetry_otlp::LogExporter::builder()
            .with_tonic()
            .with_tls_config(
                opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                    .with_webpki_roots(),
            )
            .build(),
        Protocol::HttpProtobuf => opentelemetry_otlp::LogExporter::builder()
            .with_http()
            .with_http_client(HttpClient::new()?)
            .build(),
    };
    built.map_err(|e| format!("the OTLP log exporter: {e}"))
}

/// The resource: `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` as set, the service
/// name `service` when neither names one.
fn resource(service: &'static str) -> Resource {
    let named = var("OTEL_SERVICE_NAME").is_some()
        || var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|v| v.contains("service.name="));
    let mut b = Resource::builder();
    if !named {
        b = b.with_service_name(service);
    }
    b.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

impl Telemetry {
    /// The export the environment asks for, for the binary `service`; `None` when no
    /// endpoint is set (or the SDK is disabled). `audit_logs`: also export log records
    /// ([`Telemetry::log`]). Must be called within a Tokio runtime.
    pub fn from_env(service: &'static str, audit_logs: bool) -> Result<Option<Self>, String> {
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none")
            || !endpoint_set("TRACES")
        {
            if audit_logs {
                return Err(
                    "--audit otlp needs OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT)"
                        .into(),
                );
            }
            return Ok(None);
        }
        let sampler = Sampler::from_values(
            var("OTEL_TRACES_SAMPLER").as_deref(),
            var("OTEL_TRACES_SAMPLER_ARG").as_deref(),
        )?;
        let resource = resource(service);
        let mut exporter = span_exporter(protocol("TRACES")?)?;
        opentelemetry_sdk::trace::SpanExporter::set_resource(&mut exporter, &resource);
        let spans = Shared(Arc::new(BatchSpanProcessor::builder(exporter).build()));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(spans.clone())
            .with_resource(resource.clone())
            .build();
        let scope = InstrumentationScope::builder(service)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let (logs, logger) = if audit_logs {
            let logs = SdkLoggerProvider::builder()
                .with_batch_exporter(log_exporter(protocol("LOGS")?)?)
                .with_resource(resource)
                .build();
            let logger = logs.logger(service);
            (Some(logs), Some(logger))
        } else {
            (None, None)
        };
        Ok(Some(Self {
            provider,
            spans,
            scope,
            sampler,
            logs,
            logger,
        }))
    }

    /// The `tracing` layer that exports spans of the [`TARGET`] target.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::Layer as _;
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer_with_scope(self.scope.clone()))
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.is_span() && m.target() == TARGET
            }))
    }

    /// Whether a request with the client's `traceparent` (if any) is traced: its trace
    /// (the client's, or a new one) and its own span id when it is. (The client's
    /// `tracestate` needs nothing here: it is passed on with the request as it came.)
    pub fn sample(&self, parent: Option<&TraceParent>) -> Option<Sampled> {
        let trace_id = parent.map_or_else(new_trace_id, |p| p.trace_id);
        self.sampler.samples(parent, trace_id).then(|| Sampled {
            trace_id,
            span_id: new_span_id(),
            parent: parent.map(|p| p.span_id),
            start: SystemTime::now(),
        })
    }

    /// [`Telemetry::sample`] for a request with these headers (a malformed `traceparent`
    /// is no parent).
    pub fn sample_headers(&self, headers: &http::HeaderMap) -> Option<Sampled> {
        let parent = (headers.get("traceparent"))
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse);
        self.sample(parent.as_ref())
    }

    /// Sends a finished span.
    pub fn export(&self, s: FinishedSpan) {
        let span_context = SpanContext::new(
            TraceId::from(s.trace_id),
            SpanId::from(s.span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        );
        let status = match s.error {
            Some(description) => Status::Error { description },
            None => Status::Unset,
        };
        self.spans.on_end(SpanData {
            span_context,
            parent_span_id: s.parent.map_or(SpanId::INVALID, SpanId::from),
            parent_span_is_remote: s.parent.is_some() && s.parent_remote,
            span_kind: s.kind,
            name: s.name,
            start_time: s.start,
            end_time: s.end,
            attributes: s.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        });
    }

    /// Whether log records are exported.
    pub fn logs(&self) -> bool {
        self.logger.is_some()
    }

    /// Sends one log record whose body is `line` (an audit record's JSON), as event
    /// `event`.
    pub fn log(&self, event: &'static str, line: &str) {
        let Some(logger) = &self.logger else { return };
        let mut r = logger.create_log_record();
        r.set_event_name(event);
        r.set_timestamp(SystemTime::now());
        r.set_severity_number(Severity::Info);
        r.set_severity_text("INFO");
        r.set_body(AnyValue::from(line.to_string()));
        logger.emit(r);
    }

    /// Exports what is waiting and stops.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "spans could not all be exported");
        }
        if let Some(l) = &self.logs
            && let Err(e) = l.shutdown()
        {
            tracing::warn!(error = %e, "log records could not all be exported");
        }
    }
}

/// Log lines to standard error (text, or JSON with `json`), filtered by `RUST_LOG`
/// (default `info`), and spans to OTLP when `telemetry` is set.
pub fn init_logging(json: bool, telemetry: Option<&Telemetry>) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The exported spans are not part of log lines.
    let filter = match format!("{TARGET}=off").parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().flatten_event(true).with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    let otel = telemetry.map(|t| t.layer());
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
}

/// The `traceparent` of the current `tracing` span, when it is exported and sampled.
pub fn current_traceparent(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    (sc.is_valid() && sc.is_sampled()).then(|| {
        TraceParent {
            trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
            sampled: true,
        }
        .format()
    })
}

/// Makes `span` a child of the remote span `traceparent` (another process's).
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let Some(p) = TraceParent::parse(traceparent) else {
        return;
    };
    let sc = SpanContext::new(
        TraceId::from(p.trace_id),
        SpanId::from(p.span_id),
        if p.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        true,
        TraceState::NONE,
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_refuses_what_is_malformed() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = TraceParent::parse(v).unwrap();
        assert_eq!(p.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(p.span_id, 0x00f067aa0ba902b7);
        assert!(p.sampled);
        assert_eq!(p.format(), v);
        let unsampled = TraceParent::parse(&v.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        // A later version may carry more after a dash.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }

    #[test]
    fn samplers_follow_the_specification() {
        let s = |n: &str, a: Option<&str>| Sampler::from_values(Some(n), a).unwrap();
        assert_eq!(
            Sampler::from_values(None, None).unwrap(),
            Sampler::ParentBased(Root::AlwaysOn)
        );
        assert!(Sampler::from_values(Some("jaeger_remote"), None).is_err());
        let sampled = TraceParent {
            trace_id: 1,
            span_id: 1,
            sampled: true,
        };
        let not = TraceParent {
            sampled: false,
            ..sampled
        };
        let ratio = s("parentbased_traceidratio", Some("0.1"));
        assert!(ratio.samples(Some(&sampled), u128::MAX));
        assert!(!ratio.samples(Some(&not), 0));
        // Without a parent, about a tenth of random trace ids.
        let n = (0..20_000)
            .filter(|_| ratio.samples(None, fastrand::u128(..)))
            .count();
        assert!((1_500..2_500).contains(&n), "{n}");
        assert!(!s("always_off", None).samples(Some(&sampled), 1));
        assert!(s("always_on", None).samples(Some(&not), 1));
        assert_eq!(s("traceidratio", Some("x")), Sampler::Ratio(1.0));
    }
}
