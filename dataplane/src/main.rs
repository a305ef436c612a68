//! `tollgate-dataplane`: see the crate documentation.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use clap::{Parser, ValueEnum};
use tokio::sync::watch;
use tollgate_dataplane::admin::Admin;
use tollgate_dataplane::base::metrics::Metrics;
use tollgate_dataplane::base::upstream;
use tollgate_dataplane::config::snapshot::Snapshot;
use tollgate_dataplane::config::store::Store;
use tollgate_dataplane::config::xds;
use tollgate_dataplane::metering::quota::Quotas;
use tollgate_dataplane::metering::reporter::Reporter;
use tollgate_dataplane::pipeline::State;
use tollgate_dataplane::proxy;

/// The system allocator took about a tenth of the dataplane's CPU under load (small,
/// short-lived allocations on every request, freed on another thread); mimalloc's
/// per-thread free lists serve that pattern more cheaply. See docs/benchmarks.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Memory settings made at start: freed memory goes back to the system at once, and what
/// the allocator touches is not backed by huge pages.
mod allocator {
    /// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (the same in its v2 and v3).
    /// libmimalloc-sys names most options but not this one.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    /// Its default in the mimalloc built here (v3; v2's is 10), in milliseconds.
    #[cfg(test)]
    const DEFAULT_PURGE_DELAY: std::ffi::c_long = 1000;

    /// By default mimalloc returns freed pages to the system a second after they are
    /// freed, and only when the thread that freed them next calls into the allocator. A
    /// dataplane that decoded a large config and then sits idle kept the memory of the
    /// decoding (57-61 MiB resident with 10,000 keys, against 33 MiB with the system
    /// allocator). Purging at once brings it to 34-41 MiB (docs/benchmarks.md). Under
    /// load, three alternating runs with and without it were within the runs' spread
    /// (36-44 µs of CPU per request either way).
    pub fn purge_at_once() {
        // SAFETY: mi_option_set only stores an integer in mimalloc's option table; any
        // value is valid for this option, and it may be called at any time.
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
        }
    }

    /// Transparent huge pages off ([`tollgate_proto::process::no_huge_pages`]): an idle
    /// dataplane with an empty config held 10 MiB of them (11 MiB of anonymous memory),
    /// and with 10,000 keys about twice their live size. Without huge pages those read 5
    /// and 15 MiB; CPU per request under load was within the runs' spread
    /// (docs/benchmarks.md).
    pub fn no_huge_pages() {
        if !tollgate_proto::process::no_huge_pages() {
            eprintln!("transparent huge pages could not be disabled; memory use may be higher");
        }
    }

    #[cfg(test)]
    #[allow(unsafe_code)]
    #[test]
    fn the_option_is_the_purge_delay() {
        // SAFETY: reads and writes of mimalloc's option table, as above.
        let before = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        assert_eq!(
            before, DEFAULT_PURGE_DELAY,
            "option {PURGE_DELAY} is not the purge delay"
        );
        purge_at_once();
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }, 0);
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "tollgate-dataplane",
    version,
    about = "Serves the LLM APIs with config from the Tollgate controller"
)]
struct Args {
    /// URL of the controller's config stream, e.g. https://127.0.0.1:18000 (`http://`
    /// only with --plaintext).
    #[arg(long)]
    controller: String,
    /// The CA (PEM) that issued the controller's certificate; required for `https://`.
    #[arg(long, value_name = "FILE")]
    controller_ca: Option<PathBuf>,
    /// The name the controller's certificate must be for (default: the URL's host).
    #[arg(long, value_name = "NAME")]
    controller_server_name: Option<String>,
    /// Mutual TLS: the certificate (PEM) shown to the controller, with --client-key.
    #[arg(long, value_name = "FILE", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// The private key of --client-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// Connect to the controller without TLS (`http://`): the config stream carries
    /// credentials, so only inside a trusted network or a mesh that encrypts it.
    #[arg(long)]
    plaintext: bool,
    /// Address of the client-facing API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address of /healthz, /readyz, /metrics and /config.
    #[arg(long, default_value = "127.0.0.1:8081")]
    admin_listen: SocketAddr,
    /// File holding the token that /config requires (Authorization: Bearer). Without it,
    /// /config is served only when --admin-listen is a loopback address.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// File holding the token presented to the controller.
    #[arg(long, value_name = "FILE")]
    token_file: PathBuf,
    /// Identifies this dataplane to the controller (default: host name and process id).
    #[arg(long)]
    node_id: Option<String>,
    /// On SIGTERM or Ctrl-C, how long open requests may take to finish.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    drain_timeout: std::time::Duration,
    /// Client connections open at once on the API port; more are closed as they are
    /// accepted (default: half of what the descriptor limit leaves after a reserve, the
    /// soft limit first raised to the hard one).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Time allowed for an HTTP/1 request head, from its first byte.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    header_read_timeout: std::time::Duration,
    /// A client connection with no request in flight and no bytes moving is closed after
    /// this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    idle_timeout: std::time::Duration,
    /// Interval of HTTP/2 keep-alive pings to clients; an unanswered ping closes the
    /// connection after as long again.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    h2_keepalive: std::time::Duration,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Time any request body may take to arrive, before the minimum rate applies.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    body_read_timeout: std::time::Duration,
    /// Slowest rate accepted for a request body, in bytes per second beyond
    /// --body-read-timeout: a body of N bytes must arrive within that timeout plus N
    /// divided by this rate.
    #[arg(long, default_value_t = 64 * 1024)]
    body_min_rate: u64,
    /// Bytes of request bodies the process holds at once (being read, or held by their
    /// requests); a request that would go over it is refused with 503.
    #[arg(long, default_value_t = 512 * 1024 * 1024)]
    max_inflight_body_bytes: usize,
    /// Largest request translated to another API's format (an Anthropic request to an
    /// OpenAI model, an OpenAI request to Gemini or Bedrock), in bytes: translating builds
    /// the whole document, several times its bytes. Larger ones get 413.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    max_translated_bytes: usize,
    /// Most messages in a request translated to another API's format; more get 413.
    #[arg(long, default_value_t = 10_000)]
    max_translated_messages: u64,
    /// Largest upstream answer read whole (answers not streamed, and error bodies); a
    /// larger one is answered with 502.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    max_upstream_body_bytes: usize,
    /// How long a request waits for the controller to grant budget or rate-limit quota
    /// before it is refused.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    quota_wait: std::time::Duration,
    /// When no quota can be had because the controller is unreachable (and the last
    /// grant has run out): `closed` refuses requests (503), `open` admits them and counts
    /// their usage for when the controller is back.
    #[arg(long, value_enum, default_value_t = Unreachable::Closed)]
    quota_unreachable: Unreachable,
    /// The output limit of a request that sets none, for keys metered in tokens or money
    /// (budgets, sessions, tokens per minute): written into the request sent upstream, so
    /// that its reserved worst case is a true bound.
    #[arg(long, default_value_t = 4096)]
    default_max_output_tokens: u64,
    /// Input tokens reserved for each image or audio clip in a request, beyond its bytes
    /// (a high-detail image costs a few thousand tokens for a URL of a few bytes).
    #[arg(long, default_value_t = 3000)]
    media_tokens: u64,
    /// Input tokens reserved for each file or document in a request (a PDF's pages cost
    /// tokens each; providers take up to 100 pages and more).
    #[arg(long, default_value_t = 100_000)]
    file_tokens: u64,
    /// The `max_uses` written on a metered request's web search tools that set none
    /// (Anthropic bills each search), so that its reserved worst case is a true bound.
    #[arg(long, default_value_t = 5)]
    max_web_searches: u64,
    /// Addresses outbound connections (providers, MCP servers, token URLs) may reach
    /// although they are loopback, link-local, private or otherwise not the public
    /// internet: `CIDR` for every namespace, `NAMESPACE=CIDR` for the objects of one
    /// (repeatable). Checked after DNS resolution, on every connect.
    #[arg(long, value_name = "[NAMESPACE=]CIDR", value_parser = tollgate_dataplane::base::egress::parse_allow)]
    egress_allow: Vec<(Option<String>, tollgate_dataplane::base::egress::Net)>,
    /// More address ranges outbound connections never reach, e.g. the cluster's pod and
    /// service ranges when they are public addresses (repeatable).
    #[arg(long, value_name = "CIDR")]
    egress_deny: Vec<tollgate_dataplane::base::egress::Net>,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Where the audit record of every LLM request and MCP call goes, one or both of
    /// `stdout` (one JSON line each; logs go to standard error) and `otlp` (OpenTelemetry
    /// log records whose body is that line, to the OTLP endpoint of the standard
    /// `OTEL_EXPORTER_OTLP_*` variables), comma-separated; or `off` (none are kept
    /// either). Records name keys, owners, routes, models and outcomes; never a body or a
    /// secret.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "stdout")]
    audit: Vec<AuditSink>,
    /// Label tokens and cost by the key owner's customer for at most this many
    /// customers (later ones are counted as `other`); 0, the default, keeps customers
    /// out of metrics. Each customer adds a few series to every scrape.
    #[arg(long, default_value_t = 0)]
    metrics_customers: usize,
    /// Audit records kept in memory for the admin port's `/audit` (0: none).
    #[arg(long, default_value_t = 1000)]
    audit_ring: usize,
    /// Audit records waiting to go to the controller's live request log (`/logs`) at
    /// most, sent with the usage stream; past it the oldest are not sent (0: none).
    #[arg(long, default_value_t = 10_000)]
    audit_forward: usize,
    /// Audit records waiting to be written at most; when the writer falls this far
    /// behind, more are dropped and counted in `tollgate_audit_records_dropped_total`.
    #[arg(long, default_value_t = 100_000)]
    audit_pending: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum AuditSink {
    Stdout,
    Otlp,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Unreachable {
    Closed,
    Open,
}

/// A duration flag: as the manifests write them (`300ms`, `10s`, `1m30s`), or a bare
/// number of seconds.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    tollgate_proto::time::parse_duration(s)
        .or_else(|| {
            s.parse::<f64>()
                .ok()
                .and_then(|v| std::time::Duration::try_from_secs_f64(v).ok())
        })
        .ok_or_else(|| format!("{s:?} is not a duration such as 300ms, 30s or 1m"))
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    allocator::no_huge_pages();
    allocator::purge_at_once();
    let args = Args::parse();
    let telemetry = telemetry(&args)?;
    tollgate_telemetry::init_logging(
        matches!(args.log_format, LogFormat::Json),
        telemetry.as_deref(),
    );
    // Read again at each connection (a projected ServiceAccount token is rotated); read
    // here too, so that a missing or empty file stops the start.
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading --token-file {}", args.token_file.display()))?;
    if token.trim().is_empty() {
        bail!("--token-file {} is empty", args.token_file.display());
    }
    let node_id = args.node_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "dataplane".into());
        format!("{}-{}", host.trim(), std::process::id())
    });
    let metrics = Metrics::with_customers(args.metrics_customers)?;
    let audit = audit_sink(&args, &metrics, telemetry.clone());
    let config = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
    let (ready_tx, ready_rx) = watch::channel(false);
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let quotas = Quotas::new(args.quota_wait, args.quota_unreachable == Unreachable::Open);
    quotas.observe_waits(metrics.quota_waits.clone());
    let controller = Arc::new(controller_link(&args)?);
    let reporter = Reporter::new(
        controller.clone(),
        &node_id,
        quotas.clone(),
        metrics.clone(),
        audit.clone(),
    );
    tokio::spawn(reporter.clone().run());
    let session_keys = Arc::new(tollgate_dataplane::mcp::session::Keys::default());
    let client = xds::Client {
        session_keys: session_keys.clone(),
        controller,
        node_id,
        store: Arc::new(Mutex::new(Store::default())),
        config: config.clone(),
        ready: ready_tx,
        metrics: metrics.clone(),
    };
    tokio::spawn(client.run());

    let admin = Admin {
        draining: draining.clone(),
        ready: ready_rx.clone(),
        metrics: metrics.clone(),
        config: config.clone(),
        access: tollgate_proto::admin::Access::new(
            args.admin_token_file.as_deref(),
            args.admin_listen,
        )
        .context("reading --admin-token-file")?,
        audit: audit.clone(),
    };
    let admin_listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding --admin-listen {}", args.admin_listen))?;
    tracing::info!(addr = %admin_listener.local_addr()?, "admin listening");
    tokio::spawn(admin.serve(admin_listener));

    let mut egress = tollgate_dataplane::base::egress::Policy::default();
    for (namespace, net) in args.egress_allow {
        match namespace {
            Some(ns) => egress.allow_in.entry(ns).or_default().push(net),
            None => egress.allow.push(net),
        }
    }
    egress.deny = args.egress_deny;
    let upstream = upstream::Clients::new(&egress);
    let mcp = tollgate_dataplane::mcp::gateway::Gateway::new(
        tollgate_dataplane::mcp::client::Client::new(upstream.clone()),
        session_keys.clone(),
    );
    let state = Arc::new(State {
        config,
        ready: ready_rx,
        transport: Arc::new(upstream.clone()),
        upstream,
        metrics,
        bodies: tollgate_dataplane::base::bodies::Limits::new(
            args.max_body_bytes,
            args.body_read_timeout,
            args.body_min_rate,
            args.max_inflight_body_bytes,
        ),
        max_upstream_body_bytes: args.max_upstream_body_bytes,
        translation: tollgate_dataplane::pipeline::TranslationLimits {
            max_bytes: args.max_translated_bytes,
            max_messages: args.max_translated_messages,
        },
        balance: Default::default(),
        quotas,
        worst: tollgate_dataplane::pipeline::admission::WorstCase {
            output_tokens: args.default_max_output_tokens,
            media_tokens: args.media_tokens,
            file_tokens: args.file_tokens,
            web_searches: args.max_web_searches,
        },
        audit: audit.clone(),
        telemetry: telemetry.clone(),
        sealing: session_keys,
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "API listening");
    let shutdown = async move {
        signal().await;
        tracing::info!("shutting down");
        // /readyz fails from now on, so load balancers stop sending new connections.
        draining.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let limits = tollgate_dataplane::base::server::Limits {
        max_connections: args
            .max_connections
            .unwrap_or_else(tollgate_dataplane::base::server::default_max_connections),
        header_read: args.header_read_timeout,
        idle: args.idle_timeout,
        h2_keepalive: args.h2_keepalive,
    };
    tracing::info!(
        max_connections = limits.max_connections,
        "connection limits"
    );
    let server = Arc::new(proxy::Server { state, mcp });
    proxy::serve(server, listener, limits, shutdown, args.drain_timeout).await;
    // Every answered request's usage reaches the controller before the process ends.
    reporter.flush(args.drain_timeout).await;
    if let Some(a) = &audit {
        a.close();
    }
    if let Some(t) = &telemetry {
        t.shutdown();
    }
    Ok(())
}

/// Traces (and audit records as logs) over OTLP, when the OTEL_* variables say where.
fn telemetry(args: &Args) -> anyhow::Result<Option<Arc<tollgate_telemetry::Telemetry>>> {
    if args.audit.contains(&AuditSink::Off) && args.audit.len() > 1 {
        bail!("--audit off cannot be combined with a sink");
    }
    let logs = args.audit.contains(&AuditSink::Otlp);
    let t = tollgate_telemetry::Telemetry::from_env("tollgate-dataplane", logs);
    Ok(t.map_err(anyhow::Error::msg)?.map(Arc::new))
}

/// Where audit records go, as the flags say (`None` with `--audit off`).
fn audit_sink(
    args: &Args,
    metrics: &Metrics,
    telemetry: Option<Arc<tollgate_telemetry::Telemetry>>,
) -> Option<Arc<tollgate_dataplane::base::audit::Auditor>> {
    let on = !args.audit.contains(&AuditSink::Off);
    tollgate_dataplane::base::audit::Auditor::start(
        tollgate_dataplane::base::audit::Settings {
            stdout: args.audit.contains(&AuditSink::Stdout),
            ring: if on { args.audit_ring } else { 0 },
            pending: args.audit_pending.max(1),
            forward: if on { args.audit_forward } else { 0 },
        },
        metrics.audit_written.clone(),
        metrics.audit_dropped.clone(),
        telemetry.filter(|_| args.audit.contains(&AuditSink::Otlp)),
    )
}

/// How the config and usage streams reach the controller: over TLS, verifying its
/// certificate with --controller-ca, unless --plaintext says otherwise.
fn controller_link(args: &Args) -> anyhow::Result<tollgate_dataplane::base::link::Controller> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let tls = if args.controller.starts_with("http://") {
        if !args.plaintext {
            bail!(
                "--controller {} is not TLS, and the config stream carries credentials: use https:// with --controller-ca, or pass --plaintext",
                args.controller
            );
        }
        None
    } else {
        let Some(ca) = &args.controller_ca else {
            bail!("--controller-ca is required to verify the controller's certificate");
        };
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        // The name checked is always the configured one, also when the usage stream is
        // sent to the leader replica's own address.
        let name = match &args.controller_server_name {
            Some(name) => name.clone(),
            None => args
                .controller
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_string()))
                .with_context(|| format!("--controller {}: no host", args.controller))?,
        };
        config = config.domain_name(name);
        if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Some(config)
    };
    Ok(tollgate_dataplane::base::link::Controller {
        url: args.controller.clone(),
        token_file: args.token_file.clone(),
        tls,
    })
}

/// Resolves on SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
