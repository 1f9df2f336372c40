//! Building and running the receiver: [`Application::build`] connects the store,
//! migrates, prepares one key cache per scanner and binds both listeners (port 0
//! works), so a caller knows the ports before the server runs;
//! [`Application::run_until_stopped`] serves until a shutdown future resolves, then
//! lets in-flight work finish within `--shutdown-timeout`.
//!
//! Both listeners run the same accept loop (`listen.rs`): at most `--max-connections`
//! (public) or `--admin-max-connections` (admin) connections are open (accept waits for
//! a free permit), a connection whose request head does not arrive within
//! `--header-timeout` (counted from its start or from the previous answer, so idle
//! keep-alive connections and connections that never send a byte are closed too) is
//! closed, and a head over 64 KiB is answered 431. [`fit_open_file_limit`] keeps both
//! caps and a reserve within the open-file limit, so admin connections cannot take the
//! descriptors the public listener needs. With `--tls-cert` the public listener speaks
//! HTTPS ([`crate::tls`]); the TLS handshake counts against the same deadline. The admin
//! listener is private and plain HTTP.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::domain::redact::redact_url;
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::signature;
use crate::store::{self, RevocationStore};
use crate::support::SecretDigest;
use crate::tls::Tls;

mod database;
mod listen;

pub use database::{connect, direct, open_and_migrate, refuse_newer_schema};
pub use listen::{fd_reserve, fit_open_file_limit};

use listen::ConnectionLimits;

pub struct Application {
    listener: TcpListener,
    admin_listener: TcpListener,
    state: AppState,
    shutdown_timeout: Duration,
    limits: ConnectionLimits,
    admin_limits: ConnectionLimits,
    /// HTTPS on the public listener.
    tls: Option<Arc<Tls>>,
    /// SIGHUP, installed at build so it never ends the process (its default): it reloads
    /// the TLS certificate, and without TLS it is only logged.
    hangup: tokio::signal::unix::Signal,
    retention: Option<Duration>,
}

impl Application {
    /// Connects and migrates the database named in the settings, then binds.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let url = settings.database_url.expose_secret();
        let migrate_url = settings
            .migrate_database_url
            .as_ref()
            .map(|u| u.expose_secret());
        let store = open_and_migrate(url, migrate_url, &settings.pool).await?;
        tracing::info!(
            backend = %store::backend_name(url),
            database = %redact_url(url),
            pool = settings.pool.max_connections,
            pooler = settings.pool.pooler.as_str(),
            "database opened and migrated"
        );
        // A database that cannot take writes would answer every delivery 503: say so now.
        store
            .ping()
            .await
            .with_context(|| format!("database {} is not usable", redact_url(url)))?;
        Self::build_with_store(settings, store).await
    }

    /// Binds with an already opened (and migrated) store.
    pub async fn build_with_store(
        settings: Settings,
        store: Arc<dyn RevocationStore>,
    ) -> anyhow::Result<Self> {
        // An empty token would let every request in (a trailing comma in
        // REVOKER_REVOCATION_API_TOKENS, a variable that is set but empty).
        if settings
            .revocation_api_tokens
            .iter()
            .any(|t| t.expose_secret().trim().len() < 16)
        {
            anyhow::bail!(
                "a --revocation-api-token (REVOKER_REVOCATION_API_TOKENS) is empty or shorter than 16 characters; every one must be a real secret"
            );
        }
        for (id, secret) in &settings.holder.introspection_clients {
            if id.is_empty() || id.contains(':') || secret.expose_secret().chars().count() < 16 {
                anyhow::bail!(
                    "an --introspection-client (REVOKER_INTROSPECTION_CLIENTS) needs an ID without a colon and a secret of at least 16 characters"
                );
            }
        }
        // Names whose reports come from elsewhere: a scanner named so would mix with them.
        for (name, whose) in [
            (http::revocation_api::SCANNER, "the Token Revocation API's"),
            (
                crate::domain::alert::MANUAL_SCANNER,
                "`revoker token revoke`'s",
            ),
            (
                crate::domain::alert::HOLDER_SCANNER,
                "the holder endpoints'",
            ),
        ] {
            if settings.scanners.iter().any(|s| s.name == name) {
                anyhow::bail!(
                    "scanner name {name:?} is {whose} own (its reports and metrics); choose another"
                );
            }
        }
        let metrics = Metrics::new();
        let protocols = signature::protocols_for(
            settings.scanners.iter().map(|s| s.name.as_str()),
            &settings.scanner_protocols,
            &settings.scanner_header_prefixes,
        )?;
        let scanners = signature::caches_for(
            &settings.scanners,
            settings.key_timing(),
            settings.github_token.as_ref(),
            &metrics,
        )?;
        let notifier = match &settings.notify {
            Some(n) => Some(Notifier::new(
                Arc::clone(&store),
                n.clone(),
                Some(metrics.clone()),
            )?),
            None => None,
        };
        // Warm the key caches without delaying start-up; a delivery that arrives first
        // waits for the same fetch (single-flight).
        for cache in scanners.values() {
            let cache = Arc::clone(cache);
            tokio::spawn(async move {
                let _ = cache.load().await;
            });
        }
        if settings.retention.is_some_and(|r| r.is_zero()) {
            anyhow::bail!(
                "--retention must be longer than 0 (GitHub's partner agreement: at most 30d)"
            );
        }
        if let Some(retention) = settings
            .retention
            .filter(|r| *r > Duration::from_secs(30 * 24 * 3600))
        {
            tracing::warn!(
                retention = %humantime::format_duration(retention),
                "--retention is longer than the 30 days GitHub's partner agreement allows for url, source and type"
            );
        }
        let tls = match &settings.tls {
            Some(t) => Some(Arc::new(
                Tls::load(t).context("cannot serve HTTPS (--tls-cert, --tls-key)")?,
            )),
            None => None,
        };
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot listen for SIGHUP")?;
        let listener = TcpListener::bind(&settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let admin_listener = TcpListener::bind(&settings.admin_listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin)", settings.admin_listen))?;
        if settings
            .admin_token
            .as_ref()
            .is_some_and(|t| t.expose_secret().trim().is_empty())
        {
            anyhow::bail!("--admin-token is empty; give it a value or leave it unset");
        }
        let admin_ip = admin_listener.local_addr()?.ip();
        if !admin_ip.is_loopback() && settings.admin_token.is_none() {
            anyhow::bail!(
                "--admin-listen {} is not a loopback address: set --admin-token (REVOKER_ADMIN_TOKEN) \
                 so metrics and stats are not open to the network",
                settings.admin_listen
            );
        }
        let worst = http::intake::verified_estimate_max(settings.max_body);
        if settings.verified_memory_budget < worst {
            anyhow::bail!(
                "--verified-memory-budget {} is below what one delivery of --max-body {} may \
                 need ({worst} bytes): such a delivery would be refused forever",
                settings.verified_memory_budget,
                settings.max_body
            );
        }
        // A body's buffer is charged up to --max-body less its free first 64 KiB; a budget
        // smaller than that could never hold one, and its waiter would hold up every
        // large body behind it (the budget is handed out in arrival order).
        let largest_charge = settings
            .max_body
            .saturating_sub(http::intake::FREE_BODY_BYTES);
        if settings.unverified_body_budget < largest_charge {
            anyhow::bail!(
                "--unverified-body-budget {} is below what one body of --max-body {} may \
                 hold ({largest_charge} bytes beyond its first 64 KiB): raise it to at least that",
                settings.unverified_body_budget,
                settings.max_body
            );
        }
        Ok(Application {
            listener,
            admin_listener,
            shutdown_timeout: settings.shutdown_timeout,
            tls,
            hangup,
            retention: settings.retention,
            limits: ConnectionLimits {
                name: "public",
                max_connections: settings.max_connections.max(1),
                header_timeout: settings.header_timeout,
            },
            admin_limits: ConnectionLimits {
                name: "admin",
                max_connections: settings.admin_max_connections.max(1),
                header_timeout: settings.header_timeout,
            },
            state: AppState {
                store,
                scanners: Arc::new(scanners),
                protocols: Arc::new(protocols),
                max_body: settings.max_body,
                retry_after: settings.retry_after,
                request_timeout: settings.request_timeout,
                body_timeout: settings.body_timeout,
                deliveries: Arc::new(tokio::sync::Semaphore::new(
                    settings.max_concurrent_deliveries.max(1),
                )),
                unverified_budget: http::intake::Budget::new(settings.unverified_body_budget),
                verified_budget: http::intake::Budget::new(settings.verified_memory_budget),
                metrics,
                admin_token: settings
                    .admin_token
                    .as_ref()
                    .map(|t| SecretDigest::of(t.expose_secret().trim())),
                notifier,
                scanner_quiet_after: settings.scanner_quiet_after,
                formats: settings.formats,
                cpu: http::cpu::Cpu::default(),
                holder: http::holder::Holder::new(&settings.holder, settings.pool.max_connections),
                revocation_api: (!settings.revocation_api_tokens.is_empty()).then(|| {
                    Arc::new(http::revocation_api::RevocationApi {
                        tokens: settings
                            .revocation_api_tokens
                            .iter()
                            .map(|t| SecretDigest::of(t.expose_secret().trim()))
                            .collect(),
                        types: settings.revocation_api_types.clone().into(),
                    })
                }),
            },
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(0)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves both listeners until `shutdown` resolves, then lets in-flight requests
    /// finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let addr = self.listener.local_addr()?;
        let admin = self.admin_listener.local_addr()?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let grace = self.shutdown_timeout;
        let mut deadline_rx = stop_rx.clone();
        let deadline = async move {
            let _ = deadline_rx.wait_for(|stop| *stop).await;
            tokio::time::sleep(grace).await;
        };
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let worker = match self.state.notifier.clone() {
            Some(notifier) => Some(tokio::spawn(notifier.run_supervised(stop_rx.clone()))),
            None => {
                tracing::info!(
                    "owner notifications are queued in the database but not sent: no --notify-webhook"
                );
                None
            }
        };
        if let Some(retention) = self.retention {
            tokio::spawn(crate::retention::run(
                Arc::clone(&self.state.store),
                retention,
                stopped(stop_rx.clone()),
            ));
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        tracing::info!(%addr, %admin, %scheme, "listening");
        match &self.tls {
            Some(tls) => {
                tokio::spawn(Arc::clone(tls).watch(self.hangup, stopped(stop_rx.clone())));
            }
            None => {
                tokio::spawn(log_hangups(self.hangup));
            }
        }
        let tls = self.tls;
        let public = listen::serve(
            self.listener,
            http::public_router(self.state.clone()),
            self.limits,
            tls,
            stopped(stop_rx.clone()),
        );
        let admin = listen::serve(
            self.admin_listener,
            http::admin_router(self.state),
            self.admin_limits,
            None,
            stopped(stop_rx),
        );
        // The notification worker records the round it is sending before it stops;
        // all of it within the same grace.
        let all = async {
            let (public, admin) = tokio::join!(public, admin);
            if let Some(worker) = worker {
                if let Err(e) = worker.await {
                    tracing::error!(error = %e, "owner notifications: delivery worker panicked");
                }
            }
            (public, admin)
        };
        tokio::select! {
            (public, admin) = all => public.and(admin),
            _ = deadline => {
                tracing::warn!(
                    grace_seconds = grace.as_secs(),
                    "in-flight requests did not finish within the shutdown timeout; exiting"
                );
                Ok(())
            }
        }
    }
}

/// Without TLS there is nothing to reload: a SIGHUP (a habit of `systemctl reload`) is
/// logged and otherwise ignored, rather than ending the process.
async fn log_hangups(mut hangup: tokio::signal::unix::Signal) {
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP received: nothing to reload (no --tls-cert); still serving");
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled: call it before the service says it is listening, so
/// a SIGTERM that arrives right after is a graceful stop, never the default (death by
/// the signal).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let (interrupt, term) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(interrupt) => {},
                _ = wait(term) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutdown signal received, finishing in-flight deliveries");
    }
}
