//! Fresh test databases (SQLite in a temp dir, PostgreSQL created per test), raw access
//! to them, consistency checks, and outages on purpose.
//!
//! Two flavours: [`TestDb::new`] (and [`TestDb::pooled`]) for a test that migrates its
//! database right away (starts an app or `revoker serve`, opens a migrated store), and
//! [`TestDb::empty`] (and [`TestDb::empty_pooled`]) for a test about migrating itself
//! (`revoker migrate`, migrations over a direct URL, upgrade paths, instances racing to
//! migrate). A SQLite database starts empty either way (migrating a new file takes
//! milliseconds).
//!
//! **PostgreSQL: one migrated template.** A migrated PostgreSQL test database
//! (`revoker_t_<random>`) is `CREATE DATABASE … TEMPLATE revoker_template_<key>`, a copy
//! of a database the migrations ran on once, instead of running every migration per
//! test; the app's own migrate then finds nothing pending (sqlx's `_sqlx_migrations`
//! comes along in the copy, with the checksums it checks). The template is a **cache
//! keyed by the migrations**: `<key>` is the first 12 hex digits of the SHA-256 of the
//! PostgreSQL migrations this build embeds (`migrations/postgres/*.sql`: version,
//! description and text of each), so a changed or added migration makes a new one. It
//! **stays between runs on purpose**: it is not a leftover test database (those are
//! `revoker_t_*`, each dropped with its [`TestDb`], and a passing run leaves none). It is
//! made under a session advisory lock ([`TEMPLATE_LOCK`], on the admin URL's database) so
//! test threads and test binaries racing for it build it once, under a temporary name
//! (`…_building`) renamed only once migrated and with nobody connected, so a half-made
//! template is never copied; it is marked `IS_TEMPLATE` (`DROP DATABASE` refuses it, so a
//! test's drop can never take it) and `ALLOW_CONNECTIONS false` (a copy needs nobody
//! connected to its template). Templates of older migrations stay until dropped: `.ci/run`
//! drops every `revoker_template_*` before it starts; by hand,
//! `ALTER DATABASE revoker_template_… IS_TEMPLATE false` then `DROP DATABASE …`.

use std::sync::{Arc, Once};
use std::time::Duration;

use sqlx::Connection;

use revoker::domain::alert::{CandidateItem, NewReport};
use revoker::domain::token::{Token, TokenHash};
use revoker::store::{self, NewToken, Pooler, RevocationStore};

use super::PgBouncer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

pub enum TestDb {
    Sqlite {
        _dir: tempfile::TempDir,
        url: String,
    },
    /// `url` is always the direct one; with `pooled`, [`TestDb::url`] is the pooler's.
    Postgres {
        admin_url: String,
        name: String,
        url: String,
        pooled: Option<Box<Pooled>>,
    },
}

/// A PostgreSQL test database is dropped with its [`TestDb`], also when the test fails or
/// never calls [`TestDb::cleanup`]: the pooler in front stops first, then `DROP DATABASE
/// … WITH (FORCE)` (closing what still uses it) runs on a thread of its own, so it works
/// inside and outside a runtime.
impl Drop for TestDb {
    fn drop(&mut self) {
        let TestDb::Postgres {
            admin_url,
            name,
            pooled,
            ..
        } = self
        else {
            return;
        };
        drop(pooled.take());
        let (admin_url, name) = (admin_url.clone(), name.clone());
        let dropped = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let connect = sqlx::PgConnection::connect(&admin_url);
                if let Ok(Ok(mut conn)) =
                    tokio::time::timeout(Duration::from_secs(5), connect).await
                {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(&drop).execute(&mut conn).await;
                }
            });
        });
        let _ = dropped.join();
    }
}

/// A PgBouncer in transaction mode in front of a test database, and its URL.
pub struct Pooled {
    bouncer: PgBouncer,
    url: String,
}

/// Where a test's app or store connects: a URL (directly) or a [`TestDb`] (through its
/// pooler when it has one, migrating over the direct URL).
pub trait DbTarget {
    fn target_url(&self) -> &str;
    /// `--db-pooler`.
    fn pooler(&self) -> Pooler {
        Pooler::None
    }
    /// `--migrate-database-url`.
    fn migrate_url(&self) -> Option<&str> {
        None
    }
}

impl DbTarget for str {
    fn target_url(&self) -> &str {
        self
    }
}

impl DbTarget for String {
    fn target_url(&self) -> &str {
        self
    }
}

impl DbTarget for TestDb {
    fn target_url(&self) -> &str {
        self.url()
    }
    fn pooler(&self) -> Pooler {
        match self {
            TestDb::Postgres {
                pooled: Some(_), ..
            } => Pooler::Transaction,
            _ => Pooler::None,
        }
    }
    fn migrate_url(&self) -> Option<&str> {
        (self.pooler() == Pooler::Transaction).then(|| self.direct_url())
    }
}

pub fn postgres_admin_url() -> String {
    std::env::var("REVOKER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

static SKIP_NOTICE: Once = Once::new();

/// Runs `$body` with `$conn` a fresh connection of the database's own kind.
macro_rules! with_conn {
    ($db:expr, |$conn:ident| $body:expr) => {
        match $db {
            TestDb::Sqlite { url, .. } => {
                let mut $conn = sqlx::SqliteConnection::connect(url).await.unwrap();
                $body
            }
            TestDb::Postgres { url, .. } => {
                let mut $conn = sqlx::PgConnection::connect(url).await.unwrap();
                $body
            }
        }
    };
}

impl TestDb {
    /// A fresh database of this kind for a test that migrates it right away; `None`
    /// means "skip" (PostgreSQL unreachable outside CI; a notice is printed once).
    /// PostgreSQL: a copy of the migrated template (see the module's docs), so it is
    /// already migrated; SQLite: a new file, empty until opened. A test about migrating
    /// itself takes [`TestDb::empty`].
    pub async fn new(kind: Kind) -> Option<TestDb> {
        Self::create(kind, Schema::Migrated).await
    }

    /// A fresh, empty database of this kind (no schema, nothing migrated): for tests of
    /// migrating (`revoker migrate`, upgrade paths, instances racing to migrate). `None`
    /// means "skip", as for [`TestDb::new`].
    pub async fn empty(kind: Kind) -> Option<TestDb> {
        Self::create(kind, Schema::Empty).await
    }

    async fn create(kind: Kind, schema: Schema) -> Option<TestDb> {
        match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("revoker.db").display());
                Some(TestDb::Sqlite { _dir: dir, url })
            }
            Kind::Postgres => {
                let admin_url = postgres_admin_url();
                let conn = tokio::time::timeout(
                    Duration::from_secs(5),
                    sqlx::PgConnection::connect(&admin_url),
                )
                .await;
                let mut conn = match conn {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return Self::unreachable(&admin_url, &e.to_string()),
                    Err(_) => return Self::unreachable(&admin_url, "timed out"),
                };
                let name = format!("revoker_t_{}", rand_suffix());
                // The default strategy (WAL_LOG since PostgreSQL 15), not FILE_COPY: for
                // this 8 MB database a copy and its drop measured about the same (FILE_COPY
                // a little quicker alone, no difference in the suite), and FILE_COPY forces
                // two checkpoints per copy, writing out every database's dirty pages on a
                // shared server. Without the clause PostgreSQL 14 copies the same way too.
                let create = match schema {
                    Schema::Empty => format!("CREATE DATABASE {name}"),
                    Schema::Migrated => {
                        let template = migrated_template(&admin_url).await;
                        format!("CREATE DATABASE {name} TEMPLATE {template}")
                    }
                };
                sqlx::query(&create)
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("{create}: {e}"));
                let _ = conn.close().await;
                Some(TestDb::Postgres {
                    url: database_url(&admin_url, &name),
                    admin_url,
                    name,
                    pooled: None,
                })
            }
        }
    }

    /// A fresh PostgreSQL database, migrated (as [`TestDb::new`] makes it), behind a real
    /// PgBouncer in transaction mode with `default_pool_size = pool_size`;
    /// [`TestDb::url`] is the pooler's. `None` means "skip" (no PostgreSQL, or no
    /// `pgbouncer` outside CI).
    pub async fn pooled(pool_size: u32) -> Option<TestDb> {
        Self::behind_pooler(TestDb::new(Kind::Postgres).await?, pool_size)
    }

    /// [`TestDb::pooled`] on an empty database ([`TestDb::empty`]): for tests of
    /// migrating over the direct URL beside the pooled one.
    pub async fn empty_pooled(pool_size: u32) -> Option<TestDb> {
        Self::behind_pooler(TestDb::empty(Kind::Postgres).await?, pool_size)
    }

    fn behind_pooler(mut db: TestDb, pool_size: u32) -> Option<TestDb> {
        static NO_POOLER: Once = Once::new();
        let Some(bouncer) = PgBouncer::start(db.url(), pool_size) else {
            super::skip_unless_ci(&NO_POOLER, "no pgbouncer", "apt-get install pgbouncer");
            return None;
        };
        let TestDb::Postgres { url, pooled, .. } = &mut db else {
            unreachable!()
        };
        *pooled = Some(Box::new(Pooled {
            url: bouncer.url(url),
            bouncer,
        }));
        Some(db)
    }

    /// How the store counts `statements` single statements sent outside a transaction:
    /// behind a transaction-mode pooler each goes inside a `BEGIN … COMMIT` of its own.
    pub fn counted(&self, statements: u64) -> u64 {
        match self.pooler() {
            Pooler::Transaction => statements * 3,
            Pooler::None => statements,
        }
    }

    /// The pooler in front, if any.
    pub fn bouncer(&self) -> Option<&PgBouncer> {
        match self {
            TestDb::Postgres {
                pooled: Some(p), ..
            } => Some(&p.bouncer),
            _ => None,
        }
    }

    /// The pooler in front, to stop and restart it.
    pub fn bouncer_mut(&mut self) -> Option<&mut PgBouncer> {
        match self {
            TestDb::Postgres {
                pooled: Some(p), ..
            } => Some(&mut p.bouncer),
            _ => None,
        }
    }

    /// `SHOW what` on the pooler's admin console, the rows of this database's pools.
    pub async fn pooler_show(&self, what: &str) -> Vec<std::collections::HashMap<String, String>> {
        let TestDb::Postgres { name, .. } = self else {
            panic!("no pooler on SQLite")
        };
        let bouncer = self.bouncer().expect("a pooled database");
        bouncer.show(self.direct_url(), what, name).await
    }

    /// The database's name on the server (PostgreSQL).
    pub fn name(&self) -> &str {
        match self {
            TestDb::Postgres { name, .. } => name,
            TestDb::Sqlite { .. } => panic!("a SQLite database has no server name"),
        }
    }

    /// The database itself, never through the pooler (for raw access and migrations).
    pub fn direct_url(&self) -> &str {
        match self {
            TestDb::Sqlite { url, .. } | TestDb::Postgres { url, .. } => url,
        }
    }

    fn unreachable(url: &str, why: &str) -> Option<TestDb> {
        super::skip_unless_ci(
            &SKIP_NOTICE,
            &format!("PostgreSQL tests: {url} unreachable ({why})"),
            "set REVOKER_TEST_POSTGRES_URL to run them",
        );
        None
    }

    /// Where the app connects: the pooler's URL when there is one.
    pub fn url(&self) -> &str {
        match self {
            TestDb::Postgres {
                pooled: Some(p), ..
            } => &p.url,
            _ => self.direct_url(),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            TestDb::Sqlite { .. } => Kind::Sqlite,
            TestDb::Postgres { .. } => Kind::Postgres,
        }
    }

    /// Drops a PostgreSQL test database (the SQLite one goes with its temp dir); dropping
    /// a [`TestDb`] does the same, so a test that forgets or fails leaves none behind.
    pub async fn cleanup(self) {
        drop(self);
    }

    /// The one text column of every row `sql` selects.
    pub async fn texts(&self, sql: &str) -> Vec<String> {
        let rows: Vec<(String,)> = with_conn!(self, |conn| sqlx::query_as(sql)
            .fetch_all(&mut conn)
            .await
            .unwrap());
        rows.into_iter().map(|(text,)| text).collect()
    }

    /// Every value stored in every table, as text, for secret scanning.
    pub async fn dump(&self) -> String {
        // One SELECT per table giving each row as one text.
        let mut selects = Vec::new();
        match self.kind() {
            Kind::Sqlite => {
                let tables = "SELECT name FROM sqlite_master \
                              WHERE type = 'table' AND name NOT LIKE 'sqlite_%'";
                for table in self.texts(tables).await {
                    let columns = format!("SELECT name FROM pragma_table_info('{table}')");
                    // quote(): text as text, blobs as X'hex'.
                    let expr = self
                        .texts(&columns)
                        .await
                        .iter()
                        .map(|c| format!("quote({c})"))
                        .collect::<Vec<_>>()
                        .join(" || ',' || ");
                    selects.push(format!("SELECT {expr} FROM {table}"));
                }
            }
            Kind::Postgres => {
                let tables = "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'";
                for table in self.texts(tables).await {
                    selects.push(format!("SELECT t::text FROM {table} t"));
                }
            }
        }
        let mut out = String::new();
        for select in selects {
            for row in self.texts(&select).await {
                out.push_str(&row);
                out.push('\n');
            }
        }
        out
    }

    /// Moves report `id`, the tokens it revoked and the notifications it queued `days` into
    /// the past.
    pub async fn age_report(&self, id: i64, days: i64) {
        let shift = |column: &str| match self.kind() {
            Kind::Sqlite => format!("{column} = {column} - {days} * 86400000"),
            Kind::Postgres => format!("{column} = {column} - interval '{days} days'"),
        };
        let reports = format!(
            "UPDATE reports SET {} WHERE id = {id}",
            shift("received_at")
        );
        assert_eq!(self.execute(&reports).await, 1);
        let tokens = format!(
            "UPDATE tokens SET {}, {} WHERE revoked_by = {id}",
            shift("revoked_at"),
            shift("created_at")
        );
        self.execute(&tokens).await;
        let notifications = format!(
            "UPDATE notifications SET {} WHERE report_id = {id}",
            shift("revoked_at")
        );
        self.execute(&notifications).await;
    }

    /// Runs one statement on a connection of its own (to damage data on purpose).
    pub async fn execute(&self, sql: &str) -> u64 {
        with_conn!(self, |conn| sqlx::query(sql)
            .execute(&mut conn)
            .await
            .unwrap()
            .rows_affected())
    }

    /// [`Self::execute`], answering the database's error as text instead of panicking.
    #[allow(dead_code)] // not every test binary refuses a statement
    pub async fn try_execute(&self, sql: &str) -> Result<u64, String> {
        with_conn!(self, |conn| sqlx::query(sql)
            .execute(&mut conn)
            .await
            .map(|done| done.rows_affected())
            .map_err(|e| e.to_string()))
    }

    /// Turns the outbox's queued batches into notifications (what every reader of the
    /// outbox does first), so a test reading `notifications` itself sees them.
    #[allow(dead_code)] // not every test binary reads the outbox
    pub async fn expand_outbox(&self) {
        open_store(self).await.expand_notifications().await.unwrap();
    }

    /// Rows that break the revocation invariants; empty when the database is
    /// consistent. Every report's counts match its items; every revoked token was
    /// revoked by exactly one report, which lists it as `revoked` (or `expired`: an
    /// expired token that is reported is revoked too); nothing is half revoked. Every
    /// revoked token has exactly one owner notification, queued by its revoking report
    /// and agreeing with the token; no other token has one.
    pub async fn inconsistencies(&self) -> Vec<String> {
        self.checked(false).await
    }

    /// [`TestDb::inconsistencies`], with tokens revoked by `revoker token import` allowed:
    /// `revoked_at` without `revoked_by`, named by no report item as revoked and with no
    /// notification (every other check as strict).
    pub async fn inconsistencies_allowing_imports(&self) -> Vec<String> {
        self.checked(true).await
    }

    async fn checked(&self, imports: bool) -> Vec<String> {
        // The outbox's queued batches become notifications first (what any reader of the
        // outbox does); after that none is left.
        self.expand_outbox().await;
        // A token revoked by a report: all of them, unless imports are allowed.
        let by_report = if imports {
            "t.revoked_by IS NOT NULL"
        } else {
            "t.revoked_at IS NOT NULL"
        };
        let checks: Vec<(&str, String)> = vec![
            // What the foreign keys checked before migrations 0011 (PostgreSQL) and 0013 (SQLite) dropped
            // them: the revoking statement writes all three together.
            (
                "report items of no report",
                "SELECT count(*) FROM report_items i WHERE NOT EXISTS
                   (SELECT 1 FROM reports r WHERE r.id = i.report_id)".into(),
            ),
            (
                "tokens revoked by no report there is",
                "SELECT count(*) FROM tokens t WHERE t.revoked_by IS NOT NULL AND NOT EXISTS
                   (SELECT 1 FROM reports r WHERE r.id = t.revoked_by)".into(),
            ),
            (
                "outbox batches left after expanding them",
                "SELECT count(*) FROM notification_batches".into(),
            ),
            (
                "notifications of no report",
                "SELECT count(*) FROM notifications n WHERE NOT EXISTS
                   (SELECT 1 FROM reports r WHERE r.id = n.report_id)".into(),
            ),
            (
                "reports whose counts disagree with their items",
                "SELECT count(*) FROM reports r WHERE
                   r.item_count - r.not_ours <> (SELECT count(*) FROM report_items i WHERE i.report_id = r.id)
                   OR r.revoked <> (SELECT count(*) FROM report_items i WHERE i.report_id = r.id AND i.outcome = 'revoked')
                   OR r.already_revoked <> (SELECT count(*) FROM report_items i WHERE i.report_id = r.id AND i.outcome = 'already_revoked')
                   OR r.expired <> (SELECT count(*) FROM report_items i WHERE i.report_id = r.id AND i.outcome = 'expired')
                   OR r.unknown <> (SELECT count(*) FROM report_items i WHERE i.report_id = r.id AND i.outcome = 'unknown')".into(),
            ),
            (
                "revoked tokens that their revoking report does not list as revoked (or expired)",
                format!("SELECT count(*) FROM tokens t WHERE {by_report} AND NOT EXISTS
                   (SELECT 1 FROM report_items i WHERE i.report_id = t.revoked_by
                    AND i.token_hash = t.hash AND i.outcome IN ('revoked', 'expired'))"),
            ),
            (
                "items marked revoked by a report other than the token's revoking report",
                "SELECT count(*) FROM report_items i JOIN tokens t ON t.hash = i.token_hash
                 WHERE i.outcome IN ('revoked', 'expired')
                   AND (t.revoked_by IS NULL OR t.revoked_by <> i.report_id)".into(),
            ),
            (
                "tokens with revoked_at and revoked_by disagreeing",
                if imports {
                    "SELECT count(*) FROM tokens WHERE revoked_at IS NULL AND revoked_by IS NOT NULL".into()
                } else {
                    "SELECT count(*) FROM tokens WHERE (revoked_at IS NULL) <> (revoked_by IS NULL)".into()
                },
            ),
            (
                "revoked tokens without exactly one notification from their revoking report",
                format!("SELECT count(*) FROM tokens t WHERE {by_report} AND
                   (SELECT count(*) FROM notifications n
                    WHERE n.token_hash = t.hash AND n.report_id = t.revoked_by) <> 1"),
            ),
            (
                "notifications for tokens that are not revoked (or not ours), or no report revoked",
                "SELECT count(*) FROM notifications n WHERE NOT EXISTS
                   (SELECT 1 FROM tokens t WHERE t.hash = n.token_hash AND t.revoked_at IS NOT NULL
                    AND t.revoked_by IS NOT NULL)".into(),
            ),
            (
                "notifications disagreeing with their token (report, owner, time, expired)",
                "SELECT count(*) FROM notifications n JOIN tokens t ON t.hash = n.token_hash
                 WHERE n.report_id <> coalesce(t.revoked_by, -1) OR n.owner <> t.owner
                   OR n.revoked_at <> t.revoked_at OR n.expired <> (t.expires_at <= t.revoked_at)".into(),
            ),
        ];
        let mut found = Vec::new();
        for (what, sql) in &checks {
            let n: i64 = with_conn!(self, |conn| sqlx::query_scalar(sql.as_str())
                .fetch_one(&mut conn)
                .await
                .unwrap());
            if n != 0 {
                found.push(format!("{n} {what}"));
            }
        }
        found
    }
}

fn rand_suffix() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().gen();
    format!("{n:016x}")
}

// ---------------------------------------------------------------- the migrated template

/// Which fresh database a test gets: see [`TestDb::new`] and [`TestDb::empty`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schema {
    Empty,
    Migrated,
}

/// The session advisory lock under which the template is looked for and built: one key
/// for every test binary (advisory locks count per database, so all take it on the
/// admin URL's database). Bytes of "revokerT".
pub const TEMPLATE_LOCK: i64 = 0x7265_766f_6b65_7254;

/// `admin_url` naming database `name` instead.
fn database_url(admin_url: &str, name: &str) -> String {
    let mut url = url::Url::parse(admin_url).expect("postgres URL");
    url.set_path(name);
    url.to_string()
}

/// The PostgreSQL migrations this build embeds, the same files `revoker` migrates with.
fn embedded_migrations() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./migrations/postgres")
}

/// The template's name: `revoker_template_` and the first 12 hex digits of the SHA-256
/// of every embedded PostgreSQL migration's version, description and text.
pub fn template_name() -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for m in embedded_migrations().iter() {
        digest.update(m.version.to_le_bytes());
        for part in [m.description.as_bytes(), m.sql.as_bytes()] {
            digest.update((part.len() as u64).to_le_bytes());
            digest.update(part);
        }
    }
    format!("revoker_template_{}", &hex::encode(digest.finalize())[..12])
}

/// The migrated template's name, the template built first if the server has none for
/// these migrations (once per process; across processes under [`TEMPLATE_LOCK`]).
async fn migrated_template(admin_url: &str) -> String {
    static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    TEMPLATE
        .get_or_init(|| ensure_template(admin_url))
        .await
        .clone()
}

async fn ensure_template(admin_url: &str) -> String {
    let name = template_name();
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("connect to build the template");
    // Held by this session until unlocked or until it ends (a builder that dies lets go).
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(TEMPLATE_LOCK)
        .execute(&mut admin)
        .await
        .unwrap();
    let exists = database_exists(&mut admin, &name).await;
    if !exists {
        build_template(&mut admin, admin_url, &name).await;
    }
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(TEMPLATE_LOCK)
        .execute(&mut admin)
        .await
        .unwrap();
    let _ = admin.close().await;
    name
}

/// Builds template `name` under the lock: created as `<name>_building`, migrated by the
/// app's own migrate, checked to hold exactly the embedded migrations, closed to
/// connections, marked a template, and only then renamed to `name`. The final name is
/// the mark of a complete template.
async fn build_template(admin: &mut sqlx::PgConnection, admin_url: &str, name: &str) {
    let building = format!("{name}_building");
    let mut sql = Vec::new();
    if database_exists(admin, &building).await {
        // Half made by a builder that died before the rename (none builds now).
        sql.push(format!("ALTER DATABASE {building} IS_TEMPLATE false"));
        sql.push(format!("DROP DATABASE {building} WITH (FORCE)"));
    }
    sql.push(format!("CREATE DATABASE {building}"));
    for sql in sql {
        sqlx::query(&sql)
            .execute(&mut *admin)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let url = database_url(admin_url, &building);
    let settings = store::PoolSettings {
        max_connections: 1,
        ..store::PoolSettings::default()
    };
    let migrated = store::connect(&url, &settings).await.unwrap();
    migrated.migrate().await.expect("migrate the template");
    drop(migrated);
    // Exactly the embedded migrations, or the test binary and the library were built
    // from different migrations (the name would then promise what it does not hold).
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let applied: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT version, checksum FROM _sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let embedded: Vec<(i64, Vec<u8>)> = embedded_migrations()
        .iter()
        .map(|m| (m.version, m.checksum.to_vec()))
        .collect();
    assert!(
        applied == embedded,
        "the template's migrations differ from the ones this test binary embeds: \
         rebuild (cargo test builds both from migrations/)"
    );
    sqlx::query(&format!(
        "ALTER DATABASE {building} WITH ALLOW_CONNECTIONS false IS_TEMPLATE true"
    ))
    .execute(&mut *admin)
    .await
    .unwrap();
    // The migrating pool's connections close in the background: end what is left, and
    // rename once nobody is connected (PostgreSQL refuses it before).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(&building)
            .execute(&mut *admin)
            .await
            .unwrap();
        let rename = format!("ALTER DATABASE {building} RENAME TO {name}");
        match sqlx::query(&rename).execute(&mut *admin).await {
            Ok(_) => break,
            // 55006: "database … is being accessed by other users".
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("55006") && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{rename}: {e}"),
        }
    }
}

async fn database_exists(admin: &mut sqlx::PgConnection, name: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(admin)
        .await
        .unwrap()
}

/// Opens a second store on the same database (e.g. to look without the app's counter).
pub async fn open_store(db: &(impl DbTarget + ?Sized)) -> Arc<dyn RevocationStore> {
    let settings = store::PoolSettings {
        pooler: db.pooler(),
        ..store::PoolSettings::default()
    };
    store::connect(db.target_url(), &settings).await.unwrap()
}

/// [`open_store`], migrated (behind a pooler: over the direct URL first).
pub async fn open_migrated_store(db: &(impl DbTarget + ?Sized)) -> Arc<dyn RevocationStore> {
    if let Some(direct) = db.migrate_url() {
        open_store(direct).await.migrate().await.unwrap();
    }
    let store = open_store(db).await;
    if db.pooler() == Pooler::None {
        store.migrate().await.unwrap();
    }
    store
}

/// A report of one item naming `hash` (found in `source`, no URL), as scanner `github`
/// signed with the test key sends it, received at `at`; its body's digest is the hash
/// (a report per token). Override what differs with `NewReport { …, ..one_item_report() }`.
pub fn one_item_report(
    hash: TokenHash,
    source: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> NewReport {
    NewReport {
        scanner: "github".into(),
        key_id: super::KEY_ID.into(),
        received_at: at,
        body_sha256: hash.0,
        item_count: 1,
        not_ours: 0,
        candidates: vec![CandidateItem {
            position: 0,
            hash,
            token_type: "cio_tp".into(),
            source: source.into(),
            url: String::new(),
            found_in: None,
        }],
    }
}

/// Mints `n` tokens owned by `owner` in one statement; they expire after `ttl`.
pub async fn mint_many(
    store: &dyn RevocationStore,
    owner: &str,
    n: usize,
    ttl: chrono::Duration,
) -> Vec<Token> {
    let now = chrono::Utc::now();
    let tokens: Vec<Token> = (0..n).map(|_| Token::generate()).collect();
    let rows: Vec<NewToken> = tokens
        .iter()
        .map(|t| NewToken {
            hash: t.hash(),
            owner: owner.into(),
            created_at: now,
            expires_at: now + ttl,
        })
        .collect();
    store.insert_tokens(&rows).await.unwrap();
    tokens
}

/// Makes the database unusable for the app: SQLite held under an exclusive lock,
/// PostgreSQL refusing connections with the app's connections terminated.
pub enum Outage {
    Sqlite(sqlx::SqliteConnection),
    Postgres,
}

impl Outage {
    pub async fn start(db: &TestDb) -> Outage {
        match db {
            TestDb::Sqlite { url, .. } => {
                let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
                sqlx::query("BEGIN EXCLUSIVE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                Outage::Sqlite(conn)
            }
            TestDb::Postgres {
                admin_url, name, ..
            } => {
                let mut admin = sqlx::PgConnection::connect(admin_url).await.unwrap();
                sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
                    .execute(&mut admin)
                    .await
                    .unwrap();
                sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                )
                .bind(name)
                .execute(&mut admin)
                .await
                .unwrap();
                Outage::Postgres
            }
        }
    }

    pub async fn end(self, db: &TestDb) {
        match (self, db) {
            (Outage::Sqlite(mut conn), _) => {
                sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
            }
            (
                Outage::Postgres,
                TestDb::Postgres {
                    admin_url, name, ..
                },
            ) => {
                let mut admin = sqlx::PgConnection::connect(admin_url).await.unwrap();
                sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
                    .execute(&mut admin)
                    .await
                    .unwrap();
            }
            _ => unreachable!(),
        }
    }
}

/// Another session holding what a delivery of `hash` needs, until [`LockHolder::release`]:
/// on PostgreSQL the token's row lock (`SELECT … FOR UPDATE` in an open transaction), on
/// SQLite the write lock (`BEGIN IMMEDIATE`).
pub enum LockHolder {
    Postgres(sqlx::PgConnection),
    Sqlite(sqlx::SqliteConnection),
}

impl LockHolder {
    pub async fn take(db: &TestDb, hash: &revoker::domain::token::TokenHash) -> LockHolder {
        use sqlx::Connection;
        match db.kind() {
            Kind::Postgres => {
                let mut c = sqlx::PgConnection::connect(db.direct_url()).await.unwrap();
                sqlx::query("BEGIN").execute(&mut c).await.unwrap();
                sqlx::query("SELECT 1 FROM tokens WHERE hash = $1 FOR UPDATE")
                    .bind(hash.as_bytes().as_slice())
                    .execute(&mut c)
                    .await
                    .unwrap();
                LockHolder::Postgres(c)
            }
            Kind::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(db.url()).await.unwrap();
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut c)
                    .await
                    .unwrap();
                LockHolder::Sqlite(c)
            }
        }
    }

    /// Rolls the holding transaction back.
    pub async fn release(self) {
        match self {
            LockHolder::Postgres(mut c) => {
                sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
            }
            LockHolder::Sqlite(mut c) => {
                sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
            }
        }
    }
}
