//! The **github** format: what GitHub says about leaked tokens, a JSON array (read by
//! [`super::json_array`]) of either
//! - secret-scanning webhook items, `{"token", "type", "url", "source"}`, or
//! - secret-scanning alerts from the REST API (`GET /repos/{owner}/{repo}/secret-scanning/alerts`,
//!   what `gh api` prints): `{"number", "secret_type", "secret", "html_url", "url", …}`.
//!
//! Invariants: the token is `token`, else `secret`, taken as-is (no pattern match:
//! classifying it is the caller's job); an element with neither is not in the format's
//! shape (its tokens, if any, are found by the JSON sweep). The location is `url` for a
//! webhook item and the alert page `html_url` for an alert (its `url` is the API's);
//! missing fields become empty strings.

use super::json_array::ReportItem;
use super::Found;

/// One element: a webhook item or a REST alert.
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
    /// REST alerts.
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    secret_type: Option<String>,
    #[serde(default)]
    html_url: Option<String>,
}

/// `source` of an occurrence read from a REST alert.
const ALERT_SOURCE: &str = "github_alert";

impl ReportItem for GithubItem {
    const EXPECTED: &'static str = "a JSON array of GitHub secret-scanning items ({\"token\", \"type\", \"url\", \"source\"}) or alerts ({\"secret\", \"secret_type\", \"html_url\"})";

    fn occurrences(self, _origin: &str, out: &mut Vec<Found>) -> bool {
        let found = match (self.token, self.secret) {
            (Some(token), _) => Found {
                token,
                token_type: self.token_type.unwrap_or_default(),
                url: self.url.unwrap_or_default(),
                source: self.source.unwrap_or_default(),
            },
            (None, Some(secret)) => Found {
                token: secret,
                token_type: self.secret_type.or(self.token_type).unwrap_or_default(),
                url: self.html_url.or(self.url).unwrap_or_default(),
                source: ALERT_SOURCE.to_owned(),
            },
            (None, None) => return false,
        };
        out.push(found);
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
        assert_eq!(stats.unstructured, 0);
    }

    /// What `gh api repos/{owner}/{repo}/secret-scanning/alerts` prints (fields as
    /// GitHub's REST reference documents them).
    #[test]
    fn github_rest_alerts_fixture() {
        let data = fixture("github-alerts.json");
        assert_eq!(super::super::detect(&data), Format::Github);
        let (all, stats) = read_all(&data, Format::Github, "github-alerts.json").unwrap();
        let alert =
            |n| format!("https://github.com/octo-org/octo-app/security/secret-scanning/{n}");
        let kind = "cio_trusted_publishing_token";
        assert_eq!(
            all,
            vec![
                found(A, kind, &alert(2), "github_alert"),
                found(B, kind, &alert(1), "github_alert"),
            ]
        );
        assert_eq!(stats.unstructured, 0);
    }

    #[test]
    fn github_items_without_a_token_are_named_and_swept() {
        let input = format!(
            r#"[{{"type":"x"}}, {{"token":null}}, {{"token":"{A}","type":null,"url":null,"source":null,"extra":[1,{{}}]}}, {{}}]"#
        );
        let (all, stats) = read_all(input.as_bytes(), Format::Github, "g").unwrap();
        assert_eq!(all, vec![found(A, "", "", "")]);
        assert_eq!(stats.unstructured, 3);
        // `read_all` checks that all 6 bytes were read.
        let (all, _) = read_all(b" [ ] \n", Format::Github, "g").unwrap();
        assert!(all.is_empty());
    }
}
