//! Where a scanner's public keys come from: [`ScannerSpec`] (`--scanner NAME=SOURCE`),
//! [`KeySource`] (an http(s) URL or a file) and the key document, in GitHub's shape:
//! `{"public_keys":[{"key_identifier": "...", "key": "-----BEGIN PUBLIC KEY-----…", "is_current": true}]}`.
//! Also [`generate_key_file`], which makes a key pair for a team that replays remotely.
//!
//! A key URL's redirects are followed only to https or to plain http on this machine
//! (see [`KeySource::new`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use p256::ecdsa::VerifyingKey;
use p256::pkcs8::DecodePublicKey;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::support::Redirects;

/// `NAME=SOURCE` from `--scanner`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannerSpec {
    /// Route segment: `POST /secret-scanning/{name}`.
    pub name: String,
    /// http(s) URL or file path of the key JSON.
    pub source: String,
}

impl FromStr for ScannerSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, source) = s
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=SOURCE, got {s:?}"))?;
        let name = name.trim();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "scanner name {name:?} must be non-empty and use only a-z, 0-9, '-' and '_'"
            ));
        }
        if source.trim().is_empty() {
            return Err(format!("scanner {name:?} has an empty key source"));
        }
        Ok(ScannerSpec {
            name: name.to_owned(),
            source: source.trim().to_owned(),
        })
    }
}

/// A key document larger than this is refused (GitHub's is about 1 KiB).
pub(super) const MAX_KEY_DOCUMENT: usize = 1024 * 1024;

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
    /// The fetch's task was stopped before it ended (the runtime is shutting down).
    #[error("the key fetch was stopped before it ended")]
    Interrupted,
    /// Every entry was refused; each reason names its `key_identifier`.
    #[error("key document lists no usable P-256 public key{}", refused_keys(.0))]
    NoUsableKeys(Vec<String>),
}

/// `: key "a": …; key "b": …` (nothing for an empty list).
fn refused_keys(reasons: &[String]) -> String {
    if reasons.is_empty() {
        String::new()
    } else {
        format!(": {}", reasons.join("; "))
    }
}

/// Why an entry's `key` is not usable, naming it by its `key_identifier`: not a public
/// key PEM at all, or a public key that is not P-256.
fn refused_key(key_id: &str, pem: &str, error: &dyn std::fmt::Display) -> String {
    let key_id = crate::domain::redact::redact_tokens(key_id);
    if pem.trim_start().starts_with("-----BEGIN PUBLIC KEY-----") {
        format!("key {key_id:?} is not a P-256 public key ({error})")
    } else {
        format!("key {key_id:?} is not a public key PEM (no \"-----BEGIN PUBLIC KEY-----\")")
    }
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
    let mut refused = Vec::new();
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
            Err(e) => {
                let reason = refused_key(&entry.key_identifier, &entry.key, &e);
                tracing::warn!(reason = %reason, "skipping a key that is not usable");
                refused.push(reason);
            }
        }
    }
    if keys.is_empty() {
        return Err(FetchError::NoUsableKeys(refused));
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

/// Adds `entry` (as [`generate_key_file`] returns it) to the key file at `path`, GitHub's
/// shape `{"public_keys": [...]}`: created if missing; otherwise its entries are kept and
/// one with the same `key_identifier` refuses. Written whole (a new file renamed over the
/// old), so a `serve` reading it never sees half of it.
pub fn add_to_key_file(path: &Path, entry: &serde_json::Value) -> anyhow::Result<()> {
    let id = entry["key_identifier"].as_str().unwrap_or_default();
    let mut file = key_file_taking(path, id)?;
    file["public_keys"]
        .as_array_mut()
        .expect("checked by key_file_taking")
        .push(entry.clone());
    let mut text = serde_json::to_string_pretty(&file)?;
    text.push('\n');
    let tmp = path.with_extension("json.new");
    std::fs::write(&tmp, text)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| anyhow::anyhow!("cannot replace {}: {e}", path.display()))?;
    Ok(())
}

/// Whether [`add_to_key_file`] would take a key `id` at `path` (checked before a private
/// key is written for it).
pub fn check_key_file_takes(path: &Path, id: &str) -> anyhow::Result<()> {
    key_file_taking(path, id).map(drop)
}

/// The key file at `path` (an empty one if missing), if it has no key `id`.
fn key_file_taking(path: &Path, id: &str) -> anyhow::Result<serde_json::Value> {
    let file = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
            .map_err(|e| anyhow::anyhow!("{} is not a key file (JSON: {e})", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            serde_json::json!({ "public_keys": [] })
        }
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    };
    let Some(keys) = file["public_keys"].as_array() else {
        anyhow::bail!(
            "{} has no \"public_keys\" array: not a key file in GitHub's shape",
            path.display()
        );
    };
    if keys.iter().any(|k| k["key_identifier"] == id) {
        anyhow::bail!(
            "{} already has a key {id:?}; choose another --key-id (nothing written)",
            path.display()
        );
    }
    Ok(file)
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
    /// A key URL's redirects are followed only to https or to plain http on this
    /// machine, never from https down to http, at most `support::MAX_REDIRECTS` hops
    /// ([`Redirects::HttpsOrLoopback`]); reqwest drops the bearer token on a hop to
    /// another host or port.
    pub fn new(
        spec: &str,
        timeout: Duration,
        bearer: Option<SecretString>,
    ) -> Result<Self, String> {
        if spec.starts_with("http://") || spec.starts_with("https://") {
            url::Url::parse(spec).map_err(|e| format!("invalid key URL {spec:?}: {e}"))?;
            let client = crate::support::http_client(timeout, Redirects::HttpsOrLoopback)
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

    /// For a file source, reads and checks it now: `serve` refuses to start on a key
    /// file that is missing, unreadable or holds no usable P-256 key (it would answer
    /// every alert 503 for ever). An http(s) source is not fetched here: a key endpoint
    /// that is down at start may come back, so that stays a warning.
    pub fn check_file(&self) -> Result<(), FetchError> {
        let KeySource::File(path) = self else {
            return Ok(());
        };
        let bytes = std::fs::read(path)?;
        if bytes.len() > MAX_KEY_DOCUMENT {
            return Err(FetchError::TooLarge);
        }
        parse_key_document(&bytes).map(|_| ())
    }

    pub(super) async fn fetch(&self) -> Result<HashMap<String, ScannerKey>, FetchError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_specs() {
        let s: ScannerSpec = "github=https://example.test/keys".parse().unwrap();
        assert_eq!(s.name, "github");
        assert_eq!(s.source, "https://example.test/keys");
        let f: ScannerSpec = "team-a=/etc/keys.json".parse().unwrap();
        assert_eq!(f.source, "/etc/keys.json");
        assert!("nosource".parse::<ScannerSpec>().is_err());
        assert!("Bad Name=x".parse::<ScannerSpec>().is_err());
        assert!("x=".parse::<ScannerSpec>().is_err());
    }

    fn document(entries: &[(&str, &str)]) -> Vec<u8> {
        let keys: Vec<serde_json::Value> = entries
            .iter()
            .map(|(id, key)| serde_json::json!({"key_identifier": id, "key": key}))
            .collect();
        serde_json::to_vec(&serde_json::json!({ "public_keys": keys })).unwrap()
    }

    fn p256_pem() -> String {
        use p256::pkcs8::{EncodePublicKey, LineEnding};
        let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        key.verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap()
    }

    #[test]
    fn refused_keys_are_named_by_their_key_identifier() {
        // Not PEM at all.
        let e = parse_key_document(&document(&[("k-notpem", "notpem")])).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(r#"key "k-notpem" is not a public key PEM"#),
            "{text}"
        );
        assert!(!text.contains("preamble"), "{text}");
        // A public key PEM, but not P-256 (an Ed25519 key).
        let ed25519 = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        let e = parse_key_document(&document(&[("k-ed", ed25519), ("k-notpem", "x")])).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(r#"key "k-ed" is not a P-256 public key ("#),
            "{text}"
        );
        assert!(text.contains(r#"key "k-notpem""#), "{text}");
        // One usable key is enough; the other is skipped.
        let keys = parse_key_document(&document(&[("good", &p256_pem()), ("bad", "x")])).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["good"]);
        // No entries at all.
        let e = parse_key_document(&document(&[])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "key document lists no usable P-256 public key"
        );
    }

    #[test]
    fn a_file_source_is_checked_at_once_and_a_url_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let missing = KeySource::new(
            &dir.path().join("nope.json").display().to_string(),
            Duration::from_secs(1),
            None,
        )
        .unwrap();
        assert!(matches!(missing.check_file(), Err(FetchError::Io(_))));
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, document(&[("k1", "notpem")])).unwrap();
        let bad = KeySource::new(&bad.display().to_string(), Duration::from_secs(1), None).unwrap();
        assert!(matches!(bad.check_file(), Err(FetchError::NoUsableKeys(_))));
        let good = dir.path().join("good.json");
        std::fs::write(&good, document(&[("k1", &p256_pem())])).unwrap();
        let good =
            KeySource::new(&good.display().to_string(), Duration::from_secs(1), None).unwrap();
        assert!(good.check_file().is_ok());
        // A URL nothing answers on: not fetched at start.
        let url = KeySource::new("http://127.0.0.1:1/keys", Duration::from_secs(1), None).unwrap();
        assert!(url.check_file().is_ok());
    }
}
