//! `crates_io_trustpub`: crates.io's trusted-publishing tokens
//! (`crates/crates_io_trustpub/src/access_token.rs` in rust-lang/crates.io): `cio_tp_` +
//! 31 random letters and digits + 1 check character, 39 characters. The check character
//! is the XOR of the 31 random bytes, modulo 62, as an index into `A-Za-z0-9` (in that
//! order). crates.io stores the SHA-256 of the 31 random characters only.

use super::Format;

pub const FORMAT: Format = Format {
    name: "crates_io_trustpub",
    prefix: "cio_tp_",
    body_len: RANDOM_LEN + 1,
    check: Some(check),
    hashed: random_part,
    redact_min: 0,
    about: "crates.io trusted publishing: cio_tp_ + 31 + 1 XOR check character, 39 characters",
};

/// Random characters after the prefix.
const RANDOM_LEN: usize = 31;

/// The check character's alphabet, in index order.
const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// The check character of 31 random bytes.
pub fn check_character(random: &[u8]) -> u8 {
    let xor = random.iter().fold(0u8, |acc, b| acc ^ b);
    ALPHABET[usize::from(xor) % ALPHABET.len()]
}

fn check(body: &[u8]) -> bool {
    let (random, claimed) = body.split_at(RANDOM_LEN);
    claimed[0] == check_character(random)
}

/// The 31 random characters: what crates.io hashes.
fn random_part(token: &str) -> &str {
    &token[FORMAT.prefix.len()..FORMAT.prefix.len() + RANDOM_LEN]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::distributions::{Alphanumeric, DistString};

    /// A token made as crates.io makes one.
    pub(crate) fn generate() -> String {
        let random = Alphanumeric.sample_string(&mut rand::thread_rng(), RANDOM_LEN);
        let check = check_character(random.as_bytes()) as char;
        format!("cio_tp_{random}{check}")
    }

    /// crates.io's own examples: a finalized token, the SHA-256 of its random part, and
    /// an all-zero token whose check character is `w`.
    #[test]
    fn crates_io_examples() {
        let token = "cio_tp_gGK6jurSwKyl9V3Az19z7YEFQI9aoOOd";
        assert!(FORMAT.matches(token));
        assert_eq!(
            FORMAT.key(token).to_hex(),
            "0b663aaf51ae26e3ad309e601482634e0710f1d3c3a66e4ac17e357d2a15177c"
        );
        assert!(FORMAT.matches("cio_tp_0000000000000000000000000000000w"));
        assert!(!FORMAT.matches("cio_tp_00000000000000000000000000000000"));
        assert!(!FORMAT.matches("cio_tp_000000@0000000000000000000000000"));
        assert!(!FORMAT.matches(&token[..38]));
        assert_eq!(FORMAT.token_len(), 39);
    }

    #[test]
    fn generated_tokens_match_and_a_changed_check_character_does_not() {
        for _ in 0..200 {
            let t = generate();
            assert!(FORMAT.matches(&t), "{t}");
            let mut wrong = t.clone().into_bytes();
            wrong[38] = if wrong[38] == b'A' { b'B' } else { b'A' };
            assert!(!FORMAT.matches(std::str::from_utf8(&wrong).unwrap()));
        }
    }
}
