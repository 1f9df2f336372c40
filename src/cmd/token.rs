//! `revoker token mint`, `check`, `show`, `revoke` and `list`: an operator's look at one
//! token (and their hand on it) without `sqlite3` or `psql`. A raw token given to
//! `show` or `revoke` is only hashed; what is printed names tokens by their hash.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use chrono::Utc;

use revoker::domain::alert::{NewReport, MANUAL_SCANNER};
use revoker::domain::format::cio_tp;
use revoker::domain::terminal::terminal_safe;
use revoker::domain::{Format, Formats, Outcome, Token};
use revoker::replay::REPLAY_SCANNER;
use revoker::store::{
    NewToken, NotificationStatus, RecordOptions, RevocationStore, TokenRecord, TokenStatus,
};

use super::db::{open, open_current, open_existing, DbArgs, MigrateUrlArgs};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a token: prints it once on stdout, stores only its SHA-256.
    Mint(MintArgs),
    /// Check a token offline (prefix, length, alphabet, check digits) against the
    /// enabled --token-formats. Exit 0 if well-formed, 1 otherwise. Pass `-` to read it
    /// from stdin (keeps it out of shell history and the process list).
    Check {
        /// The token, or `-` for stdin.
        token: String,

        #[command(flatten)]
        formats: super::FormatsArgs,
    },
    /// Show one token: status (live, revoked, expired, unknown), owner, created,
    /// expires, when and by which report and scanner it was revoked, and its owner
    /// notification. Exit 0 if the database knows it, 1 if not, 3 if it cannot tell
    /// (database unreachable, malformed input).
    Show(ShowArgs),
    /// Revoke one token by hand (an owner reported a leak by email): the same
    /// one-statement revocation as a delivery, recorded as a report of scanner `manual`
    /// with --actor, the owner notification queued. Exit 0 if revoked now or already
    /// revoked, 1 if unknown, 3 if it cannot tell (nothing revoked).
    Revoke(RevokeArgs),
    /// List tokens, newest first.
    List(ListArgs),
    /// Import a registry's existing tokens by their hashes (JSON Lines). Idempotent; a
    /// line that contradicts a stored token is refused by its line number. Exit 0, 1 if
    /// any line was refused, 3 if the import could not finish.
    Import(super::import::ImportArgs),
}

/// One token, named by itself or by its hash.
#[derive(Debug, Clone, Args)]
pub struct WhichToken {
    /// The token (hashed at once, never printed), or `-` to read it from stdin.
    #[arg(required_unless_present = "hash", conflicts_with = "hash")]
    pub token: Option<String>,

    /// The token's hash in hex instead (the SHA-256 its format stores: of the whole
    /// token, or of a crates.io trusted-publishing token's random part): all 64 digits,
    /// or a prefix of at least 12 (as logs, replay and `notify list` print it) that only
    /// one token has.
    #[arg(long)]
    pub hash: Option<String>,

    #[command(flatten)]
    pub formats: super::FormatsArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub which: WhichToken,

    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub which: WhichToken,

    /// Who revokes it (recorded as the report's key id, e.g. an e-mail address).
    #[arg(long, env = "REVOKER_ACTOR")]
    pub actor: String,

    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Only this owner's tokens.
    #[arg(long)]
    pub owner: Option<String>,

    /// Only tokens in this status now: live, revoked or expired.
    #[arg(long)]
    pub status: Option<TokenStatus>,

    /// At most this many.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,

    /// JSON lines (one object per token) instead of a table.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Clone, Args)]
pub struct MintArgs {
    /// Who the token belongs to (e.g. the crate or repository it publishes).
    #[arg(long, env = "REVOKER_OWNER")]
    pub owner: String,

    /// Lifetime of the token (e.g. 30m, 2h).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub ttl: Duration,

    #[command(flatten)]
    pub db: DbArgs,

    #[command(flatten)]
    pub migrate: MigrateUrlArgs,
}

pub async fn run(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Mint(args) => mint(args).await.map(|()| ExitCode::SUCCESS),
        TokenCommand::Check { .. } => unreachable!("`main` runs it before the runtime starts"),
        TokenCommand::Show(args) => cannot_tell(show(args).await),
        TokenCommand::Revoke(args) => cannot_tell(revoke(args).await),
        TokenCommand::List(args) => list(args).await.map(|()| ExitCode::SUCCESS),
        TokenCommand::Import(args) => super::import::run(args).await,
    }
}

/// `show` and `revoke` answer a question with their exit code (1: unknown), so an error
/// (database down, bad input) gets its own, 3: a script must not take it for "unknown".
fn cannot_tell(answer: anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    answer.or_else(|e| {
        eprintln!("{}", super::error_line(&e));
        Ok(ExitCode::from(3))
    })
}

/// The hash named by `which`, looked up: `Ok(None)` when no token has it.
async fn find(
    store: &dyn RevocationStore,
    which: &WhichToken,
) -> anyhow::Result<(String, Option<TokenRecord>)> {
    if let Some(hex) = &which.hash {
        let hex = hex.trim().to_ascii_lowercase();
        if hex.len() < 12 || hex.len() > 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            anyhow::bail!("--hash takes 12 to 64 hex digits of the token's SHA-256");
        }
        // The smallest hash with these digits (an odd count padded with 0): the hashes
        // that start with them come first from there, in order; two tell "ambiguous".
        let padded = if hex.len() % 2 == 1 {
            format!("{hex}0")
        } else {
            hex.clone()
        };
        let from = hex::decode(&padded).expect("hex digits");
        let found: Vec<TokenRecord> = store
            .tokens_from(&from, 2)
            .await?
            .into_iter()
            .filter(|t| t.hash.to_hex().starts_with(&hex))
            .collect();
        return match found.as_slice() {
            [] => Ok((hex, None)),
            [one] => Ok((hex, Some(one.clone()))),
            _ => anyhow::bail!("more than one token's hash starts with {hex}: give more digits"),
        };
    }
    let raw = read_token_arg(which.token.as_deref().expect("clap requires one"))
        .context("cannot read the token from stdin")?;
    let formats = which.formats.token_formats;
    let format = recognise(&raw, formats).map_err(|why| match formats == Formats::DEFAULT {
        true => anyhow::anyhow!("not a cio_tp_ token: {why}"),
        false => anyhow::anyhow!(why),
    })?;
    let hash = format.key(&raw);
    Ok((hash.prefix(), store.token(&hash).await?))
}

async fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let store = open_existing(&args.db).await?;
    let (named, token) = find(store.as_ref(), &args.which).await?;
    let Some(token) = token else {
        if args.json {
            println!(
                "{}",
                serde_json::json!({ "hash_prefix": named, "status": "unknown" })
            );
        } else {
            println!("{named}: unknown (no token with this hash in the database)");
        }
        return Ok(ExitCode::FAILURE);
    };
    let now = Utc::now();
    let report = match token.revoked_by {
        Some(id) => store.report(id).await?,
        None => None,
    };
    let notification = store.notification_of_token(&token.hash).await?;
    if args.json {
        let value = serde_json::json!({
            "hash": token.hash.to_hex(),
            "hash_prefix": token.hash.prefix(),
            "format": token.format,
            "status": token.status(now),
            "owner": token.owner,
            "created_at": rfc3339(token.created_at),
            "expires_at": rfc3339(token.expires_at),
            "revoked_at": token.revoked_at.map(rfc3339),
            "revoked_by": report.as_ref().map(|r| serde_json::json!({
                "report_id": r.id,
                "scanner": r.scanner,
                "key_id": r.key_id,
                "received_at": rfc3339(r.received_at),
            })),
            "notification": notification.as_ref().map(|n| serde_json::json!({
                "id": n.public_id,
                "status": n.status,
                "attempts": n.attempts,
                "next_attempt_at": rfc3339(n.next_attempt_at),
                "delivered_at": n.delivered_at.map(rfc3339),
                "last_error": n.last_error,
            })),
        });
        println!("{value}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "token         {} (sha256 {})",
        token.hash.prefix(),
        token.hash.to_hex()
    );
    println!("format        {}", terminal_safe(&token.format));
    println!("status        {}", token.status(now).as_str());
    println!("owner         {}", terminal_safe(&token.owner));
    println!("created       {}", rfc3339(token.created_at));
    println!(
        "expires       {}",
        if token.expires_at >= revoker::store::NEVER_EXPIRES {
            "never".to_owned()
        } else {
            rfc3339(token.expires_at)
        }
    );
    match (token.revoked_at, &report) {
        (Some(at), Some(r)) => println!(
            "revoked       {} by report {} (scanner {}, {} {})",
            rfc3339(at),
            r.id,
            terminal_safe(&r.scanner),
            if r.scanner == MANUAL_SCANNER || r.scanner == REPLAY_SCANNER {
                "actor"
            } else {
                "key"
            },
            terminal_safe(&r.key_id)
        ),
        (Some(at), None) => println!("revoked       {} (no report)", rfc3339(at)),
        (None, _) => println!("revoked       no"),
    }
    match &notification {
        Some(n) => {
            let detail = match (n.status, &n.delivered_at, &n.last_error) {
                (NotificationStatus::Delivered, Some(at), _) => format!("at {}", rfc3339(*at)),
                (_, _, Some(error)) => format!("last error: {}", terminal_safe(error)),
                (NotificationStatus::Pending, _, None) => {
                    format!("next attempt {}", rfc3339(n.next_attempt_at))
                }
                _ => String::new(),
            };
            println!(
                "notification  {} {}, {} attempt(s) {detail}",
                n.public_id,
                n.status.as_str(),
                n.attempts
            );
        }
        None => println!("notification  none"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn revoke(args: RevokeArgs) -> anyhow::Result<ExitCode> {
    let actor = super::printable("--actor", &args.actor)?;
    let store = open_current(&args.db).await?;
    let (named, token) = find(store.as_ref(), &args.which).await?;
    let Some(token) = token else {
        eprintln!("{named}: unknown (no token with this hash in the database); nothing revoked");
        return Ok(ExitCode::FAILURE);
    };
    let report = NewReport::manual(token.hash, &token.format, actor, Utc::now());
    let recorded = store
        .record_report(&report, RecordOptions::default())
        .await
        .context("cannot record the revocation")?;
    let prefix = token.hash.prefix();
    match recorded.outcomes.first() {
        Some(Outcome::Revoked | Outcome::Expired) => {
            tracing::info!(token = %prefix, report_id = recorded.report_id, actor = %actor, "revoked by hand");
            println!(
                "{prefix}: revoked (report {}, owner {}); owner notification queued",
                recorded.report_id,
                terminal_safe(&token.owner)
            );
        }
        Some(Outcome::AlreadyRevoked) => println!(
            "{prefix}: already revoked at {} (report {}); recorded as report {}",
            token.revoked_at.map(rfc3339).unwrap_or_else(|| "?".into()),
            token
                .revoked_by
                .map_or_else(|| "?".into(), |id| id.to_string()),
            recorded.report_id
        ),
        other => anyhow::bail!("{prefix}: unexpected outcome {other:?}"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let store = open_existing(&args.db).await?;
    let now = Utc::now();
    let tokens = store
        .list_tokens(args.owner.as_deref(), args.status, now, args.limit)
        .await?;
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    if !args.json {
        writeln!(
            out,
            "{:<12}  {:<7}  {:<24}  {:<20}  {:<20}  revoked",
            "token hash", "status", "owner", "created", "expires"
        )?;
    }
    for t in &tokens {
        if args.json {
            serde_json::to_writer(
                &mut out,
                &serde_json::json!({
                    "hash": t.hash.to_hex(),
                    "hash_prefix": t.hash.prefix(),
                    "format": t.format,
                    "status": t.status(now),
                    "owner": t.owner,
                    "created_at": rfc3339(t.created_at),
                    "expires_at": rfc3339(t.expires_at),
                    "revoked_at": t.revoked_at.map(rfc3339),
                    "revoked_by": t.revoked_by,
                }),
            )?;
            writeln!(out)?;
        } else {
            writeln!(
                out,
                "{:<12}  {:<7}  {:<24}  {:<20}  {:<20}  {}",
                t.hash.prefix(),
                t.status(now).as_str(),
                terminal_safe(&t.owner.chars().take(24).collect::<String>()),
                t.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
                t.expires_at.format("%Y-%m-%dT%H:%M:%SZ"),
                t.revoked_at
                    .map(|at| at.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                    .unwrap_or_else(|| "-".into())
            )?;
        }
    }
    Ok(())
}

/// RFC 3339 with milliseconds, UTC (`2026-11-30T18:52:10.658Z`).
fn rfc3339(at: chrono::DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn mint(args: MintArgs) -> anyhow::Result<()> {
    let owner = super::printable("--owner", &args.owner)?;
    let ttl = chrono::Duration::from_std(args.ttl).context("--ttl is too large")?;
    if ttl <= chrono::Duration::zero() {
        anyhow::bail!("--ttl must be greater than 0");
    }
    let store = open(&args.db, &args.migrate).await?;
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
    tracing::info!(token = %token.hash().prefix(), owner, expires_at = rfc3339(expires_at), "minted token");
    println!("{}", token.expose_secret());
    Ok(())
}

/// The enabled format `raw` is a token of, or why it is none, never quoting it: with
/// `cio_tp` enabled, what is wrong with it as one of ours (alone, when it is the only
/// format).
fn recognise(raw: &str, formats: Formats) -> Result<&'static Format, String> {
    if let Some(format) = formats.recognise(raw) {
        return Ok(format);
    }
    let ours = Token::parse(raw)
        .err()
        .filter(|_| formats.contains(&cio_tp::FORMAT));
    Err(match ours {
        Some(e) if formats == Formats::DEFAULT => e.to_string(),
        Some(e) => format!("not a token of any enabled format ({formats}): {e}"),
        None => format!("not a token of any enabled format ({formats})"),
    })
}

/// `token check`: offline, so `main` runs it without a runtime or logging.
pub fn check(arg: &str, formats: Formats) -> ExitCode {
    let raw = match read_token_arg(arg) {
        Ok(raw) => raw,
        Err(e) => {
            eprintln!("error: cannot read the token from stdin: {e}");
            return ExitCode::FAILURE;
        }
    };
    match recognise(&raw, formats) {
        Ok(format) => {
            let key = format.key(&raw);
            println!(
                "ok: well-formed {} token (sha256 {}{})",
                format.name,
                key.to_hex(),
                if key == revoker::domain::TokenHash::of(&raw) {
                    ""
                } else {
                    ", of its random part, as the registry stores it"
                }
            );
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("invalid: {why}");
            ExitCode::FAILURE
        }
    }
}

/// Where `token check -` reads from.
fn read_token_arg(arg: &str) -> std::io::Result<String> {
    if arg == "-" {
        let mut s = String::new();
        std::io::stdin().read_line(&mut s)?;
        Ok(s.trim().to_owned())
    } else {
        Ok(arg.to_owned())
    }
}
