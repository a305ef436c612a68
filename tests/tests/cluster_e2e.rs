//! End to end against a real Kubernetes API server: applies the CRDs, installs the chart
//! with Helm, runs the controller (Kubernetes mode) and a dataplane on this machine with the
//! chart's own arguments, Secrets, ServiceAccounts (tokens from `kubectl create token`;
//! the dataplane's checked by TokenReview) and RBAC, applies examples/quickstart into a
//! fresh namespace (provider endpoints pointed at a local mock-llm) and every other example
//! into another, sends traffic through the dataplane, and checks the objects' status.
//!
//! The cluster is `KUBECONFIG`'s when it is set; otherwise the control plane that
//! `../shared/kube/up.sh` starts on loopback (etcd, kube-apiserver with RBAC and
//! TokenReview, kube-controller-manager), stopped again when the test ends. Without either
//! the test is skipped, saying so.
//!
//! kubectl: `$TOLLGATE_KUBECTL`, else `.venv/bin/kubectl` (installed by `make chart-check`),
//! else `kubectl` on the PATH; helm: `.venv/bin/helm`, else `helm` on the PATH.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_tests::harness::{
    DEMO_KEY, Process, UPSTREAM_KEYS, bin, free_port, http_request_with, set_faults, start_mock,
    workspace,
};

fn kubectl() -> PathBuf {
    if let Ok(k) = std::env::var("TOLLGATE_KUBECTL") {
        return k.into();
    }
    let venv = workspace().join(".venv/bin/kubectl");
    if venv.exists() {
        return venv;
    }
    "kubectl".into()
}

/// The kubeconfig of the cluster under test.
static KUBECONFIG: OnceLock<String> = OnceLock::new();

fn run(args: &[&str]) -> String {
    let out = Command::new(kubectl())
        .arg("--kubeconfig")
        .arg(KUBECONFIG.get().expect("the cluster is chosen first"))
        .args(args)
        .output()
        .expect("running kubectl");
    assert!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn helm() -> PathBuf {
    let venv = workspace().join(".venv/bin/helm");
    if venv.exists() {
        return venv;
    }
    "helm".into()
}

/// The chart rendered and applied into a release namespace; what its pods would mount,
/// written to files here, and a kubeconfig with its controller ServiceAccount's token.
struct Chart {
    dir: PathBuf,
    release_namespace: String,
    controller_kubeconfig: String,
}

impl Chart {
    fn install(release_namespace: &str, watched: &[&str], dir: &std::path::Path) -> Self {
        // Installed as a platform engineer would: every object the chart makes must be
        // accepted by the API server.
        let out = Command::new(helm())
            .args(["install", "tollgate"])
            .arg(workspace().join("charts/tollgate"))
            .args(["--kubeconfig", KUBECONFIG.get().unwrap()])
            .args(["-n", release_namespace])
            .arg(format!(
                "--set=controller.watchNamespaces={{{}}}",
                watched.join(",")
            ))
            // The ledger is cluster-scoped: a name of this run's own.
            .arg(format!("--set=controller.ledgerName={release_namespace}"))
            // The dashboard's ConfigMap too (a PrometheusRule needs the Prometheus
            // Operator's CRDs, which this cluster does not have).
            .arg("--set=grafanaDashboard.enabled=true")
            // Traces to a collector, as the docs show. (The dataplanes this test runs take
            // the pods' arguments, not their environment: `--audit otlp`, which needs the
            // endpoint, is left at its default.)
            .arg("--set=telemetry.endpoint=http://otel-collector.observability:4318")
            .arg("--set=telemetry.resourceAttributes=deployment.environment.name=ci")
            .output()
            .expect("running helm");
        assert!(
            out.status.success(),
            "helm install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed = run(&[
            "get",
            "all,secrets,roles,rolebindings,networkpolicies",
            "-n",
            release_namespace,
        ]);
        println!("{listed}");
        // Both components were given the OTLP settings.
        for component in ["controller", "dataplane"] {
            let d: Value = serde_json::from_str(&run(&[
                "get",
                "deployment",
                &format!("tollgate-{component}"),
                "-n",
                release_namespace,
                "-o",
                "json",
            ]))
            .unwrap();
            let container = &d["spec"]["template"]["spec"]["containers"][0];
            let env: std::collections::HashMap<&str, &str> =
                (container["env"].as_array().unwrap().iter())
                    .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
                    .collect();
            assert_eq!(
                env.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
                Some(&"http://otel-collector.observability:4318"),
                "{component}: {env:?}"
            );
            assert_eq!(
                env.get("OTEL_RESOURCE_ATTRIBUTES"),
                Some(&"deployment.environment.name=ci")
            );
        }
        let chart = dir.join("chart");
        // What the pods mount: the stream TLS and admin token Secrets.
        for (secret, to) in [("tollgate-stream-tls", "tls"), ("tollgate-admin", "admin")] {
            let s: Value = serde_json::from_str(&run(&[
                "get",
                "secret",
                secret,
                "-n",
                release_namespace,
                "-o",
                "json",
            ]))
            .unwrap();
            let to = chart.join(to);
            std::fs::create_dir_all(&to).unwrap();
            for (k, v) in s["data"].as_object().unwrap() {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap())
                    .unwrap();
                std::fs::write(to.join(k), bytes).unwrap();
            }
        }
        // Each ServiceAccount's token, as the kubelet would project it.
        let token = |sa: &str, audience: Option<&str>| {
            let mut args = vec![
                "create",
                "token",
                sa,
                "-n",
                release_namespace,
                "--duration=2h",
            ];
            let audience = audience.map(|a| format!("--audience={a}"));
            args.extend(audience.as_deref());
            run(&args).trim().to_string()
        };
        std::fs::write(
            chart.join("dataplane-token"),
            token("tollgate-dataplane", Some("tollgate")),
        )
        .unwrap();
        let admin: Value =
            serde_json::from_str(&run(&["config", "view", "--raw", "--minify", "-o", "json"]))
                .unwrap();
        let cluster = &admin["clusters"][0]["cluster"];
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": cluster}],
            "users": [{"name": "tollgate-controller", "user": {"token": token("tollgate-controller", None)}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "tollgate-controller"}}],
            "current-context": "e2e",
        });
        let controller_kubeconfig = chart.join("controller-kubeconfig");
        std::fs::write(&controller_kubeconfig, kubeconfig.to_string()).unwrap();
        Self {
            dir: chart,
            release_namespace: release_namespace.to_string(),
            controller_kubeconfig: controller_kubeconfig.display().to_string(),
        }
    }

    /// The container's arguments as the API server stored them.
    fn args(&self, deployment: &str) -> Vec<String> {
        let d: Value = serde_json::from_str(&run(&[
            "get",
            "deployment",
            deployment,
            "-n",
            &self.release_namespace,
            "-o",
            "json",
        ]))
        .unwrap();
        d["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    }

    /// An argument with the pod's paths mapped to the files here and the listeners on
    /// loopback ports.
    fn local(&self, arg: &str, listeners: &[(&str, String)]) -> String {
        if let Some((flag, _)) = arg.split_once('=')
            && let Some((_, to)) = listeners.iter().find(|(f, _)| *f == flag)
        {
            return format!("{flag}={to}");
        }
        let dir = self.dir.display();
        arg.replace("/etc/tollgate/tls/", &format!("{dir}/tls/"))
            .replace("/etc/tollgate/admin/", &format!("{dir}/admin/"))
            .replace(
                "/var/run/secrets/tollgate/token",
                &format!("{dir}/dataplane-token"),
            )
    }

    fn controller_args(&self, xds: u16, admin: u16) -> Vec<String> {
        let listeners = [
            ("--xds-listen", format!("127.0.0.1:{xds}")),
            ("--admin-listen", format!("127.0.0.1:{admin}")),
            ("--log-format", "text".to_string()),
        ];
        self.args("tollgate-controller")
            .iter()
            .map(|a| self.local(a, &listeners))
            .collect()
    }

    fn dataplane_args(&self, xds: u16, api: u16, admin: u16) -> Vec<String> {
        let listeners = [
            ("--controller", format!("https://127.0.0.1:{xds}")),
            ("--listen", format!("127.0.0.1:{api}")),
            ("--admin-listen", format!("127.0.0.1:{admin}")),
            ("--log-format", "text".to_string()),
        ];
        let mut args: Vec<String> = self
            .args("tollgate-dataplane")
            .iter()
            .map(|a| self.local(a, &listeners))
            .collect();
        // The certificate is for the Service's name, as the pods reach it.
        args.push(format!(
            "--controller-server-name=tollgate-controller.{}.svc",
            self.release_namespace
        ));
        args.extend(["--egress-allow".to_string(), "127.0.0.0/8".to_string()]);
        args
    }
}

/// The release is uninstalled when the test ends (its cluster-wide roles outlive the
/// namespace otherwise).
impl Drop for Chart {
    fn drop(&mut self) {
        if let Some(kubeconfig) = KUBECONFIG.get() {
            let _ = Command::new(helm())
                .args(["uninstall", "tollgate", "--kubeconfig", kubeconfig])
                .args(["-n", &self.release_namespace])
                .output();
        }
    }
}

/// kubectl with `input` on its stdin: whether it succeeded, and its stderr.
fn kubectl_with_input(args: &[&str], input: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(kubectl())
        .arg("--kubeconfig")
        .arg(KUBECONFIG.get().expect("the cluster is chosen first"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kubectl apply` of `yaml` into `ns`.
fn apply_yaml(ns: &str, yaml: &str) {
    let (ok, stderr) = kubectl_with_input(&["apply", "-n", ns, "-f", "-"], yaml);
    assert!(ok, "kubectl apply: {stderr}\n{yaml}");
}

/// The condition `type_` of `resource`/`name` in `ns`, once it is there.
fn condition(resource: &str, ns: &str, name: &str, type_: &str) -> Option<Value> {
    let o: Value =
        serde_json::from_str(&run(&["get", resource, name, "-n", ns, "-o", "json"])).ok()?;
    o["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// Polls `f` until it gives a value, failing after `within` with `what` and the log.
fn wait_until<T>(
    what: &str,
    within: Duration,
    log: &Process,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}\n{}",
            log.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn chat(api: u16, key: &str, model: &str) -> (u16, String) {
    let bearer = format!("Bearer {key}");
    http_request_with(
        "POST",
        &format!("http://127.0.0.1:{api}/v1/chat/completions"),
        &[("authorization", bearer.as_str())],
        &format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#),
    )
    .unwrap()
}

/// Deletes the test namespace when the test ends, passed or not.
struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Some(kubeconfig) = KUBECONFIG.get() {
            let _ = Command::new(kubectl())
                .args(["--kubeconfig", kubeconfig])
                .args(["delete", "namespace", &self.0, "--wait=false"])
                .output();
        }
    }
}

/// A control plane started by `../shared/kube/up.sh` for this test, stopped when dropped.
struct ControlPlane(tempfile::TempDir);

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new(shared_kube("down.sh"))
            .arg(self.0.path())
            .output();
    }
}

fn shared_kube(script: &str) -> PathBuf {
    workspace().join("../shared/kube").join(script)
}

/// The cluster to test against: `KUBECONFIG`'s, or a control plane started here.
fn cluster() -> Option<(String, Option<ControlPlane>)> {
    if let Ok(kubeconfig) = std::env::var("KUBECONFIG") {
        return Some((kubeconfig, None));
    }
    let up = shared_kube("up.sh");
    if !up.exists() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&up)
        .arg(dir.path())
        .output()
        .expect("running up.sh");
    let plane = ControlPlane(dir);
    assert!(
        out.status.success(),
        "{} failed: {}",
        up.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let kubeconfig = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(
        PathBuf::from(&kubeconfig).exists(),
        "up.sh printed {kubeconfig:?}"
    );
    Some((kubeconfig, Some(plane)))
}

/// Waits until every object of `resources` in `ns` has `condition` True and the objects
/// are of `kinds` kinds, or fails with the objects and the controller's log.
fn wait_for_condition(
    resources: &str,
    ns: &str,
    condition: &str,
    kinds: usize,
    within: Duration,
    controller: &Process,
) {
    let deadline = Instant::now() + within;
    loop {
        let list: Value =
            serde_json::from_str(&run(&["get", resources, "-n", ns, "-o", "json"])).unwrap();
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let holds = |o: &Value| {
            o["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == condition && c["status"] == "True")
            })
        };
        let seen: std::collections::BTreeSet<&str> =
            items.iter().filter_map(|o| o["kind"].as_str()).collect();
        if seen.len() == kinds && items.iter().all(holds) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not all {condition} (kinds {seen:?}): {}\n{}",
            serde_json::to_string_pretty(&items).unwrap(),
            controller.log_text()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn examples_are_served_and_report_status_in_a_real_cluster() {
    let Some((kubeconfig, _plane)) = cluster() else {
        println!(
            "SKIPPED: KUBECONFIG is not set and ../shared/kube/up.sh is not there to start a control plane"
        );
        return;
    };
    KUBECONFIG.set(kubeconfig.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    run(&[
        "apply",
        "--server-side",
        "-f",
        &workspace().join("crds").display().to_string(),
    ]);
    run(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/llmroutes.tollgate.dev",
        "crd/llmproviders.tollgate.dev",
        "crd/virtualkeys.tollgate.dev",
        "crd/budgets.tollgate.dev",
        "crd/mcpservers.tollgate.dev",
        "crd/mcptoolpolicies.tollgate.dev",
    ]);
    let ns = Namespace(format!("tollgate-e2e-{}", std::process::id()));
    run(&["create", "namespace", &ns.0]);
    // Every other example, in a namespace of its own: each object must be accepted by the
    // API server (kubectl apply) and by the controller.
    let examples_ns = Namespace(format!("{}-examples", ns.0));
    run(&["create", "namespace", &examples_ns.0]);

    let (_mock, mock_url) = start_mock("mock-llm", dir.path()).unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    for entry in std::fs::read_dir(workspace().join("examples/quickstart")).unwrap() {
        let entry = entry.unwrap();
        let text = std::fs::read_to_string(entry.path()).unwrap();
        std::fs::write(
            manifests.join(entry.file_name()),
            text.replace("http://127.0.0.1:9000", &mock_url),
        )
        .unwrap();
    }
    // A budget over every key of the namespace: its spend must show in `kubectl get`.
    std::fs::write(
        manifests.join("budget.yaml"),
        "apiVersion: tollgate.dev/v1alpha1\nkind: Budget\nmetadata:\n  name: everyone\n\
         spec:\n  selector: {}\n  limit:\n    usd: 10\n  period: day\n",
    )
    .unwrap();
    // The chart, installed with Helm for this release namespace and the two watched ones. The controller
    // and the dataplane then run here with the chart's own arguments, Secrets,
    // ServiceAccounts and RBAC (pods never run: the control plane has no nodes).
    let chart = Chart::install(&ns.0, &[&ns.0, &examples_ns.0], dir.path());
    let (xds, admin) = (free_port().unwrap(), free_port().unwrap());
    // A replica as the chart runs it: POD_IP makes it advertise its own address.
    let start_replica = |identity: &str, xds: u16, admin: u16| {
        let mut controller = Process::start_with_env(
            identity,
            &bin("tollgate-controller").unwrap(),
            &chart.controller_args(xds, admin),
            &[
                ("KUBECONFIG", chart.controller_kubeconfig.as_str()),
                ("POD_NAMESPACE", ns.0.as_str()),
                ("POD_NAME", identity),
                ("POD_IP", "127.0.0.1"),
            ],
            dir.path(),
        )
        .unwrap();
        controller
            .wait_ready(
                &format!("http://127.0.0.1:{admin}/readyz"),
                Duration::from_secs(60),
            )
            .unwrap();
        controller
    };
    let start_controller = || start_replica("e2e", xds, admin);
    let mut controller = start_controller();
    run(&["apply", "-n", &ns.0, "-f", &manifests.display().to_string()]);

    let (api, dp_admin) = (free_port().unwrap(), free_port().unwrap());
    let mut dataplane = Process::start(
        "dataplane",
        &bin("tollgate-dataplane").unwrap(),
        &chart.dataplane_args(xds, api, dp_admin),
        dir.path(),
    )
    .unwrap();
    dataplane
        .wait_ready(
            &format!("http://127.0.0.1:{dp_admin}/readyz"),
            Duration::from_secs(60),
        )
        .unwrap();

    // Every object Accepted and Programmed by the one dataplane.
    wait_for_condition(
        "llmproviders,llmroutes,virtualkeys,budgets",
        &ns.0,
        "Programmed",
        4,
        Duration::from_secs(90),
        &controller,
    );
    for dir in ["budgets", "mcp", "providers", "routing", "kubernetes"] {
        let path = workspace().join("examples").join(dir);
        run(&[
            "apply",
            "-n",
            &examples_ns.0,
            "-f",
            &path.display().to_string(),
        ]);
    }
    wait_for_condition(
        "llmproviders,llmroutes,virtualkeys,budgets,mcpservers,mcptoolpolicies",
        &examples_ns.0,
        "Accepted",
        6,
        Duration::from_secs(60),
        &controller,
    );
    let (status, body) = chat(api, DEMO_KEY, "gpt-4o");
    assert_eq!(status, 200, "{body}\n{}", dataplane.log_text());

    // The leader writes the spend to the Budget's status within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let budget: Value = serde_json::from_str(&run(&[
            "get", "budget", "everyone", "-n", &ns.0, "-o", "json",
        ]))
        .unwrap();
        let spent = budget["status"]["spent"]["usd"].as_f64().unwrap_or(0.0);
        if spent > 0.0 {
            assert_eq!(budget["status"]["state"], "Ok");
            assert!(budget["status"]["remaining"]["usd"].as_f64().unwrap() < 10.0);
            println!("{}", run(&["get", "budgets", "-n", &ns.0]));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no spend in the Budget's status: {}\n{}",
            serde_json::to_string_pretty(&budget["status"]).unwrap(),
            controller.log_text()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // The ledger survives in the cluster for the next leader, in a place that does not
    // depend on the Lease's.
    let ledger = run(&["get", "usageledger", &ns.0, "-o", "json"]);
    assert!(ledger.contains("budget/"), "{ledger}");
    assert!(
        ledger.contains(&format!("\"keptBy\": \"{}/tollgate-controller\"", ns.0)),
        "{ledger}"
    );
    validation_table_is_judged_as_local_mode_judges_it(&examples_ns.0, &controller);
    retries_on_is_kept_and_honoured(&ns.0, api, &mock_url, &controller);
    key_secrets_are_never_raced_and_deleting_one_revokes_the_key(&ns.0, api, &controller);
    status_comes_within_a_second_and_tells_the_truth(&ns.0, &controller);

    // The last dataplane gone: nobody says what runs, so Programmed is Unknown.
    drop(dataplane);
    let programmed = wait_until(
        "Programmed Unknown without dataplanes",
        Duration::from_secs(20),
        &controller,
        || condition("llmroute", &ns.0, "chat", "Programmed").filter(|c| c["status"] == "Unknown"),
    );
    assert_eq!(programmed["reason"], "NoDataplanes");
    // The chart's RBAC is enough for everything the controller did.
    let log = controller.log_text();
    assert!(
        !log.contains("forbidden") && !log.contains("Forbidden"),
        "the controller was denied something: {log}"
    );

    // The ledger lost (deleted): the next controller restores the spend from the Budget's status and says
    // so, rather than counting from zero.
    let spent = |o: &Value| o["status"]["spent"]["usd"].as_f64().unwrap_or(0.0);
    let budget = |ns: &str| -> Value {
        serde_json::from_str(&run(&["get", "budget", "everyone", "-n", ns, "-o", "json"])).unwrap()
    };
    let before = spent(&budget(&ns.0));
    assert!(before > 0.0);
    controller.terminate().unwrap();
    controller.wait_exit(Duration::from_secs(20)).unwrap();
    run(&["delete", "usageledger", &ns.0]);
    let controller = start_controller();
    let kept = wait_until(
        "SpendKept=False",
        Duration::from_secs(30),
        &controller,
        || condition("budget", &ns.0, "everyone", "SpendKept").filter(|c| c["status"] == "False"),
    );
    assert_eq!(kept["reason"], "LedgerNotFound", "{kept}");
    assert!(
        kept["message"].as_str().unwrap().contains("restored"),
        "{kept}"
    );
    // The restored spend is written back to the ledger and shown, not reset.
    wait_until(
        "the ledger written again",
        Duration::from_secs(20),
        &controller,
        || {
            let out = Command::new(kubectl())
                .args(["--kubeconfig", KUBECONFIG.get().unwrap()])
                .args(["get", "usageledger", &ns.0, "-o", "json"])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .contains("budget/")
                .then_some(())
        },
    );
    assert!(spent(&budget(&ns.0)) >= before, "{}", budget(&ns.0));
    let events = run(&["get", "events", "-n", &ns.0, "-o", "json"]);
    assert!(events.contains("LedgerNotFound"), "no Event: {events}");
    assert!(
        controller
            .log_text()
            .contains("no usage ledger where one was expected"),
        "{}",
        controller.log_text()
    );

    leadership_changes_keep_budgets(
        &ns.0,
        &chart,
        controller,
        (xds, admin),
        &start_replica,
        dir.path(),
    );
}

/// Which replica holds the Lease.
fn lease_holder(ns: &str) -> String {
    run(&[
        "get",
        "lease",
        "tollgate-controller",
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])
}

/// A stand-in for the controller's Service: each connection goes to the first of the
/// replicas, in the order given, that accepts it (so the dataplane's streams reach the
/// first one while it runs, whatever the order they connect in).
fn service(backends: Vec<u16>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let upstream = backends
                .iter()
                .find_map(|port| std::net::TcpStream::connect(("127.0.0.1", *port)).ok());
            let Some(upstream) = upstream else { continue };
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                (upstream, client),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    port
}

/// Two replicas behind a Service and a dataplane: its usage stream reaches the leader
/// (a follower names it), the Lease changes hands at once on SIGTERM and after the lease
/// duration on SIGKILL, and a budget spent before each change stays spent after it.
fn leadership_changes_keep_budgets(
    ns: &str,
    chart: &Chart,
    a: Process,
    (xds_a, admin_a): (u16, u16),
    start_replica: &dyn Fn(&str, u16, u16) -> Process,
    dir: &std::path::Path,
) {
    let (xds_b, admin_b) = (free_port().unwrap(), free_port().unwrap());
    let mut b = start_replica("e2e-b", xds_b, admin_b);
    assert_eq!(lease_holder(ns), "e2e");
    // The dataplane reaches the follower first.
    let svc = service(vec![xds_b, xds_a]);
    let (api, dp_admin) = (free_port().unwrap(), free_port().unwrap());
    let mut dp = Process::start(
        "dataplane-ha",
        &bin("tollgate-dataplane").unwrap(),
        &chart.dataplane_args(svc, api, dp_admin),
        dir,
    )
    .unwrap();
    dp.wait_ready(
        &format!("http://127.0.0.1:{dp_admin}/readyz"),
        Duration::from_secs(60),
    )
    .unwrap();

    // Requests that reserve little: the body's bytes and 8 tokens of output.
    let request =
        r#"{"model":"gpt-4o","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;
    let reserved = request.len() as u64 + 8;
    let chat = |key: &str| {
        let bearer = format!("Bearer {key}");
        http_request_with(
            "POST",
            &format!("http://127.0.0.1:{api}/v1/chat/completions"),
            &[("authorization", bearer.as_str())],
            request,
        )
        .unwrap()
    };
    let (status, body) = chat(DEMO_KEY);
    assert_eq!(status, 200, "{body}\n{}", dp.log_text());
    let per_request = serde_json::from_str::<Value>(&body).unwrap()["usage"]["total_tokens"]
        .as_u64()
        .unwrap();
    // A token budget over one key: eleven such requests fit (the last while exactly one
    // reservation is left).
    let key = "tg-ha-key-0123456789abcdef";
    apply_yaml(
        ns,
        &format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: Budget\nmetadata:\n  name: ha\n\
             spec:\n  selector: {{matchLabels: {{ha: \"true\"}}}}\n  limit: {{tokens: {}}}\n  period: day\n---\n\
             apiVersion: tollgate.dev/v1alpha1\nkind: VirtualKey\nmetadata:\n  name: ha\n  labels: {{ha: \"true\"}}\n\
             spec:\n  secretRef: {{name: ha-key}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata:\n  name: ha-key\n  labels: {{tollgate.dev/credential: \"true\"}}\n\
             stringData:\n  key: {key}\n",
            per_request * 10 + reserved
        ),
    );
    // Asks again while the budget cannot be checked (no leader for a moment) or the key
    // is not served yet; the first definite answer.
    let ask = |log: &Process| {
        wait_until("a definite answer", Duration::from_secs(40), log, || {
            let (status, body) = chat(key);
            (!body.contains("budget_unavailable") && status != 401).then_some((status, body))
        })
    };
    for _ in 0..5 {
        let (status, body) = ask(&dp);
        assert_eq!(status, 200, "{body}\n{}", dp.log_text());
    }
    assert!(
        dp.log_text().contains("connecting to the leader"),
        "the follower did not send the usage stream to the leader: {}",
        dp.log_text()
    );
    let refused = tollgate_tests::harness::Stack::metric(
        &format!("http://127.0.0.1:{admin_b}"),
        "tollgate_usage_streams_refused_total",
        &[],
    )
    .unwrap();
    assert!(refused >= 1.0, "the follower counted no refusal");
    assert!(
        b.log_text().contains("refused a usage stream"),
        "{}",
        b.log_text()
    );

    // SIGTERM: the leader hands over at once.
    a.terminate().unwrap();
    let asked = Instant::now();
    wait_until("e2e-b to lead", Duration::from_secs(10), &b, || {
        (lease_holder(ns) == "e2e-b").then_some(())
    });
    let handover = asked.elapsed();
    println!("the Lease changed hands {handover:?} after SIGTERM");
    assert!(
        handover < Duration::from_secs(2),
        "handover took {handover:?}"
    );
    drop(a);
    // Six of the eleven are left, not eleven.
    let mut admitted = 0;
    loop {
        let (status, body) = ask(&b);
        if status != 200 {
            assert!(body.contains("budget_exceeded"), "{status} {body}");
            break;
        }
        admitted += 1;
        assert!(
            admitted <= 6,
            "the spend was not kept across the handover: {admitted} admitted\n{}",
            b.log_text()
        );
    }
    assert_eq!(admitted, 6, "admitted after the handover");

    // SIGKILL: the old leader back as a follower, the new one killed. The Lease expires,
    // the follower takes over, and the budget stays spent throughout.
    let a = start_replica("e2e", xds_a, admin_a);
    b.kill();
    let killed = Instant::now();
    while lease_holder(ns) != "e2e" {
        let (status, body) = chat(key);
        assert_ne!(
            status, 200,
            "admitted while no leader kept the budget: {body}"
        );
        assert!(
            killed.elapsed() < Duration::from_secs(40),
            "no takeover: {}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    println!(
        "the Lease changed hands {:?} after SIGKILL",
        killed.elapsed()
    );
    let (status, body) = ask(&a);
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("budget_exceeded"), "{body}");
}

/// The validation parity table (`tests/validation/cases.yaml`, which local mode passes in
/// `validation_parity.rs`) applied with kubectl: the API server refuses exactly the invalid
/// objects, naming the same field, and the controller accepts every object it stored.
fn validation_table_is_judged_as_local_mode_judges_it(ns: &str, controller: &Process) {
    let cases = tollgate_tests::validation::cases().unwrap();
    let mut disagreements = vec![];
    let mut stored = vec![];
    for c in &cases {
        let (ok, stderr) =
            kubectl_with_input(&["apply", "-n", ns, "-f", "-"], &c.object.to_string());
        let verdict = if ok { Ok(()) } else { Err(stderr) };
        disagreements.extend(c.disagreement(&verdict, "the API server"));
        if ok {
            stored.push(c);
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} cases disagree:\n{}",
        disagreements.len(),
        cases.len(),
        disagreements.join("\n")
    );
    for c in stored {
        let resource = format!("{}.tollgate.dev", c.kind().to_lowercase());
        let accepted = wait_until(
            &format!("{} {} judged", c.kind(), c.name()),
            Duration::from_secs(20),
            controller,
            || condition(&resource, ns, c.name(), "Accepted"),
        );
        assert_eq!(
            accepted["status"],
            "True",
            "the API server stored {} {}, the controller refused it: {accepted}",
            c.kind(),
            c.name()
        );
    }
}

/// `retries.on` (a key YAML 1.1 reads as a boolean unless quoted) survives kubectl and the
/// API server, and the dataplane retries exactly the failures it lists.
fn retries_on_is_kept_and_honoured(ns: &str, api: u16, mock_url: &str, controller: &Process) {
    // Each on a provider of its own, so that a fault can pick it by the upstream key.
    let route = |name: &str, provider: &str, on: &str| {
        format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: LLMRoute\nmetadata:\n  name: {name}\n\
             spec:\n  match:\n    models: [{name}]\n  targets:\n    - provider: {provider}\n      model: gpt-4o-mini\n\
             \x20 retries:\n    attempts: 2\n    backoff: {{base: 10ms, max: 10ms}}\n    \"on\": [{on}]\n"
        )
    };
    // Quoted, as the example does: kubectl reads YAML 1.1, where a bare `on` is `true`.
    apply_yaml(
        ns,
        &format!(
            "{}---\n{}",
            route("retry-5xx", "openai-primary", "5xx"),
            route("retry-429", "openai-secondary", "\"429\"")
        ),
    );
    for (name, on) in [("retry-5xx", "5xx"), ("retry-429", "429")] {
        let stored: Value =
            serde_json::from_str(&run(&["get", "llmroute", name, "-n", ns, "-o", "json"])).unwrap();
        assert_eq!(
            stored["spec"]["retries"]["on"],
            serde_json::json!([on]),
            "{stored}"
        );
        wait_until(
            &format!("{name} Programmed"),
            Duration::from_secs(20),
            controller,
            || condition("llmroute", ns, name, "Programmed").filter(|c| c["status"] == "True"),
        );
    }
    set_faults(
        mock_url,
        &serde_json::json!([
            {"key": UPSTREAM_KEYS[0], "status": 503, "times": 1},
            {"key": UPSTREAM_KEYS[1], "status": 503, "times": 1},
        ]),
    )
    .unwrap();
    let (status, body) = chat(api, DEMO_KEY, "retry-5xx");
    assert_eq!(status, 200, "a 503 is retried when `on` lists 5xx: {body}");
    let (status, body) = chat(api, DEMO_KEY, "retry-429");
    assert_eq!(
        (status, body.contains("upstream_error")),
        (502, true),
        "a 503 is not retried when `on` lists only 429: {body}"
    );
    set_faults(mock_url, &serde_json::json!([])).unwrap();
}

/// A directory with a VirtualKey before its Secret, applied and deleted 20 times: the
/// controller never makes a Secret of its own, so nothing conflicts. The user's Secret is
/// used as it is, and deleting it revokes the key.
fn key_secrets_are_never_raced_and_deleting_one_revokes_the_key(
    ns: &str,
    api: u16,
    controller: &Process,
) {
    let dir = tempfile::tempdir().unwrap();
    let key = "tg-gitops-key-0123456789abcdef";
    std::fs::write(
        dir.path().join("a-virtualkey.yaml"),
        "apiVersion: tollgate.dev/v1alpha1\nkind: VirtualKey\nmetadata:\n  name: gitops\n\
         spec:\n  secretRef: {name: gitops-key}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b-secret.yaml"),
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: gitops-key\n  labels: {{tollgate.dev/credential: \"true\"}}\n\
             stringData:\n  key: {key}\n"
        ),
    )
    .unwrap();
    let path = dir.path().display().to_string();
    for round in 0..20 {
        run(&["apply", "-n", ns, "-f", &path]);
        if round < 19 {
            run(&["delete", "-n", ns, "-f", &path, "--wait=true"]);
        }
    }
    let secret: Value = serde_json::from_str(&run(&[
        "get",
        "secret",
        "gitops-key",
        "-n",
        ns,
        "-o",
        "json",
    ]))
    .unwrap();
    assert!(
        secret["metadata"]["ownerReferences"].is_null(),
        "the user's Secret is not adopted: {secret}"
    );
    wait_until(
        "the GitOps key served",
        Duration::from_secs(20),
        controller,
        || (chat(api, key, "gpt-4o").0 == 200).then_some(()),
    );
    // Deleting the Secret revokes the key, and no Secret comes back.
    run(&["delete", "secret", "gitops-key", "-n", ns]);
    let revoked = Instant::now();
    wait_until(
        "the key revoked",
        Duration::from_secs(10),
        controller,
        || (chat(api, key, "gpt-4o").0 == 401).then_some(()),
    );
    println!(
        "a deleted key Secret revoked the key in {:?}",
        revoked.elapsed()
    );
    let refs = wait_until(
        "ResolvedRefs False",
        Duration::from_secs(10),
        controller,
        || condition("virtualkey", ns, "gitops", "ResolvedRefs").filter(|c| c["status"] == "False"),
    );
    assert!(
        refs["message"].as_str().unwrap().contains("gitops-key"),
        "{refs}"
    );
    let secrets = run(&["get", "secrets", "-n", ns, "-o", "name"]);
    assert!(!secrets.contains("secret/gitops-key"), "{secrets}");
}

/// A new object that changes nothing served gets its status within a second; a route whose
/// provider is missing is not Programmed, and says why.
fn status_comes_within_a_second_and_tells_the_truth(ns: &str, controller: &Process) {
    let applied = Instant::now();
    apply_yaml(
        ns,
        "apiVersion: tollgate.dev/v1alpha1\nkind: VirtualKey\nmetadata:\n  name: no-secret\n\
         spec:\n  secretRef: {name: nowhere}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: LLMRoute\nmetadata:\n  name: orphan\n\
         spec:\n  match: {models: [orphan]}\n  targets: [{provider: missing}]\n",
    );
    let since_apply = applied.elapsed();
    let seen = Instant::now();
    let refs = wait_until(
        "the new key's status",
        Duration::from_secs(10),
        controller,
        || condition("virtualkey", ns, "no-secret", "ResolvedRefs"),
    );
    let took = seen.elapsed();
    println!(
        "status of a new object {took:?} after kubectl apply returned ({since_apply:?} to apply)"
    );
    assert_eq!(refs["status"], "False");
    assert!(took < Duration::from_secs(1), "status after {took:?}");
    let programmed = wait_until(
        "the orphan's Programmed",
        Duration::from_secs(10),
        controller,
        || {
            condition("llmroute", ns, "orphan", "Programmed").filter(|c| {
                c["message"]
                    .as_str()
                    .is_some_and(|m| m.ends_with("1 of 1 dataplanes"))
            })
        },
    );
    assert_eq!(programmed["status"], "False", "{programmed}");
    assert_eq!(programmed["reason"], "RefNotFound");
    assert!(
        programmed["message"]
            .as_str()
            .unwrap()
            .contains("LLMProvider missing not found"),
        "{programmed}"
    );
}
