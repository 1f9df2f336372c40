//! SQLite: recording a delivery, and `preview`'s statement.
//!
//! `record_report` is one transaction (a large delivery's with a 16 MiB page cache, see
//! [`LARGE_CACHE`]), committed whole or not at all: the report row,
//! the one revoking `UPDATE` of every live candidate (each hash a parameter of its own,
//! so SQLite keeps no statement journal for it; past 30,000 hashes one JSON array), the
//! outbox batch when it flipped a token (turned into one notification per flipped token
//! by `outbox.rs`), the existence probe of the rest, the items (one row, migration
//! 0014), the report's counts
//! and the stats rollups (per day and scanner, per source, and the age histogram when it
//! flipped something: two or three statements). It starts with a write (the report
//! row), so it holds SQLite's one write lock from its first statement and everything it
//! reads inside the transaction is consistent. A token flips once (`WHERE revoked_at IS
//! NULL`), so it gets exactly one notification.
//!
//! Once per body: right after the report row (so under the write lock) the transaction
//! claims `(scanner, body_sha256)` in `delivered_bodies`; when a claim younger than the
//! window holds it, the transaction rolls back and the delivery is answered from the
//! report that claim names.
//!
//! A process's own writes (deliveries, and the outbox, retention and imports through
//! `Store::usual_write_turn`; the readiness probe skips its write while one is under
//! way) take the write lock in turn
//! (`Store::writer`, a FIFO async mutex): a transaction that finds the lock taken waits
//! in SQLite's busy handler, which sleeps 1, 2, 5, … up to 100 ms between tries, so under
//! concurrent deliveries one could wait far longer than the writer ahead of it took
//! (1-token deliveries at c=32 had a p99 over 300 ms), and a writer outside the queue
//! would hardly ever find the lock free. Other processes (a `revoker` command, a second
//! `serve`) still meet at SQLite's lock. A delivery waits for its turn as long as the
//! lock would be waited for (`--db-timeout`), and no longer than its deadline. Once a
//! turn ends with about 256 pages written since the last checkpoint, the WAL
//! checkpointer (`mod.rs`) takes a turn of its own and copies them into the database
//! file: after the delivery was answered, not inside its commit. No foreign key is
//! checked per flipped token or per item (migration 0013 dropped those: they looked up
//! the report this transaction had just inserted).
//!
//! With a deadline closer than `--db-timeout`, the connection's `busy_timeout` (how long
//! a statement waits for the write lock) is cut to the budget left once a connection is
//! had, so a delivery behind another writer gives up, rolled back, before the caller
//! answers; the pool puts the usual one back whenever a connection returns to it. A
//! delivery whose caller gave up mid-transaction never commits: its remaining
//! statements, `COMMIT` included, are never sent (one that gave up while its `COMMIT`
//! was already sent is recorded, and a retry is answered from that report).

use std::collections::HashMap;

use sqlx::{FromRow, Row, Sqlite};

use super::{hex_array, primary_code};
use crate::domain::{Outcome, OutcomeCounts, TokenHash};
use crate::store::backend::{purge_notifications_sql, Backend, Record, Store};
use crate::store::recording::{
    database_budget, distinct_hashes, duplicate_answer, outcomes_for, DELIVERED_BODY_SQL,
};
use crate::store::rows::hash_from;
use crate::store::stats::{age_bucket, stored_source};
use crate::store::{NewReport, RecordOptions, RecordedReport, StoreError, ONCE_PER_BODY_WINDOW};

/// A token the revoking `UPDATE` flipped.
#[derive(FromRow)]
struct Flipped<'r> {
    hash: &'r [u8],
    was_expired: bool,
    format: &'r str,
    /// Its age at revocation in milliseconds.
    age_ms: i64,
}

/// What adding a row to `stats_sources` does to the one already there: sums every
/// counter (the recording and the purge alike).
macro_rules! add_to_source {
    () => {
        "ON CONFLICT (source, slot) DO UPDATE SET
             items = items + excluded.items, revoked = revoked + excluded.revoked,
             already_revoked = already_revoked + excluded.already_revoked,
             expired = expired + excluded.expired, unknown = unknown + excluded.unknown"
    };
}

/// The batch of the retention purge: `before`, `limit` reports, `max_items` (as `?1`,
/// `?2`, `?3`): the oldest reports not purged yet, as many as fit under `max_items`
/// items (the first one whatever its size). Both statements of [`Record::purge_reports`]
/// name it and run under one write lock, so they pick the same reports.
macro_rules! purge_batch {
    () => {
        "SELECT id FROM (
             SELECT id, item_count,
                    sum(item_count) OVER (ORDER BY received_at, id ROWS UNBOUNDED PRECEDING) AS running
             FROM reports WHERE metadata_purged_at IS NULL AND received_at < ?1
             ORDER BY received_at, id LIMIT ?2
         ) WHERE running - item_count < ?3"
    };
}

impl Record for Sqlite {
    /// `hashes` (a JSON array of hex), `now` → `PreviewRow`s of the stored ones.
    const PREVIEW_SQL: &'static str =
        "SELECT hash, owner, revoked_at IS NOT NULL AS revoked, expires_at <= ?2 AS expired
             FROM tokens WHERE hash IN (SELECT unhex(value) FROM json_each(?1))";

    const PURGE_NOTIFICATIONS_SQL: &'static str = purge_notifications_sql!("");

    /// By key: SQLite looks each one up in the primary key.
    const PURGE_BODIES_SQL: &'static str = "DELETE FROM delivered_bodies
        WHERE (scanner, body_sha256) IN (SELECT scanner, body_sha256 FROM delivered_bodies
                                         WHERE delivered_at < ?1 LIMIT ?2)
          AND delivered_at < ?1";

    /// One transaction that starts with a write, so it holds the write lock from its
    /// first statement: the items of the batch overwritten, then the same batch marked.
    async fn purge_reports(
        store: &Store<Self>,
        before: chrono::DateTime<chrono::Utc>,
        limit: u32,
        max_items: u32,
    ) -> Result<(u64, u64), StoreError> {
        let before = Self::encode_time(before);
        store.statements.add(1);
        let mut tx = store.pool.begin().await?;
        // The per-source rollup follows the items: the batch's counts leave their sources
        // for '(purged)' (rows emptied here are deleted by the caller's next statement).
        for (source, sign) in [("substr(source, 1, 200)", "-"), ("'(purged)'", "")] {
            store.statements.add(1);
            sqlx::query(&format!(
                "INSERT INTO stats_sources (source, slot, items, revoked, already_revoked, expired, unknown)
                 SELECT {source}, 0, {sign}count(*), {sign}sum(outcome = 'revoked'),
                        {sign}sum(outcome = 'already_revoked'), {sign}sum(outcome = 'expired'),
                        {sign}sum(outcome = 'unknown')
                 FROM report_items
                 WHERE source <> '(purged)' AND report_id IN ({batch})
                 GROUP BY 1
                 {add}",
                batch = purge_batch!(),
                add = add_to_source!()
            ))
            .bind(before)
            .bind(i64::from(limit))
            .bind(i64::from(max_items))
            .execute(&mut *tx)
            .await?;
        }
        // Each report's items in one row (migration 0014): every type, source and url
        // of it, in position order as stored.
        store.statements.add(1);
        let items: Vec<i64> = sqlx::query_scalar(concat!(
            "UPDATE report_item_sets
             SET items = (SELECT json_group_array(json_array(i.value -> 0, i.value -> 1,
                                                             '(purged)', '(purged)', '(purged)',
                                                             i.value -> 5, i.value -> 6)
                                                  ORDER BY i.key)
                          FROM json_each(items) i)
             WHERE report_id IN (",
            purge_batch!(),
            ")
             RETURNING json_array_length(items)"
        ))
        .bind(before)
        .bind(i64::from(limit))
        .bind(i64::from(max_items))
        .fetch_all(&mut *tx)
        .await?;
        let items = items.iter().sum::<i64>() as u64;
        store.statements.add(1);
        let reports = sqlx::query(concat!(
            "UPDATE reports SET metadata_purged_at = ?4 WHERE id IN (",
            purge_batch!(),
            ")"
        ))
        .bind(before)
        .bind(i64::from(limit))
        .bind(i64::from(max_items))
        .bind(Self::encode_time(chrono::Utc::now()))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        store.statements.add(1);
        tx.commit().await?;
        Ok((reports, items))
    }

    async fn record_report(
        store: &Store<Self>,
        report: &NewReport,
        options: RecordOptions,
    ) -> Result<RecordedReport, StoreError> {
        // This process's deliveries take the write lock in turn, in arrival order: one
        // waiting on SQLite's lock instead sleeps in SQLite's busy handler (up to 100 ms
        // at a time) and may miss it again. The wait is bounded like the lock's own
        // (`--db-timeout`), and by the deadline.
        let usual = store.pool.options().get_acquire_timeout();
        let wait = database_budget(options.deadline)?.map_or(usual, |b| b.min(usual));
        let _turn = match store.write_turn(wait).await {
            Err(StoreError::WriteTurnTimedOut) if wait < usual => {
                return Err(StoreError::DeadlineExceeded)
            }
            turn => turn?,
        };
        let mut conn = store.pool.acquire().await?;
        // The budget left once a connection is had; only ever shorter than the usual
        // wait for the write lock (`--db-timeout`), never longer.
        let budget = database_budget(options.deadline)?.filter(|b| *b < usual);
        let Some(budget) = budget else {
            return record(store, &mut conn, report, options).await;
        };
        store.statements.add(1);
        // Not kept prepared: each budget is another statement, and they would push the
        // delivery's own statements out of the connection's cache.
        sqlx::query(&format!(
            "PRAGMA busy_timeout = {}",
            budget.as_millis().max(1)
        ))
        .persistent(false)
        .execute(&mut *conn)
        .await?;
        let recorded = record(store, &mut conn, report, options).await;
        // The usual busy_timeout is put back by the pool when `conn` returns to it
        // (`after_release`, sqlite/mod.rs), whether or not this future ran to the end.
        match recorded {
            // Still waiting for the write lock when the budget ran out: rolled back.
            Err(StoreError::Database(sqlx::Error::Database(db)))
                if primary_code(db.as_ref()) == Some(5) =>
            {
                Err(StoreError::DeadlineExceeded)
            }
            other => other,
        }
    }
}

/// The delivery's transaction on `conn`; for a body recorded before, the answer from its
/// report (nothing written).
pub(super) async fn record(
    store: &Store<Sqlite>,
    conn: &mut sqlx::SqliteConnection,
    report: &NewReport,
    options: RecordOptions,
) -> Result<RecordedReport, StoreError> {
    use sqlx::Connection;
    let now = Sqlite::encode_time(report.received_at);
    let distinct = distinct_hashes(report.candidates.iter().map(|c| c.hash));

    // A large delivery's page cache, raised before its transaction (`LARGE_CACHE`).
    if distinct.len() > CACHE_RAISED_ABOVE {
        store.statements.add(1);
        sqlx::query(LARGE_CACHE).execute(&mut *conn).await?;
    }
    store.statements.add(1);
    let mut tx = conn.begin().await?;

    store.statements.add(1);
    let report_id: i64 = sqlx::query_scalar(
        "INSERT INTO reports (scanner, key_id, received_at, body_sha256, item_count, not_ours)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
    )
    .bind(&report.scanner)
    .bind(&report.key_id)
    .bind(now)
    .bind(report.body_sha256.as_slice())
    .bind(report.item_count)
    .bind(report.not_ours)
    .fetch_one(&mut *tx)
    .await?;

    if options.once_per_body {
        let cutoff = Sqlite::encode_time(
            report.received_at
                - chrono::TimeDelta::from_std(ONCE_PER_BODY_WINDOW).expect("a week is a TimeDelta"),
        );
        store.statements.add(1);
        let claimed = sqlx::query(
            "INSERT INTO delivered_bodies (scanner, body_sha256, report_id, delivered_at)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (scanner, body_sha256) DO UPDATE
                         SET report_id = excluded.report_id, delivered_at = excluded.delivered_at
                         WHERE delivered_bodies.delivered_at < $5",
        )
        .bind(&report.scanner)
        .bind(report.body_sha256.as_slice())
        .bind(report_id)
        .bind(now)
        .bind(cutoff)
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() == 0 {
            // Recorded before: undo the report row, answer from the first report.
            store.statements.add(2);
            tx.rollback().await?;
            let rows: Vec<(i64, Vec<u8>, String)> = sqlx::query_as(DELIVERED_BODY_SQL)
                .bind(&report.scanner)
                .bind(report.body_sha256.as_slice())
                .fetch_all(&mut *conn)
                .await?;
            return duplicate_answer(report, &rows);
        }
    }

    // The one revoking statement: every live candidate flips, in one UPDATE. The hashes
    // are bound one parameter each, not unpacked from JSON with `unhex`: inside a
    // transaction SQLite keeps a statement journal for a statement that writes several
    // rows and calls a function (it counts as one that may abort), a copy of every page
    // the statement changes, one per flipped token in a large table, spilled to a
    // temporary file: 6–7 ms of a 1,000-token delivery on 1,000,000 tokens
    // (BENCHMARKS.md). Without it a failure in the statement (a full disk) rolls back the
    // whole transaction instead of the statement, which the delivery does anyway. The
    // parameters are plain `?`, numbered in the order they are written: sqlx asks SQLite
    // for each parameter's name, and for a `?NNN` SQLite walks its list of names, so
    // 10,000 of those took longer than the JSON. Past `MOST_BOUND_HASHES`, the JSON (one
    // statement still).
    let bound = distinct.len() <= MOST_BOUND_HASHES;
    let sql = format!(
        "UPDATE tokens SET revoked_at = ?, revoked_by = ?
             WHERE revoked_at IS NULL AND hash IN ({})
             RETURNING hash, expires_at <= ? AS was_expired, format, ? - created_at AS age_ms",
        if bound {
            placeholders(distinct.len())
        } else {
            "SELECT unhex(value) FROM json_each(?)".to_owned()
        }
    );
    // Kept prepared for the smallest deliveries only (and the JSON form, one text): one
    // statement per number of hashes would fill the cache.
    let mut update = sqlx::query(&sql)
        .persistent(!bound || distinct.len() <= PREPARED_UP_TO)
        .bind(now)
        .bind(report_id);
    if bound {
        for h in &distinct {
            update = update.bind(h.as_bytes().as_slice());
        }
    } else {
        update = update.bind(hex_array(&distinct));
    }
    store.statements.add(1);
    let flipped = update.bind(now).bind(now).fetch_all(&mut *tx).await?;

    let mut by_hash: HashMap<TokenHash, Outcome> = HashMap::with_capacity(distinct.len());
    // The JSON arrays the statements read are serialised from borrowed tuples (serde
    // writes a tuple as an array), not built as `serde_json::Value`s first: a `Value`
    // per field and per row allocated and copied every string, inside the write turn.
    // Flipped tokens by format and age bucket (the last bound at or below, `age_bucket`):
    // [tokens, expired].
    let mut ages: std::collections::BTreeMap<(&str, i64), (i64, i64)> = Default::default();
    let mut flipped_expired = 0i64;
    for row in &flipped {
        let Flipped {
            hash,
            was_expired,
            format,
            age_ms,
        } = Flipped::from_row(row)?;
        let n = ages.entry((format, age_bucket(age_ms))).or_default();
        n.0 += 1;
        n.1 += i64::from(was_expired);
        flipped_expired += i64::from(was_expired);
        let o = if was_expired {
            Outcome::Expired
        } else {
            Outcome::Revoked
        };
        by_hash.insert(hash_from(hash)?, o);
    }

    // The outbox: one row for the delivery when it flipped a token, committed with the
    // revocation or not at all. The outbox turns it into one notification per token this
    // report flipped (`outbox.rs`); a token flips once, so it is notified once.
    if !flipped.is_empty() {
        store.statements.add(1);
        sqlx::query(
            "INSERT INTO notification_batches (report_id, queued_at, tokens) VALUES (?1, ?2, ?3)",
        )
        .bind(report_id)
        .bind(now)
        .bind(flipped.len() as i64)
        .execute(&mut *tx)
        .await?;
    }

    // Whatever did not flip is either ours and already revoked, or not ours at all.
    let rest: Vec<TokenHash> = distinct
        .iter()
        .filter(|h| !by_hash.contains_key(*h))
        .copied()
        .collect();
    if !rest.is_empty() {
        store.statements.add(1);
        let existing = sqlx::query(
            "SELECT hash FROM tokens WHERE hash IN (SELECT unhex(value) FROM json_each(?1))",
        )
        .bind(hex_array(&rest))
        .fetch_all(&mut *tx)
        .await?;
        for row in &existing {
            by_hash.insert(hash_from(row.try_get("hash")?)?, Outcome::AlreadyRevoked);
        }
        for h in rest {
            by_hash.entry(h).or_insert(Outcome::Unknown);
        }
    }

    let (outcomes, counts) = outcomes_for(report, &by_hash)?;

    // The report's items in one row (migration 0014), as one JSON array of [position,
    // hash, type, source, url, outcome, found_in]; none for a report without items.
    let items: Vec<ItemRow<'_>> = report
        .candidates
        .iter()
        .zip(&outcomes)
        .map(|(c, o)| {
            (
                c.position,
                c.hash.to_hex(),
                c.token_type.as_str(),
                stored_source(&c.source),
                c.url.as_str(),
                o.as_str(),
                c.found_in.as_deref(),
            )
        })
        .collect();
    store.statements.add(1);
    sqlx::query("INSERT INTO report_item_sets (report_id, items) SELECT ?1, ?2 WHERE ?3")
        .bind(report_id)
        .bind(to_json(&items))
        .bind(!items.is_empty())
        .execute(&mut *tx)
        .await?;

    store.statements.add(1);
    sqlx::query(
        "UPDATE reports SET revoked = ?2, already_revoked = ?3, expired = ?4, unknown = ?5
                 WHERE id = ?1",
    )
    .bind(report_id)
    .bind(counts.revoked)
    .bind(counts.already_revoked)
    .bind(counts.expired)
    .bind(counts.unknown)
    .execute(&mut *tx)
    .await?;

    // The stats rollups (migration 0007), in this transaction: exactly what it wrote.
    store.statements.add(1);
    sqlx::query(
        "INSERT INTO stats_daily (day, scanner, slot, reports, items, revoked, already_revoked,
                                  expired, unknown, not_ours, tokens_revoked, tokens_expired,
                                  notifications, last_received_at)
         VALUES (date(?1 / 1000.0, 'unixepoch'), ?2, 0, 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?1)
         ON CONFLICT (day, scanner, slot) DO UPDATE SET
             reports = reports + 1, items = items + excluded.items,
             revoked = revoked + excluded.revoked,
             already_revoked = already_revoked + excluded.already_revoked,
             expired = expired + excluded.expired, unknown = unknown + excluded.unknown,
             not_ours = not_ours + excluded.not_ours,
             tokens_revoked = tokens_revoked + excluded.tokens_revoked,
             tokens_expired = tokens_expired + excluded.tokens_expired,
             notifications = notifications + excluded.notifications,
             last_received_at = max(coalesce(last_received_at, 0), excluded.last_received_at)",
    )
    .bind(now)
    .bind(&report.scanner)
    .bind(report.item_count)
    .bind(counts.revoked)
    .bind(counts.already_revoked)
    .bind(counts.expired)
    .bind(counts.unknown)
    .bind(report.not_ours)
    .bind(flipped.len() as i64 - flipped_expired)
    .bind(flipped_expired)
    .bind(flipped.len() as i64)
    .execute(&mut *tx)
    .await?;
    // Per source, counted here from what was just written: [source, items, revoked,
    // already_revoked, expired, unknown].
    let mut by_source: std::collections::BTreeMap<&str, (u32, OutcomeCounts)> = Default::default();
    for (c, o) in report.candidates.iter().zip(&outcomes) {
        let (items, counts) = by_source.entry(stored_source(&c.source)).or_default();
        *items += 1;
        counts.add(*o);
    }
    let by_source: Vec<serde_json::Value> = by_source
        .into_iter()
        .map(|(source, (items, n))| {
            serde_json::json!([
                source,
                items,
                n.revoked,
                n.already_revoked,
                n.expired,
                n.unknown
            ])
        })
        .collect();
    store.statements.add(1);
    sqlx::query(concat!(
        "INSERT INTO stats_sources (source, slot, items, revoked, already_revoked, expired, unknown)
         SELECT json_extract(value, '$[0]'), 0, json_extract(value, '$[1]'),
                json_extract(value, '$[2]'), json_extract(value, '$[3]'),
                json_extract(value, '$[4]'), json_extract(value, '$[5]')
         FROM json_each(?1) WHERE true
         ",
        add_to_source!()
    ))
    .bind(serde_json::Value::Array(by_source).to_string())
    .execute(&mut *tx)
    .await?;
    if !ages.is_empty() {
        // The age histogram, counted above: [format, bucket, tokens, expired].
        let rows: Vec<(&str, i64, i64, i64)> = ages
            .into_iter()
            .map(|((format, bucket), (tokens, expired))| (format, bucket, tokens, expired))
            .collect();
        store.statements.add(1);
        sqlx::query(
            "INSERT INTO stats_format_ages (format, bucket, slot, tokens, expired)
             SELECT value ->> 0, value ->> 1, 0, value ->> 2, value ->> 3
             FROM json_each(?1) WHERE true
             ON CONFLICT (format, bucket, slot) DO UPDATE
                 SET tokens = tokens + excluded.tokens, expired = expired + excluded.expired",
        )
        .bind(to_json(&rows))
        .execute(&mut *tx)
        .await?;
    }

    store.statements.add(1);
    tx.commit().await?;
    // Each flipped token's row is on a page of its own in a large table (the turn
    // counts one for the rest).
    store.wrote(flipped.len());

    Ok(RecordedReport {
        report_id,
        duplicate: false,
        tokens_revoked: flipped.len() as u32,
        outcomes,
        counts,
        unrecorded: Vec::new(),
    })
}

/// The page cache of a delivery of more than [`CACHE_RAISED_ABOVE`] distinct hashes,
/// set on its connection before its transaction: 16 MiB. Every pooled connection has
/// SQLite's default, 2,000 KiB, and the pool puts it back when the connection returns
/// (`after_release`, `mod.rs`). A delivery dirties about one page of a large `tokens`
/// table per token it flips (a 1,000-token one ~1,100 pages of 4 KiB): past what the
/// cache holds, SQLite writes dirty pages to the WAL in the middle of the transaction to
/// make room, and reads them back for the statements after (perf: `pagerStress` under
/// the revoking `UPDATE`'s lookups). Only the pages a delivery touches are allocated,
/// one delivery writes at a time (the write turn), and larger deliveries still spill,
/// past 16 MiB. One statement more for such a delivery, whatever its size.
const LARGE_CACHE: &str = "PRAGMA cache_size = -16384";

/// Deliveries of more distinct hashes than this get [`LARGE_CACHE`]; smaller ones fit
/// the default cache (about 480 pages), and a 1-token delivery sends no statement more.
pub(super) const CACHE_RAISED_ABOVE: usize = 256;

/// Most hashes the revoking `UPDATE` binds one parameter each (the bundled SQLite allows
/// 32,766 parameters in a statement; the statement has four more); more go as one JSON
/// array.
const MOST_BOUND_HASHES: usize = 30_000;

/// The revoking `UPDATE`s of deliveries with at most this many distinct hashes stay
/// prepared on their connection (one statement each, of the cache's 100).
const PREPARED_UP_TO: usize = 16;

/// `?, ?, …`: `n` parameters, numbered in order.
fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        s.push_str(if i == 0 { "?" } else { ", ?" });
    }
    s
}

/// An item as `report_item_sets.items` stores it: [position, hash (hex), type, source,
/// url, outcome, found_in].
type ItemRow<'a> = (
    u32,
    String,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    Option<&'a str>,
);

/// Rows as the JSON array a statement reads with `json_each`.
fn to_json(rows: &impl serde::Serialize) -> String {
    serde_json::to_string(rows).expect("rows of plain values are JSON")
}
