//! Where the revoking statement's time goes, on PostgreSQL (issue 28).
//!
//! ```text
//! cargo bench --bench statement -- [--quick] [--tokens N] [--rounds R]
//! ```
//!
//! On a fresh database (`REVOKER_BENCH_POSTGRES_URL`, as `benches/receiver.rs`) holding N
//! stored tokens (default 1,000,000; `--quick` 100,000) and a history of 200 reports of
//! 1,000 items, the statement a delivery sends (`run_record_statement`: the production
//! SQL and parameters, once per body) runs on one connection:
//!
//! 1. **EXPLAIN (ANALYZE, BUFFERS, WAL)** at 100, 1,000 and 10,000 fresh tokens:
//!    planning and execution time, each CTE's time (a CTE's node, its own inputs
//!    included), each trigger's time and calls (the foreign-key checks are triggers),
//!    and the WAL the statement wrote (the insert position before and after), per
//!    revoked token. Committed: the tokens stay revoked.
//! 2. **What each index and foreign key costs**: the statement at 1,000 tokens with the
//!    schema as it is, and with each secondary index, unique constraint or foreign key
//!    of the tables it writes dropped (primary keys and the keys `ON CONFLICT` needs
//!    stay), and with all of them dropped, each inside a transaction that is rolled
//!    back (the same tokens serve every variant). Variants alternate within each of R
//!    rounds (default 5; `--quick` 3); the median per variant and its difference from
//!    the schema as it is are printed. Inside a transaction no commit is timed: the
//!    WAL figures of part 1 say what the flush takes.
//!
//! Timings are printed, never asserted.

mod common;

use std::time::Instant;

use chrono::Utc;
use sqlx::{Connection, Row};

use common::{ms, percentile, seed};
use revoker::domain::alert::{CandidateItem, NewReport};
use revoker::domain::token::Token;
use revoker::store::{run_record_statement, PoolSettings};

/// The tables a delivery's statement writes.
const TABLES: &str =
    "'tokens', 'reports', 'report_item_sets', 'notification_batches', 'delivered_bodies',
                      'stats_daily', 'stats_sources', 'stats_format_ages'";

struct Args {
    tokens: usize,
    rounds: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        tokens: 1_000_000,
        rounds: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => {
                args.tokens = 100_000;
                args.rounds = 3;
            }
            "--tokens" => args.tokens = it.next().and_then(|n| n.parse().ok()).expect("N"),
            "--rounds" => args.rounds = it.next().and_then(|n| n.parse().ok()).expect("R"),
            "--bench" => {}
            other => panic!("unknown argument {other:?}"),
        }
    }
    args
}

/// A delivery's report naming `tokens`, as the webhook makes it.
fn report(tokens: &[Token]) -> NewReport {
    NewReport {
        scanner: "github".into(),
        key_id: "bench-key".into(),
        received_at: Utc::now(),
        body_sha256: rand::random(),
        item_count: tokens.len() as u32,
        not_ours: 0,
        candidates: tokens
            .iter()
            .enumerate()
            .map(|(i, t)| CandidateItem {
                position: i as u32,
                hash: t.hash(),
                token_type: "cio_tp".into(),
                source: "content".into(),
                url: format!("https://github.com/example/repo/blob/main/file{i}.txt"),
                found_in: None,
            })
            .collect(),
    }
}

/// The WAL insert position, in bytes.
async fn wal_lsn(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::int8")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// Each CTE's node (`CTE name`: total time × loops), in plan order.
fn ctes(node: &serde_json::Value, out: &mut Vec<(String, f64)>) {
    if let Some(name) = node["Subplan Name"].as_str() {
        if let Some(cte) = name.strip_prefix("CTE ") {
            let time = node["Actual Total Time"].as_f64().unwrap_or(0.0)
                * node["Actual Loops"].as_f64().unwrap_or(1.0);
            out.push((cte.to_owned(), time));
        }
    }
    if let Some(children) = node["Plans"].as_array() {
        for c in children {
            ctes(c, out);
        }
    }
}

async fn explain(conn: &mut sqlx::PgConnection, tokens: &[Token]) {
    let before = wal_lsn(conn).await;
    let rows = run_record_statement(
        conn,
        &report(tokens),
        "EXPLAIN (ANALYZE, BUFFERS, WAL, FORMAT JSON) ",
    )
    .await
    .expect("EXPLAIN the statement");
    let wal = wal_lsn(conn).await - before;
    let plan: serde_json::Value = rows[0].get(0);
    let plan = &plan[0];
    println!(
        "\n{} tokens: planning {:.2} ms, execution {:.2} ms, WAL {} bytes ({:.0} per token)",
        tokens.len(),
        plan["Planning Time"].as_f64().unwrap_or(f64::NAN),
        plan["Execution Time"].as_f64().unwrap_or(f64::NAN),
        wal,
        wal as f64 / tokens.len() as f64
    );
    let mut times = Vec::new();
    ctes(&plan["Plan"], &mut times);
    for (name, t) in times {
        println!("  CTE {name:<12} {t:9.2} ms");
    }
    for t in plan["Triggers"].as_array().into_iter().flatten() {
        println!(
            "  trigger {:<40} on {:<14} {:9.2} ms  {:>6} calls",
            t["Trigger Name"].as_str().unwrap_or("?"),
            t["Relation"].as_str().unwrap_or("?"),
            t["Time"].as_f64().unwrap_or(0.0),
            t["Calls"].as_i64().unwrap_or(0)
        );
    }
}

/// `(name, DROP …)` for each secondary index, unique constraint and foreign key of the
/// tables the statement writes (not primary keys, which `ON CONFLICT` and lookups need).
async fn droppable(conn: &mut sqlx::PgConnection) -> Vec<(String, String)> {
    let sql = format!(
        "SELECT c.conname, format('ALTER TABLE %I DROP CONSTRAINT %I', t.relname, c.conname)
         FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
         WHERE c.contype IN ('f', 'u') AND t.relname IN ({TABLES})
         UNION ALL
         SELECT i.relname, format('DROP INDEX %I', i.relname)
         FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                         JOIN pg_class t ON t.oid = x.indrelid
         WHERE t.relname IN ({TABLES}) AND NOT x.indisprimary
           AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
         ORDER BY 1"
    );
    sqlx::query_as(&sql).fetch_all(conn).await.unwrap()
}

/// The statement on `sets` (one report each) inside a transaction where `drops` ran
/// first, rolled back: the median statement time.
async fn variant(conn: &mut sqlx::PgConnection, drops: &[String], sets: &[&[Token]]) -> f64 {
    let mut tx = conn.begin().await.unwrap();
    for d in drops {
        sqlx::query(d).execute(&mut *tx).await.unwrap();
    }
    let mut times = Vec::new();
    for set in sets {
        let r = report(set);
        let started = Instant::now();
        run_record_statement(&mut tx, &r, "").await.unwrap();
        times.push(ms(started.elapsed()));
    }
    tx.rollback().await.unwrap();
    times.sort_by(f64::total_cmp);
    percentile(&times, 0.5)
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let admin = common::postgres_admin_url();
    let name = format!("revoker_bench_statement_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("PostgreSQL reachable");
    common::recreate_database(&mut conn, &name).await;
    let url = common::postgres_url(&admin, &name);
    let store = revoker::store::connect(&url, &PoolSettings::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();

    let history = 200 * 1_000;
    let explained = 100 + 1_000 + 10_000;
    let per_variant = 3 * 1_000;
    let started = Instant::now();
    seed(
        &store,
        args.tokens
            .saturating_sub(history + explained + per_variant),
        false,
    )
    .await;
    let pool = seed(&store, history + explained + per_variant, true).await;
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    // The history: 200 deliveries of 1,000 (reports, items, outbox batches, rollups).
    for chunk in pool[..history].chunks(1_000) {
        run_record_statement(&mut db, &report(chunk), "")
            .await
            .unwrap();
    }
    sqlx::query("VACUUM ANALYZE")
        .execute(&mut db)
        .await
        .unwrap();
    println!(
        "seeded {} tokens and a history of {history} items in {:.1}s",
        args.tokens,
        started.elapsed().as_secs_f64()
    );

    // 1. EXPLAIN at three sizes.
    let mut rest = &pool[history..];
    for size in [100, 1_000, 10_000] {
        let (now, later) = rest.split_at(size);
        explain(&mut db, now).await;
        rest = later;
    }

    // 2. Each index and foreign key: the statement without it, alternating.
    let sets: Vec<&[Token]> = rest.chunks(1_000).collect();
    let drops = droppable(&mut db).await;
    let mut variants: Vec<(String, Vec<String>)> = vec![("(schema as it is)".into(), vec![])];
    variants.extend(
        drops
            .iter()
            .map(|(n, d)| (format!("without {n}"), vec![d.clone()])),
    );
    variants.push((
        "without all of them".into(),
        drops.iter().map(|(_, d)| d.clone()).collect(),
    ));
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..args.rounds {
        for (i, (_, ddl)) in variants.iter().enumerate() {
            times[i].push(variant(&mut db, ddl, &sets).await);
        }
        eprintln!("round {} of {} done", round + 1, args.rounds);
    }
    let median = |t: &mut Vec<f64>| {
        t.sort_by(f64::total_cmp);
        percentile(t, 0.5)
    };
    let base = median(&mut times[0]);
    println!(
        "\n1,000 tokens, inside a transaction (median of {} rounds):",
        args.rounds
    );
    for ((label, _), t) in variants.iter().zip(times.iter_mut()) {
        let m = median(t);
        println!(
            "  {label:<44} {m:8.2} ms  {:+7.2} ms ({:+5.1} %)",
            m - base,
            100.0 * (m - base) / base
        );
    }

    drop(db);
    drop(store);
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .unwrap();
}
