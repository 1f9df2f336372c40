//! Leak-report replay for security teams: `revoker replay FILE…`.
//!
//! Reports are read by [`formats`] (GitHub alert JSON, gitleaks, trufflehog, any text),
//! one element or chunk at a time, on a blocking thread that hands batches of at most
//! `batch_size` occurrences to the async side over a bounded channel: memory stays
//! bounded whatever the size of the report.
//!
//! Each batch goes through the same pipeline as the webhook (classify offline → one
//! store call): locally it is recorded as a report of scanner `replay` with the
//! operator's name as key id; remotely it is signed exactly as GitHub signs and POSTed
//! to a running receiver. `--dry-run` writes nothing: locally it looks tokens up with
//! one read statement per batch; remotely it only classifies offline and sends nothing.
//!
//! Output: one row per occurrence (hash prefix, outcome, label, where found) and a
//! summary by outcome; `--json` prints the same as JSON lines. Raw tokens never appear.

pub mod formats;

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use base64::Engine;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::domain::alert::{self, AlertItem};
use crate::domain::redact::redact_tokens;
use crate::domain::{Label, Outcome, OutcomeCounts};
use crate::signature::{KEY_ID_HEADER, SIGNATURE_HEADER};
use crate::store::RevocationStore;
use formats::{Format, Found};

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
        client: reqwest::Client,
    },
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
}

/// One output row: an occurrence, never the token itself.
#[derive(Debug, Serialize)]
pub struct Row<'a> {
    pub token_hash_prefix: String,
    /// `None` for remote replays, where only the label comes back.
    pub outcome: Option<Outcome>,
    /// `None` for a well-formed token a remote dry run did not send.
    pub label: Option<Label>,
    /// Dry runs: `revoked` means "would be revoked".
    pub dry_run: bool,
    pub file: &'a str,
    pub url: &'a str,
    pub source: &'a str,
}

/// Totals of a replay.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub files: usize,
    pub occurrences: u64,
    pub batches: u64,
    pub dry_run: bool,
    pub counts: OutcomeCounts,
    pub true_positive: u64,
    pub false_positive: u64,
    /// Remote dry run: well-formed tokens that were not sent.
    pub not_sent: u64,
    /// Distinct tokens flipped to revoked by this run (local, not dry-run).
    pub tokens_revoked: u64,
    pub skipped_lines: u64,
    /// Report ids recorded (local, not dry-run).
    pub report_ids: Vec<i64>,
}

/// Loads a PKCS#8 PEM P-256 private key (as written by `revoker keys generate`).
pub fn load_signing_key(path: &std::path::Path) -> anyhow::Result<SigningKey> {
    use p256::pkcs8::DecodePrivateKey;
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|_| {
        anyhow::anyhow!(
            "{} is not a PKCS#8 PEM P-256 private key (make one with `revoker keys generate`)",
            path.display()
        )
    })
}

/// Signs a body the way GitHub does: base64 of a DER ECDSA P-256/SHA-256 signature.
pub fn sign_body(key: &SigningKey, body: &[u8]) -> String {
    let sig: Signature = key.sign(body);
    base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
}

/// Refuses to send raw tokens over cleartext HTTP to anything but this machine.
pub fn check_remote_url(url: &str) -> anyhow::Result<()> {
    crate::support::require_https(
        url,
        "--url",
        &format!("--url {url:?}"),
        "http would send raw tokens in cleartext",
    )
}

/// Replays every file, printing rows and the summary to `out`.
pub async fn run(target: &Target, opts: &Options, out: &mut dyn Write) -> anyhow::Result<Summary> {
    let mut summary = Summary {
        dry_run: opts.dry_run,
        ..Summary::default()
    };
    if !opts.json {
        writeln!(
            out,
            "{:<12}  {:<15}  {:<14}  where found",
            "token hash", "outcome", "label"
        )?;
    }
    for path in &opts.files {
        replay_file(target, opts, path, &mut summary, out).await?;
        summary.files += 1;
    }
    write_summary(
        &summary,
        opts.json,
        matches!(target, Target::Remote { .. }),
        out,
    )?;
    Ok(summary)
}

async fn replay_file(
    target: &Target,
    opts: &Options,
    path: &PathBuf,
    summary: &mut Summary,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open report {}", path.display()))?;
    let total_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let format = match opts.format {
        Some(f) => f,
        None => formats::detect(reader.fill_buf()?),
    };
    // Shown in logs and output and stored as part of locations: no raw token in it.
    let origin = redact_tokens(&path.display().to_string()).into_owned();
    tracing::info!(file = %origin, format = format.as_str(), "replaying report");

    let progress =
        (opts.progress && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
            let bar = indicatif::ProgressBar::new(total_bytes);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {wide_bar} {bytes}/{total_bytes} {msg}",
                )
                .expect("valid template"),
            );
            bar
        });

    // The reader runs on a blocking thread; batches cross a bounded channel.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Found>>(2);
    let batch_size = opts.batch_size.max(1);
    let reader_origin = origin.clone();
    let counting = CountingReader {
        inner: reader,
        bar: progress.clone(),
    };
    let reading = tokio::task::spawn_blocking(move || {
        let mut batch = Vec::with_capacity(batch_size);
        let stats = formats::read_report(counting, format, &reader_origin, &mut |found| {
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

    while let Some(batch) = rx.recv().await {
        process_batch(target, opts, &origin, &batch, summary, out).await?;
        if let Some(bar) = &progress {
            bar.set_message(format!("{} tokens", summary.occurrences));
        }
    }
    let stats = reading
        .await
        .context("report reader crashed")?
        .with_context(|| format!("cannot read report {}", origin))?;
    summary.skipped_lines += stats.skipped_lines;
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    Ok(())
}

async fn process_batch(
    target: &Target,
    opts: &Options,
    file: &str,
    batch: &[Found],
    summary: &mut Summary,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let items: Vec<AlertItem<'_>> = batch
        .iter()
        .map(|f| AlertItem {
            token: Cow::Borrowed(f.token.as_str()),
            token_type: Some(Cow::Borrowed(f.token_type.as_str())),
            url: Some(Cow::Borrowed(f.url.as_str())),
            source: Some(Cow::Borrowed(f.source.as_str())),
        })
        .collect();
    let classified = alert::classify(&items);
    summary.batches += 1;

    // (outcome if known, label if known) per item.
    let results: Vec<(Option<Outcome>, Option<Label>)> = match target {
        Target::Local { store, actor } => {
            let now = chrono::Utc::now();
            let candidate_outcomes: Vec<Outcome> = if classified.candidates.is_empty() {
                Vec::new()
            } else if opts.dry_run {
                let hashes: Vec<_> = classified.candidates.iter().map(|c| c.hash).collect();
                let map: HashMap<_, _> = store
                    .preview(&hashes, now)
                    .await
                    .context("cannot look tokens up in the database")?;
                classified
                    .candidates
                    .iter()
                    .map(|c| map.get(&c.hash).copied().unwrap_or(Outcome::Unknown))
                    .collect()
            } else {
                let report = classified
                    .into_report(REPLAY_SCANNER, actor, now, || batch_digest(batch))
                    .expect("there are candidates");
                let recorded = store
                    .record_report(&report)
                    .await
                    .context("cannot record the replayed report in the database")?;
                summary.report_ids.push(recorded.report_id);
                summary.tokens_revoked += u64::from(recorded.tokens_revoked);
                recorded.outcomes
            };
            classified
                .outcomes(&candidate_outcomes)
                .into_iter()
                .map(|o| (Some(o), Some(o.into())))
                .collect()
        }
        // Not sent: a candidate's fate is only known to the receiver.
        Target::Remote { .. } if opts.dry_run => classified
            .candidate_index
            .iter()
            .map(|idx| match idx {
                None => (Some(Outcome::NotOurs), Some(Label::FalsePositive)),
                Some(_) => (None, None),
            })
            .collect(),
        Target::Remote {
            url,
            key,
            key_id,
            client,
        } => {
            let labels = post_batch(client, url, key, key_id, &items).await?;
            classified
                .candidate_index
                .iter()
                .zip(labels)
                .map(|(idx, label)| (idx.is_none().then_some(Outcome::NotOurs), Some(label)))
                .collect()
        }
    };

    for ((found, hash), (outcome, label)) in batch.iter().zip(&classified.hashes).zip(results) {
        summary.occurrences += 1;
        if let Some(o) = outcome {
            summary.counts.add(o);
        }
        match label {
            Some(Label::TruePositive) => summary.true_positive += 1,
            Some(Label::FalsePositive) => summary.false_positive += 1,
            None => summary.not_sent += 1,
        }
        let row = Row {
            token_hash_prefix: hash.prefix(),
            outcome,
            label,
            dry_run: opts.dry_run,
            file,
            url: &found.url,
            source: &found.source,
        };
        if opts.json {
            serde_json::to_writer(&mut *out, &serde_json::json!({ "row": row }))?;
            writeln!(out)?;
        } else {
            let outcome = match (outcome, opts.dry_run) {
                (Some(Outcome::Revoked), true) => "would_revoke",
                (Some(o), _) => o.as_str(),
                (None, true) => "not_sent",
                (None, false) => "-",
            };
            let label = match label {
                Some(Label::TruePositive) => "true_positive",
                Some(Label::FalsePositive) => "false_positive",
                None => "-",
            };
            let place = if row.url.is_empty() { file } else { row.url };
            writeln!(
                out,
                "{:<12}  {:<15}  {:<14}  {} ({})",
                row.token_hash_prefix, outcome, label, place, row.source
            )?;
        }
    }
    Ok(())
}

/// Signs and POSTs one batch; returns one label per item.
async fn post_batch(
    client: &reqwest::Client,
    url: &str,
    key: &SigningKey,
    key_id: &str,
    items: &[AlertItem<'_>],
) -> anyhow::Result<Vec<Label>> {
    #[derive(Serialize)]
    struct Item<'a> {
        token: &'a str,
        #[serde(rename = "type")]
        token_type: &'a str,
        url: &'a str,
        source: &'a str,
    }
    let body = serde_json::to_vec(
        &items
            .iter()
            .map(|i| Item {
                token: &i.token,
                token_type: i.token_type.as_deref().unwrap_or_default(),
                url: i.url.as_deref().unwrap_or_default(),
                source: i.source.as_deref().unwrap_or_default(),
            })
            .collect::<Vec<_>>(),
    )?;
    let signature = sign_body(key, &body);
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .header(KEY_ID_HEADER, key_id)
        .header(SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        // Only the receiver's own JSON message: a raw body could echo the request.
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|j| j["message"].as_str().map(|m| m.chars().take(300).collect()))
            .unwrap_or_else(|| format!("a non-JSON body of {} bytes", text.len()));
        let hint = if status == reqwest::StatusCode::PAYLOAD_TOO_LARGE {
            " (lower --batch-size)"
        } else {
            ""
        };
        bail!("the receiver answered HTTP {status}: {message}{hint}");
    }
    let feedback: Vec<alert::Feedback> =
        serde_json::from_str(&text).context("the receiver's answer is not a feedback array")?;
    if feedback.len() != items.len() {
        bail!(
            "the receiver answered {} entries for {} items",
            feedback.len(),
            items.len()
        );
    }
    Ok(feedback.into_iter().map(|f| f.label).collect())
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

fn write_summary(
    summary: &Summary,
    json: bool,
    remote: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, &serde_json::json!({ "summary": summary }))?;
        writeln!(out)?;
        return Ok(());
    }
    let c = &summary.counts;
    writeln!(out)?;
    writeln!(
        out,
        "{} occurrence(s) in {} file(s): {} true positive, {} false positive{}{}",
        summary.occurrences,
        summary.files,
        summary.true_positive,
        summary.false_positive,
        if summary.not_sent > 0 {
            format!(", {} well-formed not sent", summary.not_sent)
        } else {
            String::new()
        },
        if summary.dry_run {
            " (dry run: nothing written or sent)"
        } else {
            ""
        }
    )?;
    if !remote {
        if summary.dry_run {
            writeln!(
                out,
                "  occurrences: would revoke {}  expired (would revoke): {}  already revoked: {}  unknown: {}  not ours: {}",
                c.revoked, c.expired, c.already_revoked, c.unknown, c.not_ours
            )?;
        } else {
            writeln!(out, "  tokens revoked now: {}", summary.tokens_revoked)?;
            writeln!(
                out,
                "  occurrences: revoked {}  expired (revoked too) {}  already revoked {}  unknown {}  not ours {}",
                c.revoked, c.expired, c.already_revoked, c.unknown, c.not_ours
            )?;
        }
    } else if !summary.dry_run {
        writeln!(out, "  not ours (decided offline): {}", c.not_ours)?;
    }
    if !summary.dry_run && !remote && summary.tokens_revoked == 0 && summary.true_positive > 0 {
        writeln!(
            out,
            "  nothing new: every token of ours in these reports was already revoked"
        )?;
    }
    if summary.skipped_lines > 0 {
        writeln!(
            out,
            "  {} unreadable line(s) skipped",
            summary.skipped_lines
        )?;
    }
    Ok(())
}

/// Advances the progress bar as bytes are read.
struct CountingReader<R> {
    inner: R,
    bar: Option<indicatif::ProgressBar>,
}

impl<R: std::io::Read> std::io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
        }
        Ok(n)
    }
}

impl<R: BufRead> BufRead for CountingReader<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        if let Some(bar) = &self.bar {
            bar.inc(amt as u64);
        }
        self.inner.consume(amt)
    }
}
