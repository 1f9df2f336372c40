//! `/api/stats` at volume: what a dashboard tab pays every 10 s.
//!
//! ```text
//! cargo bench --bench stats -- --backend postgres|sqlite [--tokens N] [--items M]
//!                              [--calls K] [--reseed]
//! ```
//!
//! Seeds N tokens (PostgreSQL 10,000,000, SQLite 1,000,000 by default) and M report
//! items (20,000,000 / 2,000,000) *through the store*, as deliveries of 1,000 items
//! recorded by `record_report`, so whatever the store keeps beside the rows (rollups) is
//! what real deliveries leave: a quarter of the items revoke a token for the first time
//! (a tenth of those had expired), half re-report a revoked one, a quarter name a token
//! nobody minted; three scanners, eight sources, 90 days of history. Token ages at
//! revocation spread from a second to a month.
//!
//! Then it starts the server in-process and times K (default 50) sequential
//! `GET /api/stats` over loopback HTTP after three warm-up calls, and, as the baseline
//! in the same process on the same database, the statements that read the whole history
//! (per-scanner, per-source, daily and age percentiles over `reports`, `report_items`
//! and `tokens`), as `/api/stats` ran them before rollups. Prints both and their ratio;
//! writes `target/bench/stats-<backend>.json` with `p50_ms` and `p95_ms`.
//!
//! Seeding 10 M tokens takes minutes, so the seeded database is kept and reused by the
//! next run with the same volume and schema (PostgreSQL: database
//! `revoker_bench_stats_<N>_<M>_m<migrations>_<digest of their text>`; SQLite: a file of
//! that name under `target/bench/`); `--reseed` starts over. PostgreSQL: `REVOKER_BENCH_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`) is where the database is created.
//!
//! Target: p50 ≤ 50 ms on both backends at their default volumes. Printed, not asserted.

mod common;

use common::{ms, percentile, Backend};

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use sqlx::Connection;

use revoker::config::Settings;
use revoker::domain::alert::{CandidateItem, NewReport};
use revoker::domain::token::TokenHash;
use revoker::signature::ScannerSpec;
use revoker::startup::Application;
use revoker::store::{self, NewToken, RecordOptions, RevocationStore};

const ITEMS_PER_REPORT: usize = 1_000;
const SOURCES: [&str; 8] = [
    "content",
    "commit",
    "pull_request_description",
    "issue_comment",
    "discussion_body",
    "wiki_commit",
    "gist",
    "npm",
];
const HISTORY_DAYS: i64 = 90;

struct Args {
    backend: Backend,
    tokens: usize,
    items: usize,
    calls: usize,
    reseed: bool,
}

fn parse_args() -> Args {
    let mut backend = Backend::Sqlite;
    let (mut tokens, mut items, mut calls, mut reseed) = (0, 0, 50, false);
    let mut it = std::env::args().skip(1);
    let number = |it: &mut dyn Iterator<Item = String>, flag: &str| -> usize {
        it.next()
            .and_then(|n| n.replace('_', "").parse().ok())
            .unwrap_or_else(|| panic!("{flag} N"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--backend" => {
                backend = Backend::parse(it.next().as_deref());
            }
            "--tokens" => tokens = number(&mut it, "--tokens"),
            "--items" => items = number(&mut it, "--items"),
            "--calls" => calls = number(&mut it, "--calls").max(1),
            "--reseed" => reseed = true,
            "--bench" => {} // added by `cargo bench`
            other => panic!("unknown argument {other:?}"),
        }
    }
    let (t, i) = match backend {
        Backend::Postgres => (10_000_000, 20_000_000),
        Backend::Sqlite => (1_000_000, 2_000_000),
    };
    Args {
        backend,
        tokens: if tokens == 0 { t } else { tokens },
        items: if items == 0 { i } else { items },
        calls,
        reseed,
    }
}

/// Token `k` of the seed (deterministic, so a reused database needs no list).
fn token(k: usize) -> TokenHash {
    TokenHash::of(&format!("stats-bench-token-{k}"))
}

/// The seed's shape: which token each item names, and when each report arrives.
struct Plan {
    tokens: usize,
    reports: usize,
    start: DateTime<Utc>,
    step: chrono::Duration,
}

impl Plan {
    fn new(tokens: usize, items: usize) -> Plan {
        let reports = items.div_ceil(ITEMS_PER_REPORT).max(1);
        let start = Utc::now() - chrono::Duration::days(HISTORY_DAYS);
        let step = chrono::Duration::days(HISTORY_DAYS) / reports as i32;
        Plan {
            tokens,
            reports,
            start,
            step,
        }
    }

    /// First-time revocations per report: half the tokens are revoked over the history.
    fn fresh_per_report(&self) -> usize {
        (self.tokens / 2)
            .div_ceil(self.reports)
            .min(ITEMS_PER_REPORT / 4)
    }

    fn received_at(&self, report: usize) -> DateTime<Utc> {
        self.start + self.step * report as i32
    }

    /// The report whose delivery first names token `k` (`None`: never reported).
    fn report_of(&self, k: usize) -> Option<usize> {
        let r = k / self.fresh_per_report();
        (r < self.reports).then_some(r)
    }

    /// Token `k` as stored: minted a second to a month before its first report, a
    /// tenth of them expired by then.
    fn new_token(&self, k: usize) -> NewToken {
        let revoked = self
            .report_of(k)
            .map(|r| self.received_at(r))
            .unwrap_or_else(Utc::now);
        // A log-uniform age from 1 s to ~30 days, from the token's number.
        let spread = (k.wrapping_mul(2_654_435_761) % 10_000) as f64 / 10_000.0;
        let age_ms = (1_000.0 * (2_592_000f64).powf(spread)) as i64;
        let created_at = revoked - chrono::Duration::milliseconds(age_ms);
        let lifetime = if k % 10 == 0 {
            chrono::Duration::milliseconds(age_ms / 2)
        } else {
            chrono::Duration::days(90)
        };
        NewToken {
            hash: token(k),
            owner: format!("team-{}", k % 50),
            created_at,
            expires_at: created_at + lifetime,
        }
    }

    /// Report `r`: its fresh tokens, re-reports of earlier ones, then tokens nobody minted.
    fn report(&self, r: usize) -> NewReport {
        let fresh = self.fresh_per_report();
        let first = r * fresh;
        let mut candidates = Vec::with_capacity(ITEMS_PER_REPORT);
        for i in 0..ITEMS_PER_REPORT {
            let hash = if i < fresh {
                token(first + i)
            } else if i < ITEMS_PER_REPORT * 3 / 4 {
                // A token revoked before (or in this report, for the first one).
                let pool = (first + fresh).max(1);
                token((r * 7_919 + i * 104_729) % pool)
            } else {
                TokenHash::of(&format!("stats-bench-unknown-{r}-{i}"))
            };
            candidates.push(CandidateItem {
                position: i as u32,
                hash,
                token_type: "cio_tp".into(),
                source: SOURCES[(r + i) % SOURCES.len()].into(),
                url: format!("https://github.com/org/repo-{}/blob/main/ci.yml", r % 97),
                found_in: None,
            });
        }
        let scanner = match r % 10 {
            0..=6 => "github",
            7 | 8 => "gitlab",
            _ => "replay",
        };
        let mut body = [0u8; 32];
        body[..8].copy_from_slice(&(r as u64).to_le_bytes());
        NewReport {
            scanner: scanner.into(),
            key_id: "bench-key".into(),
            received_at: self.received_at(r),
            body_sha256: body,
            item_count: ITEMS_PER_REPORT as u32,
            not_ours: 0,
            candidates,
        }
    }
}

/// Seeds the store; prints progress every tenth.
async fn seed(store: &Arc<dyn RevocationStore>, plan: &Plan, concurrency: usize) {
    let started = Instant::now();
    let mut k = 0;
    while k < plan.tokens {
        let chunk: Vec<NewToken> = (k..(k + 10_000).min(plan.tokens))
            .map(|k| plan.new_token(k))
            .collect();
        store.insert_tokens(&chunk).await.expect("seed tokens");
        k += chunk.len();
        if k % (plan.tokens / 10).max(1) < chunk.len() {
            eprintln!(
                "  tokens {k}/{} ({:.0}s)",
                plan.tokens,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let tenth = (plan.reports / 10).max(1);
    let mut done = 0;
    let mut recorded = futures::stream::iter(0..plan.reports)
        .map(|r| {
            let store = Arc::clone(store);
            let report = plan.report(r);
            async move {
                store
                    .record_report(
                        &report,
                        RecordOptions {
                            deadline: None,
                            once_per_body: false,
                        },
                    )
                    .await
                    .expect("seed report")
            }
        })
        .buffer_unordered(concurrency);
    while recorded.next().await.is_some() {
        done += 1;
        if done % tenth == 0 {
            eprintln!(
                "  reports {done}/{} ({:.0}s)",
                plan.reports,
                started.elapsed().as_secs_f64()
            );
        }
    }
}

/// The database to use: `(url, already seeded)`.
/// The schema's version as the reusable database's name carries it: how many
/// migrations, and a digest of their text (an edited migration reseeds too, rather than
/// meeting sqlx's refusal of a changed one).
fn schema_version(backend: Backend) -> String {
    use sha2::{Digest, Sha256};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(match backend {
        Backend::Sqlite => "migrations/sqlite",
        Backend::Postgres => "migrations/postgres",
    });
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut digest = Sha256::new();
    for f in &files {
        digest.update(std::fs::read(f).unwrap());
    }
    let hex: String = digest.finalize()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{}_{hex}", files.len())
}

async fn database(args: &Args, migrations: String) -> (String, bool) {
    let name = format!(
        "revoker_bench_stats_{}_{}_m{migrations}",
        args.tokens, args.items
    );
    match args.backend {
        Backend::Sqlite => {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{name}.db"));
            if args.reseed {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            let url = format!("sqlite://{}", path.display());
            let seeded = path.exists() && marker(&url).await;
            (url, seeded)
        }
        Backend::Postgres => {
            let admin = common::postgres_admin_url();
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("PostgreSQL reachable");
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(&name)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            let url = common::postgres_url(&admin, &name);
            if exists && !args.reseed && marker(&url).await {
                return (url, true);
            }
            common::recreate_database(&mut conn, &name).await;
            (url, false)
        }
    }
}

/// A plain connection to either backend, for the statements the store has no method for.
enum Conn {
    Postgres(sqlx::PgConnection),
    Sqlite(sqlx::SqliteConnection),
}

impl Conn {
    async fn open(url: &str) -> Result<Conn, sqlx::Error> {
        Ok(match store::backend_name(url) {
            "postgres" => Conn::Postgres(sqlx::PgConnection::connect(url).await?),
            _ => Conn::Sqlite(sqlx::SqliteConnection::connect(url).await?),
        })
    }

    /// Runs `sql`; the number of rows it answered.
    async fn rows(&mut self, sql: &str) -> Result<usize, sqlx::Error> {
        Ok(match self {
            Conn::Postgres(c) => sqlx::query(sql).fetch_all(c).await?.len(),
            Conn::Sqlite(c) => sqlx::query(sql).fetch_all(c).await?.len(),
        })
    }
}

/// Whether a finished seed left its marker table.
async fn marker(url: &str) -> bool {
    let Ok(mut conn) = Conn::open(url).await else {
        return false;
    };
    conn.rows("SELECT 1 FROM bench_seeded").await.unwrap_or(0) > 0
}

async fn mark_seeded(url: &str) {
    let mut conn = Conn::open(url).await.unwrap();
    for sql in [
        "CREATE TABLE bench_seeded (done INTEGER NOT NULL)",
        "INSERT INTO bench_seeded VALUES (1)",
    ] {
        conn.rows(sql).await.unwrap();
    }
}

/// The baseline: the statements that read the whole history, as `/api/stats` ran them
/// before rollups (per scanner, per source, by day, age percentiles).
fn history_statements(backend: Backend) -> [&'static str; 4] {
    const BY_SCANNER: &str = "SELECT scanner, count(*), sum(item_count), sum(revoked),
        sum(already_revoked), sum(expired), sum(unknown), sum(not_ours) FROM reports GROUP BY scanner";
    const BY_SOURCE: &str = "SELECT source, count(*),
        count(*) FILTER (WHERE outcome = 'revoked'), count(*) FILTER (WHERE outcome = 'already_revoked'),
        count(*) FILTER (WHERE outcome = 'expired'), count(*) FILTER (WHERE outcome = 'unknown')
        FROM report_items GROUP BY source ORDER BY 2 DESC LIMIT 20";
    match backend {
        Backend::Postgres => [
            BY_SCANNER,
            BY_SOURCE,
            "SELECT (received_at AT TIME ZONE 'UTC')::date, count(*), sum(item_count), sum(revoked)
             FROM reports WHERE received_at >= now() - interval '30 days' GROUP BY 1",
            "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY ms), percentile_disc(0.95) WITHIN GROUP (ORDER BY ms)
             FROM (SELECT (extract(epoch FROM revoked_at - created_at) * 1000)::int8 AS ms
                   FROM tokens WHERE revoked_by IS NOT NULL) a",
        ],
        Backend::Sqlite => [
            BY_SCANNER,
            BY_SOURCE,
            "SELECT date(received_at / 1000.0, 'unixepoch'), count(*), sum(item_count), sum(revoked)
             FROM reports WHERE received_at >= (unixepoch() - 30 * 86400) * 1000 GROUP BY 1",
            "WITH a AS (SELECT revoked_at - created_at AS ms FROM tokens WHERE revoked_by IS NOT NULL),
                  r AS (SELECT ms, row_number() OVER (ORDER BY ms) AS rn, count(*) OVER () AS n FROM a)
             SELECT (SELECT ms FROM r WHERE rn = (n + 1) / 2), (SELECT ms FROM r WHERE rn = (19 * n + 19) / 20)",
        ],
    }
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(args));
}

async fn run(args: Args) {
    let dir = tempfile::tempdir().unwrap();
    let migrations = schema_version(args.backend);
    let (db_url, seeded) = database(&args, migrations).await;
    let plan = Plan::new(args.tokens, args.items);
    let mut settings = Settings::new(
        &db_url,
        vec![ScannerSpec {
            name: "github".into(),
            source: revoker_fixture_keys(dir.path()),
        }],
    );
    settings.retention = None;
    let app = Application::build(settings).await.expect("server starts");
    let store = Arc::clone(&app.state().store);
    let seed_secs = if seeded {
        println!("reusing the seeded database ({db_url})");
        0.0
    } else {
        println!(
            "seeding {} tokens and {} items ({} reports) on {:?}…",
            args.tokens,
            plan.reports * ITEMS_PER_REPORT,
            plan.reports,
            args.backend
        );
        let started = Instant::now();
        let concurrency = if args.backend == Backend::Postgres {
            2
        } else {
            1
        };
        seed(&store, &plan, concurrency).await;
        if args.backend == Backend::Postgres {
            let mut conn = sqlx::PgConnection::connect(&db_url).await.unwrap();
            sqlx::query("VACUUM ANALYZE")
                .execute(&mut conn)
                .await
                .unwrap();
        }
        mark_seeded(&db_url).await;
        let secs = started.elapsed().as_secs_f64();
        println!("seeded in {secs:.0}s");
        secs
    };

    let admin = format!("http://127.0.0.1:{}/api/stats", app.admin_port());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));
    let client = reqwest::Client::new();
    let mut took = Vec::with_capacity(args.calls);
    let mut last = serde_json::Value::Null;
    for i in 0..args.calls + 3 {
        let started = Instant::now();
        let response = client.get(&admin).send().await.expect("stats answers");
        assert_eq!(response.status(), 200, "/api/stats");
        last = response.json().await.expect("a JSON document");
        if i >= 3 {
            took.push(ms(started.elapsed()));
        }
    }
    took.sort_by(f64::total_cmp);
    let (p50, p95) = (percentile(&took, 0.5), percentile(&took, 0.95));

    // The baseline, in this process on this database.
    let mut conn = Conn::open(&db_url).await.unwrap();
    let baseline_calls = 5;
    let mut baseline = Vec::with_capacity(baseline_calls);
    for _ in 0..baseline_calls {
        let started = Instant::now();
        for sql in history_statements(args.backend) {
            conn.rows(sql).await.expect(sql);
        }
        baseline.push(ms(started.elapsed()));
    }
    baseline.sort_by(f64::total_cmp);
    let baseline_p50 = percentile(&baseline, 0.5);

    let totals = &last["totals"];
    println!();
    println!(
        "{:?}: {} tokens, {} items in {} reports; totals in the document: {} reports, {} items, {} revoked",
        args.backend,
        args.tokens,
        plan.reports * ITEMS_PER_REPORT,
        plan.reports,
        totals["reports"],
        totals["items"],
        totals["revoked"],
    );
    println!(
        "GET /api/stats over HTTP, {} calls: p50 {p50:.1} ms, p95 {p95:.1} ms (target p50 ≤ 50 ms: {})",
        args.calls,
        if p50 <= 50.0 { "met" } else { "NOT met" }
    );
    println!(
        "baseline, the whole-history statements alone, {baseline_calls} calls: p50 {baseline_p50:.1} ms"
    );
    println!(
        "ratio /api/stats ÷ baseline (p50): {:.3}",
        p50 / baseline_p50
    );

    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let backend = args.backend.name();
    let file = out.join(format!("stats-{backend}.json"));
    std::fs::write(
        &file,
        serde_json::to_string_pretty(&serde_json::json!({
            "backend": backend,
            "tokens": args.tokens,
            "items": plan.reports * ITEMS_PER_REPORT,
            "reports": plan.reports,
            "calls": args.calls,
            "p50_ms": p50,
            "p95_ms": p95,
            "baseline_p50_ms": baseline_p50,
            "seed_secs": seed_secs,
        }))
        .unwrap(),
    )
    .unwrap();
    println!("wrote {}", file.display());
    let _ = stop_tx.send(());
    let _ = server.await;
}

/// A key file with one key, for the scanner the server insists on (stats need none).
fn revoker_fixture_keys(dir: &std::path::Path) -> String {
    use p256::pkcs8::{EncodePublicKey, LineEnding};
    let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let path = dir.join("keys.json");
    std::fs::write(
        &path,
        serde_json::json!({"public_keys": [{"key_identifier": "k", "key": pem, "is_current": true}]})
            .to_string(),
    )
    .unwrap();
    path.display().to_string()
}
