//! Owner notifications: tell each token's owner, once, that their token leaked and was
//! revoked.
//!
//! The delivery that revokes a token queues its notification in the same transaction
//! (the outbox, see [`crate::store`]: one batch per delivery, turned into a row per
//! token before any claim); nothing is sent inline, so a slow or broken
//! owner webhook never slows or fails a scanner's delivery, and a crash loses nothing.
//! A [`Notifier`] (inside `serve`, or `revoker notify run` once) claims due
//! notifications with a lease, POSTs each to `--notify-webhook` and records the result:
//!
//! - Body: [`Payload`] as JSON, the same bytes on every attempt. No raw token: the
//!   token is named by the first 12 hex digits of its SHA-256.
//! - `Revoker-Signature: sha256=<hex HMAC-SHA256(--notify-secret, body)>`.
//! - `Idempotency-Key: <notification public id>`, a UUIDv7 the database minted with
//!   the row, unique across databases and restores (the row id counts per database):
//!   delivery is at-least-once (a worker that dies after the receiver accepted but
//!   before recording it sends again after the lease; one that cannot record a result
//!   tries again until the lease runs out), so receivers deduplicate on it.
//! - Leases, due times and `delivered_at` are judged and stamped by the database's
//!   clock ([`Clock::Database`]: PostgreSQL's `now()`), never this host's, so workers on
//!   hosts with skewed clocks agree on when a lease has run out.
//! - A 2xx answer is delivered; anything else (other status, timeout, connection
//!   error) is retried after an exponential backoff with jitter; after
//!   `--notify-max-attempts` the notification is marked failed, visible in
//!   `/api/stats`, `/metrics` and `revoker notify list`, until `revoker notify retry`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::Sha256;

pub mod worker;

pub use worker::WorkerStatus;

use crate::metrics::Metrics;
use crate::store::{AttemptResult, Clock, Notification, RevocationStore, StoreError};
use crate::support::{default_duration, error_chain, http_client, require_https, Redirects};

/// Header carrying `sha256=<hex HMAC-SHA256(secret, body)>`.
pub const SIGNATURE_HEADER: &str = "Revoker-Signature";
/// Header carrying the notification's public id (a UUID); the same on every attempt.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// Header carrying the attempt number (1 for the first); informational, not signed.
pub const ATTEMPT_HEADER: &str = "Revoker-Attempt";

/// The longest `--notify-backoff-max` accepted.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30 * 24 * 3600);

/// The defaults of the `--notify-*` flags, as the command line writes them (its help
/// shows these strings; [`NotifySettings::new`] parses the same ones).
pub mod defaults {
    pub const TIMEOUT: &str = "10s";
    pub const MAX_ATTEMPTS: u32 = 10;
    pub const BACKOFF: &str = "30s";
    pub const BACKOFF_MAX: &str = "6h";
    pub const POLL_INTERVAL: &str = "5s";
}

/// How notifications are sent.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    pub webhook: String,
    pub secret: SecretString,
    /// Per request.
    pub timeout: Duration,
    /// Attempts before a notification is marked failed.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles per attempt up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How often the worker in `serve` looks for due notifications when not woken.
    pub poll_interval: Duration,
    /// Notifications claimed (and sent concurrently) per round.
    pub batch: u32,
}

impl NotifySettings {
    /// Defaults with the given webhook and secret.
    pub fn new(webhook: &str, secret: &str) -> Self {
        NotifySettings {
            webhook: webhook.to_owned(),
            secret: SecretString::from(secret.to_owned()),
            timeout: default_duration(defaults::TIMEOUT),
            max_attempts: defaults::MAX_ATTEMPTS,
            backoff_base: default_duration(defaults::BACKOFF),
            backoff_max: default_duration(defaults::BACKOFF_MAX),
            poll_interval: default_duration(defaults::POLL_INTERVAL),
            batch: 32,
        }
    }

    /// How long a claim keeps other workers off: a whole round of concurrent sends
    /// takes at most one timeout, so two timeouts and a margin.
    pub fn lease(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(30)
    }

    /// Checks what `serve` and `notify run` would otherwise only find out on the
    /// first send.
    pub fn validate(&self) -> anyhow::Result<()> {
        check_webhook_url(&self.webhook)?;
        if self.secret.expose_secret().trim().is_empty() {
            bail!("--notify-secret is empty; owner notifications must be signed");
        }
        if self.max_attempts == 0 {
            bail!("--notify-max-attempts must be at least 1");
        }
        if self.timeout.is_zero() {
            bail!("--notify-timeout must be greater than 0");
        }
        if self.backoff_max > MAX_BACKOFF {
            bail!("--notify-backoff-max must be at most 30 days");
        }
        Ok(())
    }
}

/// https, or plain http to a loopback address only (a notification names the owner
/// and where their token leaked).
pub fn check_webhook_url(url: &str) -> anyhow::Result<()> {
    require_https(url, "--notify-webhook", "--notify-webhook", "")
}

/// `scheme://host[:port]` of the webhook, for logs: paths and queries of webhook URLs
/// often carry a secret (chat and incident tools put one there).
pub fn webhook_origin(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// The JSON body of a notification. Field order is fixed, so the body (and its
/// signature) is the same on every attempt.
#[derive(Debug, Serialize)]
pub struct Payload<'a> {
    /// Always `token.revoked`.
    pub event: &'static str,
    /// The notification's public id, a UUIDv7 (also the `Idempotency-Key` header).
    pub id: &'a str,
    pub owner: &'a str,
    pub token: TokenRef<'a>,
    pub revoked_at: DateTime<Utc>,
    /// The token had already expired when it was reported (revoked anyway).
    pub expired: bool,
    pub found: Found<'a>,
    /// The report (delivery) that revoked it.
    pub report_id: i64,
}

#[derive(Debug, Serialize)]
pub struct TokenRef<'a> {
    /// The token's format: `cio_tp` (minted by revoker), `crates_io_trustpub`,
    /// `crates_io_api`, …
    #[serde(rename = "type")]
    pub token_type: &'a str,
    /// First 12 hex digits of `sha256`.
    pub hash_prefix: String,
    /// The token's hash as stored, 64 hex digits: for a registry's own formats, exactly
    /// as it was imported (`revoker token import`), so the registry can find its row.
    pub sha256: String,
}

#[derive(Debug, Serialize)]
pub struct Found<'a> {
    /// The scanner that reported it (`github`, …, or `replay`).
    pub scanner: &'a str,
    /// Where: the scanner's link to the leak (tokens in it are redacted). `null` once
    /// the retention purge has passed (`--retention`): it is not kept longer. Empty
    /// when the scanner gave none (and for a token revoked by hand).
    pub url: Option<&'a str>,
    /// `null` once purged, like `url`.
    pub source: Option<&'a str>,
}

/// The exact body sent for `n`.
pub fn payload_body(n: &Notification) -> Vec<u8> {
    let payload = Payload {
        event: "token.revoked",
        id: &n.public_id,
        owner: &n.owner,
        token: TokenRef {
            token_type: &n.token_format,
            hash_prefix: n.token_hash.prefix(),
            sha256: n.token_hash.to_hex(),
        },
        revoked_at: n.revoked_at,
        expired: n.expired,
        found: Found {
            scanner: &n.scanner,
            url: unless_purged(&n.url),
            source: unless_purged(&n.source),
        },
        report_id: n.report_id,
    };
    serde_json::to_vec(&payload).expect("a payload serialises")
}

/// `None` for a value the retention purge overwrote.
fn unless_purged(value: &str) -> Option<&str> {
    (value != crate::store::PURGED).then_some(value)
}

/// `sha256=<hex>` of HMAC-SHA256 over `body` with `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Delay before the attempt after attempt number `attempts` (1-based): the base
/// doubled per earlier attempt, capped, then a uniformly random part of its upper half
/// taken off (jitter), so owners' receivers are not hit by synchronised retries.
pub fn backoff(attempts: u32, base: Duration, max: Duration) -> Duration {
    let doublings = attempts.saturating_sub(1).min(30);
    let full = base.saturating_mul(1u32 << doublings).min(max);
    let jitter: f64 = rand::thread_rng().gen_range(0.0..=0.5);
    full.mul_f64(1.0 - jitter)
}

/// What one [`Notifier::run_once`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RunSummary {
    pub delivered: u32,
    /// Not delivered this time; due again later.
    pub retrying: u32,
    /// Out of attempts: marked failed.
    pub failed: u32,
}

/// Claims and sends due notifications.
#[derive(Clone)]
pub struct Notifier {
    store: Arc<dyn RevocationStore>,
    client: reqwest::Client,
    settings: Arc<NotifySettings>,
    metrics: Option<Metrics>,
    wake: Arc<tokio::sync::Notify>,
    /// The worker's state, for the admin `/readyz`.
    status: WorkerStatus,
}

impl Notifier {
    pub fn new(
        store: Arc<dyn RevocationStore>,
        settings: NotifySettings,
        metrics: Option<Metrics>,
    ) -> anyhow::Result<Self> {
        settings.validate()?;
        // A redirect could carry the notification somewhere else; it is not followed
        // (it counts as a failed attempt).
        let client = http_client(settings.timeout, Redirects::Never)
            .context("cannot build the notification HTTP client")?;
        Ok(Notifier {
            store,
            client,
            settings: Arc::new(settings),
            metrics,
            wake: Arc::new(tokio::sync::Notify::new()),
            status: WorkerStatus::default(),
        })
    }

    /// Makes the worker look for due notifications now (after a delivery revoked
    /// something) instead of at its next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Sends everything that is due now, round after round, until nothing due is
    /// left; a notification that fails is due again only after its backoff.
    pub async fn run_once(&self) -> Result<RunSummary, StoreError> {
        self.rounds(None).await
    }

    /// [`Self::run_once`], stopping between rounds once `stop` turns true.
    async fn rounds(
        &self,
        stop: Option<&tokio::sync::watch::Receiver<bool>>,
    ) -> Result<RunSummary, StoreError> {
        let mut summary = RunSummary::default();
        loop {
            if stop.is_some_and(|s| *s.borrow()) {
                break;
            }
            let claimed_at = std::time::Instant::now();
            let claimed = self
                .store
                .claim_notifications(Clock::Database, self.settings.lease(), self.settings.batch)
                .await?;
            if claimed.is_empty() {
                break;
            }
            let mut sends = tokio::task::JoinSet::new();
            for n in claimed {
                let this = self.clone();
                sends.spawn(async move {
                    let result = this.attempt(&n).await;
                    (n, result)
                });
            }
            // Every result of the round is recorded even if recording one fails: a send
            // the webhook accepted should not be sent again for a database hiccup.
            let mut first_error = None;
            while let Some(joined) = sends.join_next().await {
                let (n, result) = joined.expect("a send task does not panic");
                let label = match &result {
                    AttemptResult::Delivered => {
                        summary.delivered += 1;
                        "delivered"
                    }
                    AttemptResult::Retry { error, .. } => {
                        summary.retrying += 1;
                        tracing::warn!(
                            notification = %n.public_id,
                            attempt = n.attempts,
                            error = %error,
                            "owner notification not delivered; will retry"
                        );
                        "retry"
                    }
                    AttemptResult::Failed { error } => {
                        summary.failed += 1;
                        tracing::error!(
                            notification = %n.public_id,
                            attempts = n.attempts,
                            error = %error,
                            "owner notification failed for good; `revoker notify retry` re-queues it"
                        );
                        "failed"
                    }
                };
                if let Some(m) = &self.metrics {
                    m.notification_attempt(label);
                }
                let until = claimed_at + self.settings.lease();
                if let Err(e) = self.finish(&n, &result, until, stop).await {
                    first_error.get_or_insert(e);
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
        }
        Ok(summary)
    }

    /// Records the result of a send, trying again while the database is unavailable (a
    /// failover, a pooler restarting) until the claim's lease runs out or `stop` turns
    /// true: a send the webhook accepted whose record was lost would be sent again after
    /// the lease, and one whose retry was lost would wait out the lease.
    async fn finish(
        &self,
        n: &Notification,
        result: &AttemptResult,
        until: std::time::Instant,
        stop: Option<&tokio::sync::watch::Receiver<bool>>,
    ) -> Result<(), StoreError> {
        let mut pause = Duration::from_millis(50);
        loop {
            // Each attempt too ends with the lease (a connection to a host that vanished
            // without a reset would otherwise wait for TCP to give up); dropping one
            // mid-way is safe, the writes are guarded and can be repeated.
            let left = until.saturating_duration_since(std::time::Instant::now());
            let attempt = self.store.finish_notification(n, result, Clock::Database);
            let error = match tokio::time::timeout(left, attempt).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => StoreError::NoAnswer,
            };
            let transient = matches!(
                error,
                StoreError::Database(_)
                    | StoreError::ReadOnly
                    | StoreError::WriteTurnTimedOut
                    | StoreError::DeadlineExceeded
                    | StoreError::NoAnswer
            );
            if !transient
                || std::time::Instant::now() + pause >= until
                || stop.is_some_and(|s| *s.borrow())
            {
                return Err(error);
            }
            if pause == Duration::from_millis(50) {
                tracing::warn!(notification = %n.public_id, error = %error,
                    "cannot record a notification's result; trying again until its lease ends");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// One POST of a claimed notification and what it means for the row.
    async fn attempt(&self, n: &Notification) -> AttemptResult {
        let body = payload_body(n);
        let signature = sign(self.settings.secret.expose_secret().as_bytes(), &body);
        let sent = self
            .client
            .post(&self.settings.webhook)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .header(IDEMPOTENCY_HEADER, n.public_id.as_str())
            .header(ATTEMPT_HEADER, n.attempts.to_string())
            .body(body)
            .send()
            .await;
        let error = match sent {
            Ok(resp) if resp.status().is_success() => {
                tracing::info!(
                    notification = %n.public_id,
                    token = %n.token_hash.prefix(),
                    attempt = n.attempts,
                    "owner notified"
                );
                return AttemptResult::Delivered;
            }
            Ok(resp) => format!("webhook answered HTTP {}", resp.status().as_u16()),
            // Without the URL: it is the operator's and may carry credentials.
            Err(e) if e.is_timeout() => {
                format!(
                    "no answer within {}",
                    humantime::format_duration(self.settings.timeout)
                )
            }
            Err(e) => format!("request failed: {}", error_chain(&e.without_url())),
        };
        let error: String = error.chars().take(300).collect();
        if n.attempts >= self.settings.max_attempts {
            AttemptResult::Failed { error }
        } else {
            // Due again this long after now by the database's clock (the store adds it
            // when it records the attempt).
            let retry_in = backoff(
                n.attempts,
                self.settings.backoff_base,
                self.settings.backoff_max,
            );
            AttemptResult::Retry { error, retry_in }
        }
    }

    /// Whether the worker of `serve` runs, and its restarts after panics.
    pub fn status(&self) -> &WorkerStatus {
        &self.status
    }

    /// [`Self::run`] under [`worker::supervise`]: restarted after a panic (an ERROR
    /// line, `revoker_notify_worker_restarts_total`, a pause of
    /// [`worker::RESTART_PAUSE`]), stopped by `stop` like `run`. Marks the worker
    /// running at once (see [`Self::status`]).
    pub fn run_supervised(
        self,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send {
        let status = self.status.clone();
        let metrics = self.metrics.clone();
        let rx = stop.clone();
        worker::supervise(
            move || self.clone().run(rx.clone()),
            stop,
            status,
            metrics,
            worker::RESTART_PAUSE,
        )
    }

    /// The worker inside `serve`: a pass now, then whenever woken or every poll
    /// interval, until `stop` turns true; a pass in progress finishes its round of
    /// sends (each at most `--notify-timeout`) and records them first. A database
    /// error is logged and retried at the next poll.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        tracing::info!(
            webhook = %webhook_origin(&self.settings.webhook),
            "owner notifications: delivery worker started"
        );
        loop {
            if let Err(e) = self.rounds(Some(&stop)).await {
                tracing::warn!(error = %error_chain(&e), "owner notifications: pass failed; retrying later");
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        tracing::info!("owner notifications: delivery worker stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_hmac_vector() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_stays_capped() {
        let base = Duration::from_secs(10);
        let max = Duration::from_secs(300);
        for _ in 0..200 {
            let first = backoff(1, base, max);
            assert!(first >= base / 2 && first <= base, "{first:?}");
            let third = backoff(3, base, max);
            assert!(third >= base * 2 && third <= base * 4, "{third:?}");
            let late = backoff(40, base, max);
            assert!(late >= max / 2 && late <= max, "{late:?}");
        }
        // Jitter: not always the same delay.
        let delays: std::collections::HashSet<_> = (0..50).map(|_| backoff(2, base, max)).collect();
        assert!(delays.len() > 1);
    }

    #[test]
    fn webhook_must_be_https_unless_loopback() {
        assert!(check_webhook_url("https://hooks.example.com/revoked").is_ok());
        assert!(check_webhook_url("http://127.0.0.1:8080/x").is_ok());
        assert!(check_webhook_url("http://localhost/x").is_ok());
        assert!(check_webhook_url("http://hooks.example.com/x").is_err());
        assert!(check_webhook_url("ftp://hooks.example.com/x").is_err());
        assert!(check_webhook_url("not a url").is_err());
    }

    #[test]
    fn logs_name_only_the_webhook_origin() {
        assert_eq!(
            webhook_origin("https://user:pw@hooks.example.com:8443/T000/B000/XXXXsecret?token=s3"),
            "https://hooks.example.com:8443"
        );
        assert_eq!(
            webhook_origin("http://127.0.0.1:9/x/secret"),
            "http://127.0.0.1:9"
        );
    }

    #[test]
    fn settings_refuse_a_zero_timeout_or_an_endless_backoff() {
        let ok = NotifySettings::new("https://hooks.example.com/x", "s");
        assert!(ok.validate().is_ok());
        let mut bad = ok.clone();
        bad.timeout = Duration::ZERO;
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.backoff_max = MAX_BACKOFF + Duration::from_secs(1);
        assert!(bad.validate().is_err());
        let mut bad = ok;
        bad.secret = SecretString::from(" ".to_owned());
        assert!(bad.validate().is_err());
    }
}
