//! Leak-report replay for security teams: `revoker replay FILE…`.
//!
//! This file is the orchestration: per file, detect the format, read it on a blocking
//! thread, and run each batch through the target. The parts live beside it:
//! - [`formats`]: reading reports (GitHub alerts, gitleaks, trufflehog, GitLab, SARIF,
//!   any JSON or text)
//!   into occurrences, one element or chunk at a time;
//! - [`remote`]: signing and POSTing batches to a running receiver;
//! - [`output`]: the table or JSON lines of rows, and the summary.
//!
//! Invariants:
//! - Memory stays bounded whatever the size of the report: the reader hands batches of
//!   at most `batch_size` occurrences to the async side over a bounded channel.
//! - Each batch is written as the alert array a scanner sends (`alert_body`) and goes
//!   through the webhook's own parser and pipeline (`alert::measure` → `alert::compact`,
//!   classified offline → one store call → `Compact::set_outcomes`; there is no second
//!   parser): locally it is recorded as a report of scanner `replay` with the operator's
//!   name as key id; remotely that same body is signed exactly as GitHub signs and
//!   POSTed to a running receiver.
//! - `--dry-run` writes nothing: locally it looks tokens up with one read statement per
//!   batch; remotely it only classifies offline and sends nothing.
//! - Raw tokens never appear in the output or the logs (file names are redacted too).
//! - Names and places from a report or its file name reach the terminal (table,
//!   summary, stderr, log lines) escaped by `domain::terminal::terminal_safe`.
//! - Progress goes to stderr, only when asked for and stderr is a terminal.

pub mod formats;
mod output;
mod remote;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use p256::ecdsa::SigningKey;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::domain::alert;
use crate::domain::redact::redact_tokens;
use crate::domain::terminal::terminal_safe;
use crate::domain::{Label, Outcome, TokenHash};
use crate::store::{RecordOptions, RevocationStore};
use formats::{Format, Found, ReadStats};

pub use output::{Row, Summary};
pub use remote::{check_remote_url, load_signing_key, sign_body, ReplayClient};

/// Scanner name of reports recorded by a local replay.
pub const REPLAY_SCANNER: &str = "replay";

/// Where replayed batches go.
pub enum Target {
    /// Straight into the database.
    Local {
        store: Arc<dyn RevocationStore>,
        actor: String,
    },
    /// Signed and POSTed to a running receiver.
    Remote {
        url: String,
        key: SigningKey,
        key_id: String,
        client: ReplayClient,
    },
}

impl Target {
    /// A remote target with the replay client (60 s per request, redirects never
    /// followed: a 3xx fails the replay).
    /// Check the URL with [`check_remote_url`] first.
    pub fn remote(url: String, key: SigningKey, key_id: String) -> anyhow::Result<Target> {
        Ok(Target::Remote {
            url,
            key,
            key_id,
            client: remote::client()?,
        })
    }
}

pub struct Options {
    pub files: Vec<PathBuf>,
    /// `None`: detect per file.
    pub format: Option<Format>,
    pub dry_run: bool,
    pub json: bool,
    pub batch_size: usize,
    /// Show a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
    /// The token formats looked for and recognised (`--token-formats`).
    pub formats: crate::domain::Formats,
}

/// Replays every file, printing rows and the summary to `out`.
pub async fn run(target: &Target, opts: &Options, out: &mut dyn Write) -> anyhow::Result<Summary> {
    let mut summary = Summary {
        dry_run: opts.dry_run,
        ..Summary::default()
    };
    for path in &opts.files {
        // A file that cannot be read does not stop the others; the run fails at the end
        // (see `Summary::files_not_read`). Anything else (the database, the receiver)
        // stops it here.
        let stdin = path == Path::new("-");
        let name = if stdin {
            "(stdin)".to_owned()
        } else {
            redact_tokens(&path.display().to_string()).into_owned()
        };
        // `-`: standard input (a report piped in: `gh api … | revoker replay -`). Its
        // first 64 KiB (or all of it) are read before the format is detected: a pipe's
        // first read may hold a single byte.
        let (file, size): (Box<dyn std::io::Read + Send>, u64) = if stdin {
            let mut head = Vec::new();
            use std::io::Read;
            if let Err(e) = std::io::stdin()
                .lock()
                .take(64 * 1024)
                .read_to_end(&mut head)
            {
                not_read(&mut summary, format!("{name}: cannot read: {e}"));
                continue;
            }
            let size = head.len() as u64;
            (
                Box::new(std::io::Cursor::new(head).chain(std::io::stdin())),
                size,
            )
        } else {
            match std::fs::File::open(path) {
                Ok(file) => {
                    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                    (Box::new(file), size)
                }
                Err(e) => {
                    not_read(&mut summary, format!("{name}: cannot open: {e}"));
                    continue;
                }
            }
        };
        if let Some(failure) =
            replay_file(target, opts, path, file, size, &mut summary, out).await?
        {
            not_read(&mut summary, format!("{name}: {failure}"));
        }
        summary.files += 1;
    }
    let remote = matches!(target, Target::Remote { .. });
    summary.write(out, opts.json, remote)?;
    Ok(summary)
}

/// Notes a report that could not be read (whole or in part), on stderr at once.
fn not_read(summary: &mut Summary, what: String) {
    eprintln!(
        "error: report not read (to the end): {}; going on with the others",
        terminal_safe(&what)
    );
    summary.files_not_read.push(what);
}

/// Replays one opened report. `Ok(Some(why))` when reading it failed part-way (what was
/// read before is replayed); errors are the target's.
async fn replay_file(
    target: &Target,
    opts: &Options,
    path: &Path,
    file: Box<dyn std::io::Read + Send>,
    total_bytes: u64,
    summary: &mut Summary,
    out: &mut dyn Write,
) -> anyhow::Result<Option<String>> {
    let occurrences_before = summary.occurrences;
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let format = match opts.format {
        Some(f) => f,
        None => match reader.fill_buf() {
            Ok(head) => formats::detect(head),
            Err(e) => return Ok(Some(format!("cannot read: {e}"))),
        },
    };
    // Shown in logs and output and stored as part of locations: no raw token in it.
    let origin = if path == Path::new("-") {
        "(stdin)".to_owned()
    } else {
        redact_tokens(&path.display().to_string()).into_owned()
    };
    // The log line is plain text too: the name escaped as in the output.
    tracing::info!(file = %terminal_safe(&origin), format = %format.as_str(), "replaying report");

    let progress = opts.progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let progress = progress.then(|| progress_bar(total_bytes));
    let batch_size = opts.batch_size.max(1);
    let (mut batches, reading) = match &progress {
        Some(bar) => spawn_reader(
            bar.wrap_read(reader),
            (format, opts.formats),
            &origin,
            batch_size,
        ),
        None => spawn_reader(reader, (format, opts.formats), &origin, batch_size),
    };

    while let Some(batch) = batches.recv().await {
        process_batch(target, opts, &origin, &batch, summary, out).await?;
        if let Some(bar) = &progress {
            bar.set_message(format!("{} tokens", summary.occurrences));
        }
    }
    let stats = match reading.await.context("report reader crashed")? {
        Ok(stats) => stats,
        Err(formats::FormatError::Io(e)) => {
            if let Some(bar) = progress {
                bar.finish_and_clear();
            }
            return Ok(Some(format!(
                "reading failed part-way ({} occurrence(s) before it were replayed): {e}",
                summary.occurrences - occurrences_before
            )));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read report {origin}")),
    };
    for place in &stats.unstructured_at {
        tracing::warn!(part = %terminal_safe(place), "not in the report's format; scanned for tokens as text or JSON instead");
    }
    summary.unstructured += stats.unstructured;
    let room = formats::NAMED_PARTS.saturating_sub(summary.unstructured_at.len());
    summary
        .unstructured_at
        .extend(stats.unstructured_at.into_iter().take(room));
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    Ok(None)
}

/// A bar of bytes read out of `total_bytes`, with the running token count as message.
fn progress_bar(total_bytes: u64) -> indicatif::ProgressBar {
    let style =
        indicatif::ProgressStyle::with_template("{spinner} {wide_bar} {bytes}/{total_bytes} {msg}")
            .expect("valid template");
    indicatif::ProgressBar::new(total_bytes).with_style(style)
}

type Reading = tokio::task::JoinHandle<Result<ReadStats, formats::FormatError>>;

/// Reads the report on a blocking thread; batches of at most `batch_size` occurrences
/// cross a bounded channel, so the reader waits while the async side is busy.
fn spawn_reader<R: BufRead + Send + 'static>(
    reader: R,
    (format, formats): (Format, crate::domain::Formats),
    origin: &str,
    batch_size: usize,
) -> (mpsc::Receiver<Vec<Found>>, Reading) {
    let (tx, rx) = mpsc::channel::<Vec<Found>>(2);
    let origin = origin.to_owned();
    let reading = tokio::task::spawn_blocking(move || {
        let mut batch = Vec::with_capacity(batch_size);
        let stats = formats::read_report(reader, format, formats, &origin, &mut |found| {
            batch.push(found);
            if batch.len() >= batch_size {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
                tx.blocking_send(full)
                    .map_err(|_| "replay stopped".to_owned())?;
            }
            Ok(())
        });
        if !batch.is_empty() {
            let _ = tx.blocking_send(batch);
        }
        stats
    });
    (rx, reading)
}

/// The batch as the alert array a scanner would send (`[{"token", "type", "url",
/// "source"}]`): what the one parser reads locally and what a remote replay signs.
fn alert_body(batch: &[Found]) -> Vec<u8> {
    /// One element of a GitHub alert body.
    #[derive(serde::Serialize)]
    struct Item<'a> {
        token: &'a str,
        #[serde(rename = "type")]
        token_type: &'a str,
        url: &'a str,
        source: &'a str,
    }
    let items: Vec<Item<'_>> = batch
        .iter()
        .map(|f| Item {
            token: &f.token,
            token_type: &f.token_type,
            url: &f.url,
            source: &f.source,
        })
        .collect();
    serde_json::to_vec(&items).expect("strings serialise to JSON")
}

async fn process_batch(
    target: &Target,
    opts: &Options,
    file: &str,
    batch: &[Found],
    summary: &mut Summary,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    // The webhook's own two passes over the batch's alert array.
    let body = bytes::Bytes::from(alert_body(batch));
    let sizes = alert::measure(&body, opts.formats).context("cannot read the batch back")?;
    let mut delivery =
        alert::compact(body.clone(), &sizes, opts.formats).context("cannot read the batch back")?;
    summary.batches += 1;

    // Each item named by the hash its token is stored by (what `token show --hash` takes;
    // a crates.io trusted-publishing token's is of its random part), else the whole
    // string's; and whether it is a candidate.
    let keys: Vec<(TokenHash, bool)> = delivery
        .keys()
        .map(|(whole, key)| (key.unwrap_or(whole), key.is_some()))
        .collect();

    // Whose tokens they are (local: one read statement when there are candidates).
    let owners = match target {
        Target::Local { store, .. } => {
            let hashes: Vec<_> = delivery.candidates.iter().map(|c| c.hash).collect();
            store
                .owners(&hashes)
                .await
                .context("cannot look owners up in the database")?
        }
        Target::Remote { .. } => HashMap::new(),
    };

    // (outcome if known, label if known) per item.
    let results: Vec<(Option<Outcome>, Option<Label>)> = match target {
        Target::Local { store, actor } => {
            local_outcomes(
                store.as_ref(),
                actor,
                opts.dry_run,
                batch,
                &mut delivery,
                summary,
            )
            .await?;
            delivery
                .outcomes()
                .map(|o| (Some(o), Some(o.into())))
                .collect()
        }
        // Not sent: a candidate's fate is only known to the receiver.
        Target::Remote { .. } if opts.dry_run => keys
            .iter()
            .map(|&(_, candidate)| match candidate {
                false => (Some(Outcome::NotOurs), Some(Label::FalsePositive)),
                true => (None, None),
            })
            .collect(),
        Target::Remote {
            url,
            key,
            key_id,
            client,
        } => {
            let labels = remote::post_batch(client, url, key, key_id, body, batch.len()).await?;
            // The receiver's label decides: `not_ours` only where it agrees (its
            // `--token-formats` may take what this replay's do not).
            keys.iter()
                .zip(labels)
                .map(|(&(_, candidate), label)| {
                    let not_ours = !candidate && label == Label::FalsePositive;
                    (not_ours.then_some(Outcome::NotOurs), Some(label))
                })
                .collect()
        }
    };

    for ((found, (hash, _)), (outcome, label)) in batch.iter().zip(&keys).zip(results) {
        summary.add(outcome, label);
        summary.note_token(hash, outcome);
        // The header with the first row: an error about a report that cannot be opened
        // comes before any table.
        if !std::mem::replace(&mut summary.header_written, true) {
            output::write_header(out, opts.json)?;
        }
        let row = Row {
            token_hash_prefix: hash.prefix(),
            outcome,
            label,
            dry_run: opts.dry_run,
            owner: owners.get(hash).map(String::as_str),
            file,
            url: &found.url,
            source: &found.source,
        };
        row.write(out, opts.json)?;
    }
    Ok(())
}

/// Sets every item's outcome in the local database: looked up (dry run) or recorded as
/// one report of scanner [`REPLAY_SCANNER`]. No candidate: no statement at all.
async fn local_outcomes(
    store: &dyn RevocationStore,
    actor: &str,
    dry_run: bool,
    batch: &[Found],
    delivery: &mut alert::Compact,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let candidate_outcomes: Vec<Outcome> = if delivery.candidates.is_empty() {
        Vec::new()
    } else if dry_run {
        let hashes: Vec<_> = delivery.candidates.iter().map(|c| c.hash).collect();
        let map: HashMap<_, _> = store
            .preview(&hashes, now)
            .await
            .context("cannot look tokens up in the database")?;
        hashes
            .iter()
            .map(|hash| map.get(hash).copied().unwrap_or(Outcome::Unknown))
            .collect()
    } else {
        let report = delivery
            .take_report(REPLAY_SCANNER, actor, now, |_| batch_digest(batch))
            .expect("there are candidates");
        let recorded = store
            .record_report(&report, RecordOptions::default())
            .await
            .context("cannot record the replayed report in the database")?;
        summary.report_ids.push(recorded.report_id);
        summary.tokens_revoked += u64::from(recorded.tokens_revoked);
        recorded.outcomes
    };
    delivery.set_outcomes(&candidate_outcomes);
    Ok(())
}

/// A stable digest of a batch, stored as the report's body hash.
fn batch_digest(batch: &[Found]) -> [u8; 32] {
    let mut h = Sha256::new();
    for f in batch {
        for part in [&f.token, &f.token_type, &f.url, &f.source] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
    }
    h.finalize().into()
}
