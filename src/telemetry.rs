//! Logging setup: `RUST_LOG` (default `info`) filters, `RUST_LOG_FORMAT=json` switches
//! to one JSON object per line. Logs go to stderr, so `token mint` keeps stdout clean.
//!
//! Nothing in the code base logs a raw token; token hashes appear as 12-hex prefixes.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // PostgreSQL's NOTICE that `_sqlx_migrations` already exists comes at every start;
    // notices stay visible at `debug` when asked for by name.
    let filter = match "sqlx::postgres::notice=warn".parse() {
        Ok(quiet) if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("sqlx")) => {
            filter.add_directive(quiet)
        }
        _ => filter,
    };
    let json = std::env::var("RUST_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}
