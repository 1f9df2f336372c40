//! Test helpers: real databases, a real loopback key server, real signatures, and the
//! real receiver on port 0.
//!
//! PostgreSQL tests use `REVOKER_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and create a fresh database per test.
//! If the server is unreachable they skip with a message on stderr, unless `CI` is set,
//! in which case they fail.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use p256::ecdsa::SigningKey;
use sqlx::Connection;

use revoker::config::Settings;
use revoker::domain::token::Token;
use revoker::signature::ScannerSpec;
use revoker::startup::Application;
use revoker::store::{self, NewToken, RevocationStore};

pub const KEY_ID: &str = "revoker-test-key-1";
pub const ROTATED_KEY_ID: &str = "revoker-test-key-2";

pub fn fixture(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(path)
}

pub fn fixture_string(path: &str) -> String {
    std::fs::read_to_string(fixture(path)).expect("fixture exists")
}

// ---------------------------------------------------------------- databases

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

pub enum TestDb {
    Sqlite {
        _dir: tempfile::TempDir,
        url: String,
    },
    Postgres {
        admin_url: String,
        name: String,
        url: String,
    },
}

pub fn postgres_admin_url() -> String {
    std::env::var("REVOKER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

static SKIP_NOTICE: Once = Once::new();

impl TestDb {
    /// A fresh, empty database of this kind; `None` means "skip" (PostgreSQL
    /// unreachable outside CI; a notice is printed once).
    pub async fn new(kind: Kind) -> Option<TestDb> {
        match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("revoker.db").display());
                Some(TestDb::Sqlite { _dir: dir, url })
            }
            Kind::Postgres => {
                let admin_url = postgres_admin_url();
                let conn = tokio::time::timeout(
                    Duration::from_secs(5),
                    sqlx::PgConnection::connect(&admin_url),
                )
                .await;
                let mut conn = match conn {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return Self::unreachable(&admin_url, &e.to_string()),
                    Err(_) => return Self::unreachable(&admin_url, "timed out"),
                };
                let name = format!("revoker_t_{}", rand_suffix());
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let mut url = url::Url::parse(&admin_url).expect("postgres URL");
                url.set_path(&name);
                Some(TestDb::Postgres {
                    admin_url,
                    name,
                    url: url.to_string(),
                })
            }
        }
    }

    fn unreachable(url: &str, why: &str) -> Option<TestDb> {
        if in_ci() {
            panic!(
                "PostgreSQL at {url} is unreachable in CI ({why}); the PostgreSQL suite must run"
            );
        }
        SKIP_NOTICE.call_once(|| {
            // Written straight to stderr so the test harness does not capture it.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPING PostgreSQL tests: {url} unreachable ({why}). \
                 Set REVOKER_TEST_POSTGRES_URL to run them. ***\n"
            );
        });
        None
    }

    pub fn url(&self) -> &str {
        match self {
            TestDb::Sqlite { url, .. } | TestDb::Postgres { url, .. } => url,
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            TestDb::Sqlite { .. } => Kind::Sqlite,
            TestDb::Postgres { .. } => Kind::Postgres,
        }
    }

    /// Drops a PostgreSQL test database (the SQLite one goes with its temp dir).
    pub async fn cleanup(self) {
        if let TestDb::Postgres {
            admin_url, name, ..
        } = self
        {
            if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
            }
        }
    }

    /// Every value stored in every table, as text, for secret scanning.
    pub async fn dump(&self) -> String {
        let mut out = String::new();
        match self {
            TestDb::Sqlite { url, .. } => {
                let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
                let tables: Vec<(String,)> = sqlx::query_as(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                )
                .fetch_all(&mut conn)
                .await
                .unwrap();
                for (table,) in tables {
                    let cols: Vec<(String,)> =
                        sqlx::query_as(&format!("SELECT name FROM pragma_table_info('{table}')"))
                            .fetch_all(&mut conn)
                            .await
                            .unwrap();
                    // quote(): text as text, blobs as X'hex'.
                    let expr = cols
                        .iter()
                        .map(|(c,)| format!("quote({c})"))
                        .collect::<Vec<_>>()
                        .join(" || ',' || ");
                    let rows: Vec<(String,)> =
                        sqlx::query_as(&format!("SELECT {expr} FROM {table}"))
                            .fetch_all(&mut conn)
                            .await
                            .unwrap();
                    for (r,) in rows {
                        out.push_str(&r);
                        out.push('\n');
                    }
                }
            }
            TestDb::Postgres { url, .. } => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                let tables: Vec<(String,)> = sqlx::query_as(
                    "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
                )
                .fetch_all(&mut conn)
                .await
                .unwrap();
                for (table,) in tables {
                    let rows: Vec<(String,)> =
                        sqlx::query_as(&format!("SELECT t::text FROM {table} t"))
                            .fetch_all(&mut conn)
                            .await
                            .unwrap();
                    for (r,) in rows {
                        out.push_str(&r);
                        out.push('\n');
                    }
                }
            }
        }
        out
    }

    /// Runs one statement on a connection of its own (to damage data on purpose).
    pub async fn execute(&self, sql: &str) -> u64 {
        match self {
            TestDb::Sqlite { url, .. } => {
                let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
                sqlx::query(sql)
                    .execute(&mut conn)
                    .await
                    .unwrap()
                    .rows_affected()
            }
            TestDb::Postgres { url, .. } => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::query(sql)
                    .execute(&mut conn)
                    .await
                    .unwrap()
                    .rows_affected()
            }
        }
    }

    /// Rows that break the revocation invariants; empty when the database is
    /// consistent. Every report's counts match its items; every revoked token was
    /// revoked by exactly one report, which lists it as `revoked` (or `expired`: an
    /// expired token that is reported is revoked too); nothing is half revoked. Every
    /// revoked token has exactly one owner notification, queued by its revoking report
    /// and agreeing with the token; no other token has one.
    pub async fn inconsistencies(&self) -> Vec<String> {
        const CHECKS: [(&str, &str); 7] = [
            (
                "reports whose counts disagree with their items",
                "SELECT count(*) FROM reports r WHERE
                   r.item_count - r.not_ours <> (SELECT count(*) FROM report_items i WHERE i.report_id = r.id)
                   OR r.revoked <> (SELECT count(*) FROM report_items i WHERE i.report_id = r.id AND i.outcome = 'revoked')
                   OR r.already_revoked <> (SELECT count(*) FROM report_items i WHERE i.report_id = r.id AND i.outcome = 'already_revoked')
                   OR r.expired <> (SELECT count(*) FROM report_items i WHERE i.report_id = r.id AND i.outcome = 'expired')
                   OR r.unknown <> (SELECT count(*) FROM report_items i WHERE i.report_id = r.id AND i.outcome = 'unknown')",
            ),
            (
                "revoked tokens that their revoking report does not list as revoked (or expired)",
                "SELECT count(*) FROM tokens t WHERE t.revoked_at IS NOT NULL AND NOT EXISTS
                   (SELECT 1 FROM report_items i WHERE i.report_id = t.revoked_by
                    AND i.token_hash = t.hash AND i.outcome IN ('revoked', 'expired'))",
            ),
            (
                "items marked revoked by a report other than the token's revoking report",
                "SELECT count(*) FROM report_items i JOIN tokens t ON t.hash = i.token_hash
                 WHERE i.outcome IN ('revoked', 'expired')
                   AND (t.revoked_by IS NULL OR t.revoked_by <> i.report_id)",
            ),
            (
                "tokens with revoked_at and revoked_by disagreeing",
                "SELECT count(*) FROM tokens WHERE (revoked_at IS NULL) <> (revoked_by IS NULL)",
            ),
            (
                "revoked tokens without exactly one notification from their revoking report",
                "SELECT count(*) FROM tokens t WHERE t.revoked_at IS NOT NULL AND
                   (SELECT count(*) FROM notifications n
                    WHERE n.token_hash = t.hash AND n.report_id = t.revoked_by) <> 1",
            ),
            (
                "notifications for tokens that are not revoked (or not ours)",
                "SELECT count(*) FROM notifications n WHERE NOT EXISTS
                   (SELECT 1 FROM tokens t WHERE t.hash = n.token_hash AND t.revoked_at IS NOT NULL)",
            ),
            (
                "notifications disagreeing with their token (report, owner, time, expired)",
                "SELECT count(*) FROM notifications n JOIN tokens t ON t.hash = n.token_hash
                 WHERE n.report_id <> t.revoked_by OR n.owner <> t.owner
                   OR n.revoked_at <> t.revoked_at OR n.expired <> (t.expires_at <= t.revoked_at)",
            ),
        ];
        let mut found = Vec::new();
        for (what, sql) in CHECKS {
            let n: i64 = match self {
                TestDb::Sqlite { url, .. } => {
                    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
                    sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
                }
                TestDb::Postgres { url, .. } => {
                    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                    sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
                }
            };
            if n != 0 {
                found.push(format!("{n} {what}"));
            }
        }
        found
    }
}

fn rand_suffix() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().gen();
    format!("{n:016x}")
}

// ---------------------------------------------------------------- key server

/// What the key server answers.
#[derive(Clone)]
pub enum KeyMode {
    /// 200 with this JSON document.
    Serve(String),
    /// This status with an empty body.
    Status(u16),
    /// 200 with a body that is not key JSON.
    Garbage,
    /// Never answers.
    Hang,
}

pub struct KeyServerState {
    mode: Mutex<KeyMode>,
    fetches: AtomicUsize,
    last_authorization: Mutex<Option<String>>,
}

/// A real HTTP server on loopback playing the scanner's key endpoint.
pub struct KeyServer {
    pub addr: SocketAddr,
    state: Arc<KeyServerState>,
}

impl KeyServer {
    pub async fn start(mode: KeyMode) -> KeyServer {
        let state = Arc::new(KeyServerState {
            mode: Mutex::new(mode),
            fetches: AtomicUsize::new(0),
            last_authorization: Mutex::new(None),
        });
        let app = Router::new()
            .route("/keys", get(serve_keys))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        KeyServer { addr, state }
    }

    /// The key server serving `fixtures/keys/test-keys.json`.
    pub async fn with_test_keys() -> KeyServer {
        KeyServer::start(KeyMode::Serve(fixture_string("keys/test-keys.json"))).await
    }

    pub fn url(&self) -> String {
        format!("http://{}/keys", self.addr)
    }

    pub fn set_mode(&self, mode: KeyMode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    pub fn last_authorization(&self) -> Option<String> {
        self.state.last_authorization.lock().unwrap().clone()
    }
}

async fn serve_keys(State(state): State<Arc<KeyServerState>>, headers: HeaderMap) -> Response {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    *state.last_authorization.lock().unwrap() = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mode = state.mode.lock().unwrap().clone();
    match mode {
        KeyMode::Serve(doc) => {
            (StatusCode::OK, [("content-type", "application/json")], doc).into_response()
        }
        KeyMode::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        KeyMode::Garbage => (StatusCode::OK, "<html>rate limited</html>").into_response(),
        KeyMode::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
    }
}

// ---------------------------------------------------------------- signing

/// Signs bodies like a scanner does: base64 of a DER ECDSA P-256/SHA-256 signature.
pub struct Signer {
    key: SigningKey,
    pub key_id: String,
}

impl Signer {
    pub fn from_fixture(pem: &str, key_id: &str) -> Signer {
        let key = revoker::replay::load_signing_key(&fixture(pem)).expect("PKCS#8 P-256 key");
        Signer {
            key,
            key_id: key_id.into(),
        }
    }

    /// The test key listed as `revoker-test-key-1`.
    pub fn test() -> Signer {
        Signer::from_fixture("keys/test-key.pem", KEY_ID)
    }

    pub fn sign(&self, body: &[u8]) -> String {
        revoker::replay::sign_body(&self.key, body)
    }
}

/// A GitHub-shaped alert body.
pub fn alert_body(tokens: &[&str]) -> Vec<u8> {
    let items: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({
                "token": t,
                "type": "cio_tp",
                "url": format!("https://github.com/example/repo/blob/main/file{i}.txt"),
                "source": "content",
            })
        })
        .collect();
    serde_json::to_vec(&items).unwrap()
}

// ---------------------------------------------------------------- the app

pub struct TestOptions {
    pub keys_ttl: Duration,
    pub keys_refetch_interval: Duration,
    pub keys_timeout: Duration,
    pub max_body: usize,
    pub db_timeout: Duration,
    pub github_token: Option<String>,
    pub admin_token: Option<String>,
    pub body_timeout: Duration,
    pub request_timeout: Duration,
    pub max_concurrent_deliveries: usize,
    /// Extra scanners besides `github` (which points at the key server).
    pub extra_scanners: Vec<ScannerSpec>,
    /// Owner notifications; `None` leaves the outbox worker off.
    pub notify: Option<revoker::notify::NotifySettings>,
}

impl Default for TestOptions {
    fn default() -> Self {
        TestOptions {
            keys_ttl: Duration::from_secs(3600),
            keys_refetch_interval: Duration::from_secs(60),
            keys_timeout: Duration::from_secs(5),
            max_body: 8 << 20,
            db_timeout: Duration::from_secs(5),
            github_token: None,
            admin_token: None,
            body_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(25),
            max_concurrent_deliveries: 128,
            extra_scanners: vec![],
            notify: None,
        }
    }
}

pub struct TestApp {
    pub base: String,
    /// The admin listener (metrics, stats, dashboard).
    pub admin: String,
    pub state: revoker::http::AppState,
    pub client: reqwest::Client,
    pub store: Arc<dyn RevocationStore>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// Starts the real receiver on port 0 against `db_url`, with scanner `github` reading
/// keys from `keys`.
pub async fn spawn_app(db_url: &str, keys: &KeyServer, opts: TestOptions) -> TestApp {
    let mut scanners = vec![ScannerSpec {
        name: "github".into(),
        source: keys.url(),
    }];
    scanners.extend(opts.extra_scanners);
    let mut settings = Settings::new(db_url, scanners);
    settings.keys_ttl = opts.keys_ttl;
    settings.keys_refetch_interval = opts.keys_refetch_interval;
    settings.keys_timeout = opts.keys_timeout;
    settings.max_body = opts.max_body;
    settings.pool.acquire_timeout = opts.db_timeout;
    settings.pool.max_connections = 5;
    settings.retry_after = Duration::from_secs(7);
    settings.github_token = opts.github_token.map(secrecy::SecretString::from);
    settings.admin_token = opts.admin_token.map(secrecy::SecretString::from);
    settings.body_timeout = opts.body_timeout;
    settings.request_timeout = opts.request_timeout;
    settings.max_concurrent_deliveries = opts.max_concurrent_deliveries;
    settings.notify = opts.notify;
    let app = Application::build(settings).await.expect("app builds");
    let base = format!("http://127.0.0.1:{}", app.port());
    let admin = format!("http://127.0.0.1:{}", app.admin_port());
    let store = Arc::clone(&app.state().store);
    let state = app.state().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    TestApp {
        base,
        admin,
        state,
        client: reqwest::Client::new(),
        store,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

/// What the receiver answered.
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub json: serde_json::Value,
    pub text: String,
}

impl TestApp {
    /// POSTs raw bytes with the given headers (None = header absent).
    pub async fn post(
        &self,
        scanner: &str,
        key_id: Option<&str>,
        signature: Option<&str>,
        body: Vec<u8>,
    ) -> Answer {
        let mut req = self
            .client
            .post(format!("{}/secret-scanning/{scanner}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key_id {
            req = req.header("Github-Public-Key-Identifier", k);
        }
        if let Some(s) = signature {
            req = req.header("Github-Public-Key-Signature", s);
        }
        let resp = req.send().await.expect("request sent");
        Answer::from(resp).await
    }

    /// Signs `body` with `signer` and POSTs it to the `github` scanner.
    pub async fn deliver(&self, signer: &Signer, body: Vec<u8>) -> Answer {
        let sig = signer.sign(&body);
        self.post("github", Some(&signer.key_id), Some(&sig), body)
            .await
    }

    /// Mints a token directly in the store, like `revoker token mint`.
    pub async fn mint(&self, owner: &str, ttl: chrono::Duration) -> Token {
        let t = Token::generate();
        let now = chrono::Utc::now();
        self.store
            .insert_token(&NewToken {
                hash: t.hash(),
                owner: owner.into(),
                created_at: now,
                expires_at: now + ttl,
            })
            .await
            .unwrap();
        t
    }

    /// GET on the admin listener, with an optional bearer token.
    pub async fn admin_get(&self, path: &str, bearer: Option<&str>) -> Answer {
        let mut req = self.client.get(format!("{}{path}", self.admin));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        Answer::from(req.send().await.unwrap()).await
    }

    /// Whether the store has this token revoked.
    pub async fn is_revoked(&self, t: &Token) -> bool {
        let stored = self.store.token(&t.hash()).await.unwrap();
        stored.expect("token was minted").revoked_at.is_some()
    }

    /// Waits until the start-up key fetch of `scanner` has finished (either way).
    pub async fn keys_attempted(&self, scanner: &str) {
        let cache = &self.state.scanners[scanner];
        let deadline = Instant::now() + Duration::from_secs(10);
        while cache.status().last_fetch_ok.is_none() {
            assert!(Instant::now() < deadline, "key fetch never finished");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

impl Answer {
    pub async fn from(resp: reqwest::Response) -> Answer {
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Answer {
            status,
            retry_after,
            json,
            text,
        }
    }

    /// The labels of a 200 feedback array, in order.
    pub fn labels(&self) -> Vec<String> {
        assert_eq!(
            self.status, 200,
            "expected 200, got {}: {}",
            self.status, self.text
        );
        self.json
            .as_array()
            .expect("feedback array")
            .iter()
            .map(|e| e["label"].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn error_code(&self) -> &str {
        self.json["error"].as_str().unwrap_or("<no error code>")
    }
}

/// Opens a second store on the same database (e.g. to look without the app's counter).
pub async fn open_store(url: &str) -> Arc<dyn RevocationStore> {
    store::connect(url, &store::PoolSettings::default())
        .await
        .unwrap()
}

// ---------------------------------------------------------------- the binary

/// `revoker` as a child process, with the variables a developer's shell may hold
/// removed.
pub fn revoker_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_revoker"));
    cmd.env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .env_remove("RUST_LOG_FORMAT")
        .env_remove("GITHUB_TOKEN");
    cmd
}

/// A `revoker serve` process on loopback port 0 (public and admin), scanner `github`
/// reading the test keys from their fixture file, logging at debug; its stderr is
/// collected line by line.
pub struct ServeProcess {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    pub base: String,
    pub admin: String,
}

impl ServeProcess {
    pub fn start(db_url: &str, extra_args: &[&str], json_logs: bool) -> ServeProcess {
        use std::io::BufRead;
        let mut cmd = revoker_command();
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--database-url",
            db_url,
            "--scanner",
            &format!("github={}", fixture("keys/test-keys.json").display()),
        ])
        .args(extra_args)
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
        if json_logs {
            cmd.env("RUST_LOG_FORMAT", "json");
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("listening") {
                    let _ = tx.send(line.clone());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let Ok(listening) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            panic!("serve did not start:\n{}", lines.lock().unwrap().join("\n"));
        };
        // Plain: `... addr=127.0.0.1:P admin=127.0.0.1:Q`; JSON: `"addr":"127.0.0.1:P"`.
        let addrs: Vec<String> = listening
            .split(|c: char| c.is_whitespace() || matches!(c, '"' | ',' | '}' | '=' | ':'))
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "127.0.0.1" && w[1].parse::<u16>().is_ok())
            .map(|w| format!("127.0.0.1:{}", w[1]))
            .collect();
        assert_eq!(addrs.len(), 2, "addresses in {listening}");
        ServeProcess {
            child,
            lines,
            reader: Some(reader),
            base: format!("http://{}", addrs[0]),
            admin: format!("http://{}", addrs[1]),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (current RSS, peak RSS) in KiB, from /proc.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} in /proc status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Everything logged so far.
    pub fn logs(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM without waiting.
    pub fn terminate(&self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
    }

    /// SIGTERM, wait for a clean exit, return everything logged.
    pub fn stop(mut self) -> String {
        self.terminate();
        self.wait_for_exit()
    }

    /// Waits for the process to exit (asserting it exited 0) and returns its logs.
    pub fn wait_for_exit(&mut self) -> String {
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "serve exited with {status}:\n{}",
            self.logs()
        );
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap(); // the pipe closed: everything is read
        }
        self.logs()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        // A failed test must not leave a server behind.
        if self.reader.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Mints `n` tokens owned by `owner` in one statement; they expire after `ttl`.
pub async fn mint_many(
    store: &dyn RevocationStore,
    owner: &str,
    n: usize,
    ttl: chrono::Duration,
) -> Vec<Token> {
    let now = chrono::Utc::now();
    let tokens: Vec<Token> = (0..n).map(|_| Token::generate()).collect();
    let rows: Vec<NewToken> = tokens
        .iter()
        .map(|t| NewToken {
            hash: t.hash(),
            owner: owner.into(),
            created_at: now,
            expires_at: now + ttl,
        })
        .collect();
    store.insert_tokens(&rows).await.unwrap();
    tokens
}

/// Signs `body` with the test key and POSTs it to `{base}/secret-scanning/github`.
/// `Err` when no HTTP answer came back (connection refused or reset).
pub async fn send_delivery(
    client: &reqwest::Client,
    base: &str,
    body: Vec<u8>,
) -> Result<Answer, reqwest::Error> {
    let signer = Signer::test();
    let sig = signer.sign(&body);
    let resp = client
        .post(format!("{base}/secret-scanning/github"))
        .header("Github-Public-Key-Identifier", &signer.key_id)
        .header("Github-Public-Key-Signature", sig)
        .body(body)
        .send()
        .await?;
    Ok(Answer::from(resp).await)
}

/// Makes the database unusable for the app: SQLite held under an exclusive lock,
/// PostgreSQL refusing connections with the app's connections terminated.
pub enum Outage {
    Sqlite(sqlx::SqliteConnection),
    Postgres,
}

impl Outage {
    pub async fn start(db: &TestDb) -> Outage {
        match db {
            TestDb::Sqlite { url, .. } => {
                let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
                sqlx::query("BEGIN EXCLUSIVE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                Outage::Sqlite(conn)
            }
            TestDb::Postgres {
                admin_url, name, ..
            } => {
                let mut admin = sqlx::PgConnection::connect(admin_url).await.unwrap();
                sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
                    .execute(&mut admin)
                    .await
                    .unwrap();
                sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                )
                .bind(name)
                .execute(&mut admin)
                .await
                .unwrap();
                Outage::Postgres
            }
        }
    }

    pub async fn end(self, db: &TestDb) {
        match (self, db) {
            (Outage::Sqlite(mut conn), _) => {
                sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
            }
            (
                Outage::Postgres,
                TestDb::Postgres {
                    admin_url, name, ..
                },
            ) => {
                let mut admin = sqlx::PgConnection::connect(admin_url).await.unwrap();
                sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
                    .execute(&mut admin)
                    .await
                    .unwrap();
            }
            _ => unreachable!(),
        }
    }
}
