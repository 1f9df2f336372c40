//! `revoker token import FILE|-`: a registry's existing tokens, by their hashes (JSON
//! Lines; see [`revoker::import`]). Each refused line is named on stderr with its number
//! and reason; the summary goes to stdout. Exit 0 when no line was refused, 1 when some
//! were (the others are imported), 3 when the import could not finish (file unreadable,
//! database unreachable; what earlier batches stored stays, and running it again is
//! safe).

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::Utc;
use clap::Args;

use revoker::domain::terminal::terminal_safe;
use revoker::import::{import, Refusal, Summary, BATCH};

use super::db::{open, DbArgs, MigrateUrlArgs};

#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// The JSON Lines file, or `-` for stdin. One token a line: {"sha256": "<64 hex>",
    /// "format": "cio_tp|crates_io_trustpub|crates_io_api", "owner": "…", "created_at":
    /// RFC 3339 (optional; default now), "expires_at": RFC 3339 or null (optional; null or
    /// absent: never expires), "revoked_at": RFC 3339 or null (optional)}.
    #[arg(value_name = "FILE|-")]
    pub file: PathBuf,

    /// The summary as one JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub db: DbArgs,

    #[command(flatten)]
    pub migrate: MigrateUrlArgs,
}

pub async fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    match run_import(args).await {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("{}", super::error_line(&e));
            Ok(ExitCode::from(3))
        }
    }
}

async fn run_import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let stdin = args.file.as_os_str() == "-";
    let named = if stdin {
        "(stdin)".to_owned()
    } else {
        args.file.display().to_string()
    };
    let (input, size): (Box<dyn Read + Send>, Option<u64>) = if stdin {
        (Box::new(std::io::stdin()), None)
    } else {
        let file = std::fs::File::open(&args.file)
            .with_context(|| format!("cannot open {}", terminal_safe(&named)))?;
        let size = file.metadata().ok().map(|m| m.len());
        (Box::new(file), size)
    };
    let store = open(&args.db, &args.migrate).await?;

    let bar = std::io::stderr().is_terminal().then(|| progress_bar(size));
    let input: Box<dyn Read + Send> = match &bar {
        Some(bar) => Box::new(bar.wrap_read(input)),
        None => input,
    };
    let started = Utc::now();
    let say_refused = |r: &Refusal| {
        let line = format!(
            "line {}: refused: {}",
            r.line,
            terminal_safe(&r.reason.to_string())
        );
        match &bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    };
    let show_progress = |s: &Summary| {
        if let Some(bar) = &bar {
            bar.set_message(format!(
                "{} lines: {} imported, {} unchanged, {} refused",
                s.lines, s.imported, s.unchanged, s.refused
            ));
        }
    };
    let result = import(
        store.as_ref(),
        input,
        started,
        BATCH,
        say_refused,
        show_progress,
    )
    .await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let summary = match result {
        Ok(summary) => summary,
        Err(stopped) => {
            print_summary(&stopped.done, args.json, false)?;
            return Err(anyhow::Error::new(stopped.error)).context(format!(
                "import of {} stopped; the lines before were stored and importing again is safe",
                terminal_safe(&named)
            ));
        }
    };
    print_summary(&summary, args.json, true)?;
    tracing::info!(
        file = %terminal_safe(&named),
        lines = summary.lines,
        imported = summary.imported,
        unchanged = summary.unchanged,
        revoked = summary.revoked,
        refused = summary.refused,
        "imported tokens"
    );
    Ok(if summary.refused > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_summary(s: &Summary, json: bool, complete: bool) -> anyhow::Result<()> {
    if json {
        let mut value = serde_json::to_value(s)?;
        value["complete"] = complete.into();
        println!("{value}");
    } else {
        println!(
            "{} line(s){}: {} imported, {} unchanged, {} revoked, {} refused",
            s.lines,
            if complete {
                ""
            } else {
                " before the import stopped"
            },
            s.imported,
            s.unchanged,
            s.revoked,
            s.refused
        );
    }
    Ok(())
}

/// Bytes read of the file's size, or (stdin) a spinner; the counts as message.
fn progress_bar(size: Option<u64>) -> indicatif::ProgressBar {
    let (bar, template) = match size {
        Some(size) => (
            indicatif::ProgressBar::new(size),
            "{spinner} {wide_bar} {bytes}/{total_bytes} {msg}",
        ),
        None => (
            indicatif::ProgressBar::new_spinner(),
            "{spinner} {bytes} {msg}",
        ),
    };
    bar.with_style(indicatif::ProgressStyle::with_template(template).expect("valid template"))
}
