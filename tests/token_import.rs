//! `revoker token import FILE|-` through the binary, on SQLite and PostgreSQL: a
//! registry's tokens stored by their hashes, found again by `token show`; importing again
//! changes nothing; a line that contradicts a stored token, a malformed line and an
//! unknown field are refused by line number while the others land (exit 1); a line's
//! `revoked_at` revokes a stored live token and nothing un-revokes one; batches are
//! invisible to the result. (Through a transaction-mode pooler: `tests/pooler.rs`.)

mod common;

use std::io::Write;
use std::process::{Output, Stdio};

use common::*;
use revoker::import::BATCH;

/// The 64 hex digits of a test hash: `n` spread over all 32 bytes.
fn hash(n: u64) -> String {
    let bytes: Vec<u8> = (0..32)
        .map(|i| (n >> ((i % 8) * 8)) as u8 ^ i as u8)
        .collect();
    hex::encode(bytes)
}

fn line(sha256: &str, format: &str, owner: &str, extra: &str) -> String {
    format!(r#"{{"sha256": "{sha256}", "format": "{format}", "owner": "{owner}"{extra}}}"#)
}

/// Runs `revoker token import ARGS… --database-url URL`, with `stdin` piped in.
fn import_cmd(db: &TestDb, args: &[&str], stdin: &str) -> Output {
    let mut child = revoker_command()
        .args(["token", "import"])
        .args(args)
        .args(["--database-url", db.url()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

/// Imports `lines` from a file: (exit code, stdout, stderr).
fn import_file(db: &TestDb, lines: &[String], extra: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let path = path.to_str().unwrap().to_owned();
    let out = import_cmd(db, &[&[path.as_str()], extra].concat(), "");
    text(&out)
}

fn text(out: &Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `token show --hash H`: (exit code, stdout).
fn show(db: &TestDb, sha256: &str) -> (i32, String) {
    let out = revoker_command()
        .args([
            "token",
            "show",
            "--hash",
            sha256,
            "--database-url",
            db.url(),
        ])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Each stored token as `hex|owner|format|revoked`, in hash order.
async fn tokens(db: &TestDb) -> Vec<String> {
    let hex = match db.kind() {
        Kind::Sqlite => "lower(hex(hash))",
        Kind::Postgres => "encode(hash, 'hex')",
    };
    db.texts(&format!(
        "SELECT {hex} || '|' || owner || '|' || format || '|' || \
         CASE WHEN revoked_at IS NULL THEN 'live' ELSE 'revoked' END FROM tokens ORDER BY hash"
    ))
    .await
}

async fn import_show_and_import_again(kind: Kind) {
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    let (a, b, c, d) = (hash(1), hash(2), hash(3), hash(4));
    let file = vec![
        // Upper-case hex, never expires (absent).
        line(&a.to_ascii_uppercase(), "crates_io_api", "alice", ""),
        line(
            &b,
            "crates_io_trustpub",
            "bob/widget",
            r#", "created_at": "2026-01-01T00:00:00Z", "expires_at": "2999-01-01T00:00:00+02:00""#,
        ),
        String::new(),
        line(
            &c,
            "cio_tp",
            "carol",
            r#", "expires_at": null, "revoked_at": null"#,
        ),
        line(
            &d,
            "crates_io_api",
            "dave",
            r#", "revoked_at": "2026-06-01T12:00:00Z""#,
        ),
        // The same line again: unchanged.
        line(&c, "cio_tp", "carol", ""),
    ];
    let (code, stdout, stderr) = import_file(&db, &file, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.starts_with("5 line(s): 4 imported, 1 unchanged, 0 revoked, 0 refused"),
        "{stdout}"
    );
    assert!(!stderr.contains("refused:"), "{stderr}");

    // Each found by `token show --hash`, as the line said.
    let (code, shown) = show(&db, &a);
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("status        live"), "{shown}");
    assert!(shown.contains("owner         alice"), "{shown}");
    assert!(shown.contains("format        crates_io_api"), "{shown}");
    assert!(
        shown.contains("expires       never"),
        "never expires: {shown}"
    );
    let (_, shown) = show(&db, &b[..12]);
    assert!(shown.contains("owner         bob/widget"), "{shown}");
    assert!(
        shown.contains("created       2026-01-01T00:00:00.000Z"),
        "{shown}"
    );
    assert!(
        shown.contains("expires       2998-12-31T22:00:00.000Z"),
        "{shown}"
    );
    let (_, shown) = show(&db, &c);
    assert!(shown.contains("status        live"), "{shown}");
    assert!(shown.contains("expires       never"), "{shown}");
    let (_, shown) = show(&db, &d);
    assert!(shown.contains("status        revoked"), "{shown}");
    assert!(
        shown.contains("revoked       2026-06-01T12:00:00.000Z (no report)"),
        "{shown}"
    );
    // And each with its format.
    assert_eq!(
        tokens(&db).await,
        [
            format!("{a}|alice|crates_io_api|live"),
            format!("{b}|bob/widget|crates_io_trustpub|live"),
            format!("{c}|carol|cio_tp|live"),
            format!("{d}|dave|crates_io_api|revoked"),
        ]
    );
    // Live far in the future: `token list --status live` counts a never-expiring token.
    let listed = run_ok(revoker_command().args([
        "token",
        "list",
        "--status",
        "live",
        "--json",
        "--database-url",
        db.url(),
    ]));
    assert_eq!(listed.lines().count(), 3, "{listed}");

    // Again, from stdin: every line unchanged, not one value in any table changed.
    let before = db.dump().await;
    let out = import_cmd(&db, &["-", "--json"], &(file.join("\n") + "\n"));
    let (code, stdout, stderr) = text(&out);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        summary,
        serde_json::json!({"lines": 5, "imported": 0, "unchanged": 5, "revoked": 0,
                           "refused": 0, "complete": true})
    );
    assert_eq!(db.dump().await, before);
    assert_eq!(
        db.inconsistencies_allowing_imports().await,
        Vec::<String>::new()
    );
    db.cleanup().await;
}

async fn contradictions_are_refused_by_line_number(kind: Kind) {
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    let (a, b, e) = (hash(1), hash(2), hash(5));
    let (code, stdout, _) = import_file(
        &db,
        &[
            line(&a, "crates_io_api", "alice", ""),
            line(&b, "crates_io_trustpub", "bob", ""),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stdout}");
    let before = tokens(&db).await;

    let file = vec![
        line(&a, "crates_io_api", "alice", ""),
        line(&a, "crates_io_api", "mallory", ""),
        line(&b, "crates_io_api", "bob", ""),
        line(&e, "crates_io_api", "erin", ""),
        // Contradicts line 4 of this very file.
        line(&e, "crates_io_api", "eve", ""),
        line(&e, "crates_io_api", "erin", ""),
    ];
    let (code, stdout, stderr) = import_file(&db, &file, &[]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.starts_with("6 line(s): 1 imported, 2 unchanged, 0 revoked, 3 refused"),
        "{stdout}"
    );
    let refusals: Vec<&str> = stderr.lines().filter(|l| l.starts_with("line ")).collect();
    assert_eq!(
        refusals,
        [
            "line 2: refused: contradicts the stored token: another owner",
            "line 3: refused: contradicts the stored token: another format",
            "line 5: refused: contradicts the stored token: another owner",
        ],
        "{stderr}"
    );
    // No owner or other value in the refusals.
    for value in ["mallory", "eve", &a, &b] {
        assert!(!stderr.contains(value), "{value} in {stderr}");
    }
    // The stored tokens are as they were; the new one landed.
    let mut after = tokens(&db).await;
    assert_eq!(after.len(), 3);
    after.retain(|t| !t.starts_with(&e));
    assert_eq!(after, before);
    let (code, shown) = show(&db, &e);
    assert_eq!(code, 0);
    assert!(shown.contains("owner         erin"), "{shown}");
    db.cleanup().await;
}

async fn malformed_lines_and_unknown_fields_are_refused(kind: Kind) {
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    let secret = "Zq7vValueNeverQuoted";
    let good = hash(7);
    let file = [
        line(
            &hash(10),
            "crates_io_api",
            "x",
            &format!(r#", "note": "{secret}""#),
        ),
        format!(r#"{{"sha256": "{secret}"#),
        line(&good, "crates_io_api", "grace", ""),
        line(&secret.repeat(4)[..64], "crates_io_api", "x", ""),
        line(&hash(11), secret, "x", ""),
        line(
            &hash(12),
            "crates_io_api",
            "x",
            &format!(r#", "created_at": "{secret}""#),
        ),
        format!(r#"{{"sha256": "{}", "owner": "{secret}"}}"#, hash(13)),
        line(
            &hash(14),
            "crates_io_api",
            "x",
            r#", "expires_at": 1767225600"#,
        ),
        line(&hash(15), "crates_io_api", "a\\u202eb", ""),
        format!(r#"["{secret}"]"#),
    ]
    .join("\n");
    let out = import_cmd(&db, &["-"], &file);
    let (code, stdout, stderr) = text(&out);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.starts_with("10 line(s): 1 imported, 0 unchanged, 0 revoked, 9 refused"),
        "{stdout}"
    );
    let refusals: Vec<&str> = stderr.lines().filter(|l| l.starts_with("line ")).collect();
    let expected = [
        "line 1: refused: unknown field `note`",
        "line 2: refused: not valid JSON (column ",
        "line 4: refused: `sha256` must be 64 hex digits",
        "line 5: refused: unknown `format` (known: cio_tp, crates_io_trustpub, crates_io_api)",
        "line 6: refused: `created_at` is not an RFC 3339 time",
        "line 7: refused: missing field `format`",
        "line 8: refused: field `expires_at` must be a string or null",
        "line 9: refused: `owner` must be 1 to 200 characters",
        "line 10: refused: not a JSON object",
    ];
    assert_eq!(refusals.len(), expected.len(), "{stderr}");
    for (got, want) in refusals.iter().zip(expected) {
        assert!(got.starts_with(want), "{got:?} is not {want:?}");
    }
    assert!(!stderr.contains(secret), "a value quoted: {stderr}");
    assert!(
        !stderr.contains('\u{202e}'),
        "a bidi control printed: {stderr}"
    );
    assert_eq!(
        tokens(&db).await,
        [format!("{good}|grace|crates_io_api|live")]
    );

    // A file that cannot be read is no refused line: the import could not run, exit 3.
    let out = import_cmd(&db, &["/nonexistent/tokens.jsonl"], "");
    let (code, stdout, stderr) = text(&out);
    assert_eq!(code, 3, "{stdout}{stderr}");
    assert!(
        stderr.contains("error: cannot open /nonexistent/tokens.jsonl"),
        "{stderr}"
    );
    db.cleanup().await;
}

async fn revoked_at_revokes_a_live_token_and_nothing_unrevokes(kind: Kind) {
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    let (a, b) = (hash(1), hash(2));
    let (code, ..) = import_file(
        &db,
        &[
            line(
                &a,
                "crates_io_api",
                "alice",
                r#", "created_at": "2026-01-01T00:00:00Z""#,
            ),
            line(
                &b,
                "crates_io_api",
                "bob",
                r#", "revoked_at": "2026-02-01T00:00:00Z""#,
            ),
        ],
        &[],
    );
    assert_eq!(code, 0);
    let file = [
        // Revokes the live one, at the line's instant; its other times stay.
        line(
            &a,
            "crates_io_api",
            "alice",
            r#", "created_at": "2020-01-01T00:00:00Z", "revoked_at": "2026-03-01T00:00:00Z""#,
        ),
        // Already revoked: its instant stays.
        line(
            &b,
            "crates_io_api",
            "bob",
            r#", "revoked_at": "2026-04-01T00:00:00Z""#,
        ),
    ];
    let (code, stdout, stderr) = import_file(&db, &file, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.starts_with("2 line(s): 0 imported, 1 unchanged, 1 revoked, 0 refused"),
        "{stdout}"
    );
    let (_, shown) = show(&db, &a);
    assert!(
        shown.contains("revoked       2026-03-01T00:00:00.000Z (no report)"),
        "{shown}"
    );
    assert!(
        shown.contains("created       2026-01-01T00:00:00.000Z"),
        "{shown}"
    );
    let (_, shown) = show(&db, &b);
    assert!(
        shown.contains("revoked       2026-02-01T00:00:00.000Z"),
        "{shown}"
    );

    // A line without revoked_at never makes a revoked token live again.
    let before = db.dump().await;
    let (code, stdout, _) = import_file(&db, &[line(&a, "crates_io_api", "alice", "")], &[]);
    assert_eq!(code, 0);
    assert!(
        stdout.starts_with("1 line(s): 0 imported, 1 unchanged"),
        "{stdout}"
    );
    assert_eq!(db.dump().await, before);
    // No report, no notification: an import is no delivery.
    assert_eq!(
        db.texts("SELECT CAST(count(*) AS TEXT) FROM reports").await,
        ["0"]
    );
    db.expand_outbox().await;
    assert_eq!(
        db.texts("SELECT CAST(count(*) AS TEXT) FROM notifications")
            .await,
        ["0"]
    );
    assert_eq!(
        db.inconsistencies_allowing_imports().await,
        Vec::<String>::new()
    );
    // The strict check takes a token revoked by no report for a half-made revocation.
    assert!(!db.inconsistencies().await.is_empty());
    db.cleanup().await;
}

/// More lines than a batch: a hash repeated across the batch boundary is unchanged, or
/// refused when it contradicts the first; every other line lands.
async fn across_batches(kind: Kind) {
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    let total = BATCH as u64 + 1_000;
    let formats = ["cio_tp", "crates_io_trustpub", "crates_io_api"];
    let mut file: Vec<String> = (0..total)
        .map(|n| {
            line(
                &hash(n),
                formats[n as usize % 3],
                &format!("owner{}", n % 97),
                "",
            )
        })
        .collect();
    // Lines BATCH + 1 and BATCH + 2 (1-based) repeat lines 1 and 2 of the first batch.
    file[BATCH] = line(&hash(0), formats[0], "owner0", "");
    file[BATCH + 1] = line(&hash(1), formats[1], "someone-else", "");
    let (code, stdout, stderr) = import_file(&db, &file, &[]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.starts_with(&format!(
            "{total} line(s): {} imported, 1 unchanged, 0 revoked, 1 refused",
            total - 2
        )),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!(
            "line {}: refused: contradicts the stored token: another owner",
            BATCH + 2
        )),
        "{stderr}"
    );
    assert_eq!(
        db.texts("SELECT CAST(count(*) AS TEXT) FROM tokens").await,
        [(total - 2).to_string()]
    );
    db.cleanup().await;
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Kind::Sqlite).await;
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Kind::Postgres).await;
            })*
        }
    };
}

on_both_backends!(
    import_show_and_import_again,
    contradictions_are_refused_by_line_number,
    malformed_lines_and_unknown_fields_are_refused,
    revoked_at_revokes_a_live_token_and_nothing_unrevokes,
    across_batches,
);
