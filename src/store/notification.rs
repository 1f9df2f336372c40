//! The owner-notification outbox's model: a notification row, its status, the clock
//! outbox statements judge time by, what an attempt came to, and counts; and the outbox
//! statements both backends send alike.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::backend::notification_columns;
use crate::domain::TokenHash;

/// `token_hash` → the `NotificationRow` of that token, if any.
pub(super) const NOTIFICATION_OF_TOKEN_SQL: &str = concat!(
    "SELECT ",
    notification_columns!(),
    " FROM notifications WHERE token_hash = $1"
);

/// `id, error, claimed locked_until`.
pub(super) const FAILED_SQL: &str = "UPDATE notifications
                 SET status = 'failed', last_error = $2, locked_until = NULL
                 WHERE id = $1 AND status = 'pending' AND locked_until = $3";

/// `status` (NULL: any), `limit` → `NotificationRow`s, newest first.
pub(super) const LIST_SQL: &str = concat!(
    "SELECT ",
    notification_columns!(),
    " FROM notifications WHERE CAST($1 AS TEXT) IS NULL OR status = $1 ORDER BY id DESC LIMIT $2"
);

/// Batches turned into notifications per transaction; the notifications one makes
/// before its last batch (so it stays short on SQLite's one writer, as the retention
/// purge's batches do); and transactions per
/// [`RevocationStore::expand_notifications`](super::RevocationStore::expand_notifications)
/// call.
pub(super) const EXPAND_BATCHES: u32 = 100;
pub(super) const EXPAND_TOKENS: u32 = 5_000;
pub(super) const EXPAND_ROUNDS: u32 = 100;

/// Whether the outbox has a batch queued (a cheap read before taking the write turn).
pub(super) const BATCHES_QUEUED_SQL: &str =
    "SELECT EXISTS (SELECT 1 FROM notification_batches) AS queued";

/// Where an owner notification stands. Its name (stored, shown, `--status`) is derived
/// once, snake_case.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantNames,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum NotificationStatus {
    /// Waiting for its first or next attempt (`next_attempt_at`).
    Pending,
    /// The owner webhook answered 2xx.
    Delivered,
    /// Gave up after the attempt limit; `revoker notify retry` re-queues it.
    Failed,
}

impl NotificationStatus {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

/// One owner notification (a row of the outbox): which token of whose was revoked,
/// where it was found, and how sending it is going.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The row id: counts per database, so it is never shown to the owner's webhook.
    pub id: i64,
    /// The public id, a UUIDv7 (lower-case, hyphenated) minted by the database with the
    /// row: the webhook's `Idempotency-Key` and the body's `id`, unique across databases
    /// and restores.
    pub public_id: String,
    /// The token's hash, as stored (as a registry imported it, for its own formats).
    pub token_hash: TokenHash,
    /// The token's format (read from its row when the notification is read).
    pub token_format: String,
    /// The report (delivery) that revoked the token.
    pub report_id: i64,
    pub owner: String,
    pub scanner: String,
    /// Where it was found: url and source of the first item of the delivery naming it.
    pub url: String,
    pub source: String,
    /// When it was revoked (the delivery's `received_at`).
    pub revoked_at: DateTime<Utc>,
    /// The token had already expired when it was reported (revoked anyway).
    pub expired: bool,
    pub status: NotificationStatus,
    /// Attempts started so far (each claim counts one).
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// End of the lease of the worker sending it, as the database stored it; `None`
    /// when nobody holds it. A claim's own value identifies that claim to
    /// [`RevocationStore::finish_notification`].
    pub locked_until: Option<DateTime<Utc>>,
}

/// The clock an outbox statement judges and stamps time by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// The database's own clock: PostgreSQL's `now()`, so instances whose clocks are
    /// skewed still agree on every lease and never send one notification at once. On
    /// SQLite, the clock of the host (every process on a SQLite file runs on that one
    /// host, so there is one clock anyway). What the worker and `revoker notify` use.
    Database,
    /// A given instant, taken as "now" (tests step through time with it).
    At(DateTime<Utc>),
}

impl From<DateTime<Utc>> for Clock {
    fn from(at: DateTime<Utc>) -> Self {
        Clock::At(at)
    }
}

/// What became of one attempt to send a claimed notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// Delivered now (by the clock [`RevocationStore::finish_notification`] is given).
    Delivered,
    /// Not delivered; try again `retry_in` from now.
    Retry { error: String, retry_in: Duration },
    /// Not delivered and out of attempts: marked failed.
    Failed { error: String },
}

/// Notifications per status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct NotificationCounts {
    pub pending: i64,
    pub delivered: i64,
    pub failed: i64,
}

/// What `requeue_notification` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    Requeued,
    NotFound,
    /// Delivered notifications are not sent again.
    AlreadyDelivered,
    /// A worker holds it (is sending it) until the given time; re-queuing now could
    /// have a second worker send it at the same time.
    InFlight(DateTime<Utc>),
}
