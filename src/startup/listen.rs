//! The accept loop both listeners run ([`serve`]), and the file descriptors it may use
//! ([`fit_open_file_limit`]).
//!
//! Each listener has its own connection cap, `--max-connections` (public) and
//! `--admin-max-connections` (admin): a permit is taken *before* accept, so when all are
//! taken accept waits and new connections queue in the kernel's backlog, holding no
//! descriptor of this process. Both listeners close a connection whose request head does
//! not arrive within `--header-timeout` (counted from its start or from the previous
//! answer, so idle keep-alive connections and connections that never send a byte are
//! closed too; with TLS, the handshake counts against the same deadline), and buffer at
//! most 64 KiB of a head (a longer one is answered 431).
//!
//! At start `serve` raises its soft open-file limit to the hard limit; the two caps and
//! a reserve for everything else ([`fd_reserve`]) must fit in it, so no number of admin
//! connections can leave the public listener without a descriptor. When they do not,
//! `--max-connections` is lowered to fit (a WARN says so); a limit that leaves no room
//! for a single public connection stops `serve`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Settings;
use crate::tls::Tls;

/// What a listener's accept loop enforces.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConnectionLimits {
    /// `public` or `admin`, for the logs.
    pub name: &'static str,
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// A listener's accept loop: one task per connection, each holding one of
/// `max_connections` permits; when none is free, accept waits (new connections queue
/// in the kernel's backlog). On `stop`, accepting ends and every connection is told to
/// close after its in-flight request; resolves when all have closed (the caller caps
/// that wait with `--shutdown-timeout`).
pub(super) async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ConnectionLimits,
    tls: Option<Arc<Tls>>,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    // Turns true when accepting ends: TLS handshakes still going give up.
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // hyper's read buffer would otherwise grow to ~400 KiB for a request head that
        // never ends; 64 KiB per connection is what the memory bound counts (a head
        // longer than that is refused with 431).
        .max_buf_size(64 << 10);
    let mut stop = std::pin::pin!(stop);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => permit.expect("never closed"),
            () = &mut stop => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_error(limits.name, e).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // The answer goes out in more than one write when it is streamed: no Nagle delay.
        let _ = stream.set_nodelay(true);
        // The peer's address reaches the handlers as axum's `ConnectInfo`.
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            router.clone(),
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req
            },
        ));
        let watcher = graceful.watcher();
        let (builder, tls) = (builder.clone(), tls.clone());
        let accepted_at = tokio::time::Instant::now();
        let mut stopping = stopping_rx.clone();
        tokio::spawn(async move {
            let served = match tls {
                None => {
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), service))
                        .await
                }
                // The handshake and the first request head share one deadline counted
                // from accept: a client that stalls in either holds its connection no
                // longer than --header-timeout, as without TLS.
                Some(tls) => {
                    tracing::debug!("TLS handshake started");
                    let deadline = accepted_at + limits.header_timeout;
                    let handshake = tokio::select! {
                        h = tokio::time::timeout_at(deadline, tls.accept(stream)) => h,
                        // Shutting down: a handshake still going is dropped, not waited for.
                        _ = stopping.wait_for(|stop| *stop) => Ok(Err(std::io::ErrorKind::Interrupted.into())),
                    };
                    match handshake {
                        Ok(Ok(stream)) => {
                            // What is left of the deadline (later heads on this connection
                            // get no more: a slow handshake buys no slack).
                            let left =
                                deadline.saturating_duration_since(tokio::time::Instant::now());
                            let mut builder = builder;
                            builder.header_read_timeout(left.max(Duration::from_millis(1)));
                            watcher
                                .watch(builder.serve_connection(TokioIo::new(stream), service))
                                .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake did not finish within --header-timeout");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection closed with an error");
            }
            drop(permit);
        });
    }
    let _ = stopping_tx.send(true);
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A failed accept: a connection reset before it was accepted is nothing; anything
/// else (out of file descriptors) is logged and accepting pauses briefly instead of
/// spinning.
async fn accept_error(listener: &'static str, e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, listener, "cannot accept a connection; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Descriptors that are neither listener's connections: the standard streams, the
/// runtime, the two listening sockets, signal handling, key and TLS files read at
/// (re)load, and slack.
const FIXED_RESERVE: u64 = 32;

/// Descriptors `serve` keeps besides its two listeners' connections: [`FIXED_RESERVE`],
/// three per database connection (a SQLite connection holds the database, its WAL and
/// its shared-memory file; PostgreSQL one socket), two per scanner (a key fetch and the
/// connection kept from the last one) and, with `--notify-webhook`, one per notification
/// sent at once.
pub fn fd_reserve(settings: &Settings) -> u64 {
    FIXED_RESERVE
        + 3 * u64::from(settings.pool.max_connections)
        + 2 * settings.scanners.len() as u64
        + settings.notify.as_ref().map_or(0, |n| u64::from(n.batch))
}

/// How the public cap fits beside the admin cap and the reserve in `open_files`:
/// `Ok(public)` unchanged or lowered to what is left, `Err(())` when nothing is left.
fn fit(open_files: u64, public: u64, admin: u64, reserve: u64) -> Result<u64, ()> {
    let left = open_files.saturating_sub(admin.saturating_add(reserve));
    match left {
        0 => Err(()),
        left => Ok(public.min(left)),
    }
}

/// Raises the soft limit of open files to the hard limit, then makes the two
/// connection caps and [`fd_reserve`] fit in it: `--max-connections` is lowered (with a
/// WARN) when they do not, and an error is returned when even the admin cap and the
/// reserve leave no room for a public connection. Call it before
/// [`super::Application::build`].
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every unix
pub fn fit_open_file_limit(settings: &mut Settings) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return Ok(());
        }
        let before = limit.rlim_cur;
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
                limit.rlim_cur = before;
            }
        }
        if limit.rlim_cur != before {
            tracing::debug!(
                from = before as u64,
                to = limit.rlim_cur as u64,
                "raised the open-file limit"
            );
        }
        if limit.rlim_cur == libc::RLIM_INFINITY {
            return Ok(());
        }
        let open_files = limit.rlim_cur as u64;
        let (public, admin) = (
            settings.max_connections as u64,
            settings.admin_max_connections as u64,
        );
        let reserve = fd_reserve(settings);
        match fit(open_files, public, admin, reserve) {
            Ok(fits) if fits == public => {}
            Ok(lowered) => {
                tracing::warn!(
                    open_files,
                    asked = public,
                    max_connections = lowered,
                    admin_max_connections = admin,
                    reserve,
                    "the open-file limit cannot hold --max-connections + --admin-max-connections \
                     + a reserve (database pool, key fetches, notifications, files): lowered \
                     --max-connections to fit; raise the limit (ulimit -n, LimitNOFILE) to serve more"
                );
                settings.max_connections = lowered as usize;
            }
            Err(()) => anyhow::bail!(
                "the open-file limit ({open_files}) leaves no room for the public listener: \
                 --admin-max-connections ({admin}) and the reserve for the database pool, key \
                 fetches, notifications and files ({reserve}) take it all; raise the limit \
                 (ulimit -n, LimitNOFILE) or lower --admin-max-connections or --db-max-connections"
            ),
        }
    }
    #[cfg(not(unix))]
    let _ = settings;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_cap_is_lowered_to_what_the_admin_cap_and_the_reserve_leave() {
        // Room for all: unchanged.
        assert_eq!(fit(65_536, 4096, 64, 64), Ok(4096));
        assert_eq!(fit(4096 + 64 + 64, 4096, 64, 64), Ok(4096));
        // One short: lowered by one.
        assert_eq!(fit(4096 + 64 + 63, 4096, 64, 64), Ok(4095));
        assert_eq!(fit(1024, 4096, 64, 64), Ok(896));
        // One public connection left.
        assert_eq!(fit(129, 4096, 64, 64), Ok(1));
        // None.
        assert_eq!(fit(128, 4096, 64, 64), Err(()));
        assert_eq!(fit(10, 4096, 64, 64), Err(()));
    }

    #[test]
    fn the_reserve_counts_the_pool_the_scanners_and_the_notifications() {
        let mut s = Settings::new("sqlite://x.db", Vec::new());
        s.pool.max_connections = 10;
        assert_eq!(fd_reserve(&s), 32 + 30);
        s.scanners = vec!["github=keys.json".parse().unwrap()];
        assert_eq!(fd_reserve(&s), 32 + 30 + 2);
        s.notify = Some(crate::notify::NotifySettings::new(
            "https://example.com/hook",
            "secret",
        ));
        assert_eq!(fd_reserve(&s), 32 + 30 + 2 + 32);
    }
}
