//! The scanner key cache seen from outside: rotation, refetch limits, outages, hangs,
//! redirects of a key URL, a caller dropped mid-fetch.
//! Store-independent, so these run on SQLite only.

mod common;

use std::time::{Duration, Instant};

use common::*;
use revoker::signature::{KeyCache, KeySource};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_key_is_picked_up_by_one_refetch() {
    let app = TestApp::sqlite()
        .keys_refetch_interval(Duration::ZERO)
        .wait_for_keys()
        .start()
        .await;
    assert_eq!(
        app.deliver(&Signer::test(), b"[]".to_vec()).await.status,
        200
    );
    let before = app.keys().fetches();

    app.keys().set_mode(KeyMode::rotated_keys());
    let a = app.deliver(&Signer::rotated(), b"[]".to_vec()).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(app.keys().fetches(), before + 1, "exactly one refetch");
    // The old key is still listed (not current) and still accepted; no new fetch.
    assert_eq!(
        app.deliver(&Signer::test(), b"[]".to_vec()).await.status,
        200
    );
    assert_eq!(app.keys().fetches(), before + 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_id_storm_fetches_at_most_once_per_interval() {
    let app = TestApp::sqlite().wait_for_keys().start().await;
    let before = app.keys().fetches();
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
    let fetched = app.keys().fetches() - before;
    assert!(fetched <= 1, "{fetched} fetches");
    // Still responsive for the real key.
    assert_eq!(app.deliver(&Signer::test(), body).await.status, 200);
    assert!(started.elapsed() < Duration::from_secs(10));
    app.stop().await;
}

/// A storm after the refetch interval, while its one refetch is slow (1 s): 60
/// deliveries signed with a freshly rotated key all wait for that fetch and get 200;
/// 60 random key ids get 401 or 503; the key server sees exactly one fetch.
/// Checked against removing the single-flight lock in `KeyCache::key`: deliveries that
/// arrive while the fetch runs no longer wait for it and get 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_after_the_interval_shares_one_slow_fetch() {
    let interval = Duration::from_millis(300);
    let app = TestApp::sqlite()
        .keys_refetch_interval(interval)
        .wait_for_keys()
        .start()
        .await;
    // Let the interval since the start-up fetch pass: the storm may start a fetch.
    tokio::time::sleep(interval + Duration::from_millis(100)).await;
    app.keys().set_mode(KeyMode::Slow(
        Duration::from_secs(1),
        fixture_string("keys/rotated-keys.json"),
    ));
    let before = app.keys().fetches();
    let body = b"[]".to_vec();
    let rotated = Signer::rotated();
    let rotated_sig = rotated.sign(&body);
    let junk_sig = Signer::test().sign(&body);
    let genuine = (0..60).map(|_| {
        let (app, body, sig, id) = (&app, body.clone(), &rotated_sig, &rotated.key_id);
        async move { app.post("github", Some(id), Some(sig), body).await.status }
    });
    let unknown = (0..60).map(|i| {
        let (app, body, sig) = (&app, body.clone(), &junk_sig);
        async move {
            app.post("github", Some(&format!("random-{i}")), Some(sig), body)
                .await
                .status
        }
    });
    let (genuine, unknown) = tokio::join!(
        futures::future::join_all(genuine),
        futures::future::join_all(unknown)
    );
    assert!(genuine.iter().all(|s| *s == 200), "{genuine:?}");
    assert!(
        unknown.iter().all(|s| matches!(s, 401 | 503)),
        "{unknown:?}"
    );
    assert_eq!(app.keys().fetches() - before, 1, "one fetch for the storm");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_keys_keep_working_when_the_source_fails() {
    let app = TestApp::sqlite()
        .keys_ttl(Duration::ZERO) // always stale: every delivery tries a refresh
        .keys_refetch_interval(Duration::ZERO)
        .wait_for_keys()
        .start()
        .await;
    for mode in [KeyMode::Status(500), KeyMode::Garbage, KeyMode::Status(404)] {
        app.keys().set_mode(mode);
        let before = app.keys().fetches();
        for _ in 0..3 {
            let a = app.deliver(&Signer::test(), b"[]".to_vec()).await;
            assert_eq!(a.status, 200, "{}", a.text);
        }
        // Refreshes were attempted (and failed) in the background meanwhile.
        app.keys().wait_for_fetches(before + 1).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_source_without_keys_answers_503_within_the_timeout() {
    let app = TestApp::sqlite()
        .keys(KeyMode::Hang)
        .keys_timeout(Duration::from_millis(800))
        .start()
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
    let app = TestApp::sqlite()
        .keys(KeyMode::Garbage)
        .keys_refetch_interval(Duration::ZERO)
        .start()
        .await;
    let a = app.deliver(&Signer::test(), b"[]".to_vec()).await;
    assert_eq!((a.status, a.error_code()), (503, "keys_unavailable"));
    app.keys().set_mode(KeyMode::test_keys());
    let a = app.deliver(&Signer::test(), b"[]".to_vec()).await;
    assert_eq!(a.status, 200, "{}", a.text);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_token_goes_to_the_github_key_endpoint_only() {
    let partner = KeyServer::with_test_keys().await;
    let app = TestApp::sqlite()
        .github_token("ghs_exampletoken")
        .scanner("partner", partner.url())
        .wait_for_keys()
        .start()
        .await;
    assert_eq!(
        app.keys().last_authorization().as_deref(),
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
    let app = TestApp::sqlite()
        .keys_refetch_interval(Duration::ZERO)
        .wait_for_keys()
        .start()
        .await;
    let before = app.keys().fetches();
    let body = b"[]".to_vec();
    let sig = Signer::test().sign(&body);
    let a = app
        .post("github", Some("no-such-key"), Some(&sig), body)
        .await;
    assert_eq!((a.status, a.error_code()), (401, "unknown_key"));
    assert_eq!(
        app.keys().fetches(),
        before + 1,
        "refetched before saying unknown"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_hidden_by_the_rate_limit_gets_503_then_succeeds() {
    let interval = Duration::from_millis(400);
    let app = TestApp::sqlite()
        .keys_refetch_interval(interval)
        .wait_for_keys()
        .start()
        .await;
    // The new key appears right after the start-up fetch used up the interval.
    app.keys().set_mode(KeyMode::rotated_keys());
    let a = app.deliver(&Signer::rotated(), b"[]".to_vec()).await;
    assert_eq!(
        (a.status, a.error_code()),
        (503, "keys_unavailable"),
        "never a final 401"
    );
    // The scanner's retries after the interval are accepted.
    let retry = async || app.deliver(&Signer::rotated(), b"[]".to_vec()).await;
    let accepted = |a: &Answer| {
        assert!(a.status == 200 || a.status == 503, "{}", a.text);
        a.status == 200
    };
    eventually(
        Duration::from_secs(5),
        "rotation never picked up",
        retry,
        accepted,
    )
    .await;
    app.stop().await;
}

/// `serve --scanner NAME=FILE` with a file that cannot give a key stops at start, non-zero,
/// naming the scanner, the file and the problem (instead of answering every alert 503
/// for ever). A key URL that is down at start is only a warning.
#[test]
fn serve_refuses_a_key_file_that_is_missing_or_holds_no_usable_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    let serve = |scanner: &str| {
        let out = serve_command(&db)
            .args(["--scanner", scanner])
            .output()
            .unwrap();
        assert!(!out.status.success(), "serve started with {scanner}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    let missing = dir.path().join("nope.json");
    let err = serve(&format!("github={}", missing.display()));
    assert!(
        err.contains(&format!(
            "scanner \"github\": key file {}: cannot read key file",
            missing.display()
        )) && err.contains("No such file"),
        "{err}"
    );

    let notpem = dir.path().join("notpem.json");
    std::fs::write(
        &notpem,
        r#"{"public_keys":[{"key_identifier":"team-1","key":"notpem","is_current":true}]}"#,
    )
    .unwrap();
    let err = serve(&format!("team={}", notpem.display()));
    assert!(err.contains(&notpem.display().to_string()), "{err}");
    assert!(
        err.contains(r#"key "team-1" is not a public key PEM"#),
        "{err}"
    );
    assert!(!err.contains("PEM preamble"), "{err}");

    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "not json").unwrap();
    let err = serve(&format!("team={}", garbage.display()));
    assert!(
        err.contains(&garbage.display().to_string()) && err.contains("not valid key JSON"),
        "{err}"
    );
}

#[test]
fn serve_starts_when_a_key_url_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    // Port 1 on loopback: connection refused.
    let server = ServeProcess::start(&db, &["--scanner", "down=http://127.0.0.1:1/keys"], false);
    server.wait_for_log("fetching scanner keys failed");
    server.stop();
}

/// A key cache over a key URL, as `serve` builds one: `refetch_interval` between
/// fetches, keys fresh for an hour.
fn url_cache(
    url: &str,
    bearer: Option<&str>,
    refetch_interval: Duration,
) -> std::sync::Arc<KeyCache> {
    let source = KeySource::new(
        url,
        Duration::from_secs(5),
        bearer.map(|b| secrecy::SecretString::from(b.to_owned())),
    )
    .unwrap();
    std::sync::Arc::new(KeyCache::new(
        "github",
        source,
        Duration::from_secs(3600),
        refetch_interval,
        revoker::metrics::Metrics::new(),
    ))
}

/// A loopback server answering every path with `307 Location: <what route gives>`;
/// returns its base URL and the number of requests it received.
async fn redirector(
    to: impl Fn(&str) -> String + Clone + Send + Sync + 'static,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&hits);
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let (to, counted) = (to.clone(), std::sync::Arc::clone(&counted));
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            (
                axum::http::StatusCode::TEMPORARY_REDIRECT,
                [("location", to(uri.path()))],
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, hits)
}

/// Key fetches follow a redirect from loopback to loopback (and drop the bearer token on
/// the way to another port), and refuse one to plain http off this machine, or past
/// `MAX_REDIRECTS` hops. The refusal is reqwest's redirect policy deciding on the URL, so
/// nothing connects to 192.0.2.1; the rule itself (https, no https→http) is
/// `support::tests::redirects_go_to_https_or_loopback_only`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_fetches_follow_redirects_to_https_or_loopback_only() {
    use revoker::support::{error_chain, MAX_REDIRECTS};
    use std::sync::atomic::Ordering;
    let keys = KeyServer::with_test_keys().await;
    let keys_url = keys.url();
    let (base, hits) = redirector(move |path| match path {
        "/to-keys" => keys_url.clone(),
        "/offsite" => "http://192.0.2.1/keys".to_owned(),
        _ => "/loop".to_owned(),
    })
    .await;

    let followed = url_cache(
        &format!("{base}/to-keys"),
        Some("ghs_exampletoken"),
        Duration::ZERO,
    );
    assert_eq!(followed.load().await.unwrap(), 1);
    assert!(followed.key(KEY_ID).await.is_ok());
    assert_eq!(keys.fetches(), 1);
    assert_eq!(
        keys.last_authorization(),
        None,
        "the bearer stays with its host"
    );

    let offsite = url_cache(&format!("{base}/offsite"), None, Duration::ZERO);
    let err = error_chain(&offsite.load().await.unwrap_err());
    assert!(
        err.contains(&format!("error following redirect for url ({base}/offsite)"))
            && err.contains("a redirect to http://192.0.2.1 is not followed: only to https, or to plain http on this machine"),
        "{err}"
    );
    assert_eq!(offsite.status().keys, 0);

    let hits_before = hits.load(Ordering::SeqCst);
    let looping = url_cache(&format!("{base}/loop"), None, Duration::ZERO);
    let err = error_chain(&looping.load().await.unwrap_err());
    assert!(
        err.contains(&format!("more than {MAX_REDIRECTS} redirects")),
        "{err}"
    );
    assert_eq!(hits.load(Ordering::SeqCst) - hits_before, MAX_REDIRECTS + 1);
    assert_eq!(keys.fetches(), 1);
}

/// A delivery's key lookup that starts the shared fetch and is then dropped (its
/// deadline passed) does not cancel the fetch: a delivery waiting on it gets the key once
/// the endpoint answers, with no second fetch. Before, the fetch died with its caller,
/// and the waiter, counting it as done, answered 503 until the next refetch interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_dropped_mid_fetch_does_not_cancel_the_shared_fetch() {
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let keys = KeyServer::start(KeyMode::Gated(
        std::sync::Arc::clone(&gate),
        fixture_string("keys/test-keys.json"),
    ))
    .await;
    let cache = url_cache(&keys.url(), None, Duration::from_secs(3600));
    let lookup = |cache: &std::sync::Arc<KeyCache>| {
        let cache = std::sync::Arc::clone(cache);
        tokio::spawn(async move { cache.key(KEY_ID).await.map(|_| ()) })
    };

    let first = lookup(&cache);
    keys.wait_for_fetches(1).await; // the fetch is at the endpoint, held there
    let second = lookup(&cache);
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    gate.notify_one();
    let got = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the waiting lookup ends")
        .unwrap();
    assert_eq!(got, Ok(()), "the waiter gets the fetch's real result");
    assert_eq!(cache.status().keys, 1);
    assert_eq!(lookup(&cache).await.unwrap(), Ok(()));
    assert_eq!(keys.fetches(), 1, "one fetch, not cancelled, not repeated");
}
