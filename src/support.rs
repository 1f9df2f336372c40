//! Small helpers every layer may use; like [`crate::domain`], this module uses no other
//! module of the crate.
//!
//! - [`error_chain`]: an error and its causes on one log line.
//! - [`require_https`]: the one rule for URLs that carry something secret (https, or
//!   plain http to this machine only).
//! - [`http_client`]: the one outbound HTTP client setup (timeouts, user agent, which
//!   [`Redirects`] are followed), for key fetches, owner notifications and remote replay.
//! - [`retry`]: the one bounded retry loop with a growing pause.
//! - [`default_duration`]: a default written as on the command line, parsed.
//! - [`credentials`]: the credentials of an `Authorization` header in a scheme, the
//!   scheme's case ignored.
//! - [`SecretDigest`]: the one comparison of a presented bearer secret with a
//!   configured one (constant time, blind to length).

use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Context};
use sha2::Digest;

/// A default duration written as on the command line (`30s`, `1h`); the settings
/// types parse the same strings their flags show as defaults.
pub fn default_duration(text: &str) -> Duration {
    humantime::parse_duration(text).expect("a default duration parses")
}

/// The credentials of an `Authorization` value in `scheme` (`Bearer`, `Basic`): the
/// scheme compared case-insensitively (RFC 9110 §11.1), the credentials trimmed;
/// `None` for another scheme or nothing after it.
pub fn credentials<'v>(value: &'v str, scheme: &str) -> Option<&'v str> {
    let value = value.trim_start();
    let (given, rest) = value.split_once([' ', '\t'])?;
    let rest = rest.trim();
    (given.eq_ignore_ascii_case(scheme) && !rest.is_empty()).then_some(rest)
}

/// A configured bearer secret (the admin token), kept as its SHA-256 digest so that
/// checking a presented value takes the same time whatever the secret is: both sides
/// are hashed, and the two digests are compared with `subtle`'s constant-time
/// equality. The time depends on the presented value's length only (which its sender
/// knows), never on how much of it matches the secret or on the secret's length.
/// `cargo bench --bench constant_time` measures that against a plain `==`.
#[derive(Clone)]
pub struct SecretDigest([u8; 32]);

impl SecretDigest {
    pub fn of(secret: &str) -> Self {
        SecretDigest(sha2::Sha256::digest(secret.as_bytes()).into())
    }

    /// Whether `presented` is the secret.
    pub fn matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        let presented: [u8; 32] = sha2::Sha256::digest(presented.as_bytes()).into();
        presented.ct_eq(&self.0).into()
    }
}

impl std::fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretDigest(..)")
    }
}

/// Writes an error chain on one line: `outer: cause: root cause`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(cause) = cur {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        cur = cause.source();
    }
    s
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

/// The https-or-loopback rule on a parsed URL: `https://…`, or `http://…` to this machine.
pub fn is_https_or_loopback(url: &url::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => is_loopback_url(url),
        _ => false,
    }
}

/// Accepts `https://…`, or `http://…` to a loopback address only. `flag` names the
/// option in the error (`--url`), `what` is the error's subject (`--url "x"`), and
/// `cleartext` says what plain http would expose (empty: say nothing).
pub fn require_https(url: &str, flag: &str, what: &str, cleartext: &str) -> anyhow::Result<()> {
    let parsed = url::Url::parse(url).with_context(|| format!("{what} is not a URL"))?;
    if is_https_or_loopback(&parsed) {
        return Ok(());
    }
    match parsed.scheme() {
        "http" if cleartext.is_empty() => {
            bail!("{flag} must use https; plain http is allowed only to localhost")
        }
        "http" => {
            bail!("{flag} must use https ({cleartext}); plain http is allowed only to localhost")
        }
        other => bail!("{flag} must be an https URL, not {other}:"),
    }
}

/// Which redirects an outbound client follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirects {
    /// None: a 3xx is an answer like any other, handed to the caller (owner
    /// notifications, remote replay: a redirect could carry a signed body, raw tokens
    /// inside, somewhere else).
    Never,
    /// Up to [`MAX_REDIRECTS`] hops, each to `https://…` or to plain `http://` on this
    /// machine, never from https down to http ([`redirect_refusal`]); anything else is
    /// an error, decided before any connection to the new URL (key fetches).
    HttpsOrLoopback,
}

/// The most redirect hops [`Redirects::HttpsOrLoopback`] follows in one request.
pub const MAX_REDIRECTS: usize = 5;

/// Why a redirect to `next` is not followed after the URLs of `previous` (the first
/// URL, then each hop so far), or `None` when it may be: at most [`MAX_REDIRECTS`]
/// hops, each to a URL [`is_https_or_loopback`] accepts, never from https to http.
/// The reason names `next` by scheme, host and port only (reqwest's error names the
/// URL that redirected).
pub fn redirect_refusal(next: &url::Url, previous: &[url::Url]) -> Option<String> {
    let origin = || {
        let port = next.port().map(|p| format!(":{p}")).unwrap_or_default();
        format!(
            "{}://{}{port}",
            next.scheme(),
            next.host_str().unwrap_or("")
        )
    };
    if previous.len() > MAX_REDIRECTS {
        return Some(format!("more than {MAX_REDIRECTS} redirects"));
    }
    if !is_https_or_loopback(next) {
        return Some(format!(
            "a redirect to {} is not followed: only to https, or to plain http on this machine",
            origin()
        ));
    }
    let from_https = previous.last().is_some_and(|p| p.scheme() == "https");
    if from_https && next.scheme() != "https" {
        return Some(format!(
            "a redirect from https down to {} is not followed",
            origin()
        ));
    }
    None
}

/// The outbound HTTP client: `timeout` per request (and to connect), revoker's user
/// agent, and the `redirects` it follows.
pub fn http_client(timeout: Duration, redirects: Redirects) -> reqwest::Result<reqwest::Client> {
    let policy = match redirects {
        Redirects::Never => reqwest::redirect::Policy::none(),
        Redirects::HttpsOrLoopback => reqwest::redirect::Policy::custom(|attempt| {
            match redirect_refusal(attempt.url(), attempt.previous()) {
                None => attempt.follow(),
                Some(reason) => attempt.error(reason),
            }
        }),
    };
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(policy)
        .user_agent(concat!("revoker/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Runs `op` until it succeeds, fails with an error `retryable` refuses, or has run
/// `attempts` times; before attempt n+1 it waits `pause(n)` (n from 1). Returns the
/// last error.
pub async fn retry<T, E, F, Fut>(
    attempts: u32,
    pause: impl Fn(u32) -> Duration,
    retryable: impl Fn(&E, u32) -> bool,
    mut op: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < attempts && retryable(&e, attempt) => {
                let wait = pause(attempt);
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_digest_matches_its_secret_only() {
        let secret = SecretDigest::of("s3cret-admin-token");
        assert!(secret.matches("s3cret-admin-token"));
        for other in [
            "",
            "s3cret-admin-toke",
            "s3cret-admin-tokenX",
            "S3cret-admin-token",
        ] {
            assert!(!secret.matches(other), "{other:?}");
        }
        assert!(SecretDigest::of("").matches(""));
        assert_eq!(format!("{secret:?}"), "SecretDigest(..)");
    }

    #[test]
    fn https_unless_loopback() {
        let check = |u| require_https(u, "--x", "--x", "");
        assert!(check("https://hooks.example.com/revoked").is_ok());
        assert!(check("http://127.0.0.1:8080/x").is_ok());
        assert!(check("http://[::1]:8080/x").is_ok());
        assert!(check("http://localhost/x").is_ok());
        let err = check("http://hooks.example.com/x").unwrap_err().to_string();
        assert_eq!(
            err,
            "--x must use https; plain http is allowed only to localhost"
        );
        let err = require_https("http://h/x", "--url", "--url", "it leaks")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "--url must use https (it leaks); plain http is allowed only to localhost"
        );
        assert!(check("ftp://hooks.example.com/x").is_err());
        assert!(check("not a url").is_err());
    }

    /// The redirect rule of key fetches: https, or plain http to this machine; never
    /// down from https; at most `MAX_REDIRECTS` hops.
    #[test]
    fn redirects_go_to_https_or_loopback_only() {
        let u = |s: &str| url::Url::parse(s).unwrap();
        let from_http = [u("http://127.0.0.1:1/keys")];
        let from_https = [u("https://api.github.com/meta")];
        for ok in [
            "https://keys.example/x",
            "http://127.0.0.1:2/keys",
            "http://127.0.0.2:2/keys",
            "http://[::1]:2/keys",
            "http://localhost/keys",
        ] {
            assert_eq!(redirect_refusal(&u(ok), &from_http), None, "{ok}");
        }
        assert_eq!(
            redirect_refusal(&u("https://keys.example/x"), &from_https),
            None
        );
        for (refused, origin) in [
            ("http://192.0.2.1/keys?x=1", "http://192.0.2.1"),
            ("http://keys.example:81/x", "http://keys.example:81"),
            ("ftp://127.0.0.1/keys", "ftp://127.0.0.1"),
            ("file:///etc/passwd", "file://"),
        ] {
            let reason = redirect_refusal(&u(refused), &from_http);
            assert_eq!(
                reason,
                Some(format!("a redirect to {origin} is not followed: only to https, or to plain http on this machine")),
                "{refused}"
            );
        }
        assert_eq!(
            redirect_refusal(&u("http://127.0.0.1:2/keys"), &from_https).as_deref(),
            Some("a redirect from https down to http://127.0.0.1:2 is not followed")
        );
        let hops = |n: usize| vec![u("https://a.example/"); n];
        let next = u("https://b.example/");
        assert_eq!(redirect_refusal(&next, &hops(MAX_REDIRECTS)), None);
        assert_eq!(
            redirect_refusal(&next, &hops(MAX_REDIRECTS + 1)).as_deref(),
            Some("more than 5 redirects")
        );
    }

    #[tokio::test]
    async fn retry_stops_at_success_refusal_or_limit() {
        let calls = std::cell::Cell::new(0);
        let r: Result<u32, &str> = retry(
            5,
            |_| Duration::ZERO,
            |_, _| true,
            || async {
                calls.set(calls.get() + 1);
                if calls.get() < 3 {
                    Err("busy")
                } else {
                    Ok(calls.get())
                }
            },
        )
        .await;
        assert_eq!(r, Ok(3));

        calls.set(0);
        let r: Result<(), &str> = retry(
            4,
            |_| Duration::ZERO,
            |_, _| true,
            || async {
                calls.set(calls.get() + 1);
                Err("busy")
            },
        )
        .await;
        assert_eq!((r, calls.get()), (Err("busy"), 4));

        calls.set(0);
        let r: Result<(), &str> = retry(
            4,
            |_| Duration::ZERO,
            |e, _| *e == "busy",
            || async {
                calls.set(calls.get() + 1);
                Err("fatal")
            },
        )
        .await;
        assert_eq!((r, calls.get()), (Err("fatal"), 1));
    }
}
