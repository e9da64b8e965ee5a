//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default `info`).
use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber; a second call (as in tests) is a no-op.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
