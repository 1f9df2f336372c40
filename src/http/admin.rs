//! What operators and dashboards see on the admin listener: `/metrics`, `/api/stats`,
//! `/dashboard` (health is in [`super::health`]).
//!
//! The admin listener is separate from the public webhook listener so metrics and
//! stats are never exposed by accident. When `--admin-token` is set, `/metrics` and
//! `/api/stats` need `Authorization: Bearer <token>` (compared in constant time);
//! `/dashboard` is a static page without data and reads the token from the URL
//! fragment (`/dashboard#token=…`), which browsers never send to the server.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, Utc};
use serde::Serialize;

use super::{ApiError, AppState};
use crate::store::{DayTotals, NotificationCounts, Stats, StoreError, Totals};

/// How long a `/metrics` scrape waits for the notification counts.
const NOTIFICATION_COUNT_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

/// Days in the `/api/stats` daily series (today included).
pub const DAYS: i64 = 30;

/// The dashboard page: one self-contained file, embedded in the binary.
const DASHBOARD_HTML: &str = include_str!("../../assets/dashboard.html");

/// `/metrics`, `/api/stats`, `/dashboard`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/api/stats", get(stats_handler))
        .route("/dashboard", get(dashboard))
}

/// `Ok` when no admin token is set or the request carries it.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.admin_token else {
        return Ok(());
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(p) if expected.matches(p.trim()) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

async fn metrics_handler(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    for (name, cache) in state.scanners.iter() {
        let status = cache.status();
        state
            .metrics
            .key_cache(name, status.keys, status.age.map(|a| a.as_secs_f64()));
    }
    // Owner notifications by status, whether or not this instance sends them: one read
    // of the rollups, bounded so a database that hangs does not hold the scrape.
    let counts = tokio::time::timeout(NOTIFICATION_COUNT_BUDGET, state.store.notification_counts())
        .await
        .map_err(|_| "timed out".to_owned())
        .and_then(|r| r.map_err(|e| e.to_string()));
    match counts {
        Ok(c) => state
            .metrics
            .notifications(c.pending, c.delivered, c.failed),
        Err(reason) => {
            tracing::debug!(%reason, "metrics: notification counts not read");
            state.metrics.notifications_unknown();
        }
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response())
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

async fn stats_handler(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<StatsDocument>, ApiError> {
    authorize(&state, &headers)?;
    let now = Utc::now();
    let start = series_start(now);
    let read = async {
        let stats = state.store.stats(start).await?;
        let notifications = state.store.notification_counts().await?;
        Ok::<_, StoreError>((stats, notifications))
    };
    let (mut stats, notifications) = read.await.map_err(ApiError::StatsUnavailable)?;
    stats.daily = fill_days(start, std::mem::take(&mut stats.daily));
    Ok(Json(StatsDocument {
        generated_at: now,
        notifications,
        stats,
    }))
}

async fn dashboard() -> Result<Response, ApiError> {
    Ok((
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
        .into_response())
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
}
