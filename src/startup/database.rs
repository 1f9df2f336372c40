//! Opening the database for a command: [`connect`] (an error names the database,
//! password masked), and [`open_and_migrate`], what `serve` and `token mint` start with
//! (`revoker migrate` connects and migrates on its own): migrations over
//! `--migrate-database-url` when set (a direct connection, whatever `--db-pooler` says),
//! and behind a transaction-mode pooler without one, a check that the database is
//! already migrated (nothing can migrate through it).

use std::sync::Arc;

use anyhow::Context;

use crate::domain::redact::redact_url;
use crate::store::{self, RevocationStore};

/// Opens the store at `url`; an error names the database (password masked).
pub async fn connect(
    url: &str,
    pool: &store::PoolSettings,
) -> anyhow::Result<Arc<dyn RevocationStore>> {
    store::connect(url, pool)
        .await
        .with_context(|| format!("cannot open database {}", redact_url(url)))
}

/// `pool` for a direct connection: the settings of a migrate URL, which never goes
/// through a pooler.
pub fn direct(pool: &store::PoolSettings) -> store::PoolSettings {
    store::PoolSettings {
        pooler: store::Pooler::None,
        ..pool.clone()
    }
}

/// Refuses a database with more migrations applied than this binary knows: a schema
/// from a newer release, which sqlx's migrator refuses on a direct connection, checked
/// here where nothing migrates (behind a transaction-mode pooler).
pub fn refuse_newer_schema(url: &str, applied: i64, known: i64) -> anyhow::Result<()> {
    if applied > known {
        anyhow::bail!(
            "{} has {applied} migrations applied, more than the {known} this binary knows: \
             it belongs to a newer release of revoker",
            redact_url(url)
        );
    }
    Ok(())
}

/// Opens the database at `url` (a SQLite file is created if `pool` says so) and
/// applies pending migrations: what `serve`, `token mint` and `token import` start with.
pub async fn open_and_migrate(
    url: &str,
    migrate_url: Option<&str>,
    pool: &store::PoolSettings,
) -> anyhow::Result<Arc<dyn RevocationStore>> {
    if let Some(migrate_url) = migrate_url {
        // Migrations need a session of their own (an advisory lock, prepared
        // statements): over their own URL, on one connection closed afterwards.
        let one = store::PoolSettings {
            max_connections: 1,
            ..direct(pool)
        };
        connect(migrate_url, &one)
            .await?
            .migrate()
            .await
            .with_context(|| format!("cannot migrate database {}", redact_url(migrate_url)))?;
    }
    let store = connect(url, pool).await?;
    match migrate_url {
        None if pool.pooler == store::Pooler::Transaction => {
            // Nothing can migrate through the pooler; an operator who migrated over a
            // direct URL beforehand (`revoker migrate`) needs none here.
            let (applied, known) = (store.applied_migrations().await?, store.known_migrations());
            if applied < known {
                anyhow::bail!(
                    "{} has {applied} of this binary's {known} migrations applied, and migrations \
                     cannot run through a pooler in transaction mode (--db-pooler transaction): \
                     give a direct URL to PostgreSQL with --migrate-database-url \
                     (REVOKER_MIGRATE_DATABASE_URL), or run `revoker migrate` over one first",
                    redact_url(url)
                );
            }
            refuse_newer_schema(url, applied, known)?;
        }
        None => store.migrate().await.context("cannot migrate database")?,
        // Migrated elsewhere: check that it was this database.
        Some(direct) => {
            let (applied, known) = (store.applied_migrations().await?, store.known_migrations());
            if applied < known {
                anyhow::bail!(
                    "{} has {applied} of this binary's {known} migrations applied after migrating {}: \
                     --migrate-database-url must name the same database as --database-url",
                    redact_url(url),
                    redact_url(direct)
                );
            }
        }
    }
    Ok(store)
}
