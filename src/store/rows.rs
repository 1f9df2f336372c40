//! Row mapping shared by both backends: generic over `sqlx::Row`, so the stats rows of
//! SQLite and PostgreSQL decode through one function each.

use std::collections::HashMap;

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{Outcome, RecentItem, RecentReport, ScannerTotals, SourceTotals, StoreError, Totals};
use crate::token::TokenHash;

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
