//! `DbArgs`: the database flags every command shares, and opening the store they name.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use secrecy::{ExposeSecret, SecretString};

use revoker::domain::redact::redact_url;
use revoker::startup::open_and_migrate;
use revoker::store::{self, defaults, PoolSettings, Pooler, RevocationStore};

#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Database URL: sqlite://PATH or postgres://USER[:PASS]@HOST[:PORT]/DB. PostgreSQL
    /// with a standby: several hosts in libpq's syntax, HOST1:PORT1,HOST2:PORT2, with
    /// ?target_session_attrs=read-write (the first host that takes writes; found again
    /// after a failover) and connect_timeout=SECONDS. `serve`, `migrate`, `token mint`
    /// and `token import` create a missing SQLite file; the other commands refuse a
    /// database that does not exist (a mistyped path must not look empty).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://revoker.db",
        hide_env_values = true
    )]
    pub database_url: SecretString,

    /// What stands between revoker and PostgreSQL. `none`: a direct connection (or a
    /// pooler in session mode). `transaction`: a pooler in transaction mode, such as
    /// PgBouncer with `pool_mode = transaction`: every statement is sent unnamed inside a
    /// transaction of its own, and migrations need --migrate-database-url.
    #[arg(long, env = "REVOKER_DB_POOLER", value_enum, default_value_t = PoolerArg::None)]
    pub db_pooler: PoolerArg,
}

/// `--db-pooler`'s values (see [`Pooler`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PoolerArg {
    None,
    Transaction,
}

impl From<PoolerArg> for Pooler {
    fn from(p: PoolerArg) -> Pooler {
        match p {
            PoolerArg::None => Pooler::None,
            PoolerArg::Transaction => Pooler::Transaction,
        }
    }
}

/// `--migrate-database-url`, for the commands that migrate (`serve`, `migrate`, `token
/// mint`, `token import`).
#[derive(Debug, Clone, Args)]
pub struct MigrateUrlArgs {
    /// PostgreSQL: run migrations over this URL instead of --database-url. Set it to a
    /// direct connection when --database-url goes through a connection pooler in
    /// transaction mode (--db-pooler transaction): migrations need a session of their own.
    #[arg(long, env = "REVOKER_MIGRATE_DATABASE_URL", hide_env_values = true)]
    pub migrate_database_url: Option<SecretString>,
}

impl MigrateUrlArgs {
    pub fn url(&self) -> Option<&str> {
        self.migrate_database_url
            .as_ref()
            .map(|u| u.expose_secret())
    }
}

/// The connection pool of `serve`, which answers requests from it (one-shot commands
/// use the defaults).
#[derive(Debug, Clone, Args)]
pub struct PoolArgs {
    /// Maximum database connections in the pool.
    #[arg(long, env = "REVOKER_DB_MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS)]
    pub db_max_connections: u32,

    /// How long a delivery waits for a database connection (SQLite: also for the write
    /// lock) before answering 503.
    #[arg(long, env = "REVOKER_DB_TIMEOUT", default_value = defaults::ACQUIRE_TIMEOUT, value_parser = humantime::parse_duration)]
    pub db_timeout: Duration,
}

impl PoolArgs {
    pub fn pool_settings(&self, db: &DbArgs, create_if_missing: bool) -> PoolSettings {
        PoolSettings {
            max_connections: self.db_max_connections,
            acquire_timeout: self.db_timeout,
            create_if_missing,
            pooler: db.db_pooler.into(),
        }
    }
}

impl DbArgs {
    /// The default pool; `create_if_missing` is off for tools that must find an existing
    /// database.
    pub fn pool_settings(&self, create_if_missing: bool) -> PoolSettings {
        PoolSettings {
            create_if_missing,
            pooler: self.db_pooler.into(),
            ..PoolSettings::default()
        }
    }
}

/// Opens an existing revoker database without creating or migrating anything: a
/// mistyped URL must fail loudly, not answer every token "unknown" from an empty file.
pub async fn open_existing(db: &DbArgs) -> anyhow::Result<Arc<dyn RevocationStore>> {
    let url = db.database_url.expose_secret();
    let settings = db.pool_settings(false);
    let store = store::connect(url, &settings).await.with_context(|| {
        format!(
            "cannot open database {} (this command never creates one)",
            redact_url(url)
        )
    })?;
    match store.probe_tables().await {
        Ok(_) => {}
        // Through a transaction-mode pooler without --db-pooler: say that, not "no tables".
        Err(e @ store::StoreError::Pooler) => return Err(e.into()),
        Err(_) => anyhow::bail!(
            "{} has no revoker tables: check --database-url (this command never creates or migrates a database)",
            redact_url(url)
        ),
    }
    Ok(store)
}

/// [`open_existing`], refused unless every migration this binary knows is applied: a
/// command that writes must not run on half its schema, and migrating is `revoker
/// migrate`'s (other instances may still run an older binary that a newer schema stops).
pub async fn open_current(db: &DbArgs) -> anyhow::Result<Arc<dyn RevocationStore>> {
    let store = open_existing(db).await?;
    let (applied, known) = (store.applied_migrations().await?, store.known_migrations());
    if applied < known {
        anyhow::bail!(
            "{} has {applied} of this binary's {known} migrations applied: run `revoker migrate` first",
            redact_url(db.database_url.expose_secret())
        );
    }
    Ok(store)
}

/// Opens (creating a SQLite file if missing) and migrates (over `--migrate-database-url`
/// when set).
pub async fn open(
    db: &DbArgs,
    migrate: &MigrateUrlArgs,
) -> anyhow::Result<Arc<dyn RevocationStore>> {
    open_and_migrate(
        db.database_url.expose_secret(),
        migrate.url(),
        &db.pool_settings(true),
    )
    .await
}
