//! `revoker purge`: one pass of the retention purge (what `serve` runs hourly) and exit.

use std::time::Duration;

use clap::Args;

use revoker::config::defaults;

use super::db::{open_current, DbArgs};

#[derive(Debug, Clone, Args)]
pub struct PurgeArgs {
    /// Overwrite url, source and type of every report item and notification older than
    /// this with "(purged)" (GitHub's partner agreement: within 30 days). Hashes,
    /// outcomes, counts and timestamps stay.
    #[arg(long, env = "REVOKER_RETENTION", default_value = defaults::RETENTION, value_parser = humantime::parse_duration)]
    pub retention: Duration,

    #[command(flatten)]
    pub db: DbArgs,
}

pub async fn run(args: PurgeArgs) -> anyhow::Result<()> {
    if args.retention.is_zero() {
        anyhow::bail!("--retention must be longer than 0");
    }
    let store = open_current(&args.db).await?;
    let purged = revoker::retention::purge(store.as_ref(), args.retention).await?;
    let retention = humantime::format_duration(args.retention);
    println!(
        "purged url, source and type older than {retention}: {} report(s) ({} item(s)), {} notification(s); deleted {} once-per-body claim(s) older than 8 days",
        purged.reports, purged.items, purged.notifications, purged.bodies
    );
    Ok(())
}
