//! Row mapping shared by both backends: generic over `sqlx::Row`, so the stats rows of
//! SQLite and PostgreSQL decode through one function each.

use std::collections::HashMap;

use sqlx::{ColumnIndex, Decode, Row, Type};

use chrono::{DateTime, Utc};

use super::{
    Notification, NotificationCounts, NotificationStatus, Outcome, RecentItem, RecentReport,
    ScannerTotals, SourceTotals, StoreError, Totals,
};
use crate::domain::TokenHash;

/// A stored 32-byte hash.
pub(super) fn hash_from(bytes: &[u8]) -> Result<TokenHash, StoreError> {
    TokenHash::from_slice(bytes).ok_or_else(|| StoreError::Corrupt("hash is not 32 bytes".into()))
}

/// A stored outcome name.
pub(super) fn parse_outcome(s: &str) -> Result<Outcome, StoreError> {
    Outcome::parse(s).ok_or_else(|| StoreError::Corrupt(format!("outcome {s:?}")))
}

/// `preview`'s answer from `hash, revoked, expired` rows: every distinct input hash gets
/// an entry, `Unknown` when no row names it.
pub(super) fn preview_map<R>(
    rows: &[R],
    distinct: Vec<TokenHash>,
) -> Result<HashMap<TokenHash, Outcome>, StoreError>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'a> &'a [u8]: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> bool: Decode<'a, R::Database> + Type<R::Database>,
{
    let mut by_hash = HashMap::with_capacity(distinct.len());
    for row in rows {
        let hash = hash_from(row.try_get::<&[u8], _>(0)?)?;
        let revoked: bool = row.try_get(1)?;
        let expired: bool = row.try_get(2)?;
        by_hash.insert(hash, preview_outcome(revoked, expired));
    }
    for h in distinct {
        by_hash.entry(h).or_insert(Outcome::Unknown);
    }
    Ok(by_hash)
}

/// Folds one row of the "recent reports" query (report columns 0–9, then the item's
/// `token_hash, outcome, source, url`, NULL for a report without items) into `recent`.
/// `header` decodes the report columns, which differ in type between the backends.
pub(super) fn push_recent_row<R>(
    recent: &mut Vec<RecentReport>,
    r: &R,
    header: impl FnOnce(&R) -> Result<RecentReport, StoreError>,
) -> Result<(), StoreError>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'a> i64: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> String: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> &'a str: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> Option<&'a [u8]>: Decode<'a, R::Database> + Type<R::Database>,
{
    let id: i64 = r.try_get(0)?;
    if recent.last().map(|l| l.id) != Some(id) {
        recent.push(header(r)?);
    }
    let Some(hash) = r.try_get::<Option<&[u8]>, _>(10)? else {
        return Ok(());
    };
    let item = RecentItem {
        token_hash_prefix: hash_from(hash)?.prefix(),
        outcome: parse_outcome(r.try_get(11)?)?,
        source: r.try_get(12)?,
        url: r.try_get(13)?,
    };
    if let Some(last) = recent.last_mut() {
        last.items.push(item);
    }
    Ok(())
}

/// `preview`'s classification of a stored token (absent tokens are `Unknown`).
pub(super) fn preview_outcome(revoked: bool, expired: bool) -> Outcome {
    if revoked {
        Outcome::AlreadyRevoked
    } else if expired {
        Outcome::Expired
    } else {
        Outcome::Revoked
    }
}

pub(super) fn millis_to_seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// Seven 64-bit integer columns from `i`: reports, items and the five outcome sums.
pub(super) fn totals_at<R>(r: &R, i: usize) -> Result<Totals, StoreError>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'a> i64: Decode<'a, R::Database> + Type<R::Database>,
{
    Ok(Totals {
        reports: r.try_get(i)?,
        items: r.try_get(i + 1)?,
        revoked: r.try_get(i + 2)?,
        already_revoked: r.try_get(i + 3)?,
        expired: r.try_get(i + 4)?,
        unknown: r.try_get(i + 5)?,
        not_ours: r.try_get(i + 6)?,
    })
}

/// `scanner, <totals>` rows.
pub(super) fn scanner_totals<R>(r: &R) -> Result<ScannerTotals, StoreError>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'a> i64: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> String: Decode<'a, R::Database> + Type<R::Database>,
{
    Ok(ScannerTotals {
        scanner: r.try_get(0)?,
        totals: totals_at(r, 1)?,
    })
}

/// `source, items, revoked, already_revoked, expired, unknown` rows.
pub(super) fn source_totals<R>(r: &R) -> Result<SourceTotals, StoreError>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'a> i64: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> String: Decode<'a, R::Database> + Type<R::Database>,
{
    Ok(SourceTotals {
        source: r.try_get(0)?,
        items: r.try_get(1)?,
        revoked: r.try_get(2)?,
        already_revoked: r.try_get(3)?,
        expired: r.try_get(4)?,
        unknown: r.try_get(5)?,
    })
}

pub(super) fn sum_totals<'a>(parts: impl Iterator<Item = &'a Totals>) -> Totals {
    parts.fold(Totals::default(), |mut t, p| {
        t.reports += p.reports;
        t.items += p.items;
        t.revoked += p.revoked;
        t.already_revoked += p.already_revoked;
        t.expired += p.expired;
        t.unknown += p.unknown;
        t.not_ours += p.not_ours;
        t
    })
}

/// A stored notification status.
pub(super) fn parse_status(s: &str) -> Result<NotificationStatus, StoreError> {
    NotificationStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("status {s:?}")))
}

/// The end of a lease that starts at `now`; a lease too long to represent ends at the
/// latest instant there is.
pub(super) fn lease_end(now: DateTime<Utc>, lease: std::time::Duration) -> DateTime<Utc> {
    chrono::TimeDelta::from_std(lease)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Decodes a notification row with the columns in this order: `id, token_hash,
/// report_id, owner, scanner, url, source, revoked_at, expired, status, attempts,
/// next_attempt_at, last_error, delivered_at` (`attempts` as a 64-bit integer).
/// Timestamps are stored as `T` and converted by `time` (the backends differ).
pub(super) fn notification_from<R, T>(
    r: &R,
    time: impl Fn(T) -> Result<DateTime<Utc>, StoreError>,
) -> Result<Notification, StoreError>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'a> i64: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> bool: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> String: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> Option<String>: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> &'a str: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> &'a [u8]: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> T: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> Option<T>: Decode<'a, R::Database> + Type<R::Database>,
{
    let attempts: i64 = r.try_get(10)?;
    Ok(Notification {
        id: r.try_get(0)?,
        token_hash: hash_from(r.try_get::<&[u8], _>(1)?)?,
        report_id: r.try_get(2)?,
        owner: r.try_get(3)?,
        scanner: r.try_get(4)?,
        url: r.try_get(5)?,
        source: r.try_get(6)?,
        revoked_at: time(r.try_get(7)?)?,
        expired: r.try_get(8)?,
        status: parse_status(r.try_get(9)?)?,
        attempts: u32::try_from(attempts)
            .map_err(|_| StoreError::Corrupt(format!("attempts {attempts}")))?,
        next_attempt_at: time(r.try_get(11)?)?,
        last_error: r.try_get(12)?,
        delivered_at: r.try_get::<Option<T>, _>(13)?.map(&time).transpose()?,
        locked_until: r.try_get::<Option<T>, _>(14)?.map(&time).transpose()?,
    })
}

/// Oldest due first, as claimed: `RETURNING` promises no order.
pub(super) fn sort_claimed(claimed: &mut [Notification]) {
    claimed.sort_by_key(|n| (n.next_attempt_at, n.id));
}

/// `notification_counts` from `status, count` rows.
pub(super) fn notification_counts_from<R>(rows: &[R]) -> Result<NotificationCounts, StoreError>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'a> i64: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> &'a str: Decode<'a, R::Database> + Type<R::Database>,
{
    let mut counts = NotificationCounts::default();
    for r in rows {
        let n: i64 = r.try_get(1)?;
        match parse_status(r.try_get(0)?)? {
            NotificationStatus::Pending => counts.pending = n,
            NotificationStatus::Delivered => counts.delivered = n,
            NotificationStatus::Failed => counts.failed = n,
        }
    }
    Ok(counts)
}
