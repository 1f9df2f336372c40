//! Row decoding shared by both backends: one `#[derive(sqlx::FromRow)]` struct per result
//! shape, read by column name, and its conversion into the model types, written once.
//! Where a column's type differs between the databases (instants, `INTEGER` counts, days)
//! the struct is generic over the [`Backend`] and converts through its codec.
//!
//! Invariants:
//! - A statement whose rows one of these structs reads returns the struct's field names
//!   as column names (aliases in the SQL where the column is computed).
//! - Stored data that cannot be a model value (a hash that is not 32 bytes, an unknown
//!   outcome or status name, a negative count, an instant out of range) is
//!   [`StoreError::Corrupt`], never a panic or a silent default.

use std::collections::HashMap;

use sqlx::FromRow;

use super::backend::Backend;
use super::{
    DayTotals, FormatTotals, LastReport, Notification, NotificationCounts, NotificationStatus,
    Outcome, OutcomeCounts, RecentItem, RecentReport, RecentRevocation, ReportItemRecord,
    ReportRecord, RevocationAges, StoreError, TokenRecord, Totals,
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

/// A stored notification status.
fn parse_status(s: &str) -> Result<NotificationStatus, StoreError> {
    NotificationStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("status {s:?}")))
}

/// A token without its hash (the caller looked it up by hash).
#[derive(FromRow)]
pub(super) struct TokenRow<B: Backend> {
    owner: String,
    created_at: B::Time,
    expires_at: B::Time,
    revoked_at: Option<B::Time>,
    revoked_by: Option<i64>,
    format: String,
}

impl<B: Backend> TokenRow<B> {
    pub(super) fn into_record(self, hash: TokenHash) -> Result<TokenRecord, StoreError> {
        Ok(TokenRecord {
            hash,
            owner: self.owner,
            created_at: B::decode_time(self.created_at)?,
            expires_at: B::decode_time(self.expires_at)?,
            revoked_at: self.revoked_at.map(B::decode_time).transpose()?,
            revoked_by: self.revoked_by,
            format: self.format,
        })
    }
}

/// A token with its hash (a listing).
#[derive(FromRow)]
pub(super) struct HashedTokenRow<B: Backend> {
    hash: Vec<u8>,
    #[sqlx(flatten)]
    token: TokenRow<B>,
}

impl<B: Backend> HashedTokenRow<B> {
    pub(super) fn into_record(self) -> Result<TokenRecord, StoreError> {
        let hash = hash_from(&self.hash)?;
        self.token.into_record(hash)
    }
}

/// The outcome counts of a report row.
#[derive(FromRow)]
pub(super) struct CountsRow<B: Backend> {
    revoked: B::Count,
    already_revoked: B::Count,
    expired: B::Count,
    unknown: B::Count,
    not_ours: B::Count,
}

impl<B: Backend> CountsRow<B> {
    fn into_counts(self) -> Result<OutcomeCounts, StoreError> {
        Ok(OutcomeCounts {
            revoked: B::decode_count(self.revoked)?,
            already_revoked: B::decode_count(self.already_revoked)?,
            expired: B::decode_count(self.expired)?,
            unknown: B::decode_count(self.unknown)?,
            not_ours: B::decode_count(self.not_ours)?,
        })
    }
}

#[derive(FromRow)]
pub(super) struct ReportRow<B: Backend> {
    id: i64,
    scanner: String,
    key_id: String,
    received_at: B::Time,
    body_sha256: Vec<u8>,
    item_count: B::Count,
    #[sqlx(flatten)]
    counts: CountsRow<B>,
}

impl<B: Backend> ReportRow<B> {
    pub(super) fn into_record(self) -> Result<ReportRecord, StoreError> {
        Ok(ReportRecord {
            id: self.id,
            scanner: self.scanner,
            key_id: self.key_id,
            received_at: B::decode_time(self.received_at)?,
            body_sha256: self.body_sha256,
            item_count: B::decode_count(self.item_count)?,
            counts: self.counts.into_counts()?,
        })
    }
}

#[derive(FromRow)]
pub(super) struct ItemRow<B: Backend> {
    position: B::Count,
    token_hash: Vec<u8>,
    token_type: String,
    source: String,
    url: String,
    outcome: String,
    found_in: Option<String>,
}

impl<B: Backend> ItemRow<B> {
    pub(super) fn into_record(self) -> Result<ReportItemRecord, StoreError> {
        Ok(ReportItemRecord {
            position: B::decode_position(self.position),
            token_hash: hash_from(&self.token_hash)?,
            token_type: self.token_type,
            source: self.source,
            url: self.url,
            outcome: parse_outcome(&self.outcome)?,
            found_in: self.found_in,
        })
    }
}

/// `hash, revoked, expired`: what `preview` reads of a stored token.
#[derive(FromRow)]
pub(super) struct PreviewRow<'r> {
    hash: &'r [u8],
    revoked: bool,
    expired: bool,
}

/// A stored token's owner (`owners`).
#[derive(FromRow)]
pub(super) struct OwnerRow {
    pub(super) hash: Vec<u8>,
    pub(super) owner: String,
}

/// `preview`'s answer: every distinct input hash gets an entry, `Unknown` when no row
/// names it; a live token would be `Revoked`, a revoked one is `AlreadyRevoked`, an
/// expired one not yet revoked `Expired`.
pub(super) fn preview_map<'r>(
    rows: impl IntoIterator<Item = Result<PreviewRow<'r>, sqlx::Error>>,
    distinct: Vec<TokenHash>,
) -> Result<HashMap<TokenHash, Outcome>, StoreError> {
    let mut by_hash = HashMap::with_capacity(distinct.len());
    for row in rows {
        let row = row?;
        let outcome = if row.revoked {
            Outcome::AlreadyRevoked
        } else if row.expired {
            Outcome::Expired
        } else {
            Outcome::Revoked
        };
        by_hash.insert(hash_from(row.hash)?, outcome);
    }
    for h in distinct {
        by_hash.entry(h).or_insert(Outcome::Unknown);
    }
    Ok(by_hash)
}

/// A daily stats row: the day and its totals.
#[derive(FromRow)]
pub(super) struct DayRow<B: Backend> {
    day: B::Day,
    #[sqlx(flatten)]
    totals: Totals,
}

impl<B: Backend> DayRow<B> {
    pub(super) fn into_totals(self) -> Result<DayTotals, StoreError> {
        Ok(DayTotals {
            day: B::decode_day(self.day)?,
            totals: self.totals,
        })
    }
}

/// A bucket of one format's token-age histogram: its bounds in milliseconds (`hi_ms`
/// NULL for the last), the tokens in it and how many of them had expired.
#[derive(FromRow)]
pub(super) struct AgeBucketRow {
    format: String,
    hi_ms: Option<i64>,
    lo_ms: i64,
    tokens: i64,
    expired: i64,
}

/// The histograms' rows (by format, then bucket) → each format's totals and ages, and
/// the ages over every format.
pub(super) fn ages_by_format(rows: &[AgeBucketRow]) -> (RevocationAges, Vec<FormatTotals>) {
    let mut by_format: Vec<FormatTotals> = rows
        .chunk_by(|a, b| a.format == b.format)
        .map(|buckets| {
            let expired: i64 = buckets.iter().map(|b| b.expired).sum();
            let ages = ages_from_buckets(buckets);
            FormatTotals {
                format: buckets[0].format.clone(),
                tokens_revoked: ages.count - expired,
                tokens_expired: expired,
                revocation_ages: ages,
            }
        })
        .collect();
    // By name, byte order (whatever the database's collation).
    by_format.sort_by(|a, b| a.format.cmp(&b.format));
    // Every format's buckets merged, in bucket order (bounds are the same for all).
    let mut all: Vec<AgeBucketRow> = Vec::new();
    let mut sorted: Vec<&AgeBucketRow> = rows.iter().collect();
    sorted.sort_by_key(|b| b.lo_ms);
    for b in sorted {
        match all.last_mut() {
            Some(last) if last.lo_ms == b.lo_ms => last.tokens += b.tokens,
            _ => all.push(AgeBucketRow {
                format: String::new(),
                hi_ms: b.hi_ms,
                lo_ms: b.lo_ms,
                tokens: b.tokens,
                expired: 0,
            }),
        }
    }
    (ages_from_buckets(&all), by_format)
}

/// Nearest-rank median and 95th percentile from the histogram's buckets (in bucket
/// order): the upper bound of the bucket holding rank ceil(p·n), the last bucket's lower
/// bound for the open last bucket.
fn ages_from_buckets(buckets: &[AgeBucketRow]) -> RevocationAges {
    let count: i64 = buckets.iter().map(|b| b.tokens).sum();
    let at = |num: i64, den: i64| -> Option<f64> {
        if count <= 0 {
            return None;
        }
        let rank = (num * count + den - 1) / den; // ceil(p·n), exact
        let mut seen = 0;
        buckets.iter().find_map(|b| {
            seen += b.tokens;
            (seen >= rank).then(|| b.hi_ms.unwrap_or(b.lo_ms) as f64 / 1000.0)
        })
    };
    RevocationAges {
        count,
        median_seconds: at(1, 2),
        p95_seconds: at(19, 20),
    }
}

/// A row of the "recent reports" query: the report, then one of its items (all four
/// item columns NULL for a report without items).
#[derive(FromRow)]
pub(super) struct RecentRow<B: Backend> {
    id: i64,
    received_at: B::Time,
    scanner: String,
    key_id: String,
    item_count: B::Count,
    #[sqlx(flatten)]
    counts: CountsRow<B>,
    token_hash: Option<Vec<u8>>,
    outcome: Option<String>,
    source: Option<String>,
    url: Option<String>,
}

/// Folds the rows of the "recent reports" query (ordered by report, then item) into
/// reports with their items.
pub(super) fn recent_reports<B: Backend>(
    rows: Vec<RecentRow<B>>,
) -> Result<Vec<RecentReport>, StoreError> {
    let mut recent: Vec<RecentReport> = Vec::new();
    for r in rows {
        if recent.last().map(|l| l.id) != Some(r.id) {
            recent.push(RecentReport {
                id: r.id,
                received_at: B::decode_time(r.received_at)?,
                scanner: r.scanner,
                key_id: r.key_id,
                item_count: B::decode_count(r.item_count)?,
                counts: r.counts.into_counts()?,
                items: Vec::new(),
            });
        }
        let Some(hash) = r.token_hash else {
            continue;
        };
        let (Some(outcome), Some(source), Some(url)) = (r.outcome, r.source, r.url) else {
            return Err(StoreError::Corrupt(format!(
                "report {} has an item without outcome, source or url",
                r.id
            )));
        };
        let item = RecentItem {
            token_hash_prefix: hash_from(&hash)?.prefix(),
            outcome: parse_outcome(&outcome)?,
            source,
            url,
        };
        if let Some(last) = recent.last_mut() {
            last.items.push(item);
        }
    }
    Ok(recent)
}

/// The all-time totals: the sum of the per-scanner ones.
pub(super) fn sum_totals<'a>(parts: impl Iterator<Item = &'a Totals>) -> Totals {
    parts.fold(Totals::default(), |mut t, p| {
        t.reports += p.reports;
        t.items += p.items;
        t.revoked += p.revoked;
        t.already_revoked += p.already_revoked;
        t.expired += p.expired;
        t.unknown += p.unknown;
        t.not_ours += p.not_ours;
        t.tokens_revoked += p.tokens_revoked;
        t.tokens_expired += p.tokens_expired;
        t
    })
}

/// A notification row (`attempts` as a 64-bit integer).
#[derive(FromRow)]
pub(super) struct NotificationRow<B: Backend> {
    id: i64,
    public_id: String,
    token_hash: Vec<u8>,
    report_id: i64,
    owner: String,
    scanner: String,
    url: String,
    source: String,
    revoked_at: B::Time,
    expired: bool,
    status: String,
    attempts: i64,
    next_attempt_at: B::Time,
    last_error: Option<String>,
    delivered_at: Option<B::Time>,
    locked_until: Option<B::Time>,
    token_format: String,
}

impl<B: Backend> NotificationRow<B> {
    pub(super) fn into_notification(self) -> Result<Notification, StoreError> {
        let attempts = self.attempts;
        Ok(Notification {
            id: self.id,
            public_id: self.public_id,
            token_hash: hash_from(&self.token_hash)?,
            token_format: self.token_format,
            report_id: self.report_id,
            owner: self.owner,
            scanner: self.scanner,
            url: self.url,
            source: self.source,
            revoked_at: B::decode_time(self.revoked_at)?,
            expired: self.expired,
            status: parse_status(&self.status)?,
            attempts: u32::try_from(attempts)
                .map_err(|_| StoreError::Corrupt(format!("attempts {attempts}")))?,
            next_attempt_at: B::decode_time(self.next_attempt_at)?,
            last_error: self.last_error,
            delivered_at: self.delivered_at.map(B::decode_time).transpose()?,
            locked_until: self.locked_until.map(B::decode_time).transpose()?,
        })
    }
}

/// A row of the recent-revocations statement.
#[derive(FromRow)]
pub(super) struct RecentRevocationRow<B: Backend> {
    token_hash: Vec<u8>,
    owner: String,
    revoked_at: B::Time,
    scanner: String,
    key_id: String,
    report_id: i64,
    expired: bool,
    status: String,
}

impl<B: Backend> RecentRevocationRow<B> {
    pub(super) fn into_revocation(self) -> Result<RecentRevocation, StoreError> {
        Ok(RecentRevocation {
            token_hash_prefix: hash_from(&self.token_hash)?.prefix(),
            owner: self.owner,
            revoked_at: B::decode_time(self.revoked_at)?,
            scanner: self.scanner,
            key_id: self.key_id,
            report_id: self.report_id,
            expired: self.expired,
            notification: parse_status(&self.status)?,
        })
    }
}

/// `(scanner, latest received_at)` rows as [`LastReport`]s (a scanner whose rollup rows
/// predate the column has none).
pub(super) fn last_reports<B: Backend>(
    rows: Vec<(String, Option<B::Time>)>,
) -> Result<Vec<LastReport>, StoreError> {
    rows.into_iter()
        .filter_map(|(scanner, at)| Some((scanner, at?)))
        .map(|(scanner, at)| {
            Ok(LastReport {
                scanner,
                received_at: B::decode_time(at)?,
            })
        })
        .collect()
}

/// The notification rollups: queued ever, delivered and failed now.
#[derive(FromRow)]
pub(super) struct NotificationRollup {
    queued: i64,
    delivered: i64,
    failed: i64,
}

impl From<NotificationRollup> for NotificationCounts {
    fn from(r: NotificationRollup) -> Self {
        NotificationCounts {
            pending: r.queued - r.delivered - r.failed,
            delivered: r.delivered,
            failed: r.failed,
        }
    }
}
