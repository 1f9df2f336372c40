//! What the benchmarks share: the backend flag, nearest-rank percentiles, milliseconds.

use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

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
