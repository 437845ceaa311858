//! Metrics: every counter the server keeps, in one place, each with what it counts, and their
//! Prometheus text exposition (`/metrics`).
//!
//! One set per process, reached through [`metrics()`]: a process is one node, and every layer
//! (transport, session, node, API) records where the event is handled without a handle being
//! threaded through each of them. Labels are bounded whatever clients do: close and error
//! codes are the protocol's fixed sets, namespaces are the configured ones (a channel of any
//! other namespace counts as `default`), never a channel or a user.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open client connections.
    pub connections: IntGauge,
    pub connections_opened: IntCounter,
    /// By close code; `peer` when the client closed, `gone` when the connection was lost.
    pub connections_closed: IntCounterVec,
    /// Connections closed with 4000 because their outgoing queue overflowed.
    pub slow_consumer_closes: IntCounter,
    /// WebSocket messages received from clients, and their bytes.
    pub messages_in: IntCounter,
    pub bytes_in: IntCounter,
    /// Frames written to clients (replies and pushes), and their bytes.
    pub messages_out: IntCounter,
    pub bytes_out: IntCounter,
    /// Publications accepted by the broker, by namespace (clients and the server API).
    pub publications: IntCounterVec,
    /// From a publish reaching the node to the broker's acknowledgement, by namespace.
    pub publish_duration: HistogramVec,
    /// Subscriptions with a position: `recovered`, or why not.
    pub recoveries: IntCounterVec,
    /// Error replies sent to clients, by error code.
    pub errors: IntCounterVec,
    /// Commands refused by a rate limit (error 112).
    pub rate_limited: IntCounter,
    /// Subscriptions of this node's connections, by namespace.
    pub subscriptions: IntGaugeVec,
    /// Channels with at least one subscriber on this node, by namespace.
    pub channels: IntGaugeVec,
    /// Connections this node made present in a channel with presence, by namespace.
    pub presence_members: IntGaugeVec,
    /// The broker's health and latency.
    pub broker: BrokerMetrics,
    /// Calls to the app's backend.
    pub proxy: ProxyMetrics,
    pub webhook: WebhookMetrics,
    pub http: HttpMetrics,
    /// Time a `/metrics` exposition took: so a slow scrape is visible on the next one.
    scrape_duration: Histogram,
    /// When the process started counting.
    started: std::time::Instant,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The broker's health and latency (see `broker::redis` for the canary).
#[derive(Debug)]
pub struct BrokerMetrics {
    /// 1 while the broker is reachable and delivers (its canary's heartbeats come back).
    pub up: IntGauge,
    /// Reconnects of the broker's pub/sub connection (each followed by a resubscribe and a
    /// reconciliation of channel positions).
    pub reconnects: IntCounter,
    /// From publishing a canary heartbeat to receiving it through pub/sub.
    pub round_trip: Histogram,
    /// The last of those round trips.
    pub canary_round_trip: Gauge,
    /// Other nodes whose heartbeats reach this node.
    pub canary_peers: IntGauge,
    /// Pub/sub messages received from the broker and not yet handed to subscribers, sampled
    /// when a heartbeat passes.
    pub pubsub_backlog: IntGauge,
}

impl BrokerMetrics {
    fn new(r: &Register<'_>) -> Self {
        let round_trip = Register::latency(
            "tidings_broker_round_trip_seconds",
            "From publishing a canary heartbeat through the broker to receiving it.",
        );
        let last = Gauge::new(
            "tidings_broker_canary_round_trip_seconds",
            "The canary heartbeat's last round trip through the broker.",
        );
        Self {
            up: r.gauge(
                "tidings_broker_up",
                "1 while the broker is reachable and its canary's heartbeats come back.",
            ),
            reconnects: r.counter(
                "tidings_broker_reconnects_total",
                "Reconnects of the broker's pub/sub connection.",
            ),
            round_trip: r.add(Histogram::with_opts(round_trip).expect("valid metric")),
            canary_round_trip: r.add(last.expect("valid metric")),
            canary_peers: r.gauge(
                "tidings_broker_canary_peers",
                "Other nodes whose canary heartbeats reach this node.",
            ),
            pubsub_backlog: r.gauge(
                "tidings_broker_pubsub_backlog_messages",
                "Pub/sub messages received and not yet delivered, sampled at each heartbeat.",
            ),
        }
    }
}

/// Calls to the app's backend, by kind (`rpc`, …).
#[derive(Debug)]
pub struct ProxyMetrics {
    /// From sending a call to its answer (or failure).
    pub duration: HistogramVec,
    /// Failed calls, by kind and error (`timeout`, `unreachable`, `status`, `garbage`,
    /// `busy`).
    pub errors: IntCounterVec,
}

impl ProxyMetrics {
    fn new(r: &Register<'_>) -> Self {
        let errors = Opts::new(
            "tidings_proxy_errors_total",
            "Failed calls to the app's backend, by kind and error.",
        );
        Self {
            duration: r.histograms(
                "tidings_proxy_duration_seconds",
                "Calls to the app's backend: from sending to the answer or failure, by kind.",
                "kind",
            ),
            errors: r.add(IntCounterVec::new(errors, &["kind", "error"]).expect("valid metric")),
        }
    }
}

/// Lifecycle events on their way to `--webhook-url`.
#[derive(Debug)]
pub struct WebhookMetrics {
    /// Events the receiver took (a 2xx to the POST that carried them).
    pub sent: IntCounter,
    /// POSTs that failed and will be retried (timeout, refused, non-2xx).
    pub retries: IntCounter,
    /// Events not sent, by [`DropReason`].
    pub dropped: IntCounterVec,
    /// Events waiting to be sent (all nodes' when the queue is in Redis).
    pub queue: IntGauge,
    /// From sending a POST to its answer or failure.
    pub duration: Histogram,
}

impl WebhookMetrics {
    fn new(r: &Register<'_>) -> Self {
        let metrics = Self {
            sent: r.counter(
                "tidings_webhook_events_sent_total",
                "Webhook events the receiver accepted.",
            ),
            retries: r.counter(
                "tidings_webhook_retries_total",
                "Webhook POSTs that failed and are retried.",
            ),
            dropped: r.counters(
                "tidings_webhook_events_dropped_total",
                "Webhook events not sent: budget (a connection's subscriptions past its \
                 lifecycle budget), queue_full, expired (not delivered within the retry window).",
                "reason",
            ),
            queue: r.gauge(
                "tidings_webhook_queue_size",
                "Webhook events waiting to be sent.",
            ),
            duration: r.histogram(
                "tidings_webhook_duration_seconds",
                "Webhook POSTs: from sending to the answer or failure.",
            ),
        };
        // Every reason shows from the start, at 0, so that an alert can be written on it.
        for reason in [
            DropReason::Budget,
            DropReason::QueueFull,
            DropReason::Expired,
        ] {
            metrics.dropped(reason, 0);
        }
        metrics
    }
}

/// Why a webhook event was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The connection that would have caused it had spent its lifecycle budget.
    Budget,
    /// The queue was full.
    QueueFull,
    /// Not delivered within the retry window.
    Expired,
}

impl WebhookMetrics {
    /// Counts `events` dropped for `reason`.
    pub fn dropped(&self, reason: DropReason, events: u64) {
        let label = match reason {
            DropReason::Budget => "budget",
            DropReason::QueueFull => "queue_full",
            DropReason::Expired => "expired",
        };
        self.dropped.with_label_values(&[label]).inc_by(events);
    }
}

/// Transports and requests: how clients reach the server.
#[derive(Debug)]
pub struct HttpMetrics {
    /// Open client connections by transport (`websocket`, `sse`, `stream`).
    pub transports: IntGaugeVec,
    /// Command requests for stream sessions (`POST /stream`), by outcome.
    pub stream_commands: IntCounterVec,
    /// Publications compressed for WebSocket clients (once per publication and node).
    pub compressions: IntCounter,
    /// Server API requests answered 408 because their body did not arrive within
    /// `--body-timeout`.
    pub body_timeouts: IntCounter,
}

impl HttpMetrics {
    fn new(r: &Register<'_>) -> Self {
        let transports = Opts::new(
            "tidings_transport_connections",
            "Open client connections, by transport.",
        );
        Self {
            transports: r.add(IntGaugeVec::new(transports, &["transport"]).expect("valid metric")),
            stream_commands: r.counters(
                "tidings_stream_command_requests_total",
                "Command requests for stream sessions, by outcome: accepted, refused, limited (429), \
                 unknown (no live node holds the session), failed.",
                "outcome",
            ),
            compressions: r.counter(
                "tidings_compressions_total",
                "Publications compressed (permessage-deflate), once each per node.",
            ),
            body_timeouts: r.counter(
                "tidings_api_body_timeouts_total",
                "Server API requests answered 408: the body did not arrive in time.",
            ),
        }
    }
}

/// Registers each metric as it is made. The names and options are constants: a failure here
/// is a programming error caught by the first test that touches metrics.
struct Register<'a>(&'a Registry);

impl Register<'_> {
    fn add<M: prometheus::core::Collector + Clone + 'static>(&self, metric: M) -> M {
        self.0
            .register(Box::new(metric.clone()))
            .expect("metric names are unique and valid");
        metric
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::with_opts(Opts::new(name, help)).expect("valid metric"))
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::with_opts(Opts::new(name, help)).expect("valid metric"))
    }

    fn gauges(&self, name: &str, help: &str) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), &["namespace"]).expect("valid metric"))
    }

    fn counters(&self, name: &str, help: &str, label: &str) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric"))
    }

    fn histograms(&self, name: &str, help: &str, label: &str) -> HistogramVec {
        let opts = Self::latency(name, help);
        self.add(HistogramVec::new(opts, &[label]).expect("valid metric"))
    }

    fn histogram(&self, name: &str, help: &str) -> Histogram {
        self.add(Histogram::with_opts(Self::latency(name, help)).expect("valid metric"))
    }

    /// 0.5 ms to ~4 s: an in-memory publish is sub-millisecond, a Redis one a round trip.
    fn latency(name: &str, help: &str) -> HistogramOpts {
        let buckets = prometheus::exponential_buckets(0.0005, 2.0, 14).expect("valid buckets");
        HistogramOpts::new(name, help).buckets(buckets)
    }
}

/// The counters of what clients send and receive: messages in, bytes in, messages out, bytes
/// out.
fn traffic(r: &Register<'_>) -> [IntCounter; 4] {
    [
        r.counter(
            "tidings_messages_in_total",
            "WebSocket messages received from clients.",
        ),
        r.counter(
            "tidings_bytes_in_total",
            "Bytes of WebSocket messages received from clients.",
        ),
        r.counter(
            "tidings_messages_out_total",
            "Frames written to clients (replies and pushes).",
        ),
        r.counter(
            "tidings_bytes_out_total",
            "Bytes of frames written to clients.",
        ),
    ]
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let r = Register(&registry);
        let [messages_in, bytes_in, messages_out, bytes_out] = traffic(&r);
        Self {
            connections: r.gauge("tidings_connections", "Open client connections."),
            connections_opened: r.counter(
                "tidings_connections_opened_total",
                "Client connections opened.",
            ),
            connections_closed: r.counters(
                "tidings_connections_closed_total",
                "Client connections closed, by code (peer: the client closed; gone: lost).",
                "code",
            ),
            slow_consumer_closes: r.counter(
                "tidings_slow_consumer_closes_total",
                "Connections closed with 4000 because their outgoing queue overflowed.",
            ),
            messages_in,
            bytes_in,
            messages_out,
            bytes_out,
            publications: r.counters(
                "tidings_publications_total",
                "Publications accepted, by namespace.",
                "namespace",
            ),
            publish_duration: r.histograms(
                "tidings_publish_duration_seconds",
                "From a publish reaching the node to the broker's acknowledgement.",
                "namespace",
            ),
            recoveries: r.counters(
                "tidings_recoveries_total",
                "Subscriptions from a position: recovered, or the reason they were not.",
                "outcome",
            ),
            errors: r.counters(
                "tidings_errors_total",
                "Error replies sent to clients, by error code.",
                "code",
            ),
            rate_limited: r.counter(
                "tidings_rate_limited_total",
                "Commands refused by a rate limit (error 112).",
            ),
            subscriptions: r.gauges(
                "tidings_subscriptions",
                "Subscriptions of this node's connections, by namespace.",
            ),
            channels: r.gauges(
                "tidings_channels",
                "Channels with subscribers on this node, by namespace.",
            ),
            presence_members: r.gauges(
                "tidings_presence_members",
                "Connections this node made present in channels with presence, by namespace.",
            ),
            broker: BrokerMetrics::new(&r),
            proxy: ProxyMetrics::new(&r),
            webhook: WebhookMetrics::new(&r),
            http: HttpMetrics::new(&r),
            scrape_duration: r.histogram(
                "tidings_metrics_scrape_duration_seconds",
                "Time taken to render /metrics.",
            ),
            started: std::time::Instant::now(),
            registry,
        }
    }

    /// Records a publish the broker acknowledged.
    pub fn published(&self, namespace: &str, took: Duration) {
        self.publications.with_label_values(&[namespace]).inc();
        self.publish_duration
            .with_label_values(&[namespace])
            .observe(took.as_secs_f64());
    }

    /// How long this process has been counting.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The sum over every label of a labelled metric (gauges and counters alike).
    pub fn total(metric: &impl prometheus::core::Collector) -> u64 {
        let sum: f64 = metric
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_gauge().get_value() + m.get_counter().get_value())
            .sum();
        sum.max(0.0) as u64
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let timer = self.scrape_duration.start_timer();
        let mut out = Vec::new();
        // Encoding into a Vec fails only on a broken metric family, which registration rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        timer.observe_duration();
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
