//! Redaction: what may reach a log line, an error message or the database when the
//! text came from a client. Any `cio_tp_…` run becomes `cio_tp_[redacted]`; a URL's
//! password becomes `***`.

use std::borrow::Cow;

use super::token;

/// `s` with every `cio_tp_…` run (the prefix and the letters and digits after it)
/// replaced by `cio_tp_[redacted]`: for client-chosen strings outside the body (a path
/// segment, a key id) that end up in logs or error messages.
pub fn redact_tokens(s: &str) -> Cow<'_, str> {
    if !s.contains(token::PREFIX) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find(token::PREFIX) {
        out.push_str(&rest[..at]);
        out.push_str("cio_tp_[redacted]");
        let after = &rest[at + token::PREFIX.len()..];
        let run = after
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(after.len());
        rest = &after[run..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The URL with any password replaced, for logs: the one in `user:password@` and a
/// `password=` query parameter (which the PostgreSQL driver reads too).
pub fn redact_url(url: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::token::Token;

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
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert!(!redact_url("postgres://u:secret@h/db").contains("secret"));
    }
}
