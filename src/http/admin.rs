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
pub(super) fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.admin_token else {
        return Ok(());
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::support::credentials(v, "Bearer"));
    match presented {
        Some(p) if expected.matches(p) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "admin",
    security((), ("admin_token" = [])),
    responses(
        (status = 200, description = "this instance's metrics, Prometheus/OpenMetrics text", content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String),
        (status = 401, description = "`unauthorized`: --admin-token is set and the request does not carry it", body = super::openapi::ErrorBody, headers(("WWW-Authenticate" = String))),
    )
)]
pub(super) async fn metrics_handler(
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatsDocument {
    pub generated_at: DateTime<Utc>,
    /// Owner notifications by status (`failed` ones wait for `revoker notify retry`).
    pub notifications: NotificationCounts,
    /// Whether this instance sends notifications (`--notify-webhook`); without one they
    /// all wait.
    pub notify_webhook: bool,
    /// Failed notifications, newest first, and pending ones that failed an attempt or
    /// have waited over an hour, soonest due first (up to 20 each).
    pub failed_notifications: Vec<NotificationSummary>,
    pub waiting_notifications: Vec<NotificationSummary>,
    /// The token formats this instance recognises (`--token-formats`), by name.
    pub token_formats: Vec<&'static str>,
    /// What on-call looks at first: each configured scanner's keys, last report and
    /// delivery, slow days and last hour, and what is wrong with it.
    pub on_call: OnCall,
    /// With `daily` holding exactly [`DAYS`] entries, oldest first, zeros included.
    #[serde(flatten)]
    pub stats: Stats,
}

/// A notification as the dashboard lists it (hash prefix, never the token).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NotificationSummary {
    pub id: String,
    pub token_hash_prefix: String,
    pub owner: String,
    pub scanner: String,
    pub status: crate::store::NotificationStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub revoked_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
}

impl From<&crate::store::Notification> for NotificationSummary {
    fn from(n: &crate::store::Notification) -> Self {
        NotificationSummary {
            id: n.public_id.clone(),
            token_hash_prefix: n.token_hash.prefix(),
            owner: n.owner.clone(),
            scanner: n.scanner.clone(),
            status: n.status,
            attempts: n.attempts,
            last_error: n.last_error.clone(),
            revoked_at: n.revoked_at,
            next_attempt_at: n.next_attempt_at,
        }
    }
}

/// The on-call panel.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OnCall {
    /// `--scanner-quiet-after`, in seconds.
    pub quiet_after_seconds: u64,
    /// Since when this instance has counted its own deliveries.
    pub instance_since: DateTime<Utc>,
    /// Configured scanners, by name.
    pub scanners: Vec<ScannerStatus>,
}

/// One scanner, for on-call.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScannerStatus {
    pub scanner: String,
    /// Keys in the cache, and how long ago they were fetched.
    pub keys: usize,
    pub keys_age_seconds: Option<f64>,
    /// The latest report recorded for it (any instance: the database's view).
    pub last_report_at: Option<DateTime<Utc>>,
    /// What this instance saw (since `instance_since`).
    pub this_instance: Option<crate::activity::ScannerActivity>,
    /// What is wrong, in words (empty: nothing).
    pub warnings: Vec<String>,
}

/// The warnings of one scanner: no keys; silent (no report, no delivery here) for longer
/// than `quiet_after` (counted from this instance's start when it never delivered).
fn warnings(
    keys: usize,
    last_heard: Option<DateTime<Utc>>,
    since: DateTime<Utc>,
    quiet_after: std::time::Duration,
    now: DateTime<Utc>,
) -> Vec<String> {
    let mut out = Vec::new();
    if keys == 0 {
        out.push("no keys: every delivery is refused until its keys load".to_owned());
    }
    let quiet = ChronoDuration::from_std(quiet_after).unwrap_or(ChronoDuration::MAX);
    let heard = last_heard.unwrap_or(since);
    if now - heard > quiet {
        let silent = humantime::format_duration(std::time::Duration::from_secs(
            (now - heard).num_seconds().max(0) as u64,
        ));
        out.push(match last_heard {
            Some(_) => format!("no delivery for {silent}"),
            None => format!("no delivery ever (this instance has run {silent})"),
        });
    }
    out
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

#[utoipa::path(
    get,
    path = "/api/stats",
    tag = "admin",
    security((), ("admin_token" = [])),
    responses(
        (status = 200, description = "read from the database: totals by scanner, source, day and format, recent reports and revocations, notifications, the on-call panel", body = StatsDocument),
        (status = 401, description = "`unauthorized`: --admin-token is set and the request does not carry it", body = super::openapi::ErrorBody, headers(("WWW-Authenticate" = String))),
        (status = 503, description = "`database_unavailable` (or `database_read_only`, `database_corrupt`, `database_pooler`): the stats could not be read", body = super::openapi::ErrorBody),
    )
)]
pub(super) async fn stats_handler(
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
    let activity = state.metrics.activity();
    let mut names: Vec<&String> = state.scanners.keys().collect();
    names.sort();
    let scanners = names
        .into_iter()
        .map(|name| {
            let cache = state.scanners[name].status();
            let last_report_at = stats
                .last_reports
                .iter()
                .find(|r| &r.scanner == name)
                .map(|r| r.received_at);
            let this_instance = activity.scanner(name, now);
            // Heard from: a report recorded, or a delivery accepted here (2xx: signed by
            // its key). A 401 to a forged POST says nothing about the scanner.
            let delivered = this_instance.as_ref().and_then(|a| a.last_accepted_at);
            ScannerStatus {
                scanner: name.clone(),
                keys: cache.keys,
                keys_age_seconds: cache.age.map(|a| a.as_secs_f64()),
                last_report_at,
                warnings: warnings(
                    cache.keys,
                    last_report_at.max(delivered),
                    activity.since(),
                    state.scanner_quiet_after,
                    now,
                ),
                this_instance,
            }
        })
        .collect();
    Ok(Json(StatsDocument {
        generated_at: now,
        notifications,
        notify_webhook: state.notifier.is_some(),
        token_formats: state.formats.iter().map(|f| f.name).collect(),
        failed_notifications: stats.failed_notifications.iter().map(Into::into).collect(),
        waiting_notifications: stats.waiting_notifications.iter().map(Into::into).collect(),
        on_call: OnCall {
            quiet_after_seconds: state.scanner_quiet_after.as_secs(),
            instance_since: activity.since(),
            scanners,
        },
        stats,
    }))
}

#[utoipa::path(
    get,
    path = "/dashboard",
    tag = "admin",
    responses(
        (status = 200, description = "the dashboard page (no data; it reads /api/stats with the token of `#token=…`)", content_type = "text/html", body = String),
    )
)]
pub(super) async fn dashboard() -> Result<Response, ApiError> {
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

    #[test]
    fn a_scanner_without_keys_or_silent_too_long_is_flagged() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let week = std::time::Duration::from_secs(7 * 86_400);
        let now = t("2026-03-10T00:00:00Z");
        let started = t("2026-03-09T00:00:00Z");
        // Heard from yesterday, keys loaded: nothing.
        assert!(warnings(2, Some(started), started, week, now).is_empty());
        // Eight days without a delivery.
        let w = warnings(2, Some(t("2026-03-02T00:00:00Z")), started, week, now);
        assert_eq!(w, ["no delivery for 8days"]);
        // Never heard, but the instance is only a day old: only the missing keys.
        let w = warnings(0, None, started, week, now);
        assert_eq!(
            w,
            ["no keys: every delivery is refused until its keys load"]
        );
        // Never heard, running for ten days.
        let w = warnings(1, None, t("2026-02-28T00:00:00Z"), week, now);
        assert_eq!(w, ["no delivery ever (this instance has run 10days)"]);
    }
}
