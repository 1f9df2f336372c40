//! End-to-end benchmark of the receiver.
//!
//! ```text
//! cargo bench --bench receiver -- [--backend sqlite|postgres] [--quick] [--tokens N] [--only batches|large-bodies|mass-revocation|pooler|introspection]
//! ```
//!
//! Starts the real server in-process on the chosen backend, seeds N stored tokens
//! (default 1,000,000; `--quick` 100,000), and drives it over loopback HTTP with
//! correctly signed deliveries. In the same process and on the same database it runs a
//! per-token baseline: what public receivers do today (look each token up, then update
//! it, one statement after another on one connection), and the *floor*: the bare
//! revoking statement alone (`UPDATE tokens SET revoked_at = now() WHERE hash = ANY($1)
//! AND revoked_at IS NULL`, the SQLite equivalent) on fresh tokens of the same batch
//! size, so "revoker / floor" says what the whole delivery costs above the one write it
//! cannot avoid; and the *floor with its record*: that UPDATE plus the report row and
//! one row per item with its outcome, atomically (one statement on PostgreSQL), so
//! "revoker / floor+record" says what revoker's features (the claim of the body, the
//! rollups, the notifications, the indexes) add beyond a durable record. Prints a table
//! and writes it as JSON to
//! `target/bench/receiver-<backend>.json`.
//!
//! SQLite: every batch measurement starts from an empty WAL (checkpointed whole,
//! untimed), so none copies another's pages into the database file, and the floors'
//! connections do not checkpoint in their commit (`wal_autocheckpoint = 0`): the floor is
//! the statement and its durable commit, as revoker's delivery is (its checkpoints run
//! after the answer, in a write turn of their own, `store/sqlite/mod.rs`), and so is the
//! per-token baseline's. They have the page cache revoker gives a delivery of more than
//! 256 distinct hashes (16 MiB; smaller ones, which keep SQLite's default, fit either).
//!
//! PostgreSQL: `REVOKER_BENCH_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); a fresh database is created and dropped.
//! With a `pgbouncer` binary (Debian's package), the PostgreSQL run adds the pooler
//! rounds: the 1-token load at c=32 on the direct server, on one with `--db-pooler
//! transaction` straight to PostgreSQL, and on one through a real PgBouncer in
//! transaction mode, in turn, three rounds each, with each mode's median over the direct
//! one's.
//!
//! Then 1-token deliveries at c=4, alone and while 8 workers send 8 MiB deliveries
//! without pause (what a large body's CPU work takes from small ones); and a mass
//! revocation event (100,000 leaked items, half stored tokens, as 100 deliveries of 1,000
//! at c=8; on PostgreSQL also through PgBouncer to 3 instances). `--only
//! large-bodies|mass-revocation|pooler|introspection` runs that row alone (after seeding;
//! `pooler`: the pooler rounds below); `--only batches` runs the batch rows alone (what
//! an A/B of the revoking statement compares).
//!
//! Then a server with `crates_io_api` enabled (no check digit: every `cio` + 32 is a
//! candidate) takes a flood of 100,000 junk ones in one delivery.
//!
//! Last, the holder endpoints' reads (`introspection`): a server on the same database
//! with one introspection client and no holder rate limit, and three modes at c=32 on
//! keep-alive connections, in alternating rounds (bare, introspection, validity, twice;
//! 2x5 s each, `--quick` 2x1 s, after a short unmeasured warm-up of each): `POST
//! /oauth/introspect` (Basic auth, form `token=`), `GET /v1/tokens/current` (Bearer), and
//! the bare lookup (`SELECT owner, created_at, expires_at, revoked_at FROM tokens WHERE
//! hash = $1`) through an sqlx pool of the server's size in this process. The tokens are
//! stored live ones of the pool (every one asked about is live: no revoked or unknown
//! ones), taken round-robin so the lookups hit different rows; every answer is checked
//! (200, `Cache-Control: no-store`, `active: true`, the owner; the bare row found and not
//! revoked). Prints each mode's req/s, p50 and p99, and introspection / bare and validity
//! / bare in req/s.
//!
//! Exits non-zero if the junk flood caused any database statement, the
//! `crates_io_api` flood more than a 1,000-candidate delivery, the mass revocation left a
//! real token unrevoked or any of its deliveries or the large-bodies row's failed, or any
//! answer of the introspection row was wrong (the CI smoke checks); timings are printed
//! and compared with the targets, never asserted.

mod common;
// The tests' PgBouncer harness (a real `pgbouncer` on a free loopback port).
#[allow(dead_code)]
#[path = "../tests/common/pgbouncer.rs"]
mod pgbouncer;

use common::{ms, percentile, seed, seed_pool, Backend, Pool};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use p256::ecdsa::SigningKey;
use p256::pkcs8::{EncodePublicKey, LineEnding};
use sqlx::Connection;

use revoker::config::Settings;
use revoker::domain::token::{Token, TokenHash};
use revoker::domain::{alert, redact};
use revoker::signature;
use revoker::signature::ScannerSpec;
use revoker::startup::Application;
use revoker::store::{RecordOptions, RevocationStore};

struct Args {
    backend: Backend,
    quick: bool,
    tokens: usize,
    /// `--only batches|large-bodies|mass-revocation|pooler|introspection`: seed, then only
    /// that row (`batches`: the batch rows).
    only: Option<Only>,
}

/// A row `--only` runs alone.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Only {
    /// Only the batch rows (section 1): for A/B runs of the revoking statement.
    Batches,
    LargeBodies,
    MassRevocation,
    Pooler,
    Introspection,
}

fn parse_args() -> Args {
    let mut args = Args {
        backend: Backend::Sqlite,
        quick: false,
        tokens: 0,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--backend" => {
                args.backend = Backend::parse(it.next().as_deref());
            }
            "--quick" => args.quick = true,
            "--tokens" => args.tokens = it.next().and_then(|n| n.parse().ok()).expect("--tokens N"),
            "--only" => {
                args.only = Some(match it.next().as_deref() {
                    Some("batches") => Only::Batches,
                    Some("large-bodies") => Only::LargeBodies,
                    Some("mass-revocation") => Only::MassRevocation,
                    Some("pooler") => Only::Pooler,
                    Some("introspection") => Only::Introspection,
                    other => panic!(
                        "--only batches|large-bodies|mass-revocation|pooler|introspection, not {other:?}"
                    ),
                });
            }
            "--bench" => {} // added by `cargo bench`
            other => panic!("unknown argument {other:?}"),
        }
    }
    if args.tokens == 0 {
        args.tokens = if args.quick { 100_000 } else { 1_000_000 };
    }
    args
}

/// Peak and current resident memory of this process, in MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(0.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// 1,000 hostile connections held open, as in `tests/hostile.rs`: 250 silent, 250 slow
/// heads, 250 slow bodies under the public key id with a junk signature, 150 bodies at
/// `max_body` with the last byte withheld, 100 junk signatures on kept-alive
/// connections. Each is a task that keeps its connection until aborted.
async fn hostile_connections(base: &str, max_body: usize) -> Vec<tokio::task::JoinHandle<()>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://").to_owned();
    let junk = revoker::replay::sign_body(&SigningKey::random(&mut rand::rngs::OsRng), b"x");
    let head = |len: usize| {
        format!(
            "POST /secret-scanning/github HTTP/1.1\r\nHost: {addr}\r\n\
             Github-Public-Key-Identifier: bench-key\r\nGithub-Public-Key-Signature: {junk}\r\n\
             Content-Length: {len}\r\n\r\n"
        )
    };
    let chunk: Arc<Vec<u8>> = Arc::new(vec![b' '; 1 << 20]);
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (slow_body, limit_body, junk_body) = (head(100_000), head(max_body), head(2));
        let chunk = Arc::clone(&chunk);
        tasks.push(tokio::spawn(async move {
            match i % 20 {
                // 250 silent
                0..=4 => {}
                // 250 slow heads
                5..=9 => {
                    let _ = s
                        .write_all(b"POST /secret-scanning/github HTTP/1.1\r\n")
                        .await;
                    while s.write_all(b"X").await.is_ok() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                // 250 slow bodies
                10..=14 => {
                    let _ = s.write_all(slow_body.as_bytes()).await;
                    while s.write_all(b" ").await.is_ok() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                // 150 bodies at the limit, last byte withheld
                15..=17 => {
                    let _ = s.write_all(limit_body.as_bytes()).await;
                    let mut left = max_body - 1;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if s.write_all(&chunk[..n]).await.is_err() {
                            break;
                        }
                        left -= n;
                    }
                }
                // 100 junk signatures, answered 401, connection kept
                _ => {
                    let _ = s.write_all(format!("{junk_body}[]").as_bytes()).await;
                    let mut buf = [0u8; 512];
                    let _ = s.read(&mut buf).await;
                }
            }
            std::future::pending::<()>().await;
            drop(s);
        }));
    }
    tasks
}

/// Genuine deliveries to the server at `base` from `concurrency` workers until
/// `deadline`, the pre-signed bodies taken in turn (past the end of `signed` they come
/// round again: repeats, answered from their first report): the sorted latencies in ms,
/// the answers other than 200, and the seconds it ran.
async fn genuine_load(
    bench: &Arc<Bench>,
    base: &str,
    signed: &Arc<Vec<(Vec<u8>, String)>>,
    next_signed: &Arc<AtomicUsize>,
    concurrency: usize,
    deadline: Instant,
) -> (Vec<f64>, usize, f64) {
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (bench, errors) = (Arc::clone(bench), Arc::clone(&errors));
            let (signed, next_signed) = (Arc::clone(signed), Arc::clone(next_signed));
            let base = base.to_owned();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let idx = next_signed.fetch_add(1, Ordering::Relaxed);
                    let (body, sig) = &signed[idx % signed.len()];
                    let (status, took) =
                        bench.deliver_signed(&base, body.clone(), sig.clone()).await;
                    if status != 200 {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    lat.push(ms(took));
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    (lat, errors.load(Ordering::Relaxed), elapsed)
}

struct Bench {
    backend: Backend,
    base: String,
    client: reqwest::Client,
    key: SigningKey,
    db_url: String,
    /// Fresh, stored, unrevoked tokens, handed out once each.
    pool: Pool,
    next: AtomicUsize,
}

/// The raw strings of `tokens`.
fn secrets(tokens: &[Token]) -> Vec<&str> {
    tokens.iter().map(Token::expose_secret).collect()
}

impl Bench {
    /// The next `n` tokens of the pool.
    fn take(&self, n: usize) -> Vec<Token> {
        let start = self.next.fetch_add(n, Ordering::Relaxed);
        assert!(start + n <= self.pool.len, "token pool exhausted");
        (start..start + n).map(|i| self.pool.token(i)).collect()
    }

    /// The next `n` tokens of the pool, each in a signed one-token delivery.
    fn take_signed(&self, n: usize) -> Vec<(Vec<u8>, String)> {
        self.take(n)
            .iter()
            .map(|t| {
                let body = Bench::body(&[t.expose_secret()]);
                let sig = self.sign(&body);
                (body, sig)
            })
            .collect()
    }

    /// A GitHub-shaped body, serialised straight from borrowed fields (no `Value`
    /// maps: the benchmark's own allocations count in the process's peak RSS).
    fn body(tokens: &[&str]) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Item<'a> {
            token: &'a str,
            #[serde(rename = "type")]
            token_type: &'static str,
            url: String,
            source: &'static str,
        }
        let mut out = Vec::with_capacity(tokens.len() * 110 + 2);
        out.push(b'[');
        for (i, t) in tokens.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let item = Item {
                token: t,
                token_type: "cio_tp",
                url: format!("https://github.com/bench/repo/blob/main/f{i}.txt"),
                source: "content",
            };
            serde_json::to_writer(&mut out, &item).unwrap();
        }
        out.push(b']');
        out
    }

    fn sign(&self, body: &[u8]) -> String {
        revoker::replay::sign_body(&self.key, body)
    }

    /// Signs and POSTs a delivery; returns (status, latency). Signing is not timed.
    async fn deliver(&self, body: Vec<u8>) -> (u16, Duration) {
        let sig = self.sign(&body);
        self.deliver_signed(&self.base, body, sig).await
    }

    /// POSTs an already signed delivery; returns (status, latency).
    /// A signed delivery to the server at `base`.
    async fn deliver_signed(&self, base: &str, body: Vec<u8>, sig: String) -> (u16, Duration) {
        let started = Instant::now();
        let resp = self
            .client
            .post(format!("{base}/secret-scanning/github"))
            .header("Github-Public-Key-Identifier", "bench-key")
            .header("Github-Public-Key-Signature", sig)
            .body(body)
            .send()
            .await;
        match resp {
            Ok(r) => {
                let status = r.status().as_u16();
                let _ = r.bytes().await;
                (status, started.elapsed())
            }
            Err(_) => (0, started.elapsed()),
        }
    }

    /// The per-token approach: SELECT, then UPDATE, per token, one connection,
    /// autocommit (as public receivers do today). Returns the batch's wall time.
    async fn baseline(&self, tokens: &[Token]) -> Duration {
        match self.backend {
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.db_url).await.unwrap();
                let started = Instant::now();
                for t in tokens {
                    let hash = t.hash();
                    let row: Option<(Option<chrono::DateTime<Utc>>,)> =
                        sqlx::query_as("SELECT revoked_at FROM tokens WHERE hash = $1")
                            .bind(hash.as_bytes().as_slice())
                            .fetch_optional(&mut conn)
                            .await
                            .unwrap();
                    if let Some((None,)) = row {
                        sqlx::query("UPDATE tokens SET revoked_at = $2 WHERE hash = $1")
                            .bind(hash.as_bytes().as_slice())
                            .bind(Utc::now())
                            .execute(&mut conn)
                            .await
                            .unwrap();
                    }
                }
                started.elapsed()
            }
            Backend::Sqlite => {
                let mut conn = self.floor_connection().await;
                let started = Instant::now();
                for t in tokens {
                    let hash = t.hash();
                    let row: Option<(Option<i64>,)> =
                        sqlx::query_as("SELECT revoked_at FROM tokens WHERE hash = ?1")
                            .bind(hash.as_bytes().as_slice())
                            .fetch_optional(&mut conn)
                            .await
                            .unwrap();
                    if let Some((None,)) = row {
                        sqlx::query("UPDATE tokens SET revoked_at = ?2 WHERE hash = ?1")
                            .bind(hash.as_bytes().as_slice())
                            .bind(Utc::now().timestamp_millis())
                            .execute(&mut conn)
                            .await
                            .unwrap();
                    }
                }
                started.elapsed()
            }
        }
    }
}

impl Bench {
    /// How many of `tokens` are revoked in the database.
    async fn revoked_among(&self, tokens: &[Token]) -> usize {
        let hashes: Vec<Vec<u8>> = tokens
            .iter()
            .map(|t| t.hash().as_bytes().to_vec())
            .collect();
        match self.backend {
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.db_url).await.unwrap();
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM tokens WHERE hash = ANY($1) AND revoked_at IS NOT NULL",
                )
                .bind(&hashes)
                .fetch_one(&mut conn)
                .await
                .unwrap();
                n as usize
            }
            Backend::Sqlite => {
                let mut conn = self.sqlite_connection().await;
                let list =
                    serde_json::to_string(&hashes.iter().map(hex::encode).collect::<Vec<_>>())
                        .unwrap();
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM tokens WHERE revoked_at IS NOT NULL
                       AND hash IN (SELECT unhex(value) FROM json_each(?1))",
                )
                .bind(list)
                .fetch_one(&mut conn)
                .await
                .unwrap();
                n as usize
            }
        }
    }

    /// A connection of its own to the SQLite file, committing like revoker's
    /// (`synchronous=FULL`).
    async fn sqlite_connection(&self) -> sqlx::SqliteConnection {
        let mut conn = sqlx::SqliteConnection::connect(&self.db_url).await.unwrap();
        sqlx::query("PRAGMA synchronous = FULL")
            .execute(&mut conn)
            .await
            .unwrap();
        conn
    }

    /// A connection for the floors and the per-token baseline on SQLite: the statements
    /// and their commits (the WAL written and synced), without the checkpoint SQLite's
    /// default would run in a commit that takes the WAL past 1,000 pages (revoker runs it
    /// after the answer, in a write turn of its own, `store/sqlite/mod.rs`). Each
    /// measurement starts from an empty WAL ([`Bench::settle`]), so none pays for
    /// another's pages. Its page cache is a large delivery's (16 MiB, not SQLite's
    /// default 2,000 KiB, which revoker keeps for 256 distinct hashes or fewer: they fit
    /// either), so the floor's `UPDATE` does not spill dirty pages either.
    async fn floor_connection(&self) -> sqlx::SqliteConnection {
        let mut conn = self.sqlite_connection().await;
        sqlx::query("PRAGMA wal_autocheckpoint = 0")
            .execute(&mut conn)
            .await
            .unwrap();
        // The page cache revoker gives a large delivery (store/sqlite/record.rs).
        sqlx::query("PRAGMA cache_size = -16384")
            .execute(&mut conn)
            .await
            .unwrap();
        conn
    }

    /// SQLite: before a measurement, the WAL checkpointed whole and emptied
    /// (`TRUNCATE`, waiting for a checkpoint under way), untimed, so what the previous
    /// measurement wrote is not copied during this one. Nothing on PostgreSQL.
    async fn settle(&self) {
        if self.backend != Backend::Sqlite {
            return;
        }
        let mut conn = self.sqlite_connection().await;
        sqlx::query("PRAGMA busy_timeout = 10000")
            .execute(&mut conn)
            .await
            .unwrap();
        // `busy`: another checkpoint (the server's) held the checkpoint lock; again.
        let started = Instant::now();
        loop {
            let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            if busy == 0 {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the WAL was not checkpointed whole within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The floor: the bare revoking statement alone on these tokens, one statement on
    /// one connection, autocommit (no report, items, outbox or HTTP). Nothing revoker
    /// does per delivery can be cheaper than this. Returns the statement's wall time.
    async fn floor(&self, tokens: &[Token]) -> Duration {
        let hashes: Vec<TokenHash> = tokens.iter().map(Token::hash).collect();
        let (took, revoked) = match self.backend {
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.db_url).await.unwrap();
                let started = Instant::now();
                let bytes: Vec<&[u8]> = hashes.iter().map(|h| h.as_bytes().as_slice()).collect();
                let done = sqlx::query(
                    "UPDATE tokens SET revoked_at = now() WHERE hash = ANY($1) AND revoked_at IS NULL",
                )
                .bind(&bytes)
                .execute(&mut conn)
                .await
                .unwrap();
                (started.elapsed(), done.rows_affected())
            }
            Backend::Sqlite => {
                let mut conn = self.floor_connection().await;
                let started = Instant::now();
                let list = serde_json::to_string(
                    &hashes.iter().map(TokenHash::to_hex).collect::<Vec<_>>(),
                )
                .unwrap();
                let done = sqlx::query(
                    "UPDATE tokens SET revoked_at = ?1
                     WHERE revoked_at IS NULL AND hash IN (SELECT unhex(value) FROM json_each(?2))",
                )
                .bind(Utc::now().timestamp_millis())
                .bind(list)
                .execute(&mut conn)
                .await
                .unwrap();
                (started.elapsed(), done.rows_affected())
            }
        };
        assert_eq!(revoked as usize, tokens.len(), "floor tokens are fresh");
        took
    }

    /// The floor with its record: the bare revoking `UPDATE` plus the least a durable
    /// record of the delivery is (the report row and one row per item, each with its
    /// outcome), atomically: one statement on PostgreSQL, one transaction of three on
    /// SQLite. No claim of the body, rollups or notifications. What revoker adds beyond
    /// it is its features' cost. The item rows go to a table of the benchmark's own,
    /// [`FLOOR_ITEMS`], shaped as `report_items` was before revoker kept a report's items
    /// in one row (migration 0014): the reference stays what the issue defined.
    async fn floor_with_record(&self, tokens: &[Token]) -> Duration {
        self.create_floor_items().await;
        let hashes: Vec<TokenHash> = tokens.iter().map(Token::hash).collect();
        let urls: Vec<String> = (0..tokens.len())
            .map(|i| format!("https://github.com/example/repo/blob/main/file{i}.txt"))
            .collect();
        let body: [u8; 32] = rand::random();
        let (took, revoked) = match self.backend {
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.db_url).await.unwrap();
                let started = Instant::now();
                let bytes: Vec<&[u8]> = hashes.iter().map(|h| h.as_bytes().as_slice()).collect();
                let outcomes: Vec<String> = sqlx::query_scalar(
                    "WITH r AS (
                        INSERT INTO reports (scanner, key_id, received_at, body_sha256, item_count, not_ours)
                        VALUES ('floor', 'floor', now(), $2, $3, 0) RETURNING id
                    ), u AS (
                        UPDATE tokens SET revoked_at = now(), revoked_by = (SELECT id FROM r)
                        WHERE hash = ANY($1) AND revoked_at IS NULL RETURNING hash
                    )
                    INSERT INTO bench_floor_items (report_id, position, token_hash, token_type, source, url, outcome)
                    SELECT (SELECT id FROM r), i.n::int4 - 1, i.hash, 'cio_tp', 'content', i.url,
                           CASE WHEN u.hash IS NULL THEN 'unknown' ELSE 'revoked' END
                    FROM unnest($1::bytea[], $4::text[]) WITH ORDINALITY AS i(hash, url, n)
                    LEFT JOIN u USING (hash)
                    RETURNING outcome",
                )
                .bind(&bytes)
                .bind(body.as_slice())
                .bind(tokens.len() as i32)
                .bind(&urls)
                .fetch_all(&mut conn)
                .await
                .unwrap();
                let took = started.elapsed();
                (took, outcomes.iter().filter(|o| *o == "revoked").count())
            }
            Backend::Sqlite => {
                let mut conn = self.floor_connection().await;
                let started = Instant::now();
                let items = serde_json::to_string(
                    &hashes
                        .iter()
                        .zip(&urls)
                        .map(|(h, u)| (h.to_hex(), u))
                        .collect::<Vec<_>>(),
                )
                .unwrap();
                let mut tx = conn.begin().await.unwrap();
                let report_id: i64 = sqlx::query_scalar(
                    "INSERT INTO reports (scanner, key_id, received_at, body_sha256, item_count, not_ours)
                     VALUES ('floor', 'floor', ?1, ?2, ?3, 0) RETURNING id",
                )
                .bind(Utc::now().timestamp_millis())
                .bind(body.as_slice())
                .bind(tokens.len() as i64)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
                // The hashes bound one parameter each, as revoker binds them: an
                // `unhex` here would make SQLite keep a statement journal of every page
                // the UPDATE changes (`store/sqlite/record.rs`).
                let sql = format!(
                    "UPDATE tokens SET revoked_at = ?, revoked_by = ?
                     WHERE revoked_at IS NULL AND hash IN ({}) RETURNING hash",
                    vec!["?"; hashes.len()].join(", ")
                );
                let mut update = sqlx::query_scalar(&sql)
                    .persistent(false)
                    .bind(Utc::now().timestamp_millis())
                    .bind(report_id);
                for h in &hashes {
                    update = update.bind(h.as_bytes().as_slice());
                }
                let flipped: Vec<Vec<u8>> = update.fetch_all(&mut *tx).await.unwrap();
                let revoked: Vec<String> = flipped.iter().map(hex::encode).collect();
                sqlx::query(
                    "INSERT INTO bench_floor_items (report_id, position, token_hash, token_type, source, url, outcome)
                     SELECT ?1, key, unhex(value ->> 0), 'cio_tp', 'content', value ->> 1,
                            CASE WHEN lower(value ->> 0) IN (SELECT value FROM json_each(?3))
                                 THEN 'revoked' ELSE 'unknown' END
                     FROM json_each(?2)",
                )
                .bind(report_id)
                .bind(&items)
                .bind(serde_json::to_string(&revoked).unwrap())
                .execute(&mut *tx)
                .await
                .unwrap();
                tx.commit().await.unwrap();
                (started.elapsed(), flipped.len())
            }
        };
        assert_eq!(revoked, tokens.len(), "floor tokens are fresh");
        took
    }

    /// [`FLOOR_ITEMS`], once (untimed).
    async fn create_floor_items(&self) {
        match self.backend {
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.db_url).await.unwrap();
                sqlx::query(
                    &FLOOR_ITEMS
                        .replace("{blob}", "BYTEA")
                        .replace("{rowid}", ""),
                )
                .execute(&mut conn)
                .await
                .unwrap();
            }
            Backend::Sqlite => {
                let mut conn = self.floor_connection().await;
                sqlx::query(
                    &FLOOR_ITEMS
                        .replace("{blob}", "BLOB")
                        .replace("{rowid}", "WITHOUT ROWID"),
                )
                .execute(&mut conn)
                .await
                .unwrap();
            }
        }
    }
}

/// The floor+record's item rows: `report_items` as migrations 0011 (PostgreSQL) and 0013
/// (SQLite) left it, one row per item keyed by report and position, no foreign key.
const FLOOR_ITEMS: &str = "CREATE TABLE IF NOT EXISTS bench_floor_items (
    report_id   BIGINT  NOT NULL,
    position    INTEGER NOT NULL,
    token_hash  {blob}  NOT NULL CHECK (length(token_hash) = 32),
    token_type  TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    url         TEXT    NOT NULL,
    outcome     TEXT    NOT NULL CHECK (outcome IN ('revoked', 'already_revoked', 'expired', 'unknown')),
    found_in    TEXT,
    PRIMARY KEY (report_id, position)
) {rowid}";

/// Items of the mass revocation: half stored tokens, half unknown ones with valid check
/// digits (`--quick`: a fifth).
const MASS_ITEMS: usize = 100_000;

/// Items in one delivery of the mass revocation.
const MASS_DELIVERY: usize = 1_000;

/// Deliveries in flight at once in the mass revocation.
const MASS_CONCURRENCY: usize = 8;

/// Items of the per-token peer's sample (half stored), scaled to the event's.
const MASS_SAMPLE: usize = 2_000;

/// What one run of the mass revocation did.
struct MassRun {
    seconds: f64,
    /// Sorted latencies of the deliveries, ms.
    lat: Vec<f64>,
    errors: usize,
    /// Real tokens revoked afterwards, of `items / 2`.
    revoked: usize,
}

/// `items / 2` fresh stored tokens and as many unknown ones with valid check digits,
/// shuffled, in signed deliveries of `MASS_DELIVERY`, sent at `MASS_CONCURRENCY` to
/// `bases` in turn; then how many of the stored ones are revoked.
async fn mass_run(bench: &Arc<Bench>, bases: &[String], items: usize) -> MassRun {
    use rand::seq::SliceRandom;
    let real = bench.take(items / 2);
    let junk: Vec<Token> = (0..items / 2).map(|_| Token::generate()).collect();
    let mut all: Vec<&str> = real.iter().chain(&junk).map(Token::expose_secret).collect();
    all.shuffle(&mut rand::thread_rng());
    let signed: Arc<Vec<(Vec<u8>, String)>> = Arc::new(
        all.chunks(MASS_DELIVERY)
            .map(|chunk| {
                let body = Bench::body(chunk);
                let sig = bench.sign(&body);
                (body, sig)
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..MASS_CONCURRENCY)
        .map(|_| {
            let (bench, signed, next, errors) = (
                Arc::clone(bench),
                Arc::clone(&signed),
                Arc::clone(&next),
                Arc::clone(&errors),
            );
            let bases = bases.to_vec();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((body, sig)) = signed.get(i) else {
                        return lat;
                    };
                    let base = &bases[i % bases.len()];
                    let (status, took) =
                        bench.deliver_signed(base, body.clone(), sig.clone()).await;
                    errors.fetch_add(usize::from(status != 200), Ordering::Relaxed);
                    lat.push(ms(took));
                }
            })
        })
        .collect();
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.await.unwrap());
    }
    let seconds = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let revoked = bench.revoked_among(&real).await;
    MassRun {
        seconds,
        lat,
        errors: errors.load(Ordering::Relaxed),
        revoked,
    }
}

/// A mass revocation event: `items` leaked items (half stored tokens, half unknown
/// ones with valid check digits, shuffled) arriving as deliveries of `MASS_DELIVERY` at
/// `MASS_CONCURRENCY`, on the direct server and (PostgreSQL, with a `pgbouncer` binary)
/// on 3 instances with `--db-pooler transaction` behind one PgBouncer: the time until
/// every real token is revoked, the deliveries' p99, the errors, and the per-token
/// peer's projected time (its SELECT, and UPDATE where stored, per item, measured on
/// `MASS_SAMPLE` items of the same mix and scaled).
async fn mass_revocation(
    bench: &Arc<Bench>,
    settings: &Settings,
    db_url: &str,
    items: usize,
) -> (Row, serde_json::Value, bool) {
    let sample: Vec<Token> = bench
        .take(MASS_SAMPLE / 2)
        .into_iter()
        .chain((0..MASS_SAMPLE / 2).map(|_| Token::generate()))
        .collect();
    let peer = bench.baseline(&sample).await.as_secs_f64() * items as f64 / MASS_SAMPLE as f64;
    let direct = mass_run(bench, std::slice::from_ref(&bench.base), items).await;
    let mut runs = vec![("direct", direct)];
    if bench.backend == Backend::Postgres {
        if let Some(bouncer) = pgbouncer::PgBouncer::start(db_url, settings.pool.max_connections) {
            let mut pooled = settings.clone();
            pooled.pool.pooler = revoker::store::Pooler::Transaction;
            pooled.database_url = bouncer.url(db_url).into();
            let mut servers = Vec::new();
            for _ in 0..3 {
                servers.push(start_server(pooled.clone()).await);
            }
            let bases: Vec<String> = servers.iter().map(|(base, _, _)| base.clone()).collect();
            runs.push((
                "PgBouncer, 3 instances",
                mass_run(bench, &bases, items).await,
            ));
            for (_, _, stop) in servers {
                let _ = stop.send(());
            }
            drop(bouncer);
        }
    }
    let mut parts = Vec::new();
    let mut value = serde_json::json!({
        "items": items, "real": items / 2, "per_delivery": MASS_DELIVERY,
        "concurrency": MASS_CONCURRENCY, "per_token_peer_projected_s": peer,
    });
    for (name, run) in &runs {
        let (p50, p99) = (percentile(&run.lat, 0.5), percentile(&run.lat, 0.99));
        parts.push(format!(
            "{name}: all revoked in {:.1} s ({}/{}), p50 {p50:.0} ms p99 {p99:.0} ms, errors {}",
            run.seconds,
            run.revoked,
            items / 2,
            run.errors
        ));
        value[name.split(',').next().unwrap().to_lowercase()] = serde_json::json!({
            "seconds": run.seconds, "revoked": run.revoked, "p50_ms": p50, "p99_ms": p99,
            "errors": run.errors, "instances": if *name == "direct" { 1 } else { 3 },
        });
    }
    let row = Row {
        name: format!(
            "mass revocation {}x{MASS_DELIVERY}, c={MASS_CONCURRENCY}",
            items / MASS_DELIVERY
        ),
        value: format!(
            "{} | per-token peer: {peer:.0} s (projected)",
            parts.join(" | ")
        ),
        target: "every real token revoked, 0 errors".into(),
    };
    let ok = runs
        .iter()
        .all(|(_, run)| run.errors == 0 && run.revoked == items / 2);
    (row, value, ok)
}

/// Bytes of each large delivery of [`small_beside_large`].
const LARGE_BODY: usize = 8 << 20;

/// Workers sending large deliveries without pause in [`small_beside_large`].
const LARGE_CONCURRENCY: usize = 8;

/// A delivery of `LARGE_BODY` bytes whose every item is a `cio_tp_` string with wrong
/// check digits: all CPU (the signature over 8 MiB, both JSON passes, a SHA-256 per
/// item for the answer, the answer itself), no statement.
fn large_junk_body() -> Vec<u8> {
    let mut tokens = Vec::new();
    let mut len = 2;
    while len < LARGE_BODY - 256 {
        let mut s = Token::generate().expose_secret().to_owned();
        let last = s.pop().unwrap();
        s.push(if last == '0' { '1' } else { '0' });
        // As `Bench::body` writes it: the token, the type, a URL, the source.
        len += s.len() + 104;
        tokens.push(s);
    }
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let mut body = Bench::body(&refs);
    body.truncate(LARGE_BODY.min(body.len()));
    while body.last() != Some(&b'}') {
        body.pop();
    }
    body.push(b']');
    body
}

/// 1-token deliveries at c=4, `secs` per round, alternately alone and while
/// [`LARGE_CONCURRENCY`] workers send 8 MiB deliveries without pause (two rounds of
/// each): the small ones' latencies in each mode, and how the large ones fared.
async fn small_beside_large(
    bench: &Arc<Bench>,
    secs: u64,
    per_round: usize,
) -> (Row, serde_json::Value, bool) {
    let large = large_junk_body();
    let large_sig = bench.sign(&large);
    let large = Arc::new((large, large_sig));
    let (mut alone, mut beside) = (Vec::new(), Vec::new());
    let (mut small_errors, mut large_lat, mut large_errors) = (0, Vec::new(), 0);
    // Deliveries past a round's own fresh bodies (repeats, answered from their first
    // report): reported, since they take another path.
    let mut repeats = 0;
    // Each round on fresh bodies of its own, all signed before the first clock starts
    // (signing meanwhile would take the rounds' CPU).
    let mut rounds = (0..4)
        .map(|_| Arc::new(bench.take_signed(per_round)))
        .collect::<Vec<_>>()
        .into_iter();
    let mut small_round = move || {
        let small = rounds.next().expect("four rounds");
        let next = Arc::new(AtomicUsize::new(0));
        async move {
            let deadline = Instant::now() + Duration::from_secs(secs);
            let (lat, errors, _) =
                genuine_load(bench, &bench.base, &small, &next, 4, deadline).await;
            let repeated = next.load(Ordering::Relaxed).saturating_sub(small.len());
            (lat, errors, repeated)
        }
    };
    for _round in 0..2 {
        let (lat, errors, repeated) = small_round().await;
        alone.extend(lat);
        small_errors += errors;
        repeats += repeated;

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let senders: Vec<_> = (0..LARGE_CONCURRENCY)
            .map(|_| {
                let (bench, large, stop) =
                    (Arc::clone(bench), Arc::clone(&large), Arc::clone(&stop));
                tokio::spawn(async move {
                    let mut answered = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let (status, took) = bench
                            .deliver_signed(&bench.base, large.0.clone(), large.1.clone())
                            .await;
                        answered.push((status, ms(took)));
                    }
                    answered
                })
            })
            .collect();
        // Let every large delivery get going before the small ones are timed.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (lat, errors, repeated) = small_round().await;
        beside.extend(lat);
        small_errors += errors;
        repeats += repeated;
        stop.store(true, Ordering::Relaxed);
        for s in senders {
            for (status, took) in s.await.unwrap() {
                large_lat.push(took);
                large_errors += usize::from(status != 200);
            }
        }
    }
    for v in [&mut alone, &mut beside, &mut large_lat] {
        v.sort_by(f64::total_cmp);
    }
    let (a50, a99) = (percentile(&alone, 0.5), percentile(&alone, 0.99));
    let (b50, b99) = (percentile(&beside, 0.5), percentile(&beside, 0.99));
    let l50 = percentile(&large_lat, 0.5);
    let mib = large.0.len() as f64 / f64::from(1 << 20);
    let row = Row {
        name: format!("1-token c=4 beside {LARGE_CONCURRENCY}x{mib:.0} MiB"),
        value: format!(
            "alone p50 {a50:6.2} ms p99 {a99:6.2} ms | beside p50 {b50:6.2} ms p99 {b99:6.2} ms ({:.1}x) | errors {small_errors}, repeats {repeats} | {} large answered, p50 {l50:7.1} ms, errors {large_errors}",
            b99 / a99,
            large_lat.len()
        ),
        target: "(report) small p99 beside large vs alone".into(),
    };
    let json = serde_json::json!({
        "large_bytes": large.0.len(), "large_concurrency": LARGE_CONCURRENCY, "seconds_per_round": secs,
        "alone_p50_ms": a50, "alone_p99_ms": a99, "beside_p50_ms": b50, "beside_p99_ms": b99,
        "ratio_p99_beside_over_alone": b99 / a99, "small_errors": small_errors, "repeats": repeats,
        "large_answered": large_lat.len(), "large_p50_ms": l50, "large_errors": large_errors,
    });
    // The CI smoke's debug build takes seconds per 8 MiB body: a large one may meet
    // its deadline there, and only the small ones' answers are checked.
    (
        row,
        json,
        small_errors == 0 && (large_errors == 0 || cfg!(debug_assertions)),
    )
}

/// What the flood of check-digit-less candidates cost.
struct ApiFlood {
    status: u16,
    took: Duration,
    flood_statements: u64,
    /// Of a delivery of 1,000 of them (on SQLite one statement more than a 1-token
    /// delivery's: a large delivery's page cache).
    thousand_statements: u64,
}

/// A server with `crates_io_api` enabled on `settings`' database: the statements of a
/// delivery of 1,000 junk `cio` + 32, then of 100,000 of them in one delivery.
async fn api_flood(bench: &Bench, mut settings: Settings) -> ApiFlood {
    use rand::distributions::{Alphanumeric, DistString};
    settings.formats = "cio_tp,crates_io_api".parse().unwrap();
    let (base, store, stop_tx) = start_server(settings).await;
    let junk = || {
        format!(
            "cio{}",
            Alphanumeric.sample_string(&mut rand::thread_rng(), 32)
        )
    };
    let (base, store) = (&base, &store);
    let deliver = |tokens: Vec<String>| async move {
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let body = Bench::body(&refs);
        let sig = bench.sign(&body);
        let before = store.statements();
        let (status, took) = bench.deliver_signed(base, body, sig).await;
        (status, took, store.statements() - before)
    };
    let (status, _, thousand_statements) = deliver((0..1_000).map(|_| junk()).collect()).await;
    assert_eq!(status, 200, "1,000-candidate crates_io_api delivery failed");
    let (status, took, flood_statements) = deliver((0..100_000).map(|_| junk()).collect()).await;
    assert_eq!(status, 200, "crates_io_api flood failed");
    let _ = stop_tx.send(());
    ApiFlood {
        status,
        took,
        flood_statements,
        thousand_statements,
    }
}

/// Concurrency of each mode of the introspection row.
const PROBE_CONCURRENCY: usize = 32;

/// Rounds of each mode of the introspection row, alternating.
const PROBE_ROUNDS: usize = 2;

/// The introspection client the row's server knows: its id and secret.
const PROBE_CLIENT: (&str, &str) = ("bench", "bench-introspection-secret");

/// The owner of every seeded token (`common::seed_pool`).
const BENCH_OWNER: &str = "bench/owner";

/// The bare lookup of the introspection row, as the holder endpoints need a token's row.
const LOOKUP_SQL: &str =
    "SELECT owner, created_at, expires_at, revoked_at FROM tokens WHERE hash = $1";

/// One of the three ways the introspection row asks about a token.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ProbeMode {
    /// The bare lookup through an sqlx pool of its own.
    Bare,
    /// `POST /oauth/introspect`.
    Introspect,
    /// `GET /v1/tokens/current`.
    Validity,
}

impl ProbeMode {
    const ALL: [ProbeMode; 3] = [ProbeMode::Bare, ProbeMode::Introspect, ProbeMode::Validity];

    fn name(self) -> &'static str {
        match self {
            ProbeMode::Bare => "bare",
            ProbeMode::Introspect => "introspect",
            ProbeMode::Validity => "validity",
        }
    }
}

/// A stored live token, as each mode sends it.
struct Probe {
    /// `token=...`, the introspection form.
    form: String,
    /// `Bearer ...`.
    bearer: String,
    hash: [u8; 32],
}

/// The bare lookup's own pool.
enum BarePool {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

/// What the three modes share: the server, the tokens asked about (round-robin), the
/// bare pool.
struct Probes {
    client: reqwest::Client,
    introspect_url: String,
    validity_url: String,
    /// `Basic base64(id:secret)`.
    basic: String,
    probes: Vec<Probe>,
    next: AtomicUsize,
    bare: BarePool,
}

/// What was wrong with an answer about a live token, if anything: a 200 with
/// `Cache-Control: no-store`, a JSON body saying `active: true`, type `cio_tp`, the seeded
/// owner (`sub` from introspection, `owner` from the validity check) and both times (Unix
/// seconds `iat` and `exp`; RFC 3339 `created_at` and `expires_at`: the seeded tokens
/// expire).
fn check_holder_answer(
    mode: ProbeMode,
    status: u16,
    no_store: bool,
    body: &[u8],
) -> Result<(), String> {
    let text = || String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    if status != 200 {
        return Err(format!("status {status}: {}", text()));
    }
    if !no_store {
        return Err(format!("200 without Cache-Control: no-store: {}", text()));
    }
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON ({e}): {}", text()))?;
    let (owner, times) = match mode {
        ProbeMode::Introspect => (&v["sub"], v["iat"].is_i64() && v["exp"].is_i64()),
        _ => (
            &v["owner"],
            [&v["created_at"], &v["expires_at"]].iter().all(|t| {
                t.as_str()
                    .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok())
            }),
        ),
    };
    if v["active"] != true || v["token_type"] != "cio_tp" || *owner != BENCH_OWNER || !times {
        return Err(format!("not the live token's answer: {v}"));
    }
    Ok(())
}

impl Probes {
    /// One request of `mode` about the next token: its latency (until the whole answer
    /// is read), and what was wrong with the answer.
    async fn one(&self, mode: ProbeMode) -> (Duration, Result<(), String>) {
        let p = &self.probes[self.next.fetch_add(1, Ordering::Relaxed) % self.probes.len()];
        let started = Instant::now();
        let request = match mode {
            ProbeMode::Bare => {
                let found = self.lookup(&p.hash).await;
                let took = started.elapsed();
                let outcome = match found {
                    Ok(Some((owner, false))) if owner == BENCH_OWNER => Ok(()),
                    Ok(other) => Err(format!("bare lookup found {other:?}")),
                    Err(e) => Err(format!("bare lookup failed: {e}")),
                };
                return (took, outcome);
            }
            ProbeMode::Introspect => self
                .client
                .post(&self.introspect_url)
                .header(reqwest::header::AUTHORIZATION, &self.basic)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(p.form.clone()),
            ProbeMode::Validity => self
                .client
                .get(&self.validity_url)
                .header(reqwest::header::AUTHORIZATION, &p.bearer),
        };
        let answer = match request.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let no_store = r
                    .headers()
                    .get(reqwest::header::CACHE_CONTROL)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| {
                        v.split(',')
                            .any(|d| d.trim().eq_ignore_ascii_case("no-store"))
                    });
                r.bytes().await.map(|body| (status, no_store, body))
            }
            Err(e) => Err(e),
        };
        let took = started.elapsed();
        let outcome = match answer {
            Ok((status, no_store, body)) => check_holder_answer(mode, status, no_store, &body),
            Err(e) => Err(format!("request failed: {e}")),
        };
        (took, outcome)
    }

    /// The bare lookup of one hash: the row's owner and whether it is revoked.
    async fn lookup(&self, hash: &[u8; 32]) -> Result<Option<(String, bool)>, sqlx::Error> {
        type Time = chrono::DateTime<Utc>;
        Ok(match &self.bare {
            BarePool::Postgres(pool) => {
                let row: Option<(String, Time, Option<Time>, Option<Time>)> =
                    sqlx::query_as(LOOKUP_SQL)
                        .bind(hash.as_slice())
                        .fetch_optional(pool)
                        .await?;
                row.map(|(owner, _, _, revoked_at)| (owner, revoked_at.is_some()))
            }
            BarePool::Sqlite(pool) => {
                // SQLite stores times as Unix milliseconds.
                let row: Option<(String, i64, Option<i64>, Option<i64>)> =
                    sqlx::query_as(LOOKUP_SQL)
                        .bind(hash.as_slice())
                        .fetch_optional(pool)
                        .await?;
                row.map(|(owner, _, _, revoked_at)| (owner, revoked_at.is_some()))
            }
        })
    }
}

/// What one mode did in one round.
struct ProbeRound {
    /// Sorted latencies, ms.
    lat: Vec<f64>,
    seconds: f64,
    errors: usize,
    /// The first wrong answer, if any.
    first_error: Option<String>,
}

/// `mode` at [`PROBE_CONCURRENCY`] for `secs`.
async fn probe_round(probes: &Arc<Probes>, mode: ProbeMode, secs: Duration) -> ProbeRound {
    let started = Instant::now();
    let deadline = started + secs;
    let workers: Vec<_> = (0..PROBE_CONCURRENCY)
        .map(|_| {
            let probes = Arc::clone(probes);
            tokio::spawn(async move {
                let (mut lat, mut errors, mut first_error) = (Vec::new(), 0, None);
                while Instant::now() < deadline {
                    let (took, outcome) = probes.one(mode).await;
                    lat.push(ms(took));
                    if let Err(e) = outcome {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
                (lat, errors, first_error)
            })
        })
        .collect();
    let mut round = ProbeRound {
        lat: Vec::new(),
        seconds: 0.0,
        errors: 0,
        first_error: None,
    };
    for w in workers {
        let (lat, errors, first_error) = w.await.unwrap();
        round.lat.extend(lat);
        round.errors += errors;
        if round.first_error.is_none() {
            round.first_error = first_error;
        }
    }
    round.seconds = started.elapsed().as_secs_f64();
    round.lat.sort_by(f64::total_cmp);
    round
}

/// The holder endpoints' reads against the bare lookup: a server on `settings`'
/// database with one introspection client and no holder rate limit; `tokens` stored
/// live tokens of the pool asked about round-robin; after a short unmeasured warm-up of
/// each mode (its answers checked too), [`PROBE_ROUNDS`] rounds of `round_secs` of each
/// mode in turn (bare, introspection, validity, ...) at [`PROBE_CONCURRENCY`]. The bare
/// lookup goes through an sqlx pool as large as the server's. False if any answer was
/// wrong.
async fn introspection(
    bench: &Arc<Bench>,
    mut settings: Settings,
    tokens: usize,
    round_secs: Duration,
) -> (Row, serde_json::Value, bool) {
    use base64::Engine;
    settings.holder.enabled = true;
    settings.holder.rate_limit = None;
    settings.holder.introspection_clients = vec![(
        PROBE_CLIENT.0.into(),
        secrecy::SecretString::from(PROBE_CLIENT.1),
    )];
    let connections = settings.pool.max_connections;
    let (base, store, stop) = start_server(settings).await;
    let bare = match bench.backend {
        Backend::Postgres => BarePool::Postgres(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(connections)
                .connect(&bench.db_url)
                .await
                .expect("bare lookup pool"),
        ),
        Backend::Sqlite => {
            use std::str::FromStr;
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(&bench.db_url)
                .unwrap()
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(5));
            BarePool::Sqlite(
                sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(connections)
                    .connect_with(options)
                    .await
                    .expect("bare lookup pool"),
            )
        }
    };
    let probes: Vec<Probe> = bench
        .take(tokens)
        .iter()
        .map(|t| Probe {
            form: format!("token={}", t.expose_secret()),
            bearer: format!("Bearer {}", t.expose_secret()),
            hash: *t.hash().as_bytes(),
        })
        .collect();
    let probes = Arc::new(Probes {
        client: bench.client.clone(),
        introspect_url: format!("{base}/oauth/introspect"),
        validity_url: format!("{base}/v1/tokens/current"),
        basic: format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", PROBE_CLIENT.0, PROBE_CLIENT.1))
        ),
        probes,
        next: AtomicUsize::new(0),
        bare,
    });

    // Per mode: each round's req/s, every latency, errors, the first wrong answer, the
    // server's statements in the measured rounds.
    struct Tally {
        mode: ProbeMode,
        rps: Vec<f64>,
        lat: Vec<f64>,
        seconds: f64,
        errors: usize,
        first_error: Option<String>,
        statements: u64,
    }
    let mut tallies: Vec<Tally> = ProbeMode::ALL
        .iter()
        .map(|&mode| Tally {
            mode,
            rps: Vec::new(),
            lat: Vec::new(),
            seconds: 0.0,
            errors: 0,
            first_error: None,
            statements: 0,
        })
        .collect();
    // Warm-up: every keep-alive connection and pooled database connection opened.
    for t in &mut tallies {
        let round = probe_round(&probes, t.mode, Duration::from_millis(500)).await;
        t.errors += round.errors;
        t.first_error = t.first_error.take().or(round.first_error);
    }
    for _ in 0..PROBE_ROUNDS {
        for t in &mut tallies {
            let before = store.statements();
            let round = probe_round(&probes, t.mode, round_secs).await;
            t.statements += store.statements() - before;
            t.rps.push(round.lat.len() as f64 / round.seconds);
            t.seconds += round.seconds;
            t.lat.extend(round.lat);
            t.errors += round.errors;
            t.first_error = t.first_error.take().or(round.first_error);
        }
    }
    let _ = stop.send(());
    match &probes.bare {
        BarePool::Postgres(pool) => pool.close().await,
        BarePool::Sqlite(pool) => pool.close().await,
    }

    let rps = |t: &Tally| t.lat.len() as f64 / t.seconds;
    let bare_rps = rps(&tallies[0]);
    let mut parts = Vec::new();
    let mut value = serde_json::json!({
        "concurrency": PROBE_CONCURRENCY, "rounds": PROBE_ROUNDS,
        "seconds_per_round": round_secs.as_secs_f64(), "tokens": tokens,
        "pool_connections": connections,
    });
    let mut errors = 0;
    let mut first_errors = Vec::new();
    for t in &mut tallies {
        t.lat.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&t.lat, 0.5), percentile(&t.lat, 0.99));
        let ratio = rps(t) / bare_rps;
        let per_round: Vec<String> = t.rps.iter().map(|r| format!("{r:.0}")).collect();
        let statements =
            (t.mode != ProbeMode::Bare).then(|| t.statements as f64 / t.lat.len().max(1) as f64);
        parts.push(format!(
            "{} {:.0} req/s ({}) p50 {p50:.2} ms p99 {p99:.2} ms{}{}",
            t.mode.name(),
            rps(t),
            per_round.join("/"),
            if t.mode == ProbeMode::Bare {
                String::new()
            } else {
                format!(", {ratio:.2}x bare")
            },
            statements.map_or(String::new(), |s| format!(", {s:.2} statements/req")),
        ));
        value[t.mode.name()] = serde_json::json!({
            "rps": rps(t), "rounds_rps": t.rps, "requests": t.lat.len(), "seconds": t.seconds,
            "p50_ms": p50, "p99_ms": p99, "errors": t.errors,
            "statements_per_request": statements, "first_error": t.first_error,
        });
        if t.mode != ProbeMode::Bare {
            value[format!("ratio_{}_over_bare", t.mode.name())] = ratio.into();
        }
        errors += t.errors;
        if let Some(e) = &t.first_error {
            first_errors.push(format!("{}: {e}", t.mode.name()));
        }
    }
    value["errors"] = errors.into();
    let row = Row {
        name: format!(
            "introspection/validity c={PROBE_CONCURRENCY}, {PROBE_ROUNDS}x{}s",
            round_secs.as_secs()
        ),
        value: format!(
            "{} | errors {errors}{}",
            parts.join(" | "),
            if first_errors.is_empty() {
                String::new()
            } else {
                format!(" (first: {})", first_errors.join("; "))
            }
        ),
        target: match bench.backend {
            Backend::Postgres => "introspect >= 3000 req/s, p99 <= 20 ms; 0 errors".into(),
            Backend::Sqlite => "(report) 0 errors".into(),
        },
    };
    (row, value, errors == 0)
}

struct Row {
    name: String,
    value: String,
    target: String,
}

/// One way of reaching the database, measured in rounds.
struct Mode {
    name: &'static str,
    base: String,
    bodies: Arc<Vec<(Vec<u8>, String)>>,
    next: Arc<AtomicUsize>,
    rps: Vec<f64>,
    lat: Vec<f64>,
}

/// A server running in this process: its base URL, its store (statements counted), its
/// stop.
type Server = (
    String,
    Arc<dyn RevocationStore>,
    tokio::sync::oneshot::Sender<()>,
);

/// Starts a server with `settings` in this process.
async fn start_server(settings: Settings) -> Server {
    let app = Application::build(settings).await.expect("server starts");
    let base = format!("http://127.0.0.1:{}", app.port());
    let store = Arc::clone(&app.state().store);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));
    (base, store, stop_tx)
}

/// Two more servers on the same database, both with `--db-pooler transaction`: one
/// through PgBouncer (transaction mode, as many server connections as the direct pool),
/// one straight to PostgreSQL (what the unnamed statements and their transactions cost
/// without the pooler's hop). Then `rounds` rounds of each mode in turn (direct,
/// unnamed direct, pooled) on a third of `signed`'s bodies each. `None` without a
/// `pgbouncer` binary.
async fn pooler_rounds_compared(
    bench: &Arc<Bench>,
    settings: Settings,
    db_url: &str,
    mut signed: Vec<(Vec<u8>, String)>,
    rounds: usize,
    secs: u64,
) -> Option<(Row, serde_json::Value)> {
    let server_connections = settings.pool.max_connections;
    let bouncer = pgbouncer::PgBouncer::start(db_url, server_connections)?;
    let mut unnamed = settings.clone();
    unnamed.pool.pooler = revoker::store::Pooler::Transaction;
    let mut pooled = unnamed.clone();
    pooled.database_url = bouncer.url(db_url).into();
    let (unnamed_base, _, stop_unnamed) = start_server(unnamed).await;
    let (pooled_base, _, stop_pooled) = start_server(pooled).await;

    let third = signed.len() / 3;
    let mut modes: Vec<Mode> = [
        ("direct", bench.base.clone()),
        ("unnamed direct", unnamed_base),
        ("pooled", pooled_base),
    ]
    .into_iter()
    .map(|(name, base)| Mode {
        name,
        base,
        bodies: Arc::new(signed.drain(..third).collect()),
        next: Arc::new(AtomicUsize::new(0)),
        rps: Vec::new(),
        lat: Vec::new(),
    })
    .collect();
    let mut errors = 0;
    for _ in 0..rounds {
        for m in &mut modes {
            let deadline = Instant::now() + Duration::from_secs(secs);
            let (lat, errs, elapsed) =
                genuine_load(bench, &m.base, &m.bodies, &m.next, 32, deadline).await;
            m.rps.push(lat.len() as f64 / elapsed);
            m.lat.extend(lat);
            errors += errs;
        }
    }
    let _ = stop_unnamed.send(());
    let _ = stop_pooled.send(());
    drop(bouncer);
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let direct_median = median(&modes[0].rps);
    let mut parts = Vec::new();
    let mut value = serde_json::json!({
        "rounds": rounds, "seconds_per_round": secs, "concurrency": 32,
        "server_connections": server_connections, "errors": errors,
    });
    for m in &mut modes {
        m.lat.sort_by(f64::total_cmp);
        let ratio = median(&m.rps) / direct_median;
        let list: Vec<String> = m.rps.iter().map(|r| format!("{r:.0}")).collect();
        parts.push(format!(
            "{} {} req/s (p99 {:.1} ms, {ratio:.2}x)",
            m.name,
            list.join("/"),
            percentile(&m.lat, 0.99)
        ));
        value[m.name.replace(' ', "_")] = serde_json::json!({
            "rps": m.rps, "p50_ms": percentile(&m.lat, 0.5), "p99_ms": percentile(&m.lat, 0.99),
            "median_rps_over_direct": ratio,
        });
    }
    let row = Row {
        name: format!("pooler rounds, 1-token c=32, {rounds}x{secs}s"),
        value: format!("{} | errors {errors}", parts.join(" | ")),
        target: "(report)".into(),
    };
    Some((row, value))
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let ok = runtime.block_on(run(args));
    std::process::exit(if ok { 0 } else { 1 });
}

async fn run(args: Args) -> bool {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // Database.
    let (db_url, admin) = match args.backend {
        Backend::Sqlite => (
            format!("sqlite://{}", dir.path().join("bench.db").display()),
            None,
        ),
        Backend::Postgres => {
            let admin = common::postgres_admin_url();
            let name = format!("revoker_bench_{}", std::process::id());
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("PostgreSQL reachable");
            common::recreate_database(&mut conn, &name).await;
            (common::postgres_url(&admin, &name), Some((admin, name)))
        }
    };

    // A scanner key of our own, served from a key file.
    let key = SigningKey::random(&mut rand::rngs::OsRng);
    let pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let key_file = dir.path().join("keys.json");
    std::fs::write(
        &key_file,
        serde_json::json!({"public_keys": [{"key_identifier": "bench-key", "key": pem, "is_current": true}]})
            .to_string(),
    )
    .unwrap();

    let mut settings = Settings::new(
        &db_url,
        vec![ScannerSpec {
            name: "github".into(),
            source: key_file.display().to_string(),
        }],
    );
    settings.max_body = 64 << 20;
    // The flood check counts every statement of the store: no retention pass in here
    // (its first one, a minute in, would be counted as the flood's).
    settings.retention = None;
    // A 64 MiB body may need about 1.9 GiB once verified (one item whose string holds a
    // token every 43 bytes, each found inside it); the budget is a count, not memory.
    settings.verified_memory_budget = 5 << 29;
    let settings_max_body = settings.max_body;
    settings.pool.max_connections = 16;
    let pooled_settings = settings.clone();
    let api_settings = settings.clone();
    let mass_settings = settings.clone();
    let holder_settings = settings.clone();
    let app = Application::build(settings).await.expect("server starts");
    let base = format!("http://127.0.0.1:{}", app.port());
    let store = Arc::clone(&app.state().store);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));

    // Seed: filler tokens, plus pools of raw tokens for the measurements.
    let sizes = [1usize, 100, 1_000, 10_000];
    let iterations: [usize; 4] = if args.quick {
        [20, 10, 10, 3]
    } else {
        [100, 30, 20, 5]
    };
    let batch_tokens: usize = sizes.iter().zip(iterations).map(|(s, i)| s * i).sum();
    let throughput_secs = if args.quick { 3 } else { 10 };
    let throughput_tokens = if args.quick { 10_000 } else { 40_000 };
    // Through the pooler (PostgreSQL): direct and pooled rounds of `throughput_secs`,
    // alternating, on fresh tokens (~2,500 req/s at most on this machine).
    let pooler_rounds = 3;
    let pooler_tokens = match args.backend {
        Backend::Postgres => 3 * pooler_rounds * throughput_secs as usize * 2_500,
        Backend::Sqlite => 0,
    };
    // The mass revocation: half of its items real, once direct and once pooled
    // (PostgreSQL), and the per-token peer's sample.
    let mass_items = if args.quick {
        MASS_ITEMS / 5
    } else {
        MASS_ITEMS
    };
    let mass_tokens = match args.backend {
        Backend::Postgres => mass_items,
        Backend::Sqlite => mass_items / 2,
    } + MASS_SAMPLE / 2;
    // 1-token deliveries beside large ones: 4 rounds of their own (more than c=4 sends
    // in a round; past the end they come round again, and the row counts the repeats).
    // (The CI smoke, a debug build, signs slowly and needs no exact row.)
    let beside_per_round =
        throughput_secs as usize * if cfg!(debug_assertions) { 300 } else { 2_000 };
    let beside_tokens = 4 * beside_per_round;
    // The holder endpoints' reads: each mode's rounds, and the live tokens they ask about
    // round-robin (only read: shared by the three modes).
    let probe_round = Duration::from_secs(if args.quick { 1 } else { 5 });
    let probe_tokens = if args.quick { 10_000 } else { 50_000 };
    let pool_size = match args.only {
        Some(Only::Batches) => 5 * batch_tokens,
        Some(Only::LargeBodies) => beside_tokens,
        Some(Only::MassRevocation) => mass_tokens,
        Some(Only::Pooler) => pooler_tokens,
        Some(Only::Introspection) => probe_tokens,
        None => {
            5 * batch_tokens
                + throughput_tokens
                + pooler_tokens
                + beside_tokens
                + mass_tokens
                + probe_tokens
        }
    };
    let filler = args.tokens.saturating_sub(pool_size);
    let seed_started = Instant::now();
    seed(&store, filler, false).await;
    let pool = seed_pool(&store, pool_size).await;
    if args.backend == Backend::Postgres {
        let mut conn = sqlx::PgConnection::connect(&db_url).await.unwrap();
        sqlx::query("VACUUM ANALYZE tokens")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let seed_secs = seed_started.elapsed().as_secs_f64();
    let mut phases: Vec<(&str, f64, f64)> = Vec::new();
    let mut phase = |name: &'static str| {
        let (peak, now) = rss_mib();
        phases.push((name, peak, now));
    };
    phase("after seeding");
    println!(
        "seeded {} tokens on {:?} in {seed_secs:.1}s",
        args.tokens, args.backend
    );

    let bench = Arc::new(Bench {
        backend: args.backend,
        base,
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .unwrap(),
        key,
        db_url: db_url.clone(),
        pool,
        next: AtomicUsize::new(0),
    });
    let mut rows: Vec<Row> = Vec::new();
    let mut json = serde_json::Map::new();
    let mut all_ok = true;

    if let Some(only) = args.only.filter(|o| *o != Only::Batches) {
        let (row, value, ok) = match only {
            Only::Batches => unreachable!("run below"),
            Only::LargeBodies => {
                small_beside_large(&bench, throughput_secs, beside_per_round).await
            }
            Only::MassRevocation => {
                mass_revocation(&bench, &mass_settings, &db_url, mass_items).await
            }
            Only::Pooler => match pooler_rounds_compared(
                &bench,
                pooled_settings.clone(),
                &db_url,
                bench.take_signed(pooler_tokens),
                pooler_rounds,
                throughput_secs,
            )
            .await
            {
                Some((row, value)) => (row, value, true),
                None => panic!("--only pooler needs PostgreSQL and a pgbouncer binary"),
            },
            Only::Introspection => {
                introspection(&bench, holder_settings, probe_tokens, probe_round).await
            }
        };
        println!("{:<34} {}   [target {}]", row.name, row.value, row.target);
        println!("{}", serde_json::to_string(&value).unwrap());
        shut_down(stop_tx, server, bench, store, admin).await;
        if !ok {
            eprintln!("FAIL: {} missed its target", row.name);
        }
        return ok;
    }

    // 1. Batch revocation vs. the per-token baseline.
    let mut batch_json = Vec::new();
    for (size, iters) in sizes.iter().zip(iterations) {
        let mut revoker_ms = Vec::new();
        let mut baseline_ms = Vec::new();
        let mut store_ms = Vec::new();
        let mut floor_ms = Vec::new();
        let mut floor_record_ms = Vec::new();
        for _ in 0..iters {
            // The store call alone (what the database costs), on fresh tokens.
            let direct = bench.take(*size);
            let direct_body = Bench::body(&secrets(&direct));
            let formats = revoker::domain::Formats::DEFAULT;
            let sizes = alert::measure(&direct_body, formats).unwrap();
            let report = alert::compact(direct_body.into(), &sizes, formats)
                .unwrap()
                .take_report("bench", "direct", Utc::now(), |_| [0; 32])
                .unwrap();
            bench.settle().await;
            let t = Instant::now();
            store
                .record_report(&report, RecordOptions::default())
                .await
                .expect("record_report");
            store_ms.push(ms(t.elapsed()));

            let tokens = bench.take(*size);
            let body = Bench::body(&secrets(&tokens));
            bench.settle().await;
            let (status, took) = bench.deliver(body).await;
            assert_eq!(status, 200, "batch delivery failed");
            revoker_ms.push(ms(took));
            let base_tokens = bench.take(*size);
            bench.settle().await;
            baseline_ms.push(ms(bench.baseline(&base_tokens).await));
            bench.settle().await;
            floor_ms.push(ms(bench.floor(&bench.take(*size)).await));
            bench.settle().await;
            floor_record_ms.push(ms(bench.floor_with_record(&bench.take(*size)).await));
        }
        revoker_ms.sort_by(f64::total_cmp);
        baseline_ms.sort_by(f64::total_cmp);
        store_ms.sort_by(f64::total_cmp);
        floor_ms.sort_by(f64::total_cmp);
        floor_record_ms.sort_by(f64::total_cmp);
        let fr50 = percentile(&floor_record_ms, 0.5);
        let over_floor_record = percentile(&revoker_ms, 0.5) / fr50;
        let s50 = percentile(&store_ms, 0.5);
        let f50 = percentile(&floor_ms, 0.5);
        let over_floor = percentile(&revoker_ms, 0.5) / f50;
        let (p50, p95) = (percentile(&revoker_ms, 0.5), percentile(&revoker_ms, 0.95));
        let (b50, b95) = (
            percentile(&baseline_ms, 0.5),
            percentile(&baseline_ms, 0.95),
        );
        let ratio = b50 / p50;
        let target = match (size, args.backend) {
            (1000, Backend::Postgres) => "p50 <= 40 ms, >= 15x",
            (1000, Backend::Sqlite) => "p50 <= 60 ms, >= 5x",
            _ => "",
        };
        rows.push(Row {
            name: format!("batch {size:>5} tokens"),
            value: format!(
                "p50 {p50:8.2} ms  p95 {p95:8.2} ms (store alone p50 {s50:7.2}) | baseline p50 {b50:9.2} ms  p95 {b95:9.2} ms | {ratio:6.1}x | floor p50 {f50:7.2} ms, revoker/floor {over_floor:5.1}x | floor+record p50 {fr50:7.2} ms, revoker/floor+record {over_floor_record:5.1}x"
            ),
            target: target.into(),
        });
        batch_json.push(serde_json::json!({
            "tokens": size, "iterations": iters,
            "p50_ms": p50, "p95_ms": p95,
            "baseline_p50_ms": b50, "baseline_p95_ms": b95, "store_only_p50_ms": s50,
            "ratio_baseline_over_revoker": ratio,
            "floor_p50_ms": f50, "ratio_revoker_over_floor": over_floor,
            "floor_with_record_p50_ms": fr50,
            "ratio_revoker_over_floor_with_record": over_floor_record,
        }));
    }
    json.insert("batch".into(), batch_json.into());
    phase("after batches");
    if args.only == Some(Only::Batches) {
        for r in &rows {
            println!("{:<34} {}   [target {}]", r.name, r.value, r.target);
        }
        println!("{}", serde_json::to_string(&json["batch"]).unwrap());
        shut_down(stop_tx, server, bench, store, admin).await;
        return true;
    }

    // 2. Flood of 100,000 non-candidates.
    let mut junk: Vec<String> = Vec::with_capacity(100_000);
    for i in 0..50_000 {
        junk.push(format!("random-string-{i}-{:x}", rand::random::<u64>()));
    }
    for _ in 0..50_000 {
        let t = Token::generate();
        let mut s = t.expose_secret().to_owned();
        let last = s.pop().unwrap();
        s.push(if last == '0' { '1' } else { '0' });
        junk.push(s);
    }
    let refs: Vec<&str> = junk.iter().map(String::as_str).collect();
    let statements_before = store.statements();
    let (status, flood) = bench.deliver(Bench::body(&refs)).await;
    let flood_statements = store.statements() - statements_before;
    assert_eq!(status, 200, "flood delivery failed");
    if flood_statements != 0 {
        all_ok = false;
    }
    rows.push(Row {
        name: "flood 100,000 non-candidates".into(),
        value: format!(
            "{:8.2} ms, {flood_statements} database statements",
            ms(flood)
        ),
        target: "<= 150 ms, 0 statements".into(),
    });
    json.insert(
        "flood".into(),
        serde_json::json!({"items": 100_000, "ms": ms(flood), "statements": flood_statements}),
    );
    drop(junk);
    phase("after flood");

    // 3. Throughput: 1-token deliveries at concurrency 32. Bodies are signed before the
    // clock starts (the scanner signs on its own machines, not on ours), each phase's
    // when it starts (held bodies count in the process's memory).
    let concurrency = 32;
    let signed = Arc::new(bench.take_signed(throughput_tokens));
    let next_signed = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(throughput_secs);
    let (lat, errors, elapsed) = genuine_load(
        &bench,
        &bench.base,
        &signed,
        &next_signed,
        concurrency,
        deadline,
    )
    .await;
    let rps = lat.len() as f64 / elapsed;
    let (t50, t99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    rows.push(Row {
        name: format!("throughput 1-token, c={concurrency}, {throughput_secs}s"),
        value: format!("{rps:8.0} req/s  p50 {t50:6.2} ms  p99 {t99:6.2} ms  errors {errors}"),
        target: match args.backend {
            Backend::Postgres => ">= 1000 req/s, p99 <= 50 ms, 0 errors".into(),
            Backend::Sqlite => "(report)".into(),
        },
    });
    json.insert(
        "throughput".into(),
        serde_json::json!({"concurrency": concurrency, "seconds": elapsed, "requests": lat.len(),
            "rps": rps, "p50_ms": t50, "p99_ms": t99, "errors": errors}),
    );

    phase("after throughput");

    // 3a. Through a connection pooler (PostgreSQL): the same 1-token load at c=32 on
    // servers in this process on the same database with `--db-pooler transaction`,
    // through PgBouncer in transaction mode and straight to PostgreSQL, in rounds
    // alternating with the direct server.
    if args.backend == Backend::Postgres {
        match pooler_rounds_compared(
            &bench,
            pooled_settings,
            &db_url,
            bench.take_signed(pooler_tokens),
            pooler_rounds,
            throughput_secs,
        )
        .await
        {
            Some((row, value)) => {
                rows.push(row);
                json.insert("pooler".into(), value);
            }
            None => println!("no pgbouncer on this machine: the pooler rounds are skipped"),
        }
    }

    // 3b. Under attack: genuine 1-token deliveries at concurrency 4 while 1,000 hostile
    // connections are held open (they need no key: the key id is public).
    let (_, rss_before) = rss_mib();
    let hostile = hostile_connections(&bench.base, settings_max_body).await;
    let held = hostile.len();
    let attack_secs = throughput_secs;
    let deadline = Instant::now() + Duration::from_secs(attack_secs);
    let (lat, errors, elapsed) =
        genuine_load(&bench, &bench.base, &signed, &next_signed, 4, deadline).await;
    let (peak_attack, rss_attack) = rss_mib();
    for h in hostile {
        h.abort();
    }
    let rps = lat.len() as f64 / elapsed;
    let (t50, t99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    rows.push(Row {
        name: format!("under attack: 1-token, c=4, {held} hostile"),
        value: format!(
            "{rps:8.0} req/s  p50 {t50:6.2} ms  p99 {t99:6.2} ms  errors {errors}  RSS {rss_before:.0} -> {rss_attack:.0} MiB (peak {peak_attack:.0}, whole process)"
        ),
        target: "p99 <= 1 s, 0 errors, server RSS <= 200 MB".into(),
    });
    json.insert(
        "under_attack".into(),
        serde_json::json!({"hostile_connections": held, "seconds": elapsed, "requests": lat.len(),
            "rps": rps, "p50_ms": t50, "p99_ms": t99, "errors": errors,
            "rss_before_mib": rss_before, "rss_during_mib": rss_attack, "peak_rss_mib": peak_attack}),
    );
    drop(signed);
    phase("after attack");

    // 4. Component costs.
    let sample: Vec<Token> = (0..10_000).map(|_| Token::generate()).collect();
    let sample_refs: Vec<&str> = sample.iter().map(|t| t.expose_secret()).collect();
    let body = Bench::body(&sample_refs);
    let small = Bench::body(&sample_refs[..1]);
    let sig = signature::decode_signature(&bench.sign(&small)).unwrap();
    let vk = *bench.key.verifying_key();
    let n = 2_000;
    let t = Instant::now();
    for _ in 0..n {
        signature::verify(&vk, &small, &sig).unwrap();
    }
    let verify_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let t = Instant::now();
    // The JSON alone, every item built (the test oracle's reading; the one parser's
    // first pass does this work without keeping the items).
    let items = alert::oracle::parse(&body).unwrap();
    let parse_ns = t.elapsed().as_secs_f64() * 1e9 / items.len() as f64;
    let t = Instant::now();
    let mut valid = 0;
    for item in &items {
        valid += usize::from(revoker::domain::token::validate(&item.token).is_ok());
    }
    let classify_ns = t.elapsed().as_secs_f64() * 1e9 / items.len() as f64;
    assert_eq!(valid, items.len());
    let t = Instant::now();
    let mut x = 0u8;
    for item in &items {
        x ^= TokenHash::of(&item.token).0[0];
    }
    let sha_ns = t.elapsed().as_secs_f64() * 1e9 / items.len() as f64;
    std::hint::black_box(x);
    // What every item's type, URL and source go through before they are stored.
    let t = Instant::now();
    let mut len = 0;
    for item in &items {
        for field in [&item.token_type, &item.url, &item.source] {
            len += redact::redact_tokens(field.as_deref().unwrap_or_default()).len();
        }
    }
    let redact_ns = t.elapsed().as_secs_f64() * 1e9 / items.len() as f64;
    std::hint::black_box(len);
    rows.push(Row {
        name: "component costs".into(),
        value: format!(
            "verify {verify_us:.1} us | JSON parse {parse_ns:.0} ns/item | check digits {classify_ns:.0} ns/item | SHA-256 {sha_ns:.0} ns/item | redaction {redact_ns:.0} ns/item"
        ),
        target: String::new(),
    });
    json.insert(
        "components".into(),
        serde_json::json!({"signature_verify_us": verify_us, "json_parse_ns_per_item": parse_ns,
            "check_digits_ns_per_item": classify_ns, "sha256_ns_per_item": sha_ns,
            "redaction_ns_per_item": redact_ns}),
    );

    let (peak, now_rss) = rss_mib();
    let by_phase: Vec<String> = phases
        .iter()
        .map(|(name, peak, now)| format!("{name}: peak {peak:.0} / now {now:.0}"))
        .collect();
    rows.push(Row {
        name: "memory (MiB, whole process)".into(),
        value: format!(
            "peak RSS {peak:.0} MiB (now {now_rss:.0}) | {}",
            by_phase.join(" | ")
        ),
        // The attack row holds 1,000 client sockets in this process: it has its own RSS.
        target: "<= 150 MB until 'after throughput'".into(),
    });
    json.insert(
        "memory".into(),
        serde_json::json!({"peak_rss_mib": peak, "rss_mib": now_rss,
            "phases": phases.iter().map(|(n, p, c)| serde_json::json!({"phase": n, "peak_rss_mib": p, "rss_mib": c})).collect::<Vec<_>>()}),
    );

    // 4a. 1-token deliveries beside 8 MiB ones: what a large body's work takes from
    // small ones (after the memory row: 8 large deliveries at a time raise the peak).
    let (row, value, ok) = small_beside_large(&bench, throughput_secs, beside_per_round).await;
    if !ok {
        eprintln!("FAIL: {} had errors", row.name);
        all_ok = false;
    }
    rows.push(row);
    json.insert("small_beside_large".into(), value);

    // 4b. A mass revocation event: 100 deliveries of 1,000 at c=8.
    let (row, value, ok) = mass_revocation(&bench, &mass_settings, &db_url, mass_items).await;
    if !ok {
        eprintln!(
            "FAIL: {} left a real token unrevoked or had errors",
            row.name
        );
        all_ok = false;
    }
    rows.push(row);
    json.insert("mass_revocation".into(), value);

    // 5. Flood of 100,000 junk crates.io API-token strings (`cio` + 32 letters or
    // digits, no check digit) at a server with `crates_io_api` enabled, on the same
    // database: every one is a candidate only the database can answer, and they all go
    // in the delivery's one statement (as many statements as a 1,000-candidate
    // delivery; on SQLite one more than a 1-token one, a large delivery's page cache).
    // Last, after the memory row: holding 100,000 candidates raises the process's peak.
    let api = api_flood(&bench, api_settings).await;
    if api.flood_statements != api.thousand_statements {
        all_ok = false;
    }
    rows.push(Row {
        name: "flood 100,000 junk crates_io_api (cio + 32)".into(),
        value: format!(
            "{:8.2} ms, {} database statements (a 1,000-candidate delivery: {})",
            ms(api.took),
            api.flood_statements,
            api.thousand_statements
        ),
        target: "one statement per delivery, never one per candidate".into(),
    });
    json.insert(
        "flood_crates_io_api".into(),
        serde_json::json!({"items": 100_000, "ms": ms(api.took), "statements": api.flood_statements,
            "thousand_statements": api.thousand_statements, "status": api.status}),
    );

    // 6. The holder endpoints' reads: introspection and the validity check against the
    // bare lookup, at c=32 in alternating rounds.
    let (row, value, ok) = introspection(&bench, holder_settings, probe_tokens, probe_round).await;
    if !ok {
        eprintln!("FAIL: {} had wrong answers", row.name);
        all_ok = false;
    }
    rows.push(row);
    json.insert("introspection".into(), value);

    // Report.
    println!();
    println!(
        "revoker receiver benchmark — backend {:?}, {} stored tokens{}, {} cores",
        args.backend,
        args.tokens,
        if args.quick { " (quick)" } else { "" },
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    for r in &rows {
        println!(
            "{:<34} {}   {}",
            r.name,
            r.value,
            if r.target.is_empty() {
                String::new()
            } else {
                format!("[target {}]", r.target)
            }
        );
    }
    json.insert(
        "meta".into(),
        serde_json::json!({"backend": format!("{:?}", args.backend).to_lowercase(), "stored_tokens": args.tokens,
            "quick": args.quick, "seed_seconds": seed_secs, "total_seconds": started.elapsed().as_secs_f64()}),
    );
    let out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join(format!("receiver-{}.json", args.backend.name()));
    std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("\nwritten to {}", out.display());
    if flood_statements != 0 {
        eprintln!(
            "FAIL: the flood of non-candidates caused {flood_statements} database statements"
        );
    }
    if api.flood_statements != api.thousand_statements {
        eprintln!(
            "FAIL: the crates_io_api flood took {} database statements, a 1,000-candidate delivery {}",
            api.flood_statements, api.thousand_statements
        );
    }

    shut_down(stop_tx, server, bench, store, admin).await;
    all_ok
}

/// Stops the in-process server, then drops the benchmark's PostgreSQL database once
/// the server's store and the benchmark's own connections are closed.
async fn shut_down<T, S>(
    stop_tx: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<T>,
    bench: Arc<Bench>,
    store: S,
    admin: Option<(String, String)>,
) {
    let _ = stop_tx.send(());
    let _ = server.await;
    drop(bench);
    drop(store);
    drop_database(admin).await;
}

/// Drops the benchmark's PostgreSQL database, if it made one.
async fn drop_database(admin: Option<(String, String)>) {
    if let Some((admin, name)) = admin {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await;
        }
    }
}
