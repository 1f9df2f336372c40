//! Issue 27: a registry adopts revoker without re-minting. crates.io's two token formats,
//! generated here exactly as crates.io's code makes them (from the formats' description,
//! not revoker's code), imported by the hashes crates.io keeps (`revoker token import`,
//! twice: the second changes nothing), are revoked by a signed
//! delivery, by GitLab's Revocation API and by replay, through the real binary with
//! `--token-formats`; a wrong check character and an unknown `cio` + 32 string are
//! `false_positive`; a server on the default formats does not take them; no raw token is
//! stored. On SQLite and PostgreSQL.

mod common;

use chrono::Duration as Ttl;
use common::*;
use sha2::{Digest, Sha256};

const ALL_FORMATS: &str = "cio_tp,crates_io_trustpub,crates_io_api";
const REVOCATION_API_TOKEN: &str = "s3cret-revocation-api-token";

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The hash crates.io stores: of the 31 random characters for a trusted-publishing
/// token, of the whole token for an API token.
fn crates_io_hash(token: &str) -> String {
    if token.starts_with("cio_tp_") {
        sha256_hex(&token[7..38])
    } else {
        sha256_hex(token)
    }
}

fn format_of(token: &str) -> &'static str {
    if token.starts_with("cio_tp_") {
        "crates_io_trustpub"
    } else {
        "crates_io_api"
    }
}

/// Imports registry tokens by crates.io's hashes (`revoker token import -`), live for an
/// hour, as the registry exports its rows; the summary line.
async fn store_registry_tokens(db: &TestDb, tokens: &[(&str, &str)]) -> String {
    use std::io::Write;
    let expires = (chrono::Utc::now() + Ttl::hours(1)).to_rfc3339();
    let lines: String = tokens
        .iter()
        .map(|(token, owner)| {
            serde_json::json!({
                "sha256": crates_io_hash(token), "format": format_of(token),
                "owner": owner, "expires_at": expires,
            })
            .to_string()
                + "\n"
        })
        .collect();
    let mut child = revoker_command()
        .args(["token", "import", "-", "--database-url", db.url()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Whether the token stored under crates.io's hash of `token` is revoked.
async fn revoked(db: &TestDb, token: &str) -> bool {
    let hash = crates_io_hash(token);
    let sql = match db.kind() {
        Kind::Postgres => format!(
            "SELECT (revoked_at IS NOT NULL)::text FROM tokens WHERE hash = '\\x{hash}'::bytea"
        ),
        Kind::Sqlite => format!(
            "SELECT CASE WHEN revoked_at IS NULL THEN 'false' ELSE 'true' END FROM tokens WHERE hash = X'{hash}'"
        ),
    };
    let rows = db.texts(&sql).await;
    assert_eq!(rows.len(), 1, "{} is stored", &hash[..12]);
    rows[0] == "true"
}

/// A `cio_tp` token whose first 39 characters are also a well-formed trusted-publishing
/// token (one in 62 is).
fn ours_with_a_trustpub_inside() -> revoker::domain::Token {
    loop {
        let t = revoker::domain::Token::generate();
        let s = t.expose_secret();
        if trustpub_check(&s[7..38]) == s.as_bytes()[38] as char {
            return t;
        }
    }
}

async fn registry_tokens_are_revoked_everywhere(kind: Kind) {
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    let store = open_migrated_store(&db).await;
    let ours = mint_many(store.as_ref(), "revoker/own", 1, Ttl::hours(1))
        .await
        .remove(0);
    // For the delivery, the Revocation API and replay: one of each crates.io format.
    let (t1, a1, t2, a2, t3, a3) = (
        trustpub_token(),
        api_token(),
        trustpub_token(),
        api_token(),
        trustpub_token(),
        api_token(),
    );
    let registry = [
        (t1.as_str(), "alice/crate"),
        (&a1, "bob"),
        (&t2, "carol/crate"),
        (&a2, "dave"),
        (&t3, "erin/crate"),
        (&a3, "frank"),
    ];
    let summary = store_registry_tokens(&db, &registry).await;
    assert!(summary.contains("6 imported"), "{summary}");
    // Imported again: nothing changes.
    let before = db.dump().await;
    let summary = store_registry_tokens(&db, &registry).await;
    assert!(summary.contains("0 imported, 6 unchanged"), "{summary}");
    assert_eq!(db.dump().await, before);

    // A server on the default formats takes none of them: not ours.
    let default = ServeProcess::start(db.url(), &[], false);
    let body = serde_json::to_vec(&serde_json::json!([
        {"token": t1, "type": "crates_io_trustpub", "url": "https://x/1", "source": "content"},
        {"token": a1, "type": "crates_io_api", "url": "https://x/2", "source": "content"},
    ]))
    .unwrap();
    let answer = default.deliver(&Signer::test(), body.clone()).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.labels(), ["false_positive", "false_positive"]);
    assert!(!revoked(&db, &t1).await && !revoked(&db, &a1).await);
    default.stop();

    let server = ServeProcess::start(
        db.url(),
        &[
            "--token-formats",
            ALL_FORMATS,
            "--revocation-api-token",
            REVOCATION_API_TOKEN,
        ],
        false,
    );
    // 1. A signed delivery: both revoked; a wrong check character and an unknown
    //    `cio` + 32 are false positives; ours still is ours.
    let mut wrong = t1.clone().into_bytes();
    wrong[38] = if wrong[38] == b'A' { b'B' } else { b'A' };
    let wrong = String::from_utf8(wrong).unwrap();
    let unknown = api_token();
    let delivery = serde_json::to_vec(&serde_json::json!([
        {"token": t1, "type": "crates_io_trustpub", "url": "https://x/1", "source": "content"},
        {"token": a1, "type": "crates_io_api", "url": "https://x/2", "source": "content"},
        {"token": wrong, "type": "crates_io_trustpub", "url": "https://x/3", "source": "content"},
        {"token": unknown, "type": "crates_io_api", "url": "https://x/4", "source": "content"},
        {"token": ours.expose_secret(), "type": "cio_tp", "url": "https://x/5", "source": "content"},
    ]))
    .unwrap();
    let answer = server.deliver(&Signer::test(), delivery).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        answer.labels(),
        [
            "true_positive",
            "true_positive",
            "false_positive",
            "false_positive",
            "true_positive"
        ]
    );
    // The feedback names each token by the SHA-256 of the whole string GitHub sent,
    // whatever part its format stores.
    let feedback: Vec<serde_json::Value> = serde_json::from_str(&answer.text).unwrap();
    assert_eq!(feedback[0]["token_hash"], sha256_hex(&t1));
    assert_eq!(feedback[1]["token_hash"], sha256_hex(&a1));
    assert!(revoked(&db, &t1).await && revoked(&db, &a1).await);
    assert!(!revoked(&db, &t2).await && !revoked(&db, &a2).await);
    let t = store.token(&ours.hash()).await.unwrap().unwrap();
    assert!(t.revoked_at.is_some());
    assert_eq!(t.format, "cio_tp");

    // 2. GitLab's Revocation API.
    let status = reqwest::Client::new()
        .post(format!("{}/v1/revoke_tokens", server.base))
        .header("Authorization", REVOCATION_API_TOKEN)
        .body(
            serde_json::json!([
                {"type": "gitleaks_rule_id_cio_tp", "token": t2, "location": "https://gitlab.example/a#L1"},
                {"type": "gitleaks_rule_id_cio_tp", "token": a2, "location": "https://gitlab.example/a#L2"},
            ])
            .to_string(),
        )
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    assert!(revoked(&db, &t2).await && revoked(&db, &a2).await);
    let logs = server.stop();

    // 3. Replay of a text report: a trusted-publishing token glued to letters, an API
    //    token, and one of ours whose first 39 characters pass crates.io's check (one
    //    token of ours, not also a trusted-publishing one).
    let inside = ours_with_a_trustpub_inside();
    store
        .insert_tokens(&[revoker::store::NewToken {
            hash: inside.hash(),
            owner: "revoker/inside".into(),
            created_at: chrono::Utc::now(),
            expires_at: chrono::Utc::now() + Ttl::hours(1),
        }])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("leak.log");
    std::fs::write(
        &report,
        format!(
            "deploy: token={t3}abcd\nCARGO_REGISTRY_TOKEN={a3}\nold: {}\n",
            inside.expose_secret()
        ),
    )
    .unwrap();
    let out = run_ok(revoker_command().args([
        "replay",
        "--json",
        "--actor",
        "test@example.com",
        "--token-formats",
        ALL_FORMATS,
        "--database-url",
        db.url(),
        report.to_str().unwrap(),
    ]));
    assert!(revoked(&db, &t3).await && revoked(&db, &a3).await);
    let inside_stored = store.token(&inside.hash()).await.unwrap().unwrap();
    assert!(inside_stored.revoked_at.is_some());
    let rows: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("row").cloned())
        .collect();
    assert_eq!(rows.len(), 3, "three tokens, no fourth inside ours: {out}");
    assert!(rows.iter().all(|r| r["label"] == "true_positive"), "{out}");
    let owners: Vec<&str> = rows.iter().filter_map(|r| r["owner"].as_str()).collect();
    assert_eq!(owners, ["erin/crate", "frank", "revoker/inside"], "{out}");
    // Each recorded with its format as its type.
    let types = db
        .texts(
            "SELECT token_type FROM report_items
             WHERE report_id = (SELECT max(id) FROM reports) ORDER BY position",
        )
        .await;
    assert_eq!(types, ["crates_io_trustpub", "crates_io_api", "cio_tp"]);

    // The stats count each format's tokens apart.
    let stats = store.stats(chrono::Utc::now().date_naive()).await.unwrap();
    let by_format: Vec<(&str, i64, i64)> = stats
        .by_format
        .iter()
        .map(|f| (f.format.as_str(), f.tokens_revoked, f.tokens_expired))
        .collect();
    assert_eq!(
        by_format,
        [
            ("cio_tp", 2, 0),
            ("crates_io_api", 3, 0),
            ("crates_io_trustpub", 3, 0)
        ]
    );

    // The registry learns of each revocation: every owner's notification carries the
    // token's format and its hash exactly as stored (crates.io's), signed.
    let hook = Webhook::start().await;
    run_ok(
        revoker_command()
            .args(["notify", "run", "--database-url", db.url()])
            .args(["--notify-webhook", &hook.url, "--notify-secret", SECRET]),
    );
    let sent = hook.wait_for(8).await;
    let mut told: Vec<(String, String, String)> = sent
        .iter()
        .map(|n| {
            assert!(n.signature_ok);
            let body: serde_json::Value = serde_json::from_slice(&n.body).unwrap();
            (
                body["owner"].as_str().unwrap().to_owned(),
                body["token"]["type"].as_str().unwrap().to_owned(),
                body["token"]["sha256"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    told.sort();
    let mut expected: Vec<(String, String, String)> = [
        (&t1, "alice/crate"),
        (&a1, "bob"),
        (&t2, "carol/crate"),
        (&a2, "dave"),
        (&t3, "erin/crate"),
        (&a3, "frank"),
    ]
    .iter()
    .map(|(t, owner)| {
        (
            owner.to_string(),
            format_of(t).to_owned(),
            crates_io_hash(t),
        )
    })
    .chain([
        (
            "revoker/inside".to_owned(),
            "cio_tp".to_owned(),
            inside.hash().to_hex(),
        ),
        (
            "revoker/own".to_owned(),
            "cio_tp".to_owned(),
            ours.hash().to_hex(),
        ),
    ])
    .collect();
    expected.sort();
    assert_eq!(told, expected);

    // Stored nowhere, logged nowhere: no secret part of any of them.
    let dump = db.dump().await;
    for token in [&t1, &a1, &t2, &a2, &t3, &a3, &wrong, &unknown] {
        let secret = &token[token.len() - 30..];
        assert!(!dump.contains(secret), "the database holds a secret");
        assert!(!logs.contains(secret), "the logs hold a secret");
        assert!(!out.contains(secret), "replay's output holds a secret");
    }
    assert!(db.inconsistencies().await.is_empty());
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_tokens_are_revoked_everywhere_sqlite() {
    registry_tokens_are_revoked_everywhere(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_tokens_are_revoked_everywhere_postgres() {
    registry_tokens_are_revoked_everywhere(Kind::Postgres).await;
}

/// `token check` and `token show` by the token: a trusted-publishing token is shown by
/// the hash crates.io stores (of its random part), and refused on the default formats.
#[tokio::test]
async fn token_check_and_show_know_the_formats() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let _store = open_migrated_store(&db).await;
    let t = trustpub_token();
    store_registry_tokens(&db, &[(&t, "alice/crate")]).await;
    let check = |formats: &str| {
        revoker_command()
            .args(["token", "check", &t, "--token-formats", formats])
            .output()
            .unwrap()
    };
    let out = check(ALL_FORMATS);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("crates_io_trustpub"), "{stdout}");
    assert!(stdout.contains(&crates_io_hash(&t)), "{stdout}");
    let out = check("cio_tp");
    assert_eq!(out.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&t[7..]));

    let show = run_ok(revoker_command().args([
        "token",
        "show",
        "--json",
        &t,
        "--token-formats",
        ALL_FORMATS,
        "--database-url",
        db.url(),
    ]));
    let shown: serde_json::Value = serde_json::from_str(show.trim()).unwrap();
    assert_eq!(shown["owner"], "alice/crate", "{show}");
    assert_eq!(shown["status"], "live", "{show}");
    assert_eq!(shown["format"], "crates_io_trustpub", "{show}");
    assert_eq!(shown["hash"], crates_io_hash(&t), "{show}");
    assert!(!show.contains(&t[7..]));
    let unknown_flag = revoker_command()
        .args(["token", "check", &t, "--token-formats", "cio_tp,gitlab"])
        .output()
        .unwrap();
    assert_eq!(unknown_flag.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown_flag.stderr).contains("unknown token format"));
    // A token pasted into the flag or its variable is never echoed.
    for (flag, env) in [
        (format!("cio_tp,{t}"), None),
        (String::new(), Some(t.clone())),
    ] {
        let mut cmd = revoker_command();
        cmd.args(["token", "check", "x"]);
        if flag.is_empty() {
            cmd.env("REVOKER_TOKEN_FORMATS", env.unwrap());
        } else {
            cmd.args(["--token-formats", &flag]);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("unknown token format"), "{stderr}");
        assert!(!stderr.contains(&t[7..]), "{stderr}");
    }
    db.cleanup().await;
}
