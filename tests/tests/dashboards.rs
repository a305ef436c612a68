//! The chart's Grafana dashboard and alert rules use only metrics that exist: every
//! metric name in them is on a scrape of the controller or a dataplane after traffic;
//! and `promtool check rules` accepts the rules where promtool is installed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use tollgate_tests::harness::{DEMO_KEY, Stack, http_get, set_faults, workspace};

mod common;
use common::*;

/// A provider that is ejected after two failures, a route to it, and a Budget over the
/// quick start's key with a period and a warn threshold.
const MANIFEST: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: LLMProvider
metadata:
  name: shaky
spec:
  type: openai
  endpoint: MOCK/v1
  credentials:
    - secretRef:
        name: openai-primary-key
  unpricedModels: free
  health:
    consecutiveFailures: 2
    baseEjectionTime: 60s
---
apiVersion: tollgate.dev/v1alpha1
kind: LLMRoute
metadata:
  name: ejectable
spec:
  match:
    models: ["ejectable"]
  targets:
    - provider: shaky
      model: m-bad
  fallbacks:
    - provider: shaky
      model: m-good
  fallbackOn: [5xx]
  retries:
    attempts: 1
    on: [5xx]
---
apiVersion: tollgate.dev/v1alpha1
kind: Budget
metadata:
  name: demo-team
spec:
  selector:
    matchLabels: {team: demo}
  limit:
    usd: 100
    tokens: 10000000
  period: month
  thresholds:
    - {percent: 80, action: warn}
"#;

/// The metric names an expression uses: `tollgate_*` and `gen_ai_*` words.
fn names_in(expr: &str, into: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let word_start = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if word_start && (expr[i..].starts_with("tollgate_") || expr[i..].starts_with("gen_ai_")) {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |n| i + n);
            into.insert(expr[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
}

fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(e)) = m.get("expr") {
                out.push(e.clone());
            }
            m.values().for_each(|v| dashboard_exprs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// Whether `scrape` has `name`: as a series, as a histogram's buckets, or as a label
/// (`sum by (gen_ai_token_type)` names one).
fn scraped(scrape: &str, name: &str) -> bool {
    if scrape.contains(&format!("{{{name}=\"")) || scrape.contains(&format!(",{name}=\"")) {
        return true;
    }
    let base = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    scrape.lines().filter(|l| !l.starts_with('#')).any(|l| {
        [name, &format!("{base}_bucket")]
            .iter()
            .any(|n| l.starts_with(&format!("{n}{{")) || l.starts_with(&format!("{n} ")))
    })
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_use_is_scraped_after_traffic() {
    let stack = Stack::start().unwrap();
    stack
        .write_manifest("observed.yaml", &MANIFEST.replace("MOCK", &stack.mock_url))
        .unwrap();
    with_logs(&stack, async {
        let api = stack.api();
        until_served(api, DEMO_KEY, "ejectable", Duration::from_secs(5)).await;
        // JSON and a stream; a provider failing until it is ejected, with a retry and a
        // fallback; a refusal.
        let (status, _, v) = post(api, Some(DEMO_KEY), &chat_body("gpt-4o", "hi")).await;
        assert_eq!(status, 200, "{v}");
        let body = json!({"model": "gpt-4o-mini", "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "stream please [mock chunks=5]"}]})
        .to_string();
        assert_eq!(post(api, Some(DEMO_KEY), &body).await.0, 200);
        set_faults(&stack.mock_url, &json!([{"model": "m-bad", "status": 503}])).unwrap();
        let admin = stack.dataplanes[0].admin.clone();
        eventually(Duration::from_secs(5), || async {
            let (status, _, v) = post(api, Some(DEMO_KEY), &chat_body("ejectable", "hi")).await;
            assert_eq!(status, 200, "{v}");
            Stack::metric(
                &admin,
                "tollgate_upstream_ejected",
                &[("endpoint", "m-bad")],
            )
            .unwrap()
                == 1.0
        })
        .await;
        assert_eq!(post(api, Some("tg-unknown"), &body).await.0, 401);

        let mut names = BTreeSet::new();
        let dashboard: Value = serde_json::from_str(
            &std::fs::read_to_string(workspace().join("charts/tollgate/dashboards/tollgate.json"))
                .unwrap(),
        )
        .unwrap();
        let mut exprs = Vec::new();
        dashboard_exprs(&dashboard, &mut exprs);
        let rules: Value = serde_yaml::from_str(
            &std::fs::read_to_string(workspace().join("charts/tollgate/rules/tollgate.rules.yaml"))
                .unwrap(),
        )
        .unwrap();
        for group in rules["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                exprs.push(rule["expr"].as_str().unwrap().to_string());
            }
        }
        assert!(exprs.len() > 30, "{} expressions", exprs.len());
        exprs.iter().for_each(|e| names_in(e, &mut names));

        // The controller refreshes its budget gauges once a second.
        let controller = stack.controller_admin.clone();
        let missing = || {
            let scrape = [&controller, &admin]
                .iter()
                .map(|a| http_get(&format!("{a}/metrics")).unwrap().1)
                .collect::<Vec<_>>()
                .join("\n");
            names
                .iter()
                .filter(|n| !scraped(&scrape, n))
                .cloned()
                .collect::<Vec<_>>()
        };
        for _ in 0..50 {
            if missing().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let missing = missing();
        assert!(missing.is_empty(), "not on a scrape: {missing:?}");
    })
    .await;
}

#[test]
fn promtool_accepts_the_rules() {
    let rules = workspace().join("charts/tollgate/rules/tollgate.rules.yaml");
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool not found: .ci/run installs it (apt-get install prometheus)");
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn names_are_read_from_expressions() {
    let mut names = BTreeSet::new();
    names_in(
        r#"histogram_quantile(0.5, sum by (le) (rate(gen_ai_server_time_to_first_token_seconds_bucket[5m]))) / x_tollgate_y + tollgate_requests_total{status="5.."}"#,
        &mut names,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "gen_ai_server_time_to_first_token_seconds_bucket",
            "tollgate_requests_total"
        ]
    );
    let scrape = "# HELP a\ngen_ai_x_bucket{le=\"1\",gen_ai_t=\"i\"} 1\ntollgate_y 0\n";
    assert!(scraped(scrape, "gen_ai_x_bucket") && scraped(scrape, "gen_ai_x_sum"));
    assert!(scraped(scrape, "tollgate_y") && !scraped(scrape, "tollgate_z"));
    assert!(scraped(scrape, "gen_ai_t") && !scraped(scrape, "gen_ai_u"));
}
