//! The **github** format: a GitHub secret-scanning webhook body, a JSON array of
//! `{"token", "type", "url", "source"}` objects (read by [`super::json_array`]).
//!
//! Invariants: every element's `token` is taken as-is (no pattern match: classifying it
//! is the caller's job); an element without a `token` string yields nothing and counts
//! as skipped; missing `type`, `url` or `source` become empty strings.

use super::json_array::ReportItem;
use super::Found;

/// One element of a GitHub webhook body.
#[derive(serde::Deserialize)]
pub(super) struct GithubItem {
    #[serde(default)]
    token: Option<String>,
    #[serde(default, rename = "type")]
    token_type: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

impl ReportItem for GithubItem {
    const EXPECTED: &'static str =
        "a JSON array of {\"token\", \"type\", \"url\", \"source\"} objects";

    fn occurrences(self, _origin: &str, out: &mut Vec<Found>) -> bool {
        let Some(token) = self.token else {
            return false;
        };
        out.push(Found {
            token,
            token_type: self.token_type.unwrap_or_default(),
            url: self.url.unwrap_or_default(),
            source: self.source.unwrap_or_default(),
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::Format;

    #[test]
    fn github_fixture() {
        let (all, stats) =
            read_all(&fixture("github.json"), Format::Github, "github.json").unwrap();
        let commit = "2f5c9d1e0b7a4c3d8e6f1a2b3c4d5e6f7a8b9c0d";
        assert_eq!(
            all,
            vec![
                found(
                    H,
                    "cio_tp",
                    &format!("https://github.com/octo-org/octo-app/blob/{commit}/.env.example#L3"),
                    "content"
                ),
                found(
                    W3,
                    "cio_tp",
                    &format!("https://github.com/octo-org/octo-app/commit/{commit}"),
                    "commit"
                ),
                found(
                    I,
                    "cio_tp",
                    "https://gist.github.com/octocat/aa5a315d61ae9438b18d",
                    "gist_content"
                ),
                found("cio_tp_notARealToken", "cio_tp", "", "issue_comment"),
                found(I, "CIO_TP", "", ""),
            ]
        );
        assert_eq!(stats.skipped_lines, 0);
    }

    #[test]
    fn github_items_without_a_token_are_skipped() {
        let input = format!(
            r#"[{{"type":"x"}}, {{"token":null}}, {{"token":"{A}","type":null,"url":null,"source":null,"extra":[1,{{}}]}}, {{}}]"#
        );
        let (all, stats) = read_all(input.as_bytes(), Format::Github, "g").unwrap();
        assert_eq!(all, vec![found(A, "", "", "")]);
        assert_eq!(stats.skipped_lines, 3);
        // `read_all` checks that all 6 bytes were read.
        let (all, _) = read_all(b" [ ] \n", Format::Github, "g").unwrap();
        assert!(all.is_empty());
    }
}
