//! The `cio_tp_` access token: generation, offline validation and hashing.
//!
//! Format (see `shared/PRODUCT.md`): `cio_tp_` + 30 random base62 characters + 6 base62
//! check digits, 43 characters in all. The check digits are the CRC-32/IEEE of the 30
//! random characters (prefix excluded), written as a base62 number in the alphabet
//! `0-9A-Za-z` (value order), left-padded with `0`.
//!
//! Invariants this module owns:
//! - A [`Token`] value is always well-formed: it can only be built by [`Token::generate`]
//!   or by parsing a string that passed every check.
//! - The raw string never leaves this module through `Debug` or `Display`; callers get
//!   the secret only through [`Token::expose_secret`], and the stored form is the
//!   SHA-256 of the whole string ([`TokenHash`]).

use std::fmt;
use std::str::FromStr;

use rand::distributions::{Alphanumeric, DistString};
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};

/// Every token starts with this.
pub const PREFIX: &str = "cio_tp_";
/// Number of random characters after the prefix.
pub const RANDOM_LEN: usize = 30;
/// Number of base62 check digits at the end.
pub const CHECK_LEN: usize = 6;
/// Total length of a token string.
pub const TOKEN_LEN: usize = PREFIX.len() + RANDOM_LEN + CHECK_LEN;

/// The base62 alphabet in value order.
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a string is not a well-formed `cio_tp_` token.
///
/// None of the variants carries the input itself, so the error is safe to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("missing the `cio_tp_` prefix")]
    MissingPrefix,
    #[error("wrong length: expected {TOKEN_LEN} characters, got {0}")]
    InvalidLength(usize),
    #[error(
        "invalid character at position {0} (only 0-9, A-Z and a-z are allowed after the prefix)"
    )]
    InvalidCharacter(usize),
    #[error("wrong check digits: the token claims {claimed}, its random part gives {actual}")]
    InvalidChecksum { claimed: String, actual: String },
}

/// A well-formed `cio_tp_` token. The string inside is a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A new token from the operating system's random number generator.
    pub fn generate() -> Self {
        let random = Alphanumeric.sample_string(&mut OsRng, RANDOM_LEN);
        let check = check_digits(random.as_bytes());
        let mut s = String::with_capacity(TOKEN_LEN);
        s.push_str(PREFIX);
        s.push_str(&random);
        s.push_str(std::str::from_utf8(&check).expect("base62 is ASCII"));
        Token(s)
    }

    /// Checks prefix, length, alphabet and check digits, in that order.
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        validate(s)?;
        Ok(Token(s.to_owned()))
    }

    /// The raw token. Only for showing it once at minting time.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the whole token string: the only form that is ever stored.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

impl FromStr for Token {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Token::parse(s)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({})", self.hash().prefix())
    }
}

/// Validates a candidate without allocating. `Ok(())` means `s` is a well-formed token.
pub fn validate(s: &str) -> Result<(), TokenError> {
    let Some(rest) = s.strip_prefix(PREFIX) else {
        return Err(TokenError::MissingPrefix);
    };
    if s.len() != TOKEN_LEN {
        return Err(TokenError::InvalidLength(s.chars().count()));
    }
    let bytes = rest.as_bytes();
    if let Some(i) = bytes.iter().position(|b| !b.is_ascii_alphanumeric()) {
        return Err(TokenError::InvalidCharacter(PREFIX.len() + i));
    }
    let (random, claimed) = bytes.split_at(RANDOM_LEN);
    let actual = check_digits(random);
    if claimed != actual {
        return Err(TokenError::InvalidChecksum {
            claimed: String::from_utf8_lossy(claimed).into_owned(),
            actual: String::from_utf8_lossy(&actual).into_owned(),
        });
    }
    Ok(())
}

/// The 6 base62 check digits of a random part: CRC-32/IEEE, base62, zero-padded.
pub fn check_digits(random: &[u8]) -> [u8; CHECK_LEN] {
    encode_base62(crc32fast::hash(random))
}

/// `value` in base62 (alphabet `0-9A-Za-z`), left-padded with `0` to 6 digits.
/// 62^6 > 2^32, so every `u32` fits.
pub fn encode_base62(mut value: u32) -> [u8; CHECK_LEN] {
    let mut out = [b'0'; CHECK_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    out
}

/// SHA-256 of a whole token string, as stored in the database and sent as feedback.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Hashes any string (a candidate or not): scanners correlate feedback by this.
    pub fn of(raw: &str) -> Self {
        TokenHash(Sha256::digest(raw.as_bytes()).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex characters: enough to find a token in the database, safe to log.
    pub fn prefix(&self) -> String {
        hex::encode(&self.0[..6])
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(TokenHash)
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", self.prefix())
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Debug shows a token by its hash prefix, never the secret; a hash's Debug shows
    /// the prefix and its Display the whole hex (what logs and feedback print).
    /// (Kills the `cargo mutants` survivors that emptied these impls.)
    #[test]
    fn debug_and_display_say_what_they_should_and_no_more() {
        let t = Token::generate();
        let h = t.hash();
        let debug = format!("{t:?}");
        assert_eq!(debug, format!("Token({})", h.prefix()));
        assert!(!debug.contains(t.expose_secret()));
        assert_eq!(h.prefix().len(), 12);
        assert_eq!(format!("{h:?}"), format!("TokenHash({})", h.prefix()));
        assert_eq!(format!("{h}"), h.to_hex());
        assert_eq!(format!("{h}").len(), 64);
    }

    const KNOWN: &str = "cio_tp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1yLcDB";

    #[test]
    fn known_vector_is_valid() {
        assert_eq!(KNOWN.len(), TOKEN_LEN);
        assert!(Token::parse(KNOWN).is_ok());
        assert_eq!(&check_digits(&[b'a'; 30]), b"1yLcDB");
    }

    #[test]
    fn base62_extremes() {
        assert_eq!(&encode_base62(u32::MAX), b"4gfFC3");
        assert_eq!(&encode_base62(0), b"000000");
        assert_eq!(&encode_base62(61), b"00000z");
        assert_eq!(&encode_base62(62), b"000010");
    }

    #[test]
    fn typed_errors() {
        assert_eq!(
            Token::parse("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"),
            Err(TokenError::MissingPrefix)
        );
        assert_eq!(
            Token::parse("cio_tp_abc"),
            Err(TokenError::InvalidLength(10))
        );
        assert_eq!(
            Token::parse("cio_tp_aaaaaaaaaaaaaa-aaaaaaaaaaaaaaa1yLcDB"),
            Err(TokenError::InvalidCharacter(21))
        );
        assert_eq!(
            Token::parse("cio_tp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaab1yLcDB"),
            Err(TokenError::InvalidChecksum {
                claimed: "1yLcDB".into(),
                actual: String::from_utf8(check_digits(b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaab").to_vec())
                    .unwrap(),
            })
        );
        // A multi-byte character must not panic on slicing and is reported by length.
        assert!(matches!(
            Token::parse("cio_tp_é"),
            Err(TokenError::InvalidLength(_))
        ));
        let with_multibyte = format!("cio_tp_{}é", "a".repeat(34));
        assert_eq!(with_multibyte.len(), TOKEN_LEN);
        assert_eq!(
            Token::parse(&with_multibyte),
            Err(TokenError::InvalidCharacter(41))
        );
    }

    #[test]
    fn errors_and_debug_never_show_the_token() {
        let t = Token::generate();
        let dbg = format!("{t:?}");
        assert!(!dbg.contains(t.expose_secret()));
        assert!(!dbg.contains(&t.expose_secret()[PREFIX.len()..]));
        let mut broken = t.expose_secret().to_owned();
        broken.pop();
        broken.push('!');
        let err = Token::parse(&broken).unwrap_err().to_string();
        assert!(!err.contains(&broken[PREFIX.len()..PREFIX.len() + RANDOM_LEN]));
    }

    #[test]
    fn hash_is_sha256_of_whole_string() {
        let t = Token::parse(KNOWN).unwrap();
        let expected = hex::encode(Sha256::digest(KNOWN.as_bytes()));
        assert_eq!(t.hash().to_hex(), expected);
        assert_eq!(t.hash().prefix(), &expected[..12]);
    }

    proptest! {
        #[test]
        fn every_generated_token_parses(_seed in 0u32..2000) {
            let t = Token::generate();
            prop_assert_eq!(t.expose_secret().len(), TOKEN_LEN);
            prop_assert!(Token::parse(t.expose_secret()).is_ok());
        }

        #[test]
        fn every_single_substitution_is_rejected(pos in 0usize..TOKEN_LEN, c in any::<char>()) {
            let t = Token::generate();
            let original = t.expose_secret();
            let mut chars: Vec<char> = original.chars().collect();
            prop_assume!(chars[pos] != c);
            chars[pos] = c;
            let mutated: String = chars.into_iter().collect();
            prop_assert!(Token::parse(&mutated).is_err(), "accepted {}", mutated);
        }

        #[test]
        fn every_single_alphanumeric_substitution_is_rejected(pos in PREFIX.len()..TOKEN_LEN, idx in 0usize..62) {
            let t = Token::generate();
            let mut bytes = t.expose_secret().as_bytes().to_vec();
            let c = BASE62[idx];
            prop_assume!(bytes[pos] != c);
            bytes[pos] = c;
            let mutated = String::from_utf8(bytes).unwrap();
            let is_checksum_error = matches!(Token::parse(&mutated), Err(TokenError::InvalidChecksum { .. }));
            prop_assert!(is_checksum_error);
        }
    }
}
