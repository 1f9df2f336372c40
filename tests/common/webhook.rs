//! The owner's webhook: a real axum server on loopback that checks each notification's
//! HMAC signature (with [`SECRET`]) and records what it got.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::watch;

pub const SECRET: &str = "owner-webhook-secret";

/// One request the owner's webhook received.
#[derive(Clone, Debug)]
pub struct Received {
    pub idempotency_key: String,
    pub attempt: String,
    pub body: Vec<u8>,
    pub signature_ok: bool,
}

#[derive(Clone, Default)]
pub struct Hook {
    /// Every request so far; waiters are woken on each.
    pub received: Arc<watch::Sender<Vec<Received>>>,
    /// Answer 503 to this many requests before answering 200.
    pub fail_first: Arc<AtomicUsize>,
    /// Answer 500 to everything.
    pub always_fail: Arc<std::sync::atomic::AtomicBool>,
    /// Milliseconds to wait before answering (after recording the request).
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

/// The owner's webhook: a real axum server on loopback.
pub struct Webhook {
    pub hook: Hook,
    pub url: String,
}

impl Webhook {
    pub async fn start() -> Webhook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, Hook::default())
    }

    /// Serves on `port` (for "down, then up").
    pub async fn start_on(port: u16, hook: Hook) -> Webhook {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        Self::serve(listener, hook)
    }

    fn serve(listener: tokio::net::TcpListener, hook: Hook) -> Webhook {
        let port = listener.local_addr().unwrap().port();
        async fn receive(
            State(hook): State<Hook>,
            headers: HeaderMap,
            body: axum::body::Bytes,
        ) -> StatusCode {
            let header = |n: &str| {
                headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            // What an owner's receiver does: HMAC over the raw body, constant-time compare.
            let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
            mac.update(&body);
            let signature = header("revoker-signature");
            let signature_ok = signature
                .strip_prefix("sha256=")
                .and_then(|h| hex::decode(h).ok())
                .is_some_and(|sig| mac.verify_slice(&sig).is_ok());
            hook.received.send_modify(|r| {
                r.push(Received {
                    idempotency_key: header("idempotency-key"),
                    attempt: header("revoker-attempt"),
                    body: body.to_vec(),
                    signature_ok,
                })
            });
            let delay = hook.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            if hook.always_fail.load(Ordering::SeqCst) {
                return StatusCode::INTERNAL_SERVER_ERROR;
            }
            let left = hook.fail_first.load(Ordering::SeqCst);
            if left > 0 {
                hook.fail_first.store(left - 1, Ordering::SeqCst);
                return StatusCode::SERVICE_UNAVAILABLE;
            }
            StatusCode::NO_CONTENT
        }
        let app = Router::new()
            .route("/owner-hook", post(receive))
            .with_state(hook.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Webhook {
            hook,
            url: format!("http://127.0.0.1:{port}/owner-hook"),
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.hook.received.borrow().clone()
    }

    /// Waits until `n` requests have arrived (or panics after 15 s).
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let mut received = self.hook.received.subscribe();
        let arrived = received.wait_for(|r| r.len() >= n);
        if tokio::time::timeout(Duration::from_secs(15), arrived)
            .await
            .is_err()
        {
            panic!("webhook got {} of {n} requests", self.received().len());
        }
        self.received()
    }
}
