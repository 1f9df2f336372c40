//! The OpenAPI document (`src/http/openapi.rs`) as a contract: the committed
//! `docs/openapi.json` is what the code generates, `revoker openapi` prints it and the
//! admin listener serves it; its operations are exactly the routes the two routers serve
//! (each answers a request with a status the document lists for it, never 404, and the
//! methods it does not list are 405), each on the listener its `servers` name.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::*;
use reqwest::Method;
use serde_json::Value;

const REGENERATE: &str = "cargo run -q -- openapi > docs/openapi.json";
const ADMIN_TOKEN: &str = "admin-token-for-the-openapi-test";

/// Listener of a route: the public one, the admin one, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum On {
    Public,
    Admin,
    Both,
}

/// Every route the routers serve, with the listener serving it.
const ROUTES: &[(&str, &str, On)] = &[
    ("POST", "/secret-scanning/{scanner}", On::Public),
    ("GET", "/v1/revocable_token_types", On::Public),
    ("POST", "/v1/revoke_tokens", On::Public),
    ("GET", "/v1/tokens/current", On::Public),
    ("DELETE", "/v1/tokens/current", On::Public),
    ("POST", "/oauth/revoke", On::Public),
    ("POST", "/oauth/introspect", On::Public),
    ("GET", "/healthz", On::Both),
    ("GET", "/readyz", On::Both),
    ("GET", "/metrics", On::Admin),
    ("GET", "/api/stats", On::Admin),
    ("GET", "/dashboard", On::Admin),
    ("GET", "/openapi.json", On::Admin),
];

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json")
}

fn committed() -> String {
    std::fs::read_to_string(committed_path()).unwrap_or_else(|e| {
        panic!("docs/openapi.json cannot be read ({e}); create it with `{REGENERATE}`")
    })
}

fn document() -> Value {
    serde_json::from_str(&revoker::http::openapi::document()).expect("the document is JSON")
}

/// The first line where two texts differ, for the failure message.
fn first_difference(a: &str, b: &str) -> String {
    let line = a
        .lines()
        .zip(b.lines())
        .position(|(x, y)| x != y)
        .unwrap_or_else(|| a.lines().count().min(b.lines().count()));
    format!(
        "line {}: committed {:?}, generated {:?}",
        line + 1,
        a.lines().nth(line).unwrap_or("<end>"),
        b.lines().nth(line).unwrap_or("<end>")
    )
}

#[test]
fn the_committed_document_is_what_the_code_generates() {
    let generated = revoker::http::openapi::document();
    let committed = committed();
    assert!(
        committed == generated,
        "docs/openapi.json differs from what the code generates ({}): regenerate it with \
         `{REGENERATE}` and commit it",
        first_difference(&committed, &generated)
    );
}

#[test]
fn revoker_openapi_prints_the_document() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_revoker"))
        .arg("openapi")
        .output()
        .expect("revoker runs");
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).expect("UTF-8");
    assert_eq!(printed, revoker::http::openapi::document());
    assert!(printed.ends_with("}\n"));
}

#[test]
fn the_document_lists_exactly_the_routes_each_on_its_listener() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let servers: Vec<&str> = doc["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["url"].as_str().unwrap())
        .collect();
    let (public, admin) = (servers[0], servers[1]);
    let mut listed = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let on: Vec<&str> = item["servers"]
            .as_array()
            .unwrap_or_else(|| panic!("{path} names no listener"))
            .iter()
            .map(|s| s["url"].as_str().unwrap())
            .collect();
        for (method, _) in item.as_object().unwrap() {
            if method == "servers" {
                continue;
            }
            listed.insert((method.to_uppercase(), path.clone()));
            let expected = ROUTES
                .iter()
                .find(|(m, p, _)| m.eq_ignore_ascii_case(method) && p == path)
                .map(|r| r.2);
            let expected = match expected {
                Some(On::Public) => vec![public],
                Some(On::Admin) => vec![admin],
                Some(On::Both) => vec![public, admin],
                None => panic!("{method} {path} is documented but not a known route"),
            };
            assert_eq!(on, expected, "{method} {path}");
        }
    }
    let known: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(listed, known);
    // Every schema a path refers to is defined.
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for reference in text.split("\"#/components/schemas/").skip(1) {
        let name = &reference[..reference.find('"').unwrap()];
        assert!(
            schemas.contains_key(name),
            "{name} is referred to, not defined"
        );
    }
}

/// The receiver with every optional route on: an admin token, the Revocation API, an
/// introspection client.
/// Every path a router registers (`.route("…"` in `src/http/`) is in `ROUTES`, and the
/// other way round: a route added without its place in the document fails here (the
/// review found that a new route with neither passed every other test).
#[test]
fn the_routes_the_code_registers_are_the_known_routes() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let route = regex::Regex::new(r#"\.route\(\s*"([^"]+)""#).unwrap();
    let mut registered = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for c in route.captures_iter(&text) {
                registered.insert(c[1].to_owned());
            }
        }
    }
    let known: BTreeSet<String> = ROUTES.iter().map(|r| r.1.to_owned()).collect();
    assert_eq!(
        registered, known,
        "the paths src/http/ registers differ from ROUTES: document the new route \
         (#[utoipa::path], ApiDoc's paths) and add it to ROUTES"
    );
}

async fn start() -> (TestApp, TestDb, KeyServer) {
    let db = TestDb::new(Kind::Sqlite).await.expect("SQLite");
    let keys = KeyServer::with_test_keys().await;
    let mut settings = TestOptions {
        admin_token: Some(ADMIN_TOKEN.into()),
        ..TestOptions::default()
    }
    .settings(&db, &keys);
    settings.revocation_api_tokens = vec!["revocation-api-token-0123456789".to_owned().into()];
    settings.holder.introspection_clients = vec![(
        "api-server".into(),
        "s3cret-introspection-client".to_owned().into(),
    )];
    settings.holder.rate_limit = None;
    (TestApp::from_settings(settings).await, db, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_is_served_with_a_documented_status() {
    let (app, db, keys) = start().await;
    let doc = document();
    let client = reqwest::Client::new();
    for &(method, path, on) in ROUTES {
        let bases = match on {
            On::Public => vec![&app.base],
            On::Admin => vec![&app.admin],
            On::Both => vec![&app.base, &app.admin],
        };
        let operation = &doc["paths"][path][method.to_lowercase()];
        let statuses: Vec<u16> = operation["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(|s| s.parse().unwrap())
            .collect();
        let url_path = path.replace("{scanner}", "github");
        for base in bases {
            // Without credentials: a refusal the document lists, never a 404 or 405.
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let resp = client
                .request(method.clone(), format!("{base}{url_path}"))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            assert!(
                statuses.contains(&status),
                "{method} {base}{url_path}: {status} is not among the documented {statuses:?}"
            );
            assert!(
                status != 404 && status != 405,
                "{method} {base}{url_path}: {status}"
            );
            // A method it does not document is not served.
            for other in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
                let documented = ROUTES.iter().any(|(m, p, _)| *m == other && *p == path);
                if documented {
                    continue;
                }
                let resp = client
                    .request(
                        Method::from_bytes(other.as_bytes()).unwrap(),
                        format!("{base}{url_path}"),
                    )
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    resp.status().as_u16(),
                    405,
                    "{other} {base}{url_path} is served but not documented"
                );
            }
        }
    }
    // With the admin token the admin routes answer 200.
    for path in ["/metrics", "/api/stats", "/openapi.json", "/dashboard"] {
        let a = app.admin_get(path, Some(ADMIN_TOKEN)).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text);
    }
    app.stop().await;
    db.cleanup().await;
    drop(keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_the_committed_document() {
    let (app, db, keys) = start().await;
    let url = format!("{}/openapi.json", app.admin);
    let resp = reqwest::Client::new()
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()[reqwest::header::CONTENT_TYPE],
        "application/json"
    );
    let served = resp.text().await.unwrap();
    assert!(
        served == committed(),
        "GET /openapi.json differs from docs/openapi.json ({}): regenerate it with `{REGENERATE}`",
        first_difference(&committed(), &served)
    );
    // Behind the admin token, like /api/stats.
    let refused = app.admin_get("/openapi.json", None).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.error_code(), "unauthorized");
    let wrong = app.admin_get("/openapi.json", Some("not-the-token")).await;
    assert_eq!(wrong.status, 401);
    app.stop().await;
    db.cleanup().await;
    drop(keys);
}
