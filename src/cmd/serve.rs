//! `revoker serve`: the receiver, until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use secrecy::{ExposeSecret, SecretString};

use revoker::config::{defaults, parse_size, HolderSettings, RateLimit, Settings};
use revoker::signature::{HeaderPrefix, PerScanner, Protocol, ScannerSpec};
use revoker::startup::{shutdown_signal, Application};
use revoker::tls::TlsSettings;

use super::db::{DbArgs, MigrateUrlArgs, PoolArgs};
use super::notify::{NotifyArgs, NotifyPollArgs};

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the public webhook listener (use port 0 for any free port).
    #[arg(long, env = "REVOKER_LISTEN", default_value = defaults::LISTEN)]
    pub listen: String,

    /// A scanner as NAME=SOURCE; repeatable (env: comma-separated). Alerts go to
    /// POST /secret-scanning/NAME. SOURCE is an http(s) URL or a file path holding
    /// GitHub's public-key JSON.
    #[arg(
        long = "scanner",
        env = "REVOKER_SCANNERS",
        value_delimiter = ',',
        default_value = defaults::SCANNER
    )]
    pub scanners: Vec<ScannerSpec>,

    /// A scanner's protocol as NAME=PROTOCOL: `github` (the default: GitHub, deps.dev)
    /// or `gitlab` (GitLab's Partner API: `Gitlab-` headers, answered 2xx once verified,
    /// since GitLab retries anything else). Repeatable (env: comma-separated).
    #[arg(
        long = "scanner-protocol",
        env = "REVOKER_SCANNER_PROTOCOLS",
        value_delimiter = ','
    )]
    pub scanner_protocols: Vec<PerScanner<Protocol>>,

    /// A scanner's signature header prefix as NAME=PREFIX: the headers become
    /// PREFIX-Public-Key-Identifier and PREFIX-Public-Key-Signature (default by protocol:
    /// Github, Gitlab; deps.dev uses GOSST for PyPI, DepsDev for RubyGems). Repeatable
    /// (env: comma-separated).
    #[arg(
        long = "scanner-header-prefix",
        env = "REVOKER_SCANNER_HEADER_PREFIXES",
        value_delimiter = ','
    )]
    pub scanner_header_prefixes: Vec<PerScanner<HeaderPrefix>>,

    /// How long fetched scanner keys are trusted before a background refresh.
    #[arg(long, env = "REVOKER_KEYS_TTL", default_value = defaults::KEYS_TTL, value_parser = humantime::parse_duration)]
    pub keys_ttl: Duration,

    /// Minimum time between two key fetches (an unknown key id triggers at most one
    /// refetch per interval).
    #[arg(long, env = "REVOKER_KEYS_REFETCH_INTERVAL", default_value = defaults::KEYS_REFETCH_INTERVAL, value_parser = humantime::parse_duration)]
    pub keys_refetch_interval: Duration,

    /// Timeout of one key fetch over HTTP.
    #[arg(long, env = "REVOKER_KEYS_TIMEOUT", default_value = defaults::KEYS_TIMEOUT, value_parser = humantime::parse_duration)]
    pub keys_timeout: Duration,

    /// Token sent as a bearer token to the `github` scanner's key URL only (raises
    /// GitHub's rate limit). Never sent to other scanners' sources.
    #[arg(long, env = "GITHUB_TOKEN", hide_env_values = true)]
    pub github_token: Option<SecretString>,

    /// Largest accepted request body (e.g. 8MiB, 512KiB, 1000000); larger gets 413.
    #[arg(long, env = "REVOKER_MAX_BODY", default_value = defaults::MAX_BODY, value_parser = parse_size)]
    pub max_body: usize,

    /// Retry-After sent with 503 answers.
    #[arg(long, env = "REVOKER_RETRY_AFTER", default_value = defaults::RETRY_AFTER, value_parser = humantime::parse_duration)]
    pub retry_after: Duration,

    /// Deadline for a whole delivery (below the 15 s in which GitHub's partner agreement
    /// wants a 2xx); past it: 503, nothing recorded unless a commit was already under
    /// way (a resent body is then answered from that report).
    #[arg(long, env = "REVOKER_REQUEST_TIMEOUT", default_value = defaults::REQUEST_TIMEOUT, value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Verified deliveries processed at once (a slot is taken after the signature
    /// verifies); one more gets 503 `overloaded` with Retry-After at once instead of
    /// queueing.
    #[arg(long, env = "REVOKER_MAX_CONCURRENT_DELIVERIES", default_value_t = defaults::MAX_CONCURRENT_DELIVERIES, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_concurrent_deliveries: u32,

    /// Bytes of request bodies not yet verified held at once, beyond each body's
    /// first 64 KiB (free); a body waits for budget within --body-timeout (then 408).
    #[arg(long, env = "REVOKER_UNVERIFIED_BODY_BUDGET", default_value = defaults::UNVERIFIED_BODY_BUDGET, value_parser = parse_size)]
    pub unverified_body_budget: usize,

    /// Memory reserved for verified deliveries at once (body, parsed items,
    /// candidates, feedback); a delivery that does not fit gets 503 `overloaded`.
    #[arg(long, env = "REVOKER_VERIFIED_MEMORY_BUDGET", default_value = defaults::VERIFIED_MEMORY_BUDGET, value_parser = parse_size)]
    pub verified_memory_budget: usize,

    /// Open connections on the public listener; when all are taken, new connections
    /// wait in the kernel's accept queue. Lowered at start (with a warning) when the
    /// open-file limit cannot hold it beside --admin-max-connections and a reserve.
    #[arg(long, env = "REVOKER_MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Open connections on the admin listener (/metrics, /api/stats, /dashboard,
    /// probes); when all are taken, new ones wait in the kernel's accept queue. Kept
    /// apart from --max-connections within the open-file limit, so no number of admin
    /// connections can take the descriptors deliveries need. --header-timeout and the
    /// 64 KiB head limit (431) apply as on the public listener.
    #[arg(long, env = "REVOKER_ADMIN_MAX_CONNECTIONS", default_value_t = defaults::ADMIN_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub admin_max_connections: u32,

    /// Deadline for a request's head (request line and headers) on either listener,
    /// counted from the connection's start or the previous answer; past it the
    /// connection is closed.
    #[arg(long, env = "REVOKER_HEADER_TIMEOUT", default_value = defaults::HEADER_TIMEOUT, value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,

    /// Deadline for receiving a request body; a client that trickles gets 408.
    #[arg(long, env = "REVOKER_BODY_TIMEOUT", default_value = defaults::BODY_TIMEOUT, value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,

    /// After SIGTERM/SIGINT, how long in-flight requests may finish before exit.
    #[arg(long, env = "REVOKER_SHUTDOWN_TIMEOUT", default_value = defaults::SHUTDOWN_TIMEOUT, value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Address of the admin listener: /metrics, /api/stats, /dashboard, /healthz,
    /// /readyz. Keep it private; a non-loopback address requires --admin-token.
    #[arg(long, env = "REVOKER_ADMIN_LISTEN", default_value = defaults::ADMIN_LISTEN)]
    pub admin_listen: String,

    /// Bearer token required by /metrics and /api/stats on the admin listener.
    #[arg(long, env = "REVOKER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<SecretString>,

    /// Enables GitLab's Token Revocation API on the webhook listener
    /// (GET /v1/revocable_token_types, POST /v1/revoke_tokens) for a GitLab that sends
    /// this token in its Authorization header. Repeatable (env: comma-separated); a
    /// secret, never logged. Unset: those paths answer 404.
    #[arg(
        long = "revocation-api-token",
        env = "REVOKER_REVOCATION_API_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub revocation_api_tokens: Vec<SecretString>,

    /// Token types the Revocation API offers (comma-separated); a request naming
    /// another type is answered 400.
    #[arg(long = "revocation-api-types", env = "REVOKER_REVOCATION_API_TYPES", value_delimiter = ',', default_value = defaults::REVOCATION_API_TYPES)]
    pub revocation_api_types: Vec<String>,

    /// The holder endpoints on the public listener (on|off): GET and DELETE
    /// /v1/tokens/current (a token's holder checks or revokes it with the token as
    /// bearer; GitHub's validity checks), POST /oauth/revoke (RFC 7009) and POST
    /// /oauth/introspect (RFC 7662, only with --introspection-client). off: 404.
    #[arg(long, env = "REVOKER_HOLDER_ENDPOINTS", default_value = "on", value_name = "on|off", value_parser = on_off, action = clap::ArgAction::Set)]
    pub holder_endpoints: bool,

    /// How many well-formed tokens one client address may present to the holder
    /// endpoints: N/s, N/m, N/h, or off. Past it: 429 with Retry-After. Strings that are
    /// no token are answered without the database and not counted; introspection
    /// (authenticated) is not limited.
    #[arg(long, env = "REVOKER_HOLDER_RATE_LIMIT", default_value = defaults::HOLDER_RATE_LIMIT, value_name = "RATE")]
    pub holder_rate_limit: String,

    /// Tokens one client address may present at once before --holder-rate-limit applies.
    #[arg(long, env = "REVOKER_HOLDER_RATE_BURST", default_value_t = defaults::HOLDER_RATE_BURST, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub holder_rate_burst: u32,

    /// A proxy in front of the public listener (CIDR or address; repeatable, env
    /// comma-separated): from a peer inside one, the client address the holder
    /// endpoints' rate limit counts is the right-most X-Forwarded-For address that is
    /// not itself a trusted proxy. Unset: the TCP peer, X-Forwarded-For ignored.
    #[arg(long = "trusted-proxy", env = "REVOKER_TRUSTED_PROXIES", value_delimiter = ',', value_name = "CIDR", value_parser = parse_cidr)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// A client of POST /oauth/introspect (RFC 7662), as ID:SECRET, sent by it with HTTP
    /// Basic authentication (the registry's API servers). Repeatable (also
    /// comma-separated, so a secret holds no comma); a secret of at least 16 characters,
    /// never logged. Unset: introspection answers 404.
    #[arg(
        long = "introspection-client",
        env = "REVOKER_INTROSPECTION_CLIENTS",
        value_delimiter = ',',
        value_name = "ID:SECRET",
        hide_env_values = true
    )]
    pub introspection_clients: Vec<SecretString>,

    /// Serve the public listener over HTTPS with this certificate (PEM: the server's
    /// certificate, then intermediates); needs --tls-key. TLS 1.2 and 1.3 only. Re-read
    /// when the file changes or on SIGHUP, without dropping connections. Unset: plain
    /// HTTP (terminate TLS in front). The admin listener stays plain HTTP.
    #[arg(long, env = "REVOKER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "REVOKER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// How often --tls-cert and --tls-key are checked for a change.
    #[arg(long, env = "REVOKER_TLS_CHECK_INTERVAL", default_value = defaults::TLS_CHECK_INTERVAL, value_parser = humantime::parse_duration)]
    pub tls_check_interval: Duration,

    /// Overwrite url, source and type of report items and notifications older than
    /// this with "(purged)", checked hourly (GitHub's partner agreement: within 30 days;
    /// a longer value is warned about). `revoker purge` runs it once.
    #[arg(long, env = "REVOKER_RETENTION", default_value = defaults::RETENTION, value_parser = humantime::parse_duration)]
    pub retention: Duration,

    /// The dashboard's on-call panel warns about a scanner that has had no report (nor
    /// a delivery to this instance) for this long.
    #[arg(long, env = "REVOKER_SCANNER_QUIET_AFTER", default_value = defaults::SCANNER_QUIET_AFTER, value_parser = humantime::parse_duration)]
    pub scanner_quiet_after: Duration,

    #[command(flatten)]
    pub formats: super::FormatsArgs,

    #[command(flatten)]
    pub notify: NotifyArgs,

    #[command(flatten)]
    pub notify_poll: NotifyPollArgs,

    #[command(flatten)]
    pub db: DbArgs,

    #[command(flatten)]
    pub migrate: MigrateUrlArgs,

    #[command(flatten)]
    pub pool: PoolArgs,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut settings = args.into_settings()?;
    revoker::startup::fit_open_file_limit(&mut settings)?;
    let app = Application::build(settings).await?;
    app.run_until_stopped(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

impl ServeArgs {
    /// The library's typed settings from these flags.
    fn into_settings(self) -> anyhow::Result<Settings> {
        let a = self;
        Ok(Settings {
            notify: a
                .notify
                .settings(Some(a.notify_poll.notify_poll_interval))?,
            listen: a.listen,
            pool: a.pool.pool_settings(&a.db, true),
            database_url: a.db.database_url,
            migrate_database_url: a.migrate.migrate_database_url,
            scanners: a.scanners,
            scanner_protocols: a.scanner_protocols,
            scanner_header_prefixes: a.scanner_header_prefixes,
            keys_ttl: a.keys_ttl,
            keys_refetch_interval: a.keys_refetch_interval,
            keys_timeout: a.keys_timeout,
            github_token: a.github_token,
            max_body: a.max_body,
            retry_after: a.retry_after,
            request_timeout: a.request_timeout,
            body_timeout: a.body_timeout,
            max_concurrent_deliveries: a.max_concurrent_deliveries as usize,
            unverified_body_budget: a.unverified_body_budget,
            verified_memory_budget: a.verified_memory_budget,
            max_connections: a.max_connections as usize,
            admin_max_connections: a.admin_max_connections as usize,
            header_timeout: a.header_timeout,
            shutdown_timeout: a.shutdown_timeout,
            admin_listen: a.admin_listen,
            admin_token: a.admin_token,
            revocation_api_tokens: a.revocation_api_tokens,
            revocation_api_types: a.revocation_api_types,
            retention: Some(a.retention),
            scanner_quiet_after: a.scanner_quiet_after,
            formats: a.formats.token_formats,
            holder: HolderSettings {
                enabled: a.holder_endpoints,
                rate_limit: RateLimit::parse(&a.holder_rate_limit, a.holder_rate_burst)
                    .map_err(|e| anyhow::anyhow!("--holder-rate-limit: {e}"))?,
                trusted_proxies: a.trusted_proxies,
                introspection_clients: a
                    .introspection_clients
                    .iter()
                    .enumerate()
                    .map(|(i, c)| introspection_client(i + 1, c.expose_secret()))
                    .collect::<anyhow::Result<_>>()?,
            },
            tls: match (a.tls_cert, a.tls_key) {
                (Some(cert), Some(key)) => Some(TlsSettings {
                    cert,
                    key,
                    check_interval: a.tls_check_interval,
                }),
                _ => None,
            },
        })
    }
}

/// `on` or `off` (also `true`/`false`, `1`/`0`).
fn on_off(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err("expected on or off".to_owned()),
    }
}

/// A CIDR (`10.0.0.0/8`, `fd00::/8`) or one address (`10.1.2.3`).
fn parse_cidr(value: &str) -> Result<ipnet::IpNet, String> {
    let value = value.trim();
    value
        .parse::<ipnet::IpNet>()
        .or_else(|_| value.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| "expected a CIDR such as 10.0.0.0/8 or an address".to_owned())
}

/// `--introspection-client ID:SECRET`, the `n`th, checked without quoting any of it (a
/// comma splits a value, so a secret holding one would leave part of it in the next).
fn introspection_client(n: usize, value: &str) -> anyhow::Result<(String, SecretString)> {
    let which = format!("--introspection-client number {n} (REVOKER_INTROSPECTION_CLIENTS)");
    let Some((id, secret)) = value.trim().split_once(':') else {
        anyhow::bail!("{which} is not ID:SECRET");
    };
    if id.is_empty() || id.chars().any(|c| c.is_control() || c == ' ') {
        anyhow::bail!("{which} has an empty ID or one with spaces or control characters");
    }
    if secret.chars().count() < 16 {
        anyhow::bail!(
            "the secret of {which} is shorter than 16 characters (or holds a comma, which separates clients); it must be a real secret"
        );
    }
    Ok((id.to_owned(), SecretString::from(secret.to_owned())))
}
