//! What operators and dashboards see: the admin listener (`/metrics`, `/api/stats`,
//! `/dashboard`) and the health endpoints (`/healthz`, `/readyz`, on both listeners).
//!
//! The admin listener is separate from the public webhook listener so metrics and
//! stats are never exposed by accident. When `--admin-token` is set, `/metrics` and
//! `/api/stats` need `Authorization: Bearer <token>` (compared in constant time);
//! `/dashboard` is a static page without data and reads the token from the URL
//! fragment (`/dashboard#token=…`), which browsers never send to the server.

pub mod metrics;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::error_chain;
use crate::startup::AppState;
use crate::store::{DayTotals, NotificationCounts, Stats, StoreError, Totals};

/// Days in the `/api/stats` daily series (today included).
pub const DAYS: i64 = 30;

/// The dashboard page: one self-contained file, embedded in the binary.
const DASHBOARD_HTML: &str = include_str!("../../assets/dashboard.html");

/// Routes of the admin listener.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/api/stats", get(stats_handler))
        .route("/dashboard", get(dashboard))
        .merge(health_router())
        .fallback(crate::webhook::not_found)
        .with_state(state)
}

/// `/healthz` and `/readyz`, for both listeners.
pub fn health_router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// SHA-256 of the admin token, so the comparison is constant-time and length-blind.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(expected) = &state.admin_token_digest else {
        return true;
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| token_digest(t.trim()));
    match presented {
        Some(p) => bool::from(p.ct_eq(expected)),
        None => false,
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(serde_json::json!({
            "error": "unauthorized",
            "message": "this endpoint needs Authorization: Bearer <admin token>"
        })),
    )
        .into_response()
}

async fn metrics_handler(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    for (name, cache) in state.scanners.iter() {
        let status = cache.status();
        state
            .metrics
            .key_cache(name, status.keys, status.age.map(|a| a.as_secs_f64()));
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// The `/api/stats` document.
#[derive(Debug, Serialize)]
pub struct StatsDocument {
    pub generated_at: DateTime<Utc>,
    /// Owner notifications by status (`failed` ones wait for `revoker notify retry`).
    pub notifications: NotificationCounts,
    /// With `daily` holding exactly [`DAYS`] entries, oldest first, zeros included.
    #[serde(flatten)]
    pub stats: Stats,
}

/// The first day of the series ending today (UTC).
pub fn series_start(now: DateTime<Utc>) -> NaiveDate {
    now.date_naive() - ChronoDuration::days(DAYS - 1)
}

/// Fills days without reports with zeros: exactly [`DAYS`] entries from `start`.
pub fn fill_days(start: NaiveDate, sparse: Vec<DayTotals>) -> Vec<DayTotals> {
    (0..DAYS)
        .map(|i| {
            let day = start + ChronoDuration::days(i);
            sparse
                .iter()
                .find(|d| d.day == day)
                .cloned()
                .unwrap_or(DayTotals {
                    day,
                    totals: Totals::default(),
                })
        })
        .collect()
}

async fn stats_handler(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let now = Utc::now();
    let start = series_start(now);
    let since = start
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc();
    let read = async {
        let stats = state.store.stats(since).await?;
        let notifications = state.store.notification_counts().await?;
        Ok::<_, StoreError>((stats, notifications))
    };
    match read.await {
        Ok((mut stats, notifications)) => Json(StatsDocument {
            generated_at: now,
            notifications,
            stats: {
                stats.daily = fill_days(start, std::mem::take(&mut stats.daily));
                stats
            },
        })
        .into_response(),
        Err(e) => {
            tracing::error!(error = %error_chain(&e), "cannot read stats");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({
                    "error": "database_unavailable",
                    "message": "cannot read stats from the database"
                })),
            )
                .into_response()
        }
    }
}

async fn dashboard() -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:",
            ),
        ],
        Html(DASHBOARD_HTML),
    )
        .into_response()
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Ready when the database answers and every scanner has keys (or can fetch them now).
async fn readyz(State(state): State<AppState>) -> Response {
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
    (
        code,
        Json(serde_json::json!({
            "status": if ready { "ready" } else { "not_ready" },
            "database": database,
            "scanners": scanners,
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_has_thirty_days_ending_today() {
        let now = DateTime::parse_from_rfc3339("2026-03-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let start = series_start(now);
        assert_eq!(start, NaiveDate::from_ymd_opt(2026, 1, 31).unwrap());
        let one = DayTotals {
            day: NaiveDate::from_ymd_opt(2026, 2, 28).unwrap(),
            totals: Totals {
                reports: 2,
                ..Totals::default()
            },
        };
        let days = fill_days(start, vec![one.clone()]);
        assert_eq!(days.len(), 30);
        assert_eq!(days[0].day, start);
        assert_eq!(days[29].day, NaiveDate::from_ymd_opt(2026, 3, 1).unwrap());
        assert_eq!(days[28], one);
        assert_eq!(days.iter().map(|d| d.totals.reports).sum::<i64>(), 2);
    }

    #[test]
    fn token_digest_differs_per_token() {
        assert_ne!(token_digest("a"), token_digest("b"));
        assert_eq!(token_digest("a"), token_digest("a"));
    }
}
