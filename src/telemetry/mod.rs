//! Metrics and logs. One Prometheus registry per sidecar instance, built at start-up (tests run
//! several instances in one process, so nothing here is global). Names follow the OpenTelemetry
//! GenAI semantic conventions where they exist and carry an `llm_sidecar_` prefix otherwise;
//! histogram buckets are the conventions' advised boundaries.

use std::io::IsTerminal;

use crate::config::{LogFormat, LoggingSettings};

pub mod advice;
pub mod jsonlog;
pub mod live;
pub mod logwriter;
mod metrics;
mod process;
pub mod trace;

pub use metrics::*;

/// The error and its causes on one line; hyper's top-level message alone ("client error
/// (Connect)") tells an operator nothing.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_str = s.to_string();
        if !out.contains(&s_str) {
            out.push_str(": ");
            out.push_str(&s_str);
        }
        src = s.source();
    }
    out
}

/// Keeps the log writer thread alive; dropping it flushes what is queued. Hold it until exit.
pub type LogGuard = Option<logwriter::FlushGuard>;

/// Installs the global `tracing` subscriber. JSON when stdout is not a terminal (a container),
/// text otherwise; `RUST_LOG` overrides the configured level. Lines reach stdout through
/// `logwriter::BatchWriter`, off the event loop. Safe to call twice (the second call is
/// ignored), which the tests rely on.
pub fn init_logging(settings: &LoggingSettings) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match settings.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let Ok((writer, guard)) = logwriter::BatchWriter::new(std::io::stdout()) else {
        // No thread for the writer: log straight to stdout rather than not at all.
        let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
        return None;
    };
    let direct = writer.clone();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(writer);
    let installed = if json {
        builder.event_format(jsonlog::JsonLines).try_init()
    } else {
        builder.with_ansi(std::io::stdout().is_terminal()).try_init()
    };
    if json && installed.is_ok() {
        jsonlog::install_direct(direct);
    }
    installed.ok().map(|_| guard)
}
