//! Health probes on both listeners: `/healthz` (the process answers) and `/readyz`
//! (the database answers and takes writes, and every scanner has keys or can fetch them
//! now). Not ready is a 503 with the same JSON document, naming what is missing.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::{ApiError, AppState};
use crate::store::StoreError;
use crate::support::error_chain;

/// `/healthz` and `/readyz`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(serde_json::json!({ "status": "ok" })))
}

/// Ready when the database answers and every scanner has keys (or can fetch them now).
async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
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
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((
        code,
        Json(serde_json::json!({
            "status": if ready { "ready" } else { "not_ready" },
            "database": database,
            "scanners": scanners,
        })),
    )
        .into_response())
}
