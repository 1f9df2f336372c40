//! What `stats` reads: totals, by scanner, source and day, token ages, recent reports
//! and revocations, and the notifications that need a look (the types of `/api/stats`),
//! and the statements that read them alike on both backends.

use chrono::{DateTime, Utc};

use super::backend::notification_columns;
use super::{Notification, NotificationStatus, OutcomeCounts};
use crate::domain::Outcome;

// The statements of `stats` that read the same on both backends (the rest are the
// backend's `StatsSql`).

/// → `AgeBucketRow`s of the token-age histograms, one per format, by format and in
/// bucket order (buckets are numbered consecutively, so a bucket's upper bound is the
/// next one's lower bound).
pub(super) const AGES_SQL: &str = "SELECT a.format AS format, b.lo_ms AS lo_ms, n.lo_ms AS hi_ms,
                    CAST(sum(a.tokens) AS BIGINT) AS tokens,
                    CAST(sum(a.expired) AS BIGINT) AS expired
             FROM stats_format_ages a
             JOIN stats_age_buckets b ON b.bucket = a.bucket
             LEFT JOIN stats_age_buckets n ON n.bucket = a.bucket + 1
             GROUP BY a.format, a.bucket, b.lo_ms, n.lo_ms
             ORDER BY a.format, a.bucket";

/// → `RecentRevocationRow`s: the last 20 tokens revoked (by their notification rows, one
/// per revoked token), newest first.
pub(super) const RECENT_REVOCATIONS_SQL: &str =
    "SELECT n.token_hash, n.owner, n.revoked_at, n.scanner, r.key_id,
                    n.report_id, n.expired, n.status
             FROM notifications n JOIN reports r ON r.id = n.report_id
             ORDER BY n.id DESC LIMIT 20";

/// → `NotificationRow`s: the last 20 failed (the `notifications_failed` index).
pub(super) const FAILED_NOTIFICATIONS_SQL: &str = concat!(
    "SELECT ",
    notification_columns!(),
    " FROM notifications WHERE status = 'failed' ORDER BY id DESC LIMIT 20"
);

/// `waited since` → `NotificationRow`s: up to 20 pending ones that failed an attempt or
/// were queued before then, soonest due first (the `notifications_due` index).
pub(super) const WAITING_NOTIFICATIONS_SQL: &str = concat!(
    "SELECT ",
    notification_columns!(),
    " FROM notifications WHERE status = 'pending' AND (last_error IS NOT NULL OR revoked_at <= $1)
      ORDER BY next_attempt_at, id LIMIT 20"
);

/// → `(scanner, latest received_at)` per scanner.
pub(super) const LAST_REPORTS_SQL: &str =
    "SELECT scanner, max(last_received_at) FROM stats_daily GROUP BY scanner ORDER BY scanner";

/// The longest `source` stored, in characters: it keys the per-source rollup, whose
/// index PostgreSQL limits to about 2.7 KB a row. (Migration 0007's backfill and the
/// purge's rollup statements cut older rows at the same 200.) Scanners send short names (`content`,
/// `commit`); a longer one is cut, never refused (a delivery must not fail on it).
pub(super) const SOURCE_MAX_CHARS: usize = 200;

/// `source` as stored (see [`SOURCE_MAX_CHARS`]).
pub(super) fn stored_source(source: &str) -> &str {
    match source.char_indices().nth(SOURCE_MAX_CHARS) {
        Some((end, _)) => &source[..end],
        None => source,
    }
}

/// The age histogram's lower bounds in milliseconds, buckets 1 to 264 in order, as
/// migration 0007 fills `stats_age_buckets`: the E24 series from 10 ms to 9.1e11 ms
/// (bucket 0 is everything under 10 ms). `tests/stats_rollups.rs` checks each age lands
/// in the bucket the table names.
static AGE_BOUNDS: std::sync::LazyLock<Vec<i64>> = std::sync::LazyLock::new(|| {
    const E24: [i64; 24] = [
        10, 11, 12, 13, 15, 16, 18, 20, 22, 24, 27, 30, 33, 36, 39, 43, 47, 51, 56, 62, 68, 75, 82,
        91,
    ];
    (0..11)
        .flat_map(|decade| E24.iter().map(move |m| m * 10i64.pow(decade)))
        .collect()
});

/// The histogram bucket of an age in milliseconds: the last bound at or below it (what
/// `width_bucket` answers on PostgreSQL). SQLite's delivery computes it here instead of
/// one `stats_age_buckets` lookup per flipped token (1.7 ms of a 1,000-token delivery).
pub(super) fn age_bucket(age_ms: i64) -> i64 {
    AGE_BOUNDS.partition_point(|lo| *lo <= age_ms) as i64
}

/// How long a pending notification waits before the dashboard lists it.
pub(super) const LONG_PENDING: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// → one `NotificationRollup` (one statement: one snapshot of both tables).
pub(super) const NOTIFICATION_COUNTS_SQL: &str = "SELECT
        CAST(coalesce((SELECT sum(notifications) FROM stats_daily), 0) AS BIGINT) AS queued,
        CAST(coalesce((SELECT sum(n) FROM stats_notifications WHERE status = 'delivered'), 0) AS BIGINT) AS delivered,
        CAST(coalesce((SELECT sum(n) FROM stats_notifications WHERE status = 'failed'), 0) AS BIGINT) AS failed";

/// Item and report totals (all-time or per group). `revoked` … `not_ours` count
/// occurrences (report items: a token named twice, or re-reported, counts each time);
/// `tokens_revoked` and `tokens_expired` count distinct tokens (a token is revoked once,
/// ever, by the report that flipped it).
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, sqlx::FromRow, utoipa::ToSchema,
)]
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ScannerTotals {
    pub scanner: String,
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub totals: Totals,
}

/// Candidate items by their `source` field (`content`, `commit`, `npm`, …).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct SourceTotals {
    pub source: String,
    pub items: i64,
    pub revoked: i64,
    pub already_revoked: i64,
    pub expired: i64,
    pub unknown: i64,
}

/// Totals of reports received on one UTC day.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct DayTotals {
    /// `YYYY-MM-DD`, UTC.
    pub day: chrono::NaiveDate,
    #[serde(flatten)]
    pub totals: Totals,
}

/// Token age at revocation (`revoked_at - created_at`) over tokens revoked by a report.
/// Percentiles are nearest-rank over a histogram whose buckets step by at most 15.4 %
/// (the E24 series, from 10 ms; 13 → 15 is the widest step): each is the upper bound of
/// the bucket holding that rank, so the true value is at most it and at least 13/15 of
/// it (under 10 ms:
/// 0.01 s; past 29 years, the last bound).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct RevocationAges {
    pub count: i64,
    pub median_seconds: Option<f64>,
    pub p95_seconds: Option<f64>,
}

/// Tokens of one format revoked by a report (`revoker token import` revokes none), and
/// their ages at revocation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct FormatTotals {
    /// A name of [`crate::domain::format::FORMATS`] (or of a format a later binary knows).
    pub format: String,
    /// Revoked while live.
    pub tokens_revoked: i64,
    /// Revoked after they had expired.
    pub tokens_expired: i64,
    pub revocation_ages: RevocationAges,
}

/// One item of a recent report, safe to show: hash prefix, never the token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct RecentItem {
    pub token_hash_prefix: String,
    pub outcome: Outcome,
    pub source: String,
    pub url: String,
}

/// A recent report with (up to 20 of) its items.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Stats {
    pub totals: Totals,
    /// Ordered by scanner name.
    pub by_scanner: Vec<ScannerTotals>,
    /// Top 20 by items, then source name.
    pub by_source: Vec<SourceTotals>,
    /// Days since `since` that have reports, ascending (the caller fills gaps with zeros).
    pub daily: Vec<DayTotals>,
    /// Over every format (a registry's imported tokens included: see `by_format`).
    pub revocation_ages: RevocationAges,
    /// Per token format with a token revoked by a report, by name.
    pub by_format: Vec<FormatTotals>,
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct LastReport {
    pub scanner: String,
    pub received_at: DateTime<Utc>,
}
