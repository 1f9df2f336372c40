//! Proof that a delivery comes from a trusted scanner.
//!
//! A delivery carries `Github-Public-Key-Identifier` and `Github-Public-Key-Signature`:
//! base64 (standard alphabet) of an ASN.1 DER ECDSA P-256/SHA-256 signature over the
//! **exact raw body bytes**. Nothing here parses or re-serialises the body.
//!
//! Other scanners send the same under other header names ([`protocol`]).
//!
//! [`source`] says where a scanner's keys come from and reads them; [`cache`] owns the
//! per-scanner key cache (fetch, TTL, single-flight refetch on an unknown key id, stale
//! keys kept when the source fails).

pub mod cache;
pub mod protocol;
pub mod source;

pub use cache::{caches_for, CacheTiming, KeyCache, KeyError};
pub use protocol::{protocols_for, HeaderPrefix, PerScanner, Protocol, ScannerProtocol};
pub use source::{
    add_to_key_file, check_key_file_takes, generate_key_file, KeySource, ScannerKey, ScannerSpec,
};

use base64::Engine;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};

/// Header naming the key that signed the delivery (matched case-insensitively).
pub const KEY_ID_HEADER: &str = "github-public-key-identifier";
/// Header carrying the base64 DER signature (matched case-insensitively).
pub const SIGNATURE_HEADER: &str = "github-public-key-signature";

/// Why a signature header could not be used. Safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature is not valid base64")]
    Base64,
    #[error("signature is not an ASN.1 DER ECDSA P-256 signature")]
    Der,
    #[error("signature does not match the body")]
    Mismatch,
}

/// Decodes the signature header: base64 (standard alphabet, padding optional) of DER.
pub fn decode_signature(header: &str) -> Result<Signature, SignatureError> {
    let der = base64::engine::general_purpose::STANDARD
        .decode(header.trim())
        .map_err(|_| SignatureError::Base64)?;
    Signature::from_der(&der).map_err(|_| SignatureError::Der)
}

/// Verifies `signature` over the exact `body` bytes with SHA-256.
pub fn verify(
    key: &VerifyingKey,
    body: &[u8],
    signature: &Signature,
) -> Result<(), SignatureError> {
    key.verify(body, signature)
        .map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::SigningKey;

    fn signed(body: &[u8]) -> (VerifyingKey, String) {
        let sk = SigningKey::random(&mut rand::rngs::OsRng);
        let sig: Signature = sk.sign(body);
        let b64 = base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes());
        (*sk.verifying_key(), b64)
    }

    #[test]
    fn verifies_exact_bytes_only() {
        let body = b"[{\"token\":\"x\"}]\n";
        let (vk, b64) = signed(body);
        let sig = decode_signature(&b64).unwrap();
        assert_eq!(verify(&vk, body, &sig), Ok(()));
        assert_eq!(
            verify(&vk, &body[..body.len() - 1], &sig),
            Err(SignatureError::Mismatch)
        );
        let mut flipped = body.to_vec();
        flipped[3] ^= 1;
        assert_eq!(verify(&vk, &flipped, &sig), Err(SignatureError::Mismatch));
    }

    #[test]
    fn rejects_malformed_headers() {
        assert_eq!(
            decode_signature("not base64!!"),
            Err(SignatureError::Base64)
        );
        assert_eq!(decode_signature("aGVsbG8="), Err(SignatureError::Der));
    }
}
