//! Several PostgreSQL hosts in one URL, as libpq takes them, and finding the primary
//! again after a failover without a restart.
//!
//! `postgres://user@h1:5432,h2:5432/db?target_session_attrs=read-write&connect_timeout=5`
//! (PostgreSQL docs, "Connection Strings", "Specifying Multiple Hosts"). sqlx takes one
//! host, so the list is parsed here into one set of connect options per host (the rest of
//! the URL the same for each) and, as libpq does, the hosts are tried in order and the
//! first whose session fits `target_session_attrs` is kept:
//!
//! - `any` (the default): the first host that accepts a connection;
//! - `read-write`: one whose session takes writes (`SHOW transaction_read_only` is `off`);
//! - `primary`: one not in recovery (`pg_is_in_recovery()` is false).
//!
//! `read-only`, `standby` and `prefer-standby` are refused: revoker writes. A host that
//! does not answer within `connect_timeout` seconds (libpq's parameter; default
//! `--db-timeout`) is passed over.
//!
//! The pool connects to the host found. With more than one host a watcher checks the
//! session it found every [`CHECK_EVERY`] on a connection of its own; when that fails
//! (the host went away, or it no longer fits: a primary restarted as a standby) it looks
//! for a host in order again and points the pool's new connections at it. Connections
//! made before the switch are closed when next handed out, so the pool lets go of the
//! dead or read-only host by itself; a statement in flight on one fails (503, nothing
//! recorded unless its `COMMIT` went through, and then the retry is answered from the
//! report). Every new connection's session is checked against `target_session_attrs`
//! too (one round trip per connection, not per statement), so none to a read-only host
//! is ever used.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::domain::redact::UrlParts;
use crate::store::backend::Background;
use crate::store::StoreError;

/// How often the watcher checks the session it found.
pub(super) const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Which sessions a URL's `target_session_attrs` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionAttrs {
    Any,
    ReadWrite,
    Primary,
}

impl SessionAttrs {
    fn parse(value: &str) -> Result<Self, StoreError> {
        match value {
            "any" => Ok(SessionAttrs::Any),
            "read-write" => Ok(SessionAttrs::ReadWrite),
            "primary" => Ok(SessionAttrs::Primary),
            other => Err(StoreError::Config(format!(
                "target_session_attrs={other} is not supported: revoker writes, so it takes \
                 any, read-write or primary"
            ))),
        }
    }

    /// Whether the session on `conn` fits: `Ok(false)` for one that does not. (By the
    /// simple protocol: behind a transaction-mode pooler an unnamed statement's two
    /// exchanges could land on two server connections.)
    pub(crate) async fn fits(self, conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
        use sqlx::Row;
        let (sql, fits_when) = match self {
            SessionAttrs::Any => return Ok(true),
            SessionAttrs::ReadWrite => ("SHOW transaction_read_only", "off"),
            SessionAttrs::Primary => ("SELECT pg_is_in_recovery()::text", "false"),
        };
        let row = sqlx::Executor::fetch_one(conn, sqlx::raw_sql(sql)).await?;
        Ok(row.try_get::<String, _>(0)? == fits_when)
    }
}

/// A database URL's hosts, in order, each with the rest of the URL.
#[derive(Debug, Clone)]
pub(crate) struct Hosts {
    /// Connect options per host, in the URL's order.
    pub(crate) options: Vec<PgConnectOptions>,
    /// `host:port` per host, for logs (no user, no password).
    pub(crate) names: Vec<String>,
    pub(crate) attrs: SessionAttrs,
    pub(crate) connect_timeout: Option<Duration>,
}

impl Hosts {
    /// Parses `url`: a `postgres://` or `postgresql://` URL with one host or a
    /// comma-separated list (`[…]` around an IPv6 address), `target_session_attrs` and
    /// `connect_timeout` taken out of its query (sqlx would ignore them with a warning).
    pub(crate) fn parse(url: &str) -> Result<Hosts, StoreError> {
        let bad = |why: &str| StoreError::Config(format!("the database URL {why}"));
        let UrlParts {
            scheme,
            userinfo,
            hosts: host_list,
            path,
            query,
        } = UrlParts::split(url).ok_or_else(|| bad("has no scheme://"))?;
        let mut attrs = SessionAttrs::Any;
        let mut connect_timeout = None;
        let mut kept = Vec::new();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            // Keys and values percent-decoded, as sqlx reads them.
            let Some((key, value)) = url::form_urlencoded::parse(pair.as_bytes()).next() else {
                continue;
            };
            match key.as_ref() {
                "target_session_attrs" => attrs = SessionAttrs::parse(&value)?,
                "connect_timeout" => {
                    let secs: u64 = value
                        .parse()
                        .map_err(|_| bad("has a connect_timeout that is not whole seconds"))?;
                    // libpq: 0 waits forever; below 2 s it waits 2 s.
                    connect_timeout = (secs > 0).then(|| Duration::from_secs(secs.max(2)));
                }
                _ => kept.push(pair),
            }
        }
        let query = if kept.is_empty() {
            String::new()
        } else {
            format!("?{}", kept.join("&"))
        };
        let user = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        let mut options = Vec::new();
        let mut names = Vec::new();
        for host in host_list.split(',') {
            if host.is_empty() && host_list.contains(',') {
                return Err(bad("has an empty host in its host list"));
            }
            let one = format!("{scheme}://{user}{host}{path}{query}");
            options.push(PgConnectOptions::from_str(&one)?.application_name("revoker"));
            names.push(if host.is_empty() {
                "localhost".to_owned()
            } else {
                host.to_owned()
            });
        }
        Ok(Hosts {
            options,
            names,
            attrs,
            connect_timeout,
        })
    }

    /// One host and no session to check: connected as before multi-host URLs.
    pub(crate) fn is_plain(&self) -> bool {
        self.options.len() == 1 && self.attrs == SessionAttrs::Any
    }

    /// A connection to host `i` whose session fits, within the connect timeout
    /// (`fallback` when the URL sets none); else why not.
    async fn try_host(&self, i: usize, fallback: Duration) -> Result<PgConnection, String> {
        let wait = self.connect_timeout.unwrap_or(fallback);
        let attempt = async {
            let mut conn = self.options[i].connect().await.map_err(|e| e.to_string())?;
            match self.attrs.fits(&mut conn).await {
                Ok(true) => Ok(conn),
                Ok(false) => Err("its session does not fit (a standby?)".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        };
        match tokio::time::timeout(wait, attempt).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {wait:?}")),
        }
    }

    /// The first host, in order, whose session fits, with a connection to it; else why
    /// each host was passed over (sqlx's errors, which never hold the password).
    pub(crate) async fn find(&self, fallback: Duration) -> Result<(usize, PgConnection), String> {
        let mut why = Vec::new();
        for i in 0..self.options.len() {
            match self.try_host(i, fallback).await {
                Ok(conn) => return Ok((i, conn)),
                Err(e) => why.push(format!("{}: {e}", self.names[i])),
            }
        }
        Err(why.join("; "))
    }
}

/// When the pool was last pointed at another host, in nanoseconds since `epoch`: a
/// connection made before is closed when next handed out. (sqlx dates a connection
/// from the end of its connect and `after_connect`: one begun with the old host's
/// options and finished after the switch counts as made after it; with
/// `target_session_attrs` its `after_connect` check refuses it if that host no longer
/// fits.)
#[derive(Debug)]
pub(crate) struct Switched {
    epoch: Instant,
    at_ns: AtomicU64,
}

impl Switched {
    pub(crate) fn new() -> Self {
        Switched {
            epoch: Instant::now(),
            at_ns: AtomicU64::new(0),
        }
    }

    fn now(&self) {
        let ns = self.epoch.elapsed().as_nanos() as u64;
        self.at_ns.store(ns.max(1), Ordering::Release);
    }

    /// Whether a connection `age` old was made after the last switch (or there was none).
    pub(crate) fn keeps(&self, age: Duration) -> bool {
        let at = self.at_ns.load(Ordering::Acquire);
        if at == 0 {
            return true;
        }
        let made = self.epoch.elapsed().saturating_sub(age);
        made.as_nanos() as u64 >= at
    }
}

/// Starts the watcher for `pool`, which connects to host `current` (`conn` a connection
/// to it whose session fit). See the module docs.
pub(crate) fn watch(
    pool: PgPool,
    hosts: Arc<Hosts>,
    mut current: usize,
    conn: PgConnection,
    switched: Arc<Switched>,
    fallback: Duration,
) -> Background {
    let task = tokio::spawn(async move {
        let mut probe = Some(conn);
        let mut searching = false;
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            if pool.is_closed() {
                return;
            }
            let healthy = match probe.as_mut() {
                Some(conn) => {
                    let check = async {
                        conn.ping().await?;
                        hosts.attrs.fits(conn).await
                    };
                    matches!(tokio::time::timeout(fallback, check).await, Ok(Ok(true)))
                }
                None => false,
            };
            if healthy {
                continue;
            }
            if let Some(old) = probe.take() {
                let _ = tokio::time::timeout(Duration::from_secs(1), old.close()).await;
            }
            let (found, conn) = match hosts.find(fallback).await {
                Ok(found) => found,
                Err(why) => {
                    // At WARN once per outage, then at DEBUG every CHECK_EVERY.
                    if searching {
                        tracing::debug!(%why, "no database host fits target_session_attrs yet");
                    } else {
                        tracing::warn!(%why, "no database host fits target_session_attrs; looking");
                    }
                    searching = true;
                    continue;
                }
            };
            searching = false;
            probe = Some(conn);
            if found != current {
                tracing::warn!(
                    from = %hosts.names[current],
                    to = %hosts.names[found],
                    "the database moved: new connections go to the host found"
                );
                pool.set_connect_options(hosts.options[found].clone());
                switched.now();
                current = found;
            }
        }
    });
    Background::new(task.abort_handle())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_list_becomes_one_set_of_options_per_host() {
        let h = Hosts::parse(
            "postgres://rev:pw@db1:5433,db2,[::1]:5434/revoker?sslmode=disable&target_session_attrs=read-write&connect_timeout=1",
        )
        .unwrap();
        assert_eq!(h.names, ["db1:5433", "db2", "[::1]:5434"]);
        assert_eq!(h.attrs, SessionAttrs::ReadWrite);
        assert_eq!(
            h.connect_timeout,
            Some(Duration::from_secs(2)),
            "libpq's minimum"
        );
        let ports: Vec<u16> = h.options.iter().map(|o| o.get_port()).collect();
        assert_eq!(ports, [5433, 5432, 5434]);
        let hosts: Vec<&str> = h.options.iter().map(|o| o.get_host()).collect();
        assert_eq!(hosts, ["db1", "db2", "[::1]"], "as sqlx reads an IPv6 host");
        for o in &h.options {
            assert_eq!(o.get_username(), "rev");
            assert_eq!(o.get_database(), Some("revoker"));
        }
        assert!(!h.is_plain());
    }

    #[test]
    fn keys_are_read_percent_decoded_as_sqlx_reads_them() {
        let h =
            Hosts::parse("postgres://u@db1,db2/r?target%5Fsession%5Fattrs=read%2Dwrite").unwrap();
        assert_eq!(h.attrs, SessionAttrs::ReadWrite);
        for o in &h.options {
            assert_eq!(o.get_application_name(), Some("revoker"));
        }
    }

    #[test]
    fn one_host_without_session_attrs_is_plain() {
        let h = Hosts::parse("postgres://u@db/revoker").unwrap();
        assert!(h.is_plain());
        assert_eq!(h.connect_timeout, None);
        let h = Hosts::parse("postgresql://u@db/revoker?connect_timeout=0").unwrap();
        assert!(h.is_plain() && h.connect_timeout.is_none());
        assert!(
            !Hosts::parse("postgres://u@db/r?target_session_attrs=primary")
                .unwrap()
                .is_plain()
        );
    }

    #[test]
    fn what_revoker_cannot_use_is_refused_in_words() {
        for (url, says) in [
            (
                "postgres://u@db/r?target_session_attrs=standby",
                "not supported",
            ),
            (
                "postgres://u@db/r?target_session_attrs=read-only",
                "not supported",
            ),
            ("postgres://u@db/r?connect_timeout=soon", "whole seconds"),
            ("postgres://u@db1,,db2/r", "empty host"),
        ] {
            let err = Hosts::parse(url).unwrap_err().to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
    }

    #[test]
    fn a_connection_is_kept_only_if_made_after_the_last_switch() {
        let s = Switched::new();
        assert!(s.keeps(Duration::from_secs(3600)), "no switch yet");
        std::thread::sleep(Duration::from_millis(20));
        s.now();
        assert!(
            !s.keeps(Duration::from_millis(15)),
            "made before the switch"
        );
        std::thread::sleep(Duration::from_millis(20));
        assert!(s.keeps(Duration::from_millis(5)), "made after it");
    }
}
