//! The supervised notification worker: [`supervise`] runs a worker future as a task of
//! its own and, when it panics, logs an ERROR, counts the restart
//! (`revoker_notify_worker_restarts_total`), pauses and starts it again, until it
//! returns (it stops when told to) or the stop signal comes during a pause.
//! [`WorkerStatus`] is what the admin `/readyz` reports: running or not, and restarts.
//!
//! Without this a panic in the worker (a bug, a poisoned lock) would end notifications
//! silently until the process restarts; deliveries would still be answered and queue
//! rows that nobody sends.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::Metrics;

/// The pause before a panicked worker is started again.
pub const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Whether the worker runs, and how often it was restarted after a panic. Cheap to
/// clone (shared).
#[derive(Debug, Clone, Default)]
pub struct WorkerStatus {
    inner: Arc<StatusInner>,
}

#[derive(Debug, Default)]
struct StatusInner {
    running: AtomicBool,
    restarts: AtomicU64,
}

impl WorkerStatus {
    /// True from the moment the supervisor is started until the worker has stopped
    /// (and between a panic and its restart: false).
    pub fn running(&self) -> bool {
        self.inner.running.load(Ordering::SeqCst)
    }

    /// Restarts after a panic since the process started.
    pub fn restarts(&self) -> u64 {
        self.inner.restarts.load(Ordering::SeqCst)
    }

    fn set_running(&self, running: bool) {
        self.inner.running.store(running, Ordering::SeqCst);
    }
}

/// Runs `worker()` until it returns; restarts it after a panic (ERROR log, counter,
/// `pause`) unless `stop` has turned true. Marks `status` running at once, before the
/// returned future is first polled, so readiness never sees a configured worker that
/// has not started yet as dead.
pub fn supervise<F, Fut>(
    mut worker: F,
    mut stop: watch::Receiver<bool>,
    status: WorkerStatus,
    metrics: Option<Metrics>,
    pause: Duration,
) -> impl Future<Output = ()> + Send
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    status.set_running(true);
    async move {
        loop {
            status.set_running(true);
            let outcome = tokio::spawn(worker()).await;
            status.set_running(false);
            let panic = match outcome {
                Ok(()) => break,
                Err(e) if e.is_panic() => panic_message(e.into_panic()),
                Err(_) => break, // cancelled: the runtime is going away
            };
            let restarts = status.inner.restarts.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(m) = &metrics {
                m.notify_worker_restarted();
            }
            tracing::error!(
                panic = %panic,
                restarts,
                pause_ms = pause.as_millis() as u64,
                "owner notifications: delivery worker panicked; restarting it"
            );
            if *stop.borrow() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        status.set_running(false);
    }
}

/// The text a panic carried (`panic!("…")` gives a `&str` or a `String`).
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "(no message)".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A worker that panics on its first run and, on its second, says it started and
    /// runs until stopped: restarted once, counted, running again; stopped cleanly.
    #[tokio::test]
    async fn a_worker_that_panics_is_restarted_counted_and_reported() {
        let metrics = Metrics::new();
        let status = WorkerStatus::default();
        let (stop_tx, stop_rx) = watch::channel(false);
        let runs = Arc::new(AtomicUsize::new(0));
        let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
        let worker = {
            let runs = Arc::clone(&runs);
            let stop_rx = stop_rx.clone();
            move || {
                let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                let started = started_tx.clone();
                let mut stop = stop_rx.clone();
                async move {
                    if run == 1 {
                        panic!("boom in run {run}");
                    }
                    started.send(run).unwrap();
                    let _ = stop.wait_for(|s| *s).await;
                }
            }
        };
        let supervisor = supervise(
            worker,
            stop_rx,
            status.clone(),
            Some(metrics.clone()),
            Duration::ZERO,
        );
        assert!(status.running(), "running from the start");
        let handle = tokio::spawn(supervisor);

        assert_eq!(started_rx.recv().await, Some(2), "the second run started");
        assert_eq!(status.restarts(), 1);
        assert!(status.running());
        assert!(
            metrics
                .render()
                .contains("revoker_notify_worker_restarts_total 1\n"),
            "{}",
            metrics.render()
        );

        stop_tx.send(true).unwrap();
        handle.await.unwrap();
        assert!(!status.running(), "stopped");
        assert_eq!((runs.load(Ordering::SeqCst), status.restarts()), (2, 1));
    }

    /// A panic after the stop signal is not followed by a restart.
    #[tokio::test]
    async fn no_restart_once_stopping() {
        let status = WorkerStatus::default();
        let (stop_tx, stop_rx) = watch::channel(false);
        stop_tx.send(true).unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&runs);
        let worker = move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { panic!("while stopping") }
        };
        supervise(
            worker,
            stop_rx,
            status.clone(),
            None,
            Duration::from_secs(3600),
        )
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(status.restarts(), 1);
        assert!(!status.running());
    }
}
