//! The key cache of one scanner ([`KeyCache`]), fed by its [`KeySource`].
//!
//! [`KeyCache`] rules (one cache per scanner, held in application state):
//! - Keys are fetched at start-up and kept for `ttl`. A key that is past its TTL is still
//!   used while a background refresh runs.
//! - An unknown key id triggers one refetch. Refetches are single-flight (one at a time,
//!   waiters share its result: a delivery that waited for a fetch which started after it
//!   arrived never starts another) and start at most once per `refetch_interval`,
//!   counted from the end of the last fetch as well as its start, so a flood of random
//!   key ids cannot turn into a flood of fetches, even against a slow source.
//! - A fetch runs in a task of its own, holding the single-flight lock until it ends: a
//!   caller dropped mid-fetch (a delivery past its deadline, a readiness probe whose
//!   client left) does not cancel it, and everyone waiting gets its real result.
//! - A failed fetch never discards keys already held.
//! - Lookups answer [`KeyError::Unknown`] only when keys fetched after the delivery
//!   arrived do not list the id ("forged or foreign", final). When no such fetch could
//!   run (rate limit) or it failed, the answer is [`KeyError::Unavailable`] ("try again
//!   later"): a genuine alert signed with a freshly rotated key is never refused for good.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use tokio::sync::OwnedMutexGuard;

use super::source::{FetchError, KeySource, ScannerKey, ScannerSpec};
use crate::domain::redact::redact_tokens;
use crate::metrics::Metrics;
use crate::support::error_chain;

/// Why no key could be found for a key id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// The source was read and does not list this id.
    Unknown,
    /// The source could not be read and no held key has this id.
    Unavailable,
}

#[derive(Default)]
struct CacheState {
    keys: Arc<HashMap<String, ScannerKey>>,
    /// When the keys held were fetched.
    fetched_at: Option<Instant>,
    /// When the last fetch started.
    last_started: Option<Instant>,
    /// When the last fetch ended. Refetches are rate-limited from the later of the two,
    /// so a source slower than the interval is not asked again the moment it answers.
    last_finished: Option<Instant>,
    /// How the last finished fetch ended; `None` until one has finished.
    last_ok: Option<bool>,
    /// When the last successful fetch started.
    last_ok_started: Option<Instant>,
}

/// A snapshot of the cache for health checks and metrics.
#[derive(Debug, Clone)]
pub struct CacheStatus {
    pub keys: usize,
    pub age: Option<Duration>,
    pub last_fetch_ok: Option<bool>,
}

/// The key cache of one scanner. See the module docs for its rules.
pub struct KeyCache {
    scanner: String,
    source: KeySource,
    ttl: Duration,
    refetch_interval: Duration,
    state: RwLock<CacheState>,
    /// Held while a fetch runs: makes refetches single-flight.
    fetch_lock: Arc<tokio::sync::Mutex<()>>,
    metrics: Metrics,
}

impl KeyCache {
    pub fn new(
        scanner: &str,
        source: KeySource,
        ttl: Duration,
        refetch_interval: Duration,
        metrics: Metrics,
    ) -> Self {
        KeyCache {
            scanner: scanner.to_owned(),
            source,
            ttl,
            refetch_interval,
            state: RwLock::new(CacheState::default()),
            fetch_lock: Arc::new(tokio::sync::Mutex::new(())),
            metrics,
        }
    }

    pub fn status(&self) -> CacheStatus {
        let st = self.state.read().expect("key cache lock poisoned");
        CacheStatus {
            keys: st.keys.len(),
            age: st.fetched_at.map(|t| t.elapsed()),
            last_fetch_ok: st.last_ok,
        }
    }

    /// Fetches now (used at start-up), regardless of the refetch interval.
    pub async fn load(self: &Arc<Self>) -> Result<usize, FetchError> {
        let guard = self.fetch_lock.clone().lock_owned().await;
        self.fetch_in_task(guard).await
    }

    /// Fetches if the refetch interval allows it (readiness checks use this).
    pub async fn try_load(self: &Arc<Self>) {
        let guard = self.fetch_lock.clone().lock_owned().await;
        if self.may_fetch() {
            let _ = self.fetch_in_task(guard).await;
        }
    }

    /// The key with this id, fetching or refetching as the module rules allow.
    pub async fn key(self: &Arc<Self>, key_id: &str) -> Result<ScannerKey, KeyError> {
        let arrived = Instant::now();
        let (held, fresh) = self.lookup(key_id);
        if let Some(key) = held {
            if !fresh {
                self.refresh_in_background();
            }
            return Ok(key);
        }

        // Unknown id, or nothing loaded yet: one refetch at a time.
        let guard = self.fetch_lock.clone().lock_owned().await;
        if let (Some(key), _) = self.lookup(key_id) {
            return Ok(key); // fetched by the task we waited for
        }
        // A fetch that started after this delivery arrived has answered for it already.
        let answered = self
            .state
            .read()
            .expect("key cache lock poisoned")
            .last_started
            .is_some_and(|started| started >= arrived);
        if !answered && self.may_fetch() {
            tracing::info!(scanner = %self.scanner, key_id = %redact_tokens(key_id), "unknown key id, refetching keys");
            let _ = self.fetch_in_task(guard).await;
        } else {
            drop(guard);
        }
        if let (Some(key), _) = self.lookup(key_id) {
            return Ok(key);
        }
        // "Unknown" (401, final) only if keys fetched after this delivery arrived do not
        // list the id. If no such fetch could run (rate limit) or it failed, the key may
        // be a fresh rotation we cannot see yet: "unavailable" (503, the scanner retries).
        let st = self.state.read().expect("key cache lock poisoned");
        match st.last_ok_started {
            Some(started) if started >= arrived && !st.keys.is_empty() => Err(KeyError::Unknown),
            _ => Err(KeyError::Unavailable),
        }
    }

    fn lookup(&self, key_id: &str) -> (Option<ScannerKey>, bool) {
        let st = self.state.read().expect("key cache lock poisoned");
        let fresh = st.fetched_at.is_some_and(|t| t.elapsed() < self.ttl);
        (st.keys.get(key_id).cloned(), fresh)
    }

    fn may_fetch(&self) -> bool {
        let st = self.state.read().expect("key cache lock poisoned");
        st.last_started
            .max(st.last_finished)
            .is_none_or(|at| at.elapsed() >= self.refetch_interval)
    }

    fn refresh_in_background(self: &Arc<Self>) {
        if !self.may_fetch() {
            return;
        }
        let Ok(guard) = self.fetch_lock.clone().try_lock_owned() else {
            return; // a fetch is already running
        };
        if self.may_fetch() {
            drop(self.spawn_fetch(guard));
        }
    }

    /// One fetch in a task of its own that holds `guard` (the fetch lock) until the
    /// fetch has ended and its result is stored; dropping the handle does not stop it.
    fn spawn_fetch(
        self: &Arc<Self>,
        guard: OwnedMutexGuard<()>,
    ) -> tokio::task::JoinHandle<Result<usize, FetchError>> {
        let cache = Arc::clone(self);
        tokio::spawn(async move {
            let _guard = guard;
            cache.fetch_and_store().await
        })
    }

    /// [`Self::spawn_fetch`], waiting for its result. The caller may be dropped while
    /// it waits: the fetch goes on, and whoever waits on the lock sees its result.
    async fn fetch_in_task(
        self: &Arc<Self>,
        guard: OwnedMutexGuard<()>,
    ) -> Result<usize, FetchError> {
        match self.spawn_fetch(guard).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only when the runtime shuts down.
            Err(_) => Err(FetchError::Interrupted),
        }
    }

    /// Run only by [`Self::spawn_fetch`], which holds `fetch_lock`.
    async fn fetch_and_store(&self) -> Result<usize, FetchError> {
        let started = Instant::now();
        self.state
            .write()
            .expect("key cache lock poisoned")
            .last_started = Some(started);
        let result = self.source.fetch().await;
        self.state
            .write()
            .expect("key cache lock poisoned")
            .last_finished = Some(Instant::now());
        self.metrics.key_fetch(&self.scanner, result.is_ok());
        match result {
            Ok(keys) => {
                let n = keys.len();
                let current: Vec<&str> = keys
                    .iter()
                    .filter(|(_, k)| k.is_current)
                    .map(|(id, _)| id.as_str())
                    .collect();
                tracing::info!(
                    scanner = %self.scanner,
                    keys = n,
                    current = ?current,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "fetched scanner keys"
                );
                let mut st = self.state.write().expect("key cache lock poisoned");
                st.keys = Arc::new(keys);
                st.fetched_at = Some(Instant::now());
                st.last_ok = Some(true);
                st.last_ok_started = Some(started);
                Ok(n)
            }
            Err(e) => {
                let held = {
                    let mut st = self.state.write().expect("key cache lock poisoned");
                    st.last_ok = Some(false);
                    st.keys.len()
                };
                tracing::warn!(
                    scanner = %self.scanner,
                    source = %self.source.describe(),
                    error = %redact_tokens(&fetch_error_chain(&e)),
                    keys_held = held,
                    "fetching scanner keys failed; keeping the keys already held"
                );
                Err(e)
            }
        }
    }
}

/// A fetch error and its causes on one line. Each variant's text already shows its
/// direct cause (`{0}`), so the chain goes on from the cause's own causes (a refused
/// redirect's reason, under reqwest's "error following redirect").
fn fetch_error_chain(e: &FetchError) -> String {
    use std::error::Error as _;
    match e.source().and_then(|cause| cause.source()) {
        Some(deeper) => format!("{e}: {}", error_chain(deeper)),
        None => e.to_string(),
    }
}

/// Timing of every scanner's key cache (`--keys-ttl`, `--keys-refetch-interval`,
/// `--keys-timeout`).
#[derive(Debug, Clone, Copy)]
pub struct CacheTiming {
    pub ttl: Duration,
    pub refetch_interval: Duration,
    pub fetch_timeout: Duration,
}

/// One key cache per scanner, by name. `github_token` goes to the `github` scanner's
/// source only, never to another scanner's. A name given twice is an error, and so is a
/// key file that is missing, unreadable or holds no usable P-256 key (the error names
/// the scanner, the file and the problem); a key URL is not fetched here.
pub fn caches_for(
    specs: &[ScannerSpec],
    timing: CacheTiming,
    github_token: Option<&SecretString>,
    metrics: &Metrics,
) -> anyhow::Result<HashMap<String, Arc<KeyCache>>> {
    let mut scanners = HashMap::new();
    for spec in specs {
        let bearer = (spec.name == "github")
            .then(|| github_token.cloned())
            .flatten();
        let source = KeySource::new(&spec.source, timing.fetch_timeout, bearer)
            .map_err(anyhow::Error::msg)?;
        source.check_file().map_err(|e| {
            anyhow::anyhow!(
                "scanner {:?}: key file {}: {e}",
                spec.name,
                source.describe()
            )
        })?;
        let cache = KeyCache::new(
            &spec.name,
            source,
            timing.ttl,
            timing.refetch_interval,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_cache(ttl: Duration) -> Arc<KeyCache> {
        let file =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/keys/test-keys.json");
        Arc::new(KeyCache::new(
            "github",
            KeySource::File(file),
            ttl,
            Duration::ZERO,
            Metrics::new(),
        ))
    }

    /// What readiness relies on: `try_load` fetches when the interval allows.
    /// Checked against `try_load` doing nothing (cargo mutants).
    #[tokio::test]
    async fn try_load_fetches_when_allowed() {
        let cache = fixture_cache(Duration::from_secs(3600));
        assert_eq!(cache.status().keys, 0);
        cache.try_load().await;
        assert_eq!(cache.status().keys, 1);
    }

    /// Keys younger than the TTL are fresh (no background refresh on every delivery);
    /// older ones are not. Checked against `elapsed() == ttl` (cargo mutants).
    #[tokio::test]
    async fn keys_are_fresh_until_the_ttl() {
        let cache = fixture_cache(Duration::from_secs(3600));
        cache.load().await.unwrap();
        let (key, fresh) = cache.lookup("revoker-test-key-1");
        assert!(key.is_some());
        assert!(fresh, "loaded just now, TTL one hour");
        let stale = fixture_cache(Duration::ZERO);
        stale.load().await.unwrap();
        let (key, fresh) = stale.lookup("revoker-test-key-1");
        assert!(key.is_some(), "stale keys are still used");
        assert!(!fresh);
    }
}
