//! Hostile clients against the real binary: they cannot keep a genuine delivery from
//! being answered, and a verified delivery's memory stays within the documented bound.
//! Both listeners close connections that bring no request head in time, answer a head
//! over 64 KiB with 431 and cap their connections; admin connections cannot take the
//! file descriptors a delivery needs.
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

/// Connections to `addr` that bring no complete request head within the server's
/// `--header-timeout` (well under 5 s) are closed by the server: one that never sends a
/// byte, one with part of a head, one with 60 KiB of a head (under the 64 KiB that gets
/// 431), and one idle after an answer (keep-alive).
async fn heads_are_due_within_the_header_timeout(addr: &str) {
    // Never sends a byte.
    let silent = TcpStream::connect(addr).await.unwrap();
    // Sends part of a head.
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Sends most of what the server will buffer of a head.
    let mut long = TcpStream::connect(addr).await.unwrap();
    long.write_all(format!("GET /healthz HTTP/1.1\r\nX-Long: {}", "a".repeat(60 << 10)).as_bytes())
        .await
        .unwrap();
    // Idle after one answer (keep-alive).
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    for (what, s) in [
        ("silent", silent),
        ("partial head", partial),
        ("60 KiB partial head", long),
        ("idle", idle),
    ] {
        let after = closed_after(s).await;
        assert!(
            after < Duration::from_secs(5),
            "{what}: closed after {after:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_request_head_in_time_are_closed() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let server = ServeProcess::start(db.url(), &["--header-timeout", "700ms"], false);
    heads_are_due_within_the_header_timeout(&host(&server)).await;
    // A complete request in time is answered as before.
    assert_eq!(server.get("/healthz").await.status, 200);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_without_a_request_head_in_time_are_closed() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let server = ServeProcess::start(db.url(), &["--header-timeout", "700ms"], false);
    heads_are_due_within_the_header_timeout(&server.admin_addr()).await;
    assert_eq!(server.admin_get("/healthz", None).await.status, 200);
    server.stop();
}

/// The answer to a request head of exactly 64 KiB that never ends (all of it is read,
/// so the server closes with nothing unread and the answer is not lost to a reset).
async fn answer_to_an_oversized_head(listener: &str, addr: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let start = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ";
    let head = format!("{start}{}", "a".repeat((64 << 10) - start.len()));
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await {
        Ok(_) => String::from_utf8_lossy(&answer).into_owned(),
        Err(_) => panic!("no answer within 5 s to a 64 KiB head on the {listener} listener"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_gets_431_on_both_listeners() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let server = ServeProcess::start(db.url(), &[], false);
    for (listener, addr) in [("webhook", host(&server)), ("admin", server.admin_addr())] {
        let answer = answer_to_an_oversized_head(listener, &addr).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{listener}: {answer}");
    }
    server.stop();
}

/// `cap` connections to `addr` are held; one more is queued by the kernel, not served,
/// until one of them closes.
async fn connections_beyond_the_cap_wait(addr: &str, cap: usize) {
    let mut held = Vec::new();
    for _ in 0..cap {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut queued = TcpStream::connect(addr).await.unwrap();
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_one() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let server = ServeProcess::start(
        db.url(),
        &["--max-connections", "20", "--header-timeout", "60s"],
        false,
    );
    connections_beyond_the_cap_wait(&host(&server), 20).await;
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_beyond_the_admin_cap_wait_for_a_free_one() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let server = ServeProcess::start(
        db.url(),
        &["--admin-max-connections", "20", "--header-timeout", "60s"],
        false,
    );
    connections_beyond_the_cap_wait(&server.admin_addr(), 20).await;
    // The public listener is not bound by the admin cap.
    assert_eq!(server.get("/healthz").await.status, 200);
    server.stop();
}

/// Raises this test process's own soft open-file limit to its hard limit (it holds a
/// thousand connections and more).
fn raise_own_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_connections_cannot_take_the_file_descriptors_a_delivery_needs() {
    raise_own_open_file_limit();
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    // 1,024 open files, soft and hard: `serve` cannot raise it. Idle admin connections
    // are kept for the whole test (60 s header timeout).
    let server =
        ServeProcess::start_with_open_file_limit(db.url(), &["--header-timeout", "60s"], 1024);
    let store = open_store(db.url()).await;
    let live = mint_many(store.as_ref(), "fd/pkg", 1, Ttl::hours(1)).await;
    // Idle admin connections, one after another, until one is not accepted within 3 s
    // (the kernel's accept queue is full and drops its SYN; a dropped SYN is sent again
    // after 1 s, so 3 s is not a slow server) or 1,100 are open. Without a cap, the server
    // accepts them all and runs out of descriptors.
    let admin = server.admin_addr();
    let mut held = Vec::new();
    while held.len() < 1100 {
        match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(&admin)).await {
            Ok(Ok(s)) => held.push(s),
            Ok(Err(e)) => panic!("admin connection {} refused: {e}", held.len()),
            Err(_) => break,
        }
    }
    assert!(held.len() > 64, "only {} admin connections", held.len());
    let opened = held.len();
    // The rest keep trying in the background (the kernel sends their SYNs again) while
    // the delivery is made.
    let trying: Vec<_> = (opened..1100)
        .map(|_| {
            let admin = admin.clone();
            tokio::spawn(async move {
                let _s = TcpStream::connect(&admin).await;
                std::future::pending::<()>().await
            })
        })
        .collect();
    let pid = server.pid();
    eprintln!(
        "{opened} admin connections open, the server holds {} descriptors",
        open_files(pid)
    );
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        send_delivery(
            &reqwest::Client::new(),
            &server.base,
            alert_body(&[live[0].expose_secret()]),
        ),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no answer within 5 s with {opened} admin connections open ({} descriptors):\n{}",
            open_files(pid),
            server.logs()
        )
    })
    .expect("an HTTP answer");
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.labels(), ["true_positive"]);
    let logs = server.logs();
    assert!(!logs.contains("cannot accept a connection"), "{logs}");
    // The open-file limit cannot hold the default --max-connections: lowered, and said.
    assert!(logs.contains("lowered --max-connections"), "{logs}");
    for task in trying {
        task.abort();
    }
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
            // The least that holds one worst-case 8 MiB delivery (one item whose string
            // holds a token every 43 bytes: about 245 MiB).
            "--verified-memory-budget",
            "256MiB",
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
    let bound_kib = baseline + (64 << 10) + (256 << 10) + concurrency as u64 * 64 + (32 << 10);
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

#[test]
fn serve_refuses_an_open_file_limit_that_leaves_no_room_for_the_public_listener() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("r.db").display());
    // 100 descriptors: the admin cap (64) and the reserve (64 with the defaults) do not fit.
    let mut cmd = serve_command(&url);
    limit_open_files(&mut cmd, 100);
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still serving after 30 s:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the open-file limit (100) leaves no room for the public listener"),
        "{stderr}"
    );
    assert!(stderr.contains("--admin-max-connections"), "{stderr}");
    // Nothing was started: not even the database file was created.
    assert!(!dir.path().join("r.db").exists());
}
