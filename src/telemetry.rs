//! Logging: a `tracing` subscriber (JSON or text), with Pingora's `log` records bridged in.

use crate::config::{LogFormat, Logging};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Call once, before the server starts.
pub fn init(logging: &Logging) {
    // Pingora logs through `log`; bridge it so one filter and one format cover everything.
    let _ = tracing_log::LogTracer::init();
    // `ORCA_LOG` (an EnvFilter directive such as `info,pingora_core=debug`) replaces the
    // configured level, for chasing a problem inside Pingora without editing the config.
    let directives = std::env::var("ORCA_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let filter = EnvFilter::try_new(directives.unwrap_or_else(|| {
        format!(
            "{level},pingora_core=warn,pingora_proxy=warn,pingora_cache=warn,pingora=warn",
            level = logging.level
        )
    }))
    .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match logging.format {
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}
