//! `revoker replay`: revoke every token of ours in leak reports, locally or through a
//! receiver (remote mode).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use revoker::replay::{self, Target};

use super::db::{open_existing, DbArgs};

#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("remote").args(["url"]).requires_all(["key", "key_id"])))]
pub struct ReplayArgs {
    /// Leak reports to read; `-` reads one from standard input.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,

    /// Report format: github (webhook body or REST alert export), gitleaks, trufflehog,
    /// gitlab (gl-secret-detection-report.json), sarif, json (any JSON document) or text
    /// (default: detected per file). Whatever a format cannot read is scanned as text.
    #[arg(long)]
    pub format: Option<replay::formats::Format>,

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
    pub formats: super::FormatsArgs,

    #[command(flatten)]
    pub db: DbArgs,
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let target = match &args.url {
        Some(url) => {
            replay::check_remote_url(url)?;
            let key_path = args.key.as_ref().context("--url needs --key")?;
            let key = replay::load_signing_key(key_path)?;
            let key_id = args.key_id.clone().context("--url needs --key-id")?;
            Target::remote(url.clone(), key, key_id)?
        }
        None => {
            let actor = match (&args.actor, args.dry_run) {
                (Some(a), _) if !a.trim().is_empty() => super::printable("--actor", a)?.to_owned(),
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
        formats: args.formats.token_formats,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let summary = replay::run(&target, &opts, &mut out).await?;
    use std::io::Write;
    out.flush()?;
    if !summary.files_not_read.is_empty() {
        anyhow::bail!(
            "{} of {} report(s) could not be read, or not to the end (see above); the others were replayed",
            summary.files_not_read.len(),
            opts.files.len()
        );
    }
    Ok(())
}
