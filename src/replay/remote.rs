//! Remote replay: sending batches to a running receiver exactly as GitHub would.
//!
//! Owns the signing key ([`load_signing_key`]), the signature ([`sign_body`]), the URL
//! rule ([`check_remote_url`]), the HTTP client ([`client`]) and one signed POST per
//! batch ([`post_batch`]).
//!
//! Invariants:
//! - Raw tokens only ever travel over https, or plain http to this machine.
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
use serde::Serialize;

use super::formats::Found;
use crate::domain::alert::Feedback;
use crate::domain::Label;
use crate::signature::{KEY_ID_HEADER, SIGNATURE_HEADER};

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

/// The client for remote replays: 60 s per request, redirects followed.
pub(super) fn client() -> anyhow::Result<reqwest::Client> {
    Ok(crate::support::http_client(TIMEOUT, true)?)
}

/// Signs and POSTs one batch; returns one label per occurrence.
pub(super) async fn post_batch(
    client: &reqwest::Client,
    url: &str,
    key: &SigningKey,
    key_id: &str,
    batch: &[Found],
) -> anyhow::Result<Vec<Label>> {
    /// One element of a GitHub alert body.
    #[derive(Serialize)]
    struct Item<'a> {
        token: &'a str,
        #[serde(rename = "type")]
        token_type: &'a str,
        url: &'a str,
        source: &'a str,
    }
    let body = serde_json::to_vec(
        &batch
            .iter()
            .map(|f| Item {
                token: &f.token,
                token_type: &f.token_type,
                url: &f.url,
                source: &f.source,
            })
            .collect::<Vec<_>>(),
    )?;
    let signature = sign_body(key, &body);
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .header(KEY_ID_HEADER, key_id)
        .header(SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
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
    if feedback.len() != batch.len() {
        bail!(
            "the receiver answered {} entries for {} items",
            feedback.len(),
            batch.len()
        );
    }
    Ok(feedback.into_iter().map(|f| f.label).collect())
}
