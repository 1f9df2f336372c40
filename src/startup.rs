//! Building and running the receiver: [`Application::build`] connects the store,
//! migrates, prepares one key cache per scanner and binds both listeners (port 0
//! works), so a caller knows the ports before the server runs;
//! [`Application::run_until_stopped`] serves until a shutdown future resolves, then
//! lets in-flight work finish within `--shutdown-timeout`.

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

pub struct Application {
    listener: TcpListener,
    admin_listener: TcpListener,
    state: AppState,
    shutdown_timeout: Duration,
}

/// Opens the database at `url` (a SQLite file is created if `pool` says so) and
/// applies pending migrations: what `serve`, `migrate` and `token mint` start with.
pub async fn open_and_migrate(
    url: &str,
    pool: &store::PoolSettings,
) -> anyhow::Result<Arc<dyn RevocationStore>> {
    let store = store::connect(url, pool)
        .await
        .with_context(|| format!("cannot open database {}", redact_url(url)))?;
    store.migrate().await.context("cannot migrate database")?;
    Ok(store)
}

impl Application {
    /// Connects and migrates the database named in the settings, then binds.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let url = settings.database_url.expose_secret();
        let store = open_and_migrate(url, &settings.pool).await?;
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
        let metrics = Metrics::new();
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
        Ok(Application {
            listener,
            admin_listener,
            shutdown_timeout: settings.shutdown_timeout,
            state: AppState {
                store,
                scanners: Arc::new(scanners),
                max_body: settings.max_body,
                retry_after: settings.retry_after,
                request_timeout: settings.request_timeout,
                body_timeout: settings.body_timeout,
                deliveries: Arc::new(tokio::sync::Semaphore::new(
                    settings.max_concurrent_deliveries.max(1),
                )),
                metrics,
                admin_token_digest: settings
                    .admin_token
                    .as_ref()
                    .map(|t| http::admin::token_digest(t.expose_secret().trim())),
                notifier,
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
        tracing::info!(%addr, %admin, "listening");
        let public = axum::serve(self.listener, http::public_router(self.state.clone()))
            .with_graceful_shutdown(stopped(stop_rx.clone()));
        let admin = axum::serve(self.admin_listener, http::admin_router(self.state))
            .with_graceful_shutdown(stopped(stop_rx));
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

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received, finishing in-flight deliveries");
}
