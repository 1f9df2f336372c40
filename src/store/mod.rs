//! Storage: the [`RevocationStore`] trait and its two backends, SQLite and PostgreSQL.
//!
//! All SQL of the project lives below this module. Each backend owns its migrations
//! (`migrations/sqlite`, `migrations/postgres`, embedded with `sqlx::migrate!`).
//!
//! Invariants:
//! - No raw token is ever stored: tokens are keyed by the SHA-256 of the whole string.
//! - [`RevocationStore::record_report`] is all-or-nothing: the report row, the revocation
//!   of every candidate (one statement) and the report's items commit in one transaction, or
//!   nothing is written and the caller answers 503 so the scanner retries. Given a
//!   deadline ([`RecordOptions::deadline`]) the database itself gives up before it
//!   (PostgreSQL `statement_timeout`, SQLite `busy_timeout`) and rolls the work back
//!   ([`StoreError::DeadlineExceeded`]), so a late commit cannot follow a timeout answer.
//! - A delivered body is recorded once per scanner ([`RecordOptions::once_per_body`],
//!   table `delivered_bodies`): the same bytes again within [`ONCE_PER_BODY_WINDOW`] are
//!   answered from the first report ([`RecordedReport::duplicate`]) and write nothing,
//!   even when two instances race on them.
//! - A token is flipped to revoked at most once; `revoked_at` never changes afterwards.
//! - The delivery that flips a token also queues exactly one owner notification for it
//!   (the outbox, table `notifications`, one per token: a token flips once), in the same transaction.
//!   Notifications are claimed with a lease (PostgreSQL: `FOR UPDATE SKIP LOCKED`), so
//!   several workers never send the same one at once.
//! - [`RevocationStore::statements`] counts every statement sent, `BEGIN` and `COMMIT`
//!   included; the contract suite and the benchmark hold each operation to its count.
//!
//! Layout: this file holds the trait, the model types and [`connect`]. The trait is
//! implemented once, generic over the backend (`shared.rs`, for a `Store<B>` of
//! `backend.rs`); `rows.rs` decodes the rows both backends return. What differs between
//! the databases (SQL text, column types, the statements of `record_report`) is in
//! `sqlite/` and `postgres/`, one file per concern: `mod.rs` (connect, migrate, ping,
//! tokens), `record.rs` (`record_report`, `preview`), `stats.rs`, `outbox.rs`
//! (notifications). The store uses only [`crate::domain`] and [`crate::support`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::alert::NewReport;
use crate::domain::TokenHash;
use crate::domain::{Outcome, OutcomeCounts};
use crate::support::default_duration;

mod backend;
mod error;
mod import;
mod notification;
mod postgres;
mod recording;
mod rows;
mod shared;
mod sqlite;
mod stats;

use backend::Store;
pub use error::StoreError;
pub use import::{ImportToken, ImportedBatch, StoredToken, NEVER_EXPIRES};
pub use notification::{
    AttemptResult, Clock, Notification, NotificationCounts, NotificationStatus, Requeue,
};
/// For `benches/statement.rs` only.
#[doc(hidden)]
pub use postgres::run_record_statement;
pub use stats::{
    DayTotals, FormatTotals, LastReport, RecentItem, RecentReport, RecentRevocation,
    RevocationAges, ScannerTotals, SourceTotals, Stats, Totals,
};

/// A freshly minted token, as stored.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub hash: TokenHash,
    pub owner: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Where a token stands, judged at some instant.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    serde::Serialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantNames,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum TokenStatus {
    /// Not revoked, not expired: it still works.
    Live,
    /// Revoked (whether or not it has expired since).
    Revoked,
    /// Past its expiry, never revoked.
    Expired,
}

impl TokenStatus {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A stored token, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub hash: TokenHash,
    pub owner: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Id of the report that revoked it (`None` when it was imported revoked).
    pub revoked_by: Option<i64>,
    /// Its format's name (`cio_tp` for the tokens revoker mints).
    pub format: String,
}

impl TokenRecord {
    /// Its status at `now`.
    pub fn status(&self, now: DateTime<Utc>) -> TokenStatus {
        if self.revoked_at.is_some() {
            TokenStatus::Revoked
        } else if self.expires_at <= now {
            TokenStatus::Expired
        } else {
            TokenStatus::Live
        }
    }
}

/// How long a delivered body counts as delivered: the same scanner sending the same
/// bytes again within it is answered from the first report (see
/// [`RecordOptions::once_per_body`]). A week covers any scanner's retries; a body sent
/// again later (a history rescan) is a new report.
pub const ONCE_PER_BODY_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// What `url`, `source` and `type` read once the retention purge has passed over a
/// report's items and its notifications (GitHub's partner agreement §7.1): the rows,
/// their hashes, outcomes, counts and timestamps stay; the metadata does not.
pub const PURGED: &str = "(purged)";

/// What [`RevocationStore::purge_metadata`] overwrote with [`PURGED`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub reports: u64,
    pub items: u64,
    pub notifications: u64,
    /// Once-per-body claims past [`ONCE_PER_BODY_WINDOW`] and a day more, deleted.
    pub bodies: u64,
}

impl std::ops::AddAssign for Purged {
    fn add_assign(&mut self, other: Purged) {
        self.reports += other.reports;
        self.items += other.items;
        self.notifications += other.notifications;
        self.bodies += other.bodies;
    }
}

/// How [`RevocationStore::record_report`] records a report.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordOptions {
    /// The caller answers by then. The database is told to give up a little before it
    /// (PostgreSQL: `SET LOCAL statement_timeout` in the delivery's transaction; SQLite:
    /// `busy_timeout` for the write lock) and rolls back: [`StoreError::DeadlineExceeded`],
    /// nothing written. Already past: refused without a round trip.
    pub deadline: Option<std::time::Instant>,
    /// Record this body (by `NewReport::body_sha256`) at most once per scanner within
    /// [`ONCE_PER_BODY_WINDOW`]: a repeat is answered from the report it was first
    /// recorded as, nothing written. Deliveries set it; local replay does not (its
    /// reruns are reports of their own).
    pub once_per_body: bool,
}

/// The result of recording a report.
#[derive(Debug, Clone)]
pub struct RecordedReport {
    /// The new report, or for a [`duplicate`](Self::duplicate) the one the body was
    /// first recorded as.
    pub report_id: i64,
    /// The same body was recorded before (within [`ONCE_PER_BODY_WINDOW`]): `outcomes`
    /// and `counts` are that report's, nothing was written now, `tokens_revoked` is 0.
    pub duplicate: bool,
    /// Distinct tokens this report flipped to revoked (`revoked` + `expired` outcomes,
    /// each token once however often it was listed).
    pub tokens_revoked: u32,
    /// One outcome per entry of `NewReport::candidates`, same order.
    pub outcomes: Vec<Outcome>,
    pub counts: OutcomeCounts,
    /// A repeated body only: the candidates (indices) found inside items that the report
    /// the body was first recorded as does not list, because a release that did not look
    /// inside items recorded it. `RevocationStore::record_report` records them as a report
    /// of their own and returns this empty.
    pub unrecorded: Vec<usize>,
}

/// A stored report row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRecord {
    pub id: i64,
    pub scanner: String,
    pub key_id: String,
    pub received_at: DateTime<Utc>,
    pub body_sha256: Vec<u8>,
    pub item_count: u32,
    pub counts: OutcomeCounts,
}

/// A stored report item row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportItemRecord {
    pub position: u32,
    pub token_hash: TokenHash,
    pub token_type: String,
    pub source: String,
    pub url: String,
    pub outcome: Outcome,
    /// Where a token found inside the delivery's other strings was (`items[3].url`);
    /// `None` for an item's own token.
    pub found_in: Option<String>,
}

/// Connection settings shared by both backends.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// How long a request waits for a connection before the database counts as down.
    pub acquire_timeout: Duration,
    /// SQLite: create the file if it does not exist (off for tools that must find an
    /// existing database, such as replay).
    pub create_if_missing: bool,
    /// What stands between revoker and PostgreSQL (`--db-pooler`).
    pub pooler: Pooler,
}

/// What stands between revoker and its PostgreSQL server (`--db-pooler`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pooler {
    /// Nothing, or a pooler in session mode: each connection revoker opens is one
    /// server session for as long as it lives. Statements are prepared once per
    /// connection and reused.
    #[default]
    None,
    /// A pooler in transaction mode (PgBouncer's `pool_mode = transaction`, and managed
    /// proxies that behave the same): each transaction may run on another server
    /// connection. Every statement is sent unnamed inside a transaction of its own, and
    /// migrations (which hold a session lock) refuse to run: they need a direct URL
    /// (`--migrate-database-url`). PostgreSQL only.
    Transaction,
}

impl Pooler {
    /// As `--db-pooler` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Pooler::None => "none",
            Pooler::Transaction => "transaction",
        }
    }
}

/// The defaults of `--db-max-connections` and `--db-timeout`, as the command line
/// writes them (its help shows these; [`PoolSettings::default`] parses the same).
pub mod defaults {
    pub const MAX_CONNECTIONS: u32 = 10;
    pub const ACQUIRE_TIMEOUT: &str = "5s";
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: defaults::MAX_CONNECTIONS,
            acquire_timeout: default_duration(defaults::ACQUIRE_TIMEOUT),
            create_if_missing: true,
            pooler: Pooler::None,
        }
    }
}

/// The storage contract. Both backends pass the same test suite (`tests/contract.rs`).
#[async_trait]
pub trait RevocationStore: Send + Sync + 'static {
    /// Applies the embedded migrations of this backend.
    /// [`StoreError::MigrateThroughPooler`] behind a transaction-mode pooler.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Migrations recorded as applied (0 on a database that has none yet).
    async fn applied_migrations(&self) -> Result<i64, StoreError>;

    /// Migrations this binary embeds for this backend (a database with fewer applied
    /// lacks part of the schema it uses).
    fn known_migrations(&self) -> i64;

    /// Cheap round trip: is the database reachable and does it take writes?
    /// [`StoreError::ReadOnly`] when it answers but would refuse a revocation.
    async fn ping(&self) -> Result<(), StoreError>;

    async fn insert_token(&self, token: &NewToken) -> Result<(), StoreError>;

    /// Inserts many tokens in one statement (seeding, imports). All or nothing.
    async fn insert_tokens(&self, tokens: &[NewToken]) -> Result<(), StoreError>;

    /// `revoker token import`'s batch: stores those of `tokens` (distinct hashes) not
    /// stored yet, changes no stored one, and answers which it stored and what the others
    /// are. One statement on PostgreSQL; on SQLite two in one transaction.
    async fn import_tokens(&self, tokens: &[ImportToken]) -> Result<ImportedBatch, StoreError>;

    /// Revokes those of these stored tokens that are live, each at its instant, by no
    /// report (`revoked_by` NULL, no notification); answers the hashes revoked. One
    /// statement; none for an empty list.
    async fn revoke_imported(
        &self,
        revocations: &[(TokenHash, DateTime<Utc>)],
    ) -> Result<Vec<TokenHash>, StoreError>;

    /// Records a delivery and revokes every candidate, atomically (see module docs).
    async fn record_report(
        &self,
        report: &NewReport,
        options: RecordOptions,
    ) -> Result<RecordedReport, StoreError>;

    async fn token(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError>;

    /// Tokens whose hash is `from` or after it, in hash order, at most `limit` (a range
    /// read of the primary key: `revoker token show --hash 3f9a0c12d4e5` starts at the
    /// smallest hash with those digits).
    async fn tokens_from(&self, from: &[u8], limit: u32) -> Result<Vec<TokenRecord>, StoreError>;

    /// Tokens, newest first: only `owner`'s if given, only those in `status` at `now`
    /// if given; at most `limit`. Reads the whole table when filtered by owner (no
    /// index on owner: an operator's command, not a hot path).
    async fn list_tokens(
        &self,
        owner: Option<&str>,
        status: Option<TokenStatus>,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<TokenRecord>, StoreError>;

    /// The owner notification of this token, if it was ever revoked through a report.
    /// A scan of the outbox (nothing indexes it by token: every index there is paid for
    /// by every revoked token).
    async fn notification_of_token(
        &self,
        hash: &TokenHash,
    ) -> Result<Option<Notification>, StoreError>;

    async fn report(&self, id: i64) -> Result<Option<ReportRecord>, StoreError>;

    async fn report_items(&self, report_id: i64) -> Result<Vec<ReportItemRecord>, StoreError>;

    /// Every report, counted (a scan of the table on PostgreSQL: for tests and tools,
    /// not for checking that the schema is there).
    async fn count_reports(&self) -> Result<i64, StoreError>;

    /// Whether revoker's tables are there: one probe of `reports`, whatever its size
    /// (an error when the table does not exist).
    async fn probe_tables(&self) -> Result<(), StoreError>;

    /// What `record_report` would answer for these hashes at `now`, without writing:
    /// live → `Revoked` (would be revoked), revoked → `AlreadyRevoked`, expired and not
    /// revoked → `Expired`, absent → `Unknown`. One read statement. For `--dry-run`.
    async fn preview(
        &self,
        hashes: &[TokenHash],
        now: DateTime<Utc>,
    ) -> Result<std::collections::HashMap<TokenHash, Outcome>, StoreError>;

    /// The owners of those of `hashes` that are stored, in one read statement (replay's
    /// owner column). Nothing for no hashes: no statement.
    async fn owners(
        &self,
        hashes: &[TokenHash],
    ) -> Result<std::collections::HashMap<TokenHash, String>, StoreError>;

    /// Aggregates for `/api/stats`; `daily` covers the UTC days from `since` on. Read
    /// from the rollups the deliveries keep (migration 0007), so it costs O(days,
    /// scanners, sources), not O(history); one snapshot. First it turns up to one
    /// transaction of queued outbox batches into notifications (for its recent
    /// revocations and waiting notifications), only when no write of this process has
    /// the turn: it never waits behind deliveries.
    async fn stats(&self, since: chrono::NaiveDate) -> Result<Stats, StoreError>;

    /// Claims up to `limit` pending notifications that are due (`next_attempt_at <=
    /// now`) and not leased (`locked_until` unset or `<= now`), oldest due first: leases
    /// each until `now + lease` and counts an attempt (`attempts + 1`), in one
    /// statement (after [`Self::expand_notifications`]); `now` is read from `clock`
    /// inside that statement. On PostgreSQL the
    /// rows are picked with `FOR UPDATE SKIP LOCKED`, so concurrent claimers never get
    /// the same row; the lease keeps other workers off it while it is being sent, and
    /// lets another worker take it over if this one dies.
    async fn claim_notifications(
        &self,
        clock: Clock,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError>;

    /// Records the result of an attempt on `claimed` (as `claim_notifications` returned
    /// it) and ends its lease; `delivered_at` and the next attempt's time come from
    /// `clock`. `Delivered` always counts (a success is never undone). `Retry` and
    /// `Failed` apply only while the row is still held by that same claim: a worker
    /// whose lease ran out, and whose row another worker took over or an operator
    /// re-queued, changes nothing.
    async fn finish_notification(
        &self,
        claimed: &Notification,
        result: &AttemptResult,
        clock: Clock,
    ) -> Result<(), StoreError>;

    /// Turns the outbox's queued batches (one row per delivery that flipped a token,
    /// written by the revoking statement, migrations 0013 / 0012) into notifications: one
    /// per token the batch's report flipped, each batch once (deleted in the transaction
    /// that turns it), oldest first, up to 100 batches a transaction, until none is left
    /// (at most 100 rounds a call; a transaction stops adding batches once they make
    /// 5,000 notifications). One read when none is queued. The claims, the lookups by
    /// token and by public id, the listing, the re-queue of one and the retention purge
    /// call it first, so a notification can be read, claimed or listed once its delivery
    /// was answered (unless more than 100 rounds are queued, or another instance is
    /// turning its batch right then: `SKIP LOCKED`); `stats` turns one transaction's
    /// worth when it need not wait. Returns how many batches it turned.
    async fn expand_notifications(&self) -> Result<u64, StoreError>;

    /// Notifications by status, in one read of the rollups: queued (kept by the
    /// deliveries) less delivered and failed (kept by a trigger on every status change),
    /// so its cost does not grow with the outbox.
    async fn notification_counts(&self) -> Result<NotificationCounts, StoreError>;

    /// Newest first (by id), optionally only one status.
    async fn list_notifications(
        &self,
        status: Option<NotificationStatus>,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError>;

    /// The notification with this public id (UUID text, any case); `None` when there is
    /// none or `public_id` is not a UUID.
    async fn notification_by_public_id(
        &self,
        public_id: &str,
    ) -> Result<Option<Notification>, StoreError>;

    /// Makes a pending or failed notification due now (by `clock`) with its attempt
    /// count and error cleared; not one a worker is sending right now (lease past now).
    async fn requeue_notification(&self, id: i64, clock: Clock) -> Result<Requeue, StoreError>;

    /// Re-queues every failed notification, due now (by `clock`); returns how many.
    async fn requeue_failed(&self, clock: Clock) -> Result<u64, StoreError>;

    /// One batch of the retention purge, after [`Self::expand_notifications`] (so the
    /// notifications of the reports it purges are there to purge): the `type`, `source`
    /// and `url` of every item
    /// of up to `limit` reports received before `before` (oldest first, not purged yet,
    /// as many as hold fewer than `max_items` items before the last: a transaction
    /// stays short on SQLite's one writer however large the reports) become [`PURGED`]
    /// and the reports are marked purged, in one transaction that also moves those
    /// items' per-source rollup counts to [`PURGED`] (PostgreSQL retries it when
    /// aborted for a deadlock with a delivery); then one statement deletes the rollup
    /// rows of sources left without items; then the `url` and `source` of up to `limit`
    /// notifications of tokens revoked before `before` (whatever their status), in one
    /// statement. On PostgreSQL rows another purge
    /// holds are skipped (`SKIP LOCKED`): passes running at once never purge a row
    /// twice, and one that finds the oldest reports taken ends (the other goes on).
    /// Call again until a batch purges no report and fewer than `limit` notifications.
    async fn purge_metadata(
        &self,
        before: DateTime<Utc>,
        limit: u32,
        max_items: u32,
    ) -> Result<Purged, StoreError>;

    /// Deletes up to `limit` once-per-body claims (`delivered_bodies`) made before
    /// `before` (one statement); answers how many. A claim older than
    /// [`ONCE_PER_BODY_WINDOW`] no longer holds a body (the revoking statement overwrites
    /// it), so deleting it changes no answer; a claim renewed meanwhile is kept.
    async fn purge_delivered_bodies(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError>;

    /// Number of statements this store has sent to the database since it was opened.
    fn statements(&self) -> u64;
}

/// `sqlite` or `postgres`, by the URL's scheme (`unknown` for anything else).
pub fn backend_name(url: &str) -> &'static str {
    match url.split(':').next().unwrap_or_default() {
        "sqlite" => "sqlite",
        "postgres" | "postgresql" => "postgres",
        _ => "unknown",
    }
}

/// Opens the store named by the URL scheme: `sqlite:` or `postgres:`/`postgresql:`.
/// Does not migrate; call [`RevocationStore::migrate`].
pub async fn connect(
    url: &str,
    settings: &PoolSettings,
) -> Result<Arc<dyn RevocationStore>, StoreError> {
    match backend_name(url) {
        "sqlite" if settings.pooler != Pooler::None => {
            Err(StoreError::PoolerNeedsPostgres("SQLite"))
        }
        "sqlite" => Ok(Arc::new(
            Store::<sqlx::Sqlite>::connect(url, settings).await?,
        )),
        "postgres" => Ok(Arc::new(
            Store::<sqlx::Postgres>::connect(url, settings).await?,
        )),
        _ => Err(StoreError::UnsupportedScheme(
            url.split(':').next().unwrap_or_default().to_owned(),
        )),
    }
}

/// Counts statements sent to the database (the benchmark's flood check reads it).
#[derive(Debug, Default)]
struct StatementCounter(AtomicU64);

impl StatementCounter {
    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}
