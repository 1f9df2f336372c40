//! Typed settings of the receiver ([`Settings`]): what `serve` runs with, whoever built
//! them (the binary's `serve` command from flags and environment, or a test). This
//! module knows no CLI type; the command line's parsers of sizes live here so every
//! entry point reads `8MiB` the same way.
//!
//! Secrets (database URL, GitHub token, admin token) are `SecretString`: `Debug`
//! redacts them.

use std::time::Duration;

use secrecy::SecretString;

use crate::notify::NotifySettings;
use crate::signature::{CacheTiming, HeaderPrefix, PerScanner, Protocol, ScannerSpec};
use crate::store::PoolSettings;
use crate::support::default_duration;
use crate::tls::TlsSettings;

/// Parses a byte size: `1048576`, `512KiB`, `8MiB`, `1GiB` (also `K`, `M`, `G`, `KB`, `MB`).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: usize = digits.parse().map_err(|_| {
        format!("invalid size {s:?}: expected a number with an optional unit like 8MiB")
    })?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size unit {other:?} (use B, KiB, MiB or GiB)"
            ))
        }
    };
    let total = n
        .checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))?;
    if total == 0 {
        return Err("size must be greater than 0".into());
    }
    Ok(total)
}

/// The defaults of `serve`, as the command line writes them: `revoker serve --help`
/// shows these strings and [`Settings::new`] parses the same ones, so the two cannot
/// drift apart.
pub mod defaults {
    pub const LISTEN: &str = "127.0.0.1:8080";
    pub const ADMIN_LISTEN: &str = "127.0.0.1:9090";
    pub const SCANNER: &str = "github=https://api.github.com/meta/public_keys/secret_scanning";
    pub const KEYS_TTL: &str = "1h";
    pub const KEYS_REFETCH_INTERVAL: &str = "60s";
    pub const KEYS_TIMEOUT: &str = "5s";
    pub const MAX_BODY: &str = "8MiB";
    pub const RETRY_AFTER: &str = "30s";
    /// Below GitHub's 15 s (the partner agreement's deadline for a 2xx), with room for
    /// the answer to travel.
    pub const REQUEST_TIMEOUT: &str = "12s";
    pub const BODY_TIMEOUT: &str = "10s";
    pub const SHUTDOWN_TIMEOUT: &str = "30s";
    pub const MAX_CONCURRENT_DELIVERIES: u32 = 128;
    pub const UNVERIFIED_BODY_BUDGET: &str = "64MiB";
    pub const VERIFIED_MEMORY_BUDGET: &str = "256MiB";
    pub const MAX_CONNECTIONS: u32 = 4096;
    /// A scraper, a dashboard or two and probes need a handful; the rest is headroom.
    pub const ADMIN_MAX_CONNECTIONS: u32 = 64;
    pub const HEADER_TIMEOUT: &str = "10s";
    /// The type GitLab gives a gitleaks finding of the `cio_tp` rule.
    pub const REVOCATION_API_TYPES: &str = "gitleaks_rule_id_cio_tp";
    /// Certificates rotate every 60–90 days; a minute's lag costs nothing.
    pub const TLS_CHECK_INTERVAL: &str = "30s";
    /// GitHub's partner agreement §7.1: url, source and type deleted within 30 days.
    pub const RETENTION: &str = "30d";
    /// A scanner silent this long is flagged on the dashboard.
    pub const SCANNER_QUIET_AFTER: &str = "7d";
    pub const TOKEN_FORMATS: &str = "cio_tp";
    /// A holder checks or revokes a token now and then; a script doing it for a few
    /// hundred tokens waits a little.
    pub const HOLDER_RATE_LIMIT: &str = "20/s";
    pub const HOLDER_RATE_BURST: u32 = 40;
}

pub use crate::http::client::RateLimit;
pub use crate::http::holder::HolderSettings;

impl Default for HolderSettings {
    fn default() -> Self {
        HolderSettings {
            enabled: true,
            rate_limit: RateLimit::parse(defaults::HOLDER_RATE_LIMIT, defaults::HOLDER_RATE_BURST)
                .expect("the default rate parses"),
            trusted_proxies: Vec::new(),
            introspection_clients: Vec::new(),
        }
    }
}

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: String,
    pub database_url: SecretString,
    /// Where migrations run when not over `database_url` (a direct connection beside a
    /// pooled one).
    pub migrate_database_url: Option<SecretString>,
    pub pool: PoolSettings,
    pub scanners: Vec<ScannerSpec>,
    /// Scanners that are not `github` (`--scanner-protocol NAME=gitlab`).
    pub scanner_protocols: Vec<PerScanner<Protocol>>,
    /// Scanners whose signature headers have another prefix (`--scanner-header-prefix`).
    pub scanner_header_prefixes: Vec<PerScanner<HeaderPrefix>>,
    pub keys_ttl: Duration,
    pub keys_refetch_interval: Duration,
    pub keys_timeout: Duration,
    pub github_token: Option<SecretString>,
    pub max_body: usize,
    pub retry_after: Duration,
    pub request_timeout: Duration,
    pub body_timeout: Duration,
    /// Verified deliveries processed at once; beyond it: 503 `overloaded`.
    pub max_concurrent_deliveries: usize,
    /// Bytes of bodies not yet verified, beyond each body's free first 64 KiB, held at
    /// once; a body waits for budget (within `body_timeout`).
    pub unverified_body_budget: usize,
    /// Memory estimated for verified deliveries (body, parsed items, candidates,
    /// feedback) held at once; a delivery that does not fit gets 503 `overloaded`.
    pub verified_memory_budget: usize,
    /// Open connections on the public listener; accept waits when all are taken.
    pub max_connections: usize,
    /// Open connections on the admin listener; accept waits when all are taken.
    pub admin_max_connections: usize,
    /// Deadline for a request head on either listener (from the connection's start or
    /// the previous answer); past it the connection is closed.
    pub header_timeout: Duration,
    /// After SIGTERM, how long in-flight requests may take before the process exits.
    pub shutdown_timeout: Duration,
    /// Admin listener: /metrics, /api/stats, /dashboard, health.
    pub admin_listen: String,
    pub admin_token: Option<SecretString>,
    /// GitLab's Token Revocation API: its tokens (none: the API is off) and the types
    /// it offers.
    pub revocation_api_tokens: Vec<SecretString>,
    pub revocation_api_types: Vec<String>,
    /// Owner notifications: where and how to send them (`None`: queued, not sent).
    pub notify: Option<NotifySettings>,
    /// HTTPS on the public listener (`None`: plain HTTP).
    pub tls: Option<TlsSettings>,
    /// url, source and type older than this are purged (see [`crate::retention`]).
    /// `None`: this process runs no purge (`revoker serve` always sets it; an embedder or
    /// a measurement that counts every statement may leave it to another process).
    pub retention: Option<Duration>,
    /// The dashboard warns about a scanner with no report or delivery for this long.
    pub scanner_quiet_after: Duration,
    /// The token formats recognised (`--token-formats`).
    pub formats: crate::domain::Formats,
    /// The holder and introspection endpoints.
    pub holder: HolderSettings,
}

impl Settings {
    /// Defaults for tests and embedding: loopback port 0, given database and scanners.
    pub fn new(database_url: &str, scanners: Vec<ScannerSpec>) -> Self {
        Settings {
            listen: "127.0.0.1:0".into(),
            database_url: SecretString::from(database_url.to_owned()),
            migrate_database_url: None,
            pool: PoolSettings::default(),
            scanners,
            scanner_protocols: Vec::new(),
            scanner_header_prefixes: Vec::new(),
            keys_ttl: default_duration(defaults::KEYS_TTL),
            keys_refetch_interval: default_duration(defaults::KEYS_REFETCH_INTERVAL),
            keys_timeout: default_duration(defaults::KEYS_TIMEOUT),
            github_token: None,
            max_body: parse_size(defaults::MAX_BODY).expect("the default size parses"),
            retry_after: default_duration(defaults::RETRY_AFTER),
            request_timeout: default_duration(defaults::REQUEST_TIMEOUT),
            body_timeout: default_duration(defaults::BODY_TIMEOUT),
            max_concurrent_deliveries: defaults::MAX_CONCURRENT_DELIVERIES as usize,
            unverified_body_budget: parse_size(defaults::UNVERIFIED_BODY_BUDGET)
                .expect("the default size parses"),
            verified_memory_budget: parse_size(defaults::VERIFIED_MEMORY_BUDGET)
                .expect("the default size parses"),
            max_connections: defaults::MAX_CONNECTIONS as usize,
            admin_max_connections: defaults::ADMIN_MAX_CONNECTIONS as usize,
            header_timeout: default_duration(defaults::HEADER_TIMEOUT),
            shutdown_timeout: default_duration(defaults::SHUTDOWN_TIMEOUT),
            admin_listen: "127.0.0.1:0".into(),
            admin_token: None,
            revocation_api_tokens: Vec::new(),
            revocation_api_types: vec![defaults::REVOCATION_API_TYPES.to_owned()],
            notify: None,
            tls: None,
            retention: Some(default_duration(defaults::RETENTION)),
            scanner_quiet_after: default_duration(defaults::SCANNER_QUIET_AFTER),
            formats: crate::domain::Formats::DEFAULT,
            holder: HolderSettings::default(),
        }
    }

    /// The key caches' timing.
    pub fn key_timing(&self) -> CacheTiming {
        CacheTiming {
            ttl: self.keys_ttl,
            refetch_interval: self.keys_refetch_interval,
            fetch_timeout: self.keys_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("2 m"), Ok(2 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("8XB").is_err());
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn defaults_are_what_the_command_line_says() {
        let s = Settings::new("sqlite://x.db", Vec::new());
        assert_eq!(s.max_body, 8 << 20);
        assert_eq!(s.keys_ttl, Duration::from_secs(3600));
        assert_eq!(s.keys_refetch_interval, Duration::from_secs(60));
        assert_eq!(s.request_timeout, Duration::from_secs(12));
        assert_eq!(s.max_concurrent_deliveries, 128);
        assert_eq!(s.unverified_body_budget, 64 << 20);
        assert_eq!(s.verified_memory_budget, 256 << 20);
        assert_eq!(s.max_connections, 4096);
        assert_eq!(s.admin_max_connections, 64);
        assert_eq!(s.header_timeout, Duration::from_secs(10));
        let limit = s.holder.rate_limit.expect("limited by default");
        assert_eq!(
            (limit.per, limit.burst.get()),
            (Duration::from_millis(50), 40)
        );
        assert!(s.holder.enabled && s.holder.introspection_clients.is_empty());
    }
}
