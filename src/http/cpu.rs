//! A large body's CPU-bound work, off tokio's worker threads.
//!
//! The signature over the raw bytes, the two JSON passes (check digits and a SHA-256
//! per item), the body's SHA-256 and GitLab's salvage scan take time in proportion to
//! the body: over 100 ms for 8 MiB of items on this project's 2-core machine. On
//! tokio's worker threads (one per core), that is time in which no other request on
//! that thread moves: a 1-token delivery behind it waits for it. Above
//! [`OFFLOAD_ABOVE`] bytes, the work runs on tokio's blocking pool instead, at most one
//! job per core at a time ([`Cpu`]'s permits): more would only share the same cores,
//! and take them from the workers. The operating system then shares the cores between
//! the workers and the large deliveries' threads, so a small request waits a time
//! slice, not a whole body's work. A body at or below the threshold is cheaper to do at
//! once than to hand over.
//!
//! A job keeps its permit until it ends, also when the request that started it is
//! dropped (a timeout): the permits count what the cores are doing.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// Bodies of more bytes than this have their CPU-bound work done off the async threads.
pub const OFFLOAD_ABOVE: usize = 64 << 10;

/// The blocking pool's share for large bodies' work: one permit per core.
#[derive(Clone, Debug)]
pub struct Cpu {
    permits: Arc<Semaphore>,
}

impl Default for Cpu {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cores)
    }
}

impl Cpu {
    /// At most `jobs` (at least 1) large bodies' work at a time.
    pub fn new(jobs: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(jobs.max(1))),
        }
    }

    /// `work(…)` for a body of `len` bytes: at once when `len` is at most
    /// [`OFFLOAD_ABOVE`], otherwise on the blocking pool once a permit is free. A panic
    /// in `work` is resumed here, as if it had run here.
    pub async fn run<T: Send + 'static>(
        &self,
        len: usize,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        if len <= OFFLOAD_ABOVE {
            return work();
        }
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let job = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        });
        match job.await.map_err(tokio::task::JoinError::try_into_panic) {
            Ok(value) => value,
            Err(Ok(panic)) => std::panic::resume_unwind(panic),
            // Only a runtime shutting down cancels a blocking job.
            Err(Err(e)) => panic!("a CPU job was cancelled: {e}"),
        }
    }

    /// Jobs running or free to start now (for tests).
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_small_body_is_worked_on_here_a_large_one_elsewhere() {
        let cpu = Cpu::new(1);
        let here = std::thread::current().id();
        let small = cpu
            .run(OFFLOAD_ABOVE, move || std::thread::current().id())
            .await;
        assert_eq!(small, here);
        let large = cpu
            .run(OFFLOAD_ABOVE + 1, move || std::thread::current().id())
            .await;
        assert_ne!(large, here);
        assert_eq!(cpu.available(), 1, "the permit is back once the job ended");
    }

    /// On a single-threaded runtime, a large body's work blocks nothing: while the job
    /// waits, another task on this one thread runs to its end. Were the work done here,
    /// the thread would be stuck in it until its wait timed out, and the job would
    /// answer `false`.
    #[tokio::test(flavor = "current_thread")]
    async fn other_tasks_run_while_a_large_job_works() {
        let cpu = Cpu::new(1);
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let job = tokio::spawn({
            let cpu = cpu.clone();
            async move {
                cpu.run(OFFLOAD_ABOVE + 1, move || {
                    started_tx.send(()).unwrap();
                    held.recv_timeout(std::time::Duration::from_secs(10))
                        .is_ok()
                })
                .await
            }
        });
        tokio::task::spawn_blocking(move || started.recv().unwrap())
            .await
            .unwrap();
        let other = tokio::spawn(async move {
            release.send(()).unwrap();
        });
        other.await.unwrap();
        assert!(job.await.unwrap(), "the job was released by the other task");
        assert_eq!(cpu.available(), 1);
    }

    /// A request dropped while its job works (a timeout) leaves the permit with the job
    /// until the job ends: the permits count what the cores are doing.
    #[tokio::test(flavor = "current_thread")]
    async fn a_dropped_request_leaves_the_permit_with_its_job() {
        let cpu = Cpu::new(1);
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let request = tokio::spawn({
            let cpu = cpu.clone();
            async move {
                cpu.run(OFFLOAD_ABOVE + 1, move || {
                    started_tx.send(()).unwrap();
                    held.recv().unwrap();
                })
                .await
            }
        });
        tokio::task::spawn_blocking(move || started.recv().unwrap())
            .await
            .unwrap();
        request.abort();
        assert!(request.await.unwrap_err().is_cancelled());
        assert_eq!(cpu.available(), 0, "the job still works");
        release.send(()).unwrap();
        while cpu.available() != 1 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    #[should_panic(expected = "boom")]
    async fn a_panic_in_a_job_is_resumed_here() {
        Cpu::new(1).run(OFFLOAD_ABOVE + 1, || panic!("boom")).await;
    }
}
