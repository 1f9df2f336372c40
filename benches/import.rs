//! Benchmark of `revoker token import` (issue 27): a registry's export of a million
//! tokens, imported into a fresh database.
//!
//! ```text
//! cargo bench --bench import -- [--backend sqlite|postgres|both] [--quick] [--lines N]
//! ```
//!
//! Writes N JSON lines (default 1,000,000; `--quick` 20,000) to a temporary file: the
//! three formats in turn, a thousand owners, every `created_at` given, `expires_at` null,
//! absent or set, one line in a hundred with `revoked_at`. Then, per backend, on a fresh
//! database: the import as the command runs it (`revoker::import::import`: read, parse,
//! check, batches of 5,000, classification), the same file again (every line unchanged),
//! and, on another fresh database, the *floor*: the store's import statement alone on
//! the same rows built in memory (no reading, no parsing, no classification), so
//! "import / floor" says what the line handling costs above the writes. Target: ≤ 60 s
//! per backend for 1,000,000 lines (printed, not asserted).
//!
//! PostgreSQL: `REVOKER_BENCH_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); fresh databases are created and dropped.
//! Exits non-zero if an import's summary is not what the file holds (the smoke check).

// The backend flag and the PostgreSQL helpers (not the percentiles).
#[allow(dead_code)]
mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use sqlx::Connection;

use common::Backend;
use revoker::domain::format::FORMATS;
use revoker::domain::TokenHash;
use revoker::import::{import, Summary, BATCH};
use revoker::startup::open_and_migrate;
use revoker::store::{ImportToken, PoolSettings, RevocationStore, NEVER_EXPIRES};

struct Args {
    backends: Vec<Backend>,
    quick: bool,
    lines: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        backends: vec![Backend::Sqlite, Backend::Postgres],
        quick: false,
        lines: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--backend" => {
                args.backends = match it.next().as_deref() {
                    Some("both") => vec![Backend::Sqlite, Backend::Postgres],
                    other => vec![Backend::parse(other)],
                }
            }
            "--quick" => args.quick = true,
            "--lines" => args.lines = it.next().and_then(|n| n.parse().ok()).expect("--lines N"),
            // cargo bench passes --bench.
            _ => {}
        }
    }
    if args.lines == 0 {
        args.lines = if args.quick { 20_000 } else { 1_000_000 };
    }
    args
}

/// Token `n` of the export, as the store takes it and as its JSON line says it.
fn token(n: usize, epoch: DateTime<Utc>) -> (ImportToken, String) {
    let format = FORMATS[n % FORMATS.len()].name;
    let created_at = epoch + Duration::seconds(n as i64);
    let expires_at = match n % 3 {
        0 => None,
        1 => Some(created_at + Duration::days(90)),
        _ => None,
    };
    let revoked_at = (n % 100 == 7).then(|| created_at + Duration::hours(1));
    let token = ImportToken {
        hash: TokenHash::of(&format!("bench token {n}")),
        owner: format!("crate-{}", n % 1_000),
        format,
        created_at,
        expires_at: expires_at.unwrap_or(NEVER_EXPIRES),
        revoked_at,
    };
    let time = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut line = format!(
        r#"{{"sha256": "{}", "format": "{format}", "owner": "{}", "created_at": "{}""#,
        token.hash.to_hex(),
        token.owner,
        time(created_at)
    );
    match (n % 3, expires_at) {
        (_, Some(at)) => line += &format!(r#", "expires_at": "{}""#, time(at)),
        (0, None) => line += r#", "expires_at": null"#,
        _ => {}
    }
    if let Some(at) = revoked_at {
        line += &format!(r#", "revoked_at": "{}""#, time(at));
    }
    line.push('}');
    (token, line)
}

/// A fresh database: its URL and, on PostgreSQL, what to drop afterwards.
async fn fresh(backend: Backend, dir: &std::path::Path, name: &str) -> (String, Option<String>) {
    match backend {
        Backend::Sqlite => (
            format!("sqlite://{}", dir.join(format!("{name}.db")).display()),
            None,
        ),
        Backend::Postgres => {
            let admin = common::postgres_admin_url();
            let name = format!("revoker_bench_{name}_{}", std::process::id());
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("PostgreSQL reachable");
            common::recreate_database(&mut conn, &name).await;
            (common::postgres_url(&admin, &name), Some(name))
        }
    }
}

async fn drop_database(name: Option<String>) {
    if let Some(name) = name {
        let admin = common::postgres_admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

async fn open(url: &str) -> Arc<dyn RevocationStore> {
    open_and_migrate(url, None, &PoolSettings::default())
        .await
        .expect("database opens and migrates")
}

/// Imports `file` into `store`: the summary and the seconds it took.
async fn run_import(store: &dyn RevocationStore, file: &std::path::Path) -> (Summary, f64) {
    let input = std::fs::File::open(file).unwrap();
    let started = Instant::now();
    let summary = import(store, input, Utc::now(), BATCH, |_| {}, |_| {})
        .await
        .expect("the import finishes");
    (summary, started.elapsed().as_secs_f64())
}

struct Row {
    backend: Backend,
    import: f64,
    again: f64,
    floor: f64,
    ok: bool,
}

async fn bench(
    backend: Backend,
    args: &Args,
    dir: &std::path::Path,
    file: &std::path::Path,
) -> Row {
    let lines = args.lines as u64;
    let revoked = (0..args.lines).filter(|n| n % 100 == 7).count();

    let (url, name) = fresh(backend, dir, "import").await;
    let store = open(&url).await;
    let (first, import_secs) = run_import(store.as_ref(), file).await;
    let (again, again_secs) = run_import(store.as_ref(), file).await;
    let stored_revoked = store
        .list_tokens(
            None,
            Some(revoker::store::TokenStatus::Revoked),
            Utc::now(),
            u32::MAX,
        )
        .await
        .unwrap()
        .len();
    drop(store);
    drop_database(name).await;
    let mut ok = true;
    let want_first = Summary {
        lines,
        imported: lines,
        ..Summary::default()
    };
    let want_again = Summary {
        lines,
        unchanged: lines,
        ..Summary::default()
    };
    for (what, got, want) in [("import", first, want_first), ("again", again, want_again)] {
        if got != want {
            eprintln!(
                "FAIL {}: {what} answered {got:?}, expected {want:?}",
                backend.name()
            );
            ok = false;
        }
    }
    if stored_revoked != revoked {
        eprintln!(
            "FAIL {}: {stored_revoked} revoked stored, expected {revoked}",
            backend.name()
        );
        ok = false;
    }

    // The floor: the import statement alone, on the same rows built beforehand.
    let epoch = epoch();
    let rows: Vec<ImportToken> = (0..args.lines).map(|n| token(n, epoch).0).collect();
    let (url, name) = fresh(backend, dir, "floor").await;
    let store = open(&url).await;
    let started = Instant::now();
    for chunk in rows.chunks(BATCH) {
        store.import_tokens(chunk).await.unwrap();
    }
    let floor = started.elapsed().as_secs_f64();
    drop(store);
    drop_database(name).await;
    Row {
        backend,
        import: import_secs,
        again: again_secs,
        floor,
        ok,
    }
}

fn epoch() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
        .unwrap()
        .to_utc()
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let ok = runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("export.jsonl");
        let started = Instant::now();
        {
            let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
            let epoch = epoch();
            for n in 0..args.lines {
                writeln!(out, "{}", token(n, epoch).1).unwrap();
            }
            out.flush().unwrap();
        }
        let size = std::fs::metadata(&file).unwrap().len();
        println!(
            "revoker import benchmark: {} lines ({:.1} MB) written in {:.1} s{}, {} cores",
            args.lines,
            size as f64 / 1e6,
            started.elapsed().as_secs_f64(),
            if args.quick { " (quick)" } else { "" },
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!(
            "{:<9} {:>9} {:>9} {:>11} {:>9} {:>9} {:>12} {:>8}",
            "backend", "lines", "import s", "lines/s", "again s", "floor s", "floor lines/s", "ratio"
        );
        let mut ok = true;
        for &backend in &args.backends {
            let row = bench(backend, &args, dir.path(), &file).await;
            let n = args.lines as f64;
            println!(
                "{:<9} {:>9} {:>9.2} {:>11.0} {:>9.2} {:>9.2} {:>12.0} {:>7.2}x  target ≤ 60 s per 1M lines: {}",
                row.backend.name(),
                args.lines,
                row.import,
                n / row.import,
                row.again,
                row.floor,
                n / row.floor,
                row.import / row.floor,
                if row.import * 1e6 / n <= 60.0 { "met" } else { "MISSED" }
            );
            ok &= row.ok;
        }
        ok
    });
    std::process::exit(if ok { 0 } else { 1 });
}
