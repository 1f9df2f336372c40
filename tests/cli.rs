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
        "REVOKER_HOLDER_ENDPOINTS",
        "REVOKER_HOLDER_RATE_LIMIT",
        "REVOKER_HOLDER_RATE_BURST",
        "REVOKER_TRUSTED_PROXIES",
        "REVOKER_INTROSPECTION_CLIENTS",
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

/// The holder endpoints' flags are checked before anything binds, and an introspection
/// secret is never quoted back (a value without a colon may be a secret alone).
#[test]
fn holder_flags_are_checked_without_quoting_a_secret() {
    let serve = |args: &[&str]| {
        let out = revoker()
            .args(["serve", "--database-url", "sqlite::memory:"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was taken");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = serve(&["--introspection-client", "api:tooShortSecret"]);
    assert!(err.contains("shorter than 16 characters"), "{err}");
    assert!(!err.contains("tooShortSecret"), "{err}");
    let err = serve(&["--introspection-client", "aLongSecretWithoutAnyColon"]);
    assert!(err.contains("not ID:SECRET"), "{err}");
    assert!(!err.contains("aLongSecretWithoutAnyColon"), "{err}");
    let err = serve(&["--holder-rate-limit", "0/s"]);
    assert!(
        err.contains("--holder-rate-limit") && err.contains("off"),
        "{err}"
    );
    let err = serve(&["--holder-rate-limit", "20 per second"]);
    assert!(err.contains("N/s, N/m, N/h or off"), "{err}");
    let err = serve(&["--trusted-proxy", "10.0.0.0/33"]);
    assert!(err.contains("expected a CIDR"), "{err}");
    let err = serve(&["--holder-endpoints", "maybe"]);
    assert!(err.contains("expected on or off"), "{err}");
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
    let stdout = run_ok(
        revoker()
            .args(["keys", "generate", "--key-id", "team-1", "--out"])
            .arg(path("a.pem")),
    );
    let printed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(printed["public_keys"][0]["key_identifier"], "team-1");
    assert!(!stdout.contains("PRIVATE"));
    std::fs::write(path("keys.json"), &stdout).unwrap();

    // --key-file: the second key added beside the first.
    let stdout = run_ok(
        revoker()
            .args(["keys", "generate", "--key-id", "team-2", "--out"])
            .arg(path("b.pem"))
            .arg("--key-file")
            .arg(path("keys.json")),
    );
    assert!(stdout.is_empty());
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

/// `revoker ARGS… --help`, stdout, its whitespace (line wrapping) made single spaces.
fn help(args: &[&str]) -> String {
    let out = revoker().args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "{args:?} --help");
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn each_help_shows_the_flags_its_command_uses_and_says_true_things() {
    let commands: &[&[&str]] = &[
        &["serve"],
        &["migrate"],
        &["purge"],
        &["replay"],
        &["token", "mint"],
        &["token", "show"],
        &["token", "revoke"],
        &["token", "list"],
        &["token", "import"],
        &["keys", "generate"],
        &["notify", "run"],
        &["notify", "list"],
        &["notify", "retry"],
    ];
    for args in commands {
        let text = help(args);
        // Variables as `[env: NAME]`, never `NAME=` (an empty-looking default).
        assert!(!text.contains("=]"), "{args:?}: {text}");
        assert!(!text.contains("(file created if missing)"), "{args:?}");
        let pool = text.contains("--db-timeout") || text.contains("--db-max-connections");
        assert_eq!(
            pool,
            *args == ["serve"],
            "{args:?}: pool flags are serve's only"
        );
        let poll = text.contains("--notify-poll-interval");
        assert_eq!(
            poll,
            *args == ["serve"],
            "{args:?}: the poll interval is serve's"
        );
    }
    let serve = help(&["serve"]);
    assert!(serve.contains("[env: REVOKER_LISTEN]"));
    for says in [
        "--admin-max-connections <ADMIN_MAX_CONNECTIONS>",
        "no number of admin connections can take the descriptors deliveries need",
        "[env: REVOKER_ADMIN_MAX_CONNECTIONS] [default: 64]",
    ] {
        assert!(serve.contains(says), "{says:?} in {serve}");
    }
    let run = help(&["notify", "run"]);
    assert!(!run.contains("once (what"), "{run}");
    assert!(run.contains("round after round until none is due"), "{run}");
    assert!(
        !run.contains("queued in the database but not sent"),
        "{run}"
    );
    assert!(help(&["replay"]).contains("refuse a database that does not exist"));
}

#[test]
fn migrate_says_how_many_migrations_it_applied() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("r.db").display());
    let run = || run_ok(revoker().args(["migrate", "--database-url", &url]));
    let migrations = std::fs::read_dir(fixture("../migrations/sqlite"))
        .unwrap()
        .count();
    assert_eq!(
        run(),
        format!("applied {migrations} migration(s) ({migrations} applied in all)\n")
    );
    assert_eq!(
        run(),
        format!("no migrations pending ({migrations} applied)\n")
    );
}

#[tokio::test]
async fn a_503_is_one_warn_line_and_no_error_and_logs_are_tidy() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    // Scanner `down` fetches its keys from a port nothing listens on.
    let server = ServeProcess::start(
        db.url(),
        &[
            "--scanner",
            "down=http://127.0.0.1:9/keys",
            "--keys-timeout",
            "1s",
        ],
        false,
    );
    let start = server.logs();
    assert!(start.contains("backend=sqlite"), "{start}");
    let body = alert_body(&["junk"]);
    let answer = reqwest::Client::new()
        .post(format!("{}/secret-scanning/down", server.base))
        .header("Github-Public-Key-Identifier", KEY_ID)
        .header("Github-Public-Key-Signature", Signer::test().sign(&body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 503);
    // Readiness polls while not ready, on both listeners (the public one has the trace
    // layer that logged an ERROR per 5xx).
    for base in [&server.base, &server.admin, &server.base] {
        let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
        assert_eq!(r.status(), 503);
    }
    // A delivery that works, for its duration.
    let ok = server.deliver(&Signer::test(), alert_body(&["junk"])).await;
    assert_eq!(ok.status, 200);
    server.wait_for_log("delivery processed");
    let logs = server.stop();
    assert!(!logs.contains("ERROR"), "{logs}");
    // At info and above (the server runs at debug; tower-http's per-request debug
    // line carries the status too).
    let refusals: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("status=503") && !l.contains(" DEBUG ") && !l.contains(" TRACE "))
        .collect();
    assert_eq!(refusals.len(), 1, "{logs}");
    assert!(refusals[0].contains("WARN") && refusals[0].contains("keys_unavailable"));
    // Durations to the microsecond.
    for line in logs.lines().filter(|l| l.contains("duration_ms=")) {
        let value = line.split("duration_ms=").nth(1).unwrap();
        let value = value.split_whitespace().next().unwrap();
        let decimals = value.split('.').nth(1).map_or(0, str::len);
        assert!(decimals <= 3, "{line}");
    }
}

#[tokio::test]
async fn postgres_start_is_quiet_and_names_the_database_without_its_password() {
    // Empty: the first start migrates, and is quiet too.
    let Some(db) = TestDb::empty(Kind::Postgres).await else {
        return;
    };
    // Trust authentication ignores the password, so the URL works with one in it.
    let with_password = db.url().replacen("postgres@", "postgres:hunter2secret@", 1);
    assert_ne!(with_password, db.url());
    let first = ServeProcess::start(&with_password, &[], false).stop();
    let second = ServeProcess::start(&with_password, &[], false).stop();
    for logs in [&first, &second] {
        assert!(!logs.contains("hunter2secret"), "{logs}");
        assert!(!logs.contains("sqlx::postgres::notice"), "{logs}");
        assert!(logs.contains("backend=postgres"), "{logs}");
    }
    // Token mint logs its expiry in RFC 3339.
    let out = revoker()
        .args([
            "token",
            "mint",
            "--owner",
            "o/p",
            "--database-url",
            db.url(),
        ])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expires = stderr
        .split("expires_at=")
        .nth(1)
        .unwrap_or_else(|| panic!("{stderr}"));
    let expires = expires.split_whitespace().next().unwrap().trim_matches('"');
    chrono::DateTime::parse_from_rfc3339(expires).unwrap_or_else(|e| panic!("{expires}: {e}"));
}

/// A migrated PostgreSQL test database, a copy of the template (tests/common/db.rs), is
/// what the migrations make of an empty one as far as revoker can tell: the same
/// tables, columns, indexes, constraints, functions, triggers, sequences and rows, the
/// same migrations recorded (so `revoker migrate` finds none pending), and it takes
/// connections like any database. The template itself takes none and cannot be dropped.
#[tokio::test]
async fn postgres_a_copy_of_the_template_is_what_the_migrations_make() {
    use sqlx::Connection;
    let Some(copy) = TestDb::new(Kind::Postgres).await else {
        return;
    };
    let fresh = TestDb::empty(Kind::Postgres).await.unwrap();
    let migrate = |db: &TestDb| run_ok(revoker().args(["migrate", "--database-url", db.url()]));
    let n = postgres_migrations();
    assert_eq!(
        migrate(&fresh),
        format!("applied {n} migration(s) ({n} applied in all)\n")
    );
    let schema = "SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type
                         || ' ' || coalesce(column_default, '-') || ' ' || is_nullable
                    FROM information_schema.columns WHERE table_schema = 'public'
                  UNION ALL SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
                  UNION ALL SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' '
                         || pg_get_constraintdef(oid)
                    FROM pg_constraint WHERE connamespace = 'public'::regnamespace
                  UNION ALL SELECT 'function ' || p.oid::regprocedure || ' '
                         || md5(pg_get_functiondef(p.oid))
                    FROM pg_proc p WHERE pronamespace = 'public'::regnamespace
                  UNION ALL SELECT 'trigger ' || pg_get_triggerdef(oid)
                    FROM pg_trigger WHERE NOT tgisinternal
                  UNION ALL SELECT 'view ' || viewname || ' ' || md5(definition)
                    FROM pg_views WHERE schemaname = 'public'
                  UNION ALL SELECT 'sequence ' || sequencename || ' '
                         || coalesce(last_value::text, 'unused')
                    FROM pg_sequences WHERE schemaname = 'public'
                  UNION ALL SELECT 'rows ' || table_name || ' ' || (xpath('/row/n/text()',
                         query_to_xml('SELECT count(*) AS n FROM public.' || quote_ident(table_name),
                                      false, true, '')))[1]::text
                    FROM information_schema.tables WHERE table_schema = 'public'
                  UNION ALL SELECT 'migration ' || version || ' ' || description || ' ' || success
                         || ' ' || encode(checksum, 'hex')
                    FROM _sqlx_migrations
                  UNION ALL SELECT 'database ' || pg_encoding_to_char(encoding) || ' ' || datcollate
                         || ' ' || datctype || ' ' || datallowconn || ' ' || datistemplate
                         || ' ' || datconnlimit
                    FROM pg_database WHERE datname = current_database()
                  ORDER BY 1";
    let expected = fresh.texts(schema).await;
    assert!(expected.len() > 100, "{expected:?}");
    assert_eq!(copy.texts(schema).await, expected);
    assert_eq!(
        migrate(&copy),
        format!("no migrations pending ({n} applied)\n")
    );

    let template = template_name();
    let mut admin = sqlx::PgConnection::connect(&postgres_admin_url())
        .await
        .unwrap();
    let marks: (bool, bool) =
        sqlx::query_as("SELECT datallowconn, datistemplate FROM pg_database WHERE datname = $1")
            .bind(&template)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    // IS_TEMPLATE: DROP DATABASE refuses it ("cannot drop a template database").
    assert_eq!(
        marks,
        (false, true),
        "{template}: ALLOW_CONNECTIONS, IS_TEMPLATE"
    );
}
