//! OAuth 2.0 Token Introspection (RFC 7662) for the registry's own API servers, which
//! must decide on every request carrying a token whether it is live:
//! `POST /oauth/introspect`, form `token=…` (a `token_type_hint` is ignored), the caller
//! authenticated with HTTP Basic as one of `--introspection-client ID:SECRET` (compared
//! in constant time with every configured client, as the Revocation API's tokens are).
//!
//! - no client configured (or `--holder-endpoints off`): **404**;
//! - no or wrong credentials: **401** `WWW-Authenticate: Basic realm="revoker"`,
//!   `{"error": "invalid_client"}` (RFC 6749 §5.2);
//! - no form with one `token`: **400** `invalid_request`;
//! - a live token: **200** `{"active": true, "token_type", "sub": owner, "iat", "exp"}`
//!   (seconds since the epoch; no `exp` for a token that never expires);
//! - anything else (revoked, expired, unknown, no token at all): **200**
//!   `{"active": false}` and nothing more (RFC 7662 §2.2).
//!
//! A string that is no token is answered without the database. Introspection is not
//! rate-limited: its callers are authenticated and ask on every request they serve.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use base64::Engine;

use super::holder::{counted, form_token, judge, read_form, Judged, Refusal};
use super::AppState;
use crate::store::NEVER_EXPIRES;

#[utoipa::path(
    post,
    path = "/oauth/introspect",
    tag = "holder",
    security(("introspection_client" = [])),
    request_body(content = super::openapi::TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "a live token's fields, or exactly `{\"active\": false}` for anything else (RFC 7662)", body = super::openapi::Introspection, headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "`invalid_request`: not a form with one `token`", body = super::openapi::OAuthError, headers(("Cache-Control" = String, description = "no-store"))),
        (status = 401, description = "`invalid_client`: no or wrong credentials", body = super::openapi::OAuthError, headers(("Cache-Control" = String, description = "no-store"), ("WWW-Authenticate" = String))),
        (status = 404, description = "`not_found`: no --introspection-client, or --holder-endpoints off", body = super::openapi::ErrorBody),
        (status = 408, description = "the body did not arrive within --body-timeout", body = super::openapi::OAuthError, headers(("Cache-Control" = String, description = "no-store"))),
        (status = 413, description = "the body is over 16 KiB", body = super::openapi::OAuthError, headers(("Cache-Control" = String, description = "no-store"))),
        (status = 503, description = "the database unavailable or out of time", body = super::openapi::OAuthError, headers(("Cache-Control" = String, description = "no-store"), ("Retry-After" = u64, description = "seconds"))),
    )
)]
#[tracing::instrument(name = "holder", skip_all, fields(endpoint = "POST /oauth/introspect"))]
pub(super) async fn introspect(
    State(state): State<AppState>,
    Extension(holder): Extension<Arc<super::holder::Holder>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let result = async {
        // Every client is compared, so the time does not say which one matched.
        let presented = client_credentials(&headers).ok_or(Refusal::InvalidClient)?;
        let known = holder.introspection_clients.iter().fold(false, |any, c| {
            presented.iter().fold(any, |any, p| c.matches(p) | any)
        });
        if !known {
            return Err(Refusal::InvalidClient);
        }
        let form = read_form(&state, &headers, body).await?;
        let token = form_token(&form)?;
        Ok(
            match judge(&state, &holder, token, None, started).await?.0 {
                Judged::Live(format, r) => {
                    let mut body = serde_json::json!({
                        "active": true,
                        "token_type": format.name,
                        "sub": r.owner,
                        "iat": r.created_at.timestamp(),
                    });
                    if r.expires_at < NEVER_EXPIRES {
                        body["exp"] = r.expires_at.timestamp().into();
                    }
                    ("active", Json(body).into_response())
                }
                Judged::Malformed => ("malformed", inactive()),
                Judged::Inactive => ("inactive", inactive()),
            },
        )
    }
    .await;
    counted(&state, "oauth_introspect", result)
}

/// Exactly `{"active":false}`.
fn inactive() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"active":false}"#,
    )
        .into_response()
}

/// `ID:SECRET` from `Authorization: Basic base64(…)` (the scheme in any case): as sent,
/// and when it differs, each part form-decoded as RFC 6749 §2.3.1 has clients encode them
/// (most send them as they are).
fn client_credentials(headers: &HeaderMap) -> Option<Vec<String>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = crate::support::credentials(value, "Basic")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    // `+` is a space in form encoding; then %XX (invalid UTF-8 replaced: such a secret
    // is no configured one).
    let unescape = |s: &str| -> String {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    let unescaped = format!("{}:{}", unescape(id), unescape(secret));
    Some(if unescaped == decoded {
        vec![decoded]
    } else {
        vec![decoded, unescaped]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(raw: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, raw.parse().unwrap());
        h
    }

    #[test]
    fn basic_credentials_in_any_case_form_decoded() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let both = |raw: &str, decoded: &str| Some(vec![raw.to_owned(), decoded.to_owned()]);
        assert_eq!(
            client_credentials(&basic(&format!("Basic {}", b64("api:s3cret+1")))),
            both("api:s3cret+1", "api:s3cret 1")
        );
        assert_eq!(
            client_credentials(&basic(&format!("basic {}", b64("api:s3cret%20sauce%2B1")))),
            both("api:s3cret%20sauce%2B1", "api:s3cret sauce+1")
        );
        assert_eq!(
            client_credentials(&basic(&format!("BASIC {}", b64("api:plain")))),
            Some(vec!["api:plain".to_owned()])
        );
        // `&` is part of the secret, not the end of a form field (review).
        assert_eq!(
            client_credentials(&basic(&format!("Basic {}", b64("api:s3cret&x=1")))),
            Some(vec!["api:s3cret&x=1".to_owned()])
        );
        assert_eq!(
            client_credentials(&basic(&format!("Bearer {}", b64("api:x")))),
            None
        );
        assert_eq!(client_credentials(&basic("Basic !!!")), None);
        assert_eq!(
            client_credentials(&basic(&format!("Basic {}", b64("no-colon")))),
            None
        );
        assert_eq!(client_credentials(&HeaderMap::new()), None);
    }
}
