//! HTTPS on the public listener (`--tls-cert`, `--tls-key`): rustls with TLS 1.2 and 1.3
//! only (GitHub's partner agreement asks for 1.2 or later; rustls has nothing older), and
//! HTTP/1.1 by ALPN.
//!
//! The certificate chain and key are read at start: a missing file, a file with no PEM
//! certificate or key, or a key that does not match the certificate refuses to start. They
//! are read again when either file changes (its size, modification time or inode, checked
//! every `--tls-check-interval`) and on SIGHUP. Each handshake takes the pair current when
//! it starts ([`Reloading`] is the rustls certificate resolver), so connections already
//! open keep theirs and nothing is dropped. A reload that fails (a file half written, a new
//! key beside the old certificate) keeps serving the previous pair and logs a WARN; the
//! next check (every `--tls-check-interval`, until a read succeeds) or SIGHUP tries again. Only paths and fingerprints are logged, never key
//! material.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Where the certificate and key are and how often to look for a new pair.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// PEM: the server certificate first, then its intermediates.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// How often the two files are checked for a change.
    pub check_interval: Duration,
}

/// The public listener's TLS: an acceptor whose certificate can be replaced while it runs.
pub struct Tls {
    acceptor: TlsAcceptor,
    resolver: Arc<Reloading>,
    check_interval: Duration,
}

/// The certificate resolver: every handshake gets the pair current when it starts.
#[derive(Debug)]
struct Reloading {
    provider: Arc<CryptoProvider>,
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files as they were when last read.
    seen: Mutex<Option<Stamp>>,
    /// The last read failed: the next check reads again even if the stamp looks the same
    /// (a second file written within the same clock tick, at the same size, as the
    /// first is invisible to the stamp).
    failed: std::sync::atomic::AtomicBool,
}

/// What tells that a file changed: inode, size and modification time of both files.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp([(u64, u64, Option<SystemTime>); 2]);

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read().expect("never poisoned")))
    }
}

impl Tls {
    /// Reads the pair; an error says which file and why.
    pub fn load(settings: &TlsSettings) -> anyhow::Result<Self> {
        let provider = Arc::new(ring::default_provider());
        let seen = Stamp::of(&settings.cert, &settings.key);
        let (pair, fingerprint) = read_pair(&settings.cert, &settings.key, &provider)?;
        tracing::info!(
            cert = %settings.cert.display(),
            %fingerprint,
            "serving HTTPS (TLS 1.2 and 1.3)"
        );
        let resolver = Arc::new(Reloading {
            provider: Arc::clone(&provider),
            cert: settings.cert.clone(),
            key: settings.key.clone(),
            current: RwLock::new(Arc::new(pair)),
            seen: Mutex::new(seen),
            failed: std::sync::atomic::AtomicBool::new(false),
        });
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS 1.2 and 1.3 with the ring provider")?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            resolver,
            check_interval: settings.check_interval,
        })
    }

    /// The server side of a handshake on `stream`.
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.acceptor.accept(stream).await
    }

    /// Reads both files again and serves the new pair if it is whole; otherwise keeps the
    /// current one. `why` is logged (`changed`, `SIGHUP`). Returns whether it was replaced.
    pub fn reload(&self, why: &str) -> bool {
        let r = &self.resolver;
        *r.seen.lock().expect("never poisoned") = Stamp::of(&r.cert, &r.key);
        let read = read_pair(&r.cert, &r.key, &r.provider);
        let failed_before = r
            .failed
            .swap(read.is_err(), std::sync::atomic::Ordering::Relaxed);
        match read {
            Ok((pair, fingerprint)) => {
                *r.current.write().expect("never poisoned") = Arc::new(pair);
                tracing::info!(
                    trigger = %why,
                    cert = %r.cert.display(),
                    %fingerprint,
                    "TLS certificate reloaded; new connections get it"
                );
                true
            }
            // Retried at every check: said once, then at debug until it loads.
            Err(e) if failed_before && why != "SIGHUP" => {
                tracing::debug!(
                    error = format!("{e:#}"),
                    "TLS certificate still not reloadable"
                );
                false
            }
            Err(e) => {
                tracing::warn!(
                    trigger = %why,
                    error = format!("{e:#}"),
                    "TLS certificate not reloaded; still serving the previous one"
                );
                false
            }
        }
    }

    /// Whether either file differs from when it was last read, or that read failed.
    fn changed(&self) -> bool {
        let r = &self.resolver;
        let now = Stamp::of(&r.cert, &r.key);
        now.is_some()
            && (r.failed.load(std::sync::atomic::Ordering::Relaxed)
                || *r.seen.lock().expect("never poisoned") != now)
    }

    /// Reloads when the files change or SIGHUP arrives, until `stop` resolves. `hangup` is
    /// the SIGHUP stream, installed at start so a SIGHUP never ends the process.
    pub async fn watch(
        self: Arc<Self>,
        mut hangup: tokio::signal::unix::Signal,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut stop = std::pin::pin!(stop);
        let every = self.check_interval.max(Duration::from_millis(100));
        // The files were read at start: the first look is one interval later.
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut stop => return,
                Some(()) = hangup.recv() => {
                    self.reload("SIGHUP");
                }
                _ = tick.tick() => {
                    if self.changed() {
                        self.reload("changed");
                    }
                }
            }
        }
    }
}

impl Stamp {
    /// `None` while either file is missing (mid-rotation): nothing to read yet.
    fn of(cert: &Path, key: &Path) -> Option<Stamp> {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        let one = |p: &Path| {
            std::fs::metadata(p).ok().map(|m| {
                #[cfg(unix)]
                let ino = m.ino();
                #[cfg(not(unix))]
                let ino = 0;
                (ino, m.len(), m.modified().ok())
            })
        };
        Some(Stamp([one(cert)?, one(key)?]))
    }
}

/// The pair in these files and the SHA-256 fingerprint of the certificate (hex).
fn read_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> anyhow::Result<(CertifiedKey, String)> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("cannot read a certificate from {}: {e}", cert.display()))?;
    let Some(first) = chain.first() else {
        anyhow::bail!(
            "{} holds no PEM certificate (a CERTIFICATE block)",
            cert.display()
        );
    };
    let fingerprint = hex::encode(Sha256::digest(first.as_ref()));
    // The key's own error text could quote nothing secret, but say only what and where.
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        anyhow::anyhow!(
            "cannot read a private key from {}: {}",
            key.display(),
            pem_error(&e)
        )
    })?;
    let pair = CertifiedKey::from_der(chain, key_der, provider).map_err(|e| {
        anyhow::anyhow!(
            "the key in {} does not fit the certificate in {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok((pair, fingerprint))
}

/// A PEM read error without any of the file's bytes.
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::NoItemsFound => {
            "no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)".into()
        }
        Error::Io(io) => io.to_string(),
        _ => "not valid PEM".into(),
    }
}
