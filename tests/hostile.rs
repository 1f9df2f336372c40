//! Hostile clients against the real binary: they cannot keep a genuine delivery from
//! being answered, and a verified delivery's memory stays within the documented bound.
//!
//! Every hostile client here needs no private key: GitHub's key ids are public and any
//! DER-shaped base64 passes the header check.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Duration as Ttl;
use common::*;
use revoker::domain::alert::Feedback;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A signature that is well-formed DER base64 but not over the body it comes with.
fn junk_signature() -> String {
    Signer::test().sign(b"something else entirely")
}

fn host(server: &ServeProcess) -> String {
    server.base.trim_start_matches("http://").to_owned()
}

/// The head of a delivery under the public key id with a junk signature.
fn hostile_head(addr: &str, content_length: usize) -> String {
    format!(
        "POST /secret-scanning/github HTTP/1.1\r\nHost: {addr}\r\n\
         Github-Public-Key-Identifier: {KEY_ID}\r\nGithub-Public-Key-Signature: {}\r\n\
         Content-Length: {content_length}\r\n\r\n",
        junk_signature()
    )
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Opens `n` connections at once and runs `then` on each (its own task, which keeps
/// the connection open until the test ends).
async fn hold<F, Fut>(addr: &str, n: usize, then: F) -> Vec<tokio::task::JoinHandle<()>>
where
    F: Fn(TcpStream) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let stream = TcpStream::connect(addr).await.unwrap();
        let then = then.clone();
        tasks.push(tokio::spawn(then(stream)));
    }
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn genuine_deliveries_are_answered_while_1000_hostile_connections_are_open() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let max_body = 1 << 20;
    // Long body timeout: on a receiver that takes the delivery slot before the body,
    // the genuine delivery would wait this long for the hostile bodies to time out.
    let server = ServeProcess::start(
        db.url(),
        &["--body-timeout", "20s", "--max-body", "1MiB"],
        false,
    );
    let addr = host(&server);
    let store = open_store(db.url()).await;
    let live = mint_many(store.as_ref(), "hostile/pkg", 5, Ttl::hours(1)).await;

    let mut hostile = Vec::new();
    // 250 connections that never send a byte.
    hostile.extend(
        hold(&addr, 250, |s| async move {
            let _s = s;
            std::future::pending::<()>().await
        })
        .await,
    );
    // 250 slow heads: a request line, then one header byte a second.
    hostile.extend(
        hold(&addr, 250, |mut s| async move {
            let _ = s
                .write_all(b"POST /secret-scanning/github HTTP/1.1\r\nHost: x\r\n")
                .await;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if s.write_all(b"X").await.is_err() {
                    return std::future::pending().await;
                }
            }
        })
        .await,
    );
    // 250 slow bodies under the public key id: a 100,000-byte Content-Length, one byte
    // a second.
    let head = hostile_head(&addr, 100_000);
    hostile.extend(
        hold(&addr, 250, move |mut s| {
            let head = head.clone();
            async move {
                let _ = s.write_all(head.as_bytes()).await;
                loop {
                    if s.write_all(b" ").await.is_err() {
                        return std::future::pending().await;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        })
        .await,
    );
    // 150 bodies at the size limit, all but their last byte sent (more than the
    // unverified body budget in total).
    let head = hostile_head(&addr, max_body);
    hostile.extend(
        hold(&addr, 150, move |mut s| {
            let head = head.clone();
            async move {
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&vec![b' '; max_body - 1]).await;
                std::future::pending().await
            }
        })
        .await,
    );
    // 100 complete deliveries with junk signatures, answered 401, connection kept.
    let head = hostile_head(&addr, 2);
    // (answered at all, answered 401)
    let refused = Arc::new([
        std::sync::atomic::AtomicUsize::new(0),
        std::sync::atomic::AtomicUsize::new(0),
    ]);
    let counter = Arc::clone(&refused);
    hostile.extend(
        hold(&addr, 100, move |mut s| {
            let head = head.clone();
            let counter = Arc::clone(&counter);
            async move {
                let _ = s.write_all(format!("{head}[]").as_bytes()).await;
                let mut buf = [0u8; 512];
                if let Ok(n) = s.read(&mut buf).await {
                    counter[0].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if buf[..n].starts_with(b"HTTP/1.1 401") {
                        counter[1].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                std::future::pending().await
            }
        })
        .await,
    );
    assert_eq!(hostile.len(), 1000);
    // The junk signatures, opened last, have all been answered: every hostile head is
    // in.
    let pid = server.pid();
    eventually(
        Duration::from_secs(20),
        "answers to the junk signatures",
        async || refused[0].load(std::sync::atomic::Ordering::SeqCst),
        |n| *n == 100,
    )
    .await;
    let client = reqwest::Client::new();
    for t in &live {
        let started = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            send_delivery(&client, &server.base, alert_body(&[t.expose_secret()])),
        )
        .await
        .expect("answered within 5 s")
        .expect("an HTTP answer");
        assert_eq!(
            answer.labels(),
            ["true_positive"],
            "after {:?}",
            started.elapsed()
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
    // 1,000 hostile connections, 150 of them with a body at the limit (150 MiB offered,
    // more than the 64 MiB unverified budget): the server stays small.
    let (_, peak_kib) = server.memory_kib();
    eprintln!("server peak RSS under attack: {peak_kib} KiB");
    assert!(peak_kib < 200 << 10, "peak RSS {peak_kib} KiB");
    // Junk signatures are refused as such (they take no slot either).
    assert_eq!(refused[1].load(std::sync::atomic::Ordering::SeqCst), 100);
    // The server still holds every hostile connection (one descriptor each).
    let held = open_files(pid);
    assert!(
        held >= 1000,
        "{held} descriptors: hostile connections were dropped"
    );
    for task in hostile {
        task.abort();
    }
    server.stop();
}

/// Reads until the server closes the connection; how long that took.
async fn closed_after(mut s: TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Err(_) => panic!("the server kept the connection open for 10 s"),
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_request_head_in_time_are_closed() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let server = ServeProcess::start(db.url(), &["--header-timeout", "700ms"], false);
    let addr = host(&server);

    // Never sends a byte.
    let silent = TcpStream::connect(&addr).await.unwrap();
    // Sends part of a head.
    let mut partial = TcpStream::connect(&addr).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Idle after one answer (keep-alive).
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    for (what, s) in [
        ("silent", silent),
        ("partial head", partial),
        ("idle", idle),
    ] {
        let after = closed_after(s).await;
        assert!(
            after < Duration::from_secs(5),
            "{what}: closed after {after:?}"
        );
    }
    // A complete request in time is answered as before.
    assert_eq!(server.get("/healthz").await.status, 200);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_one() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let server = ServeProcess::start(
        db.url(),
        &["--max-connections", "20", "--header-timeout", "60s"],
        false,
    );
    let addr = host(&server);
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    // The 21st is queued by the kernel, not served.
    let mut queued = TcpStream::connect(&addr).await.unwrap();
    queued
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let early = tokio::time::timeout(Duration::from_millis(800), queued.read_buf(&mut buf)).await;
    assert!(early.is_err(), "served beyond the cap: {buf:?}");
    // Freeing one connection lets it in.
    drop(held.pop());
    tokio::time::timeout(Duration::from_secs(5), queued.read_to_end(&mut buf))
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert!(
        buf.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    drop(held);
    server.stop();
}

/// The worst body for memory per byte: 8 MiB of `{"token":""}` items.
fn tiny_items_body(bytes: usize) -> (Vec<u8>, usize) {
    let item = br#"{"token":""}"#;
    let n = (bytes - 2) / (item.len() + 1);
    let mut body = Vec::with_capacity(bytes);
    body.push(b'[');
    for i in 0..n {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.push(b']');
    (body, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_of_verified_deliveries_stays_within_the_documented_bound() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let concurrency = 4;
    let server = ServeProcess::start(
        db.url(),
        &[
            "--max-concurrent-deliveries",
            &concurrency.to_string(),
            "--verified-memory-budget",
            "128MiB",
            // Memory, not speed, is under test (a debug build on a shared machine).
            "--body-timeout",
            "60s",
            "--request-timeout",
            "120s",
        ],
        false,
    );
    let (body, items) = tiny_items_body(8 << 20);
    assert!(body.len() <= 8 << 20 && items > 640_000);
    let signer = Signer::test();
    let sig = signer.sign(&body);
    // The key is loaded and the process is warm before the baseline is read.
    assert_eq!(server.get("/healthz").await.status, 200);
    let (baseline, _) = server.memory_kib();
    let body = bytes::Bytes::from(body);
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, base, body, sig) = (
                client.clone(),
                server.base.clone(),
                body.clone(),
                sig.clone(),
            );
            tokio::spawn(async move {
                let resp = client
                    .post(format!("{base}/secret-scanning/github"))
                    .header("Github-Public-Key-Identifier", KEY_ID)
                    .header("Github-Public-Key-Signature", sig)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                let status = resp.status().as_u16();
                let retry_after = resp.headers().contains_key("retry-after");
                let text = resp.bytes().await.map_err(|e| format!("{e:?}"))?;
                Ok::<_, String>((status, retry_after, text))
            })
        })
        .collect();
    let mut answered = 0;
    for task in tasks {
        let (status, retry_after, text) = task
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}\n{}", server.logs()));
        match status {
            200 => {
                let feedback: Vec<serde::de::IgnoredAny> = serde_json::from_slice(&text).unwrap();
                assert_eq!(feedback.len(), items);
                let first: Feedback = serde_json::from_slice(
                    &text[1..text.iter().position(|&b| b == b'}').unwrap() + 1],
                )
                .unwrap();
                assert_eq!(
                    first.token_hash,
                    revoker::domain::token::TokenHash::of("").to_hex()
                );
                assert_eq!(first.label, revoker::domain::Label::FalsePositive);
                answered += 1;
            }
            503 => {
                assert!(retry_after);
                assert!(String::from_utf8_lossy(&text).contains("overloaded"));
            }
            other => panic!(
                "status {other}: {}\n{}",
                String::from_utf8_lossy(&text),
                server.logs()
            ),
        }
    }
    assert!(answered >= 1);
    let (_, peak) = server.memory_kib();
    // README: peak RSS ≤ idle RSS + --unverified-body-budget + --verified-memory-budget
    // + 64 KiB per open connection (+ allocator slack).
    let bound_kib = baseline + (64 << 10) + (128 << 10) + concurrency as u64 * 64 + (32 << 10);
    eprintln!(
        "idle {baseline} KiB, peak {peak} KiB, bound {bound_kib} KiB, {answered}/{concurrency} answered 200"
    );
    assert!(
        peak <= bound_kib,
        "peak {peak} KiB > bound {bound_kib} KiB\n{}",
        server.logs()
    );
    server.stop();
}
