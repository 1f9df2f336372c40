//! Health probes: `/healthz` (the process answers) and `/readyz` (the database answers
//! and takes writes, and every scanner has keys or can fetch them now). Not ready is a
//! 503 with the same JSON document, naming what is missing.
//!
//! The two listeners answer `/readyz` differently, because the public one is open to
//! anyone and a full check is not free (a database round trip; on SQLite a write probe
//! that takes the single write lock; a key fetch when a scanner has no keys):
//!
//! - **admin** ([`router`]): the full check on every call, plus the owner-notification
//!   worker when one is configured: `"notifier": {"running": …, "restarts": …}`; not
//!   ready while it is not running (it panicked and waits for its restart, or stopped).
//! - **public** ([`public_router`]): the same database and key check, but its answer is
//!   cached for [`PUBLIC_READINESS_TTL`] and computed single-flight (concurrent callers
//!   wait for one computation and share it), so however many requests arrive, the
//!   public probe costs at most one check per second. It leaves the worker out: a load
//!   balancer should keep sending alerts to an instance whose worker is restarting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::{ApiError, AppState};
use crate::notify::WorkerStatus;
use crate::store::StoreError;
use crate::support::error_chain;

/// How long the public listener reuses a readiness answer.
pub const PUBLIC_READINESS_TTL: Duration = Duration::from_secs(1);

/// `/healthz` and `/readyz` of the admin listener (full check on every call).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(admin_readyz))
}

/// `/healthz` and `/readyz` of the public listener (cached, single-flight).
pub fn public_router() -> Router<AppState> {
    let cache = Arc::new(ReadinessCache::default());
    Router::new().route("/healthz", get(healthz)).route(
        "/readyz",
        get(move |State(state): State<AppState>| {
            let cache = Arc::clone(&cache);
            async move { cache.answer(&state).await.into_response() }
        }),
    )
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "the process runs (both listeners)", body = super::openapi::Health))
)]
pub(super) async fn healthz() -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(serde_json::json!({ "status": "ok" })))
}

/// One readiness answer.
#[derive(Debug, Clone)]
struct Readiness {
    ready: bool,
    body: serde_json::Map<String, serde_json::Value>,
}

impl IntoResponse for Readiness {
    fn into_response(self) -> Response {
        let code = if self.ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let mut body = serde_json::Map::new();
        body.insert(
            "status".into(),
            (if self.ready { "ready" } else { "not_ready" }).into(),
        );
        body.extend(self.body);
        (code, Json(serde_json::Value::Object(body))).into_response()
    }
}

/// The admin answer: database, keys and the notification worker.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    operation_id = "readyz",
    summary = "Readiness, on both listeners (the admin one also checks the notification worker)",
    responses(
        (status = 200, description = "ready: the database answers and takes writes, every scanner has keys (admin listener: and the notification worker runs, with --notify-webhook); the public listener's answer is reused for a second and has no `notifier`", body = super::openapi::Readiness),
        (status = 503, description = "not ready: the same document, naming what is missing", body = super::openapi::Readiness),
    )
)]
pub(super) async fn admin_readyz(State(state): State<AppState>) -> Response {
    let mut readiness = check(&state).await;
    if let Some(notifier) = &state.notifier {
        let (running, json) = worker_readiness(notifier.status());
        readiness.ready &= running;
        readiness.body.insert("notifier".into(), json);
    }
    readiness.into_response()
}

/// `"notifier"` of the admin answer, and whether it counts as ready.
fn worker_readiness(status: &WorkerStatus) -> (bool, serde_json::Value) {
    let running = status.running();
    (
        running,
        serde_json::json!({ "running": running, "restarts": status.restarts() }),
    )
}

/// The last public answer and when it was computed; the async mutex makes the
/// computation single-flight.
#[derive(Default)]
struct ReadinessCache {
    last: tokio::sync::Mutex<Option<(Instant, Readiness)>>,
}

impl ReadinessCache {
    async fn answer(&self, state: &AppState) -> Readiness {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = last.as_ref() {
            if at.elapsed() < PUBLIC_READINESS_TTL {
                return answer.clone();
            }
        }
        let answer = check(state).await;
        *last = Some((Instant::now(), answer.clone()));
        answer
    }
}

/// Ready when the database answers and every scanner has keys (or can fetch them now).
async fn check(state: &AppState) -> Readiness {
    let database = match state.store.ping().await {
        Ok(()) => "ok".to_owned(),
        Err(StoreError::ReadOnly) => {
            tracing::warn!("readiness: database is read-only");
            "read_only".to_owned()
        }
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "readiness: database unreachable");
            "unreachable".to_owned()
        }
    };
    let mut ready = database == "ok";
    let mut scanners = serde_json::Map::new();
    for (name, cache) in state.scanners.iter() {
        let mut status = cache.status();
        if status.keys == 0 {
            cache.try_load().await;
            status = cache.status();
        }
        ready &= status.keys > 0;
        scanners.insert(
            name.clone(),
            serde_json::json!({
                "keys": status.keys,
                "age_seconds": status.age.map(|a| a.as_secs()),
                "last_fetch_ok": status.last_fetch_ok,
            }),
        );
    }
    let mut body = serde_json::Map::new();
    body.insert("database".into(), database.into());
    body.insert("scanners".into(), scanners.into());
    Readiness { ready, body }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_is_not_running_makes_the_admin_answer_not_ready() {
        // A status nobody started: what a worker waiting for its restart looks like.
        let stopped = WorkerStatus::default();
        assert_eq!(
            worker_readiness(&stopped),
            (
                false,
                serde_json::json!({ "running": false, "restarts": 0 })
            )
        );
    }
}
