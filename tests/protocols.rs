//! Scanners other than GitHub, end to end through the `revoker` binary: GitLab's
//! Partner API (`--scanner-protocol NAME=gitlab`: `Gitlab-` headers, answered 2xx once
//! verified) and deps.dev's GitHub-shaped deliveries under other header names
//! (`--scanner-header-prefix NAME=GOSST`). Signatures are made by OpenSSL's command line
//! and by Python's `cryptography`, and checked with GitLab's documented verification
//! (`pk.verify(base64.b64decode(sig), body, ec.ECDSA(hashes.SHA256()))`) before use.

mod common;

use std::process::Command;

use chrono::Duration as Ttl;
use common::*;
use revoker::domain::token::Token;

/// A signature of `body` by `fixtures/keys/test-key.pem`, made by `openssl dgst`.
fn openssl_signature(body: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, body).unwrap();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(fixture("keys/test-key.pem"))
        .arg(&file)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(out.stdout)
}

/// A signature of `body` made with Python's `cryptography`, then verified exactly as
/// GitLab's documentation does against the public key of `fixtures/keys/test-keys.json`.
fn python_signature(body: &[u8]) -> String {
    let script = r#"
import base64, json, sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
body = sys.stdin.buffer.read()
key = serialization.load_pem_private_key(open(sys.argv[1], "rb").read(), password=None)
sig = base64.b64encode(key.sign(body, ec.ECDSA(hashes.SHA256()))).decode()
public = json.load(open(sys.argv[2]))["public_keys"][0]["key"]
pk = serialization.load_pem_public_key(public.encode())
pk.verify(base64.b64decode(sig), body, ec.ECDSA(hashes.SHA256()))
print(sig)
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(fixture("keys/test-key.pem"))
        .arg(fixture("keys/test-keys.json"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python cryptography: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// POSTs `body` to `scanner` with the two headers named by `prefix`.
async fn post(
    server: &ServeProcess,
    scanner: &str,
    prefix: &str,
    signature: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/secret-scanning/{scanner}", server.base))
        .header("content-type", "application/json")
        .header(format!("{prefix}-Public-Key-Identifier"), KEY_ID)
        .header(format!("{prefix}-Public-Key-Signature"), signature)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// A body in the shape GitLab's Partner API sends: `type`, `token`, `url`, no `source`.
fn gitlab_body(tokens: &[&str]) -> Vec<u8> {
    let items: Vec<serde_json::Value> = tokens
        .iter()
        .map(|t| {
            serde_json::json!({
                "type": "cio_trusted_publishing_token",
                "token": t,
                "url": "https://gitlab.com/acme/widget/-/raw/5f1c2e9a/.env"
            })
        })
        .collect();
    serde_json::to_vec(&items).unwrap()
}

fn scanners() -> Vec<String> {
    let keys = fixture("keys/test-keys.json").display().to_string();
    vec![
        "--scanner".into(),
        format!("gl={keys}"),
        "--scanner-protocol".into(),
        "gl=gitlab".into(),
        "--scanner".into(),
        format!("pypi={keys}"),
        "--scanner-header-prefix".into(),
        "pypi=GOSST".into(),
    ]
}

async fn each_protocol_end_to_end(kind: Kind) {
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    let args = scanners();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = ServeProcess::start(db.url(), &args, false);
    let store = open_store(db.url()).await;
    let tokens = mint_many(store.as_ref(), "acme/widget", 4, Ttl::hours(1)).await;
    let raw: Vec<&str> = tokens.iter().map(Token::expose_secret).collect();
    let revoked = |t: &Token| {
        let store = store.clone();
        let hash = t.hash();
        async move {
            store
                .token(&hash)
                .await
                .unwrap()
                .unwrap()
                .revoked_at
                .is_some()
        }
    };

    // GitLab, signed by OpenSSL: revoked, 2xx.
    let body = gitlab_body(&[raw[0]]);
    let a = post(&server, "gl", "Gitlab", &openssl_signature(&body), body).await;
    assert!(a.status().is_success(), "{}", a.status());
    assert!(revoked(&tokens[0]).await);

    // GitLab, signed by Python's cryptography, header names in another case.
    let body = gitlab_body(&[raw[1]]);
    let a = post(&server, "gl", "GITLAB", &python_signature(&body), body).await;
    assert!(a.status().is_success(), "{}", a.status());
    assert!(revoked(&tokens[1]).await);

    // Junk only: still 2xx (GitLab would retry anything else).
    let body = gitlab_body(&["not-a-token", "cio_tp_short"]);
    let a = post(&server, "gl", "Gitlab", &openssl_signature(&body), body).await;
    assert!(a.status().is_success(), "{}", a.status());

    // Not an alert array, but verified: 2xx, and the token in its bytes is revoked.
    let body = format!("{{\"note\": \"leaked {}\"}}", raw[2]).into_bytes();
    let a = post(&server, "gl", "Gitlab", &openssl_signature(&body), body).await;
    assert!(a.status().is_success(), "{}", a.status());
    assert!(revoked(&tokens[2]).await, "salvaged from the raw bytes");

    // A forged signature stays 401; GitHub's headers on the GitLab scanner are missing ones.
    let body = gitlab_body(&[raw[3]]);
    let forged = openssl_signature(b"another body");
    let a = post(&server, "gl", "Gitlab", &forged, body.clone()).await;
    assert_eq!(a.status(), 401);
    let a = post(&server, "gl", "Github", &openssl_signature(&body), body).await;
    assert_eq!(a.status(), 401);
    let text = a.text().await.unwrap();
    assert!(text.contains("gitlab-public-key-identifier"), "{text}");
    assert!(!revoked(&tokens[3]).await);

    // deps.dev to PyPI: GitHub's body under GOSST- headers; the feedback is GitHub's.
    let body = alert_body(&[raw[3]]);
    let a = post(
        &server,
        "pypi",
        "GOSST",
        &python_signature(&body),
        body.clone(),
    )
    .await;
    assert_eq!(a.status(), 200);
    let feedback: serde_json::Value = a.json().await.unwrap();
    assert_eq!(feedback[0]["label"], "true_positive");
    assert!(revoked(&tokens[3]).await);
    let a = post(&server, "pypi", "Github", &openssl_signature(&body), body).await;
    assert_eq!(a.status(), 401, "Github- headers are not this scanner's");

    // The default scanner is unchanged.
    let a = server.deliver(&Signer::test(), alert_body(&["junk"])).await;
    assert_eq!(a.labels(), ["false_positive"]);
    let problems = db.inconsistencies().await;
    assert!(problems.is_empty(), "{problems:?}");
    server.stop();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_protocol_end_to_end_on_sqlite() {
    each_protocol_end_to_end(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_protocol_end_to_end_on_postgres() {
    each_protocol_end_to_end(Kind::Postgres).await;
}

/// Settings for a scanner that is not configured, or given twice, stop `serve` with a
/// message that names it.
#[test]
fn serve_refuses_protocol_settings_for_unknown_scanners() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    for (args, says) in [
        (
            vec!["--scanner-protocol", "gl=gitlab"],
            "\"gl\", which is not configured",
        ),
        (
            vec!["--scanner-header-prefix", "x=GOSST"],
            "\"x\", which is not configured",
        ),
        (
            vec!["--scanner-protocol", "github=svn"],
            "not a valid value",
        ),
        (
            vec!["--scanner-header-prefix", "github=Bad Prefix"],
            "not a valid value",
        ),
        (
            vec!["--revocation-api-token", " "],
            "empty or shorter than 16 characters",
        ),
        (
            vec!["--scanner", "gitlab-revocation-api=/dev/null"],
            "the Token Revocation API's own",
        ),
    ] {
        let out = serve_command(&db).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// GitLab self-managed's Token Revocation API, as GitLab calls it: raw
/// `Authorization: <token>` (and `Bearer <token>`), `[{"type","token","location"}]`
/// with extra fields. 204 once revoked (a report of scanner `gitlab-revocation-api`),
/// 400 for a bad body or a type not offered, 401 without a valid token, 429 with
/// Retry-After while the database is down (nothing recorded), 404 when not enabled.
async fn revocation_api_end_to_end(kind: Kind) {
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    let server = ServeProcess::start(
        db.url(),
        &[
            "--revocation-api-token",
            "first-gitlab-secret",
            "--revocation-api-token",
            "second-gitlab-secret",
            "--db-timeout",
            "1s",
            "--retry-after",
            "7s",
        ],
        false,
    );
    let store = open_store(db.url()).await;
    let tokens = mint_many(store.as_ref(), "acme/widget", 3, Ttl::hours(1)).await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.base);
    let finding = |t: &Token, kind: &str| {
        serde_json::json!([{
            "type": kind,
            "token": t.expose_secret(),
            "location": "https://gitlab.example.com/acme/widget/-/blob/main/.env#L3",
            "pipeline_id": 42
        }])
        .to_string()
    };
    // The status of one POST /v1/revoke_tokens.
    let revoke = |auth: Option<&'static str>, body: String| {
        let mut req = client.post(url("/v1/revoke_tokens")).body(body);
        if let Some(auth) = auth {
            req = req.header("Authorization", auth);
        }
        async move { req.send().await.unwrap() }
    };
    let ours = |t: &Token| finding(t, "gitleaks_rule_id_cio_tp");
    let revoked = |t: &Token| {
        let (store, hash) = (store.clone(), t.hash());
        async move {
            store
                .token(&hash)
                .await
                .unwrap()
                .unwrap()
                .revoked_at
                .is_some()
        }
    };
    const FIRST: Option<&str> = Some("first-gitlab-secret");

    let types = client
        .get(url("/v1/revocable_token_types"))
        .header("Authorization", "second-gitlab-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(types.status(), 200);
    let types: serde_json::Value = types.json().await.unwrap();
    assert_eq!(
        types,
        serde_json::json!({"types": ["gitleaks_rule_id_cio_tp"]})
    );
    for auth in [None, Some("wrong"), Some("Bearer wrong")] {
        assert_eq!(
            revoke(auth, ours(&tokens[0])).await.status(),
            401,
            "{auth:?}"
        );
    }

    assert_eq!(revoke(FIRST, ours(&tokens[0])).await.status(), 204);
    let stored = store.token(&tokens[0].hash()).await.unwrap().unwrap();
    let report = store
        .report(stored.revoked_by.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.scanner, "gitlab-revocation-api");
    // `Bearer`, and a `token` that is the matched text around the token (a gitleaks rule
    // without a secret group): the token in it is revoked.
    let bearer = Some("Bearer second-gitlab-secret");
    let matched_text = serde_json::json!([{
        "type": "gitleaks_rule_id_cio_tp",
        "token": format!("CIO_TOKEN={}", tokens[1].expose_secret()),
    }])
    .to_string();
    assert_eq!(revoke(bearer, matched_text).await.status(), 204);
    assert!(revoked(&tokens[1]).await);

    let other_type = finding(&tokens[2], "aws_access_key");
    assert_eq!(revoke(FIRST, other_type).await.status(), 400);
    let not_an_array = format!("{{\"token\":\"{}\"}}", tokens[2].expose_secret());
    let a = revoke(FIRST, not_an_array).await;
    assert_eq!(a.status(), 400);
    let text = a.text().await.unwrap();
    assert!(!text.contains(tokens[2].expose_secret()), "{text}");

    let outage = Outage::start(&db).await;
    let a = revoke(FIRST, ours(&tokens[2])).await;
    assert_eq!(a.status(), 429);
    assert_eq!(a.headers()["retry-after"], "7");
    outage.end(&db).await;
    assert!(!revoked(&tokens[2]).await, "nothing recorded");
    assert_eq!(
        revoke(FIRST, ours(&tokens[2])).await.status(),
        204,
        "GitLab's retry"
    );
    assert!(revoked(&tokens[2]).await);

    let logs = server.stop();
    for secret in ["first-gitlab-secret", "second-gitlab-secret"] {
        assert!(!logs.contains(secret), "a revocation API token in the logs");
    }
    for t in &tokens {
        assert!(!logs.contains(t.expose_secret()));
    }
    // Not enabled: 404.
    let plain = ServeProcess::start(db.url(), &[], false);
    let a = client
        .get(format!("{}/v1/revocable_token_types", plain.base))
        .header("Authorization", "first-gitlab-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), 404);
    plain.stop();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_api_end_to_end_on_sqlite() {
    revocation_api_end_to_end(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_api_end_to_end_on_postgres() {
    revocation_api_end_to_end(Kind::Postgres).await;
}
