//! `/admin`: a page for the operator who would rather look than read — nodes, connections,
//! channels and this node's message rates over the last minutes — fed by the server's own
//! metrics. Behind the server API key (HTTP Basic with the key as password, so a browser can
//! open it; or `Authorization: apikey KEY`); off without one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{ApiError, AppState, constant_time_eq};
use crate::metrics::{Metrics, metrics};

const ADMIN_HTML: &str = include_str!("../../assets/admin.html");

/// How often the rates are sampled, and how many samples are kept (ten minutes).
const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
const SAMPLES: usize = 120;

/// Inline script and style only; fetches only from this origin.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self'; base-uri 'none'; frame-ancestors 'none'";

/// This node's rates over the last minutes, oldest first.
#[derive(Debug, Default)]
pub struct Rates(Mutex<VecDeque<Sample>>);

#[derive(Clone, Copy, Debug, Serialize)]
struct Sample {
    /// Unix milliseconds at the end of the interval.
    at: u64,
    messages_in: f64,
    messages_out: f64,
    publications: f64,
    connections: i64,
}

/// The counters a sample is the difference of.
#[derive(Clone, Copy)]
struct Counters {
    messages_in: u64,
    messages_out: u64,
    publications: u64,
}

impl Counters {
    fn now() -> Self {
        let m = metrics();
        Self {
            messages_in: m.messages_in.get(),
            messages_out: m.messages_out.get(),
            publications: Metrics::total(&m.publications),
        }
    }
}

impl Rates {
    /// Samples the counters every interval until `stop`.
    pub async fn sample_until(self: Arc<Self>, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(SAMPLE_INTERVAL);
        ticker.tick().await;
        let mut before = Counters::now();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let now = Counters::now();
            let per_second =
                |a: u64, b: u64| b.saturating_sub(a) as f64 / SAMPLE_INTERVAL.as_secs_f64();
            let sample = Sample {
                at: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                messages_in: per_second(before.messages_in, now.messages_in),
                messages_out: per_second(before.messages_out, now.messages_out),
                publications: per_second(before.publications, now.publications),
                connections: metrics().connections.get(),
            };
            before = now;
            let mut samples = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            if samples.len() == SAMPLES {
                samples.pop_front();
            }
            samples.push_back(sample);
        }
    }

    fn samples(&self) -> Vec<Sample> {
        let samples = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        samples.iter().copied().collect()
    }
}

/// Proof that a request carries the API key, as HTTP Basic (any user, the key as password)
/// or `Authorization: apikey KEY`. Without: 401 with a Basic challenge, so browsers ask.
pub struct AdminKey;

impl FromRequestParts<AppState> for AdminKey {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Some(expected) = state.api_key.as_ref() else {
            let off = "the admin page is off: start tidings with --api-key";
            return Err(ApiError::Disabled(off).into_response());
        };
        let given = match super::presented_key(&parts.headers) {
            Some(super::Presented::ApiKey(key) | super::Presented::Basic(key)) => Some(key),
            None => None,
        };
        match given {
            Some(key) if constant_time_eq(key.as_bytes(), expected.expose().as_bytes()) => Ok(Self),
            _ => {
                let message = "the admin page needs the server API key";
                let mut refused = ApiError::Unauthorized(message.into()).into_response();
                // A challenge, so that a browser asks for the key.
                refused.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        r#"Basic realm="Tidings admin (password: the API key)", charset="UTF-8""#,
                    ),
                );
                Err(refused)
            }
        }
    }
}

/// `GET /admin`.
pub async fn page(_: AdminKey) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        ADMIN_HTML,
    )
}

/// `GET /admin/stats`: what the page shows, as JSON.
pub async fn stats(_: AdminKey, State(state): State<AppState>) -> Response {
    let node = &state.node;
    let nodes = match node.nodes().await {
        Ok(nodes) => nodes,
        // The other nodes are out of reach with the broker: show this one.
        Err(_) => vec![node.summary()],
    };
    let (this, name) = (nodes[0].id.clone(), nodes[0].name.clone());
    let (channels, subscriptions) = match node.channels().await {
        Ok(all) => (all.len(), all.iter().map(|(_, count)| count).sum::<usize>()),
        Err(_) => (nodes[0].channels as usize, nodes[0].subscriptions as usize),
    };
    let mut sorted = nodes.clone();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let rows: Vec<serde_json::Value> = sorted
        .iter()
        .map(|n| {
            serde_json::json!({
                "id": n.id, "name": n.name, "this": n.id == this, "connections": n.connections,
                "subscriptions": n.subscriptions, "channels": n.channels,
                "uptime_seconds": n.uptime_seconds,
            })
        })
        .collect();
    let body = serde_json::json!({
        "node": this,
        "node_name": name,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": metrics().uptime().as_secs(),
        "broker": {"kind": state.broker_kind, "up": metrics().broker.up.get() == 1},
        "nodes": rows,
        "totals": {
            "connections": nodes.iter().map(|n| n.connections).sum::<u64>(),
            "subscriptions": subscriptions,
            "channels": channels,
        },
        "rates": {
            "interval_seconds": SAMPLE_INTERVAL.as_secs(),
            "samples": state.rates.samples(),
        },
    });
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}
