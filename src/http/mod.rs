//! The HTTP surface: [`AppState`], the two routers, and [`ApiError`], the one type every
//! handler answers a refusal with.
//!
//! - [`webhook`]: `POST /secret-scanning/{scanner}` (public listener).
//! - [`admin`]: `/metrics`, `/api/stats`, `/dashboard` (admin listener, optional bearer
//!   token).
//! - [`openapi`]: the OpenAPI document of both listeners, generated from the handlers'
//!   `#[utoipa::path]` annotations and types; `GET /openapi.json` (admin listener).
//! - [`health`]: `/healthz`, `/readyz` (both listeners; the public `/readyz` is cached
//!   for a second).
//! - [`holder`] and [`introspect`]: `GET`/`DELETE /v1/tokens/current`, `POST
//!   /oauth/revoke`, `POST /oauth/introspect` (public listener), rate-limited per client
//!   address by [`client`].
//!
//! Each module exports its own `router()`; [`public_router`] puts them together with
//! JSON 404/405 fallbacks and the trace layer, [`admin_router`] with a JSON 404.

pub mod admin;
pub mod client;
pub mod cpu;
pub mod error;
pub mod health;
pub mod holder;
pub mod intake;
mod introspect;
pub mod openapi;
pub mod revocation_api;
pub mod webhook;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::MatchedPath;
use axum::http::Request;
use axum::Router;
use tower_http::trace::TraceLayer;

pub use error::ApiError;

use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::signature::KeyCache;
use crate::store::RevocationStore;

/// Shared by every request. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn RevocationStore>,
    /// Scanner name → its key cache.
    pub scanners: Arc<HashMap<String, Arc<KeyCache>>>,
    /// Each scanner's protocol and signature header names (same keys as `scanners`).
    pub protocols: Arc<HashMap<String, crate::signature::ScannerProtocol>>,
    pub max_body: usize,
    pub retry_after: Duration,
    /// Whole-delivery deadline: past it the scanner gets 503 and nothing is written.
    pub request_timeout: Duration,
    /// Deadline for receiving the body.
    pub body_timeout: Duration,
    /// One permit per verified delivery being processed (`--max-concurrent-deliveries`),
    /// taken after the signature verifies.
    pub deliveries: Arc<tokio::sync::Semaphore>,
    /// Bytes of unverified bodies beyond each one's free first 64 KiB
    /// (`--unverified-body-budget`); a body waits for it chunk by chunk.
    pub unverified_budget: intake::Budget,
    /// Estimated memory of verified deliveries (`--verified-memory-budget`); a
    /// delivery that does not fit is refused 503 `overloaded`.
    pub verified_budget: intake::Budget,
    pub metrics: Metrics,
    /// `--admin-token`, if set.
    pub admin_token: Option<crate::support::SecretDigest>,
    /// GitLab's Token Revocation API, when `--revocation-api-token` is set.
    pub revocation_api: Option<Arc<revocation_api::RevocationApi>>,
    /// The owner-notification worker, when `--notify-webhook` is set; woken after a
    /// delivery revokes something.
    pub notifier: Option<Notifier>,
    /// `--scanner-quiet-after`: the on-call panel flags a scanner silent this long.
    pub scanner_quiet_after: Duration,
    /// `--token-formats`: the tokens this instance recognises.
    pub formats: crate::domain::Formats,
    /// Large bodies' CPU-bound work, off the async threads ([`cpu`]).
    pub cpu: cpu::Cpu,
    /// The holder endpoints' settings; `None` while `--holder-endpoints off`.
    pub holder: Option<Arc<holder::Holder>>,
}

/// The public listener: the webhook, the Revocation API, the holder endpoints, health,
/// and a JSON 404/405 for everything else.
pub fn public_router(state: AppState) -> Router {
    webhook::router()
        .merge(revocation_api::router())
        .merge(holder::router(state.holder.as_ref()))
        .merge(health::public_router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            // No `on_failure` line: a 5xx is logged once, as a WARN with its reason, by
            // `ApiError` (an ERROR per readiness poll or per 503 would drown real ones).
            TraceLayer::new_for_http()
                .on_failure(())
                .make_span_with(|req: &Request<_>| {
                    let route = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_default();
                    tracing::info_span!("http", method = %req.method(), route)
                }),
        )
        .with_state(state)
}

/// The admin listener: metrics, stats, dashboard, health, the OpenAPI document, and a
/// JSON 404.
pub fn admin_router(state: AppState) -> Router {
    admin::router()
        .merge(health::router())
        .merge(openapi::router())
        .fallback(not_found)
        .with_state(state)
}

/// A duration in milliseconds rounded to the microsecond, for logs (`1.493`, not
/// `1.4929679999999999`).
pub fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// JSON 404 for every path that is not a route.
async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// JSON 405 for a known path with the wrong method.
async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
