//! `crates_io_api`: crates.io's API tokens (`crates/crates_io_database/src/utils/token.rs`
//! in rust-lang/crates.io): `cio` + 32 random letters and digits, 35 characters, **no
//! check digit**. crates.io stores the SHA-256 of the whole token. With no check, every
//! well-formed string is a candidate the database must answer: a delivery's or a replay
//! batch's are all looked up in its one statement, never one by one.

use super::Format;

pub const FORMAT: Format = Format {
    name: "crates_io_api",
    prefix: "cio",
    body_len: 32,
    check: None,
    hashed: whole,
    // `cio` is in common words ("precious", "Francisco"): only a whole body's worth of
    // letters and digits after it is taken for a token.
    redact_min: 32,
    about: "crates.io API tokens: cio + 32, no check digit, 35 characters",
};

fn whole(token: &str) -> &str {
    token
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::token::TokenHash;
    use rand::distributions::{Alphanumeric, DistString};

    /// A token made as crates.io makes one.
    pub(crate) fn generate() -> String {
        format!(
            "cio{}",
            Alphanumeric.sample_string(&mut rand::thread_rng(), 32)
        )
    }

    #[test]
    fn any_cio_and_32_letters_or_digits_matches_and_is_keyed_whole() {
        let t = generate();
        assert!(FORMAT.matches(&t));
        assert_eq!(FORMAT.key(&t), TokenHash::of(&t));
        assert!(!FORMAT.matches(&t[..34]));
        assert!(!FORMAT.matches(&format!("{t}a")));
        assert!(!FORMAT.matches(&format!("cio_{}", &t[4..])));
        assert!(!FORMAT.matches(&format!("CIO{}", &t[3..])));
        assert_eq!(FORMAT.token_len(), 35);
    }
}
