//! PostgreSQL backend, for several receiver instances on one database.
//!
//! Timestamps are `timestamptz`; hash lists are bound as one `bytea[]`. A whole delivery
//! is ONE statement (see `record.rs`), and notifications are claimed with
//! `FOR UPDATE SKIP LOCKED` (see `outbox.rs`), so any number of instances can share the
//! database. Behind a pooler in transaction mode (`--db-pooler transaction`, PgBouncer)
//! every statement is sent unnamed inside a transaction of its own (`send!` in
//! `backend.rs`; the revoking statement takes the deadline's transaction), and
//! migrations, which need a session, refuse (`StoreError::MigrateThroughPooler`).
//!
//! This file: the [`Backend`] impl (column codec, connect, migrate, ping, token
//! statements). `record.rs`: the revoking statement and `preview`. `pooled.rs`: the
//! revoking call behind a transaction-mode pooler. `hosts.rs`: several hosts in one URL
//! (libpq's syntax, `target_session_attrs`) and the failover watcher. `stats.rs`: the
//! stats statements. `outbox.rs`: the notification statements.

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use super::backend::{send, Backend, Background, Store};
use super::import::ImportRow;
use super::{ImportToken, ImportedBatch, NewToken, PoolSettings, StoreError};
use crate::domain::TokenHash;

mod hosts;
mod outbox;
mod pooled;
mod record;

#[doc(hidden)]
pub use record::run_record_statement;
mod stats;

impl Backend for Postgres {
    type Time = DateTime<Utc>;
    /// `integer` columns; a negative value is corrupt data (see [`Backend::decode_count`]).
    type Count = i32;
    type Day = NaiveDate;
    type HashList<'a> = Vec<&'a [u8]>;

    fn encode_time(t: DateTime<Utc>) -> DateTime<Utc> {
        t
    }

    fn decode_time(t: DateTime<Utc>) -> Result<DateTime<Utc>, StoreError> {
        Ok(t)
    }

    fn decode_count(n: i32) -> Result<u32, StoreError> {
        u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative count {n}")))
    }

    /// Positions are written from item indexes, so never negative.
    fn decode_position(n: i32) -> u32 {
        n as u32
    }

    fn decode_day(day: NaiveDate) -> Result<NaiveDate, StoreError> {
        Ok(day)
    }

    fn hash_list(hashes: &[TokenHash]) -> Vec<&[u8]> {
        hashes.iter().map(|h| h.as_bytes().as_slice()).collect()
    }

    fn rows_affected(done: &sqlx::postgres::PgQueryResult) -> u64 {
        done.rows_affected()
    }

    async fn connect(
        url: &str,
        settings: &PoolSettings,
    ) -> Result<(PgPool, Option<Background>), StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .acquire_timeout(settings.acquire_timeout);
        let hosts = hosts::Hosts::parse(url)?;
        if hosts.is_plain() {
            let options = PgConnectOptions::from_str(url)?.application_name("revoker");
            return Ok((pool.connect_with(options).await?, None));
        }
        // Several hosts, or a session to check: see `hosts.rs`.
        let hosts = std::sync::Arc::new(hosts);
        let fallback = settings.acquire_timeout;
        let (current, probe) = hosts.find(fallback).await.map_err(|why| {
            StoreError::Config(format!(
                "no database host fits target_session_attrs ({why})"
            ))
        })?;
        if hosts.options.len() > 1 && hosts.attrs == hosts::SessionAttrs::Any {
            tracing::warn!(
                "several database hosts without target_session_attrs=read-write: a standby \
                 that answers first is kept, and deliveries fail on it"
            );
        }
        let switched = std::sync::Arc::new(hosts::Switched::new());
        let attrs = hosts.attrs;
        let keeps = std::sync::Arc::clone(&switched);
        let pool = pool
            // Every new connection's session is checked, as libpq does.
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if attrs.fits(conn).await? {
                        Ok(())
                    } else {
                        Err(sqlx::Error::Configuration(
                            "the session does not fit target_session_attrs (a standby, or a \
                             read-only session): the watcher is looking for another host"
                                .into(),
                        ))
                    }
                })
            })
            // A connection made before the pool moved to another host is let go.
            .before_acquire(move |_, meta| {
                let keep = keeps.keeps(meta.age);
                Box::pin(async move { Ok(keep) })
            })
            .connect_with(hosts.options[current].clone())
            .await?;
        let watcher = hosts::watch(pool.clone(), hosts, current, probe, switched, fallback);
        Ok((pool, Some(watcher)))
    }

    fn known_migrations() -> usize {
        sqlx::migrate!("./migrations/postgres").iter().count()
    }

    async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/postgres").run(pool).await?;
        Ok(())
    }

    async fn ping(store: &Store<Self>) -> Result<(), StoreError> {
        let read_only: bool = send!(
            store,
            sqlx::query_scalar(
                "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only')::bool",
            ),
            fetch_one
        );
        if read_only {
            return Err(StoreError::ReadOnly);
        }
        Ok(())
    }

    async fn insert_tokens(store: &Store<Self>, tokens: &[NewToken]) -> Result<(), StoreError> {
        if tokens.is_empty() {
            return Ok(());
        }
        let hashes: Vec<&[u8]> = tokens
            .iter()
            .map(|t| t.hash.as_bytes().as_slice())
            .collect();
        let owners: Vec<&str> = tokens.iter().map(|t| t.owner.as_str()).collect();
        let created: Vec<DateTime<Utc>> = tokens.iter().map(|t| t.created_at).collect();
        let expires: Vec<DateTime<Utc>> = tokens.iter().map(|t| t.expires_at).collect();
        send!(
            store,
            sqlx::query(
                "INSERT INTO tokens (hash, owner, created_at, expires_at)
             SELECT * FROM unnest($1::bytea[], $2::text[], $3::timestamptz[], $4::timestamptz[])",
            )
            .bind(&hashes)
            .bind(&owners)
            .bind(&created)
            .bind(&expires),
            execute
        );
        Ok(())
    }

    async fn import_tokens(
        store: &Store<Self>,
        tokens: &[ImportToken],
    ) -> Result<ImportedBatch, StoreError> {
        let hashes: Vec<&[u8]> = tokens
            .iter()
            .map(|t| t.hash.as_bytes().as_slice())
            .collect();
        let owners: Vec<&str> = tokens.iter().map(|t| t.owner.as_str()).collect();
        let formats: Vec<&str> = tokens.iter().map(|t| t.format).collect();
        let created: Vec<DateTime<Utc>> = tokens.iter().map(|t| t.created_at).collect();
        let expires: Vec<DateTime<Utc>> = tokens.iter().map(|t| t.expires_at).collect();
        let revoked: Vec<Option<DateTime<Utc>>> = tokens.iter().map(|t| t.revoked_at).collect();
        // The last SELECT reads the snapshot the statement started from: the tokens
        // stored before it, never the rows its own INSERT adds.
        let rows: Vec<ImportRow> = send!(
            store,
            sqlx::query_as(
                "WITH input AS (
                     SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[],
                                          $4::timestamptz[], $5::timestamptz[], $6::timestamptz[])
                         AS i(hash, owner, format, created_at, expires_at, revoked_at)
                 ), inserted AS (
                     INSERT INTO tokens (hash, owner, format, created_at, expires_at, revoked_at)
                     SELECT hash, owner, format, created_at, expires_at, revoked_at FROM input
                     ON CONFLICT (hash) DO NOTHING
                     RETURNING hash
                 )
                 SELECT hash, true, NULL::text, NULL::text, false FROM inserted
                 UNION ALL
                 SELECT t.hash, false, t.owner, t.format, t.revoked_at IS NOT NULL
                 FROM tokens t JOIN input i ON t.hash = i.hash",
            )
            .bind(&hashes)
            .bind(&owners)
            .bind(&formats)
            .bind(&created)
            .bind(&expires)
            .bind(&revoked),
            fetch_all
        );
        ImportedBatch::from_rows(rows)
    }

    async fn revoke_imported(
        store: &Store<Self>,
        revocations: &[(TokenHash, DateTime<Utc>)],
    ) -> Result<Vec<TokenHash>, StoreError> {
        let hashes: Vec<&[u8]> = revocations
            .iter()
            .map(|(h, _)| h.as_bytes().as_slice())
            .collect();
        let at: Vec<DateTime<Utc>> = revocations.iter().map(|(_, at)| *at).collect();
        let revoked: Vec<(Vec<u8>,)> = send!(
            store,
            sqlx::query_as(
                "UPDATE tokens t SET revoked_at = r.revoked_at
                 FROM unnest($1::bytea[], $2::timestamptz[]) AS r(hash, revoked_at)
                 WHERE t.hash = r.hash AND t.revoked_at IS NULL
                 RETURNING t.hash",
            )
            .bind(&hashes)
            .bind(&at),
            fetch_all
        );
        revoked
            .into_iter()
            .map(|(hash,)| super::rows::hash_from(&hash))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    /// The function the database runs is this statement, character for character: the
    /// newest migration that (re)defines `revoker_record_delivery` has
    /// [`super::record::RECORD_SQL`] as its body, so a change to the constant needs a migration
    /// replacing the function.
    #[test]
    fn the_function_runs_this_statement() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let newest = files
            .iter()
            .rev()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .find(|text| text.contains("FUNCTION revoker_record_delivery("))
            .expect("a migration defines revoker_record_delivery");
        let body = newest
            .split_once("RETURN QUERY")
            .and_then(|(_, rest)| rest.rsplit_once(";\nEND"))
            .map(|(body, _)| body)
            .expect("RETURN QUERY …; END");
        assert_eq!(body, super::record::RECORD_SQL);
    }
}
