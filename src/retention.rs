//! Retention of GitHub Metadata: GitHub's partner agreement (§7.1) requires `url`,
//! `source` and `type` to be deleted within 30 days after the check and the revocation
//! or notification. revoker overwrites them with [`PURGED`](crate::store::PURGED) in
//! every report item and notification older than `--retention` (default 30 days); rows,
//! token hashes, outcomes, counts and timestamps stay, so stats and metrics keep their
//! totals. A notification still pending is purged too and, if it is ever sent, goes with
//! `url` and `source` null.
//!
//! - [`purge`]: one pass, in batches of at most [`BATCH`] reports and about
//!   [`BATCH_ITEMS`] items, until nothing older is left, then the once-per-body claims
//!   (`delivered_bodies`) past their week and a day ([`CLAIM_MARGIN`]), [`BODIES_BATCH`]
//!   at a time
//!   (`revoker purge`).
//! - [`run`]: `serve`'s task: a pass a minute after start and then every [`interval`]. Each pass
//!   purges what will be older than `--retention` by the next pass, so nothing outlives
//!   the retention by the gap between passes. Every instance may run it: on PostgreSQL
//!   concurrent passes skip each other's rows, on SQLite they take turns; a pass with
//!   nothing to do is two index probes and a read of the outbox's batches (queued ones
//!   are turned into notifications first, so theirs are purged with the rest).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use crate::store::{Purged, RevocationStore, StoreError, ONCE_PER_BODY_WINDOW};

/// Reports (and notifications) purged per transaction at most: small enough that
/// SQLite's one writer is not held from deliveries for long, large enough that a month
/// of backlog takes few round trips.
pub const BATCH: u32 = 200;

/// Report items a batch stops before (a batch always takes one report, however large), so
/// one transaction rewrites a few thousand rows, not a history rescan's millions.
pub const BATCH_ITEMS: u32 = 5_000;

/// When `serve`'s first pass runs, at the latest.
const FIRST_PASS: Duration = Duration::from_secs(60);

/// The gap between two of `serve`'s passes for a `retention`: an hour, or a quarter of a
/// shorter retention.
pub fn interval(retention: Duration) -> Duration {
    (retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(3600))
}

/// Purges everything received (or revoked) before now − `older_than`; returns what was
/// purged. Between batches it waits as long as the batch took (at least 5 ms), so
/// deliveries get the database at least half the time.
pub async fn purge(
    store: &dyn RevocationStore,
    older_than: Duration,
) -> Result<Purged, StoreError> {
    // A cutoff before 1970 (a retention of centuries): nothing revoker stored is that
    // old, and PostgreSQL refuses timestamps far enough back.
    let before = chrono::Duration::from_std(older_than)
        .ok()
        .and_then(|d| Utc::now().checked_sub_signed(d))
        .filter(|b| *b > chrono::DateTime::UNIX_EPOCH);
    let mut total = Purged::default();
    while let Some(before) = before {
        let started = std::time::Instant::now();
        let batch = store.purge_metadata(before, BATCH, BATCH_ITEMS).await?;
        total += batch;
        if batch.reports == 0 && batch.notifications < u64::from(BATCH) {
            break;
        }
        pause(started).await;
    }
    // The once-per-body claims past their window (a week, whatever the retention) and a
    // day more: a delivery judges a claim by its own received_at, and may read the claim
    // again just after finding it (to answer from its report), on a host whose clock is
    // not this one's.
    let window = chrono::Duration::from_std(ONCE_PER_BODY_WINDOW + CLAIM_MARGIN).expect("8 days");
    let claimed_before = Utc::now() - window;
    loop {
        let started = std::time::Instant::now();
        let bodies = store
            .purge_delivered_bodies(claimed_before, BODIES_BATCH)
            .await?;
        total.bodies += bodies;
        if bodies < u64::from(BODIES_BATCH) {
            return Ok(total);
        }
        pause(started).await;
    }
}

/// How long past [`ONCE_PER_BODY_WINDOW`] a once-per-body claim is kept.
pub const CLAIM_MARGIN: Duration = Duration::from_secs(86_400);

/// Once-per-body claims deleted per statement at most.
pub const BODIES_BATCH: u32 = 5_000;

/// Between batches, as long as the batch took (at least 5 ms), so deliveries get the
/// database at least half the time.
async fn pause(started: std::time::Instant) {
    tokio::time::sleep(started.elapsed().max(Duration::from_millis(5))).await;
}

/// `serve`'s retention task, until `stop` resolves. A pass that fails (database down)
/// is logged and tried again at the next one.
pub async fn run(
    store: Arc<dyn RevocationStore>,
    retention: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let every = interval(retention);
    let mut stop = std::pin::pin!(stop);
    // The first pass a minute after start (sooner for a short retention), not during it:
    // start-up stays one migration and one ping, and a restart loop still purges.
    tokio::select! {
        () = &mut stop => return,
        () = tokio::time::sleep(every.min(FIRST_PASS)) => {}
    }
    loop {
        // What will pass the retention before the next pass goes now.
        match purge(store.as_ref(), retention.saturating_sub(every)).await {
            Ok(p) if p == Purged::default() => {
                tracing::debug!("retention: nothing to purge");
            }
            Ok(p) => tracing::info!(
                reports = p.reports,
                items = p.items,
                notifications = p.notifications,
                body_claims = p.bodies,
                retention = %humantime::format_duration(retention),
                "retention: purged url, source and type, and body claims older than 8 days"
            ),
            Err(e) => tracing::warn!(
                error = %crate::support::error_chain(&e),
                retry_in = %humantime::format_duration(every),
                "retention: purge failed; trying again at the next pass"
            ),
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
