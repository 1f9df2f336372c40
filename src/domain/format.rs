//! Token formats: what a token of each kind looks like, how it is told from other text
//! offline, which of its bytes are hashed for storage, and how it is shown redacted.
//!
//! Every format is a [`Format`] in a file of its own under `format/` with its tests;
//! [`FORMATS`] lists them. [`Formats`] is the set one process recognises
//! (`--token-formats`, default [`cio_tp`] alone): a delivery's, a report's or an
//! operator's string is a candidate only when it is a token of an enabled format.
//! Redaction covers every listed format, enabled or not: a token nobody asked revoker to
//! revoke is a secret all the same.
//!
//! - `cio_tp` (`format/cio_tp.rs`): the tokens revoker mints, `cio_tp_` + 30 + 6 CRC-32
//!   check digits (see [`crate::domain::token`]).
//! - `crates_io_trustpub` (`format/crates_io_trustpub.rs`): crates.io's trusted
//!   publishing tokens, `cio_tp_` + 31 + 1 XOR check character; stored as the SHA-256 of
//!   the 31 random characters.
//! - `crates_io_api` (`format/crates_io_api.rs`): crates.io's API tokens, `cio` + 32,
//!   no check digit: every well-formed one needs the database.
//!
//! Two formats may share a prefix (`cio_tp_`): where strings of both start at one place,
//! the longest whose check passes is the token ([`Formats::token_at`]), so a `cio_tp`
//! token whose first 39 characters happen to pass crates.io's one-character check is
//! one `cio_tp` token, and a trusted-publishing token glued to letters is still found.

use std::fmt;
use std::str::FromStr;

use super::token::TokenHash;

pub mod cio_tp;
pub mod crates_io_api;
pub mod crates_io_trustpub;

/// Every format revoker knows, in the order `--help` lists them. Adding one: its file,
/// and its line here.
pub const FORMATS: [&Format; 3] = [
    &cio_tp::FORMAT,
    &crates_io_trustpub::FORMAT,
    &crates_io_api::FORMAT,
];

/// One kind of token.
#[derive(Debug)]
pub struct Format {
    /// Its name in `--token-formats`, the tokens table, stats and notifications.
    pub name: &'static str,
    /// What every token of the format starts with.
    pub prefix: &'static str,
    /// Characters after the prefix, each of `0-9A-Za-z`.
    pub body_len: usize,
    /// The check on the characters after the prefix (`body_len` letters and digits),
    /// when the format has check digits; `None`: every well-formed string is a candidate
    /// and only the database can tell.
    pub check: Option<fn(&[u8]) -> bool>,
    /// The part of a token whose SHA-256 the registry stores (the whole token, or its
    /// random characters only).
    pub hashed: fn(&str) -> &str,
    /// The shortest run of letters and digits after the prefix that redaction takes for
    /// (part of) a token of this format: 0 when the prefix alone is distinctive
    /// (`cio_tp_`), the whole body when it is a common word's letters (`cio`: "precious").
    pub redact_min: usize,
    /// One line for `--help` and the docs.
    pub about: &'static str,
}

impl Format {
    /// Characters in a token of this format.
    pub const fn token_len(&self) -> usize {
        self.prefix.len() + self.body_len
    }

    /// Whether the characters after the prefix are letters and digits, as many as the
    /// format has.
    fn well_formed(&self, body: &[u8]) -> bool {
        body.len() == self.body_len && body.iter().all(u8::is_ascii_alphanumeric)
    }

    /// Whether a well-formed body passes the format's check (always, without one).
    fn checks(&self, body: &[u8]) -> bool {
        self.check.is_none_or(|check| check(body))
    }

    /// Whether `s`, whole, is a token of this format: prefix, length, alphabet, check.
    pub fn matches(&self, s: &str) -> bool {
        s.strip_prefix(self.prefix).is_some_and(|body| {
            let body = body.as_bytes();
            self.well_formed(body) && self.checks(body)
        })
    }

    /// The hash the registry stores for `token` (a token of this format), the key the
    /// revoking statement looks it up by.
    pub fn key(&self, token: &str) -> TokenHash {
        TokenHash::of((self.hashed)(token))
    }

    /// How a token of this format is shown once redacted.
    pub fn redacted(&self) -> String {
        format!("{}[redacted]", self.prefix)
    }
}

/// The longest token of any format in [`FORMATS`].
pub const MAX_LEN: usize = {
    let mut max = 0;
    let mut i = 0;
    while i < FORMATS.len() {
        if FORMATS[i].token_len() > max {
            max = FORMATS[i].token_len();
        }
        i += 1;
    }
    max
};

/// A set of formats: those a process recognises (`--token-formats`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Formats(u32);

impl Default for Formats {
    fn default() -> Self {
        Formats::DEFAULT
    }
}

impl Formats {
    /// Every format in [`FORMATS`].
    pub const ALL: Formats = Formats((1 << FORMATS.len()) - 1);

    /// `cio_tp` alone (the first of [`FORMATS`]): the tokens revoker mints.
    pub const DEFAULT: Formats = Formats(1);

    /// The set of one format.
    pub fn only(format: &Format) -> Formats {
        let i = FORMATS
            .iter()
            .position(|f| f.name == format.name)
            .expect("every format is listed in FORMATS");
        Formats(1 << i)
    }

    /// The enabled formats, in [`FORMATS`] order.
    pub fn iter(self) -> impl Iterator<Item = &'static Format> + Clone {
        FORMATS
            .into_iter()
            .enumerate()
            .filter(move |(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, f)| f)
    }

    pub fn contains(self, format: &Format) -> bool {
        self.0 & Formats::only(format).0 != 0
    }

    /// The format `s` is a token of, as a whole, if it is one of an enabled format.
    pub fn recognise(self, s: &str) -> Option<&'static Format> {
        self.iter().find(|f| f.matches(s))
    }

    /// What a string a scan found is typed as: its enabled format's name, or `cio_tp`
    /// for a string of our shape that is no token.
    pub fn type_of(self, s: &str) -> &'static str {
        self.recognise(s).map_or(cio_tp::FORMAT.name, |f| f.name)
    }

    /// The distinct prefixes of the enabled formats, each once.
    pub fn prefixes(self) -> impl Iterator<Item = &'static str> + Clone {
        let formats = self.iter();
        self.iter().enumerate().filter_map(move |(i, f)| {
            let first = formats.clone().position(|g| g.prefix == f.prefix) == Some(i);
            first.then_some(f.prefix)
        })
    }

    /// Whether `hay` holds an enabled format's prefix anywhere.
    pub fn any_prefix_in(self, hay: &[u8]) -> bool {
        self.prefixes().any(|p| find_iter(hay, p).next().is_some())
    }

    /// The length of the token starting at `at` in `bytes`, where `prefix` (one of
    /// [`Formats::prefixes`]) is: of the enabled formats with that prefix whose letters
    /// and digits are there, the longest whose check passes; failing that, the longest
    /// with check digits (a string of our shape with wrong ones: the caller counts it
    /// as not ours). `None` when no format's shape is there.
    pub fn token_at(self, bytes: &[u8], at: usize, prefix: &str) -> Option<usize> {
        let mut valid = 0;
        let mut shaped = 0;
        for f in self.iter().filter(|f| f.prefix == prefix) {
            let Some(body) = bytes.get(at + prefix.len()..at + f.token_len()) else {
                continue;
            };
            if !f.well_formed(body) {
                continue;
            }
            if f.checks(body) {
                valid = valid.max(f.token_len());
            } else {
                shaped = shaped.max(f.token_len());
            }
        }
        [valid, shaped].into_iter().find(|&len| len > 0)
    }
}

impl fmt::Display for Formats {
    /// The names, comma-separated: what `--token-formats` takes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(|f| f.name).collect();
        f.write_str(&names.join(","))
    }
}

impl fmt::Debug for Formats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Formats({self})")
    }
}

/// Why a `--token-formats` list was refused. Never quotes the input (a pasted token
/// could be in it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatsError {
    #[error(
        "no token format given: expected a comma-separated list of {}",
        names()
    )]
    Empty,
    #[error("unknown token format (entry {entry} of the list): expected one of {names}", entry = .0, names = names())]
    Unknown(usize),
}

/// Every format's name, comma-separated.
fn names() -> String {
    Formats::ALL.to_string()
}

impl FromStr for Formats {
    type Err = FormatsError;

    /// A comma-separated list of names (blanks around each ignored, repeats allowed).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut set = Formats(0);
        for (i, name) in s.split(',').map(str::trim).enumerate() {
            if name.is_empty() && s.trim().is_empty() {
                return Err(FormatsError::Empty);
            }
            let format = FORMATS
                .iter()
                .find(|f| f.name == name)
                .ok_or(FormatsError::Unknown(i + 1))?;
            set.0 |= Formats::only(format).0;
        }
        Ok(set)
    }
}

/// A token of `format` made as its issuer makes one, for the property tests that plant
/// tokens of every format: each format in [`FORMATS`] needs its arm here (a test fails
/// without it).
#[cfg(test)]
pub(crate) fn generate(format: &Format) -> String {
    match format.name {
        "cio_tp" => crate::domain::token::Token::generate()
            .expose_secret()
            .to_owned(),
        "crates_io_trustpub" => crates_io_trustpub::tests::generate(),
        "crates_io_api" => crates_io_api::tests::generate(),
        other => panic!("no generator for the format {other}: add one to format::generate"),
    }
}

/// Every place `needle` starts in `hay`, for a needle the scans look for (a known
/// format's prefix, or one without its `c`): with a searcher built once. The scans look
/// for each prefix in each string of a delivery (its type, URL and source, and again to
/// redact them), and building the searcher per string was most of that (perf: ~1 % of a
/// 1,000-token delivery's CPU).
pub(crate) fn find_iter<'h>(
    hay: &'h [u8],
    needle: &'static str,
) -> memchr::memmem::FindIter<'h, 'static> {
    static FINDERS: std::sync::LazyLock<Vec<memchr::memmem::Finder<'static>>> =
        std::sync::LazyLock::new(|| {
            Formats::ALL
                .prefixes()
                .flat_map(|p| [Some(p), p.strip_prefix('c')])
                .flatten()
                .map(|n| memchr::memmem::Finder::new(n.as_bytes()))
                .collect()
        });
    match FINDERS.iter().find(|f| f.needle() == needle.as_bytes()) {
        Some(finder) => finder.find_iter(hay),
        None => memchr::memmem::find_iter(hay, needle.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_has_a_generator_of_its_tokens() {
        for f in FORMATS {
            for _ in 0..50 {
                let t = generate(f);
                assert!(f.matches(&t), "{}", f.name);
                assert_eq!(Formats::ALL.recognise(&t).map(|g| g.name), Some(f.name));
            }
        }
    }

    #[test]
    fn lists_parse_and_print_by_name() {
        assert_eq!(Formats::DEFAULT, Formats::only(&cio_tp::FORMAT));
        assert_eq!(Formats::default().to_string(), "cio_tp");
        assert_eq!(
            Formats::ALL.to_string(),
            "cio_tp,crates_io_trustpub,crates_io_api"
        );
        let set: Formats = " crates_io_api , cio_tp,cio_tp".parse().unwrap();
        assert_eq!(set.to_string(), "cio_tp,crates_io_api");
        assert_eq!("".parse::<Formats>(), Err(FormatsError::Empty));
        assert_eq!(
            "cio_tp,,x".parse::<Formats>(),
            Err(FormatsError::Unknown(2))
        );
        let err = "cio_tp,cio_tp_SECRET".parse::<Formats>().unwrap_err();
        assert_eq!(err, FormatsError::Unknown(2));
        assert!(!err.to_string().contains("SECRET"), "{err}");
        assert!(err.to_string().contains("crates_io_trustpub"), "{err}");
    }

    #[test]
    fn every_format_is_listed_once_and_max_len_is_the_longest() {
        for (i, f) in FORMATS.iter().enumerate() {
            assert_eq!(FORMATS.iter().position(|g| g.name == f.name), Some(i));
            assert!(f.token_len() <= MAX_LEN);
            assert!(f.redact_min <= f.body_len);
            assert!(Formats::ALL.contains(f));
        }
        assert!(FORMATS.iter().any(|f| f.token_len() == MAX_LEN));
        let prefixes: Vec<&str> = Formats::ALL.prefixes().collect();
        assert_eq!(prefixes, ["cio_tp_", "cio"]);
    }

    /// Where two formats' strings start at one place, the longest that checks wins; a
    /// string that passes no check is the longest checked shape.
    #[test]
    fn the_longest_token_that_checks_wins() {
        let both: Formats = "cio_tp,crates_io_trustpub".parse().unwrap();
        let ours = crate::domain::token::Token::generate();
        let ours = ours.expose_secret();
        // A trusted-publishing token glued to four letters: ours fails its CRC.
        let trustpub = crates_io_trustpub::tests::generate();
        let glued = format!("{trustpub}abcd");
        assert_eq!(both.token_at(glued.as_bytes(), 0, "cio_tp_"), Some(39));
        assert_eq!(both.token_at(ours.as_bytes(), 0, "cio_tp_"), Some(43));
        // Junk of our length: the longest shape with check digits.
        let junk = format!("cio_tp_{}", "a".repeat(36));
        let expected = if crates_io_trustpub::FORMAT.matches(&junk[..39]) {
            39
        } else {
            43
        };
        assert_eq!(both.token_at(junk.as_bytes(), 0, "cio_tp_"), Some(expected));
        assert_eq!(both.token_at(b"cio_tp_abc", 0, "cio_tp_"), None);
        assert_eq!(both.token_at(glued.as_bytes(), 0, "cio"), None);
    }
}
