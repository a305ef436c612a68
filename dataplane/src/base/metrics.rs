//! The dataplane's Prometheus metrics.

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// The process's metrics: one reference-counted set, so that a request's record holds
/// them for one reference count, not one per metric.
#[derive(Clone, Debug)]
pub struct Metrics(std::sync::Arc<Set>);

impl std::ops::Deref for Metrics {
    type Target = Set;
    fn deref(&self) -> &Set {
        &self.0
    }
}

#[derive(Debug)]
pub struct Set {
    pub registry: Registry,
    /// Requests by route, provider, model (as sent upstream) and response status.
    pub requests: IntCounterVec,
    /// Tokens by route, provider, model and kind (input, output, cached, reasoning).
    pub tokens: IntCounterVec,
    /// Time from request received to last byte sent.
    pub duration: HistogramVec,
    /// Time spent in the gateway itself, upstream wait excluded.
    pub overhead: Histogram,
    pub config_resources: IntGaugeVec,
    pub config_updates: IntCounter,
    /// When the last config response was applied, in Unix seconds.
    pub config_applied_at: prometheus::Gauge,
    pub config_rejected: IntCounter,
    pub config_connected: IntGauge,
    /// Upstream attempts by route, provider, model and outcome (`ok`, or the failure
    /// class: `5xx`, `429`, `connect-error`, ...).
    pub attempts: IntCounterVec,
    /// Retries by route.
    pub retries: IntCounterVec,
    /// Moves to another target or a fallback after a failure, by route and the provider
    /// and model moved to.
    pub fallbacks: IntCounterVec,
    /// Retries refused by the route's retry budget.
    pub retries_refused: IntCounterVec,
    /// Ejections by provider and endpoint (`model` for a target, the credential id for a
    /// credential) and kind (`target`, `credential`).
    pub ejections: IntCounterVec,
    /// 1 while a target or credential is ejected.
    pub ejected: IntGaugeVec,
    /// Cost in USD by route, provider, model and the key owner's team.
    pub cost: prometheus::CounterVec,
    /// Requests refused by reason (`budget`, `session_budget`, `rate_limit`,
    /// `concurrency`, `quota_unavailable`).
    pub denials: IntCounterVec,
    /// Time requests waited for a quota grant from the controller, by the kind of
    /// account they were short of (`budget`, `rate`, `conc`, `session`, `tool`) and
    /// how the wait ended (`granted`, `refused`, `unavailable`).
    pub quota_waits: HistogramVec,
    /// Responses that carried a budget warning.
    pub budget_warnings: IntCounter,
    /// Answers whose provider reported no usage, counted with a tokenizer.
    pub usage_counted: IntCounter,
    /// Audit records written to standard output, and those dropped (the writer fell
    /// behind, or the write failed).
    pub audit_written: IntCounter,
    pub audit_dropped: IntCounter,
    /// 1 while the usage stream to the controller is up.
    pub usage_connected: IntGauge,
    /// Usage batches sent and not yet acknowledged.
    pub usage_unacked: IntGauge,
    /// MCP requests by method and outcome.
    pub mcp_requests: IntCounterVec,
    /// MCP tool calls by server, tool and outcome (`ok`, `tool_error`, `error`,
    /// `upstream_error`, `denied`, `unknown_tool`, `rate_limited`).
    pub mcp_tool_calls: IntCounterVec,
    /// Duration of MCP tool calls that reached a server, by server.
    pub mcp_tool_duration: HistogramVec,
    /// Tokens of tool lists sent to clients, before and after schema compaction
    /// (`kind` = `listed` or `sent`).
    pub mcp_list_tokens: IntCounterVec,
    /// Connections closed at accept because the listener's cap was reached, by listener
    /// (`api`, `admin`).
    pub connections_refused: IntCounterVec,
    /// Connections closed by the header-read or idle timeout, by listener.
    pub connections_timed_out: IntCounterVec,
    /// Connections open, by listener.
    pub connections_open: IntGaugeVec,
    /// The OpenTelemetry GenAI conventions' metrics, as Prometheus names them.
    pub gen_ai: GenAi,
    /// Tokens and cost by the key owner's team, and (when enabled) by customer.
    pub owners: Owners,
}

/// `gen_ai.client.token.usage`, `gen_ai.client.operation.duration`,
/// `gen_ai.server.time_to_first_token` and `gen_ai.server.time_per_output_token`, with
/// the conventions' bucket boundaries. Models are the gateway's model labels (the model
/// configured, or a known one), never a client's own string.
#[derive(Clone, Debug)]
pub struct GenAi {
    /// By operation, provider, request and response model, and token type.
    pub token_usage: HistogramVec,
    /// By operation, provider, request model and error type (empty when it succeeded).
    pub operation_duration: HistogramVec,
    /// Successful answers, by operation, provider and request model.
    pub time_to_first_token: HistogramVec,
    pub time_per_output_token: HistogramVec,
}

/// The labels of [`GenAi::token_usage`], after the conventions' attribute names.
pub const GEN_AI_TOKEN_LABELS: [&str; 5] = [
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "gen_ai_token_type",
];

impl GenAi {
    fn new(r: &Registry) -> Result<Self, prometheus::Error> {
        let op = [
            "gen_ai_operation_name",
            "gen_ai_provider_name",
            "gen_ai_request_model",
        ];
        let with_error = [op[0], op[1], op[2], "error_type"];
        let tokens = vec![
            1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
            4194304.0, 16777216.0, 67108864.0,
        ];
        let duration = vec![
            0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
        ];
        let first = vec![
            0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
            10.0,
        ];
        let per_token = vec![
            0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
        ];
        let histogram = |name: &str, help: &str, buckets: Vec<f64>, labels: &[&str]| {
            add(
                r,
                HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels),
            )
        };
        Ok(Self {
            token_usage: histogram(
                "gen_ai_client_token_usage",
                "gen_ai.client.token.usage: tokens per request, by type (input, output)",
                tokens,
                &GEN_AI_TOKEN_LABELS,
            )?,
            operation_duration: histogram(
                "gen_ai_client_operation_duration_seconds",
                "gen_ai.client.operation.duration: time from request to last answer byte",
                duration,
                &with_error,
            )?,
            time_to_first_token: histogram(
                "gen_ai_server_time_to_first_token_seconds",
                "gen_ai.server.time_to_first_token: time to the first bytes of a successful answer (a whole answer's: all of it)",
                first,
                &op,
            )?,
            time_per_output_token: histogram(
                "gen_ai_server_time_per_output_token_seconds",
                "gen_ai.server.time_per_output_token: time per output token after the first, for successful streamed answers",
                per_token,
                &op,
            )?,
        })
    }
}

/// Tokens and cost by the key owner's team, and by customer for at most `customers`
/// distinct customers (more are counted under `other`): how many series a label may make
/// is the operator's choice (`--metrics-customers`), and bounded.
#[derive(Clone, Debug)]
pub struct Owners {
    pub team_tokens: IntCounterVec,
    pub customer_tokens: IntCounterVec,
    pub customer_cost: prometheus::CounterVec,
    customers: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    max_customers: usize,
}

/// The customer label of customers past the bound.
pub const OTHER_CUSTOMER: &str = "other";

impl Owners {
    fn new(r: &Registry, max_customers: usize) -> Result<Self, prometheus::Error> {
        Ok(Self {
            team_tokens: add(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tollgate_team_tokens_total",
                        "Tokens metered, by the key owner's team and kind (input, output)",
                    ),
                    &["team", "kind"],
                ),
            )?,
            customer_tokens: add(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tollgate_customer_tokens_total",
                        "Tokens metered, by the key owner's customer and kind (when --metrics-customers allows customers)",
                    ),
                    &["customer", "kind"],
                ),
            )?,
            customer_cost: add(
                r,
                prometheus::CounterVec::new(
                    Opts::new(
                        "tollgate_customer_cost_usd_total",
                        "Cost in USD, by the key owner's customer (when --metrics-customers allows customers)",
                    ),
                    &["customer"],
                ),
            )?,
            customers: Default::default(),
            max_customers,
        })
    }

    /// The label for `customer`: itself while the bound allows, else `other`; `None`
    /// when customers are not counted, or the key has none.
    pub fn customer_label<'c>(&self, customer: &'c str) -> Option<&'c str> {
        if self.max_customers == 0 || customer.is_empty() {
            return None;
        }
        let mut seen = crate::base::lock(&self.customers);
        if seen.contains(customer) {
            return Some(customer);
        }
        if seen.len() < self.max_customers {
            seen.insert(customer.to_string());
            return Some(customer);
        }
        Some(OTHER_CUSTOMER)
    }
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        Self::with_customers(0)
    }

    /// Metrics that label tokens and cost by customer for at most `max_customers`.
    pub fn with_customers(max_customers: usize) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let r = &registry;
        let this = Set::registered(r, max_customers, registry.clone())?;
        // Every refusal reason is on a scrape from the start, so that a rate over it sees
        // the first refusal.
        for reason in DENIAL_REASONS {
            this.denials.with_label_values(&[reason]);
        }
        Ok(Self(std::sync::Arc::new(this)))
    }
}

impl Set {
    fn registered(
        r: &Registry,
        max_customers: usize,
        registry: Registry,
    ) -> Result<Self, prometheus::Error> {
        Ok(Self {
            requests: add(r, IntCounterVec::new(Opts::new( "tollgate_requests_total", "Requests served, by route, provider, model and status", ), &["route", "provider", "model", "status"],))?,
            tokens: add(r, IntCounterVec::new(Opts::new( "tollgate_tokens_total", "Tokens metered, by route, provider, model and kind (input includes cached, output includes reasoning)", ), &["route", "provider", "model", "kind"],))?,
            duration: add(r, HistogramVec::new(HistogramOpts::new( "tollgate_request_duration_seconds", "Time from request to last response byte", ) .buckets(vec![ 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, ]), &["route", "provider", "model"],))?,
            overhead: add(r, Histogram::with_opts(HistogramOpts::new( "tollgate_overhead_seconds", "Time spent in the gateway itself, upstream wait excluded", ) .buckets(vec![ 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, ]),))?,
            quota_waits: add(r, HistogramVec::new(HistogramOpts::new( "tollgate_quota_wait_seconds", "Time requests waited for a quota grant, by account kind and how the wait ended", ) .buckets(vec![ 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, ]), &["account", "result"],))?,
            config_resources: add(r, IntGaugeVec::new(Opts::new( "tollgate_config_resources", "Config resources held, by type", ), &["type"],))?,
            config_updates: add(r, IntCounter::new("tollgate_config_updates_total", "Config responses applied"))?,
            config_applied_at: add(r, prometheus::Gauge::new("tollgate_config_last_applied_timestamp_seconds", "When the last config response was applied, in Unix seconds"))?,
            config_rejected: add(r, IntCounter::new("tollgate_config_rejected_total", "Config resources rejected (NACKed)",))?,
            config_connected: add(r, IntGauge::new("tollgate_config_connected", "1 while the config stream is up",))?,
            attempts: add(r, IntCounterVec::new(Opts::new( "tollgate_upstream_attempts_total", "Upstream attempts, by route, provider, model and outcome (ok or the failure class)", ), &["route", "provider", "model", "outcome"],))?,
            retries: add(r, IntCounterVec::new(Opts::new("tollgate_retries_total", "Retries, by route"), &["route"],))?,
            fallbacks: add(r, IntCounterVec::new(Opts::new( "tollgate_fallbacks_total", "Moves to another target or fallback after a failure, by route and where to", ), &["route", "provider", "model"],))?,
            retries_refused: add(r, IntCounterVec::new(Opts::new( "tollgate_retries_budget_exhausted_total", "Retries not made because the route's retry budget was spent, by route", ), &["route"],))?,
            ejections: add(r, IntCounterVec::new(Opts::new( "tollgate_ejections_total", "Outlier ejections, by provider, endpoint (model or credential) and kind", ), &["provider", "endpoint", "kind"],))?,
            ejected: add(r, IntGaugeVec::new(Opts::new( "tollgate_upstream_ejected", "1 while a target (model) or credential of a provider is ejected", ), &["provider", "endpoint", "kind"],))?,
            cost: add(r, prometheus::CounterVec::new(Opts::new( "tollgate_cost_usd_total", "Cost in USD, by route, provider, model and the key owner's team", ), &["route", "provider", "model", "team"],))?,
            denials: add(r, IntCounterVec::new(Opts::new( "tollgate_denials_total", "Requests refused before going upstream, by reason (budget, session_budget, rate_limit, concurrency, quota_unavailable, price_unknown)", ), &["reason"],))?,
            budget_warnings: add(r, IntCounter::new("tollgate_budget_warnings_total", "Responses sent with a budget warning (a warn threshold was passed)",))?,
            usage_counted: add(r, IntCounter::new("tollgate_usage_counted_total", "Answers whose provider reported no usage, counted with a tokenizer instead",))?,
            audit_written: add(r, IntCounter::new("tollgate_audit_records_written_total", "Audit records written to standard output",))?,
            audit_dropped: add(r, IntCounter::new("tollgate_audit_records_dropped_total", "Audit records not written: the writer fell behind its bound of pending records, or the write failed",))?,
            usage_connected: add(r, IntGauge::new("tollgate_usage_connected", "1 while the usage stream to the controller is up",))?,
            usage_unacked: add(r, IntGauge::new("tollgate_usage_unacked_batches", "Usage batches sent and not yet acknowledged by the controller",))?,
            mcp_requests: add(r, IntCounterVec::new(Opts::new( "tollgate_mcp_requests_total", "MCP messages received on /mcp, by method and outcome", ), &["method", "outcome"],))?,
            mcp_tool_calls: add(r, IntCounterVec::new(Opts::new( "tollgate_mcp_tool_calls_total", "MCP tool calls, by server, tool and outcome (ok, tool_error, error, upstream_error, denied, unknown_tool, rate_limited)", ), &["server", "tool", "outcome"],))?,
            mcp_tool_duration: add(r, HistogramVec::new(HistogramOpts::new( "tollgate_mcp_tool_call_duration_seconds", "Time from a tool call to its answer, for calls that reached a server", ) .buckets(vec![ 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, ]), &["server"],))?,
            mcp_list_tokens: add(r, IntCounterVec::new(Opts::new( "tollgate_mcp_tool_list_tokens_total", "Tokens of the tool lists sent to clients: as the servers listed them (listed) and as sent after schema compaction (sent)", ), &["kind"],))?,
            connections_refused: add(r, IntCounterVec::new(Opts::new( "tollgate_connections_refused_total", "Connections closed as accepted because the listener's connection cap was reached", ), &["listener"],))?,
            connections_timed_out: add(r, IntCounterVec::new(Opts::new( "tollgate_connections_timed_out_total", "Connections closed by the header-read or idle timeout", ), &["listener"],))?,
            connections_open: add(r, IntGaugeVec::new(Opts::new("tollgate_connections_open", "Connections open, by listener"), &["listener"],))?,
            gen_ai: GenAi::new(r)?,
            owners: Owners::new(r, max_customers)?,
            registry,
        })
    }
}

/// The `reason` label values of `tollgate_denials_total`.
pub const DENIAL_REASONS: [&str; 6] = [
    "budget",
    "session_budget",
    "rate_limit",
    "concurrency",
    "quota_unavailable",
    "price_unknown",
];

/// Registers `metric` in `registry`, and returns it.
fn add<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: Result<M, prometheus::Error>,
) -> Result<M, prometheus::Error> {
    let metric = metric?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// Why an endpoint changed state: recorded by [`Metrics::health`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    Ejected(std::time::Duration),
    Recovered,
}

impl Metrics {
    /// The connection counters of one listener.
    pub fn listener(&self, name: &str) -> crate::base::server::Counters {
        crate::base::server::Counters {
            refused: Some(self.connections_refused.with_label_values(&[name])),
            timed_out: Some(self.connections_timed_out.with_label_values(&[name])),
            open: Some(self.connections_open.with_label_values(&[name])),
        }
    }

    /// Records an ejection or a return to rotation of a target (`endpoint` is its model)
    /// or a credential (its id), in metrics and the log.
    pub fn health(&self, t: Transition, provider: &str, endpoint: &str, kind: &str) {
        let labels = [provider, endpoint, kind];
        match t {
            Transition::None => {}
            Transition::Ejected(time) => {
                tracing::warn!(provider, endpoint, kind, ejected_for = ?time, "ejected");
                self.ejections.with_label_values(&labels).inc();
                self.ejected.with_label_values(&labels).set(1);
            }
            Transition::Recovered => {
                tracing::info!(provider, endpoint, kind, "back in rotation");
                self.ejected.with_label_values(&labels).set(0);
            }
        }
    }
}
