//! `revoker migrate`: apply pending migrations, say how many, and exit.

use anyhow::Context;
use revoker::store::Pooler;
use secrecy::ExposeSecret;

use super::db::{DbArgs, MigrateUrlArgs};

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub db: DbArgs,

    #[command(flatten)]
    pub migrate: MigrateUrlArgs,
}

/// Migrates over `--migrate-database-url` when set, else `--database-url` (behind a
/// transaction-mode pooler: only "nothing pending" is answered, anything else refused;
/// see `--db-pooler`).
pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let db = &args.db;
    // A migrate URL is a direct connection, whatever --db-pooler says of --database-url.
    let (url, settings) = match args.migrate.url() {
        Some(direct) => (direct, revoker::startup::direct(&db.pool_settings(true))),
        None => (db.database_url.expose_secret(), db.pool_settings(true)),
    };
    let store = revoker::startup::connect(url, &settings).await?;
    let before = store.applied_migrations().await?;
    // Behind a transaction-mode pooler nothing can migrate; an up-to-date database
    // needs nothing, and one from a newer release no direct URL would help (anything
    // else is refused by `migrate`, saying what to do).
    let known = store.known_migrations();
    if settings.pooler == Pooler::Transaction && before >= known {
        revoker::startup::refuse_newer_schema(url, before, known)?;
        println!("no migrations pending ({before} applied)");
        return Ok(());
    }
    store.migrate().await.context("cannot migrate database")?;
    let after = store.applied_migrations().await?;
    match after - before {
        0 => println!("no migrations pending ({after} applied)"),
        n => println!("applied {n} migration(s) ({after} applied in all)"),
    }
    Ok(())
}
