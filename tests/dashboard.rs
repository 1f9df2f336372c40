//! The dashboard in a real browser: headless Chromium renders `/dashboard` of a seeded
//! server; the numbers on the page must equal `/api/stats`. A screenshot is kept at
//! `target/dashboard.png`.
//!
//! Chromium is Debian's `chromium` (`.ci/run` installs it). Without it the test skips
//! with a notice, unless `CI` is set.

mod common;

use std::path::PathBuf;
use std::sync::Once;

use chrono::Duration as Ttl;
use common::*;

fn chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("REVOKER_TEST_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

async fn run_chromium(bin: &PathBuf, url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=10000",
            "--window-size=1280,1100",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .await
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The visible text of an HTML fragment: tags dropped, entities for `<>&"` decoded,
/// whitespace collapsed.
fn visible(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let out = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&");
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The `<tr>` elements of the table with this id in a dumped DOM (header row first).
fn rows_of<'a>(dom: &'a str, id: &str) -> Vec<&'a str> {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let table = &dom[at..at + dom[at..].find("</table>").unwrap()];
    table.split("<tr").skip(1).collect()
}

/// The visible text of each cell of a row.
fn cells(row: &str) -> Vec<String> {
    row.split("<td")
        .skip(1)
        .map(|c| visible(&format!("<td{c}")))
        .collect()
}

/// The text inside the element with this id in a dumped DOM.
fn text_of(dom: &str, id: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let open_end = at + dom[at..].find('>')? + 1;
    let close = open_end + dom[open_end..].find('<')?;
    Some(dom[open_end..close].trim().to_owned())
}

/// The opening tag of the element with this id in a dumped DOM.
fn opening_tag<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} on the page"));
    let start = dom[..at].rfind('<').unwrap();
    &dom[start..at + dom[at..].find('>').unwrap() + 1]
}

/// With crates.io's formats enabled, the page has a row per format: tokens revoked (live
/// and expired) and their ages, as `/api/stats` says, a registry's imported token apart
/// from the ones revoker minted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_counts_tokens_per_format() {
    let Some(bin) = chromium() else {
        static NOTICE: Once = Once::new();
        let how = "apt-get install chromium; .ci/run installs the Debian package";
        skip_unless_ci(&NOTICE, "dashboard browser test: no chromium", how);
        return;
    };
    let formats = revoker::domain::Formats::ALL;
    let app = TestApp::sqlite()
        .admin_token("dash-token")
        .token_formats(formats)
        .start()
        .await;
    let ours = app.mint("team/a", Ttl::minutes(30)).await;
    let old = app.mint("team/old", Ttl::minutes(-3)).await;
    // A registry's API token, created 400 days ago, stored by crates.io's hash.
    let api = api_token();
    let now = chrono::Utc::now();
    app.store
        .import_tokens(&[revoker::store::ImportToken {
            hash: formats.recognise(&api).unwrap().key(&api),
            owner: "bob".into(),
            format: "crates_io_api",
            created_at: now - Ttl::days(400),
            expires_at: revoker::store::NEVER_EXPIRES,
            revoked_at: None,
        }])
        .await
        .unwrap();
    let body = alert_body(&[ours.expose_secret(), old.expose_secret(), &api]);
    let answer = app.deliver(&Signer::test(), body).await;
    assert_eq!(answer.status, 200, "{}", answer.text);

    let stats = app.admin_get("/api/stats", Some("dash-token")).await;
    assert_eq!(stats.status, 200);
    assert_eq!(
        stats.json["token_formats"],
        serde_json::json!(["cio_tp", "crates_io_trustpub", "crates_io_api"])
    );
    let by_format = stats.json["by_format"].as_array().unwrap();
    let counts: Vec<(&str, i64, i64)> = by_format
        .iter()
        .map(|f| {
            (
                f["format"].as_str().unwrap(),
                f["tokens_revoked"].as_i64().unwrap(),
                f["tokens_expired"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counts, [("cio_tp", 1, 1), ("crates_io_api", 1, 0)]);
    let median = |i: usize| {
        by_format[i]["revocation_ages"]["median_seconds"]
            .as_f64()
            .unwrap()
    };
    assert!(median(0) < 3600.0, "ours: minutes old, {}", median(0));
    assert!(
        median(1) > 399.0 * 86_400.0,
        "imported: 400 days, {}",
        median(1)
    );

    let url = format!("{}/dashboard#token=dash-token", app.admin);
    let dom = run_chromium(&bin, &url, &["--dump-dom"]).await;
    assert!(dom.contains("data-loaded=\"true\""), "{dom}");
    assert!(!opening_tag(&dom, "formats-panel").contains("hidden"));
    let rows = rows_of(&dom, "by-format");
    let shown: Vec<Vec<String>> = rows[1..].iter().map(|r| cells(r)).collect();
    // Every enabled format, in the order given, zeros included.
    let names: Vec<&str> = shown.iter().map(|c| c[0].as_str()).collect();
    assert_eq!(names, ["cio_tp", "crates_io_trustpub", "crates_io_api"]);
    assert_eq!(shown[0][1..4], ["2", "1", "1"]);
    assert_eq!(shown[1][1..], ["0", "0", "0", "none yet", "none yet"]);
    assert_eq!(shown[2][1..4], ["1", "1", "0"]);
    assert!(
        shown[2][4].starts_with("≤ 4") && shown[2][4].contains('d'),
        "{:?}",
        shown[2]
    );
    assert!(!dom.contains(&api[3..]), "the page holds a raw token");
    let names = "cio_tp, crates_io_trustpub, crates_io_api";
    assert!(text_of(&dom, "subtitle").unwrap().contains(names));
    assert_eq!(
        text_of(&dom, "not-ours-hint").unwrap(),
        format!("items: no token of {names}")
    );
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-formats.png");
    let _ = std::fs::remove_file(&shot);
    let tall = [
        "--window-size=1280,2400",
        &format!("--screenshot={}", shot.display()),
    ];
    run_chromium(&bin, &url, &tall).await;
    assert!(std::fs::read(&shot)
        .expect("screenshot")
        .starts_with(b"\x89PNG"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_same_totals_as_the_stats_api() {
    let Some(bin) = chromium() else {
        static NOTICE: Once = Once::new();
        let how = "apt-get install chromium; .ci/run installs the Debian package";
        skip_unless_ci(&NOTICE, "dashboard browser test: no chromium", how);
        return;
    };
    // A second scanner whose key endpoint answers nothing: on call, it has no keys.
    let app = TestApp::sqlite()
        .admin_token("dash-token")
        .scanner("gitlab", "http://127.0.0.1:9/no-keys-here")
        .start()
        .await;
    let signer = Signer::test();
    let mut minted = Vec::new();
    for i in 0..5 {
        minted.push(app.mint(&format!("team/pkg{i}"), Ttl::minutes(30)).await);
    }
    let expired = app.mint("team/old", Ttl::minutes(-3)).await;
    let raw: Vec<&str> = minted.iter().map(|t| t.expose_secret()).collect();
    for body in [
        alert_body(&[raw[0], raw[1], "junk-a"]),
        alert_body(&[raw[1], raw[2], expired.expose_secret()]),
        alert_body(&[
            raw[3],
            "cio_tp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1yLcDB",
            "junk-b",
            "junk-c",
        ]),
    ] {
        assert_eq!(app.deliver(&signer, body).await.status, 200);
    }
    // Hostile text in a URL must be shown as text.
    let hostile = serde_json::to_vec(&serde_json::json!([{
        "token": raw[4], "type": "cio_tp",
        "url": "https://evil.example/<img src=x onerror=alert(1)>", "source": "<b>npm</b>"
    }]))
    .unwrap();
    assert_eq!(app.deliver(&signer, hostile).await.status, 200);
    // A re-report of a token revoked before (an occurrence, not a token).
    let again = alert_body(&[raw[0]]);
    assert_eq!(app.deliver(&signer, again).await.status, 200);
    // A replay run by a person: labelled as such, not as a signing key.
    let replayed = app.mint("team/replayed", Ttl::minutes(30)).await;
    let report = revoker::domain::alert::NewReport {
        scanner: "replay".into(),
        key_id: "alice@security".into(),
        ..one_item_report(replayed.hash(), "ci-log", chrono::Utc::now())
    };
    let options = revoker::store::RecordOptions {
        deadline: None,
        once_per_body: false,
    };
    app.store.record_report(&report, options).await.unwrap();
    // One notification failed for good (no webhook here: the rest wait).
    let claimed = app
        .store
        .claim_notifications(
            revoker::store::Clock::Database,
            std::time::Duration::from_secs(60),
            1,
        )
        .await
        .unwrap();
    let failed = revoker::store::AttemptResult::Failed {
        error: "HTTP 410 from the owner's webhook".into(),
    };
    app.store
        .finish_notification(&claimed[0], &failed, revoker::store::Clock::Database)
        .await
        .unwrap();

    // The page as served: a visible loading state, nothing that reads as a number.
    let page = app.admin_get("/dashboard", None).await.text;
    let tiles = &page[page.find("class=\"tiles\"").unwrap()..];
    let tiles = &tiles[..tiles.find("</section>").unwrap()];
    assert_eq!(tiles.matches("loading…").count(), 11, "{tiles}");
    assert!(!tiles.contains('—') && !tiles.contains(">0<"), "{tiles}");

    let stats = app.admin_get("/api/stats", Some("dash-token")).await;
    assert_eq!(stats.status, 200);
    let totals = &stats.json["totals"];

    let url = format!("{}/dashboard#token=dash-token", app.admin);
    let dom = run_chromium(&bin, &url, &["--dump-dom"]).await;
    assert!(
        dom.contains("data-loaded=\"true\""),
        "page never loaded data:\n{dom}"
    );
    let tokens =
        totals["tokens_revoked"].as_i64().unwrap() + totals["tokens_expired"].as_i64().unwrap();
    assert_eq!(text_of(&dom, "total-tokens").unwrap(), tokens.to_string());
    assert_eq!(tokens, 7, "5 + 1 expired + 1 replayed, each once");
    assert!(dom.contains("(1 had expired)"), "tokens hint");
    for (id, field) in [
        ("total-reports", "reports"),
        ("total-items", "items"),
        ("total-revoked", "revoked"),
        ("total-already-revoked", "already_revoked"),
        ("total-expired", "expired"),
        ("total-unknown", "unknown"),
        ("total-not-ours", "not_ours"),
    ] {
        let shown = text_of(&dom, id).unwrap_or_else(|| panic!("no #{id} on the page"));
        assert_eq!(shown, totals[field].to_string(), "#{id}");
    }
    // Owner notifications (no webhook here: all still pending).
    let notifications = &stats.json["notifications"];
    for (id, field) in [
        ("notify-delivered", "delivered"),
        ("notify-pending", "pending"),
        ("notify-failed", "failed"),
    ] {
        let shown = text_of(&dom, id).unwrap_or_else(|| panic!("no #{id} on the page"));
        assert_eq!(shown, notifications[field].to_string(), "#{id}");
    }
    assert_eq!(
        notifications["pending"], 6,
        "5 revoked + 1 expired + 1 replayed − 1 failed"
    );
    assert_eq!(notifications["failed"], 1);
    let tp = totals["revoked"].as_i64().unwrap()
        + totals["already_revoked"].as_i64().unwrap()
        + totals["expired"].as_i64().unwrap();
    assert_eq!(text_of(&dom, "true-positives").unwrap(), tp.to_string());
    // Sanity of the seeded numbers themselves.
    assert_eq!(totals["revoked"], 6, "five delivered, one replayed");
    assert_eq!(totals["already_revoked"], 2);
    assert_eq!(totals["expired"], 1);
    assert_eq!(totals["unknown"], 1);
    // Every day of the series: distinct tokens revoked and re-reports, as the API says.
    let daily = stats.json["daily"].as_array().unwrap();
    assert_eq!(daily.len(), 30);
    for d in daily {
        let tokens = d["tokens_revoked"].as_i64().unwrap() + d["tokens_expired"].as_i64().unwrap();
        let bar = format!(
            "data-day=\"{}\" data-tokens=\"{tokens}\" data-rereports=\"{}\"",
            d["day"].as_str().unwrap(),
            d["already_revoked"]
        );
        assert!(dom.contains(&bar), "no bar {bar}");
    }
    // By scanner: every number of every row.
    let by_scanner = stats.json["by_scanner"].as_array().unwrap();
    let rows = rows_of(&dom, "by-scanner");
    assert_eq!(rows.len() - 1, by_scanner.len());
    for (row, s) in rows[1..].iter().zip(by_scanner) {
        let mut expected = vec![
            s["scanner"].as_str().unwrap().to_owned(),
            (s["tokens_revoked"].as_i64().unwrap() + s["tokens_expired"].as_i64().unwrap())
                .to_string(),
        ];
        for k in [
            "reports",
            "items",
            "revoked",
            "already_revoked",
            "expired",
            "unknown",
            "not_ours",
        ] {
            expected.push(s[k].to_string());
        }
        assert_eq!(cells(row), expected);
    }
    // One format in play (cio_tp): no per-format panel, and the API counts it alone.
    assert_eq!(stats.json["token_formats"], serde_json::json!(["cio_tp"]));
    let by_format = stats.json["by_format"].as_array().unwrap();
    assert_eq!(by_format.len(), 1);
    assert_eq!(by_format[0]["format"], "cio_tp");
    assert_eq!(by_format[0]["tokens_revoked"], totals["tokens_revoked"]);
    assert_eq!(by_format[0]["tokens_expired"], totals["tokens_expired"]);
    assert_eq!(
        by_format[0]["revocation_ages"],
        stats.json["revocation_ages"]
    );
    assert!(opening_tag(&dom, "formats-panel").contains("hidden"));
    // Recent revocations: whom to tell, newest first.
    let revocations = stats.json["recent_revocations"].as_array().unwrap();
    assert_eq!(revocations.len(), 7);
    let rows = rows_of(&dom, "recent-revocations");
    assert_eq!(rows.len() - 1, revocations.len());
    for (row, r) in rows[1..].iter().zip(revocations) {
        let c = cells(row);
        assert!(
            c[1].starts_with(r["token_hash_prefix"].as_str().unwrap()),
            "{c:?}"
        );
        assert_eq!(c[2], r["owner"].as_str().unwrap());
        assert_eq!(c[4], r["notification"].as_str().unwrap());
    }
    assert_eq!(revocations[0]["owner"], "team/replayed");
    assert!(
        cells(rows[1])[3].contains("replayed by alice@security"),
        "{:?}",
        cells(rows[1])
    );
    // The failed notification, with its error.
    let failed_list = stats.json["failed_notifications"].as_array().unwrap();
    assert_eq!(failed_list.len(), 1);
    let rows = rows_of(&dom, "notification-problems");
    assert_eq!(rows.len() - 1, 1);
    let c = cells(rows[1]);
    assert_eq!(c[0], "failed");
    assert_eq!(c[1], failed_list[0]["token_hash_prefix"].as_str().unwrap());
    assert_eq!(c[2], failed_list[0]["owner"].as_str().unwrap());
    assert_eq!(c[3], failed_list[0]["attempts"].to_string());
    assert_eq!(c[4], "HTTP 410 from the owner's webhook");
    assert!(
        dom.contains("no --notify-webhook"),
        "says notifications are not sent here"
    );
    // On call: github has its key and this instance's deliveries; gitlab has no keys,
    // and the page says so in a banner too.
    let scanners = stats.json["on_call"]["scanners"].as_array().unwrap();
    let rows = rows_of(&dom, "oncall");
    assert_eq!(rows.len() - 1, 2);
    for (row, s) in rows[1..].iter().zip(scanners) {
        let c = cells(row);
        assert_eq!(c[0], s["scanner"].as_str().unwrap());
        assert_eq!(c[1], s["keys"].to_string());
        let here = &s["this_instance"];
        let (errors, total) = (
            here["last_hour_server_errors"].as_i64().unwrap_or(0),
            here["last_hour_deliveries"].as_i64().unwrap_or(0),
        );
        if here.is_null() {
            assert_eq!(
                (c[5].as_str(), c[6].as_str()),
                ("no deliveries here", "no deliveries here")
            );
        } else {
            assert!(c[6].starts_with(&format!("{errors} of {total}")), "{c:?}");
            assert_eq!(
                c[5],
                here["slow_days"].as_array().map_or(0, Vec::len).to_string()
            );
        }
    }
    assert_eq!(scanners[0]["scanner"], "github");
    // Five deliveries, and any the helper retried after a 503 while keys loaded.
    let here = &scanners[0]["this_instance"];
    assert_eq!(
        here["last_hour_deliveries"].as_i64().unwrap()
            - here["last_hour_server_errors"].as_i64().unwrap(),
        5
    );
    assert!(
        cells(rows[1])[4].contains("HTTP 200"),
        "{:?}",
        cells(rows[1])
    );
    assert_eq!(scanners[1]["keys"], 0);
    assert!(
        cells(rows[2])[7].contains("no keys"),
        "{:?}",
        cells(rows[2])
    );
    assert!(text_of(&dom, "oncall-banner")
        .unwrap()
        .contains("gitlab: no keys"));
    // Outcomes and top sources: each bar's count, as the API says.
    for key in [
        "revoked",
        "expired",
        "already_revoked",
        "unknown",
        "not_ours",
    ] {
        let bar = format!("data-outcome=\"{key}\" data-count=\"{}\"", totals[key]);
        assert!(dom.contains(&bar), "no outcome bar {bar}");
    }
    let sources = stats.json["by_source"].as_array().unwrap();
    assert!(!sources.is_empty());
    for src in sources.iter().take(12) {
        let name = src["source"].as_str().unwrap();
        // Serialised with `&` escaped, and `<` `>` too in newer browsers.
        let amp = name.replace('&', "&amp;");
        let both = amp.replace('<', "&lt;").replace('>', "&gt;");
        let found = [amp, both].iter().any(|v| {
            dom.contains(&format!(
                "data-source=\"{v}\" data-items=\"{}\"",
                src["items"]
            ))
        });
        assert!(
            found,
            "no bar for source {name:?} with {} items",
            src["items"]
        );
    }
    // One table row per recent report, every count as the API says; hostile strings
    // escaped, not interpreted.
    let recent = stats.json["recent"].as_array().unwrap();
    let rows = rows_of(&dom, "recent-reports");
    assert_eq!(rows.len() - 1, 6, "header + 6 reports");
    for (row, r) in rows[1..].iter().zip(recent) {
        let c = cells(row);
        let counts = &r["counts"];
        let expected: Vec<String> = [
            r["item_count"].to_string(),
            counts["revoked"].to_string(),
            counts["already_revoked"].to_string(),
            counts["expired"].to_string(),
            counts["unknown"].to_string(),
            counts["not_ours"].to_string(),
        ]
        .into();
        assert_eq!(c[2..8], expected[..], "{c:?}");
    }
    assert!(dom.contains("replayed by alice@security"));
    assert!(!dom.contains("key alice@security"));
    assert!(!dom.contains("<img src=\"x\""), "hostile URL became markup");
    assert!(dom.contains("&lt;b&gt;npm&lt;/b&gt;") || dom.contains("&lt;b&gt;npm"));
    for t in &minted {
        assert!(!dom.contains(t.expose_secret()));
        assert!(dom.contains(&t.hash().prefix()));
    }

    // Without the token the page says so instead of showing numbers.
    let dom = run_chromium(&bin, &format!("{}/dashboard", app.admin), &["--dump-dom"]).await;
    assert!(
        dom.contains("data-error"),
        "missing token must show an error:\n{dom}"
    );
    assert!(!dom.contains("data-loaded=\"true\""));
    assert!(!dom.contains("loading…"), "a loading state that never ends");
    assert!(dom.contains("unavailable"));

    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(&bin, &url, &[&format!("--screenshot={}", shot.display())]).await;
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    assert!(
        png.len() > 20_000,
        "screenshot suspiciously small: {} bytes",
        png.len()
    );
    app.stop().await;
}
