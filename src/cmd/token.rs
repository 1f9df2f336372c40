//! `revoker token mint` and `revoker token check`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use revoker::domain::Token;
use revoker::store::NewToken;

use super::db::{open, DbArgs};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a token: prints it once on stdout, stores only its SHA-256.
    Mint(MintArgs),
    /// Check a token offline (prefix, length, alphabet, check digits). Exit 0 if
    /// well-formed, 1 otherwise. Pass `-` to read it from stdin (keeps it out of
    /// shell history and the process list).
    Check {
        /// The token, or `-` for stdin.
        token: String,
    },
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
}

pub async fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Mint(args) => mint(args).await,
        TokenCommand::Check { .. } => unreachable!("`main` runs it before the runtime starts"),
    }
}

async fn mint(args: MintArgs) -> anyhow::Result<()> {
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

/// `token check`: offline, so `main` runs it without a runtime or logging.
pub fn check(arg: &str) -> ExitCode {
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
