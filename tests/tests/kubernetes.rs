//! Kubernetes mode against a fake API server (tests/src/fake_kube.rs): the real controller
//! binary reads a kubeconfig pointing at it, real dataplanes connect to the controller, and
//! mock-llm answers. The tests apply objects to the fake and read back what the controller
//! wrote: statuses, Secrets, Events, the Lease.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tollgate_tests::fake_kube::{FakeApi, Running};
use tollgate_tests::harness::{
    Dataplane, Process, UPSTREAM_KEYS, bin, controller_ca, controller_tls, free_port, http_request,
    http_request_with, start_dataplane, start_mock, start_ready_with_env,
};

const TG: &str = "apis/tollgate.dev/v1alpha1";
const CORE: &str = "api/v1";

struct Cluster {
    fake: Running,
    dir: tempfile::TempDir,
    _mock: Process,
    mock_url: String,
    token_file: PathBuf,
}

struct Controller {
    process: Process,
    xds: u16,
    admin: String,
}

impl Cluster {
    fn start(listeners: usize) -> Self {
        let fake = Running::start(listeners).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (mock, mock_url) = start_mock("mock-llm", dir.path()).unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "kube-test-token\n").unwrap();
        Self {
            fake,
            dir,
            _mock: mock,
            mock_url,
            token_file,
        }
    }

    fn api(&self) -> &FakeApi {
        &self.fake.api
    }

    fn controller(&self, identity: &str, listener: usize, extra: &[&str]) -> Controller {
        let kubeconfig =
            FakeApi::kubeconfig(self.dir.path(), identity, self.fake.addrs[listener]).unwrap();
        let kubeconfig = kubeconfig.display().to_string();
        let mut ports = (0, 0);
        let process = start_ready_with_env(
            identity,
            &bin("tollgate-controller").unwrap(),
            &[("KUBECONFIG", kubeconfig.as_str())],
            self.dir.path(),
            || {
                ports = (free_port()?, free_port()?);
                let mut argv: Vec<String> = vec![
                    "--xds-listen".into(),
                    format!("127.0.0.1:{}", ports.0),
                    "--admin-listen".into(),
                    format!("127.0.0.1:{}", ports.1),
                    "--identity".into(),
                    identity.into(),
                    "--lease-namespace".into(),
                    "tollgate".into(),
                    "--lease-duration".into(),
                    "3s".into(),
                ];
                argv.extend(extra.iter().map(|s| s.to_string()));
                argv.extend(controller_tls(self.dir.path()));
                Ok((argv, format!("http://127.0.0.1:{}/readyz", ports.1)))
            },
        )
        .unwrap();
        Controller {
            process,
            xds: ports.0,
            admin: format!("http://127.0.0.1:{}", ports.1),
        }
    }

    fn dataplane(&self, name: &str, xds: u16, token_file: &Path) -> Dataplane {
        start_dataplane(name, xds, token_file, self.dir.path()).unwrap()
    }

    /// A provider (with its Secret) and a route to it, in namespace `ns`.
    fn apply_provider_and_route(&self, ns: &str, api_key: &str) {
        self.api().apply(
            CORE,
            "secrets",
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "openai-key", "namespace": ns, "labels": {"tollgate.dev/credential": "true"}},
                   "data": {"apiKey": b64(api_key)}}),
        );
        self.api().apply(
            TG,
            "llmproviders",
            json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMProvider",
                   "metadata": {"name": "openai", "namespace": ns},
                   "spec": {"type": "openai", "endpoint": format!("{}/v1", self.mock_url),
                            "credentials": [{"secretRef": {"name": "openai-key"}}]}}),
        );
        self.api().apply(
            TG,
            "llmroutes",
            json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMRoute",
                   "metadata": {"name": "gpt", "namespace": ns},
                   "spec": {"match": {"models": ["gpt-4o"]},
                            "targets": [{"provider": "openai"}]}}),
        );
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                out += &format!(
                    "--- {}\n{}\n",
                    entry.path().display(),
                    std::fs::read_to_string(entry.path()).unwrap_or_default()
                );
            }
        }
        out
    }

    /// Waits until `f` returns Some, or fails with every process's log.
    fn wait<T>(&self, what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The election Lease, once `identity` holds it.
    fn wait_leader(&self, identity: &str, within: Duration) -> Value {
        self.wait(&format!("{identity} to lead"), within, || {
            self.api()
                .get(
                    "apis/coordination.k8s.io/v1",
                    "leases",
                    "tollgate",
                    "tollgate-controller",
                )
                .filter(|l| l["spec"]["holderIdentity"] == identity)
        })
    }

    fn condition(&self, resource: &str, ns: &str, name: &str, type_: &str) -> Option<Value> {
        let o = self.api().get(TG, resource, ns, name)?;
        o["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)
            .cloned()
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn chat(api: &str, key: &str, model: &str) -> (u16, String) {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let bearer = format!("Bearer {key}");
    http_request_with(
        "POST",
        &format!("{api}/chat/completions"),
        &[("authorization", bearer.as_str())],
        &body,
    )
    .unwrap()
}

#[test]
fn status_secrets_and_events_tell_what_the_dataplanes_run() {
    let c = Cluster::start(1);
    c.apply_provider_and_route("team-a", UPSTREAM_KEYS[0]);
    // A route to a provider that does not exist, and a VirtualKey whose Secret does not.
    c.api().apply(
        TG,
        "llmroutes",
        json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMRoute",
               "metadata": {"name": "orphan", "namespace": "team-a"},
               "spec": {"match": {"models": ["other"]}, "targets": [{"provider": "missing"}]}}),
    );
    c.api().apply(
        TG,
        "virtualkeys",
        json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "VirtualKey",
               "metadata": {"name": "app", "namespace": "team-a"},
               "spec": {"secretRef": {"name": "app-key"}, "generateSecret": true}}),
    );
    let ctl = c.controller(
        "controller-a",
        0,
        &["--token-file", &c.token_file.display().to_string()],
    );

    // The missing Secret is created, owned by its VirtualKey, with a fresh key.
    let secret = c.wait("the VirtualKey's Secret", Duration::from_secs(20), || {
        c.api().get(CORE, "secrets", "team-a", "app-key")
    });
    let vk = c.api().get(TG, "virtualkeys", "team-a", "app").unwrap();
    let owner = &secret["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "VirtualKey");
    assert_eq!(owner["uid"], vk["metadata"]["uid"]);
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["key"].as_str().unwrap())
        .unwrap();
    let key = String::from_utf8(key).unwrap();
    assert!(key.starts_with("tg-") && key.len() > 40, "{key}");

    // Accepted and resolved; Programmed is Unknown while no dataplane runs it.
    let programmed = c.wait("the route's status", Duration::from_secs(20), || {
        c.condition("llmroutes", "team-a", "gpt", "Programmed")
    });
    assert_eq!(programmed["status"], "Unknown");
    assert_eq!(programmed["reason"], "NoDataplanes");
    assert_eq!(programmed["message"], "applied by 0 of 0 dataplanes");
    let route = c.api().get(TG, "llmroutes", "team-a", "gpt").unwrap();
    assert_eq!(route["status"]["observedGeneration"], 1);
    assert_eq!(
        c.condition("llmroutes", "team-a", "gpt", "Accepted")
            .unwrap()["status"],
        "True"
    );
    // Statuses are written concurrently: the orphan's may land a moment later.
    let refs = c.wait("the orphan route's status", Duration::from_secs(20), || {
        c.condition("llmroutes", "team-a", "orphan", "ResolvedRefs")
    });
    assert_eq!(refs["status"], "False");
    assert_eq!(refs["reason"], "RefNotFound");
    assert_eq!(refs["message"], "LLMProvider missing not found");

    // A dataplane ACKs: Programmed, with the count.
    let dp = c.dataplane("dataplane-1", ctl.xds, &c.token_file);
    let programmed = c.wait("Programmed=True", Duration::from_secs(20), || {
        c.condition("llmroutes", "team-a", "gpt", "Programmed")
            .filter(|p| p["status"] == "True")
    });
    assert_eq!(programmed["message"], "applied by 1 of 1 dataplanes");
    // The route without its provider is served (it answers 503) but not Programmed.
    let orphan = c.wait("the orphan's Programmed", Duration::from_secs(20), || {
        c.condition("llmroutes", "team-a", "orphan", "Programmed")
            .filter(|p| {
                p["message"]
                    .as_str()
                    .unwrap_or("")
                    .ends_with("1 of 1 dataplanes")
            })
    });
    assert_eq!(orphan["status"], "False");
    assert_eq!(orphan["reason"], "RefNotFound");
    assert_eq!(
        orphan["message"],
        "LLMProvider missing not found; applied by 1 of 1 dataplanes"
    );
    c.wait("the VirtualKey programmed", Duration::from_secs(20), || {
        c.condition("virtualkeys", "team-a", "app", "Programmed")
            .filter(|p| p["status"] == "True")
    });
    let (status, body) = chat(&dp.api, &key, "gpt-4o");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Mock reply to: hi"), "{body}");

    // An Event says why the orphan route is not resolved.
    let events = c.wait(
        "an Event for the orphan route",
        Duration::from_secs(20),
        || {
            let events: Vec<Value> = c
                .api()
                .list("apis/events.k8s.io/v1", "events")
                .into_iter()
                .filter(|e| e["regarding"]["name"] == "orphan")
                .collect();
            (!events.is_empty()).then_some(events)
        },
    );
    assert_eq!(events[0]["type"], "Warning");
    assert_eq!(events[0]["reason"], "RefNotFound");
    assert_eq!(events[0]["note"], "LLMProvider missing not found");

    // A provider the dataplane refuses (a key that cannot be sent as a header): the NACK
    // shows on the object, and the dataplane keeps serving the rest.
    c.api().apply(
        CORE,
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "bad-key", "namespace": "team-a", "labels": {"tollgate.dev/credential": "true"}},
               "data": {"apiKey": b64("sk-bad\u{1}key")}}),
    );
    c.api().apply(
        TG,
        "llmproviders",
        json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMProvider",
               "metadata": {"name": "broken", "namespace": "team-a"},
               "spec": {"type": "openai", "endpoint": format!("{}/v1", c.mock_url),
                        "credentials": [{"secretRef": {"name": "bad-key"}}]}}),
    );
    let nack = c.wait("the NACK on the object", Duration::from_secs(20), || {
        c.condition("llmproviders", "team-a", "broken", "Programmed")
            .filter(|p| p["reason"] == "Rejected")
    });
    let message = nack["message"].as_str().unwrap();
    assert!(
        message.starts_with("applied by 0 of 1 dataplanes; dataplane dataplane-1:"),
        "{message}"
    );
    assert!(
        message.contains("cannot be sent as an HTTP header"),
        "{message}"
    );
    assert_eq!(chat(&dp.api, &key, "gpt-4o").0, 200);

    // A spec change: a new generation, observed.
    c.api().apply(
        TG,
        "llmroutes",
        json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMRoute",
               "metadata": {"name": "gpt", "namespace": "team-a"},
               "spec": {"match": {"models": ["gpt-4o", "gpt-4o-mini"]},
                        "targets": [{"provider": "openai"}]}}),
    );
    c.wait("observedGeneration 2", Duration::from_secs(20), || {
        let r = c.api().get(TG, "llmroutes", "team-a", "gpt")?;
        (r["status"]["observedGeneration"] == 2
            && c.condition("llmroutes", "team-a", "gpt", "Programmed")?["status"] == "True")
            .then_some(())
    });

    // The key appears nowhere but in its Secret: not in status, Events or the logs.
    let statuses = serde_json::to_string(&c.api().list(TG, "virtualkeys")).unwrap();
    let events = serde_json::to_string(&c.api().list("apis/events.k8s.io/v1", "events")).unwrap();
    assert!(!statuses.contains(&key) && !events.contains(&key));
    assert!(!c.logs().contains(&key), "the key is in a log");
    let (_, admin_status) = http_request("GET", &format!("{}/status", ctl.admin), "").unwrap();
    assert!(!admin_status.contains(&key));
    drop(dp);
    drop(ctl);
}

#[test]
fn only_the_leader_writes_and_a_successor_takes_over() {
    let c = Cluster::start(2);
    c.apply_provider_and_route("team-b", UPSTREAM_KEYS[0]);
    let token = c.token_file.display().to_string();
    let a = c.controller("controller-a", 0, &["--token-file", &token]);
    // The only replica running leads.
    c.wait_leader("controller-a", Duration::from_secs(20));
    let b = c.controller("controller-b", 1, &["--token-file", &token]);

    // Both serve the config stream, and the leader counts the follower's dataplanes too.
    let dp = c.dataplane("dataplane-b", b.xds, &c.token_file);
    let _ = &dp.process;
    let programmed = c.wait(
        "the follower's dataplane counted",
        Duration::from_secs(20),
        || {
            c.condition("llmroutes", "team-b", "gpt", "Programmed")
                .filter(|p| p["status"] == "True")
        },
    );
    assert_eq!(programmed["message"], "applied by 1 of 1 dataplanes");
    let dp_a = c.dataplane("dataplane-a", a.xds, &c.token_file);
    let _ = &dp_a.process;
    c.wait("both dataplanes counted", Duration::from_secs(20), || {
        c.condition("llmroutes", "team-b", "gpt", "Programmed")
            .filter(|p| p["message"] == "applied by 2 of 2 dataplanes" && p["status"] == "True")
    });
    std::thread::sleep(Duration::from_secs(1));
    let writes = |listener: usize| {
        c.api()
            .requests()
            .iter()
            .filter(|r| r.listener == listener && r.path.ends_with("/status"))
            .count()
    };
    assert!(writes(0) > 0, "the leader wrote no status");
    assert_eq!(writes(1), 0, "the follower wrote status");
    // Each replica published its dataplanes' ACKs.
    let reports: Vec<Value> = c
        .api()
        .list("api/v1", "configmaps")
        .into_iter()
        .filter(|cm| !cm["metadata"]["labels"]["tollgate.dev/acks-for"].is_null())
        .collect();
    assert_eq!(reports.len(), 2, "{reports:?}");

    // The leader stops: it releases the Lease, and the follower takes over at once.
    a.process.terminate().unwrap();
    let lease = c.wait_leader("controller-b", Duration::from_secs(10));
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    c.api().apply(
        TG,
        "llmroutes",
        json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMRoute",
               "metadata": {"name": "gpt", "namespace": "team-b"},
               "spec": {"match": {"models": ["gpt-4o", "gpt-4.1"]},
                        "targets": [{"provider": "openai"}]}}),
    );
    c.wait(
        "the new leader's status write",
        Duration::from_secs(20),
        || {
            let r = c.api().get(TG, "llmroutes", "team-b", "gpt")?;
            (r["status"]["observedGeneration"] == 2
                && c.condition("llmroutes", "team-b", "gpt", "Programmed")?["message"]
                    == "applied by 1 of 1 dataplanes")
                .then_some(())
        },
    );
    assert!(writes(1) > 0);
    // The stopped replica took its report with it.
    let names: Vec<Value> = c
        .api()
        .list("api/v1", "configmaps")
        .iter()
        .map(|cm| cm["metadata"]["name"].clone())
        .collect();
    assert_eq!(names, [json!("tollgate-controller-acks-controller-b")]);
    drop(b);
}

#[test]
fn dataplanes_authenticate_with_service_account_tokens() {
    let c = Cluster::start(1);
    c.apply_provider_and_route("team-c", UPSTREAM_KEYS[0]);
    c.api().add_token(
        "sa-token-good",
        "system:serviceaccount:tollgate:tollgate-dataplane",
    );
    c.api().add_token(
        "sa-token-other",
        "system:serviceaccount:tollgate:someone-else",
    );
    let ctl = c.controller(
        "controller-a",
        0,
        &[
            "--dataplane-service-accounts",
            "tollgate/tollgate-dataplane",
            "--token-audience",
            "tollgate",
        ],
    );
    let good = c.dir.path().join("good-token");
    std::fs::write(&good, "sa-token-good").unwrap();
    let dp = c.dataplane("dataplane-sa", ctl.xds, &good);
    let _ = &dp.process;
    // A token of another ServiceAccount, and one the API does not know: never ready.
    for (name, token) in [
        ("dataplane-other", "sa-token-other"),
        ("dataplane-forged", "forged"),
    ] {
        let file = c.dir.path().join(name);
        std::fs::write(&file, token).unwrap();
        let (api, admin) = (free_port().unwrap(), free_port().unwrap());
        let mut p = Process::start(
            name,
            &bin("tollgate-dataplane").unwrap(),
            &[
                "--controller".into(),
                format!("https://127.0.0.1:{}", ctl.xds),
                "--controller-ca".into(),
                controller_ca(c.dir.path()),
                "--listen".into(),
                format!("127.0.0.1:{api}"),
                "--admin-listen".into(),
                format!("127.0.0.1:{admin}"),
                "--token-file".into(),
                file.display().to_string(),
            ],
            c.dir.path(),
        )
        .unwrap();
        assert!(
            p.wait_ready(
                &format!("http://127.0.0.1:{admin}/readyz"),
                Duration::from_secs(3)
            )
            .is_err(),
            "{name} got a config"
        );
        assert!(
            p.log_text().contains("Unauthenticated") || p.log_text().contains("dataplane token"),
            "{}",
            p.log_text()
        );
    }
    let reviews = c
        .api()
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/tokenreviews"))
        .count();
    assert!(reviews >= 2, "TokenReviews: {reviews}");
}

#[test]
fn budget_spend_shows_in_status_and_a_new_leader_counts_on_exactly() {
    let c = Cluster::start(2);
    c.apply_provider_and_route("team-c", UPSTREAM_KEYS[0]);
    let key = "tg-budget-test-key-0123456789";
    c.api().apply(
        CORE,
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "app-key", "namespace": "team-c", "labels": {"tollgate.dev/credential": "true"}},
               "data": {"key": b64(key)}}),
    );
    c.api().apply(
        TG,
        "virtualkeys",
        json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "VirtualKey",
               "metadata": {"name": "app", "namespace": "team-c"},
               "spec": {"secretRef": {"name": "app-key"}}}),
    );
    c.api().apply(
        TG,
        "budgets",
        json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "Budget",
               "metadata": {"name": "team", "namespace": "team-c"},
               "spec": {"selector": {}, "limit": {"usd": 10}, "period": "day"}}),
    );
    let token = c.token_file.display().to_string();
    let a = c.controller("controller-a", 0, &["--token-file", &token]);
    c.wait_leader("controller-a", Duration::from_secs(20));
    let b = c.controller("controller-b", 1, &["--token-file", &token]);
    // Shown before anything is spent, next to the conditions the other writer owns.
    let budget = c.wait("the Budget's spend", Duration::from_secs(20), || {
        c.api()
            .get(TG, "budgets", "team-c", "team")
            .filter(|b| b["status"]["spent"]["usd"].is_number())
    });
    assert_eq!(budget["status"]["state"], "Ok");
    assert_eq!(budget["status"]["remaining"]["usd"], 10.0);
    assert!(budget["status"]["periodEnd"].is_string(), "{budget}");
    c.wait("the Budget's conditions", Duration::from_secs(20), || {
        c.condition("budgets", "team-c", "team", "Accepted")
    });

    // Three requests, each reporting the same usage upstream.
    let tokens_of = |api: &str| {
        let (status, body) = chat(api, key, "gpt-4o");
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["usage"]["total_tokens"].as_u64().unwrap()
    };
    let shown = |tokens: u64| {
        c.wait(
            "the spend of every request",
            Duration::from_secs(20),
            || {
                let s = &c.api().get(TG, "budgets", "team-c", "team")?["status"]["spent"];
                let shown = s["tokens"].as_u64()?;
                assert!(shown <= tokens, "{shown} tokens shown, {tokens} used");
                (shown == tokens).then(|| s["usd"].as_f64().unwrap())
            },
        )
    };
    let dp_a = c.dataplane("dataplane-a", a.xds, &c.token_file);
    let per_request = tokens_of(&dp_a.api);
    assert!(per_request > 0);
    for _ in 0..2 {
        assert_eq!(tokens_of(&dp_a.api), per_request);
    }
    let three = shown(3 * per_request);
    assert!(three > 0.0);
    // Cluster-scoped, named by --ledger-name, not beside the Lease.
    let ledger = c.wait("the UsageLedger", Duration::from_secs(20), || {
        c.api().get(TG, "usageledgers", "", "tollgate")
    });
    assert_eq!(ledger["spec"]["keptBy"], "tollgate/tollgate-controller");
    assert!(
        ledger["spec"]["ledger"]
            .as_str()
            .unwrap()
            .contains("budget/team-c/team"),
        "{ledger}"
    );

    // The leader stops; the follower takes over, loads the ledger, and counts on.
    drop(dp_a);
    a.process.terminate().unwrap();
    c.wait_leader("controller-b", Duration::from_secs(10));
    let dp_b = c.dataplane("dataplane-b", b.xds, &c.token_file);
    for _ in 0..3 {
        assert_eq!(tokens_of(&dp_b.api), per_request);
    }
    // Nothing lost, nothing counted twice.
    let six = shown(6 * per_request);
    assert!((six - 2.0 * three).abs() < 1e-9, "usd: {three} then {six}");
    drop(b);
}

#[test]
fn an_object_that_changes_nothing_served_gets_its_status_at_once() {
    let c = Cluster::start(1);
    c.apply_provider_and_route("team-a", UPSTREAM_KEYS[0]);
    let _ctl = c.controller(
        "controller-a",
        0,
        &["--token-file", &c.token_file.display().to_string()],
    );
    c.wait_leader("controller-a", Duration::from_secs(20));
    c.wait("the route's status", Duration::from_secs(20), || {
        c.condition("llmroutes", "team-a", "gpt", "Accepted")
    });
    // Once the writer has nothing left to write (a round after the first)...
    std::thread::sleep(Duration::from_secs(3));
    // ...an invalid route, which is not served: the served config does not change, its
    // status does.
    let applied = Instant::now();
    c.api().apply(
        TG,
        "llmroutes",
        json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "LLMRoute",
               "metadata": {"name": "broken", "namespace": "team-a"},
               "spec": {"match": {"models": ["x"]}, "strategy": "bogus",
                        "targets": [{"provider": "openai"}]}}),
    );
    let accepted = c.wait(
        "the invalid route's status",
        Duration::from_secs(20),
        || c.condition("llmroutes", "team-a", "broken", "Accepted"),
    );
    assert_eq!(accepted["status"], "False", "{accepted}");
    assert!(
        applied.elapsed() < Duration::from_secs(3),
        "status after {:?}",
        applied.elapsed()
    );
}
