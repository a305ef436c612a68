//! `tollgate-controller`: see the crate documentation.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::watch;
use tollgate_controller::admin::Admin;
use tollgate_controller::auth::TokenCheck;
use tollgate_controller::compile::{Compiled, ValidationCache, compile_cached};
use tollgate_controller::local::LocalSource;
use tollgate_controller::tracker::Tracker;
use tollgate_controller::usage::UsageServer;
use tollgate_controller::xds::{XdsMetrics, XdsServer};
use tollgate_crds::validate::Validator;
use tollgate_proto::config_discovery_server::ConfigDiscoveryServer;
use tollgate_proto::usage_reporting_server::UsageReportingServer;
use tonic::service::interceptor::InterceptedService;

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
    /// from this directory and watch it for changes.
    #[arg(long, value_name = "DIR")]
    manifests: Option<PathBuf>,
    /// Address of the config and usage streams (gRPC).
    #[arg(long, default_value = "127.0.0.1:18000")]
    xds_listen: SocketAddr,
    /// Address of /healthz, /readyz, /status and /metrics.
    #[arg(long, default_value = "127.0.0.1:18001")]
    admin_listen: SocketAddr,
    /// File holding the token dataplanes must present.
    #[arg(long, value_name = "FILE")]
    token_file: PathBuf,
    /// Namespace of objects that name none.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// How often the manifests directory is checked for changes.
    #[arg(long, default_value = "250ms")]
    poll_interval: String,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    let Some(dir) = args.manifests.clone() else {
        bail!("Kubernetes mode is not available yet: pass --manifests DIR to run in local mode");
    };
    let poll = tollgate_proto::time::parse_duration(&args.poll_interval)
        .context("--poll-interval must be a duration such as 250ms")?;
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading --token-file {}", args.token_file.display()))?;
    if token.trim().is_empty() {
        bail!("--token-file {} is empty", args.token_file.display());
    }
    if !dir.is_dir() {
        bail!("--manifests {} is not a directory", dir.display());
    }

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
    registry.register(Box::new(metrics.connected.clone()))?;
    registry.register(Box::new(compiles.clone()))?;
    registry.register(Box::new(objects.clone()))?;
    registry.register(Box::new(usage_records.clone()))?;

    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(Compiled::default()));
    let (ready_tx, ready_rx) = watch::channel(false);
    let namespace = args.namespace.clone();
    std::thread::Builder::new()
        .name("manifests".into())
        .spawn(move || {
            watch_manifests(
                dir,
                poll,
                namespace,
                snapshot_tx,
                ready_tx,
                compiles,
                objects,
            )
        })?;

    let tracker = Arc::new(Tracker::default());
    let admin = Admin {
        snapshots: snapshot_rx.clone(),
        ready: ready_rx.clone(),
        tracker: tracker.clone(),
        registry,
    };
    let admin_listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding --admin-listen {}", args.admin_listen))?;
    tracing::info!(addr = %admin_listener.local_addr()?, "admin listening");
    tokio::spawn(admin.serve(admin_listener));

    let xds = XdsServer {
        snapshots: snapshot_rx,
        ready: ready_rx,
        tracker,
        metrics,
    };
    let check = TokenCheck::new(&token);
    let check2 = check.clone();
    let config = InterceptedService::new(
        ConfigDiscoveryServer::new(xds)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        move |r| check.check(r),
    );
    let usage = InterceptedService::new(
        UsageReportingServer::new(UsageServer::new(usage_records)),
        move |r| check2.check(r),
    );
    let listener = tokio::net::TcpListener::bind(args.xds_listen)
        .await
        .with_context(|| format!("binding --xds-listen {}", args.xds_listen))?;
    tracing::info!(addr = %listener.local_addr()?, "config stream listening");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .add_service(config)
        .add_service(usage)
        .serve_with_incoming_shutdown(incoming, shutdown())
        .await?;
    Ok(())
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

/// Local mode's loop: poll the directory, recompile on change, publish.
fn watch_manifests(
    dir: PathBuf,
    poll: Duration,
    namespace: String,
    snapshots: watch::Sender<Arc<Compiled>>,
    ready: watch::Sender<bool>,
    compiles: IntCounter,
    objects: prometheus::IntGaugeVec,
) {
    let validator = Validator::new();
    let mut source = LocalSource::new(&dir);
    let mut reported: HashSet<String> = HashSet::new();
    let mut cache = ValidationCache::default();
    loop {
        match source.scan() {
            Ok(true) => {
                let started = std::time::Instant::now();
                let compiled = compile_cached(&source.inputs(), &validator, &namespace, &mut cache);
                compiles.inc();
                report_problems(&compiled, &mut reported);
                objects.reset();
                for r in &compiled.reports {
                    let accepted = r.condition("Accepted").map_or("False", |c| c.status);
                    objects
                        .with_label_values(&[r.kind.as_str(), accepted])
                        .inc();
                }
                tracing::info!(
                    dir = %dir.display(),
                    objects = compiled.reports.len(),
                    resources = compiled.resource_count(),
                    version = %compiled.version,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "config compiled"
                );
                snapshots.send_replace(Arc::new(compiled));
                ready.send_replace(true);
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read manifests directory")
            }
        }
        std::thread::sleep(poll);
    }
}

/// Logs each problem once, when it first appears.
fn report_problems(compiled: &Compiled, reported: &mut HashSet<String>) {
    let mut current = HashSet::new();
    for e in &compiled.source_errors {
        let line = format!("{}: {}", e.origin, e.message);
        if !reported.contains(&line) {
            tracing::warn!(file = %e.origin, reason = %e.message, "cannot read manifest");
        }
        current.insert(line);
    }
    for r in &compiled.reports {
        for c in r.conditions.iter().filter(|c| c.status == "False") {
            let line = format!(
                "{} {} {}/{} {} {}",
                r.origin, r.kind, r.namespace, r.name, c.type_, c.message
            );
            if !reported.contains(&line) {
                tracing::warn!(
                    file = %r.origin,
                    kind = %r.kind,
                    object = %format!("{}/{}", r.namespace, r.name),
                    condition = c.type_,
                    reason = %c.reason,
                    message = %c.message,
                    "object not fully accepted"
                );
            }
            current.insert(line);
        }
    }
    *reported = current;
}
