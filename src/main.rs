//! The `revoker` binary: parse the CLI, set up logging, dispatch.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use secrecy::ExposeSecret;

use revoker::cli::{
    read_token_arg, Cli, Command, DbArgs, KeysCommand, NotifyCommand, ReplayArgs, TokenCommand,
};
use revoker::config::{redact_url, Settings};
use revoker::replay::{self, Target};
use revoker::startup::{shutdown_signal, Application};
use revoker::store::{self, NewToken, RevocationStore};
use revoker::token::Token;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Token(TokenCommand::Check { token }) = &cli.command {
        return check(token);
    }
    revoker::telemetry::init("info");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let app = Application::build(Settings::try_from(*args)?).await?;
            app.run_until_stopped(shutdown_signal()).await?;
            tracing::info!("stopped");
            Ok(())
        }
        Command::Migrate(db) => {
            open(&db).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Token(TokenCommand::Mint(args)) => {
            let owner = args.owner.trim();
            if owner.is_empty() || owner.len() > 200 || owner.chars().any(char::is_control) {
                anyhow::bail!("--owner must be 1 to 200 printable characters");
            }
            let ttl = chrono::Duration::from_std(args.ttl).context("--ttl is too large")?;
            if ttl <= chrono::Duration::zero() {
                anyhow::bail!("--ttl must be greater than 0");
            }
            let store = open(&args.db).await?;
            let token = Token::generate();
            let now = chrono::Utc::now();
            let expires_at = now.checked_add_signed(ttl).context("--ttl is too large")?;
            store
                .insert_token(&NewToken {
                    hash: token.hash(),
                    owner: owner.to_owned(),
                    created_at: now,
                    expires_at,
                })
                .await
                .context("cannot store the token")?;
            tracing::info!(token = %token.hash().prefix(), owner, %expires_at, "minted token");
            println!("{}", token.expose_secret());
            Ok(())
        }
        Command::Token(TokenCommand::Check { .. }) => unreachable!("handled before the runtime"),
        Command::Replay(args) => replay(args).await,
        Command::Keys(KeysCommand::Generate { out, key_id }) => generate_key(&out, key_id),
        Command::Notify(command) => notify(command).await,
    }
}

/// `revoker notify …`.
async fn notify(command: NotifyCommand) -> anyhow::Result<()> {
    use revoker::store::{NotificationStatus, Requeue};
    match command {
        NotifyCommand::Run { notify, db } => {
            let settings = notify.settings()?.context(
                "--notify-webhook (REVOKER_NOTIFY_WEBHOOK) is required: where to send notifications",
            )?;
            let store = open_existing(&db).await?;
            let notifier = revoker::notify::Notifier::new(store.clone(), settings, None)?;
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
                status.as_deref().and_then(NotificationStatus::parse)
            };
            let store = open_existing(&db).await?;
            let rows = store.list_notifications(status, limit).await?;
            let mut out = std::io::stdout().lock();
            use std::io::Write;
            if !json {
                writeln!(
                    out,
                    "{:>6}  {:<9}  {:>8}  {:<12}  {:<24}  {:<20}  last error / where found",
                    "id", "status", "attempts", "token hash", "owner", "revoked at"
                )?;
            }
            for n in &rows {
                if json {
                    serde_json::to_writer(
                        &mut out,
                        &serde_json::json!({
                            "id": n.id,
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
                    let detail = n.last_error.clone().unwrap_or_else(|| n.url.clone());
                    writeln!(
                        out,
                        "{:>6}  {:<9}  {:>8}  {:<12}  {:<24}  {:<20}  {}",
                        n.id,
                        n.status.as_str(),
                        n.attempts,
                        n.token_hash.prefix(),
                        n.owner.chars().take(24).collect::<String>(),
                        n.revoked_at.format("%Y-%m-%d %H:%M:%S"),
                        detail
                    )?;
                }
            }
            Ok(())
        }
        NotifyCommand::Retry { id, failed, db } => {
            let store = open_existing(&db).await?;
            let now = chrono::Utc::now();
            if failed {
                let n = store.requeue_failed(now).await?;
                println!("re-queued {n} failed notification(s)");
                return Ok(());
            }
            let id = id.expect("clap requires an id or --failed");
            match store.requeue_notification(id, now).await? {
                Requeue::Requeued => {
                    println!("re-queued notification {id}");
                    Ok(())
                }
                Requeue::NotFound => anyhow::bail!("no notification {id}"),
                Requeue::AlreadyDelivered => {
                    anyhow::bail!("notification {id} was already delivered; it is not sent again")
                }
                Requeue::InFlight(until) => anyhow::bail!(
                    "notification {id} is being sent right now (its worker holds it until {}); \
                     retry after that if it has not been delivered",
                    until.format("%Y-%m-%d %H:%M:%S UTC")
                ),
            }
        }
    }
}

/// Opens an existing revoker database without creating or migrating anything: a
/// mistyped URL must fail loudly, not answer every token "unknown" from an empty file.
async fn open_existing(db: &DbArgs) -> anyhow::Result<std::sync::Arc<dyn RevocationStore>> {
    let url = db.database_url.expose_secret();
    let settings = db.pool_settings(false);
    let store = store::connect(url, &settings).await.with_context(|| {
        format!(
            "cannot open database {} (this command never creates one)",
            redact_url(url)
        )
    })?;
    store.count_reports().await.map_err(|_| {
        anyhow::anyhow!(
            "{} has no revoker tables: check --database-url (this command never creates or migrates a database)",
            redact_url(url)
        )
    })?;
    Ok(store)
}

async fn open(db: &DbArgs) -> anyhow::Result<std::sync::Arc<dyn RevocationStore>> {
    let url = db.database_url.expose_secret();
    let settings = db.pool_settings(true);
    let store = store::connect(url, &settings)
        .await
        .with_context(|| format!("cannot open database {}", redact_url(url)))?;
    store.migrate().await.context("cannot migrate database")?;
    Ok(store)
}

async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let target = match &args.url {
        Some(url) => {
            replay::check_remote_url(url)?;
            let key_path = args.key.as_ref().context("--url needs --key")?;
            Target::Remote {
                url: url.clone(),
                key: replay::load_signing_key(key_path)?,
                key_id: args.key_id.clone().context("--url needs --key-id")?,
                client: reqwest::Client::builder()
                    .timeout(std::time::Duration::from_secs(60))
                    .build()?,
            }
        }
        None => {
            let actor = match (&args.actor, args.dry_run) {
                (Some(a), _) if !a.trim().is_empty() => a.trim().to_owned(),
                (_, true) => "dry-run".to_owned(),
                _ => anyhow::bail!(
                    "say who is replaying: --actor NAME (or REVOKER_ACTOR); it is recorded with the report"
                ),
            };
            Target::Local {
                store: open_existing(&args.db).await?,
                actor,
            }
        }
    };
    let opts = replay::Options {
        files: args.files,
        format: args.format,
        dry_run: args.dry_run,
        json: args.json,
        batch_size: args.batch_size,
        progress: true,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    replay::run(&target, &opts, &mut out).await?;
    use std::io::Write;
    out.flush()?;
    Ok(())
}

fn generate_key(out: &std::path::Path, key_id: Option<String>) -> anyhow::Result<()> {
    let entry = revoker::signature::keys::generate_key_file(out, key_id.as_deref())?;
    println!("{}", serde_json::to_string_pretty(&entry)?);
    eprintln!(
        "wrote {} (keep it secret); add the entry above to the scanner's key file on the receiver",
        out.display()
    );
    Ok(())
}

fn check(arg: &str) -> ExitCode {
    let raw = match read_token_arg(arg) {
        Ok(raw) => raw,
        Err(e) => {
            eprintln!("error: cannot read the token from stdin: {e}");
            return ExitCode::FAILURE;
        }
    };
    match Token::parse(&raw) {
        Ok(t) => {
            println!(
                "ok: well-formed cio_tp_ token (sha256 {})",
                t.hash().to_hex()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("invalid: {e}");
            ExitCode::FAILURE
        }
    }
}
