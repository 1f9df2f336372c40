//! The alert endpoint: `POST /secret-scanning/{scanner}`.
//!
//! Order of work, cheapest refusal first: scanner known (404) → signature headers
//! present and well-formed (401) → declared length within the limit (413) → key for
//! the key id (401 unknown, 503 unavailable) → body read within `--body-timeout`
//! (408) and the limit (413), its bytes beyond the first 64 KiB taken from the shared
//! `--unverified-body-budget` as they arrive (a body waits for budget, within the same
//! timeout) → signature over the exact raw bytes (401) → a delivery slot
//! (`--max-concurrent-deliveries`; none free: 503 `overloaded`) → JSON shape (400) →
//! the delivery's memory reserved from `--verified-memory-budget` (does not fit: 503
//! `overloaded`) → classify offline → one store call, carrying the delivery's deadline
//! and once per body (503 if the database fails or gives up at the deadline, rolled
//! back; a body this scanner delivered before is answered from its first report) → 200
//! with per-item feedback, streamed in 64 KiB pieces.
//!
//! The signature headers are the scanner's (`Github-…` unless its protocol or
//! `--scanner-header-prefix` says otherwise, see [`crate::signature::protocol`]). A
//! `gitlab` scanner's verified body that is no alert array is answered 200 after its
//! raw bytes' tokens are revoked: GitLab retries every answer of 400 or more.
//!
//! Nothing a client without a scanner's private key can send takes a delivery slot
//! or verified memory: unverified work is bounded by the connection cap, the header
//! and body timeouts and the unverified body budget (see [`super::intake`]).

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use sha2::{Digest, Sha256};

use super::intake::{self, FeedbackBody, Held, FEEDBACK_CHUNK};
use super::{millis, ApiError, AppState};
use crate::domain::alert;
use crate::domain::alert::Compact;
use crate::domain::redact::redact_tokens;
use crate::domain::scan;
use crate::domain::{Formats, Outcome, OutcomeCounts};
use crate::signature::{self, KeyError, Protocol};
use crate::store::RecordOptions;

/// `POST /secret-scanning/{scanner}`.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/secret-scanning/{scanner}", axum::routing::post(receive))
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, ApiError> {
    headers
        .get(name)
        .ok_or_else(|| ApiError::MissingHeader(name.to_owned()))?
        .to_str()
        .map_err(|_| ApiError::MalformedHeader(name.to_owned()))
}

/// Refuses from the Content-Length alone when it already says more than `limit`.
pub(super) fn check_declared_length(headers: &HeaderMap, limit: usize) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    Ok(())
}

/// Reads the body within `timeout` (a client that trickles, or whose body waits too
/// long for budget, gets 408).
pub(super) async fn read_body(
    state: &AppState,
    body: Body,
) -> Result<(Bytes, usize, Held), ApiError> {
    let read = intake::read_body(body, state.max_body, &state.unverified_budget);
    tokio::time::timeout(state.body_timeout, read)
        .await
        .map_err(|_| ApiError::BodyTimeout)?
}

#[utoipa::path(
    post,
    path = "/secret-scanning/{scanner}",
    tag = "alerts",
    params(
        ("scanner" = String, Path, description = "a configured --scanner NAME"),
        ("Github-Public-Key-Identifier" = String, Header, description = "the signing key's id (header prefix per scanner: `Gitlab-` for protocol gitlab, --scanner-header-prefix)"),
        ("Github-Public-Key-Signature" = String, Header, description = "base64 of a DER ECDSA P-256/SHA-256 signature over the exact body bytes"),
    ),
    request_body(content = Vec<super::openapi::AlertItem>, description = "the alerts, signed as sent"),
    responses(
        (status = 200, description = "verified and processed: one entry per item sent, in input order, streamed (a `gitlab` scanner: 200 for any verified body)", body = Vec<super::openapi::Feedback>),
        (status = 400, description = "`bad_body`: verified, but not a JSON array of objects with a string `token`; `body_read_error`: the connection broke while the body was read", body = super::openapi::ErrorBody),
        (status = 401, description = "`bad_signature_header` (missing, not ASCII, not base64, not DER), `unknown_key`, `bad_signature`", body = super::openapi::ErrorBody),
        (status = 404, description = "`unknown_scanner`: no such scanner configured", body = super::openapi::ErrorBody),
        (status = 408, description = "`body_timeout`: the body did not arrive within --body-timeout", body = super::openapi::ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over --max-body", body = super::openapi::ErrorBody),
        (status = 503, description = "retry later: `keys_unavailable`, `database_unavailable`, `database_read_only`, `database_corrupt`, `database_pooler`, `timeout`, `overloaded`", body = super::openapi::ErrorBody, headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
#[tracing::instrument(name = "delivery", skip_all, fields(scanner = tracing::field::Empty, key_id = tracing::field::Empty))]
pub(super) async fn receive(
    State(state): State<AppState>,
    scanner: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::response::Response, ApiError> {
    let started = Instant::now();
    // A segment that is not valid UTF-8 names no scanner: JSON 404 like any other.
    let scanner = scanner.map(|Path(s)| s).unwrap_or_default();
    // The path segment is the client's: bounded, and any token in it redacted.
    let shown: String = redact_tokens(&scanner).chars().take(64).collect();
    tracing::Span::current().record("scanner", shown.as_str());
    // How far the request got ([`Stage`]): one still reading its body, unverified, at the
    // deadline (a body trickled by anyone) is no delivery either; one waiting on keys
    // is (key trouble is ours, and the request may be genuine).
    let stage = Arc::new(std::sync::atomic::AtomicU8::new(Stage::Key as u8));
    let result = match tokio::time::timeout(
        state.request_timeout,
        handle(&state, &scanner, &headers, body, started, &stage),
    )
    .await
    {
        Ok(result) => result,
        // Dropping the work rolls back an open transaction; only a COMMIT already
        // sent may still land, and then the retry is answered from that report.
        Err(_) => Err(ApiError::Timeout {
            retry_after: state.retry_after,
            rolled_back: false,
        }),
    };
    // Only configured names become metric labels; anything else is one bucket.
    let label = if state.scanners.contains_key(&scanner) {
        scanner.as_str()
    } else {
        crate::metrics::UNKNOWN_SCANNER
    };
    let status = match &result {
        Ok((_, counts, _)) => {
            for &outcome in Outcome::ALL {
                state
                    .metrics
                    .item(label, outcome, u64::from(counts.get(outcome)));
            }
            Some(200)
        }
        Err(e) => {
            let unverified = e.is_unverified()
                || (matches!(e, ApiError::Timeout { .. })
                    && stage.load(std::sync::atomic::Ordering::Relaxed) == Stage::Body as u8);
            refusal(&state, label, e, unverified, e.cause(), started)
        }
    };
    if let Some(status) = status {
        state
            .metrics
            .delivery(label, status, started.elapsed().as_secs_f64());
    }
    result.map(|(delivery, _, held)| {
        let mut chunks = delivery.feedback(FEEDBACK_CHUNK);
        let first = chunks.next_chunk().unwrap_or_default();
        // A small answer goes out whole (with a Content-Length); a large one in pieces,
        // holding its memory reservation until it is sent.
        let body = if chunks.is_done() {
            Body::from(first)
        } else {
            Body::new(FeedbackBody::new(first, chunks, held))
        };
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    })
}

/// How far a delivery got, for what a timeout counts as.
#[derive(Clone, Copy)]
enum Stage {
    /// Waiting on the key for its key id.
    Key,
    /// Reading the body, its signature not checked yet.
    Body,
    /// Its signature verified.
    Verified,
}

/// What a refusal counts as, logged once: a request refused before it proved to be the
/// scanner's (`unverified`: anyone can send those) is counted in
/// `revoker_rejected_requests_total` and logged at debug, so a flood of them is no flood
/// of lines, and it is no delivery (`None`); any other is one WARN line with its `cause`,
/// and a failed delivery (its status). Shared with the Token Revocation API.
pub(super) fn refusal(
    state: &AppState,
    label: &str,
    e: &ApiError,
    unverified: bool,
    cause: Option<String>,
    started: Instant,
) -> Option<u16> {
    let status = e.status().as_u16();
    if unverified {
        tracing::debug!(
            status,
            error = e.code(),
            "request refused before its signature or token verified: {e}"
        );
        state.metrics.rejected(label, e.rejection_reason());
        return None;
    }
    tracing::warn!(
        status,
        error = e.code(),
        cause,
        duration_ms = millis(started.elapsed()),
        "delivery refused: {e}"
    );
    Some(status)
}

/// The alert array standing for an unparseable body: every token-shaped run of an
/// enabled format in its bytes (plain or escaped), typed by its format's name (`cio_tp`
/// for one of our shape that is not a token), source `unparsed_body`; and how many.
fn salvage(body: &[u8], formats: Formats) -> (Vec<u8>, usize) {
    #[derive(serde::Serialize)]
    struct Item<'a> {
        token: &'a str,
        #[serde(rename = "type")]
        token_type: &'static str,
        url: &'static str,
        source: &'static str,
    }
    let found = scan::all(body, formats);
    let items: Vec<Item<'_>> = found
        .iter()
        .map(|(_, token)| Item {
            token,
            token_type: formats.type_of(token),
            url: "",
            source: "unparsed_body",
        })
        .collect();
    (serde_json::to_vec(&items).expect("plain JSON"), found.len())
}

/// A delivery slot taken in a CPU job, and only with one the JSON's first pass over the
/// verified body (no slot free: nothing parsed), for [`admit`].
pub(super) struct Slotted {
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    measured: Option<Result<alert::Sizes, alert::ParseError>>,
}

impl Slotted {
    /// A slot of `deliveries` if one is free, then the first pass over `body`.
    pub(super) fn take(
        deliveries: &Arc<tokio::sync::Semaphore>,
        body: &[u8],
        formats: Formats,
    ) -> Self {
        let slot = Arc::clone(deliveries).try_acquire_owned().ok();
        let measured = slot.as_ref().map(|_| alert::measure(body, formats));
        Slotted { slot, measured }
    }

    /// Whether the body was measured and is an alert array.
    pub(super) fn is_alert_array(&self) -> bool {
        matches!(self.measured, Some(Ok(_)))
    }
}

/// The delivery slot ([`Slotted`]), then the JSON's shape (400 when the body is no
/// alert array), then the delivery's memory; the slot or the memory missing: 503
/// `overloaded` at once (no queue to grow without bound, and the scanner retries on
/// 503).
pub(super) fn admit(
    state: &AppState,
    Slotted { slot, measured }: Slotted,
    capacity: usize,
) -> Result<(tokio::sync::OwnedSemaphorePermit, alert::Sizes, Held), ApiError> {
    let overloaded = || ApiError::Overloaded {
        retry_after: state.retry_after,
    };
    let (Some(slot), Some(measured)) = (slot, measured) else {
        return Err(overloaded());
    };
    let sizes = measured?;
    let held = state
        .verified_budget
        .try_take(intake::verified_estimate(capacity, &sizes))
        .ok_or_else(|| {
            tracing::warn!(
                items = sizes.items,
                candidates = sizes.candidates,
                budget_free = state.verified_budget.available(),
                "delivery does not fit the verified memory budget"
            );
            overloaded()
        })?;
    Ok((slot, sizes, held))
}

async fn handle(
    state: &AppState,
    scanner: &str,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
    stage: &Arc<std::sync::atomic::AtomicU8>,
) -> Result<(Compact, OutcomeCounts, Held), ApiError> {
    let unknown = || ApiError::UnknownScanner(redact_tokens(scanner).chars().take(64).collect());
    let cache = state.scanners.get(scanner).ok_or_else(unknown)?;
    let protocol = state.protocols.get(scanner).ok_or_else(unknown)?;
    let key_id = header(headers, &protocol.key_id_header)?;
    let key_id = &key_id[..key_id.len().min(256)]; // bounded in logs and the database
    tracing::Span::current().record("key_id", redact_tokens(key_id).as_ref());
    let signature = signature::decode_signature(header(headers, &protocol.signature_header)?)?;
    check_declared_length(headers, state.max_body)?;

    // The key first: a delivery under an unknown key is refused before its body is read.
    let key = cache.key(key_id).await.map_err(|e| match e {
        KeyError::Unknown => ApiError::UnknownKey,
        KeyError::Unavailable => ApiError::KeysUnavailable {
            retry_after: state.retry_after,
            unconfirmed: {
                let status = cache.status();
                status.last_fetch_ok == Some(true) && status.keys > 0
            },
        },
    })?;
    stage.store(Stage::Body as u8, std::sync::atomic::Ordering::Relaxed);
    let (body, capacity, unverified) = read_body(state, body).await?;
    // The signature, then (with a delivery slot free) the JSON's first pass, in one job
    // (off the async threads for a large body). The job holds the body's unverified
    // reservation until it ends, also when the request is dropped meanwhile. A request
    // whose deadline comes while it waits its turn for the CPU is still unproven: it
    // counts as unverified (anyone can send a large body under a junk signature).
    let (verifying_key, raw, formats) = (key.key, body.clone(), state.formats);
    let (deliveries, verified) = (Arc::clone(&state.deliveries), Arc::clone(stage));
    let (unverified, slotted) = state
        .cpu
        .run(body.len(), move || {
            signature::verify(&verifying_key, &raw, &signature)?;
            verified.store(Stage::Verified as u8, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, ApiError>((unverified, Slotted::take(&deliveries, &raw, formats)))
        })
        .await?;
    if !key.is_current {
        tracing::info!("delivery signed with a key that is not marked current");
    }
    let (body, admitted, unverified) = match admit(state, slotted, capacity) {
        // GitLab retries any answer of 400 or more, forever: a verified body that is no
        // alert array is answered 200 after revoking the tokens its bytes hold.
        Err(ApiError::Parse(e)) if protocol.protocol == Protocol::Gitlab => {
            let deliveries = Arc::clone(&state.deliveries);
            let (salvaged, tokens, slotted, unverified) = state
                .cpu
                .run(body.len(), move || {
                    let (salvaged, tokens) = salvage(&body, formats);
                    let slotted = Slotted::take(&deliveries, &salvaged, formats);
                    (salvaged, tokens, slotted, unverified)
                })
                .await;
            tracing::warn!(
                error = %e,
                tokens,
                "verified GitLab delivery is not an alert array; revoking the tokens in its raw bytes and answering 200 (GitLab retries anything else)"
            );
            let capacity = salvaged.capacity();
            let body = Bytes::from(salvaged);
            let admitted = admit(state, slotted, capacity);
            (body, admitted, unverified)
        }
        admitted => (body, admitted, unverified),
    };
    let admitted = admitted?;
    drop(unverified); // the verified reservation covers the body from here
    process(state, scanner, key_id, body, admitted, started, None).await
}

/// A verified, admitted body: parse, classify, one store call (with the delivery's
/// deadline, once per body), the feedback. Shared with the Token Revocation API, whose
/// items have no `source`: `default_source` is recorded for an item without one.
pub(super) async fn process(
    state: &AppState,
    scanner: &str,
    key_id: &str,
    body: Bytes,
    (slot, sizes, held): (tokio::sync::OwnedSemaphorePermit, alert::Sizes, Held),
    started: Instant,
    default_source: Option<&'static str>,
) -> Result<(Compact, OutcomeCounts, Held), ApiError> {
    let received_at = chrono::Utc::now();
    let (len, formats) = (body.len(), state.formats);
    let (who, key) = (scanner.to_owned(), key_id.to_owned());
    // The second pass over a large body, and its SHA-256, off the async threads. The
    // job holds the delivery's slot and memory until it ends, also when the request is
    // dropped meanwhile (its deadline): they count what the job holds.
    let (mut delivery, report, _slot, held) = state
        .cpu
        .run(len, move || {
            let mut delivery = alert::compact(body, &sizes, formats)?;
            if let Some(source) = default_source {
                for c in delivery
                    .candidates
                    .iter_mut()
                    .filter(|c| c.source.is_empty())
                {
                    c.source = source.to_owned();
                }
            }
            let report =
                delivery.take_report(&who, &key, received_at, |body| Sha256::digest(body).into());
            Ok::<_, alert::ParseError>((delivery, report, slot, held))
        })
        .await?;

    let (report_id, counts) = match report {
        None => {
            let counts = OutcomeCounts {
                not_ours: delivery.not_ours,
                ..OutcomeCounts::default()
            };
            (None, counts)
        }
        Some(report) => {
            let db_started = Instant::now();
            let options = RecordOptions {
                deadline: Some(started + state.request_timeout),
                once_per_body: true,
            };
            let recorded = state.store.record_report(&report, options).await;
            state
                .metrics
                .db("record_report", db_started.elapsed().as_secs_f64());
            let recorded =
                recorded.map_err(|source| ApiError::from_store(source, state.retry_after))?;
            if recorded.duplicate {
                tracing::info!(
                    report_id = recorded.report_id,
                    "body delivered before: answered from its report, nothing recorded"
                );
            }
            state.metrics.revoked(recorded.tokens_revoked);
            if recorded.tokens_revoked > 0 {
                if let Some(notifier) = &state.notifier {
                    notifier.wake();
                }
            }
            for (c, o) in report.candidates.iter().zip(&recorded.outcomes) {
                tracing::debug!(token = %c.hash.prefix(), outcome = o.as_str(), "item");
            }
            delivery.set_outcomes(&recorded.outcomes);
            // A repeat changed nothing: its outcomes are not counted again.
            let counts = if recorded.duplicate {
                OutcomeCounts::default()
            } else {
                recorded.counts
            };
            (Some(recorded.report_id), counts)
        }
    };

    tracing::info!(
        report_id,
        items = delivery.len(),
        revoked = counts.revoked,
        already_revoked = counts.already_revoked,
        expired = counts.expired,
        unknown = counts.unknown,
        not_ours = counts.not_ours,
        duration_ms = millis(started.elapsed()),
        "delivery processed"
    );
    Ok((delivery, counts, held))
}
