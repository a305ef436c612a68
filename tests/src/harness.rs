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

    pub fn pid(&self) -> u32 {
        self.child.id()
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
    use std::io::Read;
    let rest = url.strip_prefix("http://").context("http URLs only")?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(authority)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
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
    // Admin endpoints answer with a content-length, so the body is whole.
    Ok((status, body))
}

/// Provider keys mock-llm accepts, matching examples/quickstart.
pub const UPSTREAM_KEYS: [&str; 3] = ["sk-mock-primary", "sk-mock-secondary", "sk-ant-mock"];
/// The quick start's virtual key.
pub const DEMO_KEY: &str = "tg-demo-key-0123456789";

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
        let dir = tempfile::tempdir()?;
        let manifests = dir.path().join("manifests");
        std::fs::create_dir(&manifests)?;
        let mock_port = free_port()?;
        let mock_url = format!("http://127.0.0.1:{mock_port}");
        for entry in std::fs::read_dir(workspace().join("examples/quickstart"))? {
            let entry = entry?;
            let text = std::fs::read_to_string(entry.path())?;
            let text = text.replace("http://127.0.0.1:9000", &mock_url);
            std::fs::write(manifests.join(entry.file_name()), text)?;
        }
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("test-token-{}\n", std::process::id()))?;
        let logs = dir.path().to_path_buf();
        let mut mock_args = vec!["--listen".to_string(), format!("127.0.0.1:{mock_port}")];
        for key in UPSTREAM_KEYS {
            mock_args.extend(["--api-key".to_string(), key.to_string()]);
        }
        let mock = Process::start("mock-llm", &bin("mock-llm")?, &mock_args, &logs)?;
        wait_ok(&format!("{mock_url}/healthz"), Duration::from_secs(10))?;
        let mut stack = Self {
            dir,
            manifests,
            token_file,
            mock,
            mock_url,
            controller: None,
            xds_port: free_port()?,
            controller_admin: String::new(),
            dataplanes: vec![],
        };
        stack.start_controller()?;
        stack.add_dataplane()?;
        Ok(stack)
    }

    pub fn start_controller(&mut self) -> anyhow::Result<()> {
        let admin_port = free_port()?;
        self.controller_admin = format!("http://127.0.0.1:{admin_port}");
        let args = vec![
            "--manifests".into(),
            self.manifests.display().to_string(),
            "--xds-listen".into(),
            format!("127.0.0.1:{}", self.xds_port),
            "--admin-listen".into(),
            format!("127.0.0.1:{admin_port}"),
            "--token-file".into(),
            self.token_file.display().to_string(),
            "--poll-interval".into(),
            "100ms".into(),
        ];
        let logs = self.dir.path().to_path_buf();
        self.controller = Some(Process::start(
            "controller",
            &bin("tollgate-controller")?,
            &args,
            &logs,
        )?);
        wait_ok(
            &format!("{}/readyz", self.controller_admin),
            Duration::from_secs(10),
        )
    }

    pub fn add_dataplane(&mut self) -> anyhow::Result<&Dataplane> {
        let (api_port, admin_port) = (free_port()?, free_port()?);
        let n = self.dataplanes.len() + 1;
        let args = vec![
            "--controller".into(),
            format!("http://127.0.0.1:{}", self.xds_port),
            "--listen".into(),
            format!("127.0.0.1:{api_port}"),
            "--admin-listen".into(),
            format!("127.0.0.1:{admin_port}"),
            "--token-file".into(),
            self.token_file.display().to_string(),
            "--node-id".into(),
            format!("dataplane-{n}"),
        ];
        let logs = self.dir.path().to_path_buf();
        let process = Process::start(
            &format!("dataplane-{n}"),
            &bin("tollgate-dataplane")?,
            &args,
            &logs,
        )?;
        let dp = Dataplane {
            process,
            api: format!("http://127.0.0.1:{api_port}/v1"),
            admin: format!("http://127.0.0.1:{admin_port}"),
        };
        wait_ok(&format!("{}/readyz", dp.admin), Duration::from_secs(10))?;
        self.dataplanes.push(dp);
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

    /// The value of a counter or gauge (summed over label sets matching `labels`).
    pub fn metric(admin: &str, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        let (_, text) = http_get(&format!("{admin}/metrics"))?;
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
        Ok(total)
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
