//! Typed settings of the receiver, built from the CLI ([`crate::cli::ServeArgs`]).
//!
//! Secrets (database URL, GitHub token) are `SecretString`: `Debug` redacts them.

use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;

use crate::store::PoolSettings;

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

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: String,
    pub database_url: SecretString,
    pub pool: PoolSettings,
    pub scanners: Vec<ScannerSpec>,
    pub keys_ttl: Duration,
    pub keys_refetch_interval: Duration,
    pub keys_timeout: Duration,
    pub github_token: Option<SecretString>,
    pub max_body: usize,
    pub retry_after: Duration,
    pub request_timeout: Duration,
    pub body_timeout: Duration,
    /// Deliveries processed at once; beyond it: 503 `overloaded`.
    pub max_concurrent_deliveries: usize,
    /// After SIGTERM, how long in-flight requests may take before the process exits.
    pub shutdown_timeout: Duration,
    /// Admin listener: /metrics, /api/stats, /dashboard, health.
    pub admin_listen: String,
    pub admin_token: Option<SecretString>,
    /// Owner notifications: where and how to send them (`None`: queued, not sent).
    pub notify: Option<crate::notify::NotifySettings>,
}

impl Settings {
    /// Defaults for tests and embedding: loopback port 0, given database and scanners.
    pub fn new(database_url: &str, scanners: Vec<ScannerSpec>) -> Self {
        Settings {
            listen: "127.0.0.1:0".into(),
            database_url: SecretString::from(database_url.to_owned()),
            pool: PoolSettings::default(),
            scanners,
            keys_ttl: Duration::from_secs(3600),
            keys_refetch_interval: Duration::from_secs(60),
            keys_timeout: Duration::from_secs(5),
            github_token: None,
            max_body: 8 << 20,
            retry_after: Duration::from_secs(30),
            request_timeout: Duration::from_secs(25),
            body_timeout: Duration::from_secs(10),
            max_concurrent_deliveries: 128,
            shutdown_timeout: Duration::from_secs(30),
            admin_listen: "127.0.0.1:0".into(),
            admin_token: None,
            notify: None,
        }
    }
}

impl TryFrom<crate::cli::ServeArgs> for Settings {
    type Error = anyhow::Error;

    fn try_from(a: crate::cli::ServeArgs) -> anyhow::Result<Self> {
        Ok(Settings {
            notify: a.notify.settings()?,
            listen: a.listen,
            pool: a.db.pool_settings(true),
            database_url: a.db.database_url,
            scanners: a.scanners,
            keys_ttl: a.keys_ttl,
            keys_refetch_interval: a.keys_refetch_interval,
            keys_timeout: a.keys_timeout,
            github_token: a.github_token,
            max_body: a.max_body,
            retry_after: a.retry_after,
            request_timeout: a.request_timeout,
            body_timeout: a.body_timeout,
            max_concurrent_deliveries: a.max_concurrent_deliveries as usize,
            shutdown_timeout: a.shutdown_timeout,
            admin_listen: a.admin_listen,
            admin_token: a.admin_token,
        })
    }
}

/// Whether `url` names this machine (`localhost` or a loopback address): the only
/// place plain http may carry something secret.
pub fn is_loopback_url(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The URL with any password replaced, for logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparseable URL>".into(),
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

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert!(!redact_url("postgres://u:secret@h/db").contains("secret"));
    }
}
