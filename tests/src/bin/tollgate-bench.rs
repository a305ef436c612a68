//! `tollgate-bench`: the benchmark behind `make bench`. See docs/benchmarks.md.
//!
//! Starts mock-llm, a bare proxy and Tollgate (controller in local mode + dataplane) on
//! loopback, measures three paths to the same mock (direct, through the bare proxy,
//! through Tollgate), JSON and streamed, at a fixed rate and at max throughput, each
//! translated path and the Responses API path against its direct call, then the
//! config-scale scenario, and writes every figure to a JSON file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use clap::Parser;
use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use tollgate_tests::bench::{self, HttpClient, Percentiles, Run, Target, proc};
use tollgate_tests::fake_kube::FakeApi;
use tollgate_tests::harness::{Process, bin, free_port, http_get, metric_in, wait_ok};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "tollgate-bench",
    about = "Measures Tollgate's own cost against a direct call and a bare proxy"
)]
struct Args {
    /// Fixed request rate for the JSON latency runs.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Fixed request rate for the streaming latency runs: below every path's max
    /// throughput, so that latency is measured without queueing (translated streams on
    /// two shared cores top out near 2000 rps).
    #[arg(long, default_value_t = 1000.0)]
    stream_rate: f64,
    /// Seconds measured per path and mode (split into --rounds slices).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Slices each measurement is split into; paths take turns slice by slice.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds of unrecorded warm-up per path and mode.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Workers in the max-throughput runs.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Content chunks per answer (a stream has this many chunks plus framing).
    #[arg(long, default_value_t = 20)]
    chunks: usize,
    /// VirtualKeys and LLMRoutes in the config-scale scenario.
    #[arg(long, default_value_t = 10_000)]
    scale_keys: usize,
    #[arg(long, default_value_t = 1_000)]
    scale_routes: usize,
    /// Skip the config-scale scenario.
    #[arg(long)]
    skip_scale: bool,
    /// Run only the config-scale scenario (local and Kubernetes mode) and print it.
    #[arg(long)]
    scale_only: bool,
    /// Measure only `direct`, `bare-proxy` and `tollgate` (no translated paths): a
    /// quicker run for comparing two builds of the same-format path.
    #[arg(long)]
    core_only: bool,
    /// A few seconds per scenario, to check the harness works (figures mean nothing).
    #[arg(long)]
    smoke: bool,
    /// Only drive this one path (e.g. `tollgate`) at max throughput for --seconds and
    /// print its rate: a steady load to profile with `perf`, not a measurement.
    #[arg(long)]
    only: Option<String>,
    /// With --only: streamed answers instead of JSON.
    #[arg(long)]
    stream: bool,
    /// With --only: drive the path at the fixed rate of the latency runs (--rate, or
    /// --stream-rate with --stream) instead of max throughput, to read what a request
    /// costs the proxy at the load where latency is measured.
    #[arg(long)]
    fixed: bool,
    /// The measured key without its budget, rate limit and concurrency limit: to see
    /// what metering against them costs, by comparing two runs.
    #[arg(long)]
    no_limits: bool,
    /// One more argument for the dataplane (repeatable), e.g. `--dataplane-arg=--audit=off`
    /// to read what a stage that a flag turns off costs, by comparing two runs.
    #[arg(long = "dataplane-arg", allow_hyphen_values = true)]
    dataplane_args: Vec<String>,
    /// Where the JSON results go.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
}

const UPSTREAM_KEY: &str = "sk-bench-upstream";
const CLIENT_KEY: &str = "tg-bench-client-key";

#[derive(Serialize)]
struct ModeResult {
    fixed_rate: Run,
    max_throughput: Run,
}

#[derive(Serialize)]
struct Scenario {
    name: &'static str,
    json: ModeResult,
    stream: ModeResult,
}

#[derive(Serialize, Default)]
struct Added {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Added {
    fn between(a: &Percentiles, b: &Percentiles) -> Self {
        Self {
            p50: a.p50 - b.p50,
            p90: a.p90 - b.p90,
            p99: a.p99 - b.p99,
            p999: a.p999 - b.p999,
            max: a.max - b.max,
        }
    }
}

#[derive(Serialize)]
struct Comparison {
    /// Tollgate minus direct, per percentile, in ms (fixed rate).
    added_latency_ms: Added,
    /// Bare proxy minus direct: the cost of any hop.
    bare_proxy_added_latency_ms: Added,
    #[serde(skip_serializing_if = "Option::is_none")]
    added_first_chunk_ms: Option<Added>,
    throughput_tollgate_over_direct: f64,
    throughput_tollgate_over_bare_proxy: f64,
}

#[derive(Serialize)]
struct Dataplane {
    peak_rss_mib: f64,
    cpu_seconds_per_1000_requests: f64,
    /// Mean of tollgate_overhead_seconds over the whole run, in ms.
    mean_overhead_ms: f64,
    /// Requests that waited for a quota grant (tollgate_quota_wait_seconds), by the kind
    /// of account they were short of: count and mean wait in ms.
    quota_waits: std::collections::BTreeMap<String, QuotaWaits>,
}

#[derive(Serialize)]
struct QuotaWaits {
    count: u64,
    mean_ms: f64,
}

/// The `tollgate_quota_wait_seconds` series of a metrics page, summed per account kind
/// (over every result); kinds without a wait are left out.
fn quota_waits(metrics: &str) -> std::collections::BTreeMap<String, QuotaWaits> {
    tollgate_dataplane::metering::quota::ACCOUNT_KINDS
        .into_iter()
        .filter_map(|kind| {
            let labels = [("account", kind)];
            let count = metric_in(metrics, "tollgate_quota_wait_seconds_count", &labels);
            let sum = metric_in(metrics, "tollgate_quota_wait_seconds_sum", &labels);
            let waits = QuotaWaits {
                count: count as u64,
                mean_ms: sum / count.max(1.0) * 1000.0,
            };
            (count > 0.0).then(|| (kind.to_string(), waits))
        })
        .collect()
}

#[derive(Serialize)]
struct Scale {
    virtual_keys: usize,
    routes: usize,
    seconds_to_serve_full_config: f64,
    dataplane_rss_mib: f64,
    /// The controller's resident memory once the config is served.
    controller_rss_mib: f64,
    /// CPU time the controller and the dataplane had used when the config was served: how
    /// much of the wait is their own work, and not the bench's (which also plays the API
    /// server in Kubernetes mode) on the same cores.
    controller_cpu_seconds_to_serve: f64,
    dataplane_cpu_seconds_to_serve: f64,
    one_key_change_seconds: f64,
    one_key_change_resources_sent: f64,
    /// Kubernetes mode: from creating an invalid object to its status saying so, right
    /// after the one-key change and once the statuses of the start are written.
    #[serde(skip_serializing_if = "Option::is_none")]
    new_invalid_object_status_seconds: Option<(f64, f64)>,
}

impl Scale {
    /// The scenario's one-line summary; `source` says where the config came from.
    fn line(&self, source: &str) -> String {
        format!(
            "config scale ({source}): {} keys + {} routes served {:.2} s after start (CPU: controller {:.2} s, dataplane {:.2} s), dataplane RSS {:.1} MiB, controller RSS {:.1} MiB; one-key change applied in {:.3} s with {} resource(s) sent",
            self.virtual_keys,
            self.routes,
            self.seconds_to_serve_full_config,
            self.controller_cpu_seconds_to_serve,
            self.dataplane_cpu_seconds_to_serve,
            self.dataplane_rss_mib,
            self.controller_rss_mib,
            self.one_key_change_seconds,
            self.one_key_change_resources_sent
        ) + &self
            .new_invalid_object_status_seconds
            .map(|(early, settled)| format!("; status of a new invalid object in {settled:.3} s ({early:.3} s when made just after the start)"))
            .unwrap_or_default()
    }
}

#[derive(Serialize)]
struct Report {
    date_unix: u64,
    machine: String,
    settings: Settings,
    scenarios: Vec<Scenario>,
    json: Comparison,
    stream: Comparison,
    /// Tollgate translating OpenAI to each other wire format, against calling that API
    /// directly.
    translations: Vec<Translation>,
    dataplane: Dataplane,
    #[serde(skip_serializing_if = "Option::is_none")]
    scale: Option<Scale>,
    /// The same config read from a (fake) Kubernetes API server.
    #[serde(skip_serializing_if = "Option::is_none")]
    kube_scale: Option<Scale>,
}

#[derive(Serialize)]
struct Settings {
    rate: f64,
    stream_rate: f64,
    seconds: f64,
    rounds: usize,
    warmup: f64,
    concurrency: usize,
    chunks: usize,
    smoke: bool,
    core_only: bool,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kib| kib / 1024 / 1024)
        .unwrap_or(0);
    format!("{cores} cores, {mem} GiB, {cpu}")
}

fn chat_target(base: &str, key: &str, stream: bool) -> anyhow::Result<Target> {
    let body = if stream {
        r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Benchmark request"}]}"#
    } else {
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Benchmark request"}]}"#
    };
    Ok(Target {
        uri: format!("{base}/v1/chat/completions").parse()?,
        headers: vec![
            (
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                http::header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {key}"))?,
            ),
        ],
        body: Bytes::from_static(body.as_bytes()),
    })
}

/// OpenAI's Responses API (`POST /v1/responses`), passed through by Tollgate; not stored
/// (the provider's storage is not what is measured, and the mock would hold every answer).
fn responses_target(base: &str, key: &str, stream: bool) -> anyhow::Result<Target> {
    let body = if stream {
        r#"{"model":"gpt-4o","stream":true,"store":false,"input":"Benchmark request"}"#
    } else {
        r#"{"model":"gpt-4o","store":false,"input":"Benchmark request"}"#
    };
    let mut t = chat_target(base, key, stream)?;
    t.uri = format!("{base}/v1/responses").parse()?;
    t.body = Bytes::from_static(body.as_bytes());
    Ok(t)
}

fn messages_target(base: &str, key: &str, stream: bool) -> anyhow::Result<Target> {
    let body = if stream {
        r#"{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"Benchmark request"}]}"#
    } else {
        r#"{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[{"role":"user","content":"Benchmark request"}]}"#
    };
    Ok(Target {
        uri: format!("{base}/v1/messages").parse()?,
        headers: vec![
            (
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                HeaderName::from_static("x-api-key"),
                HeaderValue::from_str(key)?,
            ),
            (
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static("2023-06-01"),
            ),
        ],
        body: Bytes::from_static(body.as_bytes()),
    })
}

/// An OpenAI chat request for `model` (a route to a provider of another format).
/// `t` asking for `model` instead of `gpt-4o`: a model whose provider speaks another
/// format, so Tollgate translates.
fn for_model(mut t: Target, model: &str) -> Target {
    let body = String::from_utf8_lossy(&t.body).replace("gpt-4o", model);
    t.body = Bytes::from(body);
    t
}

/// Gemini's `generateContent` (or its SSE stream), called directly.
fn gemini_target(base: &str, key: &str, stream: bool) -> anyhow::Result<Target> {
    let verb = if stream {
        "streamGenerateContent?alt=sse"
    } else {
        "generateContent"
    };
    Ok(Target {
        uri: format!("{base}/v1beta/models/gemini-2.5-flash:{verb}").parse()?,
        headers: vec![
            (
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                HeaderName::from_static("x-goog-api-key"),
                HeaderValue::from_str(key)?,
            ),
        ],
        body: Bytes::from_static(
            br#"{"contents":[{"role":"user","parts":[{"text":"Benchmark request"}]}]}"#,
        ),
    })
}

/// Bedrock's Converse (or ConverseStream), called directly with an API key.
fn bedrock_target(base: &str, key: &str, stream: bool) -> anyhow::Result<Target> {
    let verb = if stream {
        "converse-stream"
    } else {
        "converse"
    };
    Ok(Target {
        uri: format!("{base}/model/amazon.nova-pro-v1:0/{verb}").parse()?,
        headers: vec![
            (
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                http::header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {key}"))?,
            ),
        ],
        body: Bytes::from_static(
            br#"{"messages":[{"role":"user","content":[{"text":"Benchmark request"}]}]}"#,
        ),
    })
}

/// How a path builds its request.
#[derive(Clone, Copy)]
enum Format {
    OpenAi,
    Anthropic,
    Gemini,
    Bedrock,
    /// OpenAI's format, for a model whose provider speaks another one.
    OpenAiFor(&'static str),
    /// OpenAI's Responses API.
    Responses,
    /// The Responses API, for a model whose provider does not serve it (translated).
    ResponsesFor(&'static str),
}

fn manifests(dir: &Path, mock: &str, limits: bool) -> anyhow::Result<()> {
    let mut text = String::new();
    // The measured route is configured as production routes are: outlier ejection on its
    // providers, retries, a first-token timeout and a fallback chain. None of it fires
    // while the upstream is healthy, but its bookkeeping is on the measured path.
    for name in ["bench-a", "bench-b", "bench-fallback"] {
        write!(
            text,
            "apiVersion: tollgate.dev/v1alpha1\nkind: LLMProvider\nmetadata:\n  name: {name}\nspec:\n  type: openai\n  endpoint: {mock}/v1\n  credentials:\n    - secretRef:\n        name: {name}-key\n  health:\n    consecutiveFailures: 5\n    baseEjectionTime: 30s\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}-key\n  labels:\n    tollgate.dev/credential: \"true\"\nstringData:\n  apiKey: {UPSTREAM_KEY}\n---\n"
        )?;
    }
    text += "apiVersion: tollgate.dev/v1alpha1\nkind: LLMRoute\nmetadata:\n  name: bench\nspec:\n  match:\n    models: [gpt-4o]\n  targets:\n    - provider: bench-a\n      weight: 1\n    - provider: bench-b\n      weight: 1\n  fallbacks:\n    - provider: bench-fallback\n      model: gpt-4o-mini\n      timeout: 30s\n  retries:\n    attempts: 2\n  timeouts:\n    firstToken: 30s\n---\n";
    for (name, kind, extra, model) in [
        ("bench-gemini", "gemini", "", "gemini-2.5-flash"),
        (
            "bench-bedrock",
            "bedrock",
            "\n  region: us-east-1",
            "amazon.nova-pro-v1:0",
        ),
    ] {
        write!(
            text,
            "apiVersion: tollgate.dev/v1alpha1\nkind: LLMProvider\nmetadata:\n  name: {name}\nspec:\n  type: {kind}\n  endpoint: {mock}{extra}\n  credentials:\n    - secretRef:\n        name: bench-a-key\n---\napiVersion: tollgate.dev/v1alpha1\nkind: LLMRoute\nmetadata:\n  name: {name}\nspec:\n  match:\n    models: [\"{model}\"]\n  targets:\n    - provider: {name}\n---\n"
        )?;
    }
    write!(
        text,
        "apiVersion: tollgate.dev/v1alpha1\nkind: LLMProvider\nmetadata:\n  name: bench-anthropic\nspec:\n  type: anthropic\n  endpoint: {mock}\n  credentials:\n    - secretRef:\n        name: bench-a-key\n---\napiVersion: tollgate.dev/v1alpha1\nkind: LLMRoute\nmetadata:\n  name: claude\nspec:\n  match:\n    models: [claude-sonnet-4-5]\n  targets:\n    - provider: bench-anthropic\n---\n"
    )?;
    // Every measured request is also charged to a budget and counted against a rate limit
    // and a concurrency limit, as production keys are: limits far above what the run
    // spends, so nothing is refused, but reservation, grants and settlement are on the
    // measured path.
    if !limits {
        write!(
            text,
            "apiVersion: tollgate.dev/v1alpha1\nkind: VirtualKey\nmetadata:\n  name: bench\nspec:\n  secretRef:\n    name: bench-key\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: bench-key\n  labels:\n    tollgate.dev/credential: \"true\"\nstringData:\n  key: {CLIENT_KEY}\n"
        )?;
        std::fs::write(dir.join("bench.yaml"), text)?;
        return Ok(());
    }
    write!(
        text,
        "apiVersion: tollgate.dev/v1alpha1\nkind: VirtualKey\nmetadata:\n  name: bench\n  labels:\n    team: bench\nspec:\n  secretRef:\n    name: bench-key\n  owner:\n    team: bench\n  limits:\n    requestsPerMinute: 1000000000\n    tokensPerMinute: 1000000000000\n    concurrency: 100000\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: bench-key\n  labels:\n    tollgate.dev/credential: \"true\"\nstringData:\n  key: {CLIENT_KEY}\n---\napiVersion: tollgate.dev/v1alpha1\nkind: Budget\nmetadata:\n  name: bench\nspec:\n  selector:\n    matchLabels:\n      team: bench\n  limit:\n    usd: 1000000000\n  period: month\n"
    )?;
    std::fs::write(dir.join("bench.yaml"), text)?;
    Ok(())
}

struct Tollgate {
    controller: Process,
    dataplane: Process,
    api: String,
    admin: String,
    controller_admin: String,
}

/// `--dataplane-arg`s, for every dataplane the bench starts.
static DATAPLANE_ARGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// Starts a controller (local mode on `manifests`, or Kubernetes mode on `kubeconfig`)
/// and a dataplane.
fn start_tollgate(
    work: &Path,
    manifests: &Path,
    wait: bool,
    kubeconfig: Option<&Path>,
) -> anyhow::Result<Tollgate> {
    let token = work.join("token");
    std::fs::write(&token, "bench-token\n")?;
    let (xds, cadmin, api, admin) = (free_port()?, free_port()?, free_port()?, free_port()?);
    let mut argv = vec![
        "--xds-listen".into(),
        format!("127.0.0.1:{xds}"),
        "--admin-listen".into(),
        format!("127.0.0.1:{cadmin}"),
        "--token-file".into(),
        token.display().to_string(),
        "--tls-self-signed".into(),
        work.join("tls").display().to_string(),
    ];
    let kubeconfig = kubeconfig.map(|k| k.display().to_string());
    match &kubeconfig {
        Some(_) => argv.extend(["--identity".into(), "bench".into()]),
        None => argv.extend([
            "--manifests".into(),
            manifests.display().to_string(),
            "--poll-interval".into(),
            "100ms".into(),
        ]),
    }
    let env: Vec<(&str, &str)> = kubeconfig
        .as_deref()
        .map(|k| vec![("KUBECONFIG", k)])
        .unwrap_or_default();
    let controller = Process::start_with_env(
        "controller",
        &bin("tollgate-controller")?,
        &argv,
        &env,
        work,
    )?;
    // The controller makes its CA as it starts; the dataplane reads it as it starts.
    let ca = work.join("tls/ca.crt");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ca.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let dataplane = Process::start(
        "dataplane",
        &bin("tollgate-dataplane")?,
        &[
            "--controller".into(),
            format!("https://127.0.0.1:{xds}"),
            "--controller-ca".into(),
            work.join("tls/ca.crt").display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{api}"),
            "--admin-listen".into(),
            format!("127.0.0.1:{admin}"),
            "--token-file".into(),
            token.display().to_string(),
            "--egress-allow".into(),
            "127.0.0.0/8".into(),
        ]
        .into_iter()
        .chain(DATAPLANE_ARGS.get().into_iter().flatten().cloned())
        .collect::<Vec<String>>(),
        work,
    )?;
    let t = Tollgate {
        controller,
        dataplane,
        api: format!("http://127.0.0.1:{api}"),
        admin: format!("http://127.0.0.1:{admin}"),
        controller_admin: format!("http://127.0.0.1:{cadmin}"),
    };
    if wait {
        wait_ok(&format!("{}/readyz", t.admin), Duration::from_secs(60))?;
    }
    Ok(t)
}

fn metric(admin: &str, name: &str) -> f64 {
    tollgate_tests::harness::Stack::metric(admin, name, &[]).unwrap_or(0.0)
}

fn target_for(base: &str, key: &str, format: Format, stream: bool) -> anyhow::Result<Target> {
    match format {
        Format::OpenAi => chat_target(base, key, stream),
        Format::Anthropic => messages_target(base, key, stream),
        Format::Gemini => gemini_target(base, key, stream),
        Format::Bedrock => bedrock_target(base, key, stream),
        Format::OpenAiFor(model) => Ok(for_model(chat_target(base, key, stream)?, model)),
        Format::Responses => responses_target(base, key, stream),
        Format::ResponsesFor(model) => Ok(for_model(responses_target(base, key, stream)?, model)),
    }
}

/// Measures every path in one mode. The paths take turns in short slices (round robin)
/// so that drift on a shared machine spreads over all of them instead of landing on one.
async fn measure(
    paths: &[(&'static str, String, &'static str, Format)],
    stream: bool,
    client: &HttpClient,
    args: &Args,
    dataplane_pid: u32,
    cpu: &mut (f64, u64),
) -> anyhow::Result<Vec<ModeResult>> {
    let targets = paths
        .iter()
        .map(|(_, base, key, format)| target_for(base, key, *format, stream))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rounds = args.rounds.max(1);
    let rate = if stream { args.stream_rate } else { args.rate };
    let slice = Duration::from_secs_f64(args.seconds / rounds as f64);
    let warm = Duration::from_secs_f64(args.warmup);
    let ramp = Duration::from_millis(200);
    let mut fixed: Vec<Vec<bench::Sample>> = vec![Vec::new(); targets.len()];
    let mut max: Vec<Vec<bench::Sample>> = vec![Vec::new(); targets.len()];
    for t in &targets {
        bench::fixed_rate(client, t, rate, warm, Duration::ZERO).await;
    }
    for round in 0..rounds {
        for (i, t) in targets.iter().enumerate() {
            let is_tollgate = paths[i].0 == "tollgate";
            let before = proc::cpu_seconds(dataplane_pid).unwrap_or(0.0);
            let fixed_samples = bench::fixed_rate(client, t, rate, Duration::ZERO, slice).await;
            let max_samples = bench::max_throughput(client, t, args.concurrency, ramp, slice).await;
            if is_tollgate {
                cpu.0 += proc::cpu_seconds(dataplane_pid).unwrap_or(0.0) - before;
                cpu.1 += (fixed_samples.len() + max_samples.len()) as u64;
            }
            fixed[i].extend(fixed_samples);
            max[i].extend(max_samples);
        }
        eprintln!(
            "{} round {}/{rounds} done",
            if stream { "stream" } else { "json" },
            round + 1
        );
    }
    let mut out = Vec::new();
    for (i, (name, _, _, _)) in paths.iter().enumerate() {
        let fixed_rate = bench::summarize(&fixed[i], args.seconds);
        let max_throughput = bench::summarize(&max[i], args.seconds);
        eprintln!(
            "{name:<19} {:<6} fixed {:>7.0} rps p50 {:>7.3} ms p99 {:>7.3} ms | max {:>7.0} rps",
            if stream { "stream" } else { "json" },
            fixed_rate.rps,
            fixed_rate.latency_ms.p50,
            fixed_rate.latency_ms.p99,
            max_throughput.rps
        );
        if fixed_rate.errors > 0 || max_throughput.errors > 0 {
            bail!(
                "{name}: {} requests failed",
                fixed_rate.errors + max_throughput.errors
            );
        }
        out.push(ModeResult {
            fixed_rate,
            max_throughput,
        });
    }
    Ok(out)
}

/// Drives one path at max throughput, or at the fixed rate with `--fixed` (for
/// profiling); prints its rate and what each request cost the proxy process `proxy_pid`.
async fn load_one(
    paths: &[(&'static str, String, &'static str, Format)],
    only: &str,
    client: &HttpClient,
    args: &Args,
    proxy_pid: u32,
) -> anyhow::Result<()> {
    let Some(i) = paths.iter().position(|p| p.0 == only) else {
        let names: Vec<_> = paths.iter().map(|p| p.0).collect();
        bail!("no path {only:?}; the paths are {}", names.join(", "));
    };
    let (_, base, key, format) = &paths[i];
    let target = target_for(base, key, *format, args.stream)?;
    let rate = if args.stream {
        args.stream_rate
    } else {
        args.rate
    };
    let load = if args.fixed {
        format!("at {rate} rps")
    } else {
        "at max throughput".to_string()
    };
    eprintln!(
        "proxy pid {proxy_pid}: driving {only} {load} for {} s",
        args.seconds
    );
    let seconds = Duration::from_secs_f64(args.seconds);
    let before = proc::cpu_seconds(proxy_pid).unwrap_or(0.0);
    let samples = if args.fixed {
        bench::fixed_rate(client, &target, rate, Duration::ZERO, seconds).await
    } else {
        bench::max_throughput(client, &target, args.concurrency, Duration::ZERO, seconds).await
    };
    let cpu = proc::cpu_seconds(proxy_pid).unwrap_or(0.0) - before;
    let run = bench::summarize(&samples, args.seconds);
    println!(
        "{only}: {:.0} rps, {} errors, p50 {:.3} ms, p99 {:.3} ms; proxy {:.1} CPU µs per request",
        run.rps,
        run.errors,
        run.latency_ms.p50,
        run.latency_ms.p99,
        cpu * 1e6 / samples.len().max(1) as f64
    );
    Ok(())
}

/// Tollgate translating OpenAI to one wire format, in both modes.
#[derive(Serialize)]
struct Translation {
    to: &'static str,
    /// The API called directly, for the comparison.
    direct: &'static str,
    json: Translated,
    stream: Translated,
}

/// Tollgate translating OpenAI to another format, against calling that API directly.
#[derive(Serialize)]
struct Translated {
    added_latency_ms: Added,
    #[serde(skip_serializing_if = "Option::is_none")]
    added_first_chunk_ms: Option<Added>,
    throughput_over_direct: f64,
}

/// `s[direct]` is the direct call, `s[direct + 1]` Tollgate translating to it.
fn compare_translated(s: &[Scenario], (direct, via): (usize, usize), stream: bool) -> Translated {
    let pick = |i: usize| if stream { &s[i].stream } else { &s[i].json };
    let (direct, tg) = (pick(direct), pick(via));
    Translated {
        added_latency_ms: Added::between(&tg.fixed_rate.latency_ms, &direct.fixed_rate.latency_ms),
        added_first_chunk_ms: match (
            &tg.fixed_rate.first_chunk_ms,
            &direct.fixed_rate.first_chunk_ms,
        ) {
            (Some(a), Some(b)) if stream => Some(Added::between(a, b)),
            _ => None,
        },
        throughput_over_direct: tg.max_throughput.rps / direct.max_throughput.rps.max(f64::EPSILON),
    }
}

fn compare(s: &[Scenario], stream: bool) -> Comparison {
    let pick = |i: usize| if stream { &s[i].stream } else { &s[i].json };
    let (direct, bare, tg) = (pick(0), pick(1), pick(2));
    Comparison {
        added_latency_ms: Added::between(&tg.fixed_rate.latency_ms, &direct.fixed_rate.latency_ms),
        bare_proxy_added_latency_ms: Added::between(
            &bare.fixed_rate.latency_ms,
            &direct.fixed_rate.latency_ms,
        ),
        added_first_chunk_ms: match (
            &tg.fixed_rate.first_chunk_ms,
            &direct.fixed_rate.first_chunk_ms,
        ) {
            (Some(a), Some(b)) if stream => Some(Added::between(a, b)),
            _ => None,
        },
        throughput_tollgate_over_direct: tg.max_throughput.rps
            / direct.max_throughput.rps.max(f64::EPSILON),
        throughput_tollgate_over_bare_proxy: tg.max_throughput.rps
            / bare.max_throughput.rps.max(f64::EPSILON),
    }
}

/// The config-scale scenario, from a manifests directory (local mode) or, with `kube`,
/// from a fake Kubernetes API server holding the same objects (Kubernetes mode).
async fn scale(args: &Args, client: &HttpClient, mock: &str, kube: bool) -> anyhow::Result<Scale> {
    let work = tempfile::tempdir()?;
    let dir = work.path().join("manifests");
    std::fs::create_dir(&dir)?;
    manifests(&dir, mock, !args.no_limits)?;
    let mut routes = String::new();
    for i in 0..args.scale_routes {
        write!(
            routes,
            "apiVersion: tollgate.dev/v1alpha1\nkind: LLMRoute\nmetadata:\n  name: route-{i}\nspec:\n  match:\n    models: [model-{i}]\n  targets:\n    - provider: bench-a\n      model: gpt-4o\n---\n"
        )?;
    }
    std::fs::write(dir.join("routes.yaml"), routes)?;
    let per_file = 100;
    let key_file = |f: usize, changed: Option<usize>| -> anyhow::Result<String> {
        let mut text = String::new();
        for i in f * per_file..((f + 1) * per_file).min(args.scale_keys) {
            let secret = if changed == Some(i) {
                format!("tg-scale-key-{i:06}-rotated")
            } else {
                format!("tg-scale-key-{i:06}")
            };
            write!(
                text,
                "apiVersion: tollgate.dev/v1alpha1\nkind: VirtualKey\nmetadata:\n  name: key-{i}\n  labels:\n    team: team-{}\nspec:\n  secretRef:\n    name: key-{i}\n  owner:\n    team: team-{}\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: key-{i}\n  labels:\n    tollgate.dev/credential: \"true\"\nstringData:\n  key: {secret}\n---\n",
                i % 50,
                i % 50
            )?;
        }
        Ok(text)
    };
    let files = args.scale_keys.div_ceil(per_file);
    for f in 0..files {
        std::fs::write(dir.join(format!("keys-{f:04}.yaml")), key_file(f, None)?)?;
    }
    let fake = if kube {
        let api = FakeApi::new();
        let addr = api.listen(0).await?;
        for entry in std::fs::read_dir(&dir)? {
            let text = std::fs::read_to_string(entry?.path())?;
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let v = serde_json::Value::deserialize(doc)?;
                apply_to(&api, v);
            }
        }
        Some((api, FakeApi::kubeconfig(work.path(), "scale", addr)?))
    } else {
        None
    };
    let started = Instant::now();
    let tg = start_tollgate(
        work.path(),
        &dir,
        false,
        fake.as_ref().map(|(_, k)| k.as_path()),
    )?;
    wait_ok(&format!("{}/readyz", tg.admin), Duration::from_secs(120))?;
    let serve_seconds = started.elapsed().as_secs_f64();
    let controller_cpu = proc::cpu_seconds(tg.controller.pid()).unwrap_or(0.0);
    let dataplane_cpu = proc::cpu_seconds(tg.dataplane.pid()).unwrap_or(0.0);
    let probe = |key: String, model: String| {
        let uri = format!("{}/v1/chat/completions", tg.api);
        async move {
            let target = Target {
                uri: uri.parse().ok()?,
                headers: vec![
                    (
                        http::header::AUTHORIZATION,
                        HeaderValue::from_str(&format!("Bearer {key}")).ok()?,
                    ),
                    (
                        HeaderName::from_static("content-type"),
                        HeaderValue::from_static("application/json"),
                    ),
                ],
                body: Bytes::from(format!(
                    r#"{{"model":"{model}","messages":[{{"role":"user","content":"x"}}]}}"#
                )),
            };
            let run = bench::fixed_rate(
                client,
                &target,
                1000.0,
                Duration::ZERO,
                Duration::from_millis(1),
            )
            .await;
            let run = bench::summarize(&run, 0.001);
            Some(run.errors == 0 && run.requests == 1)
        }
    };
    let last = args.scale_keys - 1;
    let last_route = args.scale_routes - 1;
    if probe(
        format!("tg-scale-key-{last:06}"),
        format!("model-{last_route}"),
    )
    .await
        != Some(true)
    {
        bail!(
            "the scaled config is not served: {}",
            tg.dataplane.log_text()
        );
    }
    let rss = proc::memory_kib(tg.dataplane.pid()).map_or(0.0, |(rss, _)| rss as f64 / 1024.0);
    let controller_rss =
        proc::memory_kib(tg.controller.pid()).map_or(0.0, |(rss, _)| rss as f64 / 1024.0);

    let changed = args.scale_keys / 2;
    let sent_before = metric(&tg.controller_admin, "tollgate_xds_resources_sent_total");
    let f = changed / per_file;
    let rewritten = key_file(f, Some(changed))?;
    let t = Instant::now();
    match &fake {
        Some((api, _)) => {
            // One Secret changes in the API, as `kubectl apply` of the rewritten file would.
            for doc in serde_yaml::Deserializer::from_str(&rewritten) {
                let v = serde_json::Value::deserialize(doc)?;
                if v["kind"] == "Secret" && v["metadata"]["name"] == format!("key-{changed}") {
                    apply_to(api, v);
                }
            }
        }
        None => {
            let tmp = work.path().join("rewrite.tmp");
            std::fs::write(&tmp, rewritten)?;
            std::fs::rename(&tmp, dir.join(format!("keys-{f:04}.yaml")))?;
        }
    }
    loop {
        if probe(
            format!("tg-scale-key-{changed:06}-rotated"),
            "model-0".into(),
        )
        .await
            == Some(true)
        {
            break;
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("the one-key change never arrived");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let change_seconds = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = metric(&tg.controller_admin, "tollgate_xds_resources_sent_total") - sent_before;
    let status_seconds = match &fake {
        Some((api, _)) => Some(invalid_object_status(api, &format!("key-{last}")).await?),
        None => None,
    };
    drop(tg);
    Ok(Scale {
        virtual_keys: args.scale_keys,
        routes: args.scale_routes,
        seconds_to_serve_full_config: serve_seconds,
        dataplane_rss_mib: rss,
        controller_rss_mib: controller_rss,
        controller_cpu_seconds_to_serve: controller_cpu,
        dataplane_cpu_seconds_to_serve: dataplane_cpu,
        one_key_change_seconds: change_seconds,
        one_key_change_resources_sent: sent,
        new_invalid_object_status_seconds: status_seconds,
    })
}

/// Creates a VirtualKey the controller must refuse (a field its schema lacks) and waits
/// for its status to say so: how long an object that changes nothing served waits for
/// its status, with the whole scaled config loaded. Twice: at once (while the statuses
/// of the start may still be being written), and once those are in (`last_key`, among
/// the last written, shows `Programmed`).
async fn invalid_object_status(api: &FakeApi, last_key: &str) -> anyhow::Result<(f64, f64)> {
    const PREFIX: &str = "apis/tollgate.dev/v1alpha1";
    let refused_in = |name: &'static str| async move {
        let t = Instant::now();
        api.apply(
            PREFIX,
            "virtualkeys",
            serde_json::json!({
                "apiVersion": "tollgate.dev/v1alpha1", "kind": "VirtualKey",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"secretRef": {"name": "key-0"}, "notAField": true}
            }),
        );
        loop {
            let refused = api
                .get(PREFIX, "virtualkeys", "default", name)
                .and_then(|o| o["status"]["conditions"].as_array().cloned())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Accepted" && c["status"] == "False")
                });
            if refused {
                return Ok(t.elapsed().as_secs_f64());
            }
            if t.elapsed() > Duration::from_secs(120) {
                bail!("the invalid object's status never said so");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let early = refused_in("scale-invalid-early").await?;
    let programmed = |o: &serde_json::Value| {
        o["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Programmed" && c["status"] == "True")
        })
    };
    let t = Instant::now();
    while api
        .get(PREFIX, "virtualkeys", "default", last_key)
        .is_none_or(|o| !programmed(&o))
    {
        if t.elapsed() > Duration::from_secs(300) {
            bail!("the statuses of the start were never all written");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok((early, refused_in("scale-invalid").await?))
}

/// mock-llm accepting [`UPSTREAM_KEY`], answering streams in `chunks` chunks; its URL.
fn start_mock(work: &Path, chunks: usize) -> anyhow::Result<(Process, String)> {
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let mock = Process::start(
        "mock-llm",
        &bin("mock-llm")?,
        &[
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--api-key".into(),
            UPSTREAM_KEY.into(),
            "--chunks".into(),
            chunks.to_string(),
        ],
        work,
    )?;
    wait_ok(&format!("{url}/healthz"), Duration::from_secs(10))?;
    Ok((mock, url))
}

/// `--scale-only`: the config-scale scenario in both modes, against a mock-llm.
async fn scale_only(args: &Args) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let (_mock, mock_url) = start_mock(work.path(), args.chunks)?;
    let client = bench::client();
    for kube in [false, true] {
        let s = scale(args, &client, &mock_url, kube).await?;
        println!("{}", s.line(if kube { "kubernetes" } else { "local" }));
    }
    Ok(())
}

/// Creates or updates `v` in the fake API, by its kind.
fn apply_to(api: &FakeApi, v: serde_json::Value) {
    let (prefix, resource) = match v["kind"].as_str().unwrap_or("") {
        "Secret" => ("api/v1", "secrets"),
        "LLMProvider" => ("apis/tollgate.dev/v1alpha1", "llmproviders"),
        "LLMRoute" => ("apis/tollgate.dev/v1alpha1", "llmroutes"),
        "VirtualKey" => ("apis/tollgate.dev/v1alpha1", "virtualkeys"),
        "Budget" => ("apis/tollgate.dev/v1alpha1", "budgets"),
        _ => return,
    };
    api.apply(prefix, resource, v);
}

fn table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<19} {:<7} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}",
        "scenario",
        "mode",
        "rate rps",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "ttft p50",
        "ttft p99",
        "max rps"
    );
    for s in &r.scenarios {
        for (mode, m) in [("json", &s.json), ("stream", &s.stream)] {
            let l = &m.fixed_rate.latency_ms;
            let (t50, t99) = m
                .fixed_rate
                .first_chunk_ms
                .as_ref()
                .filter(|_| mode == "stream")
                .map_or(("-".to_string(), "-".to_string()), |t| {
                    (format!("{:.3}", t.p50), format!("{:.3}", t.p99))
                });
            let _ = writeln!(
                out,
                "{:<19} {:<7} {:>9.0} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>9} {:>9} {:>9.0}",
                s.name,
                mode,
                m.fixed_rate.rps,
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max,
                t50,
                t99,
                m.max_throughput.rps
            );
        }
    }
    for (mode, c) in [("json", &r.json), ("stream", &r.stream)] {
        let a = &c.added_latency_ms;
        let _ = writeln!(
            out,
            "\nadded by tollgate ({mode}): p50 {:+.3} ms, p90 {:+.3}, p99 {:+.3}, p99.9 {:+.3}, max {:+.3} (bare proxy p50 {:+.3}, p99 {:+.3})",
            a.p50,
            a.p90,
            a.p99,
            a.p999,
            a.max,
            c.bare_proxy_added_latency_ms.p50,
            c.bare_proxy_added_latency_ms.p99
        );
        if let Some(t) = &c.added_first_chunk_ms {
            let _ = writeln!(
                out,
                "  time to first chunk added: p50 {:+.3} ms, p99 {:+.3} ms",
                t.p50, t.p99
            );
        }
        let _ = writeln!(
            out,
            "  max throughput: tollgate/direct {:.2}, tollgate/bare-proxy {:.2}",
            c.throughput_tollgate_over_direct, c.throughput_tollgate_over_bare_proxy
        );
    }
    for (to, direct, mode, t) in r.translations.iter().flat_map(|t| {
        [
            (t.to, t.direct, "json", &t.json),
            (t.to, t.direct, "stream", &t.stream),
        ]
    }) {
        let a = &t.added_latency_ms;
        let _ = writeln!(
            out,
            "\nadded by tollgate on the {to} path ({mode}), against a direct {direct} call: p50 {:+.3} ms, p99 {:+.3}; max throughput ratio {:.2}",
            a.p50, a.p99, t.throughput_over_direct
        );
        if let Some(f) = &t.added_first_chunk_ms {
            let _ = writeln!(
                out,
                "  time to first chunk added: p50 {:+.3} ms, p99 {:+.3} ms",
                f.p50, f.p99
            );
        }
    }
    let d = &r.dataplane;
    let _ = writeln!(
        out,
        "\ndataplane: peak RSS {:.1} MiB, {:.3} CPU s per 1000 requests, mean overhead {:.3} ms",
        d.peak_rss_mib, d.cpu_seconds_per_1000_requests, d.mean_overhead_ms
    );
    if !d.quota_waits.is_empty() {
        let waits: Vec<String> = d
            .quota_waits
            .iter()
            .map(|(kind, w)| format!("{kind} {} (mean {:.3} ms)", w.count, w.mean_ms))
            .collect();
        let _ = writeln!(
            out,
            "  requests that waited for a quota grant: {}",
            waits.join(", ")
        );
    }
    for (source, s) in [("local", &r.scale), ("kubernetes", &r.kube_scale)] {
        if let Some(s) = s {
            let _ = writeln!(out, "{}", s.line(source));
        }
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    let _ = DATAPLANE_ARGS.set(args.dataplane_args.clone());
    if args.smoke {
        args.rate = args.rate.min(200.0);
        args.stream_rate = args.stream_rate.min(200.0);
        args.seconds = args.seconds.min(1.0);
        args.warmup = args.warmup.min(0.3);
        args.rounds = args.rounds.min(2);
        args.concurrency = args.concurrency.min(16);
        args.scale_keys = args.scale_keys.min(1000);
        args.scale_routes = args.scale_routes.min(100);
    }
    if args.scale_only {
        return scale_only(&args).await;
    }
    let work = tempfile::tempdir()?;
    let (_mock, mock_url) = start_mock(work.path(), args.chunks)?;
    let bare_port = free_port()?;
    let bare = Process::start(
        "bare-proxy",
        &bin("bare-proxy")?,
        &[
            "--listen".into(),
            format!("127.0.0.1:{bare_port}"),
            "--upstream".into(),
            mock_url.clone(),
        ],
        work.path(),
    )?;
    let dir = work.path().join("manifests");
    std::fs::create_dir(&dir)?;
    manifests(&dir, &mock_url, !args.no_limits)?;
    let tg = start_tollgate(work.path(), &dir, true, None)?;
    let client = bench::client();

    let paths = [
        ("direct", mock_url.clone(), UPSTREAM_KEY, Format::OpenAi),
        (
            "bare-proxy",
            format!("http://127.0.0.1:{bare_port}"),
            UPSTREAM_KEY,
            Format::OpenAi,
        ),
        ("tollgate", tg.api.clone(), CLIENT_KEY, Format::OpenAi),
        (
            "direct-anthropic",
            mock_url.clone(),
            UPSTREAM_KEY,
            Format::Anthropic,
        ),
        (
            "tollgate-translated",
            tg.api.clone(),
            CLIENT_KEY,
            Format::OpenAiFor("claude-sonnet-4-5"),
        ),
        (
            "direct-gemini",
            mock_url.clone(),
            UPSTREAM_KEY,
            Format::Gemini,
        ),
        (
            "tollgate-to-gemini",
            tg.api.clone(),
            CLIENT_KEY,
            Format::OpenAiFor("gemini-2.5-flash"),
        ),
        (
            "direct-bedrock",
            mock_url.clone(),
            UPSTREAM_KEY,
            Format::Bedrock,
        ),
        (
            "tollgate-to-bedrock",
            tg.api.clone(),
            CLIENT_KEY,
            Format::OpenAiFor("amazon.nova-pro-v1:0"),
        ),
        (
            "direct-responses",
            mock_url.clone(),
            UPSTREAM_KEY,
            Format::Responses,
        ),
        (
            "tollgate-responses",
            tg.api.clone(),
            CLIENT_KEY,
            Format::Responses,
        ),
        (
            "tollgate-responses-to-anthropic",
            tg.api.clone(),
            CLIENT_KEY,
            Format::ResponsesFor("claude-sonnet-4-5"),
        ),
    ];
    let paths = if args.core_only {
        &paths[..3]
    } else {
        &paths[..]
    };
    let pid = tg.dataplane.pid();
    if let Some(only) = &args.only {
        // The process whose CPU is read: the bare proxy for its path, else the dataplane.
        let proxy = if only == "bare-proxy" {
            bare.pid()
        } else {
            pid
        };
        return load_one(paths, only, &client, &args, proxy).await;
    }
    let mut cpu = (0.0, 0u64);
    let json = measure(paths, false, &client, &args, pid, &mut cpu).await?;
    let stream = measure(paths, true, &client, &args, pid, &mut cpu).await?;
    let scenarios: Vec<Scenario> = paths
        .iter()
        .zip(json.into_iter().zip(stream))
        .map(|((name, _, _, _), (json, stream))| Scenario { name, json, stream })
        .collect();
    let (cpu, requests) = cpu;
    let (_, peak) = proc::memory_kib(tg.dataplane.pid()).unwrap_or((0, 0));
    let (_, metrics) = http_get(&format!("{}/metrics", tg.admin))?;
    let find = |name: &str| metric_in(&metrics, name, &[]);
    let mean_overhead_ms = find("tollgate_overhead_seconds_sum")
        / find("tollgate_overhead_seconds_count").max(1.0)
        * 1000.0;
    let quota_waits = quota_waits(&metrics);
    drop(tg);

    let (scale, kube_scale) = if args.skip_scale {
        (None, None)
    } else {
        (
            Some(scale(&args, &client, &mock_url, false).await?),
            Some(scale(&args, &client, &mock_url, true).await?),
        )
    };
    let report = Report {
        date_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        machine: machine(),
        settings: Settings {
            rate: args.rate,
            stream_rate: args.stream_rate,
            seconds: args.seconds,
            rounds: args.rounds,
            warmup: args.warmup,
            concurrency: args.concurrency,
            chunks: args.chunks,
            smoke: args.smoke,
            core_only: args.core_only,
        },
        json: compare(&scenarios, false),
        stream: compare(&scenarios, true),
        translations: [
            ("Anthropic", "Anthropic", (3, 4)),
            ("Gemini", "Gemini", (5, 6)),
            ("Bedrock", "Bedrock", (7, 8)),
            ("Responses", "Responses", (9, 10)),
            ("Responses -> Anthropic", "Anthropic", (3, 11)),
        ]
        .into_iter()
        .filter(|(_, _, (_, via))| *via < scenarios.len())
        .map(|(to, direct, pair)| Translation {
            to,
            direct,
            json: compare_translated(&scenarios, pair, false),
            stream: compare_translated(&scenarios, pair, true),
        })
        .collect(),
        scenarios,
        dataplane: Dataplane {
            peak_rss_mib: peak as f64 / 1024.0,
            cpu_seconds_per_1000_requests: cpu / (requests as f64 / 1000.0).max(f64::EPSILON),
            mean_overhead_ms,
            quota_waits,
        },
        scale,
        kube_scale,
    };
    print!("{}", table(&report));
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_vec_pretty(&report)?)?;
    println!("\nresults: {}", args.out.display());
    Ok(())
}
