//! Remote replay: sending batches to a running receiver exactly as GitHub would.
//!
//! Owns the signing key ([`load_signing_key`]), the signature ([`sign_body`]), the URL
//! rule ([`check_remote_url`]), the HTTP client ([`ReplayClient`]) and one signed POST
//! per batch ([`post_batch`]).
//!
//! Invariants:
//! - Raw tokens only ever travel over https, or plain http to this machine.
//! - They go to `--url` and nowhere else: a redirect is never followed. A 3xx answer is
//!   an error naming its `Location` (tokens redacted, cut to 200 characters), and the
//!   replay stops there.
//! - The body is the GitHub alert shape (`[{"token", "type", "url", "source"}]`) and is
//!   signed with the team's P-256 key under the GitHub header names, so the receiver
//!   treats a replay like any scanner delivery.
//! - An error never quotes the receiver's raw body (it could echo the request, tokens
//!   included): only the receiver's own JSON `message`, cut to 300 characters.
//! - The answer must be one feedback entry per item sent, in order.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};

use crate::domain::alert::Feedback;
use crate::domain::redact::redact_tokens;
use crate::domain::Label;
use crate::signature::{KEY_ID_HEADER, SIGNATURE_HEADER};
use crate::support::Redirects;

/// How long one POST (and its connection) may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Loads a PKCS#8 PEM P-256 private key (as written by `revoker keys generate`).
pub fn load_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    use p256::pkcs8::DecodePrivateKey;
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|_| {
        anyhow::anyhow!(
            "{} is not a PKCS#8 PEM P-256 private key (make one with `revoker keys generate`)",
            path.display()
        )
    })
}

/// Signs a body the way GitHub does: base64 of a DER ECDSA P-256/SHA-256 signature.
pub fn sign_body(key: &SigningKey, body: &[u8]) -> String {
    let sig: Signature = key.sign(body);
    base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
}

/// Refuses to send raw tokens over cleartext HTTP to anything but this machine.
pub fn check_remote_url(url: &str) -> anyhow::Result<()> {
    crate::support::require_https(
        url,
        "--url",
        &format!("--url {url:?}"),
        "http would send raw tokens in cleartext",
    )
}

/// The client of remote replays: 60 s per request, redirects never followed (a 3xx is
/// an error, see [`post_batch`]). [`client`] is the only way to make one, so a replay
/// cannot be handed a client that follows them.
#[derive(Clone)]
pub struct ReplayClient(reqwest::Client);

/// The one [`ReplayClient`].
pub(super) fn client() -> anyhow::Result<ReplayClient> {
    Ok(ReplayClient(crate::support::http_client(
        TIMEOUT,
        Redirects::Never,
    )?))
}

/// The longest part of a redirect's `Location` an error quotes.
const MAX_LOCATION: usize = 200;

/// The error for a 3xx answer: where the receiver pointed (tokens redacted, then cut to
/// [`MAX_LOCATION`] characters, quoted with control characters escaped), and that
/// nothing went there.
fn redirect_error(status: reqwest::StatusCode, location: Option<&[u8]>) -> anyhow::Error {
    let target = match location {
        Some(bytes) => {
            let text = String::from_utf8_lossy(bytes);
            let redacted = redact_tokens(&text);
            let mut cut: String = redacted.chars().take(MAX_LOCATION).collect();
            if redacted.chars().nth(MAX_LOCATION).is_some() {
                cut.push('…');
            }
            format!("to {cut:?}")
        }
        None => "without a Location".to_owned(),
    };
    anyhow::anyhow!(
        "the receiver answered HTTP {status}, a redirect {target}: not followed, nothing was \
         sent there (the body carries raw tokens; give --url the receiver's alert URL itself)"
    )
}

/// Signs and POSTs one batch's alert array (`body`, of `items` items, written by
/// `super::alert_body`); returns one label per occurrence. A 3xx answer is an error
/// ([`redirect_error`]).
pub(super) async fn post_batch(
    client: &ReplayClient,
    url: &str,
    key: &SigningKey,
    key_id: &str,
    body: bytes::Bytes,
    items: usize,
) -> anyhow::Result<Vec<Label>> {
    let signature = sign_body(key, &body);
    let resp = client
        .0
        .post(url)
        .header("content-type", "application/json")
        .header(KEY_ID_HEADER, key_id)
        .header(SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    if status.is_redirection() {
        let location = resp.headers().get(reqwest::header::LOCATION);
        return Err(redirect_error(status, location.map(|l| l.as_bytes())));
    }
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        // Only the receiver's own JSON message: a raw body could echo the request.
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|j| j["message"].as_str().map(|m| m.chars().take(300).collect()))
            .unwrap_or_else(|| format!("a non-JSON body of {} bytes", text.len()));
        let hint = if status == reqwest::StatusCode::PAYLOAD_TOO_LARGE {
            " (lower --batch-size)"
        } else {
            ""
        };
        bail!("the receiver answered HTTP {status}: {message}{hint}");
    }
    let feedback: Vec<Feedback> =
        serde_json::from_str(&text).context("the receiver's answer is not a feedback array")?;
    if feedback.len() != items {
        bail!(
            "the receiver answered {} entries for {items} items",
            feedback.len(),
        );
    }
    Ok(feedback.into_iter().map(|f| f.label).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A redirect's error names the Location, tokens redacted, cut to 200 characters,
    /// control characters escaped.
    #[test]
    fn a_redirect_error_names_the_location_redacted_and_bounded() {
        let token = "cio_tp_ACAyMYNZERnTTS1iqvGWBaE8Nt8Ebu052fSx";
        let status = reqwest::StatusCode::TEMPORARY_REDIRECT;
        let location = format!("http://127.0.0.2:9/collect?t={token}");
        let err = redirect_error(status, Some(location.as_bytes())).to_string();
        assert!(
            err.contains(r#"to "http://127.0.0.2:9/collect?t=cio_tp_[redacted]""#),
            "{err}"
        );
        assert!(!err.contains(&token[7..]), "{err}");
        assert!(err.starts_with("the receiver answered HTTP 307 Temporary Redirect"));

        let long = format!("https://x.example/{}{token}", "a".repeat(190));
        let err = redirect_error(status, Some(long.as_bytes())).to_string();
        assert!(err.contains(&format!(r#"/{}…""#, "a".repeat(182))), "{err}");
        assert!(!err.contains("cio_tp_"), "cut after redaction: {err}");

        let err = redirect_error(status, Some(b"http://h/\x1b[2J\xff")).to_string();
        assert!(err.contains("\"http://h/\\u{1b}[2J\u{fffd}\""), "{err}");
        let err = redirect_error(reqwest::StatusCode::MOVED_PERMANENTLY, None).to_string();
        assert!(err.contains("301 Moved Permanently, a redirect without a Location"));
    }
}
