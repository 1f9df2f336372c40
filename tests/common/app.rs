//! The receiver in-process on port 0: [`TestApp::builder`] for a whole set-up (database,
//! key server, app), [`spawn_app`] and [`TestApp::from_settings`] below it; and the
//! per-endpoint helpers it shares with [`super::ServeProcess`].

use std::fmt::Display;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use revoker::config::Settings;
use revoker::domain::token::Token;
use revoker::notify::NotifySettings;
use revoker::signature::ScannerSpec;
use revoker::startup::Application;
use revoker::store::{NewToken, RevocationStore};
use tokio::io::AsyncWriteExt;

use super::{eventually, DbTarget, KeyMode, KeyServer, Kind, Signer, TestDb, KEY_ID};

// ---------------------------------------------------------------- options

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
    pub notify: Option<NotifySettings>,
    /// `--token-formats`.
    pub token_formats: revoker::domain::Formats,
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
            token_formats: revoker::domain::Formats::DEFAULT,
        }
    }
}

impl TestOptions {
    /// The receiver's settings on `db_url`, with scanner `github` reading keys from
    /// `keys`, at most 5 database connections and `Retry-After: 7`.
    pub fn settings(self, db: &(impl DbTarget + ?Sized), keys: &KeyServer) -> Settings {
        let mut scanners = vec![ScannerSpec {
            name: "github".into(),
            source: keys.url(),
        }];
        scanners.extend(self.extra_scanners);
        let mut settings = Settings::new(db.target_url(), scanners);
        settings.pool.pooler = db.pooler();
        settings.migrate_database_url = db.migrate_url().map(secrecy::SecretString::from);
        settings.keys_ttl = self.keys_ttl;
        settings.keys_refetch_interval = self.keys_refetch_interval;
        settings.keys_timeout = self.keys_timeout;
        settings.max_body = self.max_body;
        settings.pool.acquire_timeout = self.db_timeout;
        settings.pool.max_connections = 5;
        settings.retry_after = Duration::from_secs(7);
        settings.github_token = self.github_token.map(secrecy::SecretString::from);
        settings.admin_token = self.admin_token.map(secrecy::SecretString::from);
        settings.body_timeout = self.body_timeout;
        settings.request_timeout = self.request_timeout;
        settings.max_concurrent_deliveries = self.max_concurrent_deliveries;
        settings.notify = self.notify;
        settings.formats = self.token_formats;
        // Tests count statements; the purge runs in `revoker serve` (tests/retention.rs)
        // and through the store (tests/contract.rs).
        settings.retention = None;
        settings
    }
}

// ---------------------------------------------------------------- the builder

/// A fresh database of one kind, a key server and the receiver, with [`TestOptions`]
/// set one by one; see [`TestApp::builder`].
pub struct TestAppBuilder {
    kind: Kind,
    keys: KeyMode,
    options: TestOptions,
    wait_for_keys: bool,
}

/// Builder methods that set the [`TestOptions`] field of the same name.
macro_rules! options {
    ($($(#[$doc:meta])* $field:ident: $ty:ty),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $field(mut self, value: $ty) -> Self {
                self.options.$field = value;
                self
            }
        )*
    };
}

impl TestAppBuilder {
    /// What the key server answers at first (default: the test keys).
    pub fn keys(mut self, mode: KeyMode) -> Self {
        self.keys = mode;
        self
    }

    options! {
        keys_ttl: Duration,
        keys_refetch_interval: Duration,
        keys_timeout: Duration,
        max_body: usize,
        /// How long a delivery waits for a database connection.
        db_timeout: Duration,
        body_timeout: Duration,
        request_timeout: Duration,
        max_concurrent_deliveries: usize,
        /// `--token-formats`.
        token_formats: revoker::domain::Formats,
    }

    /// `start()` returns once the start-up key fetch of every scanner has finished
    /// (either way); so does `another()`.
    pub fn wait_for_keys(mut self) -> Self {
        self.wait_for_keys = true;
        self
    }

    /// Sent as a bearer token to the `github` key endpoint.
    pub fn github_token(mut self, token: &str) -> Self {
        self.options.github_token = Some(token.into());
        self
    }

    /// Required by `/metrics` and `/api/stats` on the admin listener.
    pub fn admin_token(mut self, token: &str) -> Self {
        self.options.admin_token = Some(token.into());
        self
    }

    /// Turns the owner-notification worker on.
    pub fn notify(mut self, settings: NotifySettings) -> Self {
        self.options.notify = Some(settings);
        self
    }

    /// One more scanner besides `github`, reading keys from `source` (a URL or a file).
    pub fn scanner(mut self, name: &str, source: impl Display) -> Self {
        self.options.extra_scanners.push(ScannerSpec {
            name: name.into(),
            source: source.to_string(),
        });
        self
    }

    /// Starts database, key server and receiver; panics when the database cannot be
    /// had, so PostgreSQL tests use [`Self::start_or_skip`].
    pub async fn start(self) -> TestApp {
        let kind = self.kind;
        let app = self.start_or_skip().await;
        app.unwrap_or_else(|| panic!("no {kind:?} database: use start_or_skip()"))
    }

    /// Like [`Self::start`]; `None` means "skip" (PostgreSQL unreachable outside CI).
    pub async fn start_or_skip(self) -> Option<TestApp> {
        let db = TestDb::new(self.kind).await?;
        let keys = KeyServer::start(self.keys).await;
        let mut app = spawn_app(db.url(), &keys, self.options).await;
        app.db = Some(db);
        app.keys = Some(keys);
        app.wait_for_keys = self.wait_for_keys;
        if app.wait_for_keys {
            app.all_keys_attempted().await;
        }
        Some(app)
    }
}

// ---------------------------------------------------------------- the app

/// The two listeners of a running receiver and a client for them: one helper per
/// endpoint. A [`TestApp`] and a [`super::ServeProcess`] both dereference to it.
pub struct Endpoints {
    /// The public listener (deliveries, health).
    pub base: String,
    /// The admin listener (metrics, stats, dashboard, health).
    pub admin: String,
    pub client: reqwest::Client,
}

pub struct TestApp {
    endpoints: Endpoints,
    pub state: revoker::http::AppState,
    pub store: Arc<dyn RevocationStore>,
    settings: Settings,
    /// Owned when started by the builder.
    db: Option<TestDb>,
    keys: Option<KeyServer>,
    /// Whether `another()` waits for its key fetches.
    wait_for_keys: bool,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// Starts the real receiver on port 0 against `db_url`, with scanner `github` reading
/// keys from `keys`. For apps that share a database or key server on the caller's
/// terms; otherwise [`TestApp::builder`].
pub async fn spawn_app(
    db: &(impl DbTarget + ?Sized),
    keys: &KeyServer,
    opts: TestOptions,
) -> TestApp {
    TestApp::from_settings(opts.settings(db, keys)).await
}

impl TestApp {
    /// A fresh database of `kind`, a key server serving the test keys, and the receiver
    /// with [`TestOptions::default`]; set what differs, then `start()`.
    pub fn builder(kind: Kind) -> TestAppBuilder {
        TestAppBuilder {
            kind,
            keys: KeyMode::test_keys(),
            options: TestOptions::default(),
            wait_for_keys: false,
        }
    }

    /// `builder(Kind::Sqlite)`.
    pub fn sqlite() -> TestAppBuilder {
        Self::builder(Kind::Sqlite)
    }

    /// Starts the real receiver on port 0 with settings built by hand.
    pub async fn from_settings(settings: Settings) -> TestApp {
        let app = Application::build(settings.clone())
            .await
            .expect("app builds");
        let endpoints = Endpoints {
            base: format!("http://127.0.0.1:{}", app.port()),
            admin: format!("http://127.0.0.1:{}", app.admin_port()),
            client: reqwest::Client::new(),
        };
        let state = app.state().clone();
        let store = Arc::clone(&state.store);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        TestApp {
            endpoints,
            state,
            store,
            settings,
            db: None,
            keys: None,
            wait_for_keys: false,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// A second receiver with the same settings: the same database and key server.
    /// Stop it before this one (which owns them).
    pub async fn another(&self) -> TestApp {
        let app = TestApp::from_settings(self.settings.clone()).await;
        if self.wait_for_keys {
            app.all_keys_attempted().await;
        }
        app
    }

    /// The database this app was built with.
    pub fn db(&self) -> &TestDb {
        self.db
            .as_ref()
            .expect("started by spawn_app: the caller has the database")
    }

    /// The key server behind scanner `github`.
    pub fn keys(&self) -> &KeyServer {
        (self.keys.as_ref()).expect("started by spawn_app: the caller has the key server")
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

    /// Whether the store has this token revoked.
    pub async fn is_revoked(&self, t: &Token) -> bool {
        let stored = self.store.token(&t.hash()).await.unwrap();
        stored.expect("token was minted").revoked_at.is_some()
    }

    /// Waits until the start-up key fetch of `scanner` has finished (either way).
    pub async fn keys_attempted(&self, scanner: &str) {
        let cache = &self.state.scanners[scanner];
        let what = format!("the key fetch of {scanner} never finished");
        let fetched = async || cache.status().last_fetch_ok;
        eventually(Duration::from_secs(10), &what, fetched, Option::is_some).await;
    }

    async fn all_keys_attempted(&self) {
        for scanner in self.state.scanners.keys() {
            self.keys_attempted(scanner).await;
        }
    }

    /// Stops the receiver, then drops its database if it owns one.
    pub async fn stop(self) {
        if let Some(db) = self.halt().await {
            db.cleanup().await;
        }
    }

    /// Stops the receiver and hands over its database, to look at after the app is
    /// gone (`cleanup()` it when done).
    pub async fn stop_keeping_db(self) -> TestDb {
        self.halt()
            .await
            .expect("started by spawn_app: no database of its own")
    }

    async fn halt(mut self) -> Option<TestDb> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
        self.db.take()
    }
}

impl Deref for TestApp {
    type Target = Endpoints;
    fn deref(&self) -> &Endpoints {
        &self.endpoints
    }
}

impl Endpoints {
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

    /// GET on the public listener.
    pub async fn get(&self, path: &str) -> Answer {
        let resp = self.client.get(format!("{}{path}", self.base)).send();
        Answer::from(resp.await.unwrap()).await
    }

    /// GET on the admin listener, with an optional bearer token.
    pub async fn admin_get(&self, path: &str, bearer: Option<&str>) -> Answer {
        let mut req = self.client.get(format!("{}{path}", self.admin));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        Answer::from(req.send().await.unwrap()).await
    }

    /// `host:port` of the public listener, for raw TCP.
    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_owned()
    }

    /// `host:port` of the admin listener, for raw TCP.
    pub fn admin_addr(&self) -> String {
        self.admin.trim_start_matches("http://").to_owned()
    }

    /// A delivery to `github` whose body never completes: signed headers for `[]` and
    /// `Content-Length: 1000`, then one byte. Holds its connection while kept.
    pub async fn unfinished_delivery(&self) -> tokio::net::TcpStream {
        let addr = self.addr();
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /secret-scanning/github HTTP/1.1\r\nHost: {addr}\r\n\
             Github-Public-Key-Identifier: {KEY_ID}\r\nGithub-Public-Key-Signature: {}\r\n\
             Content-Length: 1000\r\n\r\n[",
            Signer::test().sign(b"[]")
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream
    }
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

// ---------------------------------------------------------------- answers

/// What the receiver answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub json: serde_json::Value,
    pub text: String,
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
