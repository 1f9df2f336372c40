//! The scanner key cache seen from outside: rotation, refetch limits, outages, hangs.
//! Store-independent, so these run on SQLite only.

mod common;

use std::time::{Duration, Instant};

use common::*;
use revoker::signature::ScannerSpec;

async fn sqlite() -> TestDb {
    TestDb::new(Kind::Sqlite).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_key_is_picked_up_by_one_refetch() {
    let db = sqlite().await;
    let keys = KeyServer::with_test_keys().await;
    let app = spawn_app(
        db.url(),
        &keys,
        TestOptions {
            keys_refetch_interval: Duration::ZERO,
            ..TestOptions::default()
        },
    )
    .await;
    app.keys_attempted("github").await;
    assert_eq!(
        app.deliver(&Signer::test(), b"[]".to_vec()).await.status,
        200
    );
    let before = keys.fetches();

    keys.set_mode(KeyMode::Serve(fixture_string("keys/rotated-keys.json")));
    let rotated = Signer::from_fixture("keys/other-key.pem", ROTATED_KEY_ID);
    let a = app.deliver(&rotated, b"[]".to_vec()).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(keys.fetches(), before + 1, "exactly one refetch");
    // The old key is still listed (not current) and still accepted; no new fetch.
    assert_eq!(
        app.deliver(&Signer::test(), b"[]".to_vec()).await.status,
        200
    );
    assert_eq!(keys.fetches(), before + 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_id_storm_fetches_at_most_once_per_interval() {
    let db = sqlite().await;
    let keys = KeyServer::with_test_keys().await;
    let app = spawn_app(db.url(), &keys, TestOptions::default()).await;
    app.keys_attempted("github").await;
    let before = keys.fetches();
    let body = b"[]".to_vec();
    let sig = Signer::test().sign(&body);
    let storm = (0..1000).map(|i| {
        let (app, body, sig) = (&app, body.clone(), sig.clone());
        async move {
            app.post("github", Some(&format!("random-{i}")), Some(&sig), body)
                .await
                .status
        }
    });
    let started = Instant::now();
    let statuses = futures::future::join_all(storm).await;
    // Inside the refetch interval nothing can prove the ids unknown: "retry later".
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    assert!(
        keys.fetches() <= before + 1,
        "{} fetches",
        keys.fetches() - before
    );
    // Still responsive for the real key.
    assert_eq!(app.deliver(&Signer::test(), body).await.status, 200);
    assert!(started.elapsed() < Duration::from_secs(10));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_keys_keep_working_when_the_source_fails() {
    let db = sqlite().await;
    let keys = KeyServer::with_test_keys().await;
    let app = spawn_app(
        db.url(),
        &keys,
        TestOptions {
            keys_ttl: Duration::ZERO, // always stale: every delivery tries a refresh
            keys_refetch_interval: Duration::ZERO,
            ..TestOptions::default()
        },
    )
    .await;
    app.keys_attempted("github").await;
    for mode in [KeyMode::Status(500), KeyMode::Garbage, KeyMode::Status(404)] {
        keys.set_mode(mode);
        let before = keys.fetches();
        for _ in 0..3 {
            let a = app.deliver(&Signer::test(), b"[]".to_vec()).await;
            assert_eq!(a.status, 200, "{}", a.text);
        }
        // Refreshes were attempted (and failed) in the background meanwhile.
        let deadline = Instant::now() + Duration::from_secs(5);
        while keys.fetches() == before {
            assert!(Instant::now() < deadline, "no background refresh attempted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_source_without_keys_answers_503_within_the_timeout() {
    let db = sqlite().await;
    let keys = KeyServer::start(KeyMode::Hang).await;
    let app = spawn_app(
        db.url(),
        &keys,
        TestOptions {
            keys_timeout: Duration::from_millis(800),
            ..TestOptions::default()
        },
    )
    .await;
    let started = Instant::now();
    let a = app.deliver(&Signer::test(), b"[]".to_vec()).await;
    assert_eq!((a.status, a.error_code()), (503, "keys_unavailable"));
    assert!(a.retry_after.is_some());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_source_without_keys_answers_503_and_recovers() {
    let db = sqlite().await;
    let keys = KeyServer::start(KeyMode::Garbage).await;
    let app = spawn_app(
        db.url(),
        &keys,
        TestOptions {
            keys_refetch_interval: Duration::ZERO,
            ..TestOptions::default()
        },
    )
    .await;
    let a = app.deliver(&Signer::test(), b"[]".to_vec()).await;
    assert_eq!((a.status, a.error_code()), (503, "keys_unavailable"));
    keys.set_mode(KeyMode::Serve(fixture_string("keys/test-keys.json")));
    let a = app.deliver(&Signer::test(), b"[]".to_vec()).await;
    assert_eq!(a.status, 200, "{}", a.text);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_token_goes_to_the_github_key_endpoint_only() {
    let db = sqlite().await;
    let github = KeyServer::with_test_keys().await;
    let partner = KeyServer::with_test_keys().await;
    let app = spawn_app(
        db.url(),
        &github,
        TestOptions {
            github_token: Some("ghs_exampletoken".into()),
            extra_scanners: vec![ScannerSpec {
                name: "partner".into(),
                source: partner.url(),
            }],
            ..TestOptions::default()
        },
    )
    .await;
    app.keys_attempted("github").await;
    app.keys_attempted("partner").await;
    assert_eq!(
        github.last_authorization().as_deref(),
        Some("Bearer ghs_exampletoken")
    );
    assert_eq!(partner.fetches(), 1);
    assert_eq!(partner.last_authorization(), None);
    // Each scanner trusts only its own source: a delivery to `partner` is verified
    // against partner's keys, and an unknown scanner is 404.
    let body = b"[]".to_vec();
    let sig = Signer::test().sign(&body);
    let a = app.post("partner", Some(KEY_ID), Some(&sig), body).await;
    assert_eq!(a.status, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_after_a_fresh_refetch_is_401() {
    let db = sqlite().await;
    let keys = KeyServer::with_test_keys().await;
    let app = spawn_app(
        db.url(),
        &keys,
        TestOptions {
            keys_refetch_interval: Duration::ZERO,
            ..TestOptions::default()
        },
    )
    .await;
    app.keys_attempted("github").await;
    let before = keys.fetches();
    let body = b"[]".to_vec();
    let sig = Signer::test().sign(&body);
    let a = app
        .post("github", Some("no-such-key"), Some(&sig), body)
        .await;
    assert_eq!((a.status, a.error_code()), (401, "unknown_key"));
    assert_eq!(
        keys.fetches(),
        before + 1,
        "refetched before saying unknown"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_hidden_by_the_rate_limit_gets_503_then_succeeds() {
    let db = sqlite().await;
    let keys = KeyServer::with_test_keys().await;
    let interval = Duration::from_millis(400);
    let app = spawn_app(
        db.url(),
        &keys,
        TestOptions {
            keys_refetch_interval: interval,
            ..TestOptions::default()
        },
    )
    .await;
    app.keys_attempted("github").await;
    // The new key appears right after the start-up fetch used up the interval.
    keys.set_mode(KeyMode::Serve(fixture_string("keys/rotated-keys.json")));
    let rotated = Signer::from_fixture("keys/other-key.pem", ROTATED_KEY_ID);
    let a = app.deliver(&rotated, b"[]".to_vec()).await;
    assert_eq!(
        (a.status, a.error_code()),
        (503, "keys_unavailable"),
        "never a final 401"
    );
    // The scanner's retry after the interval is accepted.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = app.deliver(&rotated, b"[]".to_vec()).await;
        if a.status == 200 {
            break;
        }
        assert_eq!(a.status, 503, "{}", a.text);
        assert!(Instant::now() < deadline, "rotation never picked up");
        tokio::time::sleep(interval / 4).await;
    }
    app.stop().await;
}
