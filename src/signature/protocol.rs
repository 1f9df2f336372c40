//! How a scanner delivers: its protocol (what the answers mean to it) and the names of
//! its two signature headers.
//!
//! - `github` (GitHub, deps.dev): the body is an array of `{"token","type","url","source"}`;
//!   GitHub reads the per-item feedback, retries 5xx and takes 4xx as final.
//! - `gitlab` (GitLab's Partner API): the body is an array of `{"type","token","url"}`;
//!   GitLab reads no feedback and retries **any** status of 400 or more, so a verified
//!   delivery is always answered 2xx (see `http::webhook`).
//!
//! The headers are `PREFIX-Public-Key-Identifier` and `PREFIX-Public-Key-Signature`
//! (matched case-insensitively), the prefix `Github` or `Gitlab` by protocol unless set
//! (`--scanner-header-prefix NAME=PREFIX`: deps.dev signs GitHub's body under `GOSST`
//! to PyPI and `DepsDev` to RubyGems).

use std::collections::HashMap;
use std::str::FromStr;

use anyhow::bail;

/// What a scanner's answers mean to it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    strum::EnumString,
    strum::Display,
    strum::IntoStaticStr,
)]
#[strum(serialize_all = "lowercase", ascii_case_insensitive)]
pub enum Protocol {
    #[default]
    Github,
    Gitlab,
}

impl Protocol {
    /// The header prefix this protocol's scanner sends.
    pub fn default_header_prefix(self) -> &'static str {
        match self {
            Protocol::Github => "Github",
            Protocol::Gitlab => "Gitlab",
        }
    }
}

/// A scanner's protocol and signature header names (lower case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannerProtocol {
    pub protocol: Protocol,
    pub key_id_header: String,
    pub signature_header: String,
}

impl ScannerProtocol {
    /// `prefix`: the header prefix, or the protocol's own when `None`.
    pub fn new(protocol: Protocol, prefix: Option<&str>) -> Self {
        let prefix = prefix
            .unwrap_or(protocol.default_header_prefix())
            .to_ascii_lowercase();
        ScannerProtocol {
            protocol,
            key_id_header: format!("{prefix}-public-key-identifier"),
            signature_header: format!("{prefix}-public-key-signature"),
        }
    }
}

impl Default for ScannerProtocol {
    fn default() -> Self {
        ScannerProtocol::new(Protocol::Github, None)
    }
}

/// `NAME=VALUE`, a setting of one scanner (`--scanner-protocol`, `--scanner-header-prefix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerScanner<T> {
    pub name: String,
    pub value: T,
}

impl<T: FromStr> FromStr for PerScanner<T> {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, value) = s
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
        let value = value.trim().parse().map_err(|_| {
            format!(
                "{:?} is not a valid value for scanner {:?}",
                value.trim(),
                name.trim()
            )
        })?;
        Ok(PerScanner {
            name: name.trim().to_owned(),
            value,
        })
    }
}

/// A header prefix: letters, digits and `-`, as in `Github` or `DepsDev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderPrefix(pub String);

impl FromStr for HeaderPrefix {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let ok = !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        ok.then(|| HeaderPrefix(s.to_owned())).ok_or(())
    }
}

/// Each scanner's protocol, from the per-scanner settings (`github` and its headers
/// where none is set). A setting for a scanner that is not configured, or two for one
/// scanner, is refused.
pub fn protocols_for<'a>(
    scanners: impl IntoIterator<Item = &'a str>,
    protocols: &[PerScanner<Protocol>],
    prefixes: &[PerScanner<HeaderPrefix>],
) -> anyhow::Result<HashMap<String, ScannerProtocol>> {
    let names: Vec<&str> = scanners.into_iter().collect();
    let known = |flag: &str, name: &str| -> anyhow::Result<()> {
        if !names.contains(&name) {
            bail!(
                "{flag} names scanner {name:?}, which is not configured (--scanner NAME=SOURCE; configured: {})",
                names.join(", ")
            );
        }
        Ok(())
    };
    let mut out = HashMap::new();
    for name in &names {
        let mut protocol = None;
        for p in protocols.iter().filter(|p| p.name == *name) {
            if protocol.replace(p.value).is_some() {
                bail!("--scanner-protocol is given twice for scanner {name:?}");
            }
        }
        let mut prefix = None;
        for p in prefixes.iter().filter(|p| p.name == *name) {
            if prefix.replace(p.value.0.as_str()).is_some() {
                bail!("--scanner-header-prefix is given twice for scanner {name:?}");
            }
        }
        out.insert(
            (*name).to_owned(),
            ScannerProtocol::new(protocol.unwrap_or_default(), prefix),
        );
    }
    for p in protocols {
        known("--scanner-protocol", &p.name)?;
    }
    for p in prefixes {
        known("--scanner-header-prefix", &p.name)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_follow_the_protocol_or_the_prefix() {
        let github = ScannerProtocol::default();
        assert_eq!(github.key_id_header, "github-public-key-identifier");
        assert_eq!(github.signature_header, "github-public-key-signature");
        let gitlab = ScannerProtocol::new(Protocol::Gitlab, None);
        assert_eq!(gitlab.key_id_header, "gitlab-public-key-identifier");
        let depsdev = ScannerProtocol::new(Protocol::Github, Some("GOSST"));
        assert_eq!(depsdev.signature_header, "gosst-public-key-signature");
        assert_eq!(depsdev.protocol, Protocol::Github);
    }

    #[test]
    fn per_scanner_settings_parse_and_refuse() {
        let p: PerScanner<Protocol> = "gl=GitLab".parse().unwrap();
        assert_eq!((p.name.as_str(), p.value), ("gl", Protocol::Gitlab));
        assert!("gl=svn".parse::<PerScanner<Protocol>>().is_err());
        assert!("gl".parse::<PerScanner<Protocol>>().is_err());
        let h: PerScanner<HeaderPrefix> = "pypi=GOSST".parse().unwrap();
        assert_eq!(h.value.0, "GOSST");
        assert!("pypi=Bad Prefix"
            .parse::<PerScanner<HeaderPrefix>>()
            .is_err());
        assert!("pypi=".parse::<PerScanner<HeaderPrefix>>().is_err());

        let all = protocols_for(
            ["github", "gl", "pypi"],
            &["gl=gitlab".parse().unwrap()],
            &["pypi=GOSST".parse().unwrap()],
        )
        .unwrap();
        assert_eq!(all["github"], ScannerProtocol::default());
        assert_eq!(all["gl"].protocol, Protocol::Gitlab);
        assert_eq!(all["pypi"].key_id_header, "gosst-public-key-identifier");
        let err = protocols_for(["github"], &["gl=gitlab".parse().unwrap()], &[]).unwrap_err();
        assert!(
            err.to_string().contains("\"gl\", which is not configured"),
            "{err}"
        );
        let twice = ["gl=gitlab".parse().unwrap(), "gl=github".parse().unwrap()];
        assert!(protocols_for(["gl"], &twice, &[]).is_err());
    }
}
