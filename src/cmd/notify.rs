//! `revoker notify run|list|retry`: the owner-notification outbox by hand.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use secrecy::SecretString;

use revoker::domain::terminal::terminal_safe;
use revoker::notify::{defaults, Notifier, NotifySettings};
use revoker::store::{Clock, NotificationStatus, Requeue};

use super::db::{open_existing, DbArgs};

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Send every notification that is due, round after round until none is due, print
    /// what happened and exit (what the worker in `serve` does all the time). A failed
    /// attempt is due again after its backoff: retried by this run only if that ends
    /// before the run does. Exit 1 if any notification is still pending or failed.
    Run {
        #[command(flatten)]
        notify: NotifyArgs,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List notifications, newest first.
    List {
        /// Only this status: pending, delivered or failed.
        #[arg(long, value_parser = status_parser())]
        status: Option<NotificationStatus>,
        /// Shorthand for --status failed.
        #[arg(long, conflicts_with = "status")]
        failed: bool,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Re-queue a notification (pending or failed) to be sent now with a fresh attempt
    /// count, or every failed one with --failed. One a worker is sending right now is
    /// refused until its lease ends.
    #[command(group(clap::ArgGroup::new("which").args(["id", "failed"]).required(true)))]
    Retry {
        /// The notification's id as `revoker notify list` shows it and the webhook got
        /// it (`Idempotency-Key`, a UUID); its row number (`row` in `list --json`)
        /// works too.
        id: Option<String>,
        /// Every failed notification.
        #[arg(long)]
        failed: bool,
        #[command(flatten)]
        db: DbArgs,
    },
}

/// Where and how owner notifications are sent.
#[derive(Debug, Clone, Args)]
pub struct NotifyArgs {
    /// Owner-notification webhook: each revoked token's owner is told once, by a
    /// signed JSON POST here (https, or http to localhost). `serve` without it queues
    /// notifications in the database and sends none; `notify run` needs it.
    #[arg(long, env = "REVOKER_NOTIFY_WEBHOOK")]
    pub notify_webhook: Option<String>,

    /// Secret for the HMAC-SHA256 signature of every notification
    /// (header Revoker-Signature: sha256=<hex>). Required with --notify-webhook.
    #[arg(long, env = "REVOKER_NOTIFY_SECRET", hide_env_values = true)]
    pub notify_secret: Option<SecretString>,

    /// Timeout of one notification request.
    #[arg(long, env = "REVOKER_NOTIFY_TIMEOUT", default_value = defaults::TIMEOUT, value_parser = humantime::parse_duration)]
    pub notify_timeout: Duration,

    /// Attempts before a notification is marked failed.
    #[arg(long, env = "REVOKER_NOTIFY_MAX_ATTEMPTS", default_value_t = defaults::MAX_ATTEMPTS, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub notify_max_attempts: u32,

    /// Delay before the second attempt; doubles per attempt (with jitter) up to
    /// --notify-backoff-max.
    #[arg(long, env = "REVOKER_NOTIFY_BACKOFF", default_value = defaults::BACKOFF, value_parser = humantime::parse_duration)]
    pub notify_backoff: Duration,

    /// Longest delay between two attempts (at most 30d).
    #[arg(long, env = "REVOKER_NOTIFY_BACKOFF_MAX", default_value = defaults::BACKOFF_MAX, value_parser = humantime::parse_duration)]
    pub notify_backoff_max: Duration,
}

/// `serve`'s own notification flag.
#[derive(Debug, Clone, Args)]
pub struct NotifyPollArgs {
    /// How often `serve` looks for due notifications (it also looks right after a
    /// delivery revoked something).
    #[arg(long, env = "REVOKER_NOTIFY_POLL_INTERVAL", default_value = defaults::POLL_INTERVAL, value_parser = humantime::parse_duration)]
    pub notify_poll_interval: Duration,
}

impl NotifyArgs {
    /// `None` when no webhook is configured; an error when only half is. `poll` is
    /// `serve`'s --notify-poll-interval (the default for `notify run`, which never polls).
    pub fn settings(&self, poll: Option<Duration>) -> anyhow::Result<Option<NotifySettings>> {
        use secrecy::ExposeSecret;
        let (webhook, secret) = match (&self.notify_webhook, &self.notify_secret) {
            (None, None) => return Ok(None),
            (Some(w), Some(s)) => (w, s),
            (Some(_), None) => anyhow::bail!(
                "--notify-webhook needs --notify-secret (REVOKER_NOTIFY_SECRET): notifications are always signed"
            ),
            (None, Some(_)) => {
                anyhow::bail!("--notify-secret is set but --notify-webhook is not")
            }
        };
        let mut settings = NotifySettings::new(webhook, secret.expose_secret());
        settings.timeout = self.notify_timeout;
        settings.max_attempts = self.notify_max_attempts;
        settings.backoff_base = self.notify_backoff;
        settings.backoff_max = self.notify_backoff_max;
        if let Some(poll) = poll {
            settings.poll_interval = poll;
        }
        settings.validate()?;
        Ok(Some(settings))
    }
}

/// `revoker notify …`.
pub async fn run(command: NotifyCommand) -> anyhow::Result<()> {
    match command {
        NotifyCommand::Run { notify, db } => {
            let settings = notify.settings(None)?.context(
                "--notify-webhook (REVOKER_NOTIFY_WEBHOOK) is required: where to send notifications",
            )?;
            let store = open_existing(&db).await?;
            let notifier = Notifier::new(store.clone(), settings, None)?;
            let summary = notifier
                .run_once()
                .await
                .context("cannot send notifications")?;
            let counts = store.notification_counts().await?;
            println!(
                "delivered {}, to retry later {}, failed now {}; in the database: {} pending, {} failed, {} delivered",
                summary.delivered,
                summary.retrying,
                summary.failed,
                counts.pending,
                counts.failed,
                counts.delivered
            );
            if counts.pending > 0 || counts.failed > 0 {
                anyhow::bail!(
                    "{} notification(s) pending and {} failed; see `revoker notify list`",
                    counts.pending,
                    counts.failed
                );
            }
            Ok(())
        }
        NotifyCommand::List {
            status,
            failed,
            limit,
            json,
            db,
        } => {
            let status = if failed {
                Some(NotificationStatus::Failed)
            } else {
                status
            };
            let store = open_existing(&db).await?;
            let rows = store.list_notifications(status, limit).await?;
            let mut out = std::io::stdout().lock();
            use std::io::Write;
            if !json {
                writeln!(
                    out,
                    "{:<36}  {:<9}  {:>8}  {:<12}  {:<24}  {:<20}  last error / where found",
                    "id", "status", "attempts", "token hash", "owner", "revoked at"
                )?;
            }
            for n in &rows {
                if json {
                    serde_json::to_writer(
                        &mut out,
                        &serde_json::json!({
                            "id": n.public_id,
                            "row": n.id,
                            "status": n.status,
                            "attempts": n.attempts,
                            "token_hash_prefix": n.token_hash.prefix(),
                            "owner": n.owner,
                            "scanner": n.scanner,
                            "url": n.url,
                            "source": n.source,
                            "revoked_at": n.revoked_at,
                            "expired": n.expired,
                            "next_attempt_at": n.next_attempt_at,
                            "last_error": n.last_error,
                            "delivered_at": n.delivered_at,
                            "report_id": n.report_id,
                        }),
                    )?;
                    writeln!(out)?;
                } else {
                    let detail = terminal_safe(n.last_error.as_deref().unwrap_or(&n.url));
                    writeln!(
                        out,
                        "{:<36}  {:<9}  {:>8}  {:<12}  {:<24}  {:<20}  {}",
                        n.public_id,
                        n.status.as_str(),
                        n.attempts,
                        n.token_hash.prefix(),
                        terminal_safe(&n.owner.chars().take(24).collect::<String>()),
                        n.revoked_at.format("%Y-%m-%d %H:%M:%S"),
                        detail
                    )?;
                }
            }
            Ok(())
        }
        NotifyCommand::Retry { id, failed, db } => {
            let store = open_existing(&db).await?;
            // The database's clock judges leases and stamps the due time.
            let now = Clock::Database;
            if failed {
                let n = store.requeue_failed(now).await?;
                println!("re-queued {n} failed notification(s)");
                return Ok(());
            }
            let given = id.expect("clap requires an id or --failed");
            // Echoed in messages: whatever was pasted, never a raw token nor a control
            // character.
            let id_shown = revoker::domain::redact::redact_tokens(given.trim());
            let id_shown = terminal_safe(&id_shown);
            // The public id (a UUID), or the row number for scripts written before it.
            let id = match given.trim().parse::<i64>() {
                Ok(row) => row,
                Err(_) => match store.notification_by_public_id(&given).await? {
                    Some(n) => n.id,
                    None => anyhow::bail!("no notification {id_shown}"),
                },
            };
            match store.requeue_notification(id, now).await? {
                Requeue::Requeued => {
                    println!("re-queued notification {id_shown}");
                    Ok(())
                }
                Requeue::NotFound => anyhow::bail!("no notification {id_shown}"),
                Requeue::AlreadyDelivered => {
                    anyhow::bail!(
                        "notification {id_shown} was already delivered; it is not sent again"
                    )
                }
                Requeue::InFlight(until) => anyhow::bail!(
                    "notification {id_shown} is being sent right now (its worker holds it until {}); \
                     retry after that if it has not been delivered",
                    until.format("%Y-%m-%d %H:%M:%S UTC")
                ),
            }
        }
    }
}

/// `--status`: the statuses' own names, listed in `--help` and errors.
fn status_parser() -> impl clap::builder::TypedValueParser<Value = NotificationStatus> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(<NotificationStatus as strum::VariantNames>::VARIANTS)
        .map(|s| {
            s.parse::<NotificationStatus>()
                .expect("a listed status parses")
        })
}
