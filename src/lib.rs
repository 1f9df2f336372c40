//! revoker: receives signed secret-scanning alerts, revokes leaked `cio_tp_` tokens in
//! one database statement, and answers each report token by token.

pub mod alert; // alert body: parse, classify offline, feedback
pub mod cli; // clap commands and flags
pub mod config; // typed settings
pub mod error; // ApiError: every non-200 answer
pub mod notify; // owner notifications: the outbox's delivery worker
pub mod replay; // leak-report import for security teams
pub mod signature; // ECDSA verification and the scanner key cache
pub mod startup; // Application: build, bind, run
pub mod stats; // admin listener: metrics, stats API, dashboard, health
pub mod store; // RevocationStore trait, SQLite and PostgreSQL backends
pub mod telemetry; // tracing setup
pub mod token; // the cio_tp_ token: generate, validate, hash
pub mod webhook; // POST /secret-scanning/{scanner}
