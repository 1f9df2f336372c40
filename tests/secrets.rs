//! No raw token escapes: one run of the real binary through everything a scanner or
//! an operator can do (good, forged, malformed, oversized and misplaced deliveries,
//! a database outage, replays, `token check`, every admin page), then a scan of all
//! it produced (every log line at debug, every error body and header, the metrics,
//! stats and dashboard, replay and CLI output, a dump of every table) for every raw
//! token that was sent, and for the 30 random characters of each. Zero matches.
//!
//! The one place a raw token may appear is the 200 answer to a delivery: GitHub's
//! protocol echoes each `token_raw` back to the scanner that sent it.

mod common;

use std::process::Stdio;

use chrono::Duration as Ttl;
use common::*;
use revoker::domain::token::Token;

/// Everything observable that is not a 200 delivery answer.
#[derive(Default)]
struct Corpus {
    parts: Vec<(String, String)>,
}

impl Corpus {
    fn add(&mut self, what: impl Into<String>, text: impl Into<String>) {
        self.parts.push((what.into(), text.into()));
    }

    fn answer(&mut self, what: &str, a: &Answer) {
        self.add(
            what,
            format!("{} retry-after={:?} {}", a.status, a.retry_after, a.text),
        );
    }

    /// Where each secret shows up (empty when nowhere).
    fn find(&self, secrets: &[String]) -> Vec<String> {
        let mut found = Vec::new();
        for secret in secrets {
            // The whole token, and its random part alone (a token with its prefix cut).
            let random = &secret[7..37];
            for (what, text) in &self.parts {
                if text.contains(secret.as_str()) || text.contains(random) {
                    found.push(format!("a sent token appears in {what}"));
                }
            }
        }
        found
    }
}

async fn nothing_secret_escapes(kind: Kind) {
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    let admin_token = "s3cret-admin-token";
    let server = ServeProcess::start(
        db.url(),
        &[
            "--admin-token",
            admin_token,
            "--max-body",
            "64KiB",
            "--db-timeout",
            "1s",
            "--retry-after",
            "3s",
        ],
        false,
    );
    let store = open_store(db.url()).await;
    let live = mint_many(store.as_ref(), "secrets/live", 3, Ttl::hours(1)).await;
    let expired = mint_many(store.as_ref(), "secrets/expired", 1, Ttl::minutes(-5)).await;
    let unknown: Vec<Token> = (0..6).map(|_| Token::generate()).collect();
    // A well-formed-looking token with one character changed: fails its check digits.
    let mut bad_checksum = unknown[5].expose_secret().to_owned();
    let last = bad_checksum.pop().unwrap();
    bad_checksum.push(if last == 'A' { 'B' } else { 'A' });
    let mut sent: Vec<String> = live
        .iter()
        .chain(&expired)
        .chain(&unknown)
        .map(|t| t.expose_secret().to_owned())
        .collect();
    sent.push(bad_checksum.clone());

    let signer = Signer::test();
    let mut corpus = Corpus::default();

    // 1. A good delivery: live (twice), expired, unknown, bad check digits, junk; tokens
    //    also in the url, source and type fields, where no token belongs.
    let items = serde_json::json!([
        {"token": sent[0], "type": "cio_tp", "url": "https://github.com/o/r/blob/main/a", "source": "content"},
        {"token": sent[0], "type": "cio_tp", "url": "https://github.com/o/r/blob/main/b", "source": "content"},
        {"token": sent[3], "type": "cio_tp", "url": "https://github.com/o/r/blob/main/c", "source": "content"},
        {"token": sent[4], "type": "cio_tp", "url": format!("https://github.com/o/r/blob/main/.env#{}", sent[5]), "source": sent[6]},
        {"token": bad_checksum, "type": sent[7], "url": "https://github.com/o/r/issues/1", "source": "issue"},
        {"token": "junk", "type": "cio_tp", "url": "", "source": "content"},
    ]);
    let body = serde_json::to_vec(&items).unwrap();
    let a = server.deliver(&signer, body.clone()).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        a.labels(),
        [
            "true_positive",
            "true_positive",
            "true_positive",
            "false_positive",
            "false_positive",
            "false_positive"
        ]
    );
    // (The 200 body echoes token_raw by protocol; it is not added to the corpus.)

    // 2. Forgeries: another key, a changed byte, a trailing newline.
    let forged = Signer::from_fixture("keys/other-key.pem", KEY_ID);
    let a = server.deliver(&forged, body.clone()).await;
    assert_eq!(a.status, 401);
    corpus.answer("the answer to a forged delivery", &a);
    let mut changed = body.clone();
    changed[10] ^= 1;
    let a = server
        .post("github", Some(KEY_ID), Some(&signer.sign(&body)), changed)
        .await;
    assert_eq!(a.status, 401);
    corpus.answer("the answer to a changed body", &a);
    let mut newline = body.clone();
    newline.push(b'\n');
    let a = server
        .post("github", Some(KEY_ID), Some(&signer.sign(&body)), newline)
        .await;
    assert_eq!(a.status, 401);
    corpus.answer("the answer to a body with a newline added", &a);

    // 3. Signed but malformed: cut short, not an array, numbers for strings.
    for (what, bad) in [
        ("cut short", format!(r#"[{{"token":"{}","type":"#, sent[1])),
        ("an object", format!(r#"{{"token":"{}"}}"#, sent[1])),
        (
            "a number for a string",
            format!(r#"[{{"token":"{}","type":1,"url":2,"source":3}}]"#, sent[1]),
        ),
        ("not JSON", format!("token={} & more", sent[1])),
    ] {
        let bad = bad.into_bytes();
        let a = server.deliver(&signer, bad).await;
        assert_eq!(a.status, 400, "{what}: {}", a.text);
        corpus.answer(&format!("the answer to a body that is {what}"), &a);
    }

    // 4. Tokens where no token belongs: the path, the key id, the signature header.
    let a = server
        .post(
            &sent[2],
            Some(KEY_ID),
            Some(&signer.sign(&body)),
            body.clone(),
        )
        .await;
    assert_eq!(a.status, 404);
    corpus.answer("the answer to a token as scanner name", &a);
    let a = server
        .post(
            "github",
            Some(&sent[2]),
            Some(&signer.sign(&body)),
            body.clone(),
        )
        .await;
    assert!(a.status == 401 || a.status == 503, "{}", a.text);
    corpus.answer("the answer to a token as key id", &a);
    let a = server
        .post("github", Some(KEY_ID), Some(&sent[2]), body.clone())
        .await;
    assert_eq!(a.status, 401);
    corpus.answer("the answer to a token as signature", &a);
    let a = server.get("/secret-scanning/github").await;
    assert_eq!(a.status, 405);
    corpus.answer("the answer to a GET", &a);

    // 5. Oversized, declared and chunked.
    let big: Vec<u8> = alert_body(&vec![sent[2].as_str(); 2_000]);
    assert!(big.len() > 64 * 1024);
    let a = server.deliver(&signer, big.clone()).await;
    assert_eq!(a.status, 413);
    corpus.answer("the answer to an oversized body", &a);
    let stream = futures::stream::iter(
        big.chunks(8 * 1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let sent_chunked = server
        .client
        .post(format!("{}/secret-scanning/github", server.base))
        .header("Github-Public-Key-Identifier", KEY_ID)
        .header("Github-Public-Key-Signature", signer.sign(&big))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    // The server may answer 413 and close before the client has written everything.
    if let Ok(resp) = sent_chunked {
        let a = Answer::from(resp).await;
        assert_eq!(a.status, 413);
        corpus.answer("the answer to an oversized chunked body", &a);
    }

    // 6. The database down: 503, then the retry succeeds.
    let outage_body = alert_body(&[sent[1].as_str(), sent[8].as_str()]);
    let outage = Outage::start(&db).await;
    let a = server.deliver(&signer, outage_body.clone()).await;
    assert_eq!(a.status, 503, "{}", a.text);
    corpus.answer("the answer during a database outage", &a);
    let ready = server.admin_get("/readyz", Some(admin_token)).await;
    corpus.answer("/readyz during the outage", &ready);
    outage.end(&db).await;
    let a = server.deliver(&signer, outage_body).await;
    assert_eq!(a.labels(), ["true_positive", "false_positive"]);

    // 7. Every admin page.
    for path in [
        "/metrics",
        "/api/stats",
        "/dashboard",
        "/readyz",
        "/healthz",
    ] {
        let a = server.admin_get(path, Some(admin_token)).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text);
        corpus.answer(path, &a);
    }
    let logs = server.stop();
    assert!(logs.contains("delivery processed"));
    corpus.add("the server's logs", logs);

    // 8. Replays (local, JSON and table, dry run) and `token check`.
    let dir = tempfile::tempdir().unwrap();
    let gitleaks = dir.path().join("gitleaks.json");
    std::fs::write(
        &gitleaks,
        serde_json::to_vec(&serde_json::json!([
            {"Secret": sent[2], "Match": format!("token = {}", sent[2]), "File": "a.env", "StartLine": 1, "RuleID": "cio"},
            {"Secret": sent[9], "Match": sent[9], "File": format!("{}.txt", sent[10]), "StartLine": 2, "RuleID": "cio"},
        ]))
        .unwrap(),
    )
    .unwrap();
    // The file name itself carries a token: it reaches logs, output and locations.
    let text = dir.path().join(format!("paste-{}.txt", sent[9]));
    std::fs::write(&text, format!("leaked: {} and {}\n", sent[2], bad_checksum)).unwrap();
    for args in [
        vec!["--json"],
        vec![],
        vec!["--dry-run"],
        vec!["--dry-run", "--json"],
    ] {
        let out = revoker_command()
            .env("RUST_LOG", "debug")
            .args(["replay", "--actor", "secrets-test"])
            .args(&args)
            .arg(&gitleaks)
            .arg(&text)
            .args(["--database-url", db.url()])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let what = format!("the output of replay {}", args.join(" "));
        corpus.add(&what, String::from_utf8_lossy(&out.stdout));
        corpus.add(&what, String::from_utf8_lossy(&out.stderr));
    }
    for candidate in [sent[2].as_str(), bad_checksum.as_str()] {
        let out = revoker_command()
            .args(["token", "check", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(candidate.as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        corpus.add(
            "the output of token check",
            String::from_utf8_lossy(&out.stdout),
        );
        corpus.add(
            "the output of token check",
            String::from_utf8_lossy(&out.stderr),
        );
    }

    // 9. Every table.
    corpus.add("the database", db.dump().await);
    let problems = db.inconsistencies().await;
    assert!(problems.is_empty(), "{problems:?}\n{}", db.dump().await);

    let found = corpus.find(&sent);
    assert!(found.is_empty(), "{found:#?}");
    // The scan can fail: a raw token in the corpus is found.
    let mut check = Corpus::default();
    check.add("a planted line", format!("x {} y", &sent[3][7..37]));
    assert_eq!(check.find(&sent).len(), 1);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_secret_escapes_sqlite() {
    nothing_secret_escapes(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_secret_escapes_postgres() {
    nothing_secret_escapes(Kind::Postgres).await;
}
