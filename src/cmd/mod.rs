//! The command line (clap): one file per subcommand, each owning its flags and what it
//! does. The only place in revoker that knows clap types; each command turns its
//! flags into the library's typed settings and calls the library.
//!
//! Human-readable output shows text from outside (urls, sources, owners, file names,
//! report fields, errors that quote input) through
//! [`revoker::domain::terminal::terminal_safe`]; `--json` output is left to serde.

pub mod db;
pub mod import;
pub mod keys;
pub mod migrate;
pub mod notify;
pub mod openapi;
pub mod purge;
pub mod replay;
pub mod serve;
pub mod token;

use clap::{Parser, Subcommand};
use revoker::domain::terminal::{needs_escape, terminal_safe};

use keys::KeysCommand;
use migrate::MigrateArgs;
use notify::NotifyCommand;
use purge::PurgeArgs;
use replay::ReplayArgs;
use serve::ServeArgs;
use token::TokenCommand;

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
    Migrate(MigrateArgs),
    /// Mint or check cio_tp_ tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Revoke every token of ours found in leak reports (GitHub alerts, gitleaks,
    /// trufflehog, GitLab, SARIF, any JSON or text), with a per-token answer. Safe to
    /// run more than once.
    Replay(ReplayArgs),
    /// Manage scanner signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Owner notifications (the outbox): send due ones now, list, re-queue.
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// Delete url, source and type older than --retention (GitHub's partner agreement:
    /// 30 days) and the once-per-body claims older than 8 days, once, and exit; `serve`
    /// does the same every hour.
    Purge(PurgeArgs),
    /// Print the OpenAPI 3.1 document of both listeners (what the admin listener serves
    /// at /openapi.json): `revoker openapi > docs/openapi.json`.
    Openapi,
}

/// `--token-formats`: shared by every command that recognises tokens.
#[derive(Debug, Clone, clap::Args)]
pub struct FormatsArgs {
    /// The token formats recognised, comma-separated: cio_tp (revoker's own: cio_tp_ +
    /// 30 + 6 CRC-32 check digits), crates_io_trustpub (crates.io trusted publishing:
    /// cio_tp_ + 31 + 1 check character), crates_io_api (crates.io API tokens: cio + 32,
    /// no check digit, so every such string is looked up). Redaction covers them all
    /// whatever this says.
    #[arg(long = "token-formats", env = "REVOKER_TOKEN_FORMATS", default_value = revoker::config::defaults::TOKEN_FORMATS, value_name = "LIST", value_parser = FormatsParser)]
    pub token_formats: revoker::domain::Formats,
}

/// Parses `--token-formats` into an error that does not quote the value: clap's own
/// (`invalid value '…' for …`) would print a token pasted in the wrong place.
#[derive(Clone)]
struct FormatsParser;

impl clap::builder::TypedValueParser for FormatsParser {
    type Value = revoker::domain::Formats;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Self::Value, clap::Error> {
        let refused = |why: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("--token-formats: {why}\n"),
            )
            .with_cmd(cmd)
        };
        value
            .to_str()
            .ok_or_else(|| refused("not UTF-8".to_owned()))?
            .parse()
            .map_err(|e: revoker::domain::format::FormatsError| refused(e.to_string()))
    }
}

/// `value` trimmed, if it is 1 to 200 bytes and holds nothing a terminal would act on
/// (a control character or a bidi control: [`needs_escape`]); else an error naming
/// `flag`. For names that are stored and shown later (`--owner`, `--actor`).
pub fn printable<'a>(flag: &str, value: &'a str) -> anyhow::Result<&'a str> {
    let value = value.trim();
    if value.is_empty() || value.len() > 200 || value.chars().any(needs_escape) {
        anyhow::bail!(
            "{flag} must be 1 to 200 printable characters \
             (no control characters, no bidi controls such as U+202E)"
        );
    }
    Ok(value)
}

/// The line an error is printed as on stderr: `error: ` and its chain, escaped (an
/// error may quote a file name, a URL, an id as given).
pub fn error_line(e: &anyhow::Error) -> String {
    format!("error: {}", terminal_safe(&format!("{e:#}")))
}

impl Cli {
    /// Parses the command line. Every flag's help shows its variable as
    /// `[env: NAME]`: clap would print `NAME=` (and the value, where one is set),
    /// which reads as an empty default.
    pub fn parse_args() -> Cli {
        use clap::{CommandFactory, FromArgMatches};
        fn hide_env_values(command: clap::Command) -> clap::Command {
            command
                .mut_args(|arg| arg.hide_env_values(true))
                .mut_subcommands(hide_env_values)
        }
        let matches = hide_env_values(Cli::command()).get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

impl Command {
    /// Runs the command inside the async runtime; the exit code it asks for (a
    /// command that answers a question, like `token show`, exits 1 for "no").
    pub async fn run(self) -> anyhow::Result<std::process::ExitCode> {
        let done = match self {
            Command::Serve(args) => serve::run(*args).await,
            Command::Migrate(args) => migrate::run(args).await,
            Command::Token(command) => return token::run(command).await,
            Command::Replay(args) => replay::run(args).await,
            Command::Keys(command) => keys::run(command),
            Command::Notify(command) => notify::run(command).await,
            Command::Purge(args) => purge::run(args).await,
            Command::Openapi => openapi::run(),
        };
        done.map(|()| std::process::ExitCode::SUCCESS)
    }
}
