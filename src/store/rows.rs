//! Row mapping shared by both backends: generic over `sqlx::Row`, so the stats rows of
//! SQLite and PostgreSQL decode through one function each.

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{Outcome, ScannerTotals, SourceTotals, StoreError, Totals};

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
