//! `tollgate-controller`: see the crate documentation.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::watch;
use tollgate_controller::admin::Admin;
use tollgate_controller::auth::{AuthLayer, Authenticator, TokenCheck, TokenReviewer};
use tollgate_controller::compile::Compiled;
use tollgate_controller::k8s;
use tollgate_controller::k8s::status::LedgerNotes;
use tollgate_controller::local::LocalSource;
use tollgate_controller::publish::Publisher;
use tollgate_controller::spend::cluster_store::{LedgerStore, Recovery};
use tollgate_controller::spend::ledger::Ledger;
use tollgate_controller::spend::usage::{
    Books, LeaderUrl, StateFile, Store, UsageCounters, usage_service,
};
use tollgate_controller::tracker::Tracker;
use tollgate_controller::xds::{XdsMetrics, XdsServer};
use tollgate_proto::config_discovery_server::ConfigDiscoveryServer;
use tollgate_proto::usage_reporting_server::UsageReportingServer;

/// Largest config message either side accepts (a full snapshot of a large config).
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

#[derive(Parser, Debug)]
#[command(
    name = "tollgate-controller",
    version,
    about = "Compiles Tollgate resources and serves them to dataplanes"
)]
struct Args {
    /// Local mode: read manifests (multi-document YAML, Tollgate kinds and v1 Secrets)
    /// from this directory and watch it for changes. Without it, the controller runs in
    /// Kubernetes mode, with the in-cluster config or $KUBECONFIG.
    #[arg(long, value_name = "DIR")]
    manifests: Option<PathBuf>,
    /// Address of the config and usage streams (gRPC).
    #[arg(long, default_value = "127.0.0.1:18000")]
    xds_listen: SocketAddr,
    /// Serve the config and usage streams over TLS with this certificate (PEM; with
    /// --tls-key). The streams carry every tenant's credentials: without TLS only with
    /// --plaintext.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Make a CA and certificates in DIR (once; kept there) and serve with them: for a
    /// local setup. Dataplanes verify the controller with DIR/ca.crt, and may present
    /// DIR/client.crt for mutual TLS.
    #[arg(long, value_name = "DIR", conflicts_with = "tls_cert")]
    tls_self_signed: Option<PathBuf>,
    /// Names the self-made certificate is for, besides localhost, 127.0.0.1 and ::1
    /// (repeatable).
    #[arg(long, value_name = "NAME")]
    tls_san: Vec<String>,
    /// Mutual TLS: dataplanes must present a client certificate issued by this CA (PEM),
    /// besides their token.
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// Connections to the config stream's port open at once (two per dataplane); more are
    /// closed as they are accepted.
    #[arg(long, default_value_t = 4096)]
    max_stream_connections: usize,
    /// Serve the config and usage streams without TLS (inside a trusted network, or behind
    /// a mesh that encrypts them).
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_self_signed"])]
    plaintext: bool,
    /// Address of /healthz, /readyz, /status, /usage and /metrics.
    #[arg(long, default_value = "127.0.0.1:18001")]
    admin_listen: SocketAddr,
    /// File holding the token that /status and /usage require (Authorization: Bearer).
    /// Without it they are served only when --admin-listen is a loopback address.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// File holding the token dataplanes must present. Required in local mode; in
    /// Kubernetes mode, without it, dataplanes present ServiceAccount tokens checked with
    /// TokenReview.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Local mode: namespace of objects that name none.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Local mode: how often the manifests directory is checked for changes.
    #[arg(long, default_value = "250ms")]
    poll_interval: String,
    /// Kubernetes mode: namespaces to watch, comma-separated (default: all).
    #[arg(long, env = "TOLLGATE_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Kubernetes mode: this replica's name in the leader Lease and in Events.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Kubernetes mode: namespace of the leader Lease (the controller's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    #[arg(long, default_value = "tollgate-controller")]
    lease_name: String,
    /// Kubernetes mode: how long a leader holds the Lease without renewing it.
    #[arg(long, default_value = "15s")]
    lease_duration: String,
    /// Kubernetes mode: the URL at which dataplanes reach this replica's config and usage
    /// streams directly. A replica that is not the leader tells dataplanes the leader's, so
    /// that their usage streams reach it at once. Default: from the `POD_IP` variable,
    /// the --xds-listen port and whether TLS is on.
    #[arg(long, env = "TOLLGATE_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// Kubernetes mode, TokenReview: the audience of the dataplanes' projected tokens.
    #[arg(long, default_value = "tollgate")]
    token_audience: String,
    /// Kubernetes mode, TokenReview: ServiceAccounts (`namespace/name`, comma-separated)
    /// whose tokens may open the config stream.
    #[arg(
        long,
        env = "TOLLGATE_DATAPLANE_SERVICE_ACCOUNTS",
        value_delimiter = ','
    )]
    dataplane_service_accounts: Vec<String>,
    /// Where budget and session spend is kept (a JSON file, replaced atomically before a
    /// usage batch is acknowledged). Without it, spend lives in memory only in local mode,
    /// and in the cluster-scoped UsageLedger `--ledger-name` in Kubernetes mode.
    #[arg(long, env = "TOLLGATE_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Kubernetes mode: the name of the cluster-scoped UsageLedger that keeps budget and
    /// session spend. It does not depend on the namespace the controller runs in; two
    /// gateways in one cluster need a name each.
    #[arg(long, env = "TOLLGATE_LEDGER_NAME", default_value = "tollgate")]
    ledger_name: String,
    /// How long a quota grant to a dataplane lasts unless renewed.
    #[arg(long, default_value = "10s")]
    quota_lease_ttl: String,
    /// Live agent sessions one VirtualKey may have (and tool-call accounts one key may
    /// have under one policy rule); requests that would open more are refused.
    #[arg(long, default_value_t = 1_000)]
    max_sessions_per_key: usize,
    /// Live agent sessions and tool-call accounts in all, when the ledger is kept in the
    /// cluster (one object, about 1 MB): past it, new ones are refused, so that the API
    /// server never refuses a write and every key's usage is still acknowledged.
    #[arg(long, default_value_t = 4_000)]
    max_configmap_sessions: usize,
    /// Audit records the leader keeps for `/logs`, the live request log (the latest,
    /// from every dataplane).
    #[arg(long, default_value_t = tollgate_controller::live::DEFAULT_KEPT)]
    live_records: usize,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// mimalloc: compiling a large config allocates and frees millions of small values, which
/// glibc's allocator served at several times the time and memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let huge_pages_off = tollgate_proto::process::no_huge_pages();
    let args = Args::parse();
    // Compile and push spans over OTLP, when the OTEL_* variables say where.
    let telemetry = tollgate_telemetry::Telemetry::from_env("tollgate-controller", false)
        .map_err(anyhow::Error::msg)?;
    tollgate_telemetry::init_logging(
        matches!(args.log_format, LogFormat::Json),
        telemetry.as_ref(),
    );
    if !huge_pages_off {
        tracing::warn!(
            "transparent huge pages could not be disabled; starting with a large config may be slower"
        );
    }
    let token = match &args.token_file {
        Some(path) => {
            let token = std::fs::read_to_string(path)
                .with_context(|| format!("reading --token-file {}", path.display()))?;
            if token.trim().is_empty() {
                bail!("--token-file {} is empty", path.display());
            }
            Some(token)
        }
        None => None,
    };
    let tls = server_tls(&args)?;
    let mode = match args.manifests.clone() {
        Some(dir) => {
            if !dir.is_dir() {
                bail!("--manifests {} is not a directory", dir.display());
            }
            let poll = tollgate_proto::time::parse_duration(&args.poll_interval)
                .context("--poll-interval must be a duration such as 250ms")?;
            Mode::Local { dir, poll }
        }
        None => {
            let client = kube::Client::try_default()
                .await
                .context("Kubernetes mode (no --manifests): cannot build a client from the in-cluster config or $KUBECONFIG")?;
            if token.is_none() && args.dataplane_service_accounts.is_empty() {
                bail!(
                    "Kubernetes mode needs --token-file or --dataplane-service-accounts (for TokenReview)"
                );
            }
            let lease_duration = tollgate_proto::time::parse_duration(&args.lease_duration)
                .context("--lease-duration must be a duration such as 15s")?;
            if lease_duration < Duration::from_secs(2) {
                bail!("--lease-duration must be at least 2s");
            }
            let identity = match &args.identity {
                Some(i) if !i.is_empty() => i.clone(),
                _ => hostname(),
            };
            Mode::Kubernetes {
                client,
                settings: Box::new(k8s::Settings {
                    namespaces: args
                        .watch_namespaces
                        .iter()
                        .filter(|n| !n.is_empty())
                        .cloned()
                        .collect(),
                    identity,
                    lease_namespace: args.lease_namespace.clone(),
                    lease_name: args.lease_name.clone(),
                    lease_duration,
                    status_interval: Duration::from_millis(500),
                    advertise_url: args.advertise_url.clone().or_else(|| {
                        let ip: std::net::IpAddr = std::env::var("POD_IP").ok()?.parse().ok()?;
                        let scheme = if args.plaintext { "http" } else { "https" };
                        Some(format!(
                            "{scheme}://{}",
                            SocketAddr::new(ip, args.xds_listen.port())
                        ))
                    }),
                    debounce: Duration::from_millis(50),
                }),
            }
        }
    };
    let authenticator = match (&token, &mode) {
        (Some(t), _) => Authenticator::Token(TokenCheck::new(t)),
        (None, Mode::Kubernetes { client, .. }) => {
            Authenticator::Review(Box::new(TokenReviewer::new(
                client.clone(),
                &args.token_audience,
                &args.dataplane_service_accounts,
            )))
        }
        (None, Mode::Local { .. }) => {
            bail!("local mode needs --token-file: the token dataplanes must present")
        }
    };

    let registry = Registry::new();
    let metrics = XdsMetrics {
        resources_sent: IntCounterVec::new(
            Opts::new(
                "tollgate_xds_resources_sent_total",
                "Resources sent to dataplanes, by type",
            ),
            &["type"],
        )?,
        responses: IntCounterVec::new(
            Opts::new(
                "tollgate_xds_responses_total",
                "Config responses sent, by type",
            ),
            &["type"],
        )?,
        nacks: IntCounterVec::new(
            Opts::new(
                "tollgate_xds_nacks_total",
                "Config responses rejected in part by a dataplane",
            ),
            &["type"],
        )?,
        connected: IntGauge::new(
            "tollgate_xds_connected_dataplanes",
            "Dataplanes connected to the config stream",
        )?,
    };
    let compiles = IntCounter::new(
        "tollgate_config_compiles_total",
        "Times the config was compiled",
    )?;
    let objects = prometheus::IntGaugeVec::new(
        Opts::new(
            "tollgate_config_objects",
            "Objects read, by kind and whether accepted",
        ),
        &["kind", "accepted"],
    )?;
    let usage_records = IntCounter::new("tollgate_usage_records_total", "Usage records received")?;
    registry.register(Box::new(metrics.resources_sent.clone()))?;
    registry.register(Box::new(metrics.responses.clone()))?;
    registry.register(Box::new(metrics.nacks.clone()))?;
    // Every type's NACK count is on a scrape from the start, so that `increase()` sees
    // the first one.
    for type_url in tollgate_proto::type_url::ALL {
        metrics.nacks.with_label_values(&[type_url]);
    }
    registry.register(Box::new(metrics.connected.clone()))?;
    registry.register(Box::new(compiles.clone()))?;
    registry.register(Box::new(objects.clone()))?;
    registry.register(Box::new(usage_records.clone()))?;
    let usage_refused = IntCounter::new(
        "tollgate_usage_streams_refused_total",
        "Usage streams refused because this replica does not keep the usage ledger (not the leader)",
    )?;
    registry.register(Box::new(usage_refused.clone()))?;
    let peers = tollgate_controller::k8s::peers::Peers::default();

    let lease_ttl = tollgate_proto::time::parse_duration(&args.quota_lease_ttl)
        .context("--quota-lease-ttl must be a duration such as 10s")?;
    let state = match &args.state_dir {
        Some(dir) => Some(
            StateFile::new(dir)
                .with_context(|| format!("creating --state-dir {}", dir.display()))?,
        ),
        None => None,
    };
    // Local mode reads its state before serving, so that a damaged file stops it at once.
    let preloaded = match (&state, &mode) {
        (Some(s), Mode::Local { .. }) => Some(
            s.load()
                .context("reading the usage ledger in --state-dir")?,
        ),
        _ => None,
    };
    let ledger_notes = LedgerNotes::default();
    let store = match (state, &mode) {
        (Some(s), _) => Store::File(s),
        (None, Mode::Kubernetes { client, settings }) => Store::Cluster(Box::new(
            LedgerStore::new(
                client.clone(),
                &args.ledger_name,
                &settings.lease_namespace,
                &settings.lease_name,
            )
            .recovering(Recovery {
                client: client.clone(),
                namespaces: settings.namespaces.clone(),
                notes: ledger_notes.clone(),
            }),
        )),
        (None, Mode::Local { .. }) => Store::Memory,
    };
    let mut ledger = Ledger::new(lease_ttl.as_millis() as i64);
    ledger.caps = tollgate_controller::spend::ledger::Caps {
        per_owner: args.max_sessions_per_key,
        total: if matches!(store, Store::Cluster(_)) {
            args.max_configmap_sessions
        } else {
            usize::MAX
        },
    };
    let books = Arc::new(std::sync::Mutex::new(Books::new(ledger)));
    let budget_gauges = budget_metrics(&registry)?;
    let last_change = prometheus::Gauge::new(
        "tollgate_config_last_change_timestamp_seconds",
        "When the served config last changed (a new version was compiled), in Unix seconds",
    )?;
    registry.register(Box::new(last_change.clone()))?;

    let session_key = match (&args.state_dir, &mode) {
        (Some(dir), _) => tollgate_controller::session_key::in_dir(dir)?,
        (None, Mode::Kubernetes { client, settings }) => {
            tollgate_controller::k8s::session_key::get_or_create(
                &kube::Api::namespaced(client.clone(), &settings.lease_namespace),
                &settings.lease_name,
            )
            .await?
        }
        (None, Mode::Local { .. }) => {
            tracing::info!(
                "no --state-dir: MCP sessions last as long as this process (the key that seals them is not kept)"
            );
            tollgate_controller::session_key::random()?
        }
    };
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(Compiled::default()));
    let (ready_tx, ready_rx) = watch::channel(false);
    let publisher = Publisher::new(&args.namespace, snapshot_tx, ready_tx, compiles, objects);
    let tracker = Arc::new(Tracker::default());
    let leader = watch::Sender::new(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (usage, keeper) = usage_service(
        books.clone(),
        snapshot_rx.clone(),
        store,
        preloaded,
        matches!(mode, Mode::Kubernetes { .. }).then(|| leader.subscribe()),
        UsageCounters {
            records: usage_records,
            refused: usage_refused,
        },
        {
            let me = match &mode {
                Mode::Kubernetes { settings, .. } => settings.identity.clone(),
                Mode::Local { .. } => String::new(),
            };
            let peers = peers.clone();
            LeaderUrl::new(move || peers.leader_url(&me, std::time::Instant::now()))
        },
    );
    let live = Arc::new(tollgate_controller::live::Live::new(args.live_records));
    let usage = usage.with_live(live.clone());
    tokio::spawn(keeper.run());
    let source = match mode {
        Mode::Local { dir, poll } => {
            std::thread::Builder::new()
                .name("manifests".into())
                .spawn(move || watch_manifests(dir, poll, publisher))?;
            None
        }
        Mode::Kubernetes { client, settings } => {
            tracing::info!(
                identity = %settings.identity,
                namespaces = ?settings.namespaces,
                lease = %format!("{}/{}", settings.lease_namespace, settings.lease_name),
                "Kubernetes mode"
            );
            tokio::spawn(tollgate_controller::spend::budget_status::run(
                client.clone(),
                books.clone(),
                snapshot_rx.clone(),
                usage.keeping(),
                Duration::from_secs(2),
            ));
            let shared = k8s::Shared {
                publisher,
                snapshots: snapshot_rx.clone(),
                tracker: tracker.clone(),
                leader: leader.clone(),
                stop: stop_rx,
                ledger_notes: ledger_notes.clone(),
                peers: peers.clone(),
            };
            Some(tokio::spawn(k8s::run(client, *settings, shared)))
        }
    };
    let admin = Admin {
        live: live.clone(),
        snapshots: snapshot_rx.clone(),
        ready: ready_rx.clone(),
        tracker: tracker.clone(),
        registry,
        books: books.clone(),
        access: tollgate_proto::admin::Access::new(
            args.admin_token_file.as_deref(),
            args.admin_listen,
        )
        .context("reading --admin-token-file")?,
    };
    tokio::spawn(keep_books(
        books.clone(),
        snapshot_rx.clone(),
        budget_gauges,
    ));
    tokio::spawn(note_changes(snapshot_rx.clone(), last_change));
    let admin_listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding --admin-listen {}", args.admin_listen))?;
    tracing::info!(addr = %admin_listener.local_addr()?, "admin listening");
    tokio::spawn(admin.serve(admin_listener));

    let xds = XdsServer {
        snapshots: snapshot_rx.clone(),
        ready: ready_rx,
        tracker,
        metrics,
        session_key: Arc::new(session_key),
    };
    let config = ConfigDiscoveryServer::new(xds)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let usage = UsageReportingServer::new(usage);
    let listener = tokio::net::TcpListener::bind(args.xds_listen)
        .await
        .with_context(|| format!("binding --xds-listen {}", args.xds_listen))?;
    tracing::info!(addr = %listener.local_addr()?, "config stream listening");
    let incoming = tollgate_controller::listener::capped_incoming(
        listener,
        args.max_stream_connections,
        "config stream",
    );
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        builder = builder
            .tls_config(tls.config())
            .context("the config stream's TLS settings")?;
        tracing::info!(
            mutual = tls.client_ca_pem.is_some(),
            "config stream served over TLS"
        );
    } else {
        tracing::warn!("config stream served WITHOUT TLS (--plaintext): it carries credentials");
    }
    let server = builder
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        // A dataplane opens two streams (config and usage).
        .max_concurrent_streams(Some(16))
        .layer(AuthLayer::new(authenticator))
        .add_service(config)
        .add_service(usage)
        .serve_with_incoming(incoming);
    // Config streams never end by themselves, so a graceful shutdown would wait forever:
    // on SIGTERM the server is dropped, which closes them, and dataplanes reconnect to
    // another replica (keeping their config meanwhile).
    tokio::select! {
        r = server => r?,
        () = shutdown() => {}
    }
    // Kubernetes mode: step down (releasing the Lease, removing this replica's ACK
    // report) before exiting.
    stop_tx.send_replace(true);
    if let Some(source) = source {
        let _ = tokio::time::timeout(Duration::from_secs(5), source).await;
    }
    if let Some(t) = &telemetry {
        t.shutdown();
    }
    Ok(())
}

enum Mode {
    Local {
        dir: PathBuf,
        poll: Duration,
    },
    Kubernetes {
        client: kube::Client,
        settings: Box<k8s::Settings>,
    },
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tollgate-controller".into())
}

/// The TLS settings of the config stream, or `None` with --plaintext.
fn server_tls(args: &Args) -> anyhow::Result<Option<tollgate_controller::tls::ServerTls>> {
    use tollgate_controller::tls;
    let client_ca = args.tls_client_ca.as_deref();
    let (cert, key) = match (&args.tls_cert, &args.tls_key, &args.tls_self_signed) {
        (Some(cert), Some(key), _) => (cert.clone(), key.clone()),
        (_, _, Some(dir)) => {
            let mut names: Vec<String> =
                ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
            names.extend(args.tls_san.iter().cloned());
            tls::self_signed(dir, &names)?
        }
        _ if args.plaintext => return Ok(None),
        _ => anyhow::bail!(
            "the config stream carries every tenant's credentials: serve it over TLS with --tls-cert and --tls-key (or --tls-self-signed DIR for a local setup), or pass --plaintext"
        ),
    };
    Ok(Some(tls::ServerTls::from_files(&cert, &key, client_ca)?))
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}

/// Files read and compiled at a time: a large directory is compiled in batches, so that
/// only one batch is held parsed at once; the result is published when all are in.
const BATCH_FILES: usize = 50;

/// Local mode's loop: poll the directory, recompile on change, publish.
fn watch_manifests(dir: PathBuf, poll: Duration, mut publisher: Publisher) {
    let mut source = LocalSource::new(&dir);
    let origin = dir.display().to_string();
    loop {
        match source.scan() {
            Ok(true) => {
                let batches = std::iter::from_fn(|| {
                    Some(source.take_change(BATCH_FILES)).filter(|c| !c.is_empty())
                });
                publisher.publish(batches, &origin)
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read manifests directory")
            }
        }
        std::thread::sleep(poll);
    }
}

struct BudgetGauges {
    spent: prometheus::GaugeVec,
    remaining: prometheus::GaugeVec,
    limit: prometheus::GaugeVec,
    /// 1 for the Budget's state (`Ok`, `Warning`, `Exceeded`), as its status says.
    state: prometheus::IntGaugeVec,
    /// When the Budget's current period ends (absent for lifetime budgets).
    period_end: prometheus::GaugeVec,
    /// New session and tool-call accounts refused at the ledger's bounds.
    refused_accounts: prometheus::IntCounter,
}

fn budget_metrics(registry: &prometheus::Registry) -> anyhow::Result<BudgetGauges> {
    let spent = prometheus::GaugeVec::new(
        Opts::new(
            "tollgate_budget_spent",
            "Spend of each Budget in its current period, by unit (usd, tokens)",
        ),
        &["budget", "unit"],
    )?;
    let remaining = prometheus::GaugeVec::new(
        Opts::new(
            "tollgate_budget_remaining",
            "What is left of each Budget's limit in its current period, by unit",
        ),
        &["budget", "unit"],
    )?;
    let limit = prometheus::GaugeVec::new(
        Opts::new(
            "tollgate_budget_limit",
            "Each Budget's limit in its current period, by unit",
        ),
        &["budget", "unit"],
    )?;
    let state = prometheus::IntGaugeVec::new(
        Opts::new(
            "tollgate_budget_state",
            "1 for each Budget's state: Ok, Warning (past a warn threshold) or Exceeded",
        ),
        &["budget", "state"],
    )?;
    let period_end = prometheus::GaugeVec::new(
        Opts::new(
            "tollgate_budget_period_end_timestamp_seconds",
            "When each Budget's current period ends, in Unix seconds (budgets with a period)",
        ),
        &["budget"],
    )?;
    let refused_accounts = prometheus::IntCounter::new(
        "tollgate_ledger_accounts_refused_total",
        "New agent-session and tool-call accounts refused at the ledger's bounds (per key, and what the store holds)",
    )?;
    registry.register(Box::new(spent.clone()))?;
    registry.register(Box::new(remaining.clone()))?;
    registry.register(Box::new(limit.clone()))?;
    registry.register(Box::new(state.clone()))?;
    registry.register(Box::new(period_end.clone()))?;
    registry.register(Box::new(refused_accounts.clone()))?;
    Ok(BudgetGauges {
        spent,
        remaining,
        limit,
        state,
        period_end,
        refused_accounts,
    })
}

impl BudgetGauges {
    /// The gauges of every Budget in `views` (and no others).
    fn set(&self, views: &[tollgate_controller::spend::ledger::AccountView]) {
        self.spent.reset();
        self.remaining.reset();
        self.limit.reset();
        self.state.reset();
        self.period_end.reset();
        for v in views.iter().filter(|v| v.account.starts_with("budget/")) {
            let name = &v.account["budget/".len()..];
            let units = [
                (1, "usd", v.spent.usd, v.remaining.usd, v.limit.usd, 1e9),
                (
                    2,
                    "tokens",
                    v.spent.tokens,
                    v.remaining.tokens,
                    v.limit.tokens,
                    1.0,
                ),
            ];
            for (bit, unit, spent, remaining, limit, per) in units {
                if v.limited & bit != 0 {
                    let labels = [name, unit];
                    self.spent
                        .with_label_values(&labels)
                        .set(spent as f64 / per);
                    self.remaining
                        .with_label_values(&labels)
                        .set(remaining as f64 / per);
                    self.limit
                        .with_label_values(&labels)
                        .set(limit as f64 / per);
                }
            }
            self.state.with_label_values(&[name, v.state]).set(1);
            if v.period_end_ms > 0 {
                self.period_end
                    .with_label_values(&[name])
                    .set(v.period_end_ms as f64 / 1e3);
            }
        }
    }
}

/// Sets `gauge` to the time of each new config version: a dataplane that applied nothing
/// since is on an old config (the chart's alert compares the two).
async fn note_changes(mut snapshots: watch::Receiver<Arc<Compiled>>, gauge: prometheus::Gauge) {
    let mut last = String::new();
    loop {
        let version = snapshots.borrow_and_update().version.clone();
        if version != last {
            gauge.set(tollgate_proto::time::now_unix_ms() as f64 / 1e3);
            last = version;
        }
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}

/// Once a second: follows the config, forgets idle sessions, and refreshes the budget
/// gauges.
async fn keep_books(
    books: Arc<std::sync::Mutex<Books>>,
    snapshots: watch::Receiver<Arc<Compiled>>,
    gauges: BudgetGauges,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let views = {
            let mut b = tollgate_controller::lock(&books);
            b.sync(&snapshots.borrow());
            let now = tollgate_proto::time::now_unix_ms();
            b.ledger.sweep(now);
            // A counter follows the ledger's count (which a new leader starts from zero).
            let counted = gauges.refused_accounts.get();
            gauges
                .refused_accounts
                .inc_by(b.ledger.refused_accounts.saturating_sub(counted));
            b.ledger.views(now)
        };
        gauges.set(&views);
    }
}
