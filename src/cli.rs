//! Command-line interface (clap). Every flag also reads an environment variable.

use std::path::PathBuf;
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
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations and exit.
    Migrate(DbArgs),
    /// Mint or check cio_tp_ tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Revoke every token of ours found in leak reports (gitleaks, trufflehog, GitHub
    /// alert JSON, or any text), with a per-token answer. Safe to run more than once.
    Replay(ReplayArgs),
    /// Manage scanner signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Owner notifications (the outbox): send due ones now, list, re-queue.
    #[command(subcommand)]
    Notify(NotifyCommand),
}

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Send every due notification once (what the worker in `serve` does), print what
    /// happened and exit. Exit 1 if any notification is still pending or failed.
    Run {
        #[command(flatten)]
        notify: NotifyArgs,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List notifications, newest first.
    List {
        /// Only this status: pending, delivered or failed.
        #[arg(long, value_parser = ["pending", "delivered", "failed"])]
        status: Option<String>,
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
        /// The notification id (see `revoker notify list`).
        id: Option<i64>,
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
    /// signed JSON POST here (https, or http to localhost). Unset: notifications are
    /// queued in the database but not sent.
    #[arg(long, env = "REVOKER_NOTIFY_WEBHOOK")]
    pub notify_webhook: Option<String>,

    /// Secret for the HMAC-SHA256 signature of every notification
    /// (header Revoker-Signature: sha256=<hex>). Required with --notify-webhook.
    #[arg(long, env = "REVOKER_NOTIFY_SECRET", hide_env_values = true)]
    pub notify_secret: Option<SecretString>,

    /// Timeout of one notification request.
    #[arg(long, env = "REVOKER_NOTIFY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub notify_timeout: Duration,

    /// Attempts before a notification is marked failed.
    #[arg(long, env = "REVOKER_NOTIFY_MAX_ATTEMPTS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub notify_max_attempts: u32,

    /// Delay before the second attempt; doubles per attempt (with jitter) up to
    /// --notify-backoff-max.
    #[arg(long, env = "REVOKER_NOTIFY_BACKOFF", default_value = "30s", value_parser = humantime::parse_duration)]
    pub notify_backoff: Duration,

    /// Longest delay between two attempts (at most 30d).
    #[arg(long, env = "REVOKER_NOTIFY_BACKOFF_MAX", default_value = "6h", value_parser = humantime::parse_duration)]
    pub notify_backoff_max: Duration,

    /// How often `serve` looks for due notifications (it also looks right after a
    /// delivery revoked something).
    #[arg(long, env = "REVOKER_NOTIFY_POLL_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub notify_poll_interval: Duration,
}

impl NotifyArgs {
    /// `None` when no webhook is configured; an error when only half is.
    pub fn settings(&self) -> anyhow::Result<Option<crate::notify::NotifySettings>> {
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
        let mut settings = crate::notify::NotifySettings::new(webhook, secret.expose_secret());
        settings.timeout = self.notify_timeout;
        settings.max_attempts = self.notify_max_attempts;
        settings.backoff_base = self.notify_backoff;
        settings.backoff_max = self.notify_backoff_max;
        settings.poll_interval = self.notify_poll_interval;
        settings.validate()?;
        Ok(Some(settings))
    }
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a new P-256 private key (PKCS#8 PEM, mode 0600) and print the key-JSON
    /// entry to add to the scanner's key file on the receiver.
    Generate {
        /// Where to write the private key (never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Key identifier to publish (default: derived from the public key).
        #[arg(long)]
        key_id: Option<String>,
    },
}

#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("remote").args(["url"]).requires_all(["key", "key_id"])))]
pub struct ReplayArgs {
    /// Leak reports to read.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,

    /// Report format: github, gitleaks, trufflehog or text (default: detected per file).
    #[arg(long)]
    pub format: Option<crate::replay::formats::Format>,

    /// Classify and look up without revoking or recording anything. With --url, only
    /// classifies offline and sends nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Print JSON lines ({"row": …} per occurrence, then {"summary": …}) instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Who is replaying (recorded as the report's key id in local mode).
    #[arg(long, env = "REVOKER_ACTOR")]
    pub actor: Option<String>,

    /// Occurrences per database statement / POSTed delivery.
    #[arg(long, default_value_t = 10_000)]
    pub batch_size: usize,

    /// Remote mode: a receiver's alert URL, e.g. https://host/secret-scanning/team.
    #[arg(long)]
    pub url: Option<String>,

    /// Remote mode: the team's private key (PKCS#8 PEM, from `revoker keys generate`).
    #[arg(long)]
    pub key: Option<PathBuf>,

    /// Remote mode: the key identifier the receiver knows the key by.
    #[arg(long)]
    pub key_id: Option<String>,

    #[command(flatten)]
    pub db: DbArgs,
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

    /// Deadline for a whole delivery (below GitHub's 30 s wait); past it: 503, nothing written.
    #[arg(long, env = "REVOKER_REQUEST_TIMEOUT", default_value = "25s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Deliveries processed at once; one more gets 503 `overloaded` with Retry-After
    /// at once instead of queueing. Bounds memory to about this many × --max-body.
    #[arg(long, env = "REVOKER_MAX_CONCURRENT_DELIVERIES", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_concurrent_deliveries: u32,

    /// Deadline for receiving a request body; a client that trickles gets 408.
    #[arg(long, env = "REVOKER_BODY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,

    /// After SIGTERM/SIGINT, how long in-flight requests may finish before exit.
    #[arg(long, env = "REVOKER_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Address of the admin listener: /metrics, /api/stats, /dashboard, /healthz,
    /// /readyz. Keep it private; a non-loopback address requires --admin-token.
    #[arg(long, env = "REVOKER_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: String,

    /// Bearer token required by /metrics and /api/stats on the admin listener.
    #[arg(long, env = "REVOKER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<SecretString>,

    #[command(flatten)]
    pub notify: NotifyArgs,

    #[command(flatten)]
    pub db: DbArgs,
}

impl DbArgs {
    /// Pool settings from these flags; `create_if_missing` is off for tools that must
    /// find an existing database.
    pub fn pool_settings(&self, create_if_missing: bool) -> crate::store::PoolSettings {
        crate::store::PoolSettings {
            max_connections: self.db_max_connections,
            acquire_timeout: self.db_timeout,
            create_if_missing,
        }
    }
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
