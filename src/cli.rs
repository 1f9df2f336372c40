//! Command-line interface (clap). Every flag also reads an environment variable.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;

use crate::config::{parse_size, ScannerSpec};

#[derive(Debug, Parser)]
#[command(
    name = "revoker",
    version,
    about = "Receives signed secret-scanning alerts and revokes leaked cio_tp_ tokens",
    long_about = "Receives signed secret-scanning alerts (GitHub's partner program format), \
revokes every leaked cio_tp_ token in one database statement and answers each report \
token by token.\n\nLogs go to stderr; set RUST_LOG (default: info) and RUST_LOG_FORMAT=json."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the receiver (applies pending migrations first).
    Serve(ServeArgs),
    /// Apply pending database migrations and exit.
    Migrate(DbArgs),
    /// Mint or check cio_tp_ tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

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
pub struct DbArgs {
    /// Database URL: sqlite://PATH (file created if missing) or postgres://USER@HOST/DB.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://revoker.db",
        hide_env_values = true
    )]
    pub database_url: SecretString,

    /// Maximum database connections in the pool.
    #[arg(long, env = "REVOKER_DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,

    /// How long to wait for a database connection before answering 503.
    #[arg(long, env = "REVOKER_DB_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub db_timeout: Duration,
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

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the public webhook listener (use port 0 for any free port).
    #[arg(long, env = "REVOKER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// A scanner as NAME=SOURCE; repeatable (env: comma-separated). Alerts go to
    /// POST /secret-scanning/NAME. SOURCE is an http(s) URL or a file path holding
    /// GitHub's public-key JSON.
    #[arg(
        long = "scanner",
        env = "REVOKER_SCANNERS",
        value_delimiter = ',',
        default_value = "github=https://api.github.com/meta/public_keys/secret_scanning"
    )]
    pub scanners: Vec<ScannerSpec>,

    /// How long fetched scanner keys are trusted before a background refresh.
    #[arg(long, env = "REVOKER_KEYS_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub keys_ttl: Duration,

    /// Minimum time between two key fetches (an unknown key id triggers at most one
    /// refetch per interval).
    #[arg(long, env = "REVOKER_KEYS_REFETCH_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub keys_refetch_interval: Duration,

    /// Timeout of one key fetch over HTTP.
    #[arg(long, env = "REVOKER_KEYS_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub keys_timeout: Duration,

    /// Token sent as a bearer token to the `github` scanner's key URL only (raises
    /// GitHub's rate limit). Never sent to other scanners' sources.
    #[arg(long, env = "GITHUB_TOKEN", hide_env_values = true)]
    pub github_token: Option<SecretString>,

    /// Largest accepted request body (e.g. 8MiB, 512KiB, 1000000); larger gets 413.
    #[arg(long, env = "REVOKER_MAX_BODY", default_value = "8MiB", value_parser = parse_size)]
    pub max_body: usize,

    /// Retry-After sent with 503 answers.
    #[arg(long, env = "REVOKER_RETRY_AFTER", default_value = "30s", value_parser = humantime::parse_duration)]
    pub retry_after: Duration,

    #[command(flatten)]
    pub db: DbArgs,
}

/// Where `token check -` reads from.
pub fn read_token_arg(arg: &str) -> std::io::Result<String> {
    if arg == "-" {
        let mut s = String::new();
        std::io::stdin().read_line(&mut s)?;
        Ok(s.trim().to_owned())
    } else {
        Ok(arg.to_owned())
    }
}
