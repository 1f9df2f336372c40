//! What a replay prints: the table (or JSON lines) of occurrences and the summary.
//!
//! Owns [`Row`], [`Summary`] and their text and JSON forms.
//!
//! Invariants:
//! - A row names an occurrence by its token-hash prefix; no raw token is ever printed.
//! - Text output shows what came from the report or the database (owner, file, url,
//!   source, the parts not read) through [`terminal_safe`]: a control or bidi character
//!   in a report cannot drive the terminal or forge a row. JSON output has the exact
//!   values (serde escapes what JSON must).
//! - Text output is a header and one fixed-width row per occurrence (the header comes
//!   with the first row, so errors about reports that cannot be opened come first), a
//!   blank line and the summary; `--json` output is one `{"row": …}` line per occurrence and a last
//!   `{"summary": …}` line, with the same fields.

use std::io::Write;

use serde::Serialize;

use crate::domain::terminal::terminal_safe;
use crate::domain::{Label, Outcome, OutcomeCounts};

/// One output row: an occurrence, never the token itself.
#[derive(Debug, Serialize)]
pub struct Row<'a> {
    pub token_hash_prefix: String,
    /// `None` for remote replays, where only the label comes back.
    pub outcome: Option<Outcome>,
    /// `None` for a well-formed token a remote dry run did not send.
    pub label: Option<Label>,
    /// Dry runs: `revoked` means "would be revoked".
    pub dry_run: bool,
    /// Whose token it is, when it is ours (local replays: whom to tell).
    pub owner: Option<&'a str>,
    pub file: &'a str,
    pub url: &'a str,
    pub source: &'a str,
}

/// Totals of a replay.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub files: usize,
    pub occurrences: u64,
    pub batches: u64,
    pub dry_run: bool,
    pub counts: OutcomeCounts,
    pub true_positive: u64,
    pub false_positive: u64,
    /// Remote dry run: well-formed tokens that were not sent.
    pub not_sent: u64,
    /// Distinct tokens flipped to revoked by this run (local, not dry-run).
    pub tokens_revoked: u64,
    /// Parts of the reports not in their format's shape, scanned as text or JSON
    /// instead (see `formats::ReadStats`), and where the first ones are.
    pub unstructured: u64,
    pub unstructured_at: Vec<String>,
    /// Reports that could not be opened or read to the end, with why (the rest of the
    /// run went on; the command fails at the end).
    pub files_not_read: Vec<String>,
    /// Report ids recorded (local, not dry-run).
    pub report_ids: Vec<i64>,
    /// Distinct tokens of ours named (revoked now or before, expired), however often
    /// each occurs (local runs).
    pub distinct_tokens: u64,
    /// Of those, distinct tokens a dry run would revoke (live or expired, not revoked).
    pub distinct_would_revoke: u64,
    #[serde(skip)]
    pub(super) seen: std::collections::HashSet<crate::domain::TokenHash>,
    #[serde(skip)]
    pub(super) would_revoke: std::collections::HashSet<crate::domain::TokenHash>,
    #[serde(skip)]
    pub(super) header_written: bool,
}

/// The table header (nothing for JSON lines).
pub(super) fn write_header(out: &mut dyn Write, json: bool) -> anyhow::Result<()> {
    if !json {
        writeln!(
            out,
            "{:<12}  {:<15}  {:<14}  {:<20}  where found",
            "token hash", "outcome", "label", "owner"
        )?;
    }
    Ok(())
}

impl Row<'_> {
    /// Writes the row as a table line or as a `{"row": …}` JSON line.
    pub(super) fn write(&self, out: &mut dyn Write, json: bool) -> anyhow::Result<()> {
        if json {
            serde_json::to_writer(&mut *out, &serde_json::json!({ "row": self }))?;
            writeln!(out)?;
            return Ok(());
        }
        let outcome = match (self.outcome, self.dry_run) {
            (Some(Outcome::Revoked), true) => "would_revoke",
            (Some(o), _) => o.as_str(),
            (None, true) => "not_sent",
            // Remote: the receiver decided; its label is in the next column.
            (None, false) => "sent",
        };
        let label = match self.label {
            Some(Label::TruePositive) => "true_positive",
            Some(Label::FalsePositive) => "false_positive",
            None => "-",
        };
        let place = if self.url.is_empty() {
            self.file
        } else {
            self.url
        };
        let owner: String = self.owner.unwrap_or("-").chars().take(20).collect();
        writeln!(
            out,
            "{:<12}  {:<15}  {:<14}  {:<20}  {} ({})",
            self.token_hash_prefix,
            outcome,
            label,
            terminal_safe(&owner),
            terminal_safe(place),
            terminal_safe(self.source)
        )?;
        Ok(())
    }
}

impl Summary {
    /// Counts one occurrence (an outcome and a label when known).
    pub(super) fn add(&mut self, outcome: Option<Outcome>, label: Option<Label>) {
        self.occurrences += 1;
        if let Some(o) = outcome {
            self.counts.add(o);
        }
        match label {
            Some(Label::TruePositive) => self.true_positive += 1,
            Some(Label::FalsePositive) => self.false_positive += 1,
            None => self.not_sent += 1,
        }
    }

    /// Counts a token of ours once, however often it occurs.
    pub(super) fn note_token(&mut self, hash: &crate::domain::TokenHash, outcome: Option<Outcome>) {
        use Outcome::{AlreadyRevoked, Expired, Revoked};
        if matches!(outcome, Some(Revoked | Expired | AlreadyRevoked)) && self.seen.insert(*hash) {
            self.distinct_tokens += 1;
        }
        if self.dry_run
            && matches!(outcome, Some(Revoked | Expired))
            && self.would_revoke.insert(*hash)
        {
            self.distinct_would_revoke += 1;
        }
    }

    /// Writes the summary as text lines or as one `{"summary": …}` JSON line. `remote`:
    /// the outcomes were decided by a receiver (only the labels are known).
    pub(super) fn write(
        &self,
        out: &mut dyn Write,
        json: bool,
        remote: bool,
    ) -> anyhow::Result<()> {
        if json {
            serde_json::to_writer(&mut *out, &serde_json::json!({ "summary": self }))?;
            writeln!(out)?;
            return Ok(());
        }
        let c = &self.counts;
        writeln!(out)?;
        writeln!(
            out,
            "{} occurrence(s) in {} file(s): {} true positive, {} false positive{}{}",
            self.occurrences,
            self.files,
            self.true_positive,
            self.false_positive,
            if self.not_sent > 0 {
                format!(", {} well-formed not sent", self.not_sent)
            } else {
                String::new()
            },
            if self.dry_run {
                " (dry run: nothing written or sent)"
            } else {
                ""
            }
        )?;
        if !remote {
            if self.dry_run {
                writeln!(
                    out,
                    "  tokens of ours: {} distinct, {} would be revoked",
                    self.distinct_tokens, self.distinct_would_revoke
                )?;
                writeln!(
                    out,
                    "  occurrences: would revoke {}  expired (would revoke): {}  already revoked: {}  unknown: {}  not ours: {}",
                    c.revoked, c.expired, c.already_revoked, c.unknown, c.not_ours
                )?;
            } else {
                writeln!(
                    out,
                    "  tokens revoked now: {} (of {} distinct tokens of ours named)",
                    self.tokens_revoked, self.distinct_tokens
                )?;
                writeln!(
                    out,
                    "  occurrences: revoked {}  expired (revoked too) {}  already revoked {}  unknown {}  not ours {}",
                    c.revoked, c.expired, c.already_revoked, c.unknown, c.not_ours
                )?;
            }
        } else if !self.dry_run {
            writeln!(
                out,
                "  the receiver's answer: {} true positive (its tokens: revoked now or before), {} false positive; not ours (no token of this replay's --token-formats, and false positive there too): {}",
                self.true_positive,
                self.false_positive.saturating_sub(u64::from(c.not_ours)),
                c.not_ours
            )?;
        }
        if !self.dry_run && !remote && self.tokens_revoked == 0 && self.true_positive > 0 {
            writeln!(
                out,
                "  nothing new: every token of ours in these reports was already revoked"
            )?;
        }
        if !self.report_ids.is_empty() {
            let shown: Vec<String> = self
                .report_ids
                .iter()
                .take(10)
                .map(i64::to_string)
                .collect();
            let more = self.report_ids.len().saturating_sub(10);
            writeln!(
                out,
                "  recorded as report(s) {}{}",
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )?;
        }
        for what in &self.files_not_read {
            writeln!(out, "  NOT READ: {}", terminal_safe(what))?;
        }
        if self.unstructured > 0 {
            writeln!(
                out,
                "  {} part(s) not in the report's format, scanned for tokens as text or JSON instead:",
                self.unstructured
            )?;
            for place in &self.unstructured_at {
                writeln!(out, "    {}", terminal_safe(place))?;
            }
            let unnamed = self.unstructured - self.unstructured_at.len() as u64;
            if unnamed > 0 {
                writeln!(out, "    … and {unnamed} more")?;
            }
        }
        Ok(())
    }
}
