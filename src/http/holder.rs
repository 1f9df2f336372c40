//! The holder endpoints, on the public listener (`--holder-endpoints on`, the default;
//! off: 404). A token's holder, GitHub's validity checks and the registry's API servers
//! ask about a token by presenting it:
//!
//! - `GET /v1/tokens/current`, `Authorization: Bearer <token>`: **200** `{"active": true,
//!   "token_type", "owner", "created_at", "expires_at"}` for a live token; **401**
//!   `WWW-Authenticate: Bearer error="invalid_token"` with one body for every other
//!   (revoked, expired, unknown, a string that is no token): nothing tells them apart.
//!   No `Authorization: Bearer …` at all: 401 `Bearer realm="revoker"`,
//!   `invalid_request`.
//! - `DELETE /v1/tokens/current` (crates.io's shape): **204** whatever the token's state;
//!   a live token is revoked by the same one-statement path as a delivery, recorded as a
//!   report of scanner [`HOLDER_SCANNER`] (its owner notified); any other: nothing written.
//! - `POST /oauth/revoke` (RFC 7009), form `token=…`: **200** for any token, a live one
//!   revoked as by `DELETE`; **400** `invalid_request` for a body that is no form with one
//!   `token`.
//! - `POST /oauth/introspect` (RFC 7662): [`super::introspect`].
//!
//! Abuse: a string that fails the offline checks of every enabled format (prefix,
//! length, alphabet, check digits) is answered without the database. A token that passes
//! them costs a lookup, so the first three endpoints count them per client address
//! ([`super::client`]): past `--holder-rate-limit`, **429** + `Retry-After`. The database
//! unavailable: **503** + `Retry-After` (a `DELETE` answered so may or may not have
//! revoked: the holder sends it again). No answer or log line holds the token; every
//! answer is `Cache-Control: no-store`; each is counted in
//! `revoker_holder_requests_total{endpoint,outcome}`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};

use super::client::{ClientAddress, Limiter};
use super::{ApiError, AppState};
use crate::domain::alert::{NewReport, HOLDER_SCANNER};
use crate::domain::Format;
use crate::store::{RecordOptions, StoreError, TokenRecord, TokenStatus, NEVER_EXPIRES};
use crate::support::SecretDigest;

/// The holder and introspection endpoints ([`crate::http::holder`]).
#[derive(Debug, Clone)]
pub struct HolderSettings {
    /// `--holder-endpoints`: off, their paths answer 404.
    pub enabled: bool,
    /// `--holder-rate-limit` and `--holder-rate-burst`; `None`: not limited.
    pub rate_limit: Option<super::client::RateLimit>,
    /// `--trusted-proxy`: peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `--introspection-client ID:SECRET`: the callers of `POST /oauth/introspect` (none:
    /// it answers 404).
    pub introspection_clients: Vec<(String, secrecy::SecretString)>,
}

/// What `--holder-endpoints`, `--holder-rate-limit`, `--trusted-proxy` and
/// `--introspection-client` configure; `None` in [`AppState`] when the endpoints are off.
pub struct Holder {
    pub(super) limiter: Option<Limiter>,
    /// Lookups and revocations the first three endpoints may have in the database at
    /// once: half the pool, so however many addresses present tokens, scanner
    /// deliveries keep the other half.
    pub(super) lookups: Arc<tokio::sync::Semaphore>,
    pub(super) trusted_proxies: Vec<ipnet::IpNet>,
    /// Each client's `ID:SECRET`, as a digest (compared in constant time).
    pub(super) introspection_clients: Vec<SecretDigest>,
}

impl Holder {
    /// `None` when the endpoints are off; `pool_size` is `--db-max-connections`.
    pub fn new(settings: &HolderSettings, pool_size: u32) -> Option<Arc<Holder>> {
        use secrecy::ExposeSecret;
        settings.enabled.then(|| {
            Arc::new(Holder {
                limiter: settings.rate_limit.map(Limiter::new),
                lookups: Arc::new(tokio::sync::Semaphore::new((pool_size as usize / 2).max(1))),
                trusted_proxies: settings
                    .trusted_proxies
                    .iter()
                    .map(|net| super::client::canonical_net(*net))
                    .collect(),
                introspection_clients: settings
                    .introspection_clients
                    .iter()
                    .map(|(id, secret)| {
                        SecretDigest::of(&format!("{id}:{}", secret.expose_secret()))
                    })
                    .collect(),
            })
        })
    }
}

/// The routes the settings enable: none while the endpoints are off, introspection only
/// with a client (absent paths answer the public listener's JSON 404, whatever the
/// method).
pub fn router(holder: Option<&Arc<Holder>>) -> Router<AppState> {
    let Some(holder) = holder else {
        return Router::new();
    };
    let router = Router::new()
        .route("/v1/tokens/current", get(current).delete(delete_current))
        .route("/oauth/revoke", post(oauth_revoke));
    let router = if holder.introspection_clients.is_empty() {
        router
    } else {
        router.route("/oauth/introspect", post(super::introspect::introspect))
    };
    // The handlers' settings: only these routes have them, so none has to ask whether
    // the endpoints are on.
    router.layer(Extension(Arc::clone(holder)))
}

/// Why an answer is not what was asked for. Bodies never hold the token.
#[derive(Debug)]
pub(super) enum Refusal {
    /// No `Authorization: Bearer …` at all.
    NoBearer,
    /// A token that is not live, whatever the reason.
    InvalidToken,
    /// Introspection without valid client credentials.
    InvalidClient,
    InvalidRequest(&'static str),
    TooLarge,
    BodyTimeout,
    RateLimited(Duration),
    /// Half the database pool is busy with holders' lookups already.
    Overloaded,
    Unavailable(ApiError),
}

impl Refusal {
    /// Its `outcome` label in `revoker_holder_requests_total`.
    pub(super) fn outcome(&self) -> &'static str {
        match self {
            Refusal::InvalidToken => "inactive",
            Refusal::InvalidClient => "unauthorized",
            Refusal::NoBearer
            | Refusal::InvalidRequest(_)
            | Refusal::TooLarge
            | Refusal::BodyTimeout => "invalid_request",
            Refusal::RateLimited(_) => "rate_limited",
            Refusal::Overloaded | Refusal::Unavailable(_) => "unavailable",
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        // Status, OAuth error code, description, and the one header some answers add.
        let (status, error, description, header): (_, &str, &str, Option<(_, String)>) = match &self
        {
            Refusal::NoBearer => (
                StatusCode::UNAUTHORIZED,
                "invalid_request",
                "send the token as Authorization: Bearer <token>",
                Some((
                    header::WWW_AUTHENTICATE,
                    r#"Bearer realm="revoker""#.to_owned(),
                )),
            ),
            Refusal::InvalidToken => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the token is not active",
                Some((
                    header::WWW_AUTHENTICATE,
                    r#"Bearer error="invalid_token""#.to_owned(),
                )),
            ),
            Refusal::InvalidClient => (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "introspection needs HTTP Basic authentication as an --introspection-client",
                Some((
                    header::WWW_AUTHENTICATE,
                    r#"Basic realm="revoker""#.to_owned(),
                )),
            ),
            Refusal::InvalidRequest(why) => {
                (StatusCode::BAD_REQUEST, "invalid_request", *why, None)
            }
            Refusal::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "the body is larger than 16 KiB",
                None,
            ),
            Refusal::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request",
                "the body was not received in time",
                None,
            ),
            Refusal::RateLimited(wait) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many tokens from this address; try again after Retry-After seconds",
                Some((
                    header::RETRY_AFTER,
                    wait.as_secs_f64().ceil().max(1.0).to_string(),
                )),
            ),
            Refusal::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "too many tokens are being checked now; try again later",
                Some((header::RETRY_AFTER, "1".to_owned())),
            ),
            Refusal::Unavailable(e) => {
                let after = e.retry_after().unwrap_or(Duration::from_secs(1));
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    e.code(),
                    "the token could not be checked or revoked now; try again later",
                    Some((header::RETRY_AFTER, after.as_secs().max(1).to_string())),
                )
            }
        };
        let body = serde_json::json!({ "error": error, "error_description": description });
        let mut resp = no_store((status, Json(body)).into_response());
        if let Some((name, value)) = header {
            resp.headers_mut()
                .insert(name, HeaderValue::from_str(&value).expect("a plain header"));
        }
        resp
    }
}

/// `Cache-Control: no-store` (RFC 6749 §5.1, RFC 7662 §2.2: token state is not cached).
pub(super) fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A presented string, judged.
pub(super) enum Judged {
    /// Fails every enabled format's offline checks: no statement was sent.
    Malformed,
    /// Revoked, expired, unknown, or stored under another format.
    Inactive,
    Live(&'static Format, TokenRecord),
}

/// Judges `token`: the offline checks, then one lookup within the request's deadline.
/// For the endpoints anyone may call (`client` given): first one from the client
/// address's allowance, then a place among the holders' database work (waited for up to
/// a second), which the caller holds while it revokes.
pub(super) async fn judge(
    state: &AppState,
    holder: &Holder,
    token: &str,
    client: Option<ClientAddress>,
    started: Instant,
) -> Result<(Judged, Option<tokio::sync::OwnedSemaphorePermit>), Refusal> {
    let Some(format) = state.formats.recognise(token) else {
        return Ok((Judged::Malformed, None));
    };
    let deadline = tokio::time::Instant::from_std(started + state.request_timeout);
    let permit = match client {
        None => None,
        Some(ClientAddress(ip)) => {
            if let Some(limiter) = &holder.limiter {
                limiter.check(ip).map_err(Refusal::RateLimited)?;
            }
            let wait = deadline.min(tokio::time::Instant::now() + LOOKUP_WAIT);
            let permit = tokio::time::timeout_at(wait, Arc::clone(&holder.lookups).acquire_owned());
            Some(
                permit
                    .await
                    .map_err(|_| Refusal::Overloaded)?
                    .expect("never closed"),
            )
        }
    };
    let hash = format.key(token);
    let record = match tokio::time::timeout_at(deadline, state.store.token(&hash)).await {
        Ok(Ok(record)) => record,
        Ok(Err(source)) => return Err(unavailable(state, source)),
        Err(_) => return Err(unavailable(state, StoreError::DeadlineExceeded)),
    };
    let judged = match record {
        Some(r) if r.format == format.name && r.status(Utc::now()) == TokenStatus::Live => {
            Judged::Live(format, r)
        }
        _ => Judged::Inactive,
    };
    Ok((judged, permit))
}

/// How long a holder's request waits for a place among the holders' database work.
const LOOKUP_WAIT: Duration = Duration::from_secs(1);

/// The database failed or ran past the request's deadline (`timeout`; `--body-timeout`
/// may have taken part of it), said in one WARN.
fn unavailable(state: &AppState, source: StoreError) -> Refusal {
    let e = ApiError::from_store(source, state.retry_after);
    tracing::warn!(
        error = e.code(),
        cause = e.cause(),
        "holder endpoint: the database did not answer in time or failed"
    );
    Refusal::Unavailable(e)
}

/// Revokes a live token as a report of [`HOLDER_SCANNER`] made through `endpoint`: the
/// revoking statement of every delivery, its owner's notification queued with it.
pub(super) async fn revoke(
    state: &AppState,
    format: &'static Format,
    record: &TokenRecord,
    endpoint: &'static str,
    started: Instant,
) -> Result<bool, Refusal> {
    let report = NewReport::holder(record.hash, format.name, endpoint, Utc::now());
    let options = RecordOptions {
        deadline: Some(started + state.request_timeout),
        once_per_body: false,
    };
    let db_started = Instant::now();
    let recorded = state.store.record_report(&report, options).await;
    state
        .metrics
        .db("record_report", db_started.elapsed().as_secs_f64());
    let recorded = recorded.map_err(|source| unavailable(state, source))?;
    for outcome in &recorded.outcomes {
        state.metrics.item(HOLDER_SCANNER, *outcome, 1);
    }
    state.metrics.revoked(recorded.tokens_revoked);
    if recorded.tokens_revoked > 0 {
        if let Some(notifier) = &state.notifier {
            notifier.wake();
        }
    }
    if recorded.tokens_revoked > 0 {
        tracing::info!(
            report_id = recorded.report_id,
            token = %record.hash.prefix(),
            endpoint,
            "token revoked by its holder"
        );
    } else {
        // Another request revoked it between the lookup and this statement.
        tracing::info!(
            report_id = recorded.report_id,
            token = %record.hash.prefix(),
            endpoint,
            "token presented by its holder was revoked meanwhile"
        );
    }
    Ok(recorded.tokens_revoked > 0)
}

/// The token of `Authorization: Bearer …` (the scheme in any case).
fn bearer(headers: &HeaderMap) -> Result<&str, Refusal> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::support::credentials(v, "Bearer"))
        .ok_or(Refusal::NoBearer)
}

/// Counts the answer, then gives it.
pub(super) fn counted(
    state: &AppState,
    endpoint: &'static str,
    result: Result<(&'static str, Response), Refusal>,
) -> Response {
    let outcome = match &result {
        Ok((outcome, _)) => *outcome,
        Err(refusal) => refusal.outcome(),
    };
    state.metrics.holder(endpoint, outcome);
    match result {
        Ok((_, resp)) => no_store(resp),
        Err(refusal) => refusal.into_response(),
    }
}

/// An instant in RFC 3339, `None` for a token that never expires.
fn rfc3339(at: DateTime<Utc>) -> Option<String> {
    (at < NEVER_EXPIRES).then(|| at.to_rfc3339_opts(SecondsFormat::Secs, true))
}

#[utoipa::path(get, path = "/v1/tokens/current", tag = "holder",
    security(("holder_token" = [])), responses(super::openapi::CurrentAnswers))]
#[tracing::instrument(name = "holder", skip_all, fields(endpoint = "GET /v1/tokens/current"))]
pub(super) async fn current(
    State(state): State<AppState>,
    Extension(holder): Extension<Arc<Holder>>,
    client: ClientAddress,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let result = async {
        let token = bearer(&headers)?;
        match judge(&state, &holder, token, Some(client), started)
            .await?
            .0
        {
            Judged::Live(format, r) => {
                let body = serde_json::json!({
                    "active": true,
                    "token_type": format.name,
                    "owner": r.owner,
                    "created_at": rfc3339(r.created_at),
                    "expires_at": rfc3339(r.expires_at),
                });
                Ok(("active", Json(body).into_response()))
            }
            // One answer for both: nothing tells a string that is no token from a
            // token that is not live, but the metric does.
            Judged::Malformed => Ok(("malformed", Refusal::InvalidToken.into_response())),
            Judged::Inactive => Ok(("inactive", Refusal::InvalidToken.into_response())),
        }
    }
    .await;
    counted(&state, "tokens_current", result)
}

/// Revokes `token` if it is live (its outcome label: `revoked`, `inactive`, `malformed`).
async fn revoke_presented(
    state: &AppState,
    holder: &Holder,
    token: &str,
    client: ClientAddress,
    endpoint: &'static str,
    started: Instant,
) -> Result<&'static str, Refusal> {
    // The place among the holders' database work is held through the revocation.
    let (judged, _lookup) = judge(state, holder, token, Some(client), started).await?;
    Ok(match judged {
        Judged::Malformed => "malformed",
        Judged::Inactive => "inactive",
        Judged::Live(format, record) => {
            if revoke(state, format, &record, endpoint, started).await? {
                "revoked"
            } else {
                "inactive"
            }
        }
    })
}

// No security scheme: any token is answered 204 (it is the subject, not a credential).
#[utoipa::path(delete, path = "/v1/tokens/current", tag = "holder",
    params(("Authorization" = String, Header, description = "`Bearer <the token>`")),
    responses(super::openapi::DeleteAnswers))]
#[tracing::instrument(
    name = "holder",
    skip_all,
    fields(endpoint = "DELETE /v1/tokens/current")
)]
pub(super) async fn delete_current(
    State(state): State<AppState>,
    Extension(holder): Extension<Arc<Holder>>,
    client: ClientAddress,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let result = async {
        let token = bearer(&headers)?;
        let outcome = revoke_presented(
            &state,
            &holder,
            token,
            client,
            "DELETE /v1/tokens/current",
            started,
        )
        .await?;
        Ok((outcome, StatusCode::NO_CONTENT.into_response()))
    }
    .await;
    counted(&state, "tokens_current_delete", result)
}

#[utoipa::path(post, path = "/oauth/revoke", tag = "holder",
    request_body(content = super::openapi::TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(super::openapi::RevokeAnswers))]
#[tracing::instrument(name = "holder", skip_all, fields(endpoint = "POST /oauth/revoke"))]
pub(super) async fn oauth_revoke(
    State(state): State<AppState>,
    Extension(holder): Extension<Arc<Holder>>,
    client: ClientAddress,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let result = async {
        let form = read_form(&state, &headers, body).await?;
        let token = form_token(&form)?;
        let outcome = revoke_presented(
            &state,
            &holder,
            token,
            client,
            "POST /oauth/revoke",
            started,
        )
        .await?;
        Ok((outcome, StatusCode::OK.into_response()))
    }
    .await;
    counted(&state, "oauth_revoke", result)
}

/// The largest form body taken (a token is under 100 bytes; a hint and padding fit).
pub(super) const FORM_LIMIT: usize = 16 << 10;

/// An `application/x-www-form-urlencoded` body of at most [`FORM_LIMIT`] bytes, read
/// within `--body-timeout`, as its pairs.
pub(super) async fn read_form(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<(String, String)>, Refusal> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(Refusal::InvalidRequest(
            "send the token as an application/x-www-form-urlencoded body: token=…",
        ));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > FORM_LIMIT as u64) {
        return Err(Refusal::TooLarge);
    }
    let collected = tokio::time::timeout(
        state.body_timeout,
        http_body_util::BodyExt::collect(http_body_util::Limited::new(body, FORM_LIMIT)),
    )
    .await
    .map_err(|_| Refusal::BodyTimeout)?;
    let bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(Refusal::TooLarge),
        Err(_) => return Err(Refusal::InvalidRequest("the body could not be read")),
    };
    Ok(url::form_urlencoded::parse(&bytes).into_owned().collect())
}

/// The one `token` of a form (RFC 6749 §3.2: no parameter twice).
pub(super) fn form_token(form: &[(String, String)]) -> Result<&str, Refusal> {
    let mut tokens = form.iter().filter(|(k, _)| k == "token");
    match (tokens.next(), tokens.next()) {
        (Some((_, token)), None) if !token.is_empty() => Ok(token),
        (Some(_), Some(_)) => Err(Refusal::InvalidRequest("the form has token more than once")),
        _ => Err(Refusal::InvalidRequest("the form has no token")),
    }
}
