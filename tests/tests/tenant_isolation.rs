//! Tenants tried as a hostile tenant would (someone who may create objects in their own
//! namespace), through the real binaries: naming a Secret that is not a credential,
//! registering another tenant's key value, and reading the admin pages. Each test shows
//! the attempt refused and the other tenants' traffic untouched.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::Value;
use tollgate_tests::harness::{
    DEMO_KEY, Process, Stack, bin, free_port, http_get, http_request_with,
};

mod common;
use common::*;

/// The controller's report of one object, once it has one.
async fn report(stack: &Stack, kind: &str, namespace: &str, name: &str) -> Value {
    let mut found = Value::Null;
    eventually(Duration::from_secs(10), || {
        let (_, text) = http_get(&format!("{}/status", stack.controller_admin)).unwrap();
        let status: Value = serde_json::from_str(&text).unwrap();
        found = status["objects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["kind"] == kind && o["namespace"] == namespace && o["name"] == name)
            .cloned()
            .unwrap_or(Value::Null);
        let ready = !found.is_null();
        async move { ready }
    })
    .await;
    found
}

fn condition<'a>(report: &'a Value, kind: &str) -> &'a Value {
    report["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap_or(&Value::Null)
}

/// Team X points a provider of its own at the stack's mock-llm, with a Secret that holds
/// a database password and is not marked as a credential.
const NOT_A_CREDENTIAL: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: db-password, namespace: team-x}
stringData: {apiKey: postgres-password-do-not-send}
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMProvider
metadata: {name: exfiltrate, namespace: team-x}
spec:
  type: openai
  endpoint: MOCK/v1
  credentials: [{secretRef: {name: db-password}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata: {name: exfiltrate, namespace: team-x}
spec:
  match: {models: [gpt-4o]}
  targets: [{provider: exfiltrate}]
"#;

#[tokio::test]
async fn a_secret_not_marked_as_a_credential_is_never_sent() {
    let stack = Stack::start().unwrap();
    stack
        .write_manifest(
            "team-x.yaml",
            &NOT_A_CREDENTIAL.replace("MOCK", &stack.mock_url),
        )
        .unwrap();
    stack.write_manifest("team-x-key.yaml", TEAM_X_KEY).unwrap();
    with_logs(&stack, async {
        let provider = report(&stack, "LLMProvider", "team-x", "exfiltrate").await;
        let refs = condition(&provider, "ResolvedRefs");
        assert_eq!(refs["status"], "False", "{provider}");
        let message = refs["message"].as_str().unwrap();
        assert!(
            message.contains("add the label tollgate.dev/credential"),
            "{message}"
        );
        // Team X's requests reach its provider without the password.
        eventually(Duration::from_secs(10), || async {
            let key = Some(X_KEY);
            post(stack.api(), key, &chat_body("gpt-4o", "hi")).await.0 != 401
        })
        .await;
        let sent = serde_json::to_string(&stack.upstream_requests().unwrap()).unwrap();
        assert!(!sent.contains("postgres-password"), "the password went upstream");
        assert!(!stack.logs().contains("postgres-password"));
        // Marked, it is a credential.
        stack
            .write_manifest(
                "team-x.yaml",
                &NOT_A_CREDENTIAL
                    .replace("MOCK", &stack.mock_url)
                    .replace(
                        "{name: db-password, namespace: team-x}",
                        "{name: db-password, namespace: team-x, labels: {tollgate.dev/credential: \"true\"}}",
                    ),
            )
            .unwrap();
        eventually(Duration::from_secs(10), || async {
            let provider = report(&stack, "LLMProvider", "team-x", "exfiltrate").await;
            condition(&provider, "ResolvedRefs")["status"] == "True"
        })
        .await;
    })
    .await;
}

/// A key in team A, and team B registering the same value.
const STOLEN_KEY: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: VirtualKey
metadata: {name: app, namespace: team-a}
spec: {secretRef: {name: app-key}}
---
apiVersion: v1
kind: Secret
metadata: {name: app-key, namespace: team-a, labels: {tollgate.dev/credential: "true"}}
stringData: {key: tg-team-a-app-key-0123456789}
"#;

const THIEF: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: VirtualKey
metadata: {name: thief, namespace: team-b}
spec: {secretRef: {name: thief-key}}
---
apiVersion: v1
kind: Secret
metadata: {name: thief-key, namespace: team-b, labels: {tollgate.dev/credential: "true"}}
stringData: {key: tg-team-a-app-key-0123456789}
"#;

#[tokio::test]
async fn one_key_value_in_two_namespaces_is_refused_in_both() {
    let stack = Stack::start().unwrap();
    stack.write_manifest("team-a.yaml", STOLEN_KEY).unwrap();
    with_logs(&stack, async {
        let key = "tg-team-a-app-key-0123456789";
        // Team A's key works (its namespace has no route: 404, not 401).
        eventually(Duration::from_secs(10), || async {
            post(stack.api(), Some(key), &chat_body("gpt-4o", "hi"))
                .await
                .0
                == 404
        })
        .await;
        stack.write_manifest("team-b.yaml", THIEF).unwrap();
        eventually(Duration::from_secs(10), || async {
            post(stack.api(), Some(key), &chat_body("gpt-4o", "hi"))
                .await
                .0
                == 401
        })
        .await;
        for (ns, name) in [("team-a", "app"), ("team-b", "thief")] {
            let r = report(&stack, "VirtualKey", ns, name).await;
            let accepted = condition(&r, "Accepted");
            assert_eq!(accepted["status"], "False", "{r}");
            assert_eq!(accepted["reason"], "DuplicateKey", "{r}");
            let message = accepted["message"].as_str().unwrap();
            for leak in ["team-a", "team-b", "thief", "tg-team"] {
                assert!(!message.contains(leak), "{message}");
            }
        }
        // Other keys are untouched.
        let (status, _, _) = post(stack.api(), Some(DEMO_KEY), &chat_body("gpt-4o", "hi")).await;
        assert_eq!(status, 200);
        // With the copy gone, team A's key works again.
        stack.remove_manifest("team-b.yaml").unwrap();
        eventually(Duration::from_secs(10), || async {
            post(stack.api(), Some(key), &chat_body("gpt-4o", "hi"))
                .await
                .0
                == 404
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn admin_pages_need_the_admin_token() {
    let mut stack = Stack::start().unwrap();
    let token_file = stack.dir.path().join("admin-token");
    std::fs::write(&token_file, "admin-token-for-tests-0123456789\n").unwrap();
    stack.controller.take().unwrap().kill();
    stack.controller_args = vec![
        "--admin-token-file".into(),
        token_file.display().to_string(),
    ];
    stack.start_controller().unwrap();
    let token_arg = token_file.display().to_string();
    stack
        .add_dataplane_with(&["--admin-token-file", &token_arg])
        .unwrap();
    with_logs(&stack, async {
        for url in [
            format!("{}/status", stack.controller_admin),
            format!("{}/usage", stack.controller_admin),
            format!("{}/config", stack.dataplanes[1].admin),
        ] {
            let (status, _) = http_get(&url).unwrap();
            assert_eq!(status, 401, "{url}");
            let (status, _) = http_request_with(
                "GET",
                &url,
                &[("authorization", "Bearer not-the-token-0123456789")],
                "",
            )
            .unwrap();
            assert_eq!(status, 401, "{url}");
            let (status, _) = http_request_with(
                "GET",
                &url,
                &[("authorization", "Bearer admin-token-for-tests-0123456789")],
                "",
            )
            .unwrap();
            assert_eq!(status, 200, "{url}");
        }
        // Probes and metrics stay open.
        for url in [
            format!("{}/healthz", stack.controller_admin),
            format!("{}/metrics", stack.controller_admin),
            format!("{}/readyz", stack.dataplanes[1].admin),
        ] {
            assert_eq!(http_get(&url).unwrap().0, 200, "{url}");
        }
    })
    .await;
}

/// Team X's providers at a name that resolves to loopback, at the cloud metadata address
/// and at a private address.
const INWARD: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: LLMProvider
metadata: {name: by-name, namespace: team-x}
spec:
  type: openai
  endpoint: http://localhost:PORT/v1
  credentials: [{secretRef: {name: x-upstream}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMProvider
metadata: {name: metadata, namespace: team-x}
spec:
  type: openai
  endpoint: http://169.254.169.254/v1
  credentials: [{secretRef: {name: x-upstream}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMProvider
metadata: {name: private, namespace: team-x}
spec:
  type: openai
  endpoint: http://10.0.0.1:8080/v1
  credentials: [{secretRef: {name: x-upstream}}]
---
apiVersion: v1
kind: Secret
metadata: {name: x-upstream, namespace: team-x, labels: {tollgate.dev/credential: "true"}}
stringData: {apiKey: sk-mock-primary}
"#;

#[tokio::test]
async fn endpoints_inside_the_network_are_refused_unless_allowed() {
    let mut stack = Stack::start().unwrap();
    let port = stack.mock_url.rsplit(':').next().unwrap().to_string();
    let mut manifest = INWARD.replace("PORT", &port);
    // One route per provider.
    for p in ["by-name", "metadata", "private"] {
        manifest.push_str(&format!(
            "---\napiVersion: tollgate.dev/v1alpha1\nkind: LLMRoute\nmetadata: {{name: {p}, namespace: team-x}}\nspec:\n  match: {{models: [{p}]}}\n  targets: [{{provider: {p}, model: gpt-4o}}]\n"
        ));
    }
    stack.write_manifest("team-x.yaml", &manifest).unwrap();
    stack.write_manifest("team-x-key.yaml", TEAM_X_KEY).unwrap();
    // A dataplane that allows loopback to the quick start's namespace only.
    stack
        .add_dataplane_args(&["--egress-allow", "default=127.0.0.0/8"])
        .unwrap();
    // And one that allows nothing more than the default policy.
    stack.add_dataplane_args(&[]).unwrap();
    let (scoped, strict) = (&stack.dataplanes[1], &stack.dataplanes[2]);
    with_logs(&stack, async {
        let x_key = X_KEY;
        // Both dataplanes hold team X's key and routes (until then: 401 or 404).
        for dataplane in [scoped, strict] {
            eventually(Duration::from_secs(10), || async {
                let status = post(&dataplane.api, Some(x_key), &chat_body("by-name", "hi"))
                    .await
                    .0;
                status != 404 && status != 401
            })
            .await;
        }
        let before = stack.upstream_requests().unwrap().len();
        for (api, key, model) in [
            (&strict.api, DEMO_KEY, "gpt-4o"),
            (&strict.api, x_key, "by-name"),
            (&scoped.api, x_key, "by-name"),
            (&scoped.api, x_key, "metadata"),
            (&scoped.api, x_key, "private"),
        ] {
            let started = std::time::Instant::now();
            let (status, _, body) = post(api, Some(key), &chat_body(model, "hi")).await;
            assert_eq!(status, 502, "{model}: {body}");
            assert_eq!(body["error"]["code"], "upstream_unreachable", "{body}");
            let text = body.to_string();
            for leak in [
                "127.0.0.1",
                "localhost",
                "169.254",
                "10.0.0.1",
                port.as_str(),
            ] {
                assert!(!text.contains(leak), "{leak} in {text}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "refused before connecting: {:?}",
                started.elapsed()
            );
        }
        assert_eq!(
            stack.upstream_requests().unwrap().len(),
            before,
            "nothing reached the mock"
        );
        // Allowed for its namespace: the quick start's provider works on the scoped
        // dataplane.
        let (status, _, body) = post(&scoped.api, Some(DEMO_KEY), &chat_body("gpt-4o", "hi")).await;
        assert_eq!(status, 200, "{body}");
    })
    .await;
}

/// Starts a dataplane on `stack`'s controller with `args` besides its addresses and
/// token; answers it and its admin URL.
fn raw_dataplane(stack: &Stack, name: &str, args: &[String]) -> (Process, String) {
    let (api, admin) = (free_port().unwrap(), free_port().unwrap());
    let mut argv: Vec<String> = vec![
        "--listen".into(),
        format!("127.0.0.1:{api}"),
        "--admin-listen".into(),
        format!("127.0.0.1:{admin}"),
        "--token-file".into(),
        stack.token_file.display().to_string(),
    ];
    argv.extend_from_slice(args);
    let p = Process::start(
        name,
        &bin("tollgate-dataplane").unwrap(),
        &argv,
        stack.dir.path(),
    )
    .unwrap();
    (p, format!("http://127.0.0.1:{admin}"))
}

fn ready(admin: &str) -> bool {
    http_get(&format!("{admin}/readyz")).is_ok_and(|(s, _)| s == 200)
}

#[tokio::test]
async fn the_config_stream_is_tls_and_the_controller_is_verified() {
    let mut stack = Stack::start().unwrap();
    let https = format!("https://127.0.0.1:{}", stack.xds_port);
    let tls = stack.dir.path().join("tls");
    // A CA of someone else's: the controller's certificate is not trusted.
    let other = stack.dir.path().join("other-tls");
    let mut maker = Process::start(
        "other-ca",
        &bin("tollgate-controller").unwrap(),
        &[
            "--manifests".into(),
            stack.manifests.display().to_string(),
            "--xds-listen".into(),
            format!("127.0.0.1:{}", free_port().unwrap()),
            "--admin-listen".into(),
            format!("127.0.0.1:{}", free_port().unwrap()),
            "--token-file".into(),
            stack.token_file.display().to_string(),
            "--tls-self-signed".into(),
            other.display().to_string(),
        ],
        stack.dir.path(),
    )
    .unwrap();
    eventually(Duration::from_secs(10), || {
        let made = other.join("ca.crt").exists();
        async move { made }
    })
    .await;
    maker.kill();
    let (mut untrusting, untrusting_admin) = raw_dataplane(
        &stack,
        "untrusting",
        &[
            "--controller".into(),
            https.clone(),
            "--controller-ca".into(),
            other.join("ca.crt").display().to_string(),
        ],
    );
    // Plain http is refused by the dataplane itself, unless asked for.
    let (mut plain, _) = raw_dataplane(
        &stack,
        "plain",
        &[
            "--controller".into(),
            format!("http://127.0.0.1:{}", stack.xds_port),
        ],
    );
    let status = plain.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(!status.success());
    assert!(
        plain.log_text().contains("--plaintext"),
        "{}",
        plain.log_text()
    );
    // Asked for, it gets nowhere: the controller speaks only TLS.
    let (_plain_asked, plain_admin) = raw_dataplane(
        &stack,
        "plain-asked",
        &[
            "--controller".into(),
            format!("http://127.0.0.1:{}", stack.xds_port),
            "--plaintext".into(),
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !ready(&untrusting_admin),
        "a dataplane trusted a controller it cannot verify"
    );
    assert!(!ready(&plain_admin));
    let log = untrusting.log_text();
    // And it says why.
    assert!(log.contains("invalid peer certificate"), "{log}");
    untrusting.kill();

    // Mutual TLS: with --tls-client-ca, a dataplane needs the client certificate too.
    stack.controller.take().unwrap().kill();
    stack.controller_args = vec![
        "--tls-client-ca".into(),
        tls.join("ca.crt").display().to_string(),
    ];
    stack.start_controller().unwrap();
    let ca = tls.join("ca.crt").display().to_string();
    let (_no_cert, no_cert_admin) = raw_dataplane(
        &stack,
        "no-client-cert",
        &[
            "--controller".into(),
            https.clone(),
            "--controller-ca".into(),
            ca.clone(),
        ],
    );
    let (_with_cert, with_cert_admin) = raw_dataplane(
        &stack,
        "client-cert",
        &[
            "--controller".into(),
            https,
            "--controller-ca".into(),
            ca,
            "--client-cert".into(),
            tls.join("client.crt").display().to_string(),
            "--client-key".into(),
            tls.join("client.key").display().to_string(),
        ],
    );
    eventually(Duration::from_secs(15), || {
        let up = ready(&with_cert_admin);
        async move { up }
    })
    .await;
    assert!(
        !ready(&no_cert_admin),
        "mutual TLS let in a dataplane without a certificate"
    );
}

#[test]
fn a_controller_without_tls_settings_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "test-token-0123456789").unwrap();
    let mut p = Process::start(
        "controller",
        &bin("tollgate-controller").unwrap(),
        &[
            "--manifests".into(),
            dir.path().display().to_string(),
            "--xds-listen".into(),
            format!("127.0.0.1:{}", free_port().unwrap()),
            "--admin-listen".into(),
            format!("127.0.0.1:{}", free_port().unwrap()),
            "--token-file".into(),
            token.display().to_string(),
        ],
        dir.path(),
    )
    .unwrap();
    let status = p.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(!status.success());
    assert!(p.log_text().contains("--tls-cert"), "{}", p.log_text());
}
