//! The OpenAPI 3.1 document of both listeners, generated from the code with `utoipa`:
//! each handler carries its own `#[utoipa::path]` (method, path, parameters, request
//! body, every status it answers with its body and headers), and the types it answers
//! with derive `ToSchema` where they are defined (`/api/stats`'s [`super::admin`]
//! document and the store types it embeds). Where a handler builds its body on the fly
//! (`serde_json::json!`, the streamed feedback of [`super::intake`], a form it parses
//! by hand), the shape is a dedicated type here, used only for the document.
//!
//! **One document for the two listeners.** Its `servers` are the public listener
//! (`--listen`) and the admin listener (`--admin-listen`); every path names the one
//! that serves it in its own `servers` (path-level servers, which OpenAPI 3.1 allows)
//! and its tag says the same (`admin` is the admin listener, every other tag the public
//! one). `/healthz` and `/readyz` are on both and list both; the public `/readyz` is the
//! same check without the owner-notification worker, cached for a second. One document
//! keeps the shared schemas (the error body) defined once, and it is what
//! `GET /openapi.json` (admin listener, behind `--admin-token` like `/api/stats`) and
//! `revoker openapi` give; `docs/openapi.json` is its committed copy, checked by
//! `tests/openapi.rs`.
//!
//! Not in it: the JSON 404 of an unknown path and the 405 of a wrong method (any path),
//! and the connection-level refusals (431, a closed connection).

use std::sync::LazyLock;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::server::Server;
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

use super::{admin, health, holder, introspect, revocation_api, webhook, ApiError, AppState};
use crate::domain::outcome::Label;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "revoker",
        description = "Receives signed secret-scanning alerts and revokes leaked tokens. \
            Two listeners: the public one (alerts, GitLab's Token Revocation API, the holder \
            endpoints, health) and the admin one (metrics, stats, dashboard, this document). \
            Refusals are JSON `{\"error\": code, \"message\": text}` unless said otherwise; \
            the holder endpoints answer OAuth's `{\"error\", \"error_description\"}`."
    ),
    paths(
        webhook::receive,
        revocation_api::types,
        revocation_api::revoke,
        holder::current,
        holder::delete_current,
        holder::oauth_revoke,
        introspect::introspect,
        health::healthz,
        health::admin_readyz,
        admin::metrics_handler,
        admin::stats_handler,
        admin::dashboard,
        openapi_json,
    ),
    // Answer types the holder endpoints name only through their `IntoResponses` enums.
    components(schemas(TokenInfo, OAuthError, ErrorBody)),
    modifiers(&Listeners),
    tags(
        (name = "alerts", description = "Secret-scanning alerts, signed by the scanner (public listener)"),
        (name = "revocation-api", description = "GitLab self-managed's Token Revocation API, with --revocation-api-token (public listener)"),
        (name = "holder", description = "A token's holder, GitHub's validity checks and introspection clients (public listener; --holder-endpoints off: 404)"),
        (name = "health", description = "Liveness and readiness (both listeners)"),
        (name = "admin", description = "Metrics, stats, the dashboard and this document (admin listener; bearer if --admin-token)"),
    )
)]
pub struct ApiDoc;

/// The public listener's URL (its default `--listen`).
const PUBLIC_SERVER: &str = "http://127.0.0.1:8080";
/// The admin listener's URL (its default `--admin-listen`).
const ADMIN_SERVER: &str = "http://127.0.0.1:9090";
/// Paths served on both listeners.
const BOTH: &[&str] = &["/healthz", "/readyz"];
/// Paths served on the admin listener only.
const ADMIN_ONLY: &[&str] = &["/metrics", "/api/stats", "/dashboard", "/openapi.json"];

/// Servers (document and per path) and the security schemes.
struct Listeners;

impl Modify for Listeners {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let public = || {
            Server::builder()
                .url(PUBLIC_SERVER)
                .description(Some("the public listener (--listen)"))
                .build()
        };
        let admin = || {
            Server::builder()
                .url(ADMIN_SERVER)
                .description(Some("the admin listener (--admin-listen)"))
                .build()
        };
        openapi.servers = Some(vec![public(), admin()]);
        for (path, item) in openapi.paths.paths.iter_mut() {
            item.servers = Some(if BOTH.contains(&path.as_str()) {
                vec![public(), admin()]
            } else if ADMIN_ONLY.contains(&path.as_str()) {
                vec![admin()]
            } else {
                vec![public()]
            });
        }
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            "admin_token",
            bearer("--admin-token, when set (without one the admin listener asks for none)"),
        );
        components.add_security_scheme(
            "holder_token",
            bearer("the token itself, presented by its holder"),
        );
        components.add_security_scheme(
            "revocation_api_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "one of --revocation-api-token, raw as GitLab sends it, or `Bearer <token>`",
            ))),
        );
        components.add_security_scheme(
            "introspection_client",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some("ID:SECRET of an --introspection-client"))
                    .build(),
            ),
        );
    }
}

/// The document as served and committed: pretty JSON, keys in a stable order, a
/// trailing newline.
pub fn document() -> String {
    let value = serde_json::to_value(ApiDoc::openapi()).expect("the document is JSON");
    let mut text = serde_json::to_string_pretty(&value).expect("the document is JSON");
    text.push('\n');
    text
}

/// Built once, on the first request.
static DOCUMENT: LazyLock<String> = LazyLock::new(document);

/// `GET /openapi.json` (admin listener).
pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json))
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "admin",
    security((), ("admin_token" = [])),
    responses(
        (status = 200, description = "this document (OpenAPI 3.1)", content_type = "application/json", body = serde_json::Value),
        (status = 401, description = "`unauthorized`: --admin-token is set and the request does not carry it", body = ErrorBody, headers(("WWW-Authenticate" = String))),
    )
)]
async fn openapi_json(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admin::authorize(&state, &headers)?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
        .into_response())
}

// ---------------------------------------------------------------- shapes built on the fly

/// Every refusal of [`ApiError`].
#[derive(ToSchema)]
pub struct ErrorBody {
    /// A short code: `bad_body`, `body_read_error`, `bad_signature_header`, `unknown_key`,
    /// `bad_signature`, `unknown_scanner`, `not_found`, `method_not_allowed`,
    /// `body_timeout`, `payload_too_large`, `keys_unavailable`, `database_unavailable`,
    /// `database_read_only`, `database_corrupt`, `database_pooler`, `timeout`,
    /// `overloaded`, `unauthorized`, `invalid_request`, `retry_later`.
    #[schema(example = "bad_signature")]
    pub error: String,
    /// What went wrong, in words (never body text).
    pub message: String,
}

/// A holder endpoint's refusal (RFC 6749 §5.2's shape).
#[derive(ToSchema)]
pub struct OAuthError {
    /// `invalid_token`, `invalid_request`, `invalid_client`, `rate_limited`,
    /// `overloaded`, or the database's code (`database_unavailable`, `timeout`, …).
    #[schema(example = "invalid_token")]
    pub error: String,
    pub error_description: String,
}

/// One alert item (GitHub's shape; GitLab's Partner API sends the same fields but
/// `source`). Only `token` is required; other fields are ignored.
#[derive(ToSchema)]
pub struct AlertItem {
    /// The string found; every token in it (and in the other fields) is revoked.
    pub token: String,
    /// The scanner's name for the secret type.
    #[schema(rename = "type")]
    pub token_type: Option<String>,
    /// Where it was found.
    pub url: Option<String>,
    /// `content`, `commit`, `npm`, …
    pub source: Option<String>,
    /// GitLab's name for where it was found: read as `url` when `url` is absent, and
    /// scanned for tokens like the other fields.
    pub location: Option<String>,
}

/// One entry of the 200 answer, per item sent, in input order (streamed).
#[derive(ToSchema)]
pub struct Feedback {
    /// SHA-256 (hex) of the item's token.
    pub token_hash: String,
    /// The `type` as sent, any token in it redacted.
    pub token_type: String,
    pub label: Label,
}

/// One item of GitLab's Token Revocation API.
#[derive(ToSchema)]
pub struct RevocationItem {
    /// One of `GET /v1/revocable_token_types`.
    #[schema(rename = "type")]
    pub token_type: String,
    pub token: String,
    /// Where it was found (stored as the item's url).
    pub location: Option<String>,
}

/// `GET /v1/revocable_token_types`.
#[derive(ToSchema)]
pub struct RevocableTokenTypes {
    /// `--revocation-api-types`.
    pub types: Vec<String>,
}

/// `POST /oauth/revoke` and `POST /oauth/introspect`: one `token` (RFC 7009, RFC 7662).
#[derive(ToSchema)]
pub struct TokenForm {
    /// The token (an empty one is no token: 400).
    #[schema(min_length = 1)]
    pub token: String,
    /// Ignored.
    #[schema(nullable = false)]
    pub token_type_hint: Option<String>,
}

/// `GET /v1/tokens/current` for a live token.
#[derive(ToSchema)]
pub struct TokenInfo {
    /// Always `true` (any other token is a 401).
    pub active: bool,
    /// The token's format (`cio_tp`, …).
    pub token_type: String,
    pub owner: String,
    pub created_at: DateTime<Utc>,
    /// `null` for an imported token that never expires.
    #[schema(required = true)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// `POST /oauth/introspect`: a live token's fields, or exactly `{"active": false}`.
#[derive(ToSchema)]
pub struct Introspection {
    pub active: bool,
    /// The token's format (`cio_tp`, …), not an OAuth token type.
    #[schema(nullable = false)]
    pub token_type: Option<String>,
    /// The owner.
    #[schema(nullable = false)]
    pub sub: Option<String>,
    /// Created, seconds since the epoch.
    #[schema(nullable = false)]
    pub iat: Option<i64>,
    /// Expires, seconds since the epoch; absent for a token that never expires.
    #[schema(nullable = false)]
    pub exp: Option<i64>,
}

/// `/healthz`.
#[derive(ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: String,
}

/// `/readyz`, 200 or 503.
#[derive(ToSchema)]
pub struct Readiness {
    pub status: ReadyStatus,
    pub database: DatabaseState,
    /// Per configured scanner.
    pub scanners: std::collections::BTreeMap<String, ScannerReadiness>,
    /// Admin listener, with --notify-webhook only.
    #[schema(nullable = false)]
    pub notifier: Option<NotifierReadiness>,
}

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum ReadyStatus {
    Ready,
    NotReady,
}

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum DatabaseState {
    Ok,
    Unreachable,
    ReadOnly,
}

/// A scanner's key cache.
#[derive(ToSchema)]
pub struct ScannerReadiness {
    pub keys: u64,
    /// Since the keys were fetched; `null` before the first.
    #[schema(required = true)]
    pub age_seconds: Option<u64>,
    /// `null` before the first fetch.
    #[schema(required = true)]
    pub last_fetch_ok: Option<bool>,
}

/// The owner-notification worker.
#[derive(ToSchema)]
pub struct NotifierReadiness {
    pub running: bool,
    pub restarts: u64,
}

// ---------------------------------------------------------------- the holder endpoints' answers

/// `GET /v1/tokens/current`.
#[derive(IntoResponses)]
pub enum CurrentAnswers {
    /// A live token.
    #[response(status = 200, headers(("Cache-Control" = String, description = "no-store")))]
    Live(TokenInfo),
    /// Not live (revoked, expired, unknown, no token at all: one answer), with
    /// `WWW-Authenticate: Bearer error="invalid_token"`; or no `Authorization: Bearer`
    /// (`invalid_request`, `WWW-Authenticate: Bearer realm="revoker"`).
    #[response(status = 401, headers(("Cache-Control" = String, description = "no-store"), ("WWW-Authenticate" = String)))]
    Unauthorized(OAuthError),
    /// --holder-endpoints off.
    #[response(status = 404)]
    Off(ErrorBody),
    /// `rate_limited`: too many tokens from this address.
    #[response(status = 429, headers(("Cache-Control" = String, description = "no-store"), ("Retry-After" = u64, description = "seconds")))]
    RateLimited(OAuthError),
    /// `overloaded`, or the database unavailable or out of time.
    #[response(status = 503, headers(("Cache-Control" = String, description = "no-store"), ("Retry-After" = u64, description = "seconds")))]
    Unavailable(OAuthError),
}

/// `DELETE /v1/tokens/current`.
#[derive(IntoResponses)]
pub enum DeleteAnswers {
    /// Whatever the token's state; a live one is revoked.
    #[response(status = 204, headers(("Cache-Control" = String, description = "no-store")))]
    Done,
    /// No `Authorization: Bearer` (`invalid_request`).
    #[response(status = 401, headers(("Cache-Control" = String, description = "no-store"), ("WWW-Authenticate" = String)))]
    Unauthorized(OAuthError),
    /// --holder-endpoints off.
    #[response(status = 404)]
    Off(ErrorBody),
    /// `rate_limited`.
    #[response(status = 429, headers(("Cache-Control" = String, description = "no-store"), ("Retry-After" = u64, description = "seconds")))]
    RateLimited(OAuthError),
    /// `overloaded`, or the database unavailable (it may or may not have revoked: send
    /// it again).
    #[response(status = 503, headers(("Cache-Control" = String, description = "no-store"), ("Retry-After" = u64, description = "seconds")))]
    Unavailable(OAuthError),
}

/// `POST /oauth/revoke`.
#[derive(IntoResponses)]
pub enum RevokeAnswers {
    /// Any token (RFC 7009 §2.2), empty; a live one is revoked.
    #[response(status = 200, headers(("Cache-Control" = String, description = "no-store")))]
    Done,
    /// `invalid_request`: not a form with one `token`.
    #[response(status = 400, headers(("Cache-Control" = String, description = "no-store")))]
    Invalid(OAuthError),
    /// --holder-endpoints off.
    #[response(status = 404)]
    Off(ErrorBody),
    /// The body did not arrive within --body-timeout.
    #[response(status = 408, headers(("Cache-Control" = String, description = "no-store")))]
    BodyTimeout(OAuthError),
    /// The body is over 16 KiB.
    #[response(status = 413, headers(("Cache-Control" = String, description = "no-store")))]
    TooLarge(OAuthError),
    /// `rate_limited`.
    #[response(status = 429, headers(("Cache-Control" = String, description = "no-store"), ("Retry-After" = u64, description = "seconds")))]
    RateLimited(OAuthError),
    /// `overloaded`, or the database unavailable.
    #[response(status = 503, headers(("Cache-Control" = String, description = "no-store"), ("Retry-After" = u64, description = "seconds")))]
    Unavailable(OAuthError),
}
