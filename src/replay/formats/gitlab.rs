//! The **gitlab** format: GitLab's secret detection report,
//! `gl-secret-detection-report.json` (read by [`super::walk`]).
//!
//! Invariants: each `vulnerabilities[*]` element yields the tokens of its
//! `raw_source_code_extract`; the location is `location.file:location.start_line @
//! commit` (12 characters of `location.commit.sha`), the report file standing in for a
//! missing `file`; the type is the `gitleaks_rule_id` identifier's value, else the
//! vulnerability's `name`. Anything else in the report is swept for tokens by path.

use serde_json::Value;

use super::walk::Document;
use super::{file_location, non_empty, scalar_text, tokens_in, Found};

pub(super) struct GitlabReport;

impl Document for GitlabReport {
    const EXPECTED: &'static str =
        "a GitLab secret detection report ({\"vulnerabilities\": [...]})";

    fn is_item(path: &str) -> bool {
        path.strip_prefix(".vulnerabilities[")
            .and_then(|rest| rest.strip_suffix(']'))
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
    }

    fn occurrences(item: &Value, origin: &str, out: &mut Vec<Found>) -> bool {
        let Some(extract) = item.get("raw_source_code_extract").and_then(Value::as_str) else {
            return false;
        };
        let location = item.get("location");
        let at = |key: &str| location.and_then(|l| l.get(key));
        let file = non_empty(at("file").and_then(Value::as_str)).unwrap_or(origin);
        let line = at("start_line").and_then(scalar_text);
        let mut url = file_location(file, line.as_deref());
        let sha = at("commit")
            .and_then(|c| c.get("sha"))
            .and_then(Value::as_str);
        if let Some(sha) = non_empty(sha) {
            url.push_str(" @ ");
            url.extend(sha.chars().take(12));
        }
        let rule = item
            .get("identifiers")
            .and_then(Value::as_array)
            .and_then(|ids| {
                ids.iter().find_map(|id| {
                    (id.get("type").and_then(Value::as_str) == Some("gitleaks_rule_id"))
                        .then(|| id.get("value").and_then(Value::as_str))
                        .flatten()
                })
            });
        let name = item.get("name").and_then(Value::as_str);
        let token_type = non_empty(rule).or(non_empty(name)).unwrap_or("gitlab");
        out.extend(tokens_in(extract).map(|token| Found {
            token,
            token_type: token_type.to_owned(),
            url: url.clone(),
            source: "gitlab".to_owned(),
        }));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{detect, Format};

    #[test]
    fn gitlab_fixture() {
        let data = fixture("gl-secret-detection-report.json");
        assert_eq!(detect(&data), Format::Gitlab);
        assert_eq!(detect(&data[..200]), Format::Gitlab);
        let (all, stats) =
            read_all(&data, Format::Gitlab, "gl-secret-detection-report.json").unwrap();
        assert_eq!(
            all,
            vec![
                found(
                    D,
                    "cio-trusted-publishing-token",
                    ".gitlab-ci.yml:14 @ 1f7c3a9e2b4d",
                    "gitlab"
                ),
                found(E, "CIO token", "deploy/publish.sh:3", "gitlab"),
                // Not in raw_source_code_extract: found by its path.
                found(
                    F,
                    "cio_tp",
                    "gl-secret-detection-report.json:.vulnerabilities[2].description",
                    "json"
                ),
            ]
        );
        // The third has no raw_source_code_extract.
        assert_eq!(stats.unstructured, 1);
    }
}
