//! `revoker token show`, `revoke` and `list` through the binary, on SQLite and
//! PostgreSQL: an operator's look at one token and their hand on it, without `sqlite3`
//! or `psql`. No command prints a raw token it was given.

mod common;

use std::io::Write;
use std::process::{Output, Stdio};

use chrono::Duration as Ttl;
use common::*;
use revoker::domain::token::Token;

/// Runs `revoker token ARGS… --database-url URL`, with `stdin` piped in if given.
fn token_cmd(db: &TestDb, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = revoker_command()
        .arg("token")
        .args(args)
        .args(["--database-url", db.url()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Output that must not carry `raw`.
fn clean(out: &Output, raw: &str) -> String {
    let (stdout, stderr) = text(out);
    assert!(!stdout.contains(raw), "raw token on stdout:\n{stdout}");
    assert!(!stderr.contains(raw), "raw token on stderr:\n{stderr}");
    // Its random part alone neither.
    assert!(!stdout.contains(&raw[7..37]) && !stderr.contains(&raw[7..37]));
    stdout
}

async fn show_revoke_list(kind: Kind) {
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    let raw = mint_with_cli(db.url(), "alice/widget");
    let second = mint_with_cli(db.url(), "alice/widget");
    let store = open_store(db.url()).await;
    let bob = mint_many(store.as_ref(), "bob/other", 1, Ttl::hours(1)).await;
    let old = mint_many(store.as_ref(), "bob/other", 1, Ttl::hours(-1)).await;
    let hash = Token::parse(&raw).unwrap().hash();

    // Live, by the token itself and from stdin.
    let out = token_cmd(&db, &["show", &raw], None);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let stdout = clean(&out, &raw);
    assert!(stdout.contains("status        live"), "{stdout}");
    assert!(stdout.contains("owner         alice/widget"), "{stdout}");
    assert!(stdout.contains(&hash.prefix()), "{stdout}");
    assert!(stdout.contains("revoked       no"), "{stdout}");
    assert!(stdout.contains("notification  none"), "{stdout}");
    // Timestamps are RFC 3339.
    let created = stdout.lines().find(|l| l.starts_with("created")).unwrap();
    let created = created.trim_start_matches("created").trim();
    chrono::DateTime::parse_from_rfc3339(created).unwrap();
    let out = token_cmd(&db, &["show", "-"], Some(&format!("{raw}\n")));
    assert_eq!(out.status.code(), Some(0));
    assert!(clean(&out, &raw).contains("status        live"));

    // Revoked by hand: one report of scanner `manual` with the actor, a notification.
    let out = token_cmd(
        &db,
        &["revoke", "-", "--actor", "sec@example.com"],
        Some(&raw),
    );
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let stdout = clean(&out, &raw);
    assert!(stdout.contains("revoked (report"), "{stdout}");
    assert!(stdout.contains("owner alice/widget"), "{stdout}");
    // The log names the actor as a plain value, as every other field.
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("revoked by hand") && stderr.contains("actor=sec@example.com"),
        "{stderr}"
    );
    let row = store.token(&hash).await.unwrap().unwrap();
    let report = store
        .report(row.revoked_by.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (report.scanner.as_str(), report.key_id.as_str()),
        ("manual", "sec@example.com")
    );
    let n = store.notification_of_token(&hash).await.unwrap().unwrap();
    assert_eq!(n.owner, "alice/widget");
    let payload: serde_json::Value =
        serde_json::from_slice(&revoker::notify::payload_body(&n)).unwrap();
    assert_eq!(payload["found"]["url"], "", "{payload}");
    assert_eq!(payload["found"]["source"], "manual");
    assert_eq!(payload["found"]["scanner"], "manual");
    let problems = db.inconsistencies().await;
    assert!(problems.is_empty(), "{problems:?}");

    // Shown by a 12-digit hash prefix, as text and as JSON.
    let out = token_cmd(&db, &["show", "--hash", &hash.prefix()], None);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let stdout = clean(&out, &raw);
    assert!(stdout.contains("status        revoked"), "{stdout}");
    let by = format!(
        "by report {} (scanner manual, actor sec@example.com)",
        report.id
    );
    assert!(stdout.contains(&by), "{stdout}");
    assert!(
        stdout.contains(&format!("notification  {} pending", n.public_id)),
        "{stdout}"
    );
    let out = token_cmd(&db, &["show", "--hash", &hash.to_hex(), "--json"], None);
    let json: serde_json::Value = serde_json::from_str(&clean(&out, &raw)).unwrap();
    assert_eq!(json["status"], "revoked");
    assert_eq!(json["owner"], "alice/widget");
    assert_eq!(json["revoked_by"]["scanner"], "manual");
    assert_eq!(json["revoked_by"]["report_id"], report.id);
    assert_eq!(json["notification"]["status"], "pending");
    assert_eq!(json["notification"]["id"], n.public_id);

    // Again: already revoked, the first revocation unchanged; exit 0.
    let out = token_cmd(&db, &["revoke", &raw, "--actor", "sec@example.com"], None);
    assert_eq!(out.status.code(), Some(0));
    assert!(clean(&out, &raw).contains("already revoked"));
    assert_eq!(store.token(&hash).await.unwrap().unwrap(), row);

    // Unknown: exit 1, nothing revoked; a malformed token or hash is an error.
    let unknown = Token::generate();
    let u = unknown.expose_secret();
    let out = token_cmd(&db, &["show", u], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(clean(&out, u).contains("unknown"));
    let out = token_cmd(&db, &["revoke", u, "--actor", "x"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("nothing revoked"));
    let out = token_cmd(&db, &["show", "--hash", "3f9a"], None);
    assert_eq!(out.status.code(), Some(3), "cannot tell: not 1 (unknown)");
    assert!(
        text(&out).1.contains("12 to 64 hex digits"),
        "{:?}",
        text(&out)
    );
    let out = token_cmd(&db, &["show", "cio_tp_not_a_token"], None);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out).1.contains("not a cio_tp_ token"));

    // An odd number of digits (13) finds it too.
    let odd = &hash.to_hex()[..13];
    let out = token_cmd(&db, &["show", "--hash", odd, "--json"], None);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let json: serde_json::Value = serde_json::from_str(&clean(&out, &raw)).unwrap();
    assert_eq!(json["hash"], hash.to_hex());

    // Lists: by owner, by status, as JSON lines.
    let out = token_cmd(&db, &["list", "--owner", "alice/widget"], None);
    let stdout = clean(&out, &raw);
    assert_eq!(
        stdout.lines().count(),
        3,
        "header and two tokens:\n{stdout}"
    );
    let second = Token::parse(&second).unwrap().hash().prefix();
    assert!(
        stdout.contains(&second) && stdout.contains(&hash.prefix()),
        "{stdout}"
    );
    assert!(!stdout.contains("bob/other"));
    let out = token_cmd(&db, &["list", "--status", "revoked", "--json"], None);
    let rows: Vec<serde_json::Value> = clean(&out, &raw)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["hash"], hash.to_hex());
    let out = token_cmd(&db, &["list", "--status", "expired", "--json"], None);
    let stdout = clean(&out, &raw);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains(&old[0].hash().to_hex()));
    let out = token_cmd(
        &db,
        &["list", "--owner", "bob/other", "--status", "live"],
        None,
    );
    let stdout = clean(&out, &raw);
    assert!(stdout.contains(&bob[0].hash().prefix()) && stdout.lines().count() == 2);
    let out = token_cmd(&db, &["list", "--status", "gone"], None);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a status that is none is a usage error"
    );
}

#[tokio::test]
async fn show_revoke_list_on_sqlite() {
    show_revoke_list(Kind::Sqlite).await;
}

#[tokio::test]
async fn show_revoke_list_on_postgres() {
    show_revoke_list(Kind::Postgres).await;
}
