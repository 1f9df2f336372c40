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

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::{webhook, ApiError, AppState};
use crate::domain::alert;
use crate::support::SecretDigest;

/// Scanner name of the reports this API records.
pub const SCANNER: &str = "gitlab-revocation-api";

/// What `--revocation-api-token` and `--revocation-api-types` configure.
#[derive(Debug, Clone)]
pub struct RevocationApi {
    pub tokens: Vec<SecretDigest>,
    pub types: Arc<[String]>,
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
        .map(|v| crate::support::credentials(v, "Bearer").unwrap_or(v))
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

#[utoipa::path(
    get,
    path = "/v1/revocable_token_types",
    tag = "revocation-api",
    security(("revocation_api_token" = [])),
    responses(
        (status = 200, description = "the types offered (--revocation-api-types)", body = super::openapi::RevocableTokenTypes),
        (status = 401, description = "`unauthorized`: no `Authorization`, or not one of --revocation-api-token", body = super::openapi::ErrorBody),
        (status = 404, description = "`not_found`: started without --revocation-api-token", body = super::openapi::ErrorBody),
    )
)]
pub(super) async fn types(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let api = authorize(&state, &headers)?;
    Ok(Json(serde_json::json!({ "types": &*api.types })))
}

#[utoipa::path(
    post,
    path = "/v1/revoke_tokens",
    tag = "revocation-api",
    security(("revocation_api_token" = [])),
    request_body(content = Vec<super::openapi::RevocationItem>, description = "GitLab's batch; other fields are ignored"),
    responses(
        (status = 204, description = "revoked, through the same one statement as a webhook delivery (a resent body is answered from its first report)"),
        (status = 400, description = "`invalid_request`: not such an array, or a type not offered; the whole batch (`body_read_error`: the connection broke while the body was read)", body = super::openapi::ErrorBody),
        (status = 401, description = "`unauthorized`: no `Authorization`, or not one of --revocation-api-token", body = super::openapi::ErrorBody),
        (status = 404, description = "`not_found`: started without --revocation-api-token", body = super::openapi::ErrorBody),
        (status = 408, description = "`body_timeout`: the body did not arrive within --body-timeout", body = super::openapi::ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over --max-body", body = super::openapi::ErrorBody),
        (status = 429, description = "`retry_later`: the database down or out of time, too many deliveries; nothing was recorded (GitLab retries)", body = super::openapi::ErrorBody, headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
#[tracing::instrument(name = "revocation_api", skip_all)]
pub(super) async fn revoke(
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
        Ok(()) => Some(204),
        Err(ApiError::NotFound) => None,
        // Its token is checked before the body is read: a 413, 408 or broken body comes
        // from an authenticated caller, a failed delivery like any other.
        Err(e) => {
            let unverified = matches!(e, ApiError::RevocationUnauthorized);
            webhook::refusal(&state, SCANNER, e, unverified, cause, started)
        }
    };
    if let Some(status) = status {
        state
            .metrics
            .delivery(SCANNER, status, started.elapsed().as_secs_f64());
    }
    result.map(|()| StatusCode::NO_CONTENT.into_response())
}

/// The source recorded for this API's items (GitLab sends none).
const SOURCE: &str = "gitlab_pipeline";

/// GitLab's body goes through the webhook's pipeline as it is (`location` is read as the
/// `url`; a `token` that is no token as a whole, such as a gitleaks rule's whole match,
/// yields every token inside it, see [`crate::domain::alert`]): the slot and the memory
/// are reserved by `admit` before anything is parsed into memory, and nothing is copied.
async fn handle(
    state: &AppState,
    api: &RevocationApi,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
) -> Result<(), ApiError> {
    webhook::check_declared_length(headers, state.max_body)?;
    let (body, capacity, unverified) = webhook::read_body(state, body).await?;
    // serde's message may quote the token: only where it broke.
    let invalid = |e: alert::ParseError| {
        ApiError::InvalidRequest(format!(
            "the body is not a JSON array of {{\"type\", \"token\", \"location\"}} objects ({} at line {}, column {})",
            e.kind, e.line, e.column
        ))
    };
    // The JSON's first pass and the type check, in one job (off the async threads for a
    // large body), holding the body's reservation until it ends.
    let (raw, offered, formats) = (body.clone(), Arc::clone(&api.types), state.formats);
    let deliveries = Arc::clone(&state.deliveries);
    let (unverified, slotted, refused) = state
        .cpu
        .run(body.len(), move || {
            let slotted = webhook::Slotted::take(&deliveries, &raw, formats);
            // The first item whose type is not offered, shown (redacted, cut) here.
            let refused = slotted.is_alert_array().then(|| {
                alert::first_type_where(&raw, |t| {
                    !t.is_some_and(|t| offered.iter().any(|a| a == t))
                })
                .map(|refused| {
                    refused.map(|t| match t {
                        Some(t) => format!(
                            "{:?}",
                            crate::domain::redact::redact_tokens(&t)
                                .chars()
                                .take(100)
                                .collect::<String>()
                        ),
                        None => "(none)".to_owned(),
                    })
                })
            });
            (unverified, slotted, refused)
        })
        .await;
    let admitted = webhook::admit(state, slotted, capacity).map_err(|e| match e {
        ApiError::Parse(e) => invalid(e),
        e => e,
    })?;
    drop(unverified); // the verified reservation covers the body from here
    if let Some(refused) = refused {
        if let Some(shown) = refused.map_err(invalid)? {
            return Err(ApiError::InvalidRequest(format!(
                "token type {shown} is not offered (GET /v1/revocable_token_types)"
            )));
        }
    }
    webhook::process(
        state,
        SCANNER,
        "revocation-api",
        body,
        admitted,
        started,
        Some(SOURCE),
    )
    .await?;
    Ok(())
}
