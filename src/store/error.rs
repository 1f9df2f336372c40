//! What a store call can fail with, and the sqlx errors said in words.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or the statement failed; the caller should
    /// answer 503 so the scanner retries.
    #[error("database error")]
    Database(#[source] sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// PostgreSQL reached through a pooler in transaction mode (PgBouncer), which hands
    /// each transaction any server connection: sqlx's named prepared statements are not
    /// where it left them. Said in words instead of `prepared statement "sqlx_s_1"
    /// already exists`.
    #[error(
        "the database URL goes through a connection pooler in transaction mode (such as \
         PgBouncer), which does not keep prepared statements between transactions: start \
         revoker with --db-pooler transaction (REVOKER_DB_POOLER=transaction), and run \
         migrations over a direct URL (--migrate-database-url / REVOKER_MIGRATE_DATABASE_URL)"
    )]
    Pooler,
    /// Migrations asked of a store behind a transaction-mode pooler ([`Pooler::Transaction`]).
    #[error(
        "migrations need a session of their own (a lock held across transactions), which a \
         pooler in transaction mode does not keep: give a direct URL to PostgreSQL with \
         --migrate-database-url (REVOKER_MIGRATE_DATABASE_URL)"
    )]
    MigrateThroughPooler,
    /// [`Pooler::Transaction`] with a database that is not PostgreSQL.
    #[error("--db-pooler transaction is for PostgreSQL behind a pooler; {0} has none")]
    PoolerNeedsPostgres(&'static str),
    /// A database URL revoker cannot use, said in words (never the URL itself).
    #[error("{0}")]
    Config(String),
    #[error("unsupported database URL scheme {0:?} (use sqlite:// or postgres://)")]
    UnsupportedScheme(String),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// The database answers but refuses writes (a read-only SQLite file or URL, a
    /// PostgreSQL standby or `default_transaction_read_only`).
    #[error("database is read-only; revocations cannot be recorded")]
    ReadOnly,
    /// The database gave up at the caller's deadline ([`RecordOptions::deadline`]) and
    /// rolled the work back, or the work was still waiting for its turn to write (SQLite):
    /// nothing was written.
    #[error(
        "not finished before the deadline (the database gave up and rolled back, or the \
         write was still waiting for its turn); nothing was written"
    )]
    DeadlineExceeded,
    /// The caller stopped waiting for a statement's answer (not a deadline the database
    /// was told of): what was sent may have been written.
    #[error("no answer from the database in time; what was sent may have been written")]
    NoAnswer,
    /// SQLite: this process's writes ahead of this one held the one writer's turn for
    /// longer than the database's lock may be waited for (`--db-timeout`).
    #[error(
        "waited --db-timeout for this process's turn to write (SQLite takes one writer at a \
         time; the writes ahead of this one took that long); nothing was written"
    )]
    WriteTurnTimedOut,
}

/// sqlx's named prepared statement (`sqlx_s_N`) missing (26000), already there (42P05)
/// or another one under its name (08P01, parameters that do not fit): the server
/// connection changed under the client, as behind a transaction-mode pooler that
/// revoker was not told about (`--db-pooler`). (When another client's statement of the
/// same name happens to fit, nothing tells: the word-level error is a courtesy.)
fn lost_prepared_statement(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("26000" | "42P05" | "08P01"))
                && db.message().contains("sqlx_s_")
        }
        _ => false,
    }
}

/// The statement named a table that does not exist: PostgreSQL's 42P01
/// (undefined_table), SQLite's "no such table".
pub(super) fn undefined_table(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.code().as_deref() == Some("42P01") || db.message().starts_with("no such table"))
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if lost_prepared_statement(&e) {
            StoreError::Pooler
        } else if matches!(&e, sqlx::Error::Database(db) if db.code().as_deref() == Some("25006")) {
            // read_only_sql_transaction: a standby, or a primary demoted under us.
            StoreError::ReadOnly
        } else if matches!(
            e,
            sqlx::Error::Decode(_)
                | sqlx::Error::ColumnDecode { .. }
                | sqlx::Error::ColumnNotFound(_)
        ) {
            // A row revoker cannot read is stored data it does not understand.
            StoreError::Corrupt(e.to_string())
        } else {
            StoreError::Database(e)
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        use sqlx::migrate::MigrateError::{Execute, ExecuteMigration};
        match &e {
            Execute(inner) | ExecuteMigration(inner, _) if lost_prepared_statement(inner) => {
                StoreError::Pooler
            }
            _ => StoreError::Migrate(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StoreError;

    #[test]
    fn errors_say_what_the_database_did() {
        // A row revoker cannot read is stored data it does not understand.
        let e: StoreError = sqlx::Error::Decode("outcome \"maybe\"".into()).into();
        assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
        let e: StoreError = sqlx::Error::ColumnNotFound("r_hash".into()).into();
        assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
        // Not reached, or failed: unavailable.
        let e: StoreError = sqlx::Error::PoolTimedOut.into();
        assert!(matches!(e, StoreError::Database(_)), "{e:?}");
    }
}
