//! The alert endpoint: `POST /secret-scanning/{scanner}`.
//!
//! Order of work, cheapest refusal first: scanner known (404) → signature headers
//! present and well-formed (401) → body within the limit, read without buffering more
//! than the limit (413) → key for the key id (401 unknown, 503 unavailable) → signature
//! over the exact raw bytes (401) → JSON shape (400) → classify offline → one store
//! call (503 if the database fails; nothing written) → 200 with per-item feedback.
//! At most `--max-concurrent-deliveries` run at once; one more gets 503 `overloaded`
//! before any of that work.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use http_body_util::{BodyExt, Limited};
use sha2::{Digest, Sha256};

use super::{ApiError, AppState};
use crate::domain::alert;
use crate::domain::redact::redact_tokens;
use crate::domain::{Outcome, OutcomeCounts};
use crate::signature::{self, KeyError, KEY_ID_HEADER, SIGNATURE_HEADER};
use crate::store::{RecordOptions, StoreError};

/// `POST /secret-scanning/{scanner}`.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/secret-scanning/{scanner}", axum::routing::post(receive))
}

fn header<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, ApiError> {
    headers
        .get(name)
        .ok_or(ApiError::MissingHeader(name))?
        .to_str()
        .map_err(|_| ApiError::MalformedHeader(name))
}

/// Refuses from the Content-Length alone when it already says more than `limit`.
fn check_declared_length(headers: &HeaderMap, limit: usize) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    Ok(())
}

/// Reads at most `limit` bytes within `timeout` (a client that trickles gets 408).
async fn read_body(
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<axum::body::Bytes, ApiError> {
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(ApiError::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::PayloadTooLarge { limit })
        }
        Ok(Err(_)) => Err(ApiError::BodyRead),
    }
}

#[tracing::instrument(name = "delivery", skip_all, fields(scanner = tracing::field::Empty, key_id = tracing::field::Empty))]
async fn receive(
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
    // Held until the answer is built; when none is free, refuse at once (no queue to
    // grow without bound, and the scanner retries on 503).
    let permit = Arc::clone(&state.deliveries).try_acquire_owned();
    let result = match permit {
        Err(_) => Err(ApiError::Overloaded {
            retry_after: state.retry_after,
        }),
        Ok(_permit) => match tokio::time::timeout(
            state.request_timeout,
            handle(&state, &scanner, &headers, body, started),
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
        },
    };
    // Only configured names become metric labels; anything else is one bucket.
    let label = if state.scanners.contains_key(&scanner) {
        scanner.as_str()
    } else {
        "_unknown"
    };
    let status = match &result {
        Ok((_, counts)) => {
            for &outcome in Outcome::ALL {
                state
                    .metrics
                    .item(label, outcome, u64::from(counts.get(outcome)));
            }
            200
        }
        Err(e) => {
            tracing::warn!(
                status = e.status().as_u16(),
                error = e.code(),
                duration_ms = started.elapsed().as_secs_f64() * 1e3,
                "delivery refused: {e}"
            );
            e.status().as_u16()
        }
    };
    state
        .metrics
        .delivery(label, status, started.elapsed().as_secs_f64());
    result.map(|(feedback, _)| {
        (
            [(header::CONTENT_TYPE, "application/json")],
            axum::body::Bytes::from(feedback),
        )
            .into_response()
    })
}

async fn handle(
    state: &AppState,
    scanner: &str,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
) -> Result<(Vec<u8>, OutcomeCounts), ApiError> {
    let cache = state.scanners.get(scanner).ok_or_else(|| {
        ApiError::UnknownScanner(redact_tokens(scanner).chars().take(64).collect())
    })?;
    let key_id = header(headers, KEY_ID_HEADER)?;
    let key_id = &key_id[..key_id.len().min(256)]; // bounded in logs and the database
    tracing::Span::current().record("key_id", redact_tokens(key_id).as_ref());
    let signature = signature::decode_signature(header(headers, SIGNATURE_HEADER)?)?;
    check_declared_length(headers, state.max_body)?;

    // The key first: a delivery under an unknown key is refused before its body is read.
    let key = cache.key(key_id).await.map_err(|e| match e {
        KeyError::Unknown => ApiError::UnknownKey,
        KeyError::Unavailable => ApiError::KeysUnavailable {
            retry_after: state.retry_after,
        },
    })?;
    let body = read_body(body, state.max_body, state.body_timeout).await?;
    signature::verify(&key.key, &body, &signature)?;
    if !key.is_current {
        tracing::info!("delivery signed with a key that is not marked current");
    }

    let received_at = chrono::Utc::now();
    let items = alert::parse(&body)?;
    let classified = alert::classify(&items);

    let (report_id, outcomes, counts) =
        match classified.into_report(scanner, key_id, received_at, || {
            Sha256::digest(&body).into()
        }) {
            None => {
                let counts = OutcomeCounts {
                    not_ours: classified.not_ours,
                    ..OutcomeCounts::default()
                };
                (None, classified.outcomes(&[]), counts)
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
                let recorded = recorded.map_err(|source| match source {
                    StoreError::DeadlineExceeded => ApiError::Timeout {
                        retry_after: state.retry_after,
                        rolled_back: true,
                    },
                    source => ApiError::DatabaseUnavailable {
                        source,
                        retry_after: state.retry_after,
                    },
                })?;
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
                // A repeat changed nothing: its outcomes are not counted again.
                let counts = if recorded.duplicate {
                    OutcomeCounts::default()
                } else {
                    recorded.counts
                };
                (
                    Some(recorded.report_id),
                    classified.outcomes(&recorded.outcomes),
                    counts,
                )
            }
        };

    tracing::info!(
        report_id,
        items = items.len(),
        revoked = counts.revoked,
        already_revoked = counts.already_revoked,
        expired = counts.expired,
        unknown = counts.unknown,
        not_ours = counts.not_ours,
        duration_ms = started.elapsed().as_secs_f64() * 1e3,
        "delivery processed"
    );
    Ok((
        alert::feedback_json(&items, &classified.hashes, &outcomes),
        counts,
    ))
}
