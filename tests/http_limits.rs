//! Limits a hostile or broken client runs into: slow bodies, undecodable paths,
//! duplicate tokens in metrics, and a shutdown that cannot be held open forever.

mod common;

use std::time::{Duration, Instant};

use chrono::Duration as Ttl;
use common::*;
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_body_gets_408() {
    let app = TestApp::sqlite()
        .body_timeout(Duration::from_millis(500))
        .wait_for_keys()
        .start()
        .await;
    let mut stream = app.unfinished_delivery().await;
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
    let app = TestApp::sqlite().start().await;
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
    assert!(m.text.contains(
        r#"revoker_rejected_requests_total{scanner="_unknown",reason="unknown_scanner"} 1"#
    ));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_listed_twice_counts_as_one_revocation() {
    let app = TestApp::sqlite().start().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_capped_even_with_a_request_held_open() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let server = ServeProcess::start(
        db.url(),
        &[
            "--shutdown-timeout",
            "1s",
            "--body-timeout",
            "60s",
            "--request-timeout",
            "60s",
        ],
        false,
    );
    // A delivery whose body never completes, once the server has started on it.
    let stream = server.unfinished_delivery().await;
    server.wait_for_log("started processing request");
    let stopped = Instant::now();
    server.stop(); // asserts a clean exit
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
    let app = TestApp::sqlite()
        .max_concurrent_deliveries(2)
        .wait_for_keys()
        .start()
        .await;
    let t = app.mint("busy/pkg", Ttl::minutes(30)).await;
    let body = alert_body(&[t.expose_secret()]);
    let permits = &app.state.deliveries;
    // Two deliveries whose bodies never complete are not verified: they take no slot.
    let held = [
        app.unfinished_delivery().await,
        app.unfinished_delivery().await,
    ];
    assert_eq!(app.get("/healthz").await.status, 200); // both heads are in
    assert_eq!(permits.available_permits(), 2);
    // Two verified deliveries in progress hold both slots.
    let busy = permits.acquire_many(2).await.unwrap();
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
    // A signed body that is no alert array is refused as overloaded too: no slot, no
    // parsing (a large one's first pass is not done for a delivery that cannot go on).
    let junk = app
        .deliver(&Signer::test(), b"{not an array".to_vec())
        .await;
    assert_eq!(
        (junk.status, junk.error_code()),
        (503, "overloaded"),
        "{}",
        junk.text
    );
    let m = app.admin_get("/metrics", None).await.text;
    assert!(
        m.contains(r#"revoker_deliveries_total{scanner="github",status="503"} 2"#),
        "{m}"
    );
    // Health checks are not deliveries and still answer.
    assert_eq!(app.get("/healthz").await.status, 200);

    // Once the slots are free, the retry gets the full answer, the unfinished
    // deliveries still open.
    drop(busy);
    let a = app.deliver(&Signer::test(), body).await;
    assert_eq!(a.labels(), ["true_positive"]);
    assert!(app.is_revoked(&t).await);
    drop(held);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_beyond_the_verified_memory_budget_gets_503_and_nothing_is_written() {
    let app = TestApp::sqlite().wait_for_keys().start().await;
    let t = app.mint("mem/pkg", Ttl::minutes(30)).await;
    let body = alert_body(&[t.expose_secret()]);
    let budget = &app.state.verified_budget;
    // Other verified deliveries hold all of it.
    let all = budget.try_take(budget.available()).unwrap();
    let a = app.deliver(&Signer::test(), body.clone()).await;
    assert_eq!(
        (a.status, a.error_code(), a.retry_after.as_deref()),
        (503, "overloaded", Some("7")),
        "{}",
        a.text
    );
    assert!(!app.is_revoked(&t).await);
    assert_eq!(app.store.count_reports().await.unwrap(), 0);
    drop(all);
    let a = app.deliver(&Signer::test(), body).await;
    assert_eq!(a.labels(), ["true_positive"]);
    // The reservation is given back once the answer is sent.
    let full = budget.available();
    assert_eq!(full, 256 << 20);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_bodies_never_wait_for_the_unverified_budget_and_large_ones_do() {
    let app = TestApp::sqlite()
        .body_timeout(Duration::from_millis(800))
        .wait_for_keys()
        .start()
        .await;
    let budget = &app.state.unverified_budget;
    // Unverified bodies hold the whole budget.
    let all = budget.try_take(budget.available()).unwrap();
    let t = app.mint("small/pkg", Ttl::minutes(30)).await;
    let a = app
        .deliver(&Signer::test(), alert_body(&[t.expose_secret()]))
        .await;
    assert_eq!(a.labels(), ["true_positive"]);
    // A body past the free 64 KiB waits for budget, within --body-timeout.
    let big = alert_body(&vec!["junk"; 2000]);
    assert!(big.len() > 64 << 10);
    let a = app.deliver(&Signer::test(), big.clone()).await;
    assert_eq!(
        (a.status, a.error_code()),
        (408, "body_timeout"),
        "{}",
        a.text
    );
    drop(all);
    let a = app.deliver(&Signer::test(), big).await;
    assert_eq!(a.labels().len(), 2000);
    app.stop().await;
}
