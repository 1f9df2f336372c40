//! revoker: receives signed secret-scanning alerts, revokes leaked `cio_tp_` tokens in
//! one database statement, and answers each report token by token.
//!
//! # The dependency rule
//! Modules form layers; a module uses only modules of lower layers, never one of its
//! own layer or above, so no two modules reach each other, directly or through a chain.
//! `tests/architecture.rs` reads every `crate::` path in `src/` and fails on a
//! back-edge.
//!
//! | layer | modules | what they own |
//! |---|---|---|
//! | 0 | [`activity`], [`domain`], [`support`], [`telemetry`], [`tls`] | what an instance saw of each scanner's deliveries (on-call); tokens, outcomes, alerts, redaction; error chains, outbound HTTP, retry; log setup; the public listener's reloadable TLS |
//! | 1 | [`metrics`] | the Prometheus registry of one instance |
//! | 2 | [`signature`], [`store`] | ECDSA verification and scanner keys; all SQL |
//! | 3 | [`import`], [`notify`], [`replay`], [`retention`] | a registry's token hashes stored (`token import`); the owner-notification worker; leak-report import; the 30-day purge of GitHub Metadata |
//! | 4 | [`http`] | state, routers, `ApiError`, webhook, admin, health |
//! | 5 | [`config`] | typed settings of `serve` |
//! | 6 | [`startup`] | `Application`: build, bind, run until stopped |
//!
//! The binary (`src/main.rs`, `src/cmd/`) sits above all of them and is the only place
//! that knows clap.

pub mod activity;
pub mod config;
pub mod domain;
pub mod http;
pub mod import;
pub mod metrics;
pub mod notify;
pub mod replay;
pub mod retention;
pub mod signature;
pub mod startup;
pub mod store;
pub mod support;
pub mod telemetry;
pub mod tls;
