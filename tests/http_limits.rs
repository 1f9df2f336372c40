//! Limits a hostile or broken client runs into: slow bodies, undecodable paths,
//! duplicate tokens in metrics, and a shutdown that cannot be held open forever.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Duration as Ttl;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_body_gets_408() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let keys = KeyServer::with_test_keys().await;
    let app = spawn_app(
        db.url(),
        &keys,
        TestOptions {
            body_timeout: Duration::from_millis(500),
            ..TestOptions::default()
        },
    )
    .await;
    app.keys_attempted("github").await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /secret-scanning/github HTTP/1.1\r\nHost: {addr}\r\n\
         Github-Public-Key-Identifier: {KEY_ID}\r\nGithub-Public-Key-Signature: {}\r\n\
         Content-Length: 1000\r\n\r\n[",
        Signer::test().sign(b"[]")
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"));
    assert!(started.elapsed() < Duration::from_secs(3));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_scanner_path_gets_json_404() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let keys = KeyServer::with_test_keys().await;
    let app = spawn_app(db.url(), &keys, TestOptions::default()).await;
    let body = b"[]".to_vec();
    let sig = Signer::test().sign(&body);
    let a = app.post("%FF", Some(KEY_ID), Some(&sig), body).await;
    assert_eq!(
        (a.status, a.error_code()),
        (404, "unknown_scanner"),
        "{}",
        a.text
    );
    let m = app.admin_get("/metrics", None).await;
    assert!(m
        .text
        .contains(r#"revoker_deliveries_total{scanner="_unknown",status="404"} 1"#));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_listed_twice_counts_as_one_revocation() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let keys = KeyServer::with_test_keys().await;
    let app = spawn_app(db.url(), &keys, TestOptions::default()).await;
    let t = app.mint("dup/pkg", Ttl::minutes(30)).await;
    let a = app
        .deliver(
            &Signer::test(),
            alert_body(&[t.expose_secret(), t.expose_secret()]),
        )
        .await;
    assert_eq!(a.labels(), ["true_positive", "true_positive"]);
    let m = app.admin_get("/metrics", None).await.text;
    assert!(m.contains("revoker_revocations_total 1\n"), "{m}");
    assert!(m.contains(r#"revoker_items_total{scanner="github",outcome="revoked"} 2"#));
    app.stop().await;
}

#[test]
fn shutdown_is_capped_even_with_a_request_held_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_revoker"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--shutdown-timeout",
            "1s",
            "--body-timeout",
            "60s",
            "--request-timeout",
            "60s",
        ])
        .arg("--database-url")
        .arg(format!("sqlite://{}", dir.path().join("r.db").display()))
        .arg("--scanner")
        .arg(format!(
            "github={}",
            fixture("keys/test-keys.json").display()
        ))
        .env("RUST_LOG", "info")
        .env_remove("RUST_LOG_FORMAT")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::{BufRead, Write};
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("server logs").unwrap();
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {}); // keep draining
                                                   // A delivery whose body never completes.
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "POST /secret-scanning/github HTTP/1.1\r\nHost: {addr}\r\n\
         Github-Public-Key-Identifier: {KEY_ID}\r\nGithub-Public-Key-Signature: {}\r\n\
         Content-Length: 1000\r\n\r\n[",
        Signer::test().sign(b"[]")
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300)); // let the server start reading it
    let stopped = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "did not wait for in-flight work: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_beyond_the_concurrency_limit_get_503_at_once() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let keys = KeyServer::with_test_keys().await;
    let app = spawn_app(
        db.url(),
        &keys,
        TestOptions {
            max_concurrent_deliveries: 2,
            ..TestOptions::default()
        },
    )
    .await;
    app.keys_attempted("github").await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    // Two deliveries whose bodies never complete hold both permits.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /secret-scanning/github HTTP/1.1\r\nHost: {addr}\r\n\
             Github-Public-Key-Identifier: {KEY_ID}\r\nGithub-Public-Key-Signature: {}\r\n\
             Content-Length: 1000\r\n\r\n[",
            Signer::test().sign(b"[]")
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        held.push(stream);
    }
    let t = app.mint("busy/pkg", Ttl::minutes(30)).await;
    let body = alert_body(&[t.expose_secret()]);
    // Let both reach the handler and start waiting for their bodies.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The third is refused without waiting and without writing anything.
    let started = Instant::now();
    let a = app.deliver(&Signer::test(), body.clone()).await;
    let took = started.elapsed();
    assert_eq!(a.status, 503, "{}", a.text);
    assert_eq!(a.error_code(), "overloaded", "{}", a.text);
    assert_eq!(a.retry_after.as_deref(), Some("7"));
    assert!(took < Duration::from_secs(1), "refusal took {took:?}");
    assert!(!app.is_revoked(&t).await);
    assert_eq!(app.store.count_reports().await.unwrap(), 0);
    let m = app.admin_get("/metrics", None).await.text;
    assert!(
        m.contains(r#"revoker_deliveries_total{scanner="github",status="503"} 1"#),
        "{m}"
    );
    // Health checks are not deliveries and still answer.
    let health = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // Once the held connections go away, the retry gets the full answer.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = app.deliver(&Signer::test(), body.clone()).await;
        if a.status == 200 {
            assert_eq!(a.labels(), ["true_positive"]);
            break;
        }
        assert_eq!(a.error_code(), "overloaded");
        assert!(Instant::now() < deadline, "permits never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(app.is_revoked(&t).await);
    app.stop().await;
}
