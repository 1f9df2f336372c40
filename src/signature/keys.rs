//! The public keys of one scanner: where they come from and how they are cached.
//!
//! A [`KeySource`] is an http(s) URL or a file, both in GitHub's shape:
//! `{"public_keys":[{"key_identifier": "...", "key": "-----BEGIN PUBLIC KEY-----…", "is_current": true}]}`.
//!
//! [`KeyCache`] rules (one cache per scanner, held in application state):
//! - Keys are fetched at start-up and kept for `ttl`. A key that is past its TTL is still
//!   used while a background refresh runs.
//! - An unknown key id triggers one refetch. Refetches are single-flight (one at a time,
//!   waiters share its result) and start at most once per `refetch_interval`, so a flood
//!   of random key ids cannot turn into a flood of fetches.
//! - A failed fetch never discards keys already held.
//! - Lookups answer [`KeyError::Unknown`] only when keys fetched after the delivery
//!   arrived do not list the id ("forged or foreign", final). When no such fetch could
//!   run (rate limit) or it failed, the answer is [`KeyError::Unavailable`] ("try again
//!   later"): a genuine alert signed with a freshly rotated key is never refused for good.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use p256::ecdsa::VerifyingKey;
use p256::pkcs8::DecodePublicKey;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::stats::metrics::Metrics;

/// A key document larger than this is refused (GitHub's is about 1 KiB).
const MAX_KEY_DOCUMENT: usize = 1024 * 1024;

/// One public key of a scanner.
#[derive(Debug, Clone)]
pub struct ScannerKey {
    pub key: VerifyingKey,
    /// Whether the source marks it as the key currently used for signing.
    pub is_current: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("key endpoint request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("key endpoint answered HTTP {0}")]
    Status(u16),
    #[error("key document is larger than {MAX_KEY_DOCUMENT} bytes")]
    TooLarge,
    #[error("cannot read key file: {0}")]
    Io(#[from] std::io::Error),
    #[error("key document is not valid key JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("key document lists no usable P-256 public key")]
    NoUsableKeys,
}

/// Why no key could be found for a key id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// The source was read and does not list this id.
    Unknown,
    /// The source could not be read and no held key has this id.
    Unavailable,
}

#[derive(Deserialize)]
struct KeyDocument {
    public_keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
struct KeyEntry {
    key_identifier: String,
    key: String,
    #[serde(default)]
    is_current: bool,
}

/// Parses GitHub's key JSON. Entries whose PEM is not a P-256 public key are skipped
/// with a warning; a document with no usable key is an error.
pub fn parse_key_document(bytes: &[u8]) -> Result<HashMap<String, ScannerKey>, FetchError> {
    let doc: KeyDocument = serde_json::from_slice(bytes)?;
    let mut keys = HashMap::with_capacity(doc.public_keys.len());
    for entry in doc.public_keys {
        match VerifyingKey::from_public_key_pem(entry.key.trim()) {
            Ok(key) => {
                keys.insert(
                    entry.key_identifier,
                    ScannerKey {
                        key,
                        is_current: entry.is_current,
                    },
                );
            }
            Err(e) => tracing::warn!(
                key_id = %entry.key_identifier,
                error = %e,
                "skipping key that is not a P-256 public key"
            ),
        }
    }
    if keys.is_empty() {
        return Err(FetchError::NoUsableKeys);
    }
    Ok(keys)
}

/// Writes a new P-256 private key to `path` (PKCS#8 PEM, mode 0600, never overwriting)
/// and returns the key-JSON entry for its public key.
pub fn generate_key_file(
    path: &std::path::Path,
    key_id: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    use p256::ecdsa::SigningKey;
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    use sha2::{Digest, Sha256};
    use std::io::Write;

    let key = SigningKey::random(&mut rand::rngs::OsRng);
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("cannot encode the private key: {e}"))?;
    let public = key.verifying_key();
    let public_pem = public
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("cannot encode the public key: {e}"))?;
    let public_der = public
        .to_public_key_der()
        .map_err(|e| anyhow::anyhow!("cannot encode the public key: {e}"))?;
    let key_id = match key_id {
        Some(id) => id.to_owned(),
        None => format!(
            "team-{}",
            &hex::encode(Sha256::digest(public_der.as_bytes()))[..16]
        ),
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot create {} ({e}); an existing key is never overwritten",
            path.display()
        )
    })?;
    file.write_all(private.as_bytes())?;
    file.sync_all()?;
    Ok(serde_json::json!({
        "key_identifier": key_id,
        "key": public_pem,
        "is_current": true,
    }))
}

/// Where a scanner's keys come from.
pub enum KeySource {
    Http {
        url: String,
        client: reqwest::Client,
        /// Sent as `Authorization: Bearer` (GitHub raises the rate limit with it).
        bearer: Option<SecretString>,
    },
    File(PathBuf),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Http { url, bearer, .. } => f
                .debug_struct("Http")
                .field("url", url)
                .field("bearer", &bearer.as_ref().map(|_| "[redacted]"))
                .finish(),
            KeySource::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

impl KeySource {
    /// `http://…`/`https://…` is fetched with `timeout`; anything else is a file path.
    pub fn new(
        spec: &str,
        timeout: Duration,
        bearer: Option<SecretString>,
    ) -> Result<Self, String> {
        if spec.starts_with("http://") || spec.starts_with("https://") {
            url::Url::parse(spec).map_err(|e| format!("invalid key URL {spec:?}: {e}"))?;
            let client = reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
                .user_agent(concat!("revoker/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("cannot build HTTP client: {e}"))?;
            Ok(KeySource::Http {
                url: spec.to_owned(),
                client,
                bearer,
            })
        } else {
            let path = spec.strip_prefix("file://").unwrap_or(spec);
            Ok(KeySource::File(PathBuf::from(path)))
        }
    }

    /// A printable description (no secrets).
    pub fn describe(&self) -> String {
        match self {
            KeySource::Http { url, .. } => url.clone(),
            KeySource::File(p) => p.display().to_string(),
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, ScannerKey>, FetchError> {
        let bytes = match self {
            KeySource::Http {
                url,
                client,
                bearer,
            } => {
                let mut req = client.get(url).header("accept", "application/json");
                if let Some(token) = bearer {
                    req = req.bearer_auth(token.expose_secret());
                }
                let mut resp = req.send().await?;
                if !resp.status().is_success() {
                    return Err(FetchError::Status(resp.status().as_u16()));
                }
                if resp.content_length().unwrap_or(0) > MAX_KEY_DOCUMENT as u64 {
                    return Err(FetchError::TooLarge);
                }
                let mut body = Vec::new();
                while let Some(chunk) = resp.chunk().await? {
                    if body.len() + chunk.len() > MAX_KEY_DOCUMENT {
                        return Err(FetchError::TooLarge);
                    }
                    body.extend_from_slice(&chunk);
                }
                body
            }
            KeySource::File(path) => {
                let bytes = tokio::fs::read(path).await?;
                if bytes.len() > MAX_KEY_DOCUMENT {
                    return Err(FetchError::TooLarge);
                }
                bytes
            }
        };
        parse_key_document(&bytes)
    }
}

#[derive(Default)]
struct CacheState {
    keys: Arc<HashMap<String, ScannerKey>>,
    /// When the keys held were fetched.
    fetched_at: Option<Instant>,
    /// When the last fetch started (refetches are rate-limited from this).
    last_started: Option<Instant>,
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

    pub fn scanner(&self) -> &str {
        &self.scanner
    }

    pub fn source(&self) -> &KeySource {
        &self.source
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
    pub async fn load(&self) -> Result<usize, FetchError> {
        let _guard = self.fetch_lock.lock().await;
        self.fetch_and_store().await
    }

    /// Fetches if the refetch interval allows it (readiness checks use this).
    pub async fn try_load(&self) {
        let _guard = self.fetch_lock.lock().await;
        if self.may_fetch() {
            let _ = self.fetch_and_store().await;
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
        let _guard = self.fetch_lock.lock().await;
        if let (Some(key), _) = self.lookup(key_id) {
            return Ok(key); // fetched by the task we waited for
        }
        if self.may_fetch() {
            tracing::info!(scanner = %self.scanner, key_id = %crate::token::redact(key_id), "unknown key id, refetching keys");
            let _ = self.fetch_and_store().await;
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
            .is_none_or(|at| at.elapsed() >= self.refetch_interval)
    }

    fn refresh_in_background(self: &Arc<Self>) {
        if !self.may_fetch() {
            return;
        }
        let Ok(guard) = self.fetch_lock.clone().try_lock_owned() else {
            return; // a fetch is already running
        };
        let cache = Arc::clone(self);
        tokio::spawn(async move {
            let _guard = guard;
            if cache.may_fetch() {
                let _ = cache.fetch_and_store().await;
            }
        });
    }

    /// Call with `fetch_lock` held.
    async fn fetch_and_store(&self) -> Result<usize, FetchError> {
        let started = Instant::now();
        self.state
            .write()
            .expect("key cache lock poisoned")
            .last_started = Some(started);
        let result = self.source.fetch().await;
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
                    error = %e,
                    keys_held = held,
                    "fetching scanner keys failed; keeping the keys already held"
                );
                Err(e)
            }
        }
    }
}
