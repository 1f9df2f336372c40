//! `revoker replay`: every format from realistic fixtures, local and remote, dry-run,
//! idempotent reruns, JSON lines, and a 1,000,000-line report with bounded memory.
//! Fixture tokens are listed in `fixtures/reports/README.md`.

mod common;

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{Duration as Ttl, Utc};
use common::*;
use revoker::domain::token::{Token, TokenHash};
use revoker::domain::Outcome;
use revoker::replay::{self, formats::Format, Options, Summary, Target};
use revoker::signature::ScannerSpec;
use revoker::store::{NewToken, RevocationStore};

const A: &str = "cio_tp_ACAyMYNZERnTTS1iqvGWBaE8Nt8Ebu052fSx";
const B: &str = "cio_tp_lXgcmdQXsufD3qUOXbNKdAwgXN8can1OoeWU";
const C: &str = "cio_tp_gzqdfPXHzUfToQmeSRY4KCBCZSwhHN3JuWiw";
const D: &str = "cio_tp_UzdWnDTOCvFft4g9hLRxgLPPrU2Q2u0VTqp6";
const E: &str = "cio_tp_JjEvY1YIYnsep3zgvn2VOaIUCH3De43QC7H5";
const F: &str = "cio_tp_0GhNi68shQanwvDbxHn0vr39EirQPp0U6m2n";
const H: &str = "cio_tp_xy2X5r57IONveWxzHdypVCsUbBAwzK0P2RTI";
const I: &str = "cio_tp_KWbNbgECMszLtziYYiiX4cSqjLtyS83Z17Wl";

/// Stores a fixture token as if it had been minted (`ttl` may be negative).
async fn as_minted(store: &Arc<dyn RevocationStore>, raw: &str, ttl: Ttl) {
    let now = Utc::now();
    store
        .insert_token(&NewToken {
            hash: Token::parse(raw).unwrap().hash(),
            owner: "fixture".into(),
            created_at: now - Ttl::minutes(10),
            expires_at: now + ttl,
        })
        .await
        .unwrap();
}

fn opts(files: &[&str], dry_run: bool, json: bool) -> Options {
    Options {
        files: files
            .iter()
            .map(|f| fixture(&format!("reports/{f}")))
            .collect(),
        format: None,
        dry_run,
        json,
        batch_size: 10_000,
        progress: false,
        formats: revoker::domain::Formats::DEFAULT,
    }
}

async fn replay_to_string(target: &Target, o: &Options) -> (Summary, String) {
    let mut out = Vec::new();
    let summary = replay::run(target, o, &mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    (summary, text)
}

/// The outcome column of the row for this token's hash, in order of appearance.
fn outcomes_of(output: &str, raw: &str) -> Vec<String> {
    let prefix = TokenHash::of(raw).prefix();
    output
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(|l| l.split_whitespace().nth(1).unwrap().to_owned())
        .collect()
}

async fn local_store() -> (TestDb, Arc<dyn RevocationStore>) {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let store = open_store(db.url()).await;
    store.migrate().await.unwrap();
    (db, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitleaks_report_revokes_ours_and_a_second_run_revokes_nothing() {
    let (_db, store) = local_store().await;
    as_minted(&store, A, Ttl::minutes(30)).await;
    as_minted(&store, B, Ttl::minutes(30)).await;
    as_minted(&store, C, Ttl::minutes(-1)).await; // expired, never revoked
    let target = Target::Local {
        store: Arc::clone(&store),
        actor: "alice@security".into(),
    };

    let (s, out) = replay_to_string(&target, &opts(&["gitleaks.json"], false, false)).await;
    assert_eq!(s.occurrences, 5, "{out}");
    assert_eq!(
        outcomes_of(&out, A),
        ["revoked", "revoked"],
        "same batch: both answered"
    );
    assert_eq!(outcomes_of(&out, B), ["revoked"]);
    assert_eq!(outcomes_of(&out, C), ["expired"]);
    assert_eq!(s.counts.not_ours, 1);
    assert_eq!((s.true_positive, s.false_positive), (4, 1));
    assert!(
        out.contains(".github/workflows/publish.yml:31 @ 9f1c2a7b3d4e"),
        "{out}"
    );
    assert!(out.contains("tokens revoked now: 3"), "{out}");
    assert_eq!(s.tokens_revoked, 3, "A counts once though listed twice");
    for raw in [A, B, C] {
        assert!(!out.contains(raw), "raw token in the output");
    }
    let report = store.report(s.report_ids[0]).await.unwrap().unwrap();
    assert_eq!(report.scanner, "replay");
    assert_eq!(report.key_id, "alice@security");
    let b = store
        .token(&Token::parse(B).unwrap().hash())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.revoked_by, Some(s.report_ids[0]));

    let (again, out2) = replay_to_string(&target, &opts(&["gitleaks.json"], false, false)).await;
    assert_eq!(again.counts.revoked + again.counts.expired, 0);
    assert_eq!(again.counts.already_revoked, 4);
    assert!(out2.contains("nothing new"), "{out2}");
    let b2 = store
        .token(&Token::parse(B).unwrap().hash())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.revoked_at, b2.revoked_at, "revoked_at unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_is_detected_and_classified() {
    let (_db, store) = local_store().await;
    for raw in [D, E, F, H] {
        as_minted(&store, raw, Ttl::minutes(30)).await;
    }
    let target = Target::Local {
        store: Arc::clone(&store),
        actor: "bob".into(),
    };
    let (s, out) = replay_to_string(
        &target,
        &opts(
            &["trufflehog.jsonl", "incident.txt", "github.json"],
            false,
            false,
        ),
    )
    .await;
    assert_eq!(s.files, 3);
    assert_eq!(
        outcomes_of(&out, C),
        ["unknown"],
        "well-formed, never minted here"
    );
    assert_eq!(outcomes_of(&out, D), ["revoked", "revoked"]);
    assert_eq!(outcomes_of(&out, E), ["revoked", "revoked"]);
    assert_eq!(outcomes_of(&out, F), ["revoked"]);
    assert_eq!(outcomes_of(&out, H), ["revoked"]);
    assert_eq!(outcomes_of(&out, I), ["unknown", "unknown"]);
    assert!(
        out.contains("incident.txt:12"),
        "text rows say file:line\n{out}"
    );
    assert!(s.unstructured >= 1, "trufflehog log noise is named");
    // github.json: W3 and the junk string; incident.txt: W2.
    assert_eq!(s.counts.not_ours, 3, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_looks_up_without_writing() {
    let (_db, store) = local_store().await;
    as_minted(&store, A, Ttl::minutes(30)).await;
    let target = Target::Local {
        store: Arc::clone(&store),
        actor: "carol".into(),
    };
    let (s, out) = replay_to_string(&target, &opts(&["gitleaks.json"], true, false)).await;
    assert_eq!(outcomes_of(&out, A), ["would_revoke", "would_revoke"]);
    assert_eq!(outcomes_of(&out, B), ["unknown"]);
    assert!(out.contains("dry run: nothing written"));
    // The owner column: whom to tell for ours, `-` for a token nobody here has.
    let row = |raw: &str| {
        let prefix = TokenHash::of(raw).prefix();
        out.lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap()
            .to_owned()
    };
    assert_eq!(row(A).split_whitespace().nth(3), Some("fixture"), "{out}");
    assert_eq!(row(B).split_whitespace().nth(3), Some("-"), "{out}");
    assert!(out.lines().next().unwrap().contains("owner"), "{out}");
    // Two occurrences, one token.
    assert!(
        out.contains("tokens of ours: 1 distinct, 1 would be revoked"),
        "{out}"
    );
    assert!(out.contains("would revoke 2"), "{out}");
    assert_eq!((s.distinct_tokens, s.distinct_would_revoke), (1, 1));
    assert!(s.report_ids.is_empty());
    assert_eq!(store.count_reports().await.unwrap(), 0);
    let a = store
        .token(&Token::parse(A).unwrap().hash())
        .await
        .unwrap()
        .unwrap();
    assert!(a.revoked_at.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_give_one_row_per_occurrence_then_a_summary() {
    let (_db, store) = local_store().await;
    as_minted(&store, H, Ttl::minutes(30)).await;
    let target = Target::Local {
        store,
        actor: "dan".into(),
    };
    let mut o = opts(&["github.json"], false, true);
    o.format = Some(Format::Github);
    let (_, out) = replay_to_string(&target, &o).await;
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6, "5 rows + summary");
    assert_eq!(lines[0]["row"]["outcome"], "revoked");
    assert_eq!(lines[0]["row"]["label"], "true_positive");
    assert_eq!(lines[0]["row"]["owner"], "fixture");
    assert!(lines[1]["row"]["owner"].is_null());
    assert_eq!(
        lines[0]["row"]["token_hash_prefix"],
        TokenHash::of(H).prefix()
    );
    assert_eq!(lines[1]["row"]["outcome"], "not_ours");
    assert_eq!(lines[5]["summary"]["occurrences"], 5);
    assert_eq!(lines[5]["summary"]["counts"]["revoked"], 1);
    assert!(!out.contains(H));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_replay_signs_like_github_for_a_team_scanner() {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("team.pem");
    let entry = revoker::signature::generate_key_file(&pem, Some("team-1")).unwrap();
    assert_eq!(entry["key_identifier"], "team-1");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&pem).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "private key readable by others");
    }
    assert!(
        revoker::signature::generate_key_file(&pem, None).is_err(),
        "never overwrites"
    );
    let key_file = dir.path().join("team-keys.json");
    std::fs::write(
        &key_file,
        serde_json::json!({ "public_keys": [entry] }).to_string(),
    )
    .unwrap();

    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let keys = KeyServer::with_test_keys().await;
    let app = spawn_app(
        db.url(),
        &keys,
        TestOptions {
            extra_scanners: vec![ScannerSpec {
                name: "team".into(),
                source: key_file.display().to_string(),
            }],
            ..TestOptions::default()
        },
    )
    .await;
    for raw in [E, F] {
        as_minted(&app.store, raw, Ttl::minutes(30)).await;
    }
    let target = Target::remote(
        format!("{}/secret-scanning/team", app.base),
        replay::load_signing_key(&pem).unwrap(),
        "team-1".into(),
    )
    .unwrap();

    // Dry run: nothing is sent.
    let (_, out) = replay_to_string(&target, &opts(&["incident.txt"], true, false)).await;
    assert_eq!(outcomes_of(&out, E), ["not_sent", "not_sent"]);
    assert_eq!(app.store.count_reports().await.unwrap(), 0);

    let (s, out) = replay_to_string(&target, &opts(&["incident.txt"], false, false)).await;
    assert_eq!(s.true_positive, 3, "{out}");
    // Each sent token shows what the receiver answered.
    let e_rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with(&TokenHash::of(E).prefix()))
        .collect();
    assert!(!e_rows.is_empty());
    for row in e_rows {
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cols[1..3], ["sent", "true_positive"], "{out}");
    }
    assert!(
        out.contains("the receiver's answer: 3 true positive"),
        "{out}"
    );
    // W2 (not ours) and G (well-formed, glued to more text, never minted here).
    assert_eq!(s.false_positive, 2, "{out}");
    let e = app
        .store
        .token(&Token::parse(E).unwrap().hash())
        .await
        .unwrap()
        .unwrap();
    let report = app
        .store
        .report(e.revoked_by.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.scanner, "team");
    assert_eq!(report.key_id, "team-1");

    // A key the receiver does not trust is refused with a clear error.
    let other_pem = dir.path().join("other.pem");
    revoker::signature::generate_key_file(&other_pem, Some("team-1")).unwrap();
    let forged = Target::remote(
        format!("{}/secret-scanning/team", app.base),
        replay::load_signing_key(&other_pem).unwrap(),
        "team-1".into(),
    )
    .unwrap();
    let err = replay::run(
        &forged,
        &opts(&["incident.txt"], false, false),
        &mut Vec::new(),
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("401"), "{err:#}");
    app.stop().await;
}

/// The issue-26 reproduction, through the binary: the receiver at `--url` answers
/// `307 Location: http://127.0.0.2:Q/collect?t=<a token>`, a real listener on another
/// host. Before: the signed body, raw tokens inside, was POSTed again to that listener.
/// Now the command exits non-zero naming the Location (the token in it redacted), and
/// the listener gets no connection at all: after the command has exited, a sentinel
/// connection is accepted and nothing came before it (one accepting thread, the
/// kernel's queue is first in, first out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_replay_never_follows_a_redirect() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // The other host: reads a request (head and body) and answers 500, so a client that
    // follows fails fast. Each connection: its peer address and the bytes it sent.
    let elsewhere = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let elsewhere_addr = elsewhere.local_addr().unwrap();
    let (seen_tx, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in elsewhere.incoming().map_while(Result::ok) {
            let peer = stream.peer_addr().ok();
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = std::io::BufReader::new(&stream);
            let (mut received, mut body_len, mut line) = (0, 0, String::new());
            while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                received += line.len();
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        body_len = value.trim().parse().unwrap_or(0);
                    }
                }
                if line == "\r\n" {
                    let mut body = vec![0; body_len];
                    if reader.read_exact(&mut body).is_ok() {
                        received += body_len;
                    }
                    break;
                }
                line.clear();
            }
            let _ = (&stream).write_all(
                b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
            let _ = seen_tx.send((peer, received));
        }
    });

    // The receiver at --url: 307 to the other host, for any request.
    let location = format!("http://{elsewhere_addr}/collect?t={E}");
    let posts = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&posts);
    let redirect_to = location.clone();
    let receiver = axum::Router::new().fallback(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        let to = redirect_to.clone();
        async move {
            (
                axum::http::StatusCode::TEMPORARY_REDIRECT,
                [("location", to)],
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/secret-scanning/team",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, receiver).await;
    });

    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("team.pem");
    revoker::signature::generate_key_file(&pem, Some("team-1")).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        revoker_command()
            .arg("replay")
            .arg(fixture("reports/incident.txt"))
            .args(["--url", &url, "--key-id", "team-1", "--key"])
            .arg(&pem)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "exited 0: {stdout}{stderr}");
    assert_eq!(posts.load(Ordering::SeqCst), 1, "one POST, to --url");
    // The sentinel sends nothing: shut its writing side so the reader sees the end.
    let sentinel = std::net::TcpStream::connect(elsewhere_addr).unwrap();
    sentinel.shutdown(std::net::Shutdown::Write).unwrap();
    let mark = Some(sentinel.local_addr().unwrap());
    let mut before_sentinel = Vec::new();
    loop {
        let (peer, received) = seen
            .recv_timeout(Duration::from_secs(10))
            .expect("the sentinel connection is accepted");
        if peer == mark {
            break;
        }
        before_sentinel.push(format!("{peer:?} sent {received} bytes"));
    }
    assert_eq!(
        before_sentinel,
        Vec::<String>::new(),
        "connections to the redirect's host"
    );
    let named = format!(
        "the receiver answered HTTP 307 Temporary Redirect, a redirect to \"http://{elsewhere_addr}/collect?t=cio_tp_[redacted]\": not followed, nothing was sent there"
    );
    assert!(stderr.contains(&named), "{stderr}");
    for raw in [E, F] {
        assert!(!stdout.contains(&raw[7..]) && !stderr.contains(&raw[7..]));
    }
}

/// Peak resident memory of a running child, read from /proc until it exits.
fn peak_rss_kib(child: &mut std::process::Child) -> (std::process::ExitStatus, u64) {
    let mut peak = 0;
    loop {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", child.id())) {
            if let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kib);
            }
        }
        if let Some(exit) = child.try_wait().unwrap() {
            return (exit, peak);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_million_line_report_streams_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("big.log");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&report).unwrap());
    let mut tokens = 0;
    for i in 0..1_000_000u32 {
        if i % 100 == 0 {
            let t = Token::generate();
            writeln!(
                w,
                "{i:08} worker leaked {} into the build log, oops",
                t.expose_secret()
            )
            .unwrap();
            tokens += 1;
        } else {
            writeln!(w, "{i:08} INFO compiling crate number {i} of many, nothing to see here at all, just a long line of build noise").unwrap();
        }
    }
    w.flush().unwrap();
    drop(w);
    let size_mib = std::fs::metadata(&report).unwrap().len() / (1 << 20);
    assert!(size_mib >= 80, "report is {size_mib} MiB");

    let db = dir.path().join("r.db");
    let migrated = revoker_command()
        .arg("migrate")
        .arg("--database-url")
        .arg(format!("sqlite://{}", db.display()))
        .output()
        .unwrap();
    assert!(migrated.status.success());
    let mut child = revoker_command()
        .args(["replay", "--json", "--actor", "bench"])
        .arg(&report)
        .arg("--database-url")
        .arg(format!("sqlite://{}", db.display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Drain stdout on a thread so the child never blocks on a full pipe.
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut last = String::new();
        let mut rows = 0u64;
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if line.starts_with("{\"row\"") {
                rows += 1;
            }
            last = line;
        }
        (rows, last)
    });
    let (status, peak_kib) = peak_rss_kib(&mut child);
    let (rows, last) = reader.join().unwrap();
    assert!(status.success());
    assert_eq!(rows, tokens);
    let summary: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(summary["summary"]["counts"]["unknown"], tokens);
    eprintln!(
        "replay of a {size_mib} MiB, 1,000,000-line report: peak RSS {} MiB",
        peak_kib / 1024
    );
    assert!(
        peak_kib < 64 * 1024,
        "peak RSS {} MiB for a {size_mib} MiB report",
        peak_kib / 1024
    );
    let _ = Outcome::Unknown;
}

#[test]
fn replay_never_creates_or_migrates_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.db");
    for dry in [true, false] {
        let mut cmd = revoker_command();
        cmd.args(["replay", "--actor", "eve"])
            .arg(fixture("reports/incident.txt"))
            .arg("--database-url")
            .arg(format!("sqlite://{}", typo.display()));
        if dry {
            cmd.arg("--dry-run");
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "dry={dry}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("never creates"), "{err}");
        assert!(!typo.exists(), "replay created {}", typo.display());
    }
    // An existing SQLite file without revoker tables is refused too.
    std::fs::write(&typo, b"").unwrap();
    let out = revoker_command()
        .args(["replay", "--dry-run"])
        .arg(fixture("reports/incident.txt"))
        .arg("--database-url")
        .arg(format!("sqlite://{}", typo.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no revoker tables"));
}

#[test]
fn remote_replay_refuses_cleartext_to_other_hosts() {
    assert!(replay::check_remote_url("https://revoker.example/secret-scanning/team").is_ok());
    assert!(replay::check_remote_url("http://127.0.0.1:8080/secret-scanning/team").is_ok());
    assert!(replay::check_remote_url("http://localhost:8080/secret-scanning/team").is_ok());
    let err = replay::check_remote_url("http://revoker.example/secret-scanning/team").unwrap_err();
    assert!(err.to_string().contains("https"));
    assert!(replay::check_remote_url("ftp://x/y").is_err());
}

#[test]
fn replay_cli_needs_an_actor_and_explains_remote_flags() {
    let out = revoker_command()
        .args(["replay", "x.json", "--database-url", "sqlite::memory:"])
        .env_remove("REVOKER_ACTOR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--actor"));
    let out = revoker_command()
        .args([
            "replay",
            "x.json",
            "--url",
            "http://127.0.0.1:1/secret-scanning/t",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--key"), "{err}");
    let _: PathBuf = fixture("reports");
}

/// The issue-14 reproduction, as a user runs it: an export of GitHub's own
/// secret-scanning alerts (`gh api …/secret-scanning/alerts`: the token in `secret`,
/// the alert page in `html_url`) and a report of another shape
/// (`[{"finding":{"value":…}}]`). Before: `0 occurrence(s)`, exit 0, both tokens live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_alerts_export_and_unknown_shapes_revoke_every_token() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let store = open_store(db.url()).await;
    store.migrate().await.unwrap();
    let first = mint_with_cli(db.url(), "octo-org/octo-app");
    let second = mint_with_cli(db.url(), "octo-org/octo-app");
    let third = mint_with_cli(db.url(), "acme/widget");
    let dir = tempfile::tempdir().unwrap();
    let alerts = dir.path().join("alerts.json");
    let page =
        |n: u32| format!("https://github.com/octo-org/octo-app/security/secret-scanning/{n}");
    let export = serde_json::json!([
        {"number": 2, "state": "open", "secret_type": "cio_trusted_publishing_token",
         "secret_type_display_name": "CIO Trusted Publishing Token", "secret": first,
         "url": "https://api.github.com/repos/octo-org/octo-app/secret-scanning/alerts/2",
         "html_url": page(2), "validity": "active", "publicly_leaked": true},
        {"number": 1, "state": "open", "secret_type": "cio_trusted_publishing_token",
         "secret": second, "html_url": page(1)}
    ]);
    std::fs::write(&alerts, serde_json::to_vec_pretty(&export).unwrap()).unwrap();
    let findings = dir.path().join("findings.json");
    std::fs::write(
        &findings,
        format!(r#"[{{"finding":{{"value":"{third}"}}}}]"#),
    )
    .unwrap();

    let out = revoker_command()
        .args(["replay", "--actor", "sec@example.com", "--json"])
        .arg(&alerts)
        .arg(&findings)
        .args(["--database-url", db.url()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v.get("row").cloned())
        .collect();
    let row = |raw: &str| {
        let prefix = TokenHash::of(raw).prefix();
        rows.iter()
            .find(|r| r["token_hash_prefix"] == prefix.as_str())
            .unwrap_or_else(|| panic!("no row for a minted token:\n{stdout}"))
            .clone()
    };
    assert_eq!(row(&first)["url"], page(2));
    assert_eq!(row(&second)["url"], page(1));
    assert_eq!(row(&first)["source"], "github_alert");
    let where_found = format!("{}:[0].finding.value", findings.display());
    assert_eq!(row(&third)["url"], where_found.as_str());
    for raw in [&first, &second, &third] {
        assert_eq!(row(raw)["outcome"], "revoked", "{stdout}");
        let stored = store.token(&TokenHash::of(raw)).await.unwrap().unwrap();
        assert!(stored.revoked_at.is_some());
        assert!(!stdout.contains(raw.as_str()) && !stderr.contains(raw.as_str()));
    }
    // The findings element is not in the github shape: named, on stderr and in the summary.
    let element = format!("{}:[0]", findings.display());
    assert!(stderr.contains(&element), "{stderr}");
    assert!(stdout.contains(&element), "{stdout}");
}

/// GitLab's secret detection report and a gitleaks SARIF log, detected and replayed:
/// their tokens revoked with the locations the reports give, and the tokens outside
/// their fields (a description, a rule's help text) found by JSON path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_and_sarif_reports_are_detected_and_revoked() {
    let (_db, store) = local_store().await;
    for raw in [A, B, C, D, E, F] {
        as_minted(&store, raw, Ttl::minutes(30)).await;
    }
    let target = Target::Local {
        store: Arc::clone(&store),
        actor: "carol@security".into(),
    };
    let (s, out) = replay_to_string(
        &target,
        &opts(
            &["gl-secret-detection-report.json", "gitleaks.sarif"],
            false,
            false,
        ),
    )
    .await;
    assert_eq!(s.occurrences, 6, "{out}");
    assert_eq!(s.tokens_revoked, 6, "{out}");
    for raw in [A, B, C, D, E, F] {
        assert_eq!(outcomes_of(&out, raw), ["revoked"], "{out}");
        assert!(!out.contains(raw));
    }
    assert!(
        out.contains(".gitlab-ci.yml:14 @ 1f7c3a9e2b4d (gitlab)"),
        "{out}"
    );
    assert!(
        out.contains("scripts/release.sh:12 @ 4be1d0c93a5f (sarif)"),
        "{out}"
    );
    assert!(
        out.contains(".vulnerabilities[2].description (json)"),
        "{out}"
    );
    assert_eq!(s.unstructured, 1, "the vulnerability without an extract");
}

/// A report that cannot be opened (missing) or read (a directory) does not stop the
/// others: they are replayed, the failures are named on stderr and in the summary, and
/// the command exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_report_fails_the_run_after_the_others_are_replayed() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let store = open_store(db.url()).await;
    store.migrate().await.unwrap();
    let token = mint_with_cli(db.url(), "acme/widget");
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("incident.log");
    std::fs::write(&good, format!("leaked: {token}\n")).unwrap();
    let missing = dir.path().join("missing.json");
    let out = revoker_command()
        .args(["replay", "--actor", "sec@example.com"])
        .arg(&missing)
        .arg(dir.path()) // a directory: opens, cannot be read
        .arg(&good)
        .args(["--database-url", db.url()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let stored = store.token(&TokenHash::of(&token)).await.unwrap().unwrap();
    assert!(
        stored.revoked_at.is_some(),
        "the readable report was replayed"
    );
    assert!(stderr.contains("missing.json: cannot open"), "{stderr}");
    assert!(
        stderr.contains("2 of 3 report(s) could not be read"),
        "{stderr}"
    );
    assert!(stdout.contains("NOT READ:"), "{stdout}");
    assert!(
        stdout.contains("tokens revoked now: 1 (of 1 distinct"),
        "{stdout}"
    );
    let report = stored.revoked_by.unwrap();
    assert!(
        stdout.contains(&format!("recorded as report(s) {report}")),
        "{stdout}"
    );

    // Nothing readable: no table header at all, only the errors and the summary.
    let out = revoker_command()
        .args(["replay", "--actor", "sec@example.com"])
        .arg(&missing)
        .args(["--database-url", db.url()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("token hash"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.json: cannot open"));
}

#[test]
fn a_report_piped_into_replay_dash_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("r.db").display());
    let token = mint_with_cli(&url, "acme/widget");
    let mut child = revoker_command()
        .args([
            "replay",
            "-",
            "--actor",
            "sec@example.com",
            "--database-url",
            &url,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "build log: export TOKEN={token}").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("tokens revoked now: 1"), "{stdout}");
    assert!(stdout.contains("(stdin)"), "{stdout}");
    assert!(!stdout.contains(&token));
}

/// Through the binary: a report naming two of ours (one of them twice), a token
/// nobody minted and a malformed one. The dry run and the real run count distinct
/// tokens beside occurrences and show each token's owner; `--json` carries the owner;
/// the rerun says nothing new; no raw token is printed.
#[test]
fn replay_through_the_binary_counts_distinct_tokens_and_names_owners() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("r.db").display());
    let alice = mint_with_cli(&url, "alice@example.com");
    let bob = mint_with_cli(&url, "bob@example.com");
    let stranger = Token::generate();
    let report = dir.path().join("leak.log");
    std::fs::write(
        &report,
        format!(
            "ci: export A={alice}\nagain: {alice}\nthen B={bob}\nnot ours: {}\n",
            stranger.expose_secret()
        ),
    )
    .unwrap();
    let replay = |extra: &[&str]| {
        let mut cmd = revoker_command();
        cmd.args([
            "replay",
            "--actor",
            "sec@example.com",
            "--database-url",
            &url,
        ])
        .arg(&report)
        .args(extra);
        let out = run_ok(&mut cmd);
        for raw in [alice.as_str(), bob.as_str(), stranger.expose_secret()] {
            assert!(!out.contains(raw), "raw token printed: {out}");
        }
        out
    };
    let owner_of = |out: &str, raw: &str| -> Vec<String> {
        let prefix = TokenHash::of(raw).prefix();
        out.lines()
            .filter(|l| l.starts_with(&prefix))
            .map(|l| l.split_whitespace().nth(3).unwrap().to_owned())
            .collect()
    };

    let dry = replay(&["--dry-run"]);
    assert!(
        dry.contains("tokens of ours: 2 distinct, 2 would be revoked"),
        "{dry}"
    );
    assert!(dry.contains("would revoke 3"), "three occurrences: {dry}");
    assert_eq!(owner_of(&dry, &alice), ["alice@example.com"; 2], "{dry}");
    assert_eq!(owner_of(&dry, &bob), ["bob@example.com"], "{dry}");
    assert_eq!(owner_of(&dry, stranger.expose_secret()), ["-"], "{dry}");

    let real = replay(&[]);
    assert!(
        real.contains("tokens revoked now: 2 (of 2 distinct tokens of ours named)"),
        "{real}"
    );
    // Every occurrence of a token revoked by this run reads `revoked`.
    assert!(real.contains("occurrences: revoked 3"), "{real}");
    assert!(real.contains("recorded as report(s) "), "{real}");
    assert_eq!(owner_of(&real, &bob), ["bob@example.com"], "{real}");

    let json = replay(&["--json"]);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let owners: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["row"]["owner"].as_str())
        .collect();
    assert_eq!(
        owners,
        ["alice@example.com", "alice@example.com", "bob@example.com"],
        "{json}"
    );
    let summary = &lines.last().unwrap()["summary"];
    assert_eq!(summary["distinct_tokens"], 2, "{json}");
    assert_eq!(
        summary["tokens_revoked"], 0,
        "a rerun revokes nothing: {json}"
    );
    assert_eq!(summary["counts"]["already_revoked"], 3, "{json}");
}
