//! The leader shows each Budget's spend in its status (`spent`, `remaining`, `periodStart`,
//! `periodEnd`, `state`), so `kubectl get budgets` tells where every budget stands. It is
//! written with its own field manager, beside the conditions the status writer owns, and
//! only when it changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::watch;
use tollgate_crds::Kind;
use tollgate_proto as pb;
use tollgate_proto::quantity::{TOKENS, USD};

use crate::compile::Compiled;
use crate::lock;
use crate::spend::ledger::AccountView;
use crate::spend::usage::Books;
use tollgate_proto::time::now_unix_ms as now_ms;

/// Field manager of the spend fields (the conditions have their own).
pub const FIELD_MANAGER: &str = "tollgate-ledger";

/// The status fields showing `v`.
pub fn spend_status(v: &AccountView) -> Value {
    let usd = |nano: u64| nano as f64 / 1e9;
    let mut remaining = json!({});
    if v.limited & USD != 0 {
        remaining["usd"] = json!(usd(v.remaining.usd));
    }
    if v.limited & TOKENS != 0 {
        remaining["tokens"] = json!(v.remaining.tokens);
    }
    let mut status = json!({
        "spent": {"usd": usd(v.spent.usd), "tokens": v.spent.tokens},
        "remaining": remaining,
        "state": v.state,
    });
    let time = |ms: i64| {
        k8s_openapi::jiff::Timestamp::from_millisecond(ms)
            .map(|t| t.to_string())
            .ok()
    };
    if v.period_end_ms > 0
        && let (Some(start), Some(end)) = (time(v.period_start_ms), time(v.period_end_ms))
    {
        status["periodStart"] = json!(start);
        status["periodEnd"] = json!(end);
    }
    status
}

/// The spend status of every Budget in `snapshot` that differs from what was last written:
/// (namespace, name, status).
pub fn plan(
    snapshot: &Arc<Compiled>,
    books: &Mutex<Books>,
    written: &HashMap<(String, String), Value>,
) -> Vec<(String, String, Value)> {
    let Some(budgets) = snapshot.resources_of(pb::type_url::BUDGET) else {
        return vec![];
    };
    let now = now_ms();
    let mut books = lock(books);
    books.sync(snapshot);
    let mut out = Vec::new();
    for name in budgets.keys() {
        let Some((ns, n)) = name.split_once('/') else {
            continue;
        };
        let Some(view) = books.view(&format!("budget/{name}"), now) else {
            continue;
        };
        let status = spend_status(&view);
        let key = (ns.to_string(), n.to_string());
        if written.get(&key) != Some(&status) {
            out.push((key.0, key.1, status));
        }
    }
    out
}

/// While this replica keeps the books (`keeping` is its term, 0 when not): every
/// `interval`, writes the spend of each Budget that changed.
pub async fn run(
    client: kube::Client,
    books: Arc<Mutex<Books>>,
    snapshots: watch::Receiver<Arc<Compiled>>,
    mut keeping: watch::Receiver<u64>,
    interval: Duration,
) {
    let mut written: HashMap<(String, String), Value> = HashMap::new();
    let mut term = 0;
    loop {
        let Ok(t) = keeping.wait_for(|t| *t != 0).await.map(|t| *t) else {
            return;
        };
        if t != term {
            // A new term: what the status shows may have been written by another leader.
            written.clear();
            term = t;
        }
        let snapshot = snapshots.borrow().clone();
        let writes = plan(&snapshot, &books, &written);
        let client = &client;
        let done: Vec<Option<(String, String, Value)>> = futures_util::stream::iter(writes)
            .map(|(ns, name, status)| async move {
                write(client, &ns, &name, &status)
                    .await
                    .then_some((ns, name, status))
            })
            .buffer_unordered(crate::k8s::status::CONCURRENCY)
            .collect()
            .await;
        for (ns, name, status) in done.into_iter().flatten() {
            written.insert((ns, name), status);
        }
        tokio::time::sleep(interval).await;
    }
}

pub(crate) async fn write(client: &kube::Client, ns: &str, name: &str, status: &Value) -> bool {
    crate::k8s::status::apply_status(client, Kind::Budget, ns, name, status, FIELD_MANAGER).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{Inputs, SourceObject};
    use crate::spend::ledger::Ledger;

    fn budgets(specs: &[(&str, Value)]) -> Arc<Compiled> {
        let objects = specs
            .iter()
            .map(|(name, spec)| SourceObject {
                origin: "b.yaml".into(),
                value: json!({
                    "apiVersion": "tollgate.dev/v1alpha1", "kind": "Budget",
                    "metadata": {"name": name, "namespace": "team-a"}, "spec": spec,
                })
                .into(),
            })
            .collect();
        let inputs = Inputs {
            objects,
            errors: vec![],
        };
        let validator = tollgate_crds::validate::Validator::new();
        Arc::new(crate::compile::compile(&inputs, &validator, "default"))
    }

    fn batch(seq: u64, account: &str, nano_usd: u64, tokens: u64) -> pb::UsageBatch {
        pb::UsageBatch {
            dataplane_id: "dp".into(),
            sequence: seq,
            records: vec![pb::UsageRecord {
                cost_nano_usd: nano_usd,
                input_tokens: tokens,
                requests: 1,
                timestamp_unix_ms: now_ms(),
                charges: vec![pb::Charge {
                    account: account.into(),
                    period_start_unix_ms: 0,
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn every_budget_shows_its_spend_and_only_a_change_is_written_again() {
        let snapshot = budgets(&[
            (
                "usd",
                json!({"selector": {}, "limit": {"usd": 2}, "period": "1h"}),
            ),
            (
                "tokens",
                json!({"selector": {}, "limit": {"tokens": 1000}, "period": "day",
                              "timeZone": "Europe/Paris"}),
            ),
        ]);
        let books = Mutex::new(Books::new(Ledger::new(10_000)));
        let mut written = HashMap::new();
        let writes = plan(&snapshot, &books, &written);
        assert_eq!(writes.len(), 2, "an unused budget shows nothing spent");
        let by_name: HashMap<_, _> = writes.iter().map(|(_, n, s)| (n.as_str(), s)).collect();
        let usd = by_name["usd"];
        assert_eq!(usd["spent"], json!({"usd": 0.0, "tokens": 0}));
        assert_eq!(usd["remaining"], json!({"usd": 2.0}));
        assert_eq!(usd["state"], "Ok");
        assert!(
            usd.get("periodStart").is_none(),
            "a rolling window has no period"
        );
        let tokens = by_name["tokens"];
        assert_eq!(tokens["remaining"], json!({"tokens": 1000}));
        let start = tokens["periodStart"].as_str().unwrap();
        let end = tokens["periodEnd"].as_str().unwrap();
        assert!(start < end, "{start} < {end}");
        for (ns, name, status) in writes {
            assert_eq!(ns, "team-a");
            written.insert((ns, name), status);
        }
        assert!(plan(&snapshot, &books, &written).is_empty());

        // Usage of 1.5 USD: only that budget is written again.
        {
            let mut b = books.lock().unwrap();
            let defs = crate::spend::accounts::ConfigDefs(snapshot.clone());
            b.ledger.apply(
                &batch(1, "budget/team-a/usd", 1_500_000_000, 7),
                &defs,
                now_ms(),
            );
        }
        let writes = plan(&snapshot, &books, &written);
        assert_eq!(writes.len(), 1);
        let (_, name, status) = &writes[0];
        assert_eq!(name, "usd");
        assert_eq!(status["spent"], json!({"usd": 1.5, "tokens": 7}));
        assert_eq!(status["remaining"], json!({"usd": 0.5}));
    }
}
