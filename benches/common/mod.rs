//! What the benchmarks share: the backend flag, nearest-rank percentiles, milliseconds.

use std::sync::Arc;
use std::time::Duration;

use revoker::domain::token::Token;
use revoker::store::{NewToken, RevocationStore};

#[allow(dead_code)] // not every benchmark takes --backend
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[allow(dead_code)]
impl Backend {
    /// The value of `--backend`.
    pub fn parse(value: Option<&str>) -> Backend {
        match value {
            Some("sqlite") => Backend::Sqlite,
            Some("postgres") => Backend::Postgres,
            other => panic!("--backend sqlite|postgres, got {other:?}"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Nearest-rank percentile of sorted values (NaN for none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Where PostgreSQL benchmarks create their databases: `REVOKER_BENCH_POSTGRES_URL`, by
/// default the local server's `test` database.
pub fn postgres_admin_url() -> String {
    std::env::var("REVOKER_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// `admin` with its database replaced by `name`.
pub fn postgres_url(admin: &str, name: &str) -> String {
    let mut url = url::Url::parse(admin).unwrap();
    url.set_path(name);
    url.to_string()
}

/// Drops `name` if it exists and creates it empty.
pub async fn recreate_database(conn: &mut sqlx::PgConnection, name: &str) {
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::query(&sql).execute(&mut *conn).await.unwrap();
    }
}

/// Stored tokens a benchmark hands out, each derived from a random key and its index
/// (SHA-256 of both, as letters and digits, with its check digits) when it is needed,
/// instead of kept: a million kept tokens are about 80 MB of the process's resident
/// memory, which a benchmark running the server in its own process would count as the
/// server's.
#[allow(dead_code)] // not every benchmark seeds a pool
pub struct Pool {
    key: [u8; 32],
    pub len: usize,
}

#[allow(dead_code)]
impl Pool {
    /// The `i`th token of the pool.
    pub fn token(&self, i: usize) -> Token {
        use sha2::{Digest, Sha256};
        const ALPHANUMERIC: &[u8; 62] =
            b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let digest = Sha256::new()
            .chain_update(self.key)
            .chain_update((i as u64).to_le_bytes())
            .finalize();
        let random: Vec<u8> = digest[..30]
            .iter()
            .map(|b| ALPHANUMERIC[usize::from(*b) % 62])
            .collect();
        let check = revoker::domain::token::check_digits(&random);
        let text = format!(
            "cio_tp_{}{}",
            std::str::from_utf8(&random).unwrap(),
            std::str::from_utf8(&check).unwrap()
        );
        Token::parse(&text).expect("a derived token is well-formed")
    }
}

/// Stores a [`Pool`] of `n` tokens in chunks.
#[allow(dead_code)] // not every benchmark seeds a pool
pub async fn seed_pool(store: &Arc<dyn RevocationStore>, n: usize) -> Pool {
    let pool = Pool {
        key: rand::random(),
        len: n,
    };
    let now = chrono::Utc::now();
    for start in (0..n).step_by(10_000) {
        let rows: Vec<NewToken> = (start..(start + 10_000).min(n))
            .map(|i| NewToken {
                hash: pool.token(i).hash(),
                owner: "bench/owner".into(),
                created_at: now,
                expires_at: now + chrono::Duration::hours(12),
            })
            .collect();
        store.insert_tokens(&rows).await.expect("seed tokens");
    }
    pool
}

/// Stores `n` tokens in chunks; returns the raw tokens only when `keep` is set.
#[allow(dead_code)] // not every benchmark seeds
pub async fn seed(store: &Arc<dyn RevocationStore>, n: usize, keep: bool) -> Vec<Token> {
    let now = chrono::Utc::now();
    let mut kept = Vec::with_capacity(if keep { n } else { 0 });
    let mut done = 0;
    while done < n {
        let chunk = (n - done).min(10_000);
        let mut rows = Vec::with_capacity(chunk);
        for _ in 0..chunk {
            let t = Token::generate();
            rows.push(NewToken {
                hash: t.hash(),
                owner: "bench/owner".into(),
                created_at: now,
                expires_at: now + chrono::Duration::hours(12),
            });
            if keep {
                kept.push(t);
            }
        }
        store.insert_tokens(&rows).await.expect("seed tokens");
        done += chunk;
    }
    kept
}
