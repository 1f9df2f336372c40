//! GitLab self-managed's Token Revocation API, on the public listener when
//! `--revocation-api-token` is set (404 otherwise):
//!
//! - `GET /v1/revocable_token_types` → 200 `{"types": [...]}` (`--revocation-api-types`).
//! - `POST /v1/revoke_tokens` with `[{"type","token","location",…}]` (other fields
//!   ignored) → **204** once revoked (the same one-statement revocation as a webhook
//!   delivery, recorded as a report of scanner `gitlab-revocation-api`, once per body),
//!   **400** for a body that is not such an array or a type not offered (GitLab does not
//!   retry it), **401** without a valid token, **429** + `Retry-After` when revoker cannot
//!   do it now (database down, overloaded, out of time): GitLab retries.
//!
//! Authentication: `Authorization: <token>` as GitLab sends it (raw), or
//! `Bearer <token>`; compared with every configured token in constant time
//! ([`SecretDigest`]), before the body is read.

use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::{webhook, ApiError, AppState};
use crate::domain::{scan, token};
use crate::support::SecretDigest;

/// Scanner name of the reports this API records.
pub const SCANNER: &str = "gitlab-revocation-api";

/// What `--revocation-api-token` and `--revocation-api-types` configure.
#[derive(Debug, Clone)]
pub struct RevocationApi {
    pub tokens: Vec<SecretDigest>,
    pub types: Vec<String>,
}

/// The two routes (answering 404 unless enabled).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/revocable_token_types", get(types))
        .route("/v1/revoke_tokens", post(revoke))
}

/// The API's settings when enabled and the request carries one of its tokens.
fn authorize<'s>(state: &'s AppState, headers: &HeaderMap) -> Result<&'s RevocationApi, ApiError> {
    let api = state.revocation_api.as_deref().ok_or(ApiError::NotFound)?;
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim())
        .map(|v| v.strip_prefix("Bearer ").map_or(v, str::trim))
        .filter(|v| !v.is_empty())
        .ok_or(ApiError::RevocationUnauthorized)?;
    // Every token is compared, so the time does not say which one matched.
    let matched = api
        .tokens
        .iter()
        .fold(false, |any, t| t.matches(presented) | any);
    if matched {
        Ok(api)
    } else {
        Err(ApiError::RevocationUnauthorized)
    }
}

async fn types(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let api = authorize(&state, &headers)?;
    Ok(Json(serde_json::json!({ "types": api.types })))
}

/// One finding as GitLab sends it.
#[derive(Deserialize)]
struct Finding {
    #[serde(rename = "type")]
    token_type: String,
    token: String,
    #[serde(default)]
    location: Option<String>,
}

#[tracing::instrument(name = "revocation_api", skip_all)]
async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let result = match authorize(&state, &headers) {
        Ok(api) => tokio::time::timeout(
            state.request_timeout,
            handle(&state, api, &headers, body, started),
        )
        .await
        .unwrap_or(Err(ApiError::Timeout {
            retry_after: state.retry_after,
            rolled_back: false,
        })),
        Err(e) => Err(e),
    };
    // GitLab retries 429; what is a 503 elsewhere becomes one here (its cause kept for
    // the one log line below: the 429 carries none).
    let cause = result.as_ref().err().and_then(ApiError::cause);
    let result = result.map_err(|e| match e.retry_after() {
        Some(retry_after) if e.status() == StatusCode::SERVICE_UNAVAILABLE => {
            ApiError::RetryLater {
                retry_after,
                why: e.to_string(),
            }
        }
        _ => e,
    });
    let status = match &result {
        Ok(()) => 204,
        Err(e) => {
            tracing::warn!(
                status = e.status().as_u16(),
                error = e.code(),
                cause,
                duration_ms = super::millis(started.elapsed()),
                "revocation request refused: {e}"
            );
            e.status().as_u16()
        }
    };
    if !matches!(result, Err(ApiError::NotFound)) {
        state
            .metrics
            .delivery(SCANNER, status, started.elapsed().as_secs_f64());
    }
    result.map(|()| StatusCode::NO_CONTENT.into_response())
}

/// One item of the alert array handed to the webhook's pipeline.
#[derive(serde::Serialize)]
struct AlertItem<'a> {
    token: &'a str,
    #[serde(rename = "type")]
    token_type: &'a str,
    url: &'a str,
    source: &'static str,
}

async fn handle(
    state: &AppState,
    api: &RevocationApi,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
) -> Result<(), ApiError> {
    webhook::check_declared_length(headers, state.max_body)?;
    let (body, _, unverified) = webhook::read_body(state, body).await?;
    let findings: Vec<Finding> = serde_json::from_slice(&body).map_err(|e| {
        // serde's message may quote the token: only where it broke.
        ApiError::InvalidRequest(format!(
            "the body is not a JSON array of {{\"type\", \"token\", \"location\"}} objects (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    drop(body);
    if let Some(f) = findings.iter().find(|f| !api.types.contains(&f.token_type)) {
        let shown: String = crate::domain::redact::redact_tokens(&f.token_type)
            .chars()
            .take(100)
            .collect();
        return Err(ApiError::InvalidRequest(format!(
            "token type {shown:?} is not offered (GET /v1/revocable_token_types)"
        )));
    }
    // The webhook's pipeline, in GitHub's item shape. A `token` that is no token as a
    // whole (a gitleaks rule without a secret group sends the matched text) stands for
    // every token in it.
    let mut found = Vec::new();
    for f in &findings {
        if token::validate(&f.token).is_ok() {
            found.push((f.token.clone(), f));
        } else {
            let inside = scan::all(f.token.as_bytes());
            if inside.is_empty() {
                found.push((f.token.clone(), f));
            }
            found.extend(inside.into_iter().map(|(_, t)| (t, f)));
        }
    }
    let items: Vec<AlertItem<'_>> = found
        .iter()
        .map(|(token, f)| AlertItem {
            token,
            token_type: &f.token_type,
            url: f.location.as_deref().unwrap_or(""),
            source: "gitlab_pipeline",
        })
        .collect();
    let alerts = serde_json::to_vec(&items).expect("plain JSON");
    drop(items);
    drop(found);
    drop(findings);
    let capacity = alerts.capacity();
    let alerts = Bytes::from(alerts);
    let admitted = webhook::admit(state, &alerts, capacity)?;
    drop(unverified);
    webhook::process(state, SCANNER, "revocation-api", alerts, admitted, started).await?;
    Ok(())
}
