//! Starts the real binaries (mock-llm, the controller in local mode, dataplanes) on free
//! loopback ports, waits until they serve, and stops them when dropped. Each process's
//! output goes to a log file in the stack's temporary directory, printed when a test fails.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A port nothing listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The directory holding the workspace's built binaries (`target/debug`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("TOLLGATE_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    // Test binaries live in target/<profile>/deps, other binaries in target/<profile>.
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("cannot find the target directory")?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().context("cannot find the target directory")?;
    }
    Ok(dir.to_path_buf())
}

pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.exists() {
        bail!(
            "{} is not built: run `cargo build --workspace --bins` first (`make test` does)",
            path.display()
        );
    }
    Ok(path)
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A running process, killed when dropped.
#[derive(Debug)]
pub struct Process {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn start(
        name: &str,
        program: &Path,
        args: &[String],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        Self::start_with_env(name, program, args, &[], log_dir)
    }

    /// [`Process::start`] with extra environment variables.
    pub fn start_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(program)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("TOLLGATE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self {
            name: name.into(),
            child,
            log,
        })
    }

    /// Resident memory of the process now, in KiB (Linux).
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/PID/status")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `url` until it answers 200. Fails at once, with the process's log, if the
    /// process exits first (typically: its port was taken between choosing and binding).
    pub fn wait_ready(&mut self, url: &str, within: Duration) -> Result<(), StartError> {
        let deadline = Instant::now() + within;
        loop {
            if http_get(url).map(|(s, _)| s == 200).unwrap_or(false) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(StartError::Exited(format!(
                    "{} exited ({status}):\n{}",
                    self.name,
                    self.log_text()
                )));
            }
            if Instant::now() > deadline {
                return Err(StartError::Timeout(format!(
                    "{url} did not become ready within {within:?}:\n{}",
                    self.log_text()
                )));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Sends SIGTERM, as Kubernetes does to stop a pod.
    pub fn terminate(&self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        Ok(())
    }

    /// Waits for the process to exit, up to `within`; its exit status.
    pub fn wait_exit(&mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} still running after {within:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Why a process did not come up.
#[derive(Debug)]
pub enum StartError {
    /// It exited: worth retrying on other ports.
    Exited(String),
    Timeout(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(m) | Self::Timeout(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for StartError {}

/// Starts a process on ports picked by `args` (called again with fresh ports when the
/// process exits during start-up, as when another process took a port first) and waits
/// until `ready_url(args)` answers.
pub fn start_ready(
    name: &str,
    program: &Path,
    log_dir: &Path,
    args: impl FnMut() -> anyhow::Result<(Vec<String>, String)>,
) -> anyhow::Result<Process> {
    start_ready_with_env(name, program, &[], log_dir, args)
}

/// [`start_ready`] with extra environment variables.
pub fn start_ready_with_env(
    name: &str,
    program: &Path,
    env: &[(&str, &str)],
    log_dir: &Path,
    mut args: impl FnMut() -> anyhow::Result<(Vec<String>, String)>,
) -> anyhow::Result<Process> {
    let mut last = String::new();
    for _ in 0..5 {
        let (argv, ready_url) = args()?;
        let mut process = Process::start_with_env(name, program, &argv, env, log_dir)?;
        match process.wait_ready(&ready_url, Duration::from_secs(20)) {
            Ok(()) => return Ok(process),
            Err(StartError::Exited(log)) => last = log,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("{name} did not start after 5 attempts; last:\n{last}")
}

/// Polls `url` until it answers 200, or fails after `within`.
pub fn wait_ok(url: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if http_get(url).map(|(s, _)| s == 200).unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{url} did not become ready within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A minimal blocking HTTP/1.1 GET for admin endpoints: status and body.
pub fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    http_request("GET", url, "")
}

/// A minimal blocking HTTP/1.1 request with a JSON body: status and body.
pub fn http_request(method: &str, url: &str, body: &str) -> anyhow::Result<(u16, String)> {
    http_request_with(method, url, &[], body)
}

/// [`http_request`] with extra request headers, e.g. an `authorization` key.
pub fn http_request_with(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(u16, String)> {
    use std::io::Read;
    let rest = url.strip_prefix("http://").context("http URLs only")?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(authority)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n{extra}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // The connection is closed after the answer, so the body is whole.
    Ok((status, body))
}

/// Provider keys mock-llm accepts, matching examples/quickstart.
pub const UPSTREAM_KEYS: [&str; 3] = ["sk-mock-primary", "sk-mock-secondary", "sk-ant-mock"];
/// Starts a mock-llm accepting [`UPSTREAM_KEYS`]; its base URL with it.
pub fn start_mock(name: &str, log_dir: &Path) -> anyhow::Result<(Process, String)> {
    let mut port = 0;
    let process = start_ready(name, &bin("mock-llm")?, log_dir, || {
        port = free_port()?;
        let mut argv = vec!["--listen".to_string(), format!("127.0.0.1:{port}")];
        for key in UPSTREAM_KEYS {
            argv.extend(["--api-key".to_string(), key.to_string()]);
        }
        Ok((argv, format!("http://127.0.0.1:{port}/healthz")))
    })?;
    Ok((process, format!("http://127.0.0.1:{port}")))
}

/// Sets mock-llm's run-time fault rules (`PUT /mock/faults`); `[]` clears them.
pub fn set_faults(mock_url: &str, rules: &serde_json::Value) -> anyhow::Result<()> {
    let (status, body) = http_request(
        "PUT",
        &format!("{mock_url}/mock/faults"),
        &rules.to_string(),
    )?;
    anyhow::ensure!(status == 204, "PUT /mock/faults: {status} {body}");
    Ok(())
}

/// The quick start's virtual key.
pub const DEMO_KEY: &str = "tg-demo-key-0123456789";

/// Starts a dataplane named `name` (its node id too) on the controller's config stream at
/// `xds_port`, presenting the token in `token_file`, and waits until it is ready.
pub fn start_dataplane(
    name: &str,
    xds_port: u16,
    token_file: &Path,
    log_dir: &Path,
) -> anyhow::Result<Dataplane> {
    start_dataplane_args(name, xds_port, token_file, log_dir, &with_loopback(&[]))
}

/// `extra` after the arguments that allow the test dataplanes' egress to loopback.
fn with_loopback<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--egress-allow", LOOPBACK];
    args.extend_from_slice(extra);
    args
}

/// The arguments that make a controller serve its config stream over TLS, with a CA and
/// certificates it makes in `dir`/tls (shared by the controllers of one test).
pub fn controller_tls(dir: &Path) -> [String; 2] {
    [
        "--tls-self-signed".into(),
        dir.join("tls").display().to_string(),
    ]
}

/// The CA that dataplanes verify the controller with: see [`controller_tls`].
pub fn controller_ca(dir: &Path) -> String {
    dir.join("tls").join("ca.crt").display().to_string()
}

/// What the test dataplanes may connect to besides the internet: mock-llm and the test
/// MCP servers listen on loopback.
pub const LOOPBACK: &str = "127.0.0.0/8";

/// Starts a dataplane with exactly these arguments besides its addresses and token (no
/// egress allowed beyond the default policy unless `extra` says so).
pub fn start_dataplane_args(
    name: &str,
    xds_port: u16,
    token_file: &Path,
    log_dir: &Path,
    extra: &[&str],
) -> anyhow::Result<Dataplane> {
    start_dataplane_env(name, xds_port, token_file, log_dir, extra, &[])
}

/// [`start_dataplane_args`] with extra environment variables.
pub fn start_dataplane_env(
    name: &str,
    xds_port: u16,
    token_file: &Path,
    log_dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<Dataplane> {
    let token = token_file.display().to_string();
    let mut ports = (0, 0);
    let program = bin("tollgate-dataplane")?;
    let process = start_ready_with_env(name, &program, env, log_dir, || {
        ports = (free_port()?, free_port()?);
        let argv = vec![
            "--controller".into(),
            format!("https://127.0.0.1:{xds_port}"),
            "--controller-ca".into(),
            controller_ca(log_dir),
            "--listen".into(),
            format!("127.0.0.1:{}", ports.0),
            "--admin-listen".into(),
            format!("127.0.0.1:{}", ports.1),
            "--token-file".into(),
            token.clone(),
            "--node-id".into(),
            name.into(),
        ];
        let argv = argv
            .into_iter()
            .chain(extra.iter().map(|a| a.to_string()))
            .collect();
        Ok((argv, format!("http://127.0.0.1:{}/readyz", ports.1)))
    })?;
    Ok(Dataplane {
        process,
        api: format!("http://127.0.0.1:{}/v1", ports.0),
        admin: format!("http://127.0.0.1:{}", ports.1),
    })
}

/// mock-llm, a controller in local mode over a copy of examples/quickstart (with the
/// upstream endpoints pointed at this stack's mock-llm), and dataplanes.
#[derive(Debug)]
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub manifests: PathBuf,
    pub token_file: PathBuf,
    pub mock: Process,
    pub mock_url: String,
    pub controller: Option<Process>,
    pub xds_port: u16,
    pub controller_admin: String,
    pub dataplanes: Vec<Dataplane>,
    /// More arguments for the controller, used from its next start.
    pub controller_args: Vec<String>,
    /// Environment variables of the controller and of each dataplane.
    pub controller_env: Vec<(String, String)>,
    pub dataplane_env: Vec<(String, String)>,
}

#[derive(Debug)]
pub struct Dataplane {
    pub process: Process,
    /// Base URL of the OpenAI API, e.g. `http://127.0.0.1:1234/v1`.
    pub api: String,
    pub admin: String,
}

impl Stack {
    /// Starts everything and waits until one dataplane is ready.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(false, &[], &[])
    }

    /// As [`Stack::start`], with these environment variables for the controller and for
    /// each dataplane.
    pub fn start_env(
        controller_env: &[(&str, &str)],
        dataplane_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_with(false, controller_env, dataplane_env)
    }

    /// As [`Stack::start`], with a provider of every type as well
    /// (`tests/testdata/providers`): Gemini, Vertex AI, Bedrock, Azure, OpenAI-compatible.
    pub fn start_all_providers() -> anyhow::Result<Self> {
        Self::start_with(true, &[], &[])
    }

    fn start_with(
        all_providers: bool,
        controller_env: &[(&str, &str)],
        dataplane_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let owned = |env: &[(&str, &str)]| -> Vec<(String, String)> {
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let dir = tempfile::tempdir()?;
        let manifests = dir.path().join("manifests");
        std::fs::create_dir(&manifests)?;
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("test-token-{}\n", std::process::id()))?;
        let logs = dir.path().to_path_buf();
        let mut mock_port = 0;
        let mock = start_ready("mock-llm", &bin("mock-llm")?, &logs, || {
            mock_port = free_port()?;
            let mut argv = vec!["--listen".to_string(), format!("127.0.0.1:{mock_port}")];
            for key in UPSTREAM_KEYS {
                argv.extend(["--api-key".to_string(), key.to_string()]);
            }
            if all_providers {
                argv.extend([
                    "--aws-key".to_string(),
                    "AKIDTOLLGATETEST:tollgate-test-secret".to_string(),
                    "--google-service-account".to_string(),
                    workspace()
                        .join("tests/testdata/vertex-service-account.json")
                        .display()
                        .to_string(),
                ]);
            }
            Ok((argv, format!("http://127.0.0.1:{mock_port}/healthz")))
        })?;
        let mock_url = format!("http://127.0.0.1:{mock_port}");
        let mut sources = vec![workspace().join("examples/quickstart")];
        if all_providers {
            sources.push(workspace().join("tests/testdata/providers"));
        }
        for source in sources {
            for entry in std::fs::read_dir(source)? {
                let entry = entry?;
                let text = std::fs::read_to_string(entry.path())?;
                let text = text.replace("http://127.0.0.1:9000", &mock_url);
                std::fs::write(manifests.join(entry.file_name()), text)?;
            }
        }
        let mut stack = Self {
            dir,
            manifests,
            token_file,
            mock,
            mock_url,
            controller: None,
            xds_port: 0,
            controller_admin: String::new(),
            dataplanes: vec![],
            controller_args: vec![],
            controller_env: owned(controller_env),
            dataplane_env: owned(dataplane_env),
        };
        stack.start_controller()?;
        stack.add_dataplane()?;
        Ok(stack)
    }

    /// Starts the controller; on its first start the config-stream port is chosen too, on
    /// a restart the same port is used again so that dataplanes find it.
    pub fn start_controller(&mut self) -> anyhow::Result<()> {
        let first = self.xds_port == 0;
        let logs = self.dir.path().to_path_buf();
        let (manifests, token) = (
            self.manifests.display().to_string(),
            self.token_file.display().to_string(),
        );
        let state_dir = self.dir.path().join("state").display().to_string();
        let extra = self.controller_args.clone();
        let mut chosen = (self.xds_port, 0);
        let env: Vec<(&str, &str)> = self
            .controller_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let program = bin("tollgate-controller")?;
        let process = start_ready_with_env("controller", &program, &env, &logs, || {
            if first {
                chosen.0 = free_port()?;
            }
            chosen.1 = free_port()?;
            let argv = vec![
                "--manifests".into(),
                manifests.clone(),
                "--xds-listen".into(),
                format!("127.0.0.1:{}", chosen.0),
                "--admin-listen".into(),
                format!("127.0.0.1:{}", chosen.1),
                "--token-file".into(),
                token.clone(),
                "--poll-interval".into(),
                "100ms".into(),
                "--state-dir".into(),
                state_dir.clone(),
                "--quota-lease-ttl".into(),
                "2s".into(),
            ];
            let argv: Vec<String> = argv.into_iter().chain(controller_tls(&logs)).collect();
            let argv = argv.into_iter().chain(extra.iter().cloned()).collect();
            Ok((argv, format!("http://127.0.0.1:{}/readyz", chosen.1)))
        })?;
        self.xds_port = chosen.0;
        self.controller_admin = format!("http://127.0.0.1:{}", chosen.1);
        self.controller = Some(process);
        Ok(())
    }

    pub fn add_dataplane(&mut self) -> anyhow::Result<&Dataplane> {
        self.add_dataplane_with(&[])
    }

    /// Starts one more dataplane with more command-line arguments.
    pub fn add_dataplane_with(&mut self, extra: &[&str]) -> anyhow::Result<&Dataplane> {
        self.add_dataplane_args(&with_loopback(extra))
    }

    /// Starts one more dataplane with exactly these extra arguments (loopback is not
    /// allowed unless they allow it).
    pub fn add_dataplane_args(&mut self, extra: &[&str]) -> anyhow::Result<&Dataplane> {
        let n = self.dataplanes.len() + 1;
        let env: Vec<(&str, &str)> = self
            .dataplane_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let dataplane = start_dataplane_env(
            &format!("dataplane-{n}"),
            self.xds_port,
            &self.token_file,
            self.dir.path(),
            extra,
            &env,
        )?;
        self.dataplanes.push(dataplane);
        self.dataplanes.last().context("just pushed")
    }

    pub fn api(&self) -> &str {
        self.dataplanes.first().map_or("", |d| d.api.as_str())
    }

    /// Writes a manifest file into the watched directory (atomically, by rename).
    pub fn write_manifest(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.manifests.join(name))?;
        Ok(())
    }

    pub fn remove_manifest(&self, name: &str) -> anyhow::Result<()> {
        Ok(std::fs::remove_file(self.manifests.join(name))?)
    }

    /// The requests mock-llm received, oldest first.
    pub fn upstream_requests(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let (_, text) = http_get(&format!("{}/mock/requests", self.mock_url))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// The last request mock-llm received.
    pub fn last_upstream_request(&self) -> anyhow::Result<serde_json::Value> {
        self.upstream_requests()?
            .pop()
            .context("mock-llm received no request")
    }

    /// The value of a counter or gauge on `admin`'s metrics page (summed over label sets
    /// matching `labels`).
    pub fn metric(admin: &str, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        let (_, text) = http_get(&format!("{admin}/metrics"))?;
        Ok(metric_in(&text, name, labels))
    }

    /// Every process's log, for a failing test's output.
    pub fn logs(&self) -> String {
        let mut out = format!("--- mock-llm ---\n{}", self.mock.log_text());
        if let Some(c) = &self.controller {
            out += &format!("--- controller ---\n{}", c.log_text());
        }
        for d in &self.dataplanes {
            out += &format!("--- {} ---\n{}", d.process.name, d.process.log_text());
        }
        out
    }
}

/// The value of a counter or gauge in a Prometheus text page, summed over the series of
/// `name` whose labels include `labels`.
pub fn metric_in(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut total = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, label_text) = series.split_once('{').unwrap_or((series, ""));
        if metric != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
        {
            total += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    total
}
