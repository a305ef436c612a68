//! The exact Kubernetes API calls of leader election, status writes and Secret creation,
//! checked against a scripted fake of the API (`tower_test`, as kube-rs recommends): each
//! test answers the requests it expects, in order, and fails on any other.

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::coordination::v1::Lease;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;

use super::leader::Elector;
use super::secrets::{Creator, Wanted};
use super::status::{FIELD_MANAGER, Write};
use crate::spend::cluster_store::LedgerStore;

type Handle = mock::Handle<Request<Body>, Response<Body>>;

fn client() -> (kube::Client, Handle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn status_error(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": reason, "reason": reason, "code": code})
}

/// Kubernetes' answer for an object that does not exist.
fn not_found() -> Response<Body> {
    respond(StatusCode::NOT_FOUND, &status_error(404, "NotFound"))
}

/// The next request: method, path and query, content type, and JSON body.
async fn next(
    handle: &mut Handle,
) -> (
    Method,
    String,
    String,
    Value,
    mock::SendResponse<Response<Body>>,
) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("a request in time")
        .expect("a request");
    let method = req.method().clone();
    let uri = req.uri().to_string();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (method, uri, content_type, body, send)
}

fn elector(client: kube::Client, identity: &str) -> Elector {
    Elector {
        api: kube::Api::<Lease>::namespaced(client, "tollgate"),
        name: "tollgate-controller".into(),
        identity: identity.into(),
        duration: Duration::from_secs(15),
        observed: Default::default(),
    }
}

/// The next request, which must be `method` on `path` (with its query): its content type,
/// its JSON body, and where to send the answer.
async fn expect(
    handle: &mut Handle,
    method: Method,
    path: &str,
) -> (String, Value, mock::SendResponse<Response<Body>>) {
    let (m, uri, content_type, body, send) = next(handle).await;
    assert_eq!((m, uri.as_str()), (method, path));
    (content_type, body, send)
}

/// The next request, which must be a GET of `path`, answered that there is no such object.
async fn expect_missing(handle: &mut Handle, path: &str) {
    let (_, _, send) = expect(handle, Method::GET, path).await;
    send.send_response(not_found());
}

#[tokio::test]
async fn a_missing_lease_is_created_and_a_lost_race_is_not_leadership() {
    let (client, mut handle) = client();
    let e = elector(client, "pod-a");
    let run =
        tokio::spawn(async move { (e.try_once().await.unwrap(), e.try_once().await.unwrap()) });

    expect_missing(
        &mut handle,
        "/apis/coordination.k8s.io/v1/namespaces/tollgate/leases/tollgate-controller",
    )
    .await;
    let (_, body, send) = expect(
        &mut handle,
        Method::POST,
        "/apis/coordination.k8s.io/v1/namespaces/tollgate/leases?",
    )
    .await;
    assert_eq!(body["spec"]["holderIdentity"], "pod-a");
    assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
    send.send_response(respond(StatusCode::CREATED, &body));

    // Second round: someone else took it meanwhile and holds it (renewed just now).
    let (_, _, _, _, send) = next(&mut handle).await;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    send.send_response(respond(
        StatusCode::OK,
        &json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "tollgate-controller", "namespace": "tollgate", "resourceVersion": "7"},
                "spec": {"holderIdentity": "pod-b", "leaseDurationSeconds": 15, "renewTime": now}}),
    ));
    assert_eq!(
        run.await.unwrap(),
        (true, false),
        "created, then waits (no write)"
    );
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_with_its_resource_version() {
    let (client, mut handle) = client();
    let e = elector(client, "pod-a");
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "tollgate-controller", "namespace": "tollgate", "resourceVersion": "41"},
            "spec": {"holderIdentity": "pod-b", "leaseDurationSeconds": 1,
                     "renewTime": "2020-01-01T00:00:00.000000Z", "leaseTransitions": 2}});
    // Seen for the first time: however old its renewTime, it is not expired yet (the
    // holder's clock is not this replica's).
    let first = e.clone();
    let run = tokio::spawn(async move { first.try_once().await.unwrap() });
    let (_, _, _, _, send) = next(&mut handle).await;
    send.send_response(respond(StatusCode::OK, &lease));
    assert!(!run.await.unwrap());
    // Unchanged for its duration, by this replica's clock: taken over.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let run = tokio::spawn(async move { e.try_once().await.unwrap() });
    let (_, _, _, _, send) = next(&mut handle).await;
    send.send_response(respond(StatusCode::OK, &lease));
    let (_, body, send) = expect(
        &mut handle,
        Method::PUT,
        "/apis/coordination.k8s.io/v1/namespaces/tollgate/leases/tollgate-controller?",
    )
    .await;
    assert_eq!(
        body["metadata"]["resourceVersion"], "41",
        "the update is conditional"
    );
    assert_eq!(body["spec"]["holderIdentity"], "pod-a");
    assert_eq!(body["spec"]["leaseTransitions"], 3);
    // Another replica won the race: conflict, so not the leader.
    send.send_response(respond(
        StatusCode::CONFLICT,
        &status_error(409, "Conflict"),
    ));
    assert!(!run.await.unwrap());
}

#[tokio::test]
async fn status_is_applied_server_side_and_a_rejection_becomes_an_event() {
    let (client, mut handle) = client();
    let w = Write {
        kind: tollgate_crds::Kind::LlmRoute,
        namespace: "team-a".into(),
        name: "gpt".into(),
        uid: "uid-1".into(),
        status: json!({"observedGeneration": 3, "conditions": []}),
        event: Some(("RefNotFound".into(), "LLMProvider x not found".into())),
    };
    let recorder = kube::runtime::events::Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter {
            controller: "tollgate-controller".into(),
            instance: Some("pod-a".into()),
        },
    );
    let run = tokio::spawn(async move { super::status::write(&client, &recorder, &w).await });
    let (m, uri, content_type, body, send) = next(&mut handle).await;
    assert_eq!(m, Method::PATCH);
    assert_eq!(
        uri,
        format!(
            "/apis/tollgate.dev/v1alpha1/namespaces/team-a/llmroutes/gpt/status?&force=true&fieldManager={FIELD_MANAGER}"
        )
    );
    assert_eq!(content_type, "application/apply-patch+yaml");
    assert_eq!(body["apiVersion"], "tollgate.dev/v1alpha1");
    assert_eq!(body["kind"], "LLMRoute");
    assert_eq!(body["status"]["observedGeneration"], 3);
    assert!(body.get("spec").is_none(), "only the status is applied");
    send.send_response(respond(StatusCode::OK, &body));
    let (_, event, send) = expect(
        &mut handle,
        Method::POST,
        "/apis/events.k8s.io/v1/namespaces/team-a/events?",
    )
    .await;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "RefNotFound");
    assert_eq!(event["note"], "LLMProvider x not found");
    assert_eq!(event["regarding"]["uid"], "uid-1");
    assert_eq!(event["reportingInstance"], "pod-a");
    send.send_response(respond(StatusCode::CREATED, &event));
    assert!(run.await.unwrap());
}

/// The Secret `name` of VirtualKey team-a/app, wanted.
fn wanted(name: &str) -> Wanted {
    Wanted {
        namespace: "team-a".into(),
        secret: name.into(),
        key: "key".into(),
        owner_name: "app".into(),
        owner_uid: "uid-9".into(),
    }
}

#[tokio::test]
async fn a_missing_secret_is_created_once_and_an_existing_one_is_not_an_error() {
    let (client, mut handle) = client();
    let (a, b) = (wanted("app-key"), wanted("other-key"));
    let run = tokio::spawn(async move {
        let mut creator = Creator::default();
        creator.create_missing(&client, vec![a.clone(), b]).await;
        // Asked again at once: nothing is sent (the watch has not caught up yet).
        creator.create_missing(&client, vec![a]).await;
    });
    let (_, body, send) = expect(
        &mut handle,
        Method::POST,
        "/api/v1/namespaces/team-a/secrets?",
    )
    .await;
    assert_eq!(body["metadata"]["name"], "app-key");
    assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-9");
    assert_eq!(body["type"], "Opaque");
    send.send_response(respond(StatusCode::CREATED, &body));
    let (_, _, _, body, send) = next(&mut handle).await;
    assert_eq!(body["metadata"]["name"], "other-key");
    send.send_response(respond(
        StatusCode::CONFLICT,
        &status_error(409, "AlreadyExists"),
    ));
    // A third request would go unanswered and hold the run up.
    tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .expect("no request beyond the two creations")
        .unwrap();
    // No further request was made (the client is gone, or nothing came).
    assert!(matches!(
        tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await,
        Err(_) | Ok(None)
    ));
}

#[tokio::test]
async fn the_ledger_is_created_then_replaced_conditionally_and_a_conflict_is_reported() {
    let (client, mut handle) = client();
    let store = LedgerStore::new(client, "gateway", "tollgate", "tollgate-controller");
    let ledger = crate::spend::ledger::Persisted {
        accounts: [
            ("budget/a/b".to_string(), Default::default()),
            ("rate/a/k".to_string(), Default::default()),
        ]
        .into(),
        sequences: [("dp-1".to_string(), (4, 0))].into(),
    };
    let run = tokio::spawn(async move {
        let loaded = store.load().await.unwrap();
        let first = store.save(&ledger).await;
        let second = store.save(&ledger).await;
        (loaded, first, second)
    });
    // Cluster-scoped: the same place wherever the controller runs.
    expect_missing(
        &mut handle,
        "/apis/tollgate.dev/v1alpha1/usageledgers/gateway",
    )
    .await;
    // Not where earlier versions kept it either.
    expect_missing(
        &mut handle,
        "/api/v1/namespaces/tollgate/configmaps/tollgate-controller-ledger",
    )
    .await;
    let (_, body, send) = expect(
        &mut handle,
        Method::POST,
        "/apis/tollgate.dev/v1alpha1/usageledgers?&fieldManager=tollgate-controller",
    )
    .await;
    assert_eq!(body["kind"], "UsageLedger");
    assert_eq!(body["spec"]["keptBy"], "tollgate/tollgate-controller");
    let saved: Value = serde_json::from_str(body["spec"]["ledger"].as_str().unwrap()).unwrap();
    assert_eq!(saved["sequences"]["dp-1"][0], 4);
    assert!(saved["accounts"].get("budget/a/b").is_some());
    assert!(
        saved["accounts"].get("rate/a/k").is_none(),
        "rate windows are not kept"
    );
    let mut created = body.clone();
    created["metadata"]["resourceVersion"] = json!("5");
    send.send_response(respond(StatusCode::CREATED, &created));
    let (_, body, send) = expect(
        &mut handle,
        Method::PUT,
        "/apis/tollgate.dev/v1alpha1/usageledgers/gateway?&fieldManager=tollgate-controller",
    )
    .await;
    assert_eq!(
        body["metadata"]["resourceVersion"], "5",
        "the write is conditional"
    );
    // Another replica wrote it meanwhile.
    send.send_response(respond(
        StatusCode::CONFLICT,
        &status_error(409, "Conflict"),
    ));
    let (loaded, first, second) = run.await.unwrap();
    assert_eq!(loaded, Default::default());
    assert!(first.is_ok());
    assert!(matches!(
        second,
        Err(crate::spend::cluster_store::SaveError::Conflict)
    ));
}

#[tokio::test]
async fn a_budget_spend_is_applied_with_its_own_field_manager() {
    let (client, mut handle) = client();
    let status =
        json!({"spent": {"usd": 1.5, "tokens": 7}, "remaining": {"usd": 0.5}, "state": "Ok"});
    let sent = status.clone();
    let run = tokio::spawn(async move {
        crate::spend::budget_status::write(&client, "team-a", "b", &sent).await
    });
    let (m, uri, content_type, body, send) = next(&mut handle).await;
    assert_eq!(m, Method::PATCH);
    assert_eq!(
        uri,
        format!(
            "/apis/tollgate.dev/v1alpha1/namespaces/team-a/budgets/b/status?&force=true&fieldManager={}",
            crate::spend::budget_status::FIELD_MANAGER
        )
    );
    assert_ne!(
        crate::spend::budget_status::FIELD_MANAGER,
        FIELD_MANAGER,
        "the conditions are not touched"
    );
    assert_eq!(content_type, "application/apply-patch+yaml");
    assert_eq!(body["kind"], "Budget");
    assert_eq!(body["status"], status);
    send.send_response(respond(StatusCode::OK, &body));
    assert!(run.await.unwrap());
}

#[tokio::test]
async fn the_mcp_session_key_is_read_or_created_and_a_lost_race_reads_the_winner() {
    use super::session_key::get_or_create;
    use k8s_openapi::api::core::v1::Secret;
    let (client, mut handle) = client();
    let api: kube::Api<Secret> = kube::Api::namespaced(client, "tollgate");
    let run = tokio::spawn(async move { get_or_create(&api, "tollgate-controller").await });
    let path = "/api/v1/namespaces/tollgate/secrets/tollgate-controller-mcp-session";
    // Not there: created; another replica created it first, so its key is read.
    let (_, _, send) = expect(&mut handle, Method::GET, path).await;
    send.send_response(not_found());
    let (_, body, send) = expect(
        &mut handle,
        Method::POST,
        "/api/v1/namespaces/tollgate/secrets?",
    )
    .await;
    assert_eq!(body["metadata"]["name"], "tollgate-controller-mcp-session");
    assert_eq!(
        body["data"]["key"].as_str().unwrap().len(),
        44,
        "32 bytes, base64"
    );
    send.send_response(respond(
        StatusCode::CONFLICT,
        &status_error(409, "AlreadyExists"),
    ));
    let (_, _, send) = expect(&mut handle, Method::GET, path).await;
    let winner = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [9u8; 32]);
    send.send_response(respond(
        StatusCode::OK,
        &json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "tollgate-controller-mcp-session", "namespace": "tollgate"},
                "data": {"key": winner}}),
    ));
    let key = tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(key, [9u8; 32]);
}

#[tokio::test]
async fn a_token_review_counts_only_with_the_audience_asked_for() {
    let sa = "system:serviceaccount:tollgate:tollgate-dataplane";
    for (audiences, accepted) in [
        (json!(["tollgate"]), true),
        (json!(["https://kubernetes.default.svc"]), false),
        (json!([]), false),
        (Value::Null, false),
    ] {
        let (client, mut handle) = client();
        let reviewer = crate::auth::TokenReviewer::new(
            client,
            "tollgate",
            &["tollgate/tollgate-dataplane".to_string()],
        );
        let run = tokio::spawn(async move { reviewer.verify("a-projected-token").await });
        let (_, body, send) = expect(
            &mut handle,
            Method::POST,
            "/apis/authentication.k8s.io/v1/tokenreviews?",
        )
        .await;
        assert_eq!(body["spec"]["audiences"], json!(["tollgate"]));
        let mut status = json!({"authenticated": true, "user": {"username": sa}});
        if !audiences.is_null() {
            status["audiences"] = audiences.clone();
        }
        send.send_response(respond(
            StatusCode::CREATED,
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                    "spec": body["spec"], "status": status}),
        ));
        assert_eq!(run.await.unwrap(), accepted, "{audiences}");
    }
}

/// A VirtualKey's report that is accepted but not served (so its status needs no ACK and
/// announces nothing), and its index entry with no status yet.
fn unserved_key(index: &super::source::SharedIndex, name: &str) -> crate::compile::ReportKey {
    use super::source::{ORIGIN, Scope, Watched};
    let o: kube::api::DynamicObject = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "n", "uid": format!("uid-{name}"), "generation": 1},
        "spec": {"secretRef": {"name": name}},
    }))
    .unwrap();
    index.lock().apply(
        &Scope {
            watched: Watched::Tollgate(tollgate_crds::Kind::VirtualKey),
            namespace: None,
        },
        kube::runtime::watcher::Event::Apply(o),
    );
    ("VirtualKey".into(), "n".into(), name.into(), ORIGIN.into())
}

#[tokio::test]
async fn a_round_writes_a_bounded_share_and_a_new_change_goes_before_the_backlog() {
    use crate::compile::{Compiled, Condition, ConditionType, ObjectReport, Reason};
    use std::sync::Arc;
    let (client, mut handle) = client();
    let index = super::source::SharedIndex::new(0);
    let report = |name: &str| ObjectReport {
        kind: "VirtualKey".into(),
        namespace: "n".into(),
        name: name.into(),
        origin: super::source::ORIGIN.into(),
        conditions: vec![Condition::new(
            ConditionType::Accepted,
            true,
            Reason::Accepted,
            "",
        )],
        resource: None,
    };
    let mut compiled = Compiled::default();
    for i in 0..300 {
        let name = format!("k{i:03}");
        let key = unserved_key(&index, &name);
        compiled.report_map.insert(key, Arc::new(report(&name)));
    }
    let writer = super::status::StatusWriter {
        client: client.clone(),
        recorder: kube::runtime::events::Recorder::new(
            client,
            kube::runtime::events::Reporter {
                controller: "tollgate-controller".into(),
                instance: Some("pod-a".into()),
            },
        ),
        index: index.clone(),
        tracker: Default::default(),
        peers: Default::default(),
        identity: "pod-a".into(),
        written: Default::default(),
        ledger_notes: Default::default(),
        planned: None,
    };
    // Answers every status write with what it asked for; the objects written, in order.
    async fn round(
        writer: super::status::StatusWriter,
        snapshot: Arc<Compiled>,
        handle: &mut Handle,
    ) -> (super::status::StatusWriter, Vec<String>) {
        let mut writer = writer;
        let run = tokio::spawn(async move {
            writer.sync(&snapshot).await;
            writer
        });
        let mut written = Vec::new();
        loop {
            let Ok(r) =
                tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await
            else {
                if run.is_finished() {
                    return (run.await.unwrap(), written);
                }
                continue;
            };
            let (req, send) = r.expect("a request");
            assert_eq!(req.method(), Method::PATCH);
            let path = req.uri().path().to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            written.push(path.split('/').nth_back(1).unwrap().to_string());
            send.send_response(respond(StatusCode::OK, &body));
        }
    }
    let first = Arc::new(compiled.clone());
    let (writer, written) = round(writer, first, &mut handle).await;
    assert_eq!(written.len(), 256, "one round writes a bounded share");
    assert!(writer.behind(), "and knows the rest is left");
    // A new object changed meanwhile is written before what is left.
    let key = unserved_key(&index, "new");
    compiled.report_map.insert(key, Arc::new(report("new")));
    let (writer, written) = round(writer, Arc::new(compiled), &mut handle).await;
    assert_eq!(written.first().map(String::as_str), Some("new"));
    assert_eq!(written.len(), 1 + 300 - 256, "the rest, each once");
    assert!(!writer.behind());
}

#[tokio::test]
async fn a_ledger_where_earlier_versions_kept_it_is_read_and_deleted_once_moved() {
    let (client, mut handle) = client();
    let store = LedgerStore::new(client, "gateway", "tollgate", "tollgate-controller");
    let run = tokio::spawn(async move {
        let loaded = store.load().await.unwrap();
        store.save(&loaded).await.unwrap();
        store.save(&loaded).await.unwrap();
        loaded
    });
    expect_missing(
        &mut handle,
        "/apis/tollgate.dev/v1alpha1/usageledgers/gateway",
    )
    .await;
    let (_, _, send) = expect(
        &mut handle,
        Method::GET,
        "/api/v1/namespaces/tollgate/configmaps/tollgate-controller-ledger",
    )
    .await;
    let old = json!({"sequences": {"dp-1": [7, 0]}, "accounts": {}});
    send.send_response(respond(
        StatusCode::OK,
        &json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "tollgate-controller-ledger", "namespace": "tollgate", "resourceVersion": "3"},
                "data": {"ledger.json": old.to_string()}}),
    ));
    let (_, body, send) = expect(
        &mut handle,
        Method::POST,
        "/apis/tollgate.dev/v1alpha1/usageledgers?&fieldManager=tollgate-controller",
    )
    .await;
    let saved: Value = serde_json::from_str(body["spec"]["ledger"].as_str().unwrap()).unwrap();
    assert_eq!(saved["sequences"]["dp-1"][0], 7, "what was counted is kept");
    let mut created = body.clone();
    created["metadata"]["resourceVersion"] = json!("9");
    send.send_response(respond(StatusCode::CREATED, &created));
    // Written in its new place: the old one goes, once.
    let (_, _, send) = expect(
        &mut handle,
        Method::DELETE,
        "/api/v1/namespaces/tollgate/configmaps/tollgate-controller-ledger?",
    )
    .await;
    send.send_response(respond(StatusCode::OK, &status_error(200, "Success")));
    let (_, _, send) = expect(
        &mut handle,
        Method::PUT,
        "/apis/tollgate.dev/v1alpha1/usageledgers/gateway?&fieldManager=tollgate-controller",
    )
    .await;
    send.send_response(respond(StatusCode::OK, &created));
    let loaded = run.await.unwrap();
    assert_eq!(loaded.sequences["dp-1"].0, 7);
}

#[tokio::test]
async fn a_ledger_deleted_meanwhile_is_written_again_and_a_missing_kind_is_named() {
    let (client, mut handle) = client();
    let store = LedgerStore::new(client, "gateway", "tollgate", "tollgate-controller");
    let run = tokio::spawn(async move {
        let loaded = store.load().await.unwrap();
        let first = store.save(&loaded).await;
        let second = store.save(&loaded).await;
        (first, second)
    });
    let (_, _, send) = expect(
        &mut handle,
        Method::GET,
        "/apis/tollgate.dev/v1alpha1/usageledgers/gateway",
    )
    .await;
    send.send_response(respond(
        StatusCode::OK,
        &json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "UsageLedger",
                "metadata": {"name": "gateway", "resourceVersion": "4"},
                "spec": {"ledger": r#"{"accounts": {}, "sequences": {}}"#, "keptBy": "tollgate/tollgate-controller"}}),
    ));
    let (_, _, send) = expect(
        &mut handle,
        Method::PUT,
        "/apis/tollgate.dev/v1alpha1/usageledgers/gateway?&fieldManager=tollgate-controller",
    )
    .await;
    send.send_response(not_found());
    // Created again, not replaced; here the kind itself is gone too.
    let (_, _, send) = expect(
        &mut handle,
        Method::POST,
        "/apis/tollgate.dev/v1alpha1/usageledgers?&fieldManager=tollgate-controller",
    )
    .await;
    send.send_response(not_found());
    let (first, second) = run.await.unwrap();
    let message = |r: Result<(), crate::spend::cluster_store::SaveError>| match r {
        Err(crate::spend::cluster_store::SaveError::Other(m)) => m,
        other => panic!("{other:?}"),
    };
    assert!(message(first).contains("was deleted"));
    assert!(message(second).contains("kind is not installed"));
}
