//! The **sarif** format: SARIF 2.1.0 as gitleaks (`--report-format sarif`) and other
//! scanners write it (read by [`super::walk`]).
//!
//! Invariants: each `runs[*].results[*]` element yields the tokens of its locations'
//! `physicalLocation.region.snippet.text`, else of `message.text`; each token is
//! located at the first location's `artifactLocation.uri:region.startLine`, plus
//! `@ commit` (12 characters of `partialFingerprints.commitSha`) when there is one; the
//! type is `ruleId`. Anything else in the file is swept for tokens by path.

use serde_json::Value;

use super::walk::Document;
use super::{file_location, non_empty, scalar_text, tokens_in, Found};

pub(super) struct SarifLog;

impl Document for SarifLog {
    const EXPECTED: &'static str = "a SARIF 2.1.0 log ({\"runs\": [{\"results\": [...]}]})";

    fn is_item(path: &str) -> bool {
        let index = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        path.strip_prefix(".runs[")
            .and_then(|rest| rest.split_once("].results["))
            .is_some_and(|(run, result)| index(run) && result.strip_suffix(']').is_some_and(index))
    }

    fn occurrences(item: &Value, origin: &str, out: &mut Vec<Found>) -> bool {
        let Some(locations) = item.get("locations").and_then(Value::as_array) else {
            return false;
        };
        let physical = |l: &Value| l.get("physicalLocation").cloned();
        let snippets: Vec<&str> = locations
            .iter()
            .filter_map(|l| {
                l.pointer("/physicalLocation/region/snippet/text")
                    .and_then(Value::as_str)
            })
            .collect();
        let mut tokens: Vec<String> = snippets.iter().flat_map(|s| tokens_in(s)).collect();
        if tokens.is_empty() {
            let message = item.pointer("/message/text").and_then(Value::as_str);
            tokens = tokens_in(message.unwrap_or("")).collect();
        }
        let first = locations.first().and_then(physical);
        let uri = first
            .as_ref()
            .and_then(|p| p.pointer("/artifactLocation/uri"))
            .and_then(Value::as_str);
        let line = first
            .as_ref()
            .and_then(|p| p.pointer("/region/startLine"))
            .and_then(scalar_text);
        let mut url = file_location(non_empty(uri).unwrap_or(origin), line.as_deref());
        let commit = item
            .pointer("/partialFingerprints/commitSha")
            .and_then(Value::as_str);
        if let Some(commit) = non_empty(commit) {
            url.push_str(" @ ");
            url.extend(commit.chars().take(12));
        }
        let rule = non_empty(item.get("ruleId").and_then(Value::as_str)).unwrap_or("sarif");
        out.extend(tokens.into_iter().map(|token| Found {
            token: token.to_owned(),
            token_type: rule.to_owned(),
            url: url.clone(),
            source: "sarif".to_owned(),
        }));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{detect, Format};
    use super::*;

    #[test]
    fn result_paths() {
        assert!(SarifLog::is_item(".runs[0].results[12]"));
        for other in [
            ".runs[0]",
            ".runs[0].results",
            ".runs[x].results[1]",
            ".runs[0].results[1].x",
        ] {
            assert!(!SarifLog::is_item(other), "{other}");
        }
    }

    #[test]
    fn sarif_fixture() {
        let data = fixture("gitleaks.sarif");
        assert_eq!(detect(&data), Format::Sarif);
        assert_eq!(detect(&data[..120]), Format::Sarif);
        let (all, stats) = read_all(&data, Format::Sarif, "gitleaks.sarif").unwrap();
        let rule = "cio-trusted-publishing-token";
        assert_eq!(
            all,
            vec![
                // In the rule's help text, outside any result: found by its path.
                found(
                    C,
                    "cio_tp",
                    "gitleaks.sarif:.runs[0].tool.driver.rules[0].help.text",
                    "json"
                ),
                found(
                    A,
                    rule,
                    ".github/workflows/publish.yml:31 @ 9f1c2a7b3d4e",
                    "sarif"
                ),
                // The snippet is redacted: the token comes from the message.
                found(B, rule, "scripts/release.sh:12 @ 4be1d0c93a5f", "sarif"),
            ]
        );
        assert_eq!(stats.unstructured, 0);
    }
}
