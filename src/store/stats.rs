//! What `stats` reads: totals, by scanner, source and day, token ages, recent reports
//! and revocations, and the notifications that need a look (the types of `/api/stats`).

use chrono::{DateTime, Utc};

use super::{Notification, NotificationStatus, OutcomeCounts};
use crate::domain::Outcome;

/// Item and report totals (all-time or per group). `revoked` … `not_ours` count
/// occurrences (report items: a token named twice, or re-reported, counts each time);
/// `tokens_revoked` and `tokens_expired` count distinct tokens (a token is revoked once,
/// ever, by the report that flipped it).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct Totals {
    pub reports: i64,
    pub items: i64,
    pub revoked: i64,
    pub already_revoked: i64,
    pub expired: i64,
    pub unknown: i64,
    pub not_ours: i64,
    /// Tokens revoked while live.
    pub tokens_revoked: i64,
    /// Tokens revoked after they had expired.
    pub tokens_expired: i64,
}

/// Totals of one scanner.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct ScannerTotals {
    pub scanner: String,
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub totals: Totals,
}

/// Candidate items by their `source` field (`content`, `commit`, `npm`, …).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct SourceTotals {
    pub source: String,
    pub items: i64,
    pub revoked: i64,
    pub already_revoked: i64,
    pub expired: i64,
    pub unknown: i64,
}

/// Totals of reports received on one UTC day.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DayTotals {
    /// `YYYY-MM-DD`, UTC.
    pub day: chrono::NaiveDate,
    #[serde(flatten)]
    pub totals: Totals,
}

/// Token age at revocation (`revoked_at - created_at`) over tokens revoked by a report.
/// Percentiles are nearest-rank over a histogram whose buckets step by at most 10 %
/// (the E24 series, from 10 ms): each is the upper bound of the bucket holding that
/// rank, so the true value is at most it and more than 10/11 of it (under 10 ms:
/// 0.01 s; past 29 years, the last bound).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct RevocationAges {
    pub count: i64,
    pub median_seconds: Option<f64>,
    pub p95_seconds: Option<f64>,
}

/// One item of a recent report, safe to show: hash prefix, never the token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecentItem {
    pub token_hash_prefix: String,
    pub outcome: Outcome,
    pub source: String,
    pub url: String,
}

/// A recent report with (up to 20 of) its items.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecentReport {
    pub id: i64,
    pub received_at: DateTime<Utc>,
    pub scanner: String,
    pub key_id: String,
    pub item_count: u32,
    pub counts: OutcomeCounts,
    pub items: Vec<RecentItem>,
}

/// Everything `/api/stats` reads from the database.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    pub totals: Totals,
    /// Ordered by scanner name.
    pub by_scanner: Vec<ScannerTotals>,
    /// Top 20 by items, then source name.
    pub by_source: Vec<SourceTotals>,
    /// Days since `since` that have reports, ascending (the caller fills gaps with zeros).
    pub daily: Vec<DayTotals>,
    pub revocation_ages: RevocationAges,
    /// Last 20 reports, newest first.
    pub recent: Vec<RecentReport>,
    /// Last 20 tokens revoked, newest first, with their owners.
    pub recent_revocations: Vec<RecentRevocation>,
    /// Up to 20 failed notifications (newest first) and up to 20 pending ones that have
    /// failed an attempt or waited over an hour (soonest due first). (`/api/stats` shows
    /// them in its own shape.)
    #[serde(skip)]
    pub failed_notifications: Vec<Notification>,
    #[serde(skip)]
    pub waiting_notifications: Vec<Notification>,
    /// Per scanner, its latest report (of those recorded: deliveries with candidates).
    pub last_reports: Vec<LastReport>,
}

/// A token revoked recently, and whom to tell.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecentRevocation {
    pub token_hash_prefix: String,
    pub owner: String,
    pub revoked_at: DateTime<Utc>,
    pub scanner: String,
    /// The key id that signed the delivery; for `replay` and `manual` reports, who ran it.
    pub key_id: String,
    pub report_id: i64,
    /// It had expired when it was reported (revoked anyway).
    pub expired: bool,
    pub notification: NotificationStatus,
}

/// The latest report recorded for one scanner.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LastReport {
    pub scanner: String,
    pub received_at: DateTime<Utc>,
}
