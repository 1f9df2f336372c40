//! `revoker migrate`: apply pending migrations, say how many, and exit.

use anyhow::Context;
use secrecy::ExposeSecret;

use revoker::domain::redact::redact_url;

use super::db::DbArgs;

pub async fn run(db: DbArgs) -> anyhow::Result<()> {
    let url = db.database_url.expose_secret();
    let store = revoker::store::connect(url, &db.pool_settings(true))
        .await
        .with_context(|| format!("cannot open database {}", redact_url(url)))?;
    let before = store.applied_migrations().await?;
    store.migrate().await.context("cannot migrate database")?;
    let after = store.applied_migrations().await?;
    match after - before {
        0 => println!("no migrations pending ({after} applied)"),
        n => println!("applied {n} migration(s) ({after} applied in all)"),
    }
    Ok(())
}
