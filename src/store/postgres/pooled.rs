//! PostgreSQL behind a transaction-mode pooler: the revoking call in two round trips.
//!
//! Behind PgBouncer in transaction mode a statement cannot stay prepared (the next
//! transaction may run on another server connection), so sqlx sends it unnamed: a Parse
//! and Describe, waited for, then the Bind and Execute; with the deadline's `BEGIN`,
//! `SET LOCAL` and `COMMIT` that made five round trips through the pooler per delivery,
//! each one a hop through PgBouncer and a wake-up of both processes. Here the call goes
//! as ONE simple query, its arguments written as literals:
//!
//! ```sql
//! BEGIN; SET LOCAL statement_timeout = …; SET LOCAL bytea_output = 'hex';
//! SET LOCAL array_nulls = on;
//! SELECT … FROM revoker_record_delivery('{…}'::int4[], '{…}'::bytea[], …)
//! ```
//!
//! then `COMMIT`, sent only once the answer is in: the deadline keeps its guarantee (the
//! caller that gives up first never sees a late commit; PostgreSQL cancels the call when
//! the budget runs out, and the statement timeout applies to each statement of a simple
//! query on its own, so it is the call's). The function keeps its plan per server session
//! (migration 0012); what the server parses per delivery is this short call and its
//! literals.
//!
//! Every value reaches SQL through [`escape_literal`] (libpq's `PQescapeLiteral`, as the
//! `postgres-protocol` crate writes it: quotes doubled, backslashes doubled in an `E''`
//! string, right under either `standard_conforming_strings`), arrays first in PostgreSQL's
//! array syntax (each element double-quoted, `"` and `\` escaped). NUL, which no query
//! text can carry, never reaches here (the alert parser makes every stored string
//! storable); it is replaced all the same. The answer comes in text (`bytea_output` set
//! for the transaction, whatever the server's default).
//!
//! The deadline bounds the first round trip on this side too (a connection the pool has
//! just opened meets the pooler's queue only with it, after the budget was taken; before,
//! `BEGIN` went alone and the budget was set after it): revoker waits the budget and half
//! of what it leaves of the deadline, so PostgreSQL's own cancel normally comes first. A
//! transaction that fails is rolled back on the same connection; one given up mid-way
//! (the wait spent, or the caller's future dropped) has its connection closed instead of
//! returned to the pool, which ends the server's transaction without a commit.

use std::time::Duration;

use postgres_protocol::escape::escape_literal;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgRow;
use sqlx::Postgres;

use super::record::RecordArgs;
use crate::store::backend::Store;
use crate::store::StoreError;

/// `s` as an element of a PostgreSQL array literal: double-quoted, `"` and `\` escaped
/// (NUL, which a query cannot carry, as U+FFFD).
fn push_element(array: &mut String, s: &str) {
    array.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                array.push('\\');
                array.push(c);
            }
            '\0' => array.push('\u{FFFD}'),
            c => array.push(c),
        }
    }
    array.push('"');
}

/// An array literal `'{…}'::ty[]` of `items` (`None`: `NULL`).
fn array<'a>(items: impl IntoIterator<Item = Option<&'a str>>, ty: &str) -> String {
    let mut text = String::from("{");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        match item {
            Some(s) => push_element(&mut text, s),
            None => text.push_str("NULL"),
        }
    }
    text.push('}');
    format!("{}::{ty}[]", escape_literal(&text))
}

/// `bytes` in bytea's hex input form, `\x…`.
fn bytea_text(bytes: &[u8]) -> String {
    format!("\\x{}", hex::encode(bytes))
}

/// A text literal (NUL as U+FFFD).
fn text(s: &str) -> String {
    if s.contains('\0') {
        escape_literal(&s.replace('\0', "\u{FFFD}"))
    } else {
        escape_literal(s)
    }
}

/// A `timestamptz` literal, to the microsecond (as sqlx binds one: truncated).
fn timestamptz(t: chrono::DateTime<chrono::Utc>) -> String {
    format!("'{}'::timestamptz", t.format("%Y-%m-%dT%H:%M:%S%.6fZ"))
}

impl RecordArgs<'_> {
    /// The simple query that opens the transaction, sets its budget and makes the call
    /// with this report's arguments as literals (the same 14 as [`RecordArgs::query`]).
    pub(super) fn simple_query(&self, once_per_body: bool, budget: Option<Duration>) -> String {
        let report = self.report;
        let mut sql = String::with_capacity(512 + report.candidates.len() * 160);
        sql.push_str(&super::record::begin_sql(budget));
        sql.push_str("; ");
        // The answer's bytea in hex, and `NULL` in an array literal a NULL, whatever
        // the server's or role's defaults.
        sql.push_str("SET LOCAL bytea_output = 'hex'; SET LOCAL array_nulls = on; ");
        sql.push_str(super::record::CALL_SELECT);
        sql.push('(');
        let positions: Vec<String> = self.positions.iter().map(i32::to_string).collect();
        let hashes: Vec<String> = self.hashes.iter().map(|h| bytea_text(h)).collect();
        let args = [
            array(positions.iter().map(|p| Some(p.as_str())), "int4"),
            array(hashes.iter().map(|h| Some(h.as_str())), "bytea"),
            array(self.types.iter().map(|s| Some(*s)), "text"),
            array(self.sources.iter().map(|s| Some(*s)), "text"),
            array(self.urls.iter().map(|s| Some(*s)), "text"),
            timestamptz(report.received_at),
            format!("{}::text", text(&report.scanner)),
            format!("{}::text", text(&report.key_id)),
            format!(
                "{}::bytea",
                text(&bytea_text(report.body_sha256.as_slice()))
            ),
            format!("{}::int4", report.item_count as i32),
            format!("{}::int4", report.not_ours as i32),
            format!("{once_per_body}::boolean"),
            timestamptz(self.cutoff()),
            array(self.found_in.iter().copied(), "text"),
        ];
        sql.push_str(&args.join(", "));
        sql.push(')');
        sql
    }
}

/// A pooled connection inside a transaction this module opened: closed, not returned to
/// the pool, unless the transaction was seen to end ([`Open::ended`]).
struct Open {
    conn: PoolConnection<Postgres>,
    ended: bool,
}

impl Open {
    fn ended(mut self) {
        self.ended = true;
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if !self.ended {
            self.conn.close_on_drop();
        }
    }
}

/// Up to this many candidates the call goes with its arguments as literals; a larger
/// one binds them (PostgreSQL reads 1,000 candidates' literals in ~1.8 ms, about what
/// two round trips through the pooler cost at 100).
pub(super) const LITERALS_UP_TO: usize = 100;

/// The transaction up to its answer, on `conn`: up to [`LITERALS_UP_TO`] candidates
/// [`RecordArgs::simple_query`] (one round trip), more as `BEGIN` and the `SET LOCAL` of
/// the budget in one simple query, then the call sent unnamed with its arguments bound
/// (sqlx's Parse, then Bind and Execute: three).
async fn call(
    store: &Store<Postgres>,
    conn: &mut sqlx::PgConnection,
    args: &RecordArgs<'_>,
    once_per_body: bool,
    budget: Option<Duration>,
) -> Result<Vec<PgRow>, sqlx::Error> {
    // `BEGIN`, the `SET LOCAL` of a budget, the call (and with literals the two
    // `SET LOCAL`s of the answer's and the literals' formats).
    let literals = args.hashes.len() <= LITERALS_UP_TO;
    store
        .statements
        .add(2 + u64::from(budget.is_some()) + if literals { 2 } else { 0 });
    if literals {
        let sql = args.simple_query(once_per_body, budget);
        return sqlx::Executor::fetch_all(conn, sqlx::raw_sql(&sql)).await;
    }
    let begin = super::record::begin_sql(budget);
    sqlx::Executor::execute(&mut *conn, sqlx::raw_sql(&begin)).await?;
    args.query(super::record::CALL_SQL, once_per_body)
        .persistent(false)
        .fetch_all(conn)
        .await
}

/// The revoking call behind a transaction-mode pooler ([`call`]) and, once its rows are
/// in, `COMMIT`. A failed statement is rolled back before the error is returned.
pub(super) async fn record(
    store: &Store<Postgres>,
    args: &RecordArgs<'_>,
    once_per_body: bool,
    deadline: Option<std::time::Instant>,
) -> Result<Vec<PgRow>, super::record::TryError> {
    let conn = store.pool.acquire().await?;
    // The budget is what is left once the pool gives a connection; the pooler's queue
    // may take some of it before the server starts the clock (the call then runs up to
    // that much longer than the caller waits, and is rolled back: no commit is sent).
    let budget = crate::store::recording::database_budget(deadline)
        .map_err(super::record::TryError::Store)?;
    // This side waits half of what the budget leaves of the deadline longer, so that
    // PostgreSQL's own cancel (then a ROLLBACK, the connection kept) normally comes first.
    let wait = budget.map(|b| {
        let left = deadline.map_or(b, |d| {
            d.saturating_duration_since(std::time::Instant::now())
        });
        b + left.saturating_sub(b) / 2
    });
    let mut open = Open { conn, ended: false };
    let call = call(store, &mut open.conn, args, once_per_body, budget);
    // The deadline also bounds the wait for the answer here: a connection the pool has
    // just opened meets the pooler's queue only now, after the budget was taken. Past it the
    // connection is closed (`open` is dropped unended): no COMMIT was sent, so nothing
    // can be recorded, and the server rolls back.
    let answer = match wait {
        Some(wait) => match tokio::time::timeout(wait, call).await {
            Ok(answer) => answer,
            Err(_) => return Err(super::record::TryError::Store(StoreError::DeadlineExceeded)),
        },
        None => call.await,
    };
    match answer {
        Ok(rows) => {
            store.statements.add(1);
            sqlx::Executor::execute(&mut *open.conn, "COMMIT").await?;
            open.ended();
            Ok(rows)
        }
        Err(e) => {
            // Outside a transaction (the text failed to parse, nothing ran) ROLLBACK only
            // warns; inside, it ends the failed one.
            if sqlx::Executor::execute(&mut *open.conn, "ROLLBACK")
                .await
                .is_ok()
            {
                open.ended();
            }
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_elements_are_quoted_and_escaped_once_for_the_array_and_once_for_sql() {
        assert_eq!(array([Some("a"), None], "text"), "'{\"a\",NULL}'::text[]");
        // `"` escaped for the array; `\` for the array, then doubled again in an E string.
        assert_eq!(
            array([Some("x\"y\\z'")], "text"),
            " E'{\"x\\\\\"y\\\\\\\\z''\"}'::text[]"
        );
        assert_eq!(array(std::iter::empty(), "int4"), "'{}'::int4[]");
        assert_eq!(array([Some("a\0b")], "text"), "'{\"a\u{FFFD}b\"}'::text[]");
    }

    #[test]
    fn scalars() {
        assert_eq!(text("it's"), "'it''s'");
        assert_eq!(text("a\\b"), " E'a\\\\b'");
        assert_eq!(bytea_text(&[0, 255]), "\\x00ff");
        let t = chrono::DateTime::parse_from_rfc3339("2026-12-07T08:00:00.123456789Z")
            .unwrap()
            .to_utc();
        assert_eq!(timestamptz(t), "'2026-12-07T08:00:00.123456Z'::timestamptz");
    }
}
