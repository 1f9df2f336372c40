//! The domain: what revoker reasons about, with no I/O and no dependency on the rest of
//! the crate (every other module may use it; it uses none of them).
//!
//! - [`token`]: the `cio_tp_` token (generate, validate offline, hash).
//! - [`format`]: token formats (ours and a registry's), the set a process recognises.
//! - [`outcome`]: what became of an item ([`Outcome`]), per-report counts, the label.
//! - [`alert`]: a scanner's alert from verified body bytes to candidates, the report to
//!   record and the feedback body.
//! - [`redact`]: what client-chosen text may show of itself in logs and storage.
//! - [`scan`]: finding tokens in bytes nobody parsed (plain and JSON-escaped).
//! - [`terminal`]: what client-chosen text may show of itself on an operator's terminal.

pub mod alert;
pub mod format;
pub mod outcome;
pub mod redact;
pub mod scan;
pub mod terminal;
pub mod token;

pub use format::{Format, Formats};
pub use outcome::{Label, Outcome, OutcomeCounts};
pub use token::{Token, TokenHash};
