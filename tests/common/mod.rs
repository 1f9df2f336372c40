//! Test helpers: real databases, a real loopback key server, real signatures, and the
//! real receiver on port 0.
//!
//! Most tests need one receiver on a fresh database, reading keys from a loopback key
//! server that serves the test keys, and say only what differs:
//!
//! ```ignore
//! let app = TestApp::sqlite().max_body(64 * 1024).start().await;
//! let app = TestApp::builder(kind).notify(settings).start_or_skip().await?; // PostgreSQL may skip
//! ```
//!
//! The [`TestApp`] owns its [`TestDb`] and [`KeyServer`] (`app.db()`, `app.keys()`);
//! `app.another()` starts a second receiver on both. Lower level, for tests that share a
//! database or key server across apps on their own terms or build `Settings` by hand:
//! [`spawn_app`] and [`TestApp::from_settings`]. [`ServeProcess`] is the `revoker serve`
//! binary as a child process; it has the same per-endpoint helpers ([`Endpoints`]).
//!
//! PostgreSQL tests use `REVOKER_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and create a fresh database per test: a
//! copy of one migrated template, or empty for tests about migrating (db.rs).
//! If the server is unreachable they skip with a message on stderr, unless `CI` is set,
//! in which case they fail.
// Each test binary uses a part of these helpers.
#![allow(dead_code, unused_imports)]

mod app;
mod cluster;
mod db;
mod keys;
mod pgbouncer;
mod process;
mod webhook;

pub use app::*;
pub use cluster::*;
pub use db::*;
pub use keys::*;
pub use pgbouncer::*;
pub use process::*;
pub use webhook::*;

use std::io::Write;
use std::sync::Once;
use std::time::{Duration, Instant};

pub fn fixture(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(path)
}

pub fn fixture_string(path: &str) -> String {
    std::fs::read_to_string(fixture(path)).expect("fixture exists")
}

/// A UUIDv7 as both backends give it: lower-case, hyphenated 8-4-4-4-12, version 7,
/// RFC 4122 variant.
pub fn is_uuid_v7(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
        && b[14] == b'7'
        && b"89ab".contains(&b[19])
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Something a test needs is missing (`what`, `how` to provide it): in CI that is a
/// failure; elsewhere a notice on stderr (once per `notice`), and the caller skips.
pub fn skip_unless_ci(notice: &'static Once, what: &str, how: &str) {
    if in_ci() {
        panic!("{what} in CI, where this test must run ({how})");
    }
    notice.call_once(|| {
        // Written straight to stderr so the test harness does not capture it.
        let _ = writeln!(std::io::stderr(), "\n*** SKIPPING: {what} ({how}) ***\n");
    });
}

/// Polls `probe` until what it returns is `done`, and returns that; for conditions
/// nothing signals (rows in a database, the state of a key cache). Panics with `what`
/// and the last value after `within`.
pub async fn eventually<T: std::fmt::Debug>(
    within: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let last = probe().await;
        if done(&last) {
            return last;
        }
        assert!(Instant::now() < deadline, "{what}: {last:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The upper bound, in seconds, of the histogram bucket holding an age of `ms`: the
/// E24 series (1.0, 1.1, 1.2 … 9.1) from 10 ms to 9.1e11 ms; under 10 ms, 10 ms.
pub fn bucket_upper_seconds(ms: i64) -> f64 {
    const E24: [i64; 24] = [
        10, 11, 12, 13, 15, 16, 18, 20, 22, 24, 27, 30, 33, 36, 39, 43, 47, 51, 56, 62, 68, 75, 82,
        91,
    ];
    let bounds: Vec<i64> = (0..11)
        .flat_map(|d| E24.iter().map(move |m| m * 10i64.pow(d)))
        .collect();
    let upper = bounds
        .iter()
        .copied()
        .find(|b| *b > ms)
        .unwrap_or(*bounds.last().unwrap());
    upper as f64 / 1000.0
}

/// `text` and what it reads as with up to `layers` layers of percent-encoding and JSON
/// escapes undone, in every mix, by decoders that are not the service's
/// (`percent-encoding`, and a `\u00XX`/`\\` replacement).
pub fn decodings(text: &str, layers: usize) -> Vec<String> {
    let percent = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let escape = regex::Regex::new(r"\\[uU]00([0-9a-fA-F]{2})").unwrap();
    let json = |s: &str| {
        escape
            .replace_all(&s.replace("\\\\", "\\"), |c: &regex::Captures<'_>| {
                char::from(u8::from_str_radix(&c[1], 16).unwrap()).to_string()
            })
            .into_owned()
    };
    let mut all = vec![text.to_owned()];
    let mut last = all.clone();
    for _ in 0..layers {
        last = last.iter().flat_map(|s| [percent(s), json(s)]).collect();
        all.extend(last.iter().cloned());
    }
    all
}

/// A crates.io trusted-publishing token made as crates.io makes one (from the format's
/// description, not revoker's code): `cio_tp_` + 31 random letters and digits + the XOR
/// of those 31 bytes, modulo 62, as an index into `A-Za-z0-9`.
pub fn trustpub_token() -> String {
    use rand::distributions::{Alphanumeric, DistString};
    let random = Alphanumeric.sample_string(&mut rand::thread_rng(), 31);
    format!("cio_tp_{random}{}", trustpub_check(&random))
}

/// crates.io's check character of 31 random characters.
pub fn trustpub_check(random: &str) -> char {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let xor = random.bytes().fold(0u8, |acc, b| acc ^ b);
    ALPHABET[usize::from(xor) % ALPHABET.len()] as char
}

/// A crates.io API token made as crates.io makes one: `cio` + 32 random letters and
/// digits, no check digit.
pub fn api_token() -> String {
    use rand::distributions::{Alphanumeric, DistString};
    format!(
        "cio{}",
        Alphanumeric.sample_string(&mut rand::thread_rng(), 32)
    )
}

/// Whether any of [`decodings`] of `text` (three layers) holds the last 30 characters
/// of `token`, a token of any format (all secret).
pub fn holds_secret_of(text: &str, token: &str) -> bool {
    let secret = &token[token.len() - 30..];
    decodings(text, 3).iter().any(|d| d.contains(secret))
}

/// Whether any of [`decodings`] of `text` (three layers) holds the 30 random characters
/// of `token`.
pub fn holds_secret(text: &str, token: &revoker::domain::token::Token) -> bool {
    let random = &token.expose_secret()[7..37];
    decodings(text, 3).iter().any(|d| d.contains(random))
}

/// How many PostgreSQL migrations this build embeds (the files in `migrations/postgres`).
pub fn postgres_migrations() -> usize {
    std::fs::read_dir(fixture("../migrations/postgres"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count()
}
