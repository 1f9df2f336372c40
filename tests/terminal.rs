//! Terminal-safe output, through the binary: text that came from outside (a delivery's
//! url, a webhook's error, a report's `Link`/`File`, a file name, a token's owner)
//! reaches an operator's terminal with its control and bidi characters escaped
//! (`\x1b`, `\n`, `\u{202e}`), so it can neither drive the terminal nor forge a line or
//! a row; `--json` keeps the exact value. `--owner` refuses bidi controls.

mod common;

use std::process::Output;

use chrono::{Duration as Ttl, Utc};
use common::*;
use revoker::domain::alert::{CandidateItem, NewReport};
use revoker::domain::token::TokenHash;
use revoker::store::RecordOptions;

/// The characters no human-readable output may hold raw.
fn raw_controls(s: &str) -> Vec<char> {
    s.chars()
        .filter(|&c| {
            c.is_control() && c != '\n'
                || matches!(c, '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8(out.stdout.clone()).unwrap(),
        String::from_utf8(out.stderr.clone()).unwrap(),
    )
}

/// Neither stream holds a raw control (other than line ends) or bidi character, and
/// no line of either starts with `forged` (the text after an injected newline).
fn assert_terminal_safe(out: &Output, forged: &str) {
    let (stdout, stderr) = text(out);
    for (name, s) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert_eq!(
            raw_controls(s),
            Vec::<char>::new(),
            "raw characters on {name}:\n{s:?}"
        );
        assert!(
            !s.lines().any(|l| l.trim_start().starts_with(forged)),
            "a line of its own on {name}:\n{s}"
        );
    }
}

#[tokio::test]
async fn notify_list_escapes_urls_owners_and_errors_from_outside() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let store = open_migrated_store(db.url()).await;
    let owner = "eve\u{202e}gpj.exe";
    let tokens = mint_many(store.as_ref(), owner, 2, Ttl::minutes(30)).await;
    let url = "https://x/?q=\x1b[2J\x1b]0;pwned\x07\nFAKE LOG LINE INFO all good\r\u{9b}31m";
    for (i, t) in tokens.iter().enumerate() {
        let hash = t.hash();
        let report = NewReport {
            body_sha256: TokenHash::of(&format!("body {i}")).0,
            candidates: vec![CandidateItem {
                url: url.into(),
                ..one_item_report(hash, "content", Utc::now()).candidates[0].clone()
            }],
            ..one_item_report(hash, "content", Utc::now())
        };
        store
            .record_report(&report, RecordOptions::default())
            .await
            .unwrap();
    }
    // A webhook's answer quoted in the last error of one of them.
    db.expand_outbox().await;
    let changed = db
        .execute(
            "UPDATE notifications SET last_error = 'webhook said: ' || char(27) || '[2J' \
             || char(10) || 'FAKE LOG LINE from the webhook' WHERE id = (SELECT min(id) FROM notifications)",
        )
        .await;
    assert_eq!(changed, 1);

    let out = revoker_command()
        .args(["notify", "list", "--database-url", db.url()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    assert_terminal_safe(&out, "FAKE LOG LINE");
    let (stdout, _) = text(&out);
    assert_eq!(
        stdout.lines().count(),
        3,
        "a header and two rows:\n{stdout}"
    );
    assert!(
        stdout.contains(
            "https://x/?q=\\x1b[2J\\x1b]0;pwned\\x07\\nFAKE LOG LINE INFO all good\\r\\u{9b}31m"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("webhook said: \\x1b[2J\\nFAKE LOG LINE from the webhook"),
        "{stdout}"
    );
    assert!(stdout.contains("eve\\u{202e}gpj.exe"), "{stdout}");

    // JSON lines keep the exact values (serde escapes them).
    let out = revoker_command()
        .args(["notify", "list", "--json", "--database-url", db.url()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let (stdout, _) = text(&out);
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["url"] == url && r["owner"] == owner));

    // An error line that quotes what was typed.
    let out = revoker_command()
        .args(["notify", "retry", "x\x1b[2J\nFAKE LOG LINE"])
        .args(["--database-url", db.url()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_terminal_safe(&out, "FAKE LOG LINE");
    assert!(
        text(&out)
            .1
            .contains("no notification x\\x1b[2J\\nFAKE LOG LINE"),
        "{:?}",
        text(&out)
    );
}

#[tokio::test]
async fn replay_escapes_report_fields_and_file_names_and_forges_no_row() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let store = open_migrated_store(db.url()).await;
    let ours = mint_many(store.as_ref(), "mallory\u{2066}x", 2, Ttl::minutes(30)).await;
    let (a, b) = (ours[0].expose_secret(), ours[1].expose_secret());
    let forged = "FORGED0000ab  revoked          true_positive   nobody";
    let findings = serde_json::json!([
        {
            "Secret": a, "RuleID": "cio", "File": "ci.yml", "StartLine": 3,
            "Link": format!("https://example.test/\x1b[2J\x1b[H\n{forged}  x")
        },
        {
            "Secret": b, "RuleID": "cio\u{202e}", "Link": "", "StartLine": 9,
            "File": format!("src/\x1b[31mred\r\n{forged}  y.rs"), "Commit": "abc\u{85}def"
        }
    ]);
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("gitleaks \x1b[2J\nFORGED0000cd.json");
    std::fs::write(&report, serde_json::to_vec_pretty(&findings).unwrap()).unwrap();
    let missing = dir.path().join("missing\x1b[2J\nFORGED0000ef.json");

    let out = revoker_command()
        .args(["replay", "--actor", "sec-ops", "--format", "gitleaks"])
        .arg(&report)
        .arg(&missing)
        .args(["--database-url", db.url()])
        .output()
        .unwrap();
    // The missing report makes the run fail at its end, saying which.
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    assert_terminal_safe(&out, "FORGED");
    let (stdout, stderr) = text(&out);
    let rows: Vec<&str> = stdout
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(rows.len(), 2, "one row per finding:\n{stdout}");
    for (row, t) in rows.iter().zip(&ours) {
        assert!(row.starts_with(&t.hash().prefix()), "{row}");
        assert!(row.contains("mallory\\u{2066}x"), "{row}");
    }
    assert!(
        rows[0].contains(&format!(
            "https://example.test/\\x1b[2J\\x1b[H\\n{forged}  x"
        )),
        "{stdout}"
    );
    assert!(
        rows[1].contains(&format!(
            "src/\\x1b[31mred\\r\\n{forged}  y.rs:9 @ abc\\u{{85}}def"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("NOT READ: ") && stdout.contains("missing\\x1b[2J\\nFORGED0000ef.json"),
        "{stdout}"
    );
    assert!(
        stderr.contains("missing\\x1b[2J\\nFORGED0000ef.json"),
        "{stderr}"
    );

    // What the replay recorded, shown by `token show`, with a key id (the actor) another
    // tool wrote; `--actor` itself refuses such a name.
    db.execute("UPDATE reports SET key_id = 'sec' || char(8238) || 'ops'")
        .await;
    let out = revoker_command()
        .args(["token", "show", "--hash", &ours[0].hash().prefix()])
        .args(["--database-url", db.url()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    assert_terminal_safe(&out, "FORGED");
    assert!(
        text(&out).0.contains("actor sec\\u{202e}ops"),
        "{:?}",
        text(&out)
    );

    let out = revoker_command()
        .args(["replay", "--actor", "sec\u{202e}ops", "--dry-run"])
        .arg(&report)
        .args(["--database-url", db.url()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{:?}", text(&out));
    assert!(text(&out).1.contains("--actor must be"), "{:?}", text(&out));

    // `--json` rows keep the exact values.
    let out = revoker_command()
        .args(["replay", "--dry-run", "--json", "--format", "gitleaks"])
        .arg(&report)
        .args(["--database-url", db.url()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let (stdout, _) = text(&out);
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v.get("row").is_some())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["row"]["url"], findings[0]["Link"]);
}

#[tokio::test]
async fn owners_with_bidi_controls_are_refused_and_old_ones_shown_escaped() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    for owner in ["a\u{202e}b", "\u{2067}crate", "x\u{200f}", "a\x1bb"] {
        let out = revoker_command()
            .args([
                "token",
                "mint",
                "--owner",
                owner,
                "--database-url",
                db.url(),
            ])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{owner:?} accepted");
        let (stdout, stderr) = text(&out);
        assert!(stdout.is_empty(), "no token printed: {stdout}");
        assert!(
            stderr.contains("--owner must be 1 to 200 printable characters")
                && stderr.contains("bidi"),
            "{stderr}"
        );
        assert_eq!(raw_controls(&stderr), Vec::<char>::new());
    }

    // One stored before the rule (or by another tool sharing the database).
    let store = open_migrated_store(db.url()).await;
    let t = &mint_many(
        store.as_ref(),
        "evil\u{202e}moc.elgoog",
        1,
        Ttl::minutes(30),
    )
    .await[0];
    mint_with_cli(db.url(), "alice/widget");

    let out = revoker_command()
        .args(["token", "list", "--database-url", db.url()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    assert_terminal_safe(&out, "moc");
    let (stdout, _) = text(&out);
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    assert!(stdout.contains("evil\\u{202e}moc.elgoog"), "{stdout}");

    let out = revoker_command()
        .args(["token", "show", "--hash", &t.hash().prefix()])
        .args(["--database-url", db.url()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    assert_terminal_safe(&out, "moc");
    assert!(
        text(&out)
            .0
            .contains("owner         evil\\u{202e}moc.elgoog"),
        "{:?}",
        text(&out)
    );

    // `--json` keeps it exact; the filter finds it by its exact value.
    let out = revoker_command()
        .args([
            "token",
            "list",
            "--json",
            "--owner",
            "evil\u{202e}moc.elgoog",
        ])
        .args(["--database-url", db.url()])
        .output()
        .unwrap();
    let (stdout, _) = text(&out);
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{stdout}");
    assert_eq!(rows[0]["owner"], "evil\u{202e}moc.elgoog");
}
