//! Building and running the receiver: [`Application::build`] connects the store,
//! migrates, prepares one key cache per scanner and binds the listener (port 0 works),
//! so a caller knows the port before the server runs.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::MatchedPath;
use axum::http::Request;
use axum::routing::post;
use axum::Router;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

use crate::config::{redact_url, Settings};
use crate::signature::keys::{KeyCache, KeySource};
use crate::stats::{self, metrics::Metrics};
use crate::store::{self, RevocationStore};
use crate::webhook;

/// Shared by every request. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn RevocationStore>,
    /// Scanner name → its key cache.
    pub scanners: Arc<HashMap<String, Arc<KeyCache>>>,
    pub max_body: usize,
    pub retry_after: Duration,
    /// Whole-delivery deadline: past it the scanner gets 503 and nothing is written.
    pub request_timeout: Duration,
    /// Deadline for receiving the body.
    pub body_timeout: Duration,
    /// One permit per delivery being processed (`--max-concurrent-deliveries`).
    pub deliveries: Arc<tokio::sync::Semaphore>,
    pub metrics: Metrics,
    /// SHA-256 of `--admin-token`, if set.
    pub admin_token_digest: Option<[u8; 32]>,
    /// The owner-notification worker, when `--notify-webhook` is set; woken after a
    /// delivery revokes something.
    pub notifier: Option<crate::notify::Notifier>,
}

pub struct Application {
    listener: TcpListener,
    admin_listener: TcpListener,
    state: AppState,
    shutdown_timeout: Duration,
}

/// Builds the scanners' key caches from the settings.
pub fn key_caches(
    settings: &Settings,
    metrics: &Metrics,
) -> anyhow::Result<HashMap<String, Arc<KeyCache>>> {
    let mut scanners = HashMap::new();
    for spec in &settings.scanners {
        // The GitHub token goes to GitHub's endpoint only, never to another scanner's source.
        let bearer = (spec.name == "github")
            .then(|| settings.github_token.clone())
            .flatten();
        let source = KeySource::new(&spec.source, settings.keys_timeout, bearer)
            .map_err(anyhow::Error::msg)?;
        let cache = KeyCache::new(
            &spec.name,
            source,
            settings.keys_ttl,
            settings.keys_refetch_interval,
            metrics.clone(),
        );
        if scanners
            .insert(spec.name.clone(), Arc::new(cache))
            .is_some()
        {
            anyhow::bail!("scanner {:?} is configured twice", spec.name);
        }
    }
    Ok(scanners)
}

impl Application {
    /// Connects and migrates the database named in the settings, then binds.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let url = settings.database_url.expose_secret();
        let store = store::connect(url, &settings.pool)
            .await
            .with_context(|| format!("cannot open database {}", redact_url(url)))?;
        store.migrate().await.context("cannot migrate database")?;
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
        let scanners = key_caches(&settings, &metrics)?;
        let notifier = match &settings.notify {
            Some(n) => Some(crate::notify::Notifier::new(
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
                    .map(|t| stats::token_digest(t.expose_secret().trim())),
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
            Some(notifier) => Some(tokio::spawn(notifier.run(stop_rx.clone()))),
            None => {
                tracing::info!(
                    "owner notifications are queued in the database but not sent: no --notify-webhook"
                );
                None
            }
        };
        tracing::info!(%addr, %admin, "listening");
        let public = axum::serve(self.listener, router(self.state.clone()))
            .with_graceful_shutdown(stopped(stop_rx.clone()));
        let admin = axum::serve(self.admin_listener, stats::admin_router(self.state))
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

/// The public router: the webhook route and a JSON 404 for everything else.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/secret-scanning/{scanner}", post(webhook::receive))
        .merge(stats::health_router())
        .fallback(webhook::not_found)
        .method_not_allowed_fallback(webhook::method_not_allowed)
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let route = req
                    .extensions()
                    .get::<MatchedPath>()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default();
                tracing::info_span!("http", method = %req.method(), route)
            }),
        )
        .with_state(state)
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
