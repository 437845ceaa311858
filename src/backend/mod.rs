//! The app's backend in the loop: calls Tidings makes to it over HTTP (`--proxy-*`), so that a
//! backend with its own sessions and rules decides what clients may do.
//!
//! Each call POSTs JSON — `client`, `transport`, the client's handshake headers named with
//! `--proxy-header`, the user, and the call's own fields — and the backend answers 200 with
//! exactly one of `{"result":…}`, `{"error":{"code","message"}}` (the client gets that error;
//! codes 400–1999 are the app's) or `{"disconnect":{"code","reason"}}` (the connection closes
//! with that code, 4000–4999). Anything else — no answer within `--proxy-timeout`, a refused
//! connection, another status, unreadable JSON — is the backend's failure: the client gets
//! error 502, and the call is logged and counted (`tidings_proxy_errors_total`).
//!
//! Bounded: a connection makes one call at a time (its session awaits it), and the node at most
//! [`MAX_IN_FLIGHT`]; past that, calls fail at once (`busy`) rather than queue behind a slow
//! backend. An answer is read up to [`answer_limit`] bytes — the call fails (`garbage`) past
//! it — so no backend can make a call buffer more than that. Connections to the backend are kept
//! alive and reused (HTTP/1.1, or HTTP/2 over TLS).
//!
//! Only the configured URLs are believed: redirects are never followed (a 3xx is a failure like
//! any other status but 200), so an answer cannot send the call — its forwarded cookies
//! included — to another host, nor have another host's answer acted on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::Semaphore;

use crate::config::ProxySettings;
use crate::metrics::metrics;
use crate::protocol::{ChannelName, CloseCode};

/// Calls to the backend in flight on one node, at most.
pub const MAX_IN_FLIGHT: usize = 1024;

/// Room for an answer's envelope (`result`, `info`, the connect proxy's channel list) beside
/// the data it may carry.
pub const ANSWER_ENVELOPE: usize = 64 << 10;

/// The largest answer read from the backend: twice the largest message (data the backend may
/// return, JSON-escaped at worst twice as long) plus [`ANSWER_ENVELOPE`].
pub fn answer_limit(max_message_size: usize) -> usize {
    max_message_size
        .saturating_mul(2)
        .saturating_add(ANSWER_ENVELOPE)
}

mod http;

use http::read_limited;
pub(crate) use http::{http_client, redirect_note, without_url};

/// The handshake headers a connection forwards to the backend (only those named).
pub type Forwarded = Box<[(HeaderName, HeaderValue)]>;

/// The backend's endpoints and a pooled HTTP client for them.
#[derive(Debug)]
pub struct Backend {
    client: reqwest::Client,
    connect: Option<reqwest::Url>,
    subscribe: Option<reqwest::Url>,
    publish: Option<reqwest::Url>,
    refresh: Option<reqwest::Url>,
    rpc: Option<reqwest::Url>,
    timeout: Duration,
    headers: Box<[HeaderName]>,
    /// [`answer_limit`] of the settings.
    max_answer: usize,
    slots: Arc<Semaphore>,
    log_gate: LogGate,
}

/// How often each kind of backend failure is logged, at most: a backend that is down fails
/// every call of every client, and the log must stay readable (the metric counts them all).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Lets one failure log line per kind through per [`LOG_EVERY`], counting those held back.
#[derive(Debug, Default)]
struct LogGate(std::sync::Mutex<std::collections::HashMap<&'static str, (Instant, u64)>>);

impl LogGate {
    /// `Some(failures not logged since the last line)` when this one is to be logged.
    fn pass(&self, kind: &'static str) -> Option<u64> {
        let mut kinds = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        match kinds.get_mut(kind) {
            Some((last, held)) if now.duration_since(*last) < LOG_EVERY => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                *last = now;
                Some(std::mem::take(held))
            }
            None => {
                kinds.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

/// Why the backend's answer could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{MAX_IN_FLIGHT} calls to the backend are already in flight on this node")]
    Busy,
    #[error("the backend did not answer within {0:?} (--proxy-timeout)")]
    Timeout(Duration),
    #[error("the backend could not be reached: {0}")]
    Unreachable(String),
    #[error("the backend answered HTTP {0}, not 200{note}", note = redirect_note(*.0))]
    Status(u16),
    #[error("the backend's answer is not usable: {0}")]
    Garbage(String),
}

impl BackendError {
    /// What a client is told when its request failed this way: documented texts
    /// (docs/protocol.md, error 502), never the HTTP client's error chain or the backend's URL.
    pub fn client_message(&self) -> &'static str {
        match self {
            Self::Busy => "the app's backend is busy; retry later",
            Self::Timeout(_) => "the app's backend did not answer in time; retry later",
            Self::Unreachable(_) => "the app's backend could not be reached; retry later",
            Self::Status(_) => "the app's backend answered with an HTTP error",
            Self::Garbage(_) => "the app's backend answered something unusable",
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Self::Busy => "busy",
            Self::Timeout(_) => "timeout",
            Self::Unreachable(_) => "unreachable",
            Self::Status(_) => "status",
            Self::Garbage(_) => "garbage",
        }
    }
}

/// What the backend decided.
#[derive(Debug)]
pub enum Answer<T = Box<RawValue>> {
    /// Go ahead; the call's result.
    Result(T),
    /// Refuse with the app's error (400–1999); the connection stays open.
    Error { code: u16, message: String },
    /// Close the connection with this code (the app's, 4000–4999).
    Disconnect { code: CloseCode, reason: String },
}

/// What the backend says to a subscribe.
#[derive(Debug, Deserialize)]
pub struct SubscribeResult {
    #[serde(default)]
    pub info: Option<serde_json::Value>,
}

/// What the backend says to a publish: the data to publish instead, if any.
#[derive(Debug, Deserialize)]
pub struct PublishResult {
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

/// What the backend says to a refresh: the connection's new expiry, in Unix seconds.
#[derive(Debug, Deserialize)]
pub struct RefreshResult {
    pub expire_at: u64,
}

/// A connection the backend let in (`--proxy-connect`).
#[derive(Debug, Deserialize)]
pub struct Admitted {
    pub user: String,
    /// Shown with the user in presence.
    #[serde(default)]
    pub info: Option<serde_json::Value>,
    /// Unix seconds after which the connection must be refreshed or closes (4003).
    #[serde(default)]
    pub expire_at: Option<u64>,
    /// Channels the connection is subscribed to by the server.
    #[serde(default)]
    pub channels: Vec<ChannelName>,
}

/// Who is calling: what every call carries besides its own fields.
#[derive(Debug)]
pub struct Caller<'a> {
    pub client: &'a str,
    /// How the connection reaches the server: `websocket`, `sse` or `stream`.
    pub transport: &'static str,
    /// An authenticated connection's user; `None` for one the backend has not named yet, and
    /// for an anonymous one (whose self-chosen name proves nothing).
    pub user: Option<&'a str>,
    /// An anonymous connection's self-chosen display name.
    pub name: Option<&'a str>,
    pub forwarded: &'a [(HeaderName, HeaderValue)],
}

/// A call's body: the caller, then the call's own fields.
#[derive(Serialize)]
struct Call<'a, F> {
    client: &'a str,
    transport: &'static str,
    headers: serde_json::Map<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(flatten)]
    fields: F,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reply {
    #[serde(default)]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<AppError>,
    #[serde(default)]
    disconnect: Option<AppDisconnect>,
}

#[derive(Deserialize)]
struct AppError {
    code: u16,
    message: String,
}

#[derive(Deserialize)]
struct AppDisconnect {
    code: u16,
    reason: String,
}

/// Why the settings cannot make a backend client.
#[derive(Debug, thiserror::Error)]
#[error("--proxy-*: {0}")]
pub struct SettingsError(String);

impl SettingsError {
    pub fn new(message: String) -> Self {
        Self(message)
    }
}

impl Backend {
    pub fn new(settings: &ProxySettings) -> Result<Self, SettingsError> {
        let url = |url: &Option<String>| {
            url.as_deref()
                .map(reqwest::Url::parse)
                .transpose()
                .map_err(|err| SettingsError(err.to_string()))
        };
        let headers = settings
            .headers
            .iter()
            .map(|name| HeaderName::try_from(name.trim()))
            .collect::<Result<Box<[_]>, _>>()
            .map_err(|err| SettingsError(err.to_string()))?;
        Ok(Self {
            client: http_client()?,
            connect: url(&settings.connect)?,
            subscribe: url(&settings.subscribe)?,
            publish: url(&settings.publish)?,
            refresh: url(&settings.refresh)?,
            rpc: url(&settings.rpc)?,
            timeout: settings.timeout,
            headers,
            max_answer: answer_limit(settings.max_message_size),
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            log_gate: LogGate::default(),
        })
    }

    /// The named headers of a handshake, to forward with every call of its connection: one
    /// value per name, so that the call's HTTP headers and its JSON `headers` say the same.
    /// Repeated headers are joined as HTTP joins them — cookies with `; `, others with `, `.
    pub fn forwarded(&self, headers: &HeaderMap) -> Forwarded {
        self.headers
            .iter()
            .filter_map(|name| {
                let separator: &[u8] = if name == axum::http::header::COOKIE {
                    b"; "
                } else {
                    b", "
                };
                let mut values = headers.get_all(name).iter();
                let first = values.next()?.clone();
                let joined = values.fold(first.as_bytes().to_vec(), |mut joined, value| {
                    joined.extend_from_slice(separator);
                    joined.extend_from_slice(value.as_bytes());
                    joined
                });
                // Joining valid values with visible ASCII keeps the value valid.
                let value = HeaderValue::from_bytes(&joined).unwrap_or(first);
                Some((name.clone(), value))
            })
            .collect()
    }

    pub fn handles_connect(&self) -> bool {
        self.connect.is_some()
    }

    pub fn handles_refresh(&self) -> bool {
        self.refresh.is_some()
    }

    pub fn handles_rpc(&self) -> bool {
        self.rpc.is_some()
    }

    /// How long a call may take, at most.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Calls `kind` at `url` with the caller and `fields`, and reads the result as `R`.
    async fn call<R: DeserializeOwned>(
        &self,
        kind: &'static str,
        url: Option<&reqwest::Url>,
        caller: &Caller<'_>,
        fields: impl Serialize,
    ) -> Result<Answer<R>, BackendError> {
        let Some(url) = url else {
            let err = BackendError::Garbage(format!("--proxy-{kind} is not set"));
            return Err(self.failed(kind, err));
        };
        let body = Call {
            client: caller.client,
            transport: caller.transport,
            headers: headers_json(caller.forwarded),
            user: caller.user,
            name: caller.name,
            fields,
        };
        match self.post(kind, url, caller.forwarded, &body).await? {
            Answer::Result(result) => serde_json::from_str(result.get())
                .map(Answer::Result)
                .map_err(|err| {
                    self.failed(kind, BackendError::Garbage(format!("{kind} result: {err}")))
                }),
            Answer::Error { code, message } => Ok(Answer::Error { code, message }),
            Answer::Disconnect { code, reason } => Ok(Answer::Disconnect { code, reason }),
        }
    }

    /// A new connection without a token: the backend says who it is (from the forwarded
    /// cookies, say), refuses it, or closes it. `name` is what the client asked to be called.
    pub async fn connect(
        &self,
        caller: &Caller<'_>,
        name: Option<&str>,
    ) -> Result<Answer<Admitted>, BackendError> {
        #[derive(Serialize)]
        struct Fields<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            name: Option<&'a str>,
        }
        let answer: Answer<Admitted> = self
            .call("connect", self.connect.as_ref(), caller, Fields { name })
            .await?;
        if let Answer::Result(admitted) = &answer {
            let user = &admitted.user;
            let user_ok = !user.is_empty()
                && user.chars().count() <= 255
                && !user.chars().any(char::is_control);
            if !user_ok {
                let err =
                    BackendError::Garbage("connect result: user must be 1–255 characters".into());
                return Err(self.failed("connect", err));
            }
        }
        Ok(answer)
    }

    /// A client's subscribe to a channel of a `proxy-subscribe=true` namespace; the result's
    /// `info` is the connection's in that channel's presence.
    pub async fn subscribe(
        &self,
        caller: &Caller<'_>,
        channel: &ChannelName,
    ) -> Result<Answer<SubscribeResult>, BackendError> {
        #[derive(Serialize)]
        struct Fields<'a> {
            channel: &'a str,
        }
        let fields = Fields {
            channel: channel.as_str(),
        };
        self.call("subscribe", self.subscribe.as_ref(), caller, fields)
            .await
    }

    /// A client's publish to a channel of a `proxy-publish=true` namespace; the result's
    /// `data`, when present, is published instead of the client's.
    pub async fn publish(
        &self,
        caller: &Caller<'_>,
        channel: &ChannelName,
        data: &RawValue,
    ) -> Result<Answer<PublishResult>, BackendError> {
        #[derive(Serialize)]
        struct Fields<'a> {
            channel: &'a str,
            data: &'a RawValue,
        }
        let fields = Fields {
            channel: channel.as_str(),
            data,
        };
        self.call("publish", self.publish.as_ref(), caller, fields)
            .await
    }

    /// A connection about to expire: the backend extends it (`expire_at`, Unix seconds),
    /// refuses (it expires), or closes it.
    pub async fn refresh(
        &self,
        caller: &Caller<'_>,
    ) -> Result<Answer<RefreshResult>, BackendError> {
        #[derive(Serialize)]
        struct Fields {}
        self.call("refresh", self.refresh.as_ref(), caller, Fields {})
            .await
    }

    /// An `rpc` call: the backend's `result` must be `{"data":…}`; its `data` is returned.
    pub async fn rpc(
        &self,
        caller: &Caller<'_>,
        method: &str,
        data: Option<&RawValue>,
    ) -> Result<Answer<Box<RawValue>>, BackendError> {
        #[derive(Serialize)]
        struct Fields<'a> {
            method: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            data: Option<&'a RawValue>,
        }
        #[derive(Deserialize)]
        struct RpcResult {
            data: Box<RawValue>,
        }
        let answer = self
            .call::<RpcResult>("rpc", self.rpc.as_ref(), caller, Fields { method, data })
            .await?;
        Ok(answer.map(|RpcResult { data }| data))
    }

    /// POSTs `body` and reads the answer, within the timeout and a slot of the node's bound.
    async fn post(
        &self,
        kind: &'static str,
        url: &reqwest::Url,
        forwarded: &[(HeaderName, HeaderValue)],
        body: &impl Serialize,
    ) -> Result<Answer, BackendError> {
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            return Err(self.failed(kind, BackendError::Busy));
        };
        let started = Instant::now();
        let body = serde_json::to_vec(body)
            .map_err(|err| self.failed(kind, BackendError::Garbage(err.to_string())))?;
        let mut request = self
            .client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        for (name, value) in forwarded {
            request = request.header(name, value);
        }
        let call = async {
            let response = request
                .send()
                .await
                .map_err(|err| BackendError::Unreachable(without_url(&err)))?;
            let status = response.status().as_u16();
            if status != 200 {
                return Err(BackendError::Status(status));
            }
            let bytes = read_limited(response, self.max_answer).await?;
            parse(&bytes)
        };
        let answered = tokio::time::timeout(self.timeout, call).await;
        metrics()
            .proxy
            .duration
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
        match answered {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(err)) => Err(self.failed(kind, err)),
            Err(_) => Err(self.failed(kind, BackendError::Timeout(self.timeout))),
        }
    }

    fn failed(&self, kind: &'static str, err: BackendError) -> BackendError {
        metrics()
            .proxy
            .errors
            .with_label_values(&[kind, err.label()])
            .inc();
        if let Some(suppressed) = self.log_gate.pass(kind) {
            tracing::warn!(kind, %err, suppressed, "call to the backend failed");
        }
        err
    }
}

/// The forwarded headers as the JSON object of a call (lower-case names; values that are not
/// text are left out).
fn headers_json(
    forwarded: &[(HeaderName, HeaderValue)],
) -> serde_json::Map<String, serde_json::Value> {
    let mut json = serde_json::Map::new();
    for (name, value) in forwarded {
        if let Ok(value) = value.to_str() {
            json.insert(name.as_str().to_owned(), value.into());
        }
    }
    json
}

impl<T> Answer<T> {
    /// The same decision with the result transformed.
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Answer<U> {
        match self {
            Self::Result(result) => Answer::Result(f(result)),
            Self::Error { code, message } => Answer::Error { code, message },
            Self::Disconnect { code, reason } => Answer::Disconnect { code, reason },
        }
    }
}

fn parse(bytes: &[u8]) -> Result<Answer, BackendError> {
    let reply: Reply = serde_json::from_slice(bytes)
        .map_err(|err| BackendError::Garbage(format!("not the expected JSON: {err}")))?;
    match (reply.result, reply.error, reply.disconnect) {
        (Some(result), None, None) => Ok(Answer::Result(result)),
        (None, Some(AppError { code, message }), None) if (400..=1999).contains(&code) => {
            Ok(Answer::Error { code, message })
        }
        (None, None, Some(AppDisconnect { code, reason })) => match CloseCode::app(code) {
            Some(code) => Ok(Answer::Disconnect { code, reason }),
            None => Err(BackendError::Garbage(
                "disconnect code outside 4000–4999".into(),
            )),
        },
        (None, Some(_), None) => Err(BackendError::Garbage("error code outside 400–1999".into())),
        _ => Err(BackendError::Garbage(
            "expected exactly one of result, error, disconnect".into(),
        )),
    }
}
