//! What the two backends' recording code shares besides the statements of `shared.rs`:
//! the answer to a body recorded before, the database's share of a deadline, and the
//! outcome bookkeeping of a delivery; and two input helpers of `shared.rs` (distinct
//! hashes, a canonical UUID).

use std::collections::HashMap;
use std::time::Duration;

use super::rows::{hash_from, parse_outcome};
use super::{NewReport, Outcome, OutcomeCounts, RecordedReport, StoreError};
use crate::domain::TokenHash;

/// `scanner, body_sha256` → `(report_id, token_hash, outcome)`: the items of the report a
/// delivered body was recorded as (see [`RecordOptions::once_per_body`](super::RecordOptions)).
pub(super) const DELIVERED_BODY_SQL: &str = "SELECT b.report_id, i.token_hash, i.outcome
             FROM delivered_bodies b JOIN report_items i ON i.report_id = b.report_id
             WHERE b.scanner = $1 AND b.body_sha256 = $2";

/// The answer to a body recorded before, from [`DELIVERED_BODY_SQL`]'s rows: that
/// report's id and outcomes, in `report`'s candidate order; nothing revoked now.
pub(super) fn duplicate_answer(
    report: &NewReport,
    rows: &[(i64, Vec<u8>, String)],
) -> Result<RecordedReport, StoreError> {
    let report_id = rows
        .first()
        .map(|r| r.0)
        .ok_or_else(|| StoreError::Corrupt("a delivered body's report has no items".into()))?;
    let mut by_hash = HashMap::with_capacity(rows.len());
    for (_, hash, outcome) in rows {
        by_hash.insert(hash_from(hash)?, parse_outcome(outcome)?);
    }
    // Candidates the body's report does not hold: found inside items by a release that
    // looks deeper, or tokens of a format enabled since (`--token-formats`). Answered
    // for now, recorded by `record_report` next.
    let unrecorded: Vec<usize> = report
        .candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| !by_hash.contains_key(&c.hash))
        .map(|(i, _)| i)
        .collect();
    for &i in &unrecorded {
        by_hash.insert(report.candidates[i].hash, Outcome::Unknown);
    }
    let (outcomes, counts) = outcomes_for(report, &by_hash)?;
    Ok(RecordedReport {
        report_id,
        duplicate: true,
        tokens_revoked: 0,
        outcomes,
        counts,
        unrecorded,
    })
}

/// The report that records `report`'s [`RecordedReport::unrecorded`] candidates on their
/// own: same scanner, key id and time, once per body under a body hash derived from the
/// body's and the set of hashes it records. So a further repeat that misses the same
/// tokens is answered from it, and one that misses more (a later release finding more
/// inside the same body, or more formats enabled) records them all again, as a report
/// of its own: nothing found is left unrecorded.
pub(super) fn unrecorded_report(report: &NewReport, unrecorded: &[usize]) -> NewReport {
    use sha2::{Digest, Sha256};
    let candidates: Vec<_> = unrecorded
        .iter()
        .map(|&i| report.candidates[i].clone())
        .collect();
    let mut hashes: Vec<&TokenHash> = candidates.iter().map(|c| &c.hash).collect();
    hashes.sort();
    let mut digest = Sha256::new();
    // (The text predates formats: changing it would record a late report again.)
    digest.update(b"tokens found inside items, first recorded without them\0");
    digest.update(report.body_sha256);
    for hash in hashes {
        digest.update(hash.as_bytes());
    }
    NewReport {
        scanner: report.scanner.clone(),
        key_id: report.key_id.clone(),
        received_at: report.received_at,
        body_sha256: digest.finalize().into(),
        item_count: candidates.len() as u32,
        not_ours: 0,
        candidates,
    }
}

/// What is left of `deadline` for the database: nine tenths of the time remaining, so it
/// gives up (and rolls back) before the caller answers. `None`: no deadline; `Err`:
/// already past, nothing is sent.
pub(super) fn database_budget(
    deadline: Option<std::time::Instant>,
) -> Result<Option<Duration>, StoreError> {
    let Some(deadline) = deadline else {
        return Ok(None);
    };
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    let budget = left - left / 10;
    if budget < Duration::from_millis(1) {
        return Err(StoreError::DeadlineExceeded);
    }
    Ok(Some(budget))
}

/// A UUID in the form both backends store it (lower-case, hyphenated); `None` for
/// anything that is not 32 hex digits in the 8-4-4-4-12 form.
pub(super) fn canonical_uuid(s: &str) -> Option<String> {
    let s = s.trim();
    let groups: Vec<&str> = s.split('-').collect();
    let shape = groups.iter().map(|g| g.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12];
    (shape
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit())))
    .then(|| s.to_ascii_lowercase())
}

/// Distinct hashes, in first-seen order.
pub(super) fn distinct_hashes(hashes: impl IntoIterator<Item = TokenHash>) -> Vec<TokenHash> {
    let mut seen = std::collections::HashSet::new();
    hashes.into_iter().filter(|h| seen.insert(*h)).collect()
}

/// Maps per-hash outcomes back onto the candidates, in order, and counts them.
pub(super) fn outcomes_for(
    report: &NewReport,
    by_hash: &HashMap<TokenHash, Outcome>,
) -> Result<(Vec<Outcome>, OutcomeCounts), StoreError> {
    let mut counts = OutcomeCounts {
        not_ours: report.not_ours,
        ..OutcomeCounts::default()
    };
    let mut outcomes = Vec::with_capacity(report.candidates.len());
    for c in &report.candidates {
        let o = *by_hash.get(&c.hash).ok_or_else(|| {
            StoreError::Corrupt(format!("no outcome for candidate {}", c.hash.prefix()))
        })?;
        counts.add(o);
        outcomes.push(o);
    }
    Ok((outcomes, counts))
}
