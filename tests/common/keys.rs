//! The scanner's side: a real loopback key server, and signatures made like a scanner's.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use p256::ecdsa::SigningKey;

use super::{fixture, fixture_string};

pub const KEY_ID: &str = "revoker-test-key-1";
pub const ROTATED_KEY_ID: &str = "revoker-test-key-2";

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
    /// 200 with this JSON document, after this delay.
    Slow(Duration, String),
    /// 200 with this JSON document once the test releases the gate (`notify_one`).
    Gated(Arc<tokio::sync::Notify>, String),
}

impl KeyMode {
    /// 200 with `fixtures/keys/test-keys.json` (the test key as `revoker-test-key-1`).
    pub fn test_keys() -> KeyMode {
        KeyMode::Serve(fixture_string("keys/test-keys.json"))
    }

    /// 200 with `fixtures/keys/rotated-keys.json` (adds `revoker-test-key-2`).
    pub fn rotated_keys() -> KeyMode {
        KeyMode::Serve(fixture_string("keys/rotated-keys.json"))
    }
}

pub struct KeyServerState {
    mode: Mutex<KeyMode>,
    /// Requests received so far; waiters are woken on each.
    fetches: tokio::sync::watch::Sender<usize>,
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
            fetches: tokio::sync::watch::Sender::new(0),
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
        KeyServer::start(KeyMode::test_keys()).await
    }

    pub fn url(&self) -> String {
        format!("http://{}/keys", self.addr)
    }

    pub fn set_mode(&self, mode: KeyMode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    pub fn fetches(&self) -> usize {
        *self.state.fetches.borrow()
    }

    /// Waits until `n` fetches have arrived in all (panics after 5 s).
    pub async fn wait_for_fetches(&self, n: usize) {
        let mut fetches = self.state.fetches.subscribe();
        let waited = tokio::time::timeout(Duration::from_secs(5), fetches.wait_for(|f| *f >= n));
        if waited.await.is_err() {
            panic!("{} of {n} key fetches arrived", self.fetches());
        }
    }

    pub fn last_authorization(&self) -> Option<String> {
        self.state.last_authorization.lock().unwrap().clone()
    }
}

async fn serve_keys(State(state): State<Arc<KeyServerState>>, headers: HeaderMap) -> Response {
    *state.last_authorization.lock().unwrap() = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state.fetches.send_modify(|n| *n += 1);
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
        KeyMode::Slow(delay, doc) => {
            tokio::time::sleep(delay).await;
            (StatusCode::OK, [("content-type", "application/json")], doc).into_response()
        }
        KeyMode::Gated(gate, doc) => {
            gate.notified().await;
            (StatusCode::OK, [("content-type", "application/json")], doc).into_response()
        }
    }
}

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

    /// The key listed as `revoker-test-key-2` once the keys are rotated.
    pub fn rotated() -> Signer {
        Signer::from_fixture("keys/other-key.pem", ROTATED_KEY_ID)
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
