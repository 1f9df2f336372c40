//! `revoker migrate`: apply pending migrations and exit.

use super::db::{open, DbArgs};

pub async fn run(db: DbArgs) -> anyhow::Result<()> {
    open(&db).await?;
    tracing::info!("migrations applied");
    Ok(())
}
