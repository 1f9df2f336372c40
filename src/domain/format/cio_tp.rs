//! `cio_tp`: the tokens revoker mints (`cio_tp_` + 30 random + 6 CRC-32 check digits;
//! [`crate::domain::token`] generates and checks them). Stored as the SHA-256 of the
//! whole token.

use super::Format;
use crate::domain::token::{check_digits, CHECK_LEN, PREFIX, RANDOM_LEN};

pub const FORMAT: Format = Format {
    name: "cio_tp",
    prefix: PREFIX,
    body_len: RANDOM_LEN + CHECK_LEN,
    check: Some(check),
    hashed: whole,
    redact_min: 0,
    about: "revoker's own: cio_tp_ + 30 + 6 CRC-32 check digits, 43 characters",
};

/// The last 6 characters are the CRC-32 of the 30 before them, in base62.
fn check(body: &[u8]) -> bool {
    let (random, claimed) = body.split_at(RANDOM_LEN);
    claimed == check_digits(random)
}

fn whole(token: &str) -> &str {
    token
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::token::{Token, TokenHash};

    #[test]
    fn minted_tokens_match_and_are_keyed_by_their_whole_hash() {
        let t = Token::generate();
        assert!(FORMAT.matches(t.expose_secret()));
        assert_eq!(FORMAT.key(t.expose_secret()), t.hash());
        assert_eq!(
            FORMAT.key(t.expose_secret()),
            TokenHash::of(t.expose_secret())
        );
        let mut wrong = t.expose_secret().to_owned();
        let last = wrong.pop().unwrap();
        wrong.push(if last == 'a' { 'b' } else { 'a' });
        assert!(!FORMAT.matches(&wrong));
        assert!(!FORMAT.matches(&t.expose_secret()[..42]));
        assert_eq!(FORMAT.token_len(), 43);
    }
}
