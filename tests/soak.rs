//! Soak: one `revoker serve` process under 64 concurrent clients sending a mix of
//! deliveries for 60 s. Every answer must be the one its kind calls for (zero
//! errors) and memory must stay flat: RSS is read from /proc at the start, every
//! 10 s, and at the end.
//!
//! Ignored by default (it takes a minute); `.ci/run` runs it:
//! `cargo test --test soak -- --ignored --nocapture`.
//! `REVOKER_SOAK_SECONDS` changes the length, `REVOKER_SOAK_BACKEND=postgres` runs it
//! against the PostgreSQL test server instead of SQLite.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Duration as Ttl;
use common::*;
use rand::seq::SliceRandom;
use rand::Rng;
use revoker::domain::token::Token;

const CONCURRENCY: usize = 64;

/// One kind of delivery and the answer it must get.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Five issued tokens (revoked by an earlier delivery or by this one) and one
    /// unknown token: 200, five true positives and a false positive.
    Issued,
    /// Three unknown well-formed tokens and a string that is no token: 200, all false.
    Unknown,
    /// Signed with a key that is not the scanner's: 401 `bad_signature`.
    Forged,
    /// Signed, but not JSON: 400 `bad_body`.
    Malformed,
    /// Signed empty array: 200 `[]`.
    Empty,
}

const MIX: [Kind; 10] = [
    Kind::Issued,
    Kind::Issued,
    Kind::Issued,
    Kind::Issued,
    Kind::Unknown,
    Kind::Unknown,
    Kind::Forged,
    Kind::Malformed,
    Kind::Empty,
    Kind::Unknown,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes a minute; run by .ci/run"]
async fn sixty_seconds_at_concurrency_64_zero_errors_flat_memory() {
    let seconds: u64 = std::env::var("REVOKER_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let kind = match std::env::var("REVOKER_SOAK_BACKEND").as_deref() {
        Ok("postgres") => common::Kind::Postgres,
        _ => common::Kind::Sqlite,
    };
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    let server = ServeProcess::start(db.url(), &[], false);
    let store = open_store(db.url()).await;
    let issued = Arc::new(mint_many(store.as_ref(), "soak/pkg", 5_000, Ttl::hours(2)).await);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();
    let base = server.base.clone();

    // Warm up (keys fetched, connections open), then take the starting figures.
    for _ in 0..50 {
        let a = send_delivery(&client, &base, alert_body(&["junk"]))
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{}", a.text);
    }
    let (rss_start, _) = server.memory_kib();
    eprintln!("soak: {seconds} s at concurrency {CONCURRENCY} against {kind:?}; RSS at start {rss_start} KiB");

    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let error_count = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|w| {
            let (client, base, issued) = (client.clone(), base.clone(), Arc::clone(&issued));
            let (sent, errors, error_count) = (
                Arc::clone(&sent),
                Arc::clone(&errors),
                Arc::clone(&error_count),
            );
            tokio::spawn(async move {
                let forger = Signer::from_fixture("keys/other-key.pem", KEY_ID);
                let mut i = w;
                while Instant::now() < deadline {
                    let kind = MIX[i % MIX.len()];
                    i += 1;
                    let result = one(&client, &base, &issued, &forger, kind).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = result {
                        error_count.fetch_add(1, Ordering::Relaxed);
                        let mut errors = errors.lock().unwrap();
                        if errors.len() < 10 {
                            errors.push(format!("{kind:?}: {e}"));
                        }
                    }
                }
            })
        })
        .collect();

    let mut samples = vec![(0u64, rss_start)];
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(10).min(deadline - Instant::now())).await;
        let (rss, _) = server.memory_kib();
        let at = started.elapsed().as_secs();
        eprintln!(
            "soak: {at:>3} s  {:>7} deliveries  {} errors  RSS {rss} KiB",
            sent.load(Ordering::Relaxed),
            error_count.load(Ordering::Relaxed)
        );
        samples.push((at, rss));
    }
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = sent.load(Ordering::Relaxed);
    let (rss_end, peak) = server.memory_kib();
    eprintln!(
        "soak: {total} deliveries in {elapsed:.1} s ({:.0}/s), {} errors; RSS start {rss_start} KiB, end {rss_end} KiB, peak {peak} KiB",
        total as f64 / elapsed,
        error_count.load(Ordering::Relaxed)
    );
    let errors = errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "unexpected answers: {errors:#?}");
    assert!(total > 1_000, "the soak hardly ran: {total} deliveries");

    // Flat: after the first sample (caches and pools filled), RSS grows by less than
    // 16 MiB to the end, and the end is within 64 MiB of the start.
    let settled = samples.get(1).map_or(rss_start, |s| s.1);
    assert!(
        rss_end < settled + 16 * 1024,
        "RSS kept growing: {samples:?} → {rss_end} KiB"
    );
    assert!(
        rss_end < rss_start + 64 * 1024,
        "RSS {rss_start} → {rss_end} KiB"
    );

    // Every issued token that was named is revoked; the database is consistent.
    let problems = db.inconsistencies().await;
    assert!(problems.is_empty(), "{problems:?}");
    let logs = server.stop();
    for t in issued.iter().take(200) {
        assert!(!logs.contains(t.expose_secret()), "raw token in the logs");
    }
    db.cleanup().await;
}

/// Sends one delivery of `kind` and checks its answer.
async fn one(
    client: &reqwest::Client,
    base: &str,
    issued: &[Token],
    forger: &Signer,
    kind: Kind,
) -> Result<(), String> {
    let (body, signer_forged) = {
        let mut rng = rand::thread_rng();
        match kind {
            Kind::Issued => {
                let mut raw: Vec<String> = issued
                    .choose_multiple(&mut rng, 5)
                    .map(|t| t.expose_secret().to_owned())
                    .collect();
                raw.push(Token::generate().expose_secret().to_owned());
                let refs: Vec<&str> = raw.iter().map(String::as_str).collect();
                (alert_body(&refs), false)
            }
            Kind::Unknown => {
                let raw: Vec<String> = (0..3)
                    .map(|_| Token::generate().expose_secret().to_owned())
                    .chain([format!("junk-{}", rng.gen::<u32>())])
                    .collect();
                let refs: Vec<&str> = raw.iter().map(String::as_str).collect();
                (alert_body(&refs), false)
            }
            Kind::Forged => (
                alert_body(&[issued[rng.gen_range(0..issued.len())].expose_secret()]),
                true,
            ),
            Kind::Malformed => (br#"[{"token": "#.to_vec(), false),
            Kind::Empty => (b"[]".to_vec(), false),
        }
    };
    let answer = if signer_forged {
        let sig = forger.sign(&body);
        let resp = client
            .post(format!("{base}/secret-scanning/github"))
            .header("Github-Public-Key-Identifier", KEY_ID)
            .header("Github-Public-Key-Signature", sig)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        Answer::from(resp).await
    } else {
        send_delivery(client, base, body)
            .await
            .map_err(|e| format!("no answer: {e}"))?
    };
    let expected: (u16, Option<Vec<&str>>, &str) = match kind {
        Kind::Issued => (
            200,
            Some(vec![
                "true_positive",
                "true_positive",
                "true_positive",
                "true_positive",
                "true_positive",
                "false_positive",
            ]),
            "",
        ),
        Kind::Unknown => (200, Some(vec!["false_positive"; 4]), ""),
        Kind::Forged => (401, None, "bad_signature"),
        Kind::Malformed => (400, None, "bad_body"),
        Kind::Empty => (200, Some(vec![]), ""),
    };
    let ok = answer.status == expected.0
        && match &expected.1 {
            Some(labels) => answer.labels() == *labels,
            None => answer.error_code() == expected.2,
        };
    if ok {
        Ok(())
    } else {
        // Not the body: a 200 answer names the raw tokens (token_raw).
        Err(format!(
            "{} {} {:?}",
            answer.status,
            answer.error_code(),
            answer
                .json
                .as_array()
                .map(|items| items.iter().map(|i| i["label"].clone()).collect::<Vec<_>>())
        ))
    }
}
