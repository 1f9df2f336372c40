//! The `revoker` binary, black-box: the README's newcomer flow (mint, serve, deliver)
//! and a scan of everything the process logged for raw tokens.

mod common;

use std::process::{Command, Stdio};

use common::*;
use revoker::domain::token::Token;

fn revoker() -> Command {
    revoker_command()
}

#[test]
fn token_check_accepts_valid_and_explains_invalid() {
    let ok = revoker()
        .args([
            "token",
            "check",
            "cio_tp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1yLcDB",
        ])
        .output()
        .unwrap();
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("ok:"));

    let bad = revoker()
        .args([
            "token",
            "check",
            "cio_tp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa000000",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("wrong check digits"), "{err}");
    assert!(err.contains("1yLcDB"), "says which digits are right: {err}");

    let short = revoker()
        .args(["token", "check", "cio_tp_abc"])
        .output()
        .unwrap();
    assert_eq!(short.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&short.stderr).contains("wrong length"));

    // From stdin, so the token stays out of argv.
    let mut child = revoker()
        .args(["token", "check", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let t = Token::generate();
    writeln!(child.stdin.take().unwrap(), "{}", t.expose_secret()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&t.hash().to_hex()));
}

#[test]
fn help_explains_every_flag_and_its_env_var() {
    let out = revoker().args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "REVOKER_LISTEN",
        "DATABASE_URL",
        "REVOKER_SCANNERS",
        "REVOKER_KEYS_TTL",
        "REVOKER_KEYS_REFETCH_INTERVAL",
        "REVOKER_KEYS_TIMEOUT",
        "GITHUB_TOKEN",
        "REVOKER_MAX_BODY",
        "REVOKER_RETRY_AFTER",
        "REVOKER_DB_MAX_CONNECTIONS",
        "REVOKER_DB_TIMEOUT",
        "sqlite://revoker.db",
    ] {
        assert!(help.contains(needle), "serve --help lacks {needle}");
    }
    let out = revoker()
        .args(["token", "mint", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--ttl"));
}

#[test]
fn bad_flags_get_clear_errors() {
    let out = revoker()
        .args(["serve", "--max-body", "lots"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid size"));
    let out = revoker()
        .args(["serve", "--scanner", "no-equals-sign"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME=SOURCE"));
    let out = revoker()
        .args(["migrate", "--database-url", "mysql://x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported database URL"));
}

async fn newcomer_flow(json_logs: bool) {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("revoker.db").display());
    let minted = mint_with_cli(&db_url, "alice/my-crate");
    let unknown = Token::generate();
    let server = ServeProcess::start(&db_url, &[], json_logs);
    let client = reqwest::Client::new();
    let signer = Signer::test();
    let body = alert_body(&[&minted, "junk", unknown.expose_secret()]);
    let send = |body: Vec<u8>, sig: String| {
        client
            .post(format!("{}/secret-scanning/github", server.base))
            .header("Github-Public-Key-Identifier", KEY_ID)
            .header("Github-Public-Key-Signature", sig)
            .body(body)
            .send()
    };
    let first = Answer::from(send(body.clone(), signer.sign(&body)).await.unwrap()).await;
    assert_eq!(
        first.labels(),
        ["true_positive", "false_positive", "false_positive"]
    );
    let second = Answer::from(send(body.clone(), signer.sign(&body)).await.unwrap()).await;
    assert_eq!(second.json, first.json);
    let forged = Signer::from_fixture("keys/other-key.pem", KEY_ID);
    let a = Answer::from(send(body.clone(), forged.sign(&body)).await.unwrap()).await;
    assert_eq!(a.status, 401);
    // A client that puts tokens where no token belongs: the path and the key id header.
    let resp = client
        .post(format!("{}/secret-scanning/{minted}", server.base))
        .header("Github-Public-Key-Identifier", unknown.expose_secret())
        .header("Github-Public-Key-Signature", signer.sign(&body))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let a = Answer::from(resp).await;
    assert_eq!(a.status, 404);
    assert!(
        !a.text.contains(&minted),
        "error body echoes the path token"
    );
    let resp = client
        .post(format!("{}/secret-scanning/github", server.base))
        .header("Github-Public-Key-Identifier", unknown.expose_secret())
        .header("Github-Public-Key-Signature", signer.sign(&body))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_ne!(resp.status(), 200);
    // A body that is not an array, signed, naming a token in the wrong place.
    let bad = format!(r#"{{"token":"{minted}"}}"#).into_bytes();
    let a = Answer::from(send(bad.clone(), signer.sign(&bad)).await.unwrap()).await;
    assert_eq!(a.status, 400);

    let logs = server.stop();
    let hash = Token::parse(&minted).unwrap().hash();
    assert!(logs.contains("delivery processed"), "{logs}");
    assert!(
        logs.contains(&hash.prefix()),
        "hash prefix is logged at debug"
    );
    for raw in [minted.as_str(), unknown.expose_secret()] {
        assert!(!logs.contains(raw), "raw token in the logs");
        assert!(!logs.contains(&raw[7..37]), "random part in the logs");
    }
    if json_logs {
        for line in logs.lines() {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newcomer_flow_with_the_binary_logs_no_raw_token() {
    newcomer_flow(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_and_hold_no_raw_token() {
    newcomer_flow(true).await;
}

/// `openssl dgst -sha256 -sign KEY` over `body`, base64: a signature as GitHub makes it.
fn openssl_sign(key: &std::path::Path, body: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, body).unwrap();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(out.stdout)
}

#[tokio::test]
async fn keys_generate_prints_or_extends_a_key_file_that_serve_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let path = |f: &str| dir.path().join(f);
    // Printed: a whole key file, saved as is.
    let out = revoker()
        .args(["keys", "generate", "--key-id", "team-1", "--out"])
        .arg(path("a.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["public_keys"][0]["key_identifier"], "team-1");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("PRIVATE"));
    std::fs::write(path("keys.json"), &out.stdout).unwrap();

    // --key-file: the second key added beside the first.
    let out = revoker()
        .args(["keys", "generate", "--key-id", "team-2", "--out"])
        .arg(path("b.pem"))
        .arg("--key-file")
        .arg(path("keys.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path("keys.json")).unwrap()).unwrap();
    let ids: Vec<&str> = file["public_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_identifier"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["team-1", "team-2"]);

    // The same id again: refused before any private key is written; the file unchanged.
    let before = std::fs::read(path("keys.json")).unwrap();
    let out = revoker()
        .args(["keys", "generate", "--key-id", "team-2", "--out"])
        .arg(path("c.pem"))
        .arg("--key-file")
        .arg(path("keys.json"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already has a key \"team-2\""));
    assert!(!path("c.pem").exists());
    assert_eq!(std::fs::read(path("keys.json")).unwrap(), before);

    // serve trusts both keys of the file: a delivery signed with the second is accepted.
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let scanner = format!("team={}", path("keys.json").display());
    let server = ServeProcess::start(db.url(), &["--scanner", &scanner], false);
    let body = alert_body(&["junk"]);
    let answer = reqwest::Client::new()
        .post(format!("{}/secret-scanning/team", server.base))
        .header("Github-Public-Key-Identifier", "team-2")
        .header(
            "Github-Public-Key-Signature",
            openssl_sign(&path("b.pem"), &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    server.stop();
}
