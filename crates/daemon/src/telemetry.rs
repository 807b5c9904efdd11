//! Process-wide set-up: logging, span export, and the TLS crypto provider.
//!
//! Logs always go to stderr, as text or JSON (`IDEM_LOG_FORMAT`; by default
//! text on a terminal and JSON otherwise), filtered by
//! `RUST_LOG`. When `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, spans are also exported over
//! OTLP http/protobuf by a batch span processor on its own thread, with the
//! W3C trace-context propagator installed: each consumed message's `message`
//! span and each dispatch attempt's span then join the producer's trace.
//!
//! One global filter (`RUST_LOG`) decides for both layers. Per-layer filters
//! (to export more than is logged) were tried: with `tracing-subscriber`
//! 0.3.23 in this daemon, log lines then lost their spans now and then (a
//! `charged` line without its `attempt` span, a `message` span missing), so
//! the per-message spans are made at INFO instead while spans are exported
//! (`idem_message::trace::exported`), and at DEBUG otherwise.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Key, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Log format of the process.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise (a daemon's stderr goes to a log
    /// shipper: JSON lines with `trace_id` on the message and attempt spans).
    Auto,
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    /// `Auto` decided by whether stderr is a terminal.
    pub fn resolve(self) -> Self {
        use std::io::IsTerminal;
        match self {
            Self::Auto if std::io::stderr().is_terminal() => Self::Text,
            Self::Auto => Self::Json,
            other => other,
        }
    }
}

/// The default log filter of the daemon and the operator commands.
const DEFAULT_FILTER: &str = "info,sqlx=warn,lapin=warn,hyper=warn,reqwest=warn";

/// `service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` says otherwise.
const SERVICE_NAME: &str = "idem";

/// What [`init_logging`] installed. Call [`Telemetry::shutdown`] before the
/// process exits, so that spans still buffered are exported.
#[derive(Debug)]
#[must_use = "call shutdown() before exiting, or buffered spans are lost"]
pub struct Telemetry {
    /// The span exporter's provider, when spans are exported.
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Export what is buffered and stop the exporter (waits up to 5 s).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: exporting the last spans failed: {e}");
        }
    }
}

/// Install the tracing subscriber (stderr, and OTLP when configured).
/// `RUST_LOG` overrides the default filter. Safe to call more than once
/// (later calls install nothing and export nothing).
pub fn init_logging(format: LogFormat) -> Telemetry {
    init_logging_with(format, DEFAULT_FILTER)
}

/// Caps the targets that would print credentials (see [`init_logging_with`]):
/// lapin logs whole frames at TRACE in these modules.
const NO_FRAME_TRACE: [&str; 2] = ["lapin::io_loop=debug", "lapin::frames=debug"];

/// [`init_logging`] with another default filter (`idem bench` runs daemons in
/// process and wants only their warnings).
pub fn init_logging_with(format: LogFormat, default_filter: &str) -> Telemetry {
    // lapin's I/O loop logs every frame at TRACE, the login frame with the
    // broker password among them: never below DEBUG, whatever RUST_LOG says.
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    for cap in NO_FRAME_TRACE {
        if let Ok(cap) = cap.parse() {
            filter = filter.add_directive(cap);
        }
    }
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format.resolve() {
        LogFormat::Auto | LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().boxed(),
    };
    let (provider, export_error) = match otlp_provider() {
        Ok(provider) => (provider, None),
        Err(e) => (None, Some(e)),
    };
    let spans = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("idem"))
            // Spans are started when first asked for their context, not on
            // entry, so that `#[instrument]`ed functions can still set their
            // parent from a stored traceparent (`idem_dispatch::strategy`).
            .with_context_activation(false)
            .boxed()
    });
    let layers: Vec<Box<dyn Layer<Base> + Send + Sync>> =
        std::iter::once(logs).chain(spans).collect();
    if tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .try_init()
        .is_err()
    {
        // A subscriber was already installed: this call exports nothing.
        if let Some(provider) = provider {
            let _ = provider.shutdown();
        }
        return Telemetry { provider: None };
    }
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        idem_message::trace::set_exported(true);
        tracing::info!("exporting spans over OTLP (http/protobuf)");
    }
    if let Some(e) = export_error {
        tracing::error!(
            error = format!("{e:#}"),
            "cannot export spans over OTLP; logging only"
        );
    }
    Telemetry { provider }
}

/// The registry behind the global filter, which the layers sit on.
type Base = tracing_subscriber::layer::Layered<EnvFilter, Registry>;

/// The span exporter, if `OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (and `OTEL_SDK_DISABLED` is
/// not `true`). The exporter reads the other `OTEL_EXPORTER_OTLP_*`
/// variables (headers, timeout, ...) and the SDK the `OTEL_BSP_*` and
/// `OTEL_TRACES_SAMPLER*` ones.
fn otlp_provider() -> anyhow::Result<Option<SdkTracerProvider>> {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let endpoint = set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    if !endpoint || disabled {
        return Ok(None);
    }
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        check_protocol(name, std::env::var(name).ok().as_deref())?;
    }
    // The exporter's HTTP client uses rustls when the endpoint is https.
    install_crypto_provider();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource())
            .build(),
    ))
}

/// Only http/protobuf is built in; the exporter would quietly fall back to
/// it for another protocol (and then talk protobuf to a gRPC port).
fn check_protocol(name: &str, value: Option<&str>) -> anyhow::Result<()> {
    match value.map(str::trim) {
        None | Some("") => Ok(()),
        Some(p) if p.eq_ignore_ascii_case("http/protobuf") => Ok(()),
        Some(p) => anyhow::bail!(
            "{name}={p}: only http/protobuf is supported (point the endpoint at the collector's OTLP/HTTP port, usually 4318)"
        ),
    }
}

/// The detected resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`),
/// named `idem` unless those name it, with the version.
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let mut builder = Resource::builder();
    let named = detected
        .get(&Key::new("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    if !named {
        builder = builder.with_service_name(SERVICE_NAME);
    }
    if detected.get(&Key::new("service.version")).is_none() {
        builder =
            builder.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    }
    builder.build()
}

/// One crypto backend for every TLS user (sqlx, lapin, reqwest all use rustls
/// with ring here); without this, the first TLS handshake panics. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_protobuf_is_accepted() {
        let name = "OTEL_EXPORTER_OTLP_PROTOCOL";
        for ok in [
            None,
            Some(""),
            Some("http/protobuf"),
            Some("HTTP/Protobuf "),
        ] {
            assert!(check_protocol(name, ok).is_ok(), "{ok:?}");
        }
        for bad in ["grpc", "http/json"] {
            let e = check_protocol(name, Some(bad)).expect_err(bad);
            assert!(e.to_string().contains("only http/protobuf"), "{e}");
        }
    }

    #[test]
    fn the_default_filter_parses() {
        // EnvFilter::new ignores bad directives silently; this must not.
        assert!(EnvFilter::try_new(DEFAULT_FILTER).is_ok());
        for cap in NO_FRAME_TRACE {
            assert!(cap.parse::<tracing_subscriber::filter::Directive>().is_ok());
        }
    }
}
