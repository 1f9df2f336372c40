//! Redaction: what may reach a log line, an error message, a terminal, the database or
//! an outbound payload when the text came from a client. Every token-shaped run of any
//! known format (enabled or not: [`crate::domain::format::FORMATS`]) becomes its prefix
//! and `[redacted]` (`cio_tp_[redacted]`, `cio[redacted]`), however it is written
//! (percent-encoded, JSON-escaped, any mix: see [`crate::domain::scan::runs`]); a URL's
//! password becomes `***`.
//!
//! [`redact_tokens`] is the one redaction of client text: every boundary where such a
//! string is stored or sent (a delivery's `type`, `url` and `source`, a replayed
//! finding's fields, a path segment, a key id) calls it.

use std::borrow::Cow;

use super::scan;

/// What a redacted `cio_tp_` run is replaced with.
pub const REDACTED: &str = "cio_tp_[redacted]";

/// `s` with every run of a known format's prefix and the letters and digits after it
/// (in `s` or in any layer of percent-encoding and JSON escapes of it) replaced by the
/// prefix and `[redacted]`. Borrowed when there is nothing to redact.
pub fn redact_tokens(s: &str) -> Cow<'_, str> {
    let runs = scan::runs(s.as_bytes());
    if runs.is_empty() {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut from = 0;
    for (run, prefix) in runs {
        // Runs start at an ASCII byte (`c`, `%`, a backslash) and end after one, so they
        // are char boundaries of `s`; never cut a character all the same.
        let mut start = run.start.max(from);
        while !s.is_char_boundary(start) {
            start -= 1;
        }
        let mut end = run.end.min(s.len());
        while !s.is_char_boundary(end) {
            end += 1;
        }
        out.push_str(&s[from..start.max(from)]);
        out.push_str(prefix);
        out.push_str("[redacted]");
        from = end.max(from);
    }
    out.push_str(&s[from..]);
    Cow::Owned(out)
}

/// The URL with any password replaced, for logs: the one in `user:password@` and a
/// `password=` query parameter (which the PostgreSQL driver reads too). A PostgreSQL
/// URL with several hosts (`h1:5432,h2:5432`, which no URL parser takes) is read by hand.
pub fn redact_url(url: &str) -> String {
    if let Some(parts) = UrlParts::split(url).filter(|p| p.hosts.contains(',')) {
        return redact_host_list(&parts);
    }
    let Ok(mut u) = url::Url::parse(url) else {
        return "<unparseable URL>".into();
    };
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    if u.query_pairs()
        .any(|(k, _)| k.eq_ignore_ascii_case("password"))
    {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if k.eq_ignore_ascii_case("password") {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// A `scheme://[userinfo@]hosts[/path][?query]` URL cut at its separators by hand, for
/// a PostgreSQL URL with several hosts (`h1:5432,h2:5432`, libpq's syntax), which no URL
/// parser takes. The connection (`store/postgres/hosts.rs`) and its redaction
/// ([`redact_url`]) read it with this one cut, so both find the same password.
#[derive(Debug, Clone, Copy)]
pub struct UrlParts<'u> {
    pub scheme: &'u str,
    /// Up to the last `@` before the hosts (user, and `:password`).
    pub userinfo: Option<&'u str>,
    /// The comma-separated host list (`host[:port]`, `[v6]:port`); may be empty.
    pub hosts: &'u str,
    /// From the first `/` after the hosts to the `?` (empty when absent).
    pub path: &'u str,
    /// After the `?`.
    pub query: Option<&'u str>,
}

impl<'u> UrlParts<'u> {
    /// `None` without `scheme://`.
    pub fn split(url: &'u str) -> Option<Self> {
        let (scheme, rest) = url.split_once("://")?;
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((user, hosts)) => (Some(user), hosts),
            None => (None, authority),
        };
        let (path, query) = match tail.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (tail, None),
        };
        Some(UrlParts {
            scheme,
            userinfo,
            hosts,
            path,
            query,
        })
    }
}

/// [`redact_url`] for a URL with a host list.
fn redact_host_list(parts: &UrlParts<'_>) -> String {
    let UrlParts {
        scheme,
        userinfo,
        hosts,
        path,
        query,
    } = *parts;
    let user = match userinfo {
        Some(user) => match user.split_once(':') {
            Some((name, _)) => format!("{name}:***@"),
            None => format!("{user}@"),
        },
        None => String::new(),
    };
    let query = match query {
        Some(query) => {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| {
                    // The key as the driver reads it: percent-decoded.
                    let key = url::form_urlencoded::parse(pair.as_bytes()).next();
                    match key {
                        Some((k, _)) if k.eq_ignore_ascii_case("password") => {
                            format!("{}=***", pair.split('=').next().unwrap_or_default())
                        }
                        _ => pair.to_owned(),
                    }
                })
                .collect();
            format!("?{}", pairs.join("&"))
        }
        None => String::new(),
    };
    format!("{scheme}://{user}{hosts}{path}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::token::{self, Token};

    #[test]
    fn redact_url_hides_a_password_wherever_the_driver_reads_one() {
        for url in [
            "postgres://revoker:hunter2@db:5432/revoker",
            "postgres://revoker@db/revoker?password=hunter2",
            "postgres://revoker@db/revoker?sslmode=require&PASSWORD=hunter2",
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("***") && shown.contains("db"), "{shown}");
        }
        assert_eq!(redact_url("sqlite://revoker.db"), "sqlite://revoker.db");
        // Several hosts (libpq's syntax): the hosts shown, the password not.
        for url in [
            "postgres://revoker:hunter2@db1:5432,db2:5432/revoker?target_session_attrs=read-write",
            "postgres://revoker@db1,db2/revoker?sslmode=require&Password=hunter2",
            "postgres://revoker@db1,db2/revoker?pass%77ord=hunter2",
            "postgresql://revoker:p%40ss:hunter2@db1,[::1]:5433/revoker",
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(
                shown.contains("***")
                    && shown.contains("db1")
                    && shown.contains(",")
                    && !shown.contains("unparseable"),
                "{shown}"
            );
        }
        assert!(redact_url("postgres://u@h/d?sslmode=require").ends_with("?sslmode=require"));
    }

    #[test]
    fn redact_hides_every_token_run() {
        let t = Token::generate();
        let s = format!("a/{}/b {}x", t.expose_secret(), t.expose_secret());
        let r = redact_tokens(&s);
        assert_eq!(r, "a/cio_tp_[redacted]/b cio_tp_[redacted]");
        assert!(!r.contains(&t.expose_secret()[token::PREFIX.len()..]));
        assert!(matches!(
            redact_tokens("github"),
            std::borrow::Cow::Borrowed("github")
        ));
        assert_eq!(redact_tokens("cio_tp_"), "cio_tp_[redacted]");
    }

    #[test]
    fn redact_hides_every_encoding_of_a_token() {
        let t = Token::generate();
        let secret = &t.expose_secret()[token::PREFIX.len()..];
        for s in [
            format!("https://x/?q=cio%5Ftp%5F{secret}&b=1"),
            format!("%63io_tp_{secret}"),
            format!("\\u0063io_tp_{secret}"),
            format!("cio%255Ftp%255F{secret}"),
        ] {
            let r = redact_tokens(&s);
            assert!(!r.contains(&secret[..20]), "{r}");
            assert!(r.contains(REDACTED), "{r}");
        }
        assert_eq!(
            redact_tokens(&format!("a cio%5Ftp%5F{secret}&b=1")),
            "a cio_tp_[redacted]&b=1"
        );
        assert_eq!(redact_tokens("100% sure \\ é"), "100% sure \\ é");
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
