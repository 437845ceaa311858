//! A webhook receiver on a loopback port, written from the documented contract only: it checks
//! each signature with `hmac`'s constant-time `verify_slice`, not with the server's signing
//! code.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::Notify;

use super::{WAIT, serve_app, within};

/// The secret the receiver checks signatures with (`--webhook-secret`).
pub const WEBHOOK_SECRET: &str = "webhook-secret-of-at-least-32-bytes!";

/// A webhook receiver on a loopback port.
#[derive(Clone, Default)]
pub struct Receiver {
    pub addr: Option<SocketAddr>,
    /// Events accepted, in the order received.
    pub events: Arc<Mutex<Vec<Value>>>,
    /// The ids of every POST, refused ones included.
    pub attempts: Arc<Mutex<Vec<Vec<String>>>>,
    /// POSTs to refuse with 503 before accepting.
    pub refuse: Arc<AtomicUsize>,
    /// Refuse everything while set.
    pub down: Arc<AtomicBool>,
    pub bad_signatures: Arc<AtomicUsize>,
    /// How long each POST takes to answer, in milliseconds (a backend that writes to its
    /// database before it says yes).
    pub latency_ms: Arc<AtomicU64>,
    pub changed: Arc<Notify>,
}

/// Checks `Tidings-Signature: t=…,v1=…` against the raw body, in constant time.
fn signature_holds(header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<u64>().ok(),
            Some(("v1", value)) => v1 = Some(value),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(t) > 300 || v1.len() != 64 {
        return false;
    }
    let Ok(expected) = (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(&v1[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

impl Receiver {
    pub async fn start() -> Self {
        let mut receiver = Self::default();
        let state = receiver.clone();
        let app = Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move {
                    let latency = state.latency_ms.load(Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
                    state.receive(&headers, &body)
                }
            }),
        );
        receiver.addr = Some(serve_app(app).await);
        receiver
    }

    fn receive(&self, headers: &HeaderMap, body: &[u8]) -> StatusCode {
        let signature = headers
            .get("tidings-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !signature_holds(signature, body) {
            self.bad_signatures.fetch_add(1, Ordering::SeqCst);
            return StatusCode::UNAUTHORIZED;
        }
        let batch: Value = serde_json::from_slice(body).unwrap();
        let events = batch["events"].as_array().unwrap().clone();
        let ids = events
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        self.attempts.lock().unwrap().push(ids);
        let refused = self.down.load(Ordering::SeqCst)
            || self
                .refuse
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if refused {
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        self.events.lock().unwrap().extend(events);
        self.changed.notify_waiters();
        StatusCode::OK
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr.unwrap())
    }

    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until an event matches `pred`.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) {
        within(WAIT * 6, what, async {
            loop {
                let changed = self.changed.notified();
                if self.events().iter().any(&pred) {
                    return;
                }
                changed.await;
            }
        })
        .await
    }
}
