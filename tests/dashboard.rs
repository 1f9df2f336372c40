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

/// The text inside the element with this id in a dumped DOM.
fn text_of(dom: &str, id: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let open_end = at + dom[at..].find('>')? + 1;
    let close = open_end + dom[open_end..].find('<')?;
    Some(dom[open_end..close].trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_same_totals_as_the_stats_api() {
    let Some(bin) = chromium() else {
        static NOTICE: Once = Once::new();
        let how = "apt-get install chromium; .ci/run installs the Debian package";
        skip_unless_ci(&NOTICE, "dashboard browser test: no chromium", how);
        return;
    };
    let app = TestApp::sqlite().admin_token("dash-token").start().await;
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

    let stats = app.admin_get("/api/stats", Some("dash-token")).await;
    assert_eq!(stats.status, 200);
    let totals = &stats.json["totals"];

    let url = format!("{}/dashboard#token=dash-token", app.admin);
    let dom = run_chromium(&bin, &url, &["--dump-dom"]).await;
    assert!(
        dom.contains("data-loaded=\"true\""),
        "page never loaded data:\n{dom}"
    );
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
    assert_eq!(notifications["pending"], 6, "5 revoked + 1 expired");
    let tp = totals["revoked"].as_i64().unwrap()
        + totals["already_revoked"].as_i64().unwrap()
        + totals["expired"].as_i64().unwrap();
    assert_eq!(text_of(&dom, "true-positives").unwrap(), tp.to_string());
    // Sanity of the seeded numbers themselves.
    assert_eq!(totals["revoked"], 5);
    assert_eq!(totals["already_revoked"], 1);
    assert_eq!(totals["expired"], 1);
    assert_eq!(totals["unknown"], 1);
    // One table row per recent report; hostile strings escaped, not interpreted.
    let table = &dom[dom.find("id=\"recent-reports\"").expect("recent table")..];
    let body = &table[..table.find("</table>").unwrap()];
    assert_eq!(
        body.matches("<tr").count() - 1,
        4,
        "header + 4 reports:\n{body}"
    );
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
