//! The **gitleaks** format: a gitleaks v8 JSON report, an array of findings (read by
//! [`super::json_array`]).
//!
//! Invariants: the tokens are the `cio_tp_…` strings of `Secret`, or of
//! `Match` when `Secret` has none (gitleaks `--redact`); a finding without any yields
//! nothing and is not counted as skipped. The location is `Link`, else
//! `File:StartLine @ commit` (12 characters of the commit), with the report file
//! standing in for a missing `File`.

use serde_json::Value;

use super::json_array::ReportItem;
use super::{file_location, non_empty, scalar_text, tokens_in_first, Found};

/// The fields of a gitleaks v8 finding that matter here; the others are ignored.
#[derive(serde::Deserialize)]
pub(super) struct GitleaksFinding {
    #[serde(default, rename = "Secret")]
    secret: Option<String>,
    #[serde(default, rename = "Match")]
    matched: Option<String>,
    #[serde(default, rename = "RuleID")]
    rule_id: Option<String>,
    #[serde(default, rename = "Link")]
    link: Option<String>,
    #[serde(default, rename = "File")]
    file: Option<String>,
    #[serde(default, rename = "StartLine")]
    start_line: Option<Value>,
    #[serde(default, rename = "Commit")]
    commit: Option<String>,
}

impl ReportItem for GitleaksFinding {
    const EXPECTED: &'static str = "a gitleaks JSON report (an array of finding objects)";

    fn occurrences(self, origin: &str, out: &mut Vec<Found>) -> bool {
        let tokens = tokens_in_first([
            self.secret.as_deref().unwrap_or(""),
            self.matched.as_deref().unwrap_or(""),
        ]);
        if tokens.is_empty() {
            return true;
        }
        let token_type = non_empty(self.rule_id.as_deref()).unwrap_or("gitleaks");
        let url = match non_empty(self.link.as_deref()) {
            Some(link) => link.to_owned(),
            None => {
                let file = non_empty(self.file.as_deref()).unwrap_or(origin);
                let line = self.start_line.as_ref().and_then(scalar_text);
                let mut url = file_location(file, line.as_deref());
                if let Some(commit) = non_empty(self.commit.as_deref()) {
                    url.push_str(" @ ");
                    url.extend(commit.chars().take(12));
                }
                url
            }
        };
        out.extend(tokens.into_iter().map(|token| Found {
            token: token.to_owned(),
            token_type: token_type.to_owned(),
            url: url.clone(),
            source: "gitleaks".to_owned(),
        }));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::Format;

    #[test]
    fn gitleaks_fixture() {
        let (all, stats) =
            read_all(&fixture("gitleaks.json"), Format::Gitleaks, "gitleaks.json").unwrap();
        let rule = "cio-trusted-publishing-token";
        let repo = "https://github.com/acme/widget-publisher";
        assert_eq!(
            all,
            vec![
                found(A, rule, ".github/workflows/publish.yml:31 @ 9f1c2a7b3d4e", "gitleaks"),
                found(
                    B,
                    rule,
                    &format!(
                        "{repo}/blob/4be1d0c93a5f7e2b8c6d1a0f9e8d7c6b5a493821/scripts/release.sh#L12"
                    ),
                    "gitleaks"
                ),
                found(
                    A,
                    "generic-api-key",
                    "docs/TROUBLESHOOTING.md:88 @ 0c8e2f4a6b1d",
                    "gitleaks"
                ),
                found(W1, rule, "tests/fixtures/tokens.txt:3 @ 5d2a9e7c1b3f", "gitleaks"),
                found(
                    C,
                    rule,
                    &format!(
                        "{repo}/blob/1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d/.env.production#L4"
                    ),
                    "gitleaks"
                ),
            ]
        );
        assert_eq!(stats.unstructured, 0);
    }

    #[test]
    fn gitleaks_fallbacks() {
        let input = format!(
            r#"[
              {{"Secret":"REDACTED","Match":"token: {A}","File":"a.yml","StartLine":3}},
              {{"Secret":"{B}","Match":"{C}","RuleID":"","Link":"","File":"","StartLine":7,"Commit":"abc"}},
              {{"Secret":"{D} {E}","RuleID":"r"}},
              {{"Secret":"{F}x","Match":"nope"}},
              {{"Secret":null,"Match":null,"File":null,"StartLine":null,"Commit":null,"Tags":["a",{{"b":[1]}}]}}
            ]"#
        );
        let (all, stats) = read_all(input.as_bytes(), Format::Gitleaks, "report.json").unwrap();
        assert_eq!(
            all,
            vec![
                found(A, "gitleaks", "a.yml:3", "gitleaks"),
                found(B, "gitleaks", "report.json:7 @ abc", "gitleaks"),
                // `Match` is not read when `Secret` has a token; the sweep finds it.
                found(C, "cio_tp", "report.json:[1].Match", "json"),
                found(D, "r", "report.json", "gitleaks"),
                found(E, "r", "report.json", "gitleaks"),
                // Glued to other text: still a leaked token.
                found(F, "gitleaks", "report.json", "gitleaks"),
            ]
        );
        assert_eq!(stats.unstructured, 0);
    }
}
