//! Structured JSON logs through `tracing`. Each request's lines carry its
//! `request_id` (the span set up in `http`). Message text is never logged;
//! lengths and ids are.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (JSON lines on stdout, for CloudWatch).
/// `RUST_LOG` sets the level (default `info`).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .with_ansi(false)
        .try_init();
}
