//! `revoker token import`: a registry's existing tokens, stored by their hashes, so a
//! registry adopts revoker without minting its tokens again (issue 27).
//!
//! The input is JSON Lines, one token per line:
//! `{"sha256": "<64 hex>", "format": "crates_io_api", "owner": "…", "created_at": "…",
//! "expires_at": "…" | null, "revoked_at": "…" | null}` (the last three optional, times
//! RFC 3339). A line is read, checked and classified on its own:
//!
//! - **imported**: its hash was not stored; now it is, with the line's owner, format and
//!   times (`created_at` absent: the import's start; `expires_at` null or absent:
//!   [`NEVER_EXPIRES`]; `revoked_at` set: stored revoked, by no report).
//! - **unchanged**: its hash is stored with the same owner and format (an earlier import,
//!   or an earlier line of this one). Nothing is written: no time changes, a revoked
//!   token is never made live again.
//! - **revoked**: as unchanged, but the line has `revoked_at` and the stored token was
//!   live: it is revoked at the line's instant (`revoked_by` NULL: no report, no owner
//!   notification, no stats figure).
//! - **refused**, named by its line number with the reason ([`Reason`]): malformed (not
//!   JSON, an unknown, missing or mistyped field, bad hex, bad time, unknown format, an
//!   owner that is empty, over 200 characters or holds a control or bidi character), or
//!   contradicting the stored token (another owner or format). A reason never quotes
//!   the line beyond a field's name.
//!
//! Blank lines are skipped. Lines go to the store in batches of [`BATCH`] (one statement
//! on PostgreSQL, a transaction on SQLite), read and checked on a blocking thread while
//! the previous batch is stored; a batch's refusals are reported in line order. Running
//! an import again is safe: every line it imported is then unchanged.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::domain::format::FORMATS;
use crate::domain::redact::redact_tokens;
use crate::domain::terminal::needs_escape;
use crate::domain::TokenHash;
use crate::store::{ImportToken, RevocationStore, StoreError, NEVER_EXPIRES};

/// What an unknown field is called in a refusal when its name is not a short plain word
/// without a token in it.
const NAME_NOT_SHOWN: &str = "(its name not shown: not a short plain word, or it holds a token)";

/// Lines per batch: one statement each, thousands of rows.
pub const BATCH: usize = 5_000;

/// The longest line read (in bytes, without its newline): a token's line is a few
/// hundred; a longer one is refused without being held in memory.
pub const MAX_LINE: usize = 4_096;

/// An owner's length limit, in characters.
pub const MAX_OWNER: usize = 200;

/// What an import did, line by line (blank lines are not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Lines read (not blank); the sum of the four below.
    pub lines: u64,
    pub imported: u64,
    pub unchanged: u64,
    /// Lines whose `revoked_at` revoked a stored live token.
    pub revoked: u64,
    pub refused: u64,
}

/// A refused line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 1-based, counting blank lines.
    pub line: u64,
    pub reason: Reason,
}

/// Why a line was refused. The text names fields, never their values (an unknown
/// field's name is the line's own: cut to 40 characters, and to be printed escaped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("not valid JSON (column {0})")]
    Json(usize),
    #[error("longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("not a JSON object")]
    NotObject,
    #[error(
        "unknown field `{0}` (known: sha256, format, owner, created_at, expires_at, revoked_at)"
    )]
    UnknownField(String),
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("field `{0}` given twice")]
    DuplicateField(&'static str),
    #[error("field `{0}` must be a string{or_null}", or_null = if matches!(*.0, "sha256" | "format" | "owner") { "" } else { " or null" })]
    WrongType(&'static str),
    #[error("`sha256` must be 64 hex digits")]
    Sha256,
    #[error("unknown `format` (known: {})", FORMATS.iter().map(|f| f.name).collect::<Vec<_>>().join(", "))]
    Format,
    #[error("`owner` must be 1 to {MAX_OWNER} characters without control or bidi characters")]
    Owner,
    #[error("`{0}` is not an RFC 3339 time")]
    Time(&'static str),
    #[error("contradicts the stored token: another owner")]
    OtherOwner,
    #[error("contradicts the stored token: another format")]
    OtherFormat,
    /// Stored by another writer while this batch was (PostgreSQL: after the statement's
    /// snapshot): nothing is known of it but that; importing again classifies it.
    #[error("stored by another writer during the import; import again")]
    Raced,
}

/// An import that stopped part-way: what it did before, and why it stopped. What earlier
/// batches stored stays stored; running the import again finishes it.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Stopped {
    pub done: Summary,
    #[source]
    pub error: StopError,
}

#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error("cannot read line {line}")]
    Read {
        line: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot store the lines up to line {line}")]
    Store {
        line: u64,
        #[source]
        source: StoreError,
    },
}

const FIELDS: [&str; 6] = [
    "sha256",
    "format",
    "owner",
    "created_at",
    "expires_at",
    "revoked_at",
];

/// One line as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    sha256: String,
    format: String,
    owner: String,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    revoked_at: Option<String>,
}

/// Reads, checks and classifies every line of `input`, storing through `store` in
/// batches of `batch` lines (at least 1; [`BATCH`] in production). `now` stands for an
/// absent `created_at`. `refused` hears each refusal, in line order; `progress` hears the
/// summary after each batch.
pub async fn import<R: Read + Send + 'static>(
    store: &dyn RevocationStore,
    input: R,
    now: DateTime<Utc>,
    batch: usize,
    mut refused: impl FnMut(&Refusal),
    mut progress: impl FnMut(&Summary),
) -> Result<Summary, Stopped> {
    let (sender, mut batches) = mpsc::channel::<Result<Batch, StopError>>(2);
    let reader = tokio::task::spawn_blocking(move || read(input, now, batch.max(1), sender));
    let mut summary = Summary::default();
    while let Some(next) = batches.recv().await {
        let result = match next {
            Ok(batch) => store_batch(store, batch, &mut summary, &mut refused).await,
            Err(e) => Err(e),
        };
        if let Err(error) = result {
            // The reader stops once the channel is gone.
            drop(batches);
            let _ = reader.await;
            return Err(Stopped {
                done: summary,
                error,
            });
        }
        progress(&summary);
    }
    reader.await.expect("the import's reader does not panic");
    Ok(summary)
}

/// Lines read and checked: the tokens to store, the refusals so far.
struct Batch {
    tokens: Vec<(u64, ImportToken)>,
    refused: Vec<Refusal>,
    /// Lines read (not blank) in this batch.
    lines: u64,
    /// The last line number read.
    last: u64,
}

impl Batch {
    fn new(capacity: usize) -> Batch {
        Batch {
            tokens: Vec::with_capacity(capacity),
            refused: Vec::new(),
            lines: 0,
            last: 0,
        }
    }
}

/// The reader thread: batches of at most `size` lines (not blank) to `sender`.
fn read(
    input: impl Read,
    now: DateTime<Utc>,
    size: usize,
    sender: mpsc::Sender<Result<Batch, StopError>>,
) {
    let mut input = BufReader::with_capacity(256 * 1024, input);
    let mut buf = Vec::with_capacity(MAX_LINE);
    let mut batch = Batch::new(size);
    let mut number = 0u64;
    loop {
        number += 1;
        let too_long = match read_line(&mut input, &mut buf) {
            Ok(Some((_, too_long))) => too_long,
            Ok(None) => break,
            Err(source) => {
                let _ = sender.blocking_send(Err(StopError::Read {
                    line: number,
                    source,
                }));
                return;
            }
        };
        batch.last = number;
        let mut line = buf.as_slice();
        if number == 1 {
            line = line.strip_prefix(b"\xef\xbb\xbf").unwrap_or(line);
        }
        if !too_long && line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        batch.lines += 1;
        let checked = if too_long {
            Err(Reason::TooLong)
        } else {
            check(line, now)
        };
        match checked {
            Ok(token) => batch.tokens.push((number, token)),
            Err(reason) => batch.refused.push(Refusal {
                line: number,
                reason,
            }),
        }
        if batch.lines as usize >= size {
            let full = std::mem::replace(&mut batch, Batch::new(size));
            if sender.blocking_send(Ok(full)).is_err() {
                return;
            }
        }
    }
    if batch.lines > 0 {
        let _ = sender.blocking_send(Ok(batch));
    }
}

/// The next line into `buf` (without its `\n` or `\r\n`, at most [`MAX_LINE`] bytes of
/// it): `None` at the end; else the bytes read and whether the line was longer.
fn read_line(input: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<(u64, bool)>> {
    buf.clear();
    let (mut bytes, mut too_long) = (0u64, false);
    loop {
        let available = match input.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok((bytes > 0).then_some((bytes, too_long)));
        }
        let (part, end) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if !too_long {
            if buf.len() + part.len() > MAX_LINE + 1 {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(part);
            }
        }
        let used = end.unwrap_or(available.len());
        input.consume(used);
        bytes += used as u64;
        if end.is_some() {
            break;
        }
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    if buf.len() > MAX_LINE {
        too_long = true;
    }
    Ok(Some((bytes, too_long)))
}

/// One line, checked: the token it names, or why not.
fn check(line: &[u8], now: DateTime<Utc>) -> Result<ImportToken, Reason> {
    let line: Line = serde_json::from_slice(line).map_err(|e| json_reason(line, &e))?;
    let mut hash = [0u8; 32];
    if line.sha256.len() != 64 || hex::decode_to_slice(&line.sha256, &mut hash).is_err() {
        return Err(Reason::Sha256);
    }
    let format = FORMATS
        .iter()
        .find(|f| f.name == line.format)
        .ok_or(Reason::Format)?
        .name;
    let owner_len = line.owner.chars().count();
    if owner_len == 0 || owner_len > MAX_OWNER || line.owner.chars().any(needs_escape) {
        return Err(Reason::Owner);
    }
    let time = |field: &'static str, value: Option<String>| {
        value
            .map(|v| {
                DateTime::parse_from_rfc3339(&v)
                    .map(|t| t.to_utc())
                    .map_err(|_| Reason::Time(field))
            })
            .transpose()
    };
    Ok(ImportToken {
        hash: TokenHash(hash),
        owner: line.owner,
        format,
        created_at: time("created_at", line.created_at)?.unwrap_or(now),
        expires_at: time("expires_at", line.expires_at)?.unwrap_or(NEVER_EXPIRES),
        revoked_at: time("revoked_at", line.revoked_at)?,
    })
}

/// Why serde refused `line`, in words that quote no value (serde's own text may: `invalid
/// type: integer `5``). Only for refused lines, so the second parse costs nothing
/// otherwise.
fn json_reason(line: &[u8], e: &serde_json::Error) -> Reason {
    use serde_json::error::Category;
    if matches!(
        e.classify(),
        Category::Syntax | Category::Eof | Category::Io
    ) {
        return Reason::Json(e.column());
    }
    let text = e.to_string();
    let named = |prefix: &str| {
        text.strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
    };
    let known = |name: &str| FIELDS.iter().copied().find(|f| *f == name);
    if let Some(name) = named("unknown field `") {
        // A field's name is the file's content: shown only when it is a short plain word
        // that holds no token (`{"cio…": 1}` from an export keyed by token).
        let plain = name.len() <= 40
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && redact_tokens(name) == name;
        return Reason::UnknownField(if plain {
            name.to_owned()
        } else {
            NAME_NOT_SHOWN.to_owned()
        });
    }
    if let Some(field) = named("missing field `").and_then(known) {
        return Reason::MissingField(field);
    }
    if let Some(field) = named("duplicate field `").and_then(known) {
        return Reason::DuplicateField(field);
    }
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(line) else {
        return Reason::NotObject;
    };
    FIELDS
        .iter()
        .copied()
        .find(|&f| match fields.get(f) {
            Some(serde_json::Value::String(_)) | None => false,
            Some(serde_json::Value::Null) => matches!(f, "sha256" | "format" | "owner"),
            Some(_) => true,
        })
        .map_or(Reason::NotObject, Reason::WrongType)
}

/// Stores one batch and classifies its lines into `summary`, telling `refused` of each
/// refusal in line order.
async fn store_batch(
    store: &dyn RevocationStore,
    batch: Batch,
    summary: &mut Summary,
    refused: &mut impl FnMut(&Refusal),
) -> Result<(), StopError> {
    let stopped = |source| StopError::Store {
        line: batch.last,
        source,
    };
    // The first line of each hash goes to the store; the others are compared with what
    // is stored once it has.
    let mut first: HashMap<TokenHash, usize> = HashMap::with_capacity(batch.tokens.len());
    let mut distinct = Vec::with_capacity(batch.tokens.len());
    for (i, (_, token)) in batch.tokens.iter().enumerate() {
        first.entry(token.hash).or_insert_with(|| {
            distinct.push(token.clone());
            i
        });
    }
    // In hash order: two imports of the same hashes lock them in one order, never
    // waiting on each other in a circle (PostgreSQL inserts in input order).
    distinct.sort_by_key(|t| t.hash);
    let answer = store.import_tokens(&distinct).await.map_err(stopped)?;
    drop(distinct);
    // What is stored for each hash now: (owner, format, revoked).
    let mut stored: HashMap<TokenHash, (&str, &str, bool)> = answer
        .stored
        .iter()
        .map(|s| (s.hash, (s.owner.as_str(), s.format.as_str(), s.revoked)))
        .collect();
    let mut imported = std::collections::HashSet::with_capacity(answer.inserted.len());
    for hash in &answer.inserted {
        let token = &batch.tokens[first[hash]].1;
        stored.insert(
            *hash,
            (&token.owner, token.format, token.revoked_at.is_some()),
        );
        imported.insert(first[hash]);
    }

    #[derive(PartialEq)]
    enum Verdict {
        Imported,
        Unchanged,
        Revoke,
    }
    let mut verdicts = Vec::with_capacity(batch.tokens.len());
    let mut refusals = batch.refused;
    let mut revocations: Vec<(TokenHash, DateTime<Utc>)> = Vec::new();
    for (i, (line, token)) in batch.tokens.iter().enumerate() {
        let verdict = if imported.contains(&i) {
            Ok(Verdict::Imported)
        } else {
            match stored.get_mut(&token.hash) {
                None => Err(Reason::Raced),
                Some((owner, _, _)) if *owner != token.owner => Err(Reason::OtherOwner),
                Some((_, format, _)) if *format != token.format => Err(Reason::OtherFormat),
                Some((_, _, revoked)) => match token.revoked_at {
                    Some(at) if !*revoked => {
                        *revoked = true;
                        revocations.push((token.hash, at));
                        Ok(Verdict::Revoke)
                    }
                    _ => Ok(Verdict::Unchanged),
                },
            }
        };
        match verdict {
            Ok(v) => verdicts.push((token.hash, v)),
            Err(reason) => refusals.push(Refusal {
                line: *line,
                reason,
            }),
        }
    }
    revocations.sort_by_key(|&(hash, _)| hash);
    let revoked: std::collections::HashSet<TokenHash> = store
        .revoke_imported(&revocations)
        .await
        .map_err(stopped)?
        .into_iter()
        .collect();

    for (hash, verdict) in verdicts {
        match verdict {
            Verdict::Imported => summary.imported += 1,
            // Revoked meanwhile by someone else: nothing changed by this line.
            Verdict::Revoke if revoked.contains(&hash) => summary.revoked += 1,
            Verdict::Revoke | Verdict::Unchanged => summary.unchanged += 1,
        }
    }
    refusals.sort_by_key(|r| r.line);
    for refusal in &refusals {
        refused(refusal);
    }
    summary.refused += refusals.len() as u64;
    summary.lines += batch.lines;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z")
            .unwrap()
            .to_utc()
    }

    const HASH: &str = "3F9A0C12D4E5b6a7980123456789abcdef0123456789abcdef0123456789abcd";

    fn line(extra: &str) -> String {
        format!(r#"{{"sha256": "{HASH}", "format": "crates_io_api", "owner": "alice"{extra}}}"#)
    }

    #[test]
    fn a_minimal_line_never_expires_and_was_created_now() {
        let token = check(line("").as_bytes(), now()).unwrap();
        assert_eq!(token.hash.to_hex(), HASH.to_ascii_lowercase());
        assert_eq!(token.format, "crates_io_api");
        assert_eq!(token.created_at, now());
        assert_eq!(token.expires_at, NEVER_EXPIRES);
        assert_eq!(token.revoked_at, None);
        let token = check(
            line(r#", "expires_at": null, "revoked_at": "2026-01-02T03:04:05+01:00""#).as_bytes(),
            now(),
        )
        .unwrap();
        assert_eq!(token.expires_at, NEVER_EXPIRES);
        assert_eq!(
            token.revoked_at.unwrap().to_rfc3339(),
            "2026-01-02T02:04:05+00:00"
        );
    }

    #[test]
    fn reasons_name_fields_never_values() {
        let secretish = "s3cr3tvalue";
        let cases: Vec<(String, Reason)> = vec![
            (format!("{{\"sha256\": \"{secretish}"), Reason::Json(0)),
            (format!("[\"{secretish}\"]"), Reason::NotObject),
            (
                line(&format!(r#", "{secretish}": 1"#)),
                Reason::UnknownField(secretish.into()),
            ),
            // A token as a field's name (an export keyed by token): not shown.
            (
                line(&format!(r#", "cio{}": 1"#, "b7G".repeat(11))),
                Reason::UnknownField(NAME_NOT_SHOWN.into()),
            ),
            (
                line(r#", "cio_tp_x": 1"#),
                Reason::UnknownField(NAME_NOT_SHOWN.into()),
            ),
            (
                format!(r#"{{"sha256": "{HASH}", "owner": "{secretish}"}}"#),
                Reason::MissingField("format"),
            ),
            (
                line(r#", "expires_at": 12345"#),
                Reason::WrongType("expires_at"),
            ),
            (line(r#", "owner": "b""#), Reason::DuplicateField("owner")),
            (line("").replace(HASH, &HASH[1..]), Reason::Sha256),
            (
                line("").replace(HASH, &HASH.replace('F', "g")),
                Reason::Sha256,
            ),
            (line("").replace("crates_io_api", secretish), Reason::Format),
            (line("").replace("alice", ""), Reason::Owner),
            (line("").replace("alice", "a\\u202eb"), Reason::Owner),
            (line("").replace("alice", &"é".repeat(201)), Reason::Owner),
            (
                line(&format!(r#", "created_at": "{secretish}""#)),
                Reason::Time("created_at"),
            ),
        ];
        for (text, want) in cases {
            let got = check(text.as_bytes(), now()).unwrap_err();
            match (&got, &want) {
                (Reason::Json(_), Reason::Json(_)) => {}
                _ => assert_eq!(got, want, "{text}"),
            }
            if !matches!(want, Reason::UnknownField(_)) {
                assert!(!got.to_string().contains(secretish), "{got}");
            }
        }
        // 200 characters of two bytes each are fine.
        assert!(check(
            line("").replace("alice", &"é".repeat(200)).as_bytes(),
            now()
        )
        .is_ok());
    }

    #[test]
    fn long_lines_are_cut_and_line_endings_dropped() {
        let long = "x".repeat(MAX_LINE + 10);
        let text = format!("a\r\n{long}\n\nlast");
        let mut input = BufReader::with_capacity(16, text.as_bytes());
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut input, &mut buf).unwrap(), Some((3, false)));
        assert_eq!(buf, b"a");
        let read = read_line(&mut input, &mut buf).unwrap().unwrap();
        assert_eq!(read, (long.len() as u64 + 1, true));
        assert!(buf.len() <= MAX_LINE + 1);
        assert_eq!(read_line(&mut input, &mut buf).unwrap(), Some((1, false)));
        assert_eq!(buf, b"");
        assert_eq!(read_line(&mut input, &mut buf).unwrap(), Some((4, false)));
        assert_eq!(buf, b"last");
        assert_eq!(read_line(&mut input, &mut buf).unwrap(), None);
    }
}
