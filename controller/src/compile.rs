//! Turns the objects read from a source into protocol resources, one per valid object, and
//! a report of every object's conditions. Pure: no I/O, no clock, so every rule about what
//! is accepted, resolved and served is tested without a cluster or a dataplane.

use std::collections::BTreeMap;

/// The compiler's maps hash with foldhash, seeded per process: their keys are object names
/// and namespaces, which only callers allowed to write the config choose, and SipHash took
/// a twentieth of a 100,000-key start.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
use std::sync::Arc;

use base64::Engine;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tollgate_crds::common::SecretKeyRef;
use tollgate_crds::validate::{Validator, join_errors};
use tollgate_crds::{API_VERSION, Kind};
use tollgate_crds::{budget, mcp, provider, route, virtual_key};
use tollgate_proto as pb;
use tollgate_proto::resource::Body;
use tollgate_proto::time::{parse_duration, parse_rfc3339_unix};

use crate::objects::{Inputs, SourceError, SourceObject};

mod incremental;
pub use incremental::{Change, Compiler, GroupInput, ReportKey};

/// Key of a provider's API key inside its Secret when `secretRef.key` is not given.
pub const PROVIDER_SECRET_KEY: &str = "apiKey";
/// Key of a virtual key inside its Secret when `secretRef.key` is not given.
pub const VIRTUAL_KEY_SECRET_KEY: &str = "key";

pub type ResourceMap = imbl::OrdMap<String, Arc<pb::Resource>>;

/// The compiled config: resources by type URL and name, and a report per object. Its maps
/// share their unchanged parts with the previous result, so keeping both costs only what
/// changed.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    pub resources: BTreeMap<&'static str, ResourceMap>,
    /// Every object's report, by kind, namespace, name and origin.
    pub report_map: imbl::OrdMap<ReportKey, Arc<ObjectReport>>,
    pub source_errors: Vec<SourceError>,
    /// Identifies the whole config: changes when any resource does.
    pub version: String,
    /// Changes when any object's conditions do, served or not (a new invalid object, a
    /// key whose Secret went missing): the status writer's cue.
    pub reports_version: String,
    /// The W3C trace context of the compile that made it, when that was traced: pushes
    /// of it continue its trace.
    pub trace: Option<String>,
}

impl Compiled {
    pub fn resources_of(&self, type_url: &str) -> Option<&ResourceMap> {
        self.resources.get(type_url)
    }

    pub fn resource_count(&self) -> usize {
        self.resources.values().map(imbl::OrdMap::len).sum()
    }

    /// Every object's report, by kind, namespace, name and origin.
    pub fn reports(&self) -> impl Iterator<Item = &ObjectReport> {
        self.report_map.values().map(|r| &**r)
    }
}

/// The state of one object as the compiler sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ObjectReport {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub origin: String,
    pub conditions: Vec<Condition>,
    /// The protocol resource this object became, when it is served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<ServedAs>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServedAs {
    pub type_url: &'static str,
    pub name: String,
    pub version: String,
}

/// An enum of names shown as they are spelled (in a status, a log line, an Event).
macro_rules! named {
    ($(#[$meta:meta])* pub enum $t:ident { $($v:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
        pub enum $t {
            $($v),*
        }

        impl $t {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$v => stringify!($v),)*
                }
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

named! {
    /// What a condition is about.
    pub enum ConditionType {
        Accepted,
        ResolvedRefs,
        Reachable,
        PricesKnown,
        Programmed,
        SpendKept,
    }
}

named! {
    /// Why a condition is as it is, as its `reason` shows it (grouped by the condition
    /// that gives it).
    pub enum Reason {
        // Accepted
        Accepted,
        Invalid,
        Duplicate,
        KeyTooShort,
        DuplicateKey,
        // ResolvedRefs
        ResolvedRefs,
        RefNotFound,
        // Reachable
        Reachable,
        Shadowed,
        // PricesKnown
        PricesKnown,
        NoPrice,
        ModelFromRequest,
        // Programmed
        Programmed,
        Rejected,
        NotServed,
        Pending,
        NoDataplanes,
        // SpendKept
        LedgerNotFound,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: ConditionType,
    pub status: &'static str,
    pub reason: Reason,
    pub message: String,
}

impl Condition {
    pub(crate) fn new(
        type_: ConditionType,
        ok: bool,
        reason: Reason,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status: if ok { "True" } else { "False" },
            reason,
            message: message.into(),
        }
    }

    /// A condition whose state cannot be told now.
    pub(crate) fn unknown(
        type_: ConditionType,
        reason: Reason,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status: "Unknown",
            reason,
            message: message.into(),
        }
    }
}

impl ObjectReport {
    pub fn condition(&self, type_: ConditionType) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

struct Parsed<T> {
    namespace: String,
    name: String,
    labels: Arc<BTreeMap<String, String>>,
    spec: Arc<T>,
}

/// The label that lets a Secret be a credential (`"true"`): without it, no Tollgate
/// object can name the Secret, so that permission to create an LLMProvider or MCPServer
/// in a namespace is not permission to send any Secret there to an endpoint of one's
/// choosing. In Kubernetes mode only Secrets with it are watched at all.
pub const CREDENTIAL_LABEL: &str = "tollgate.dev/credential";

/// The Secrets read: those marked as credentials, with their data; the names of the
/// others (read from a manifests directory), to say why they cannot be used.
#[derive(Default)]
struct Secrets {
    marked: HashMap<(String, String), SecretData>,
    unmarked: HashSet<(String, String)>,
}

impl Secrets {
    fn get(&self, at: &(String, String)) -> Option<&BTreeMap<String, Vec<u8>>> {
        self.marked.get(at).map(|d| &**d)
    }

    /// Why the Secret `name` in `namespace` is not there to use.
    fn missing(&self, namespace: &str, name: &str) -> String {
        if self
            .unmarked
            .contains(&(namespace.to_string(), name.to_string()))
        {
            format!(
                "Secret {name} is not marked as a credential: add the label {CREDENTIAL_LABEL}: \"true\" to it"
            )
        } else {
            format!(
                "Secret {name} not found (only Secrets labelled {CREDENTIAL_LABEL}: \"true\" are read)"
            )
        }
    }
}

/// Whether a Secret object carries the credential label.
pub fn is_credential(secret: &Value) -> bool {
    secret
        .pointer("/metadata/labels")
        .and_then(|l| l.get(CREDENTIAL_LABEL))
        .and_then(Value::as_str)
        == Some("true")
}

/// An object validated and parsed, or why it is invalid.
#[derive(Clone, Debug)]
enum Prepared {
    Invalid(String),
    Valid(Arc<BTreeMap<String, String>>, Spec),
}

#[derive(Clone, Debug)]
enum Spec {
    Provider(Arc<provider::LlmProviderSpec>),
    Route(Arc<route::LlmRouteSpec>),
    Key(Arc<virtual_key::VirtualKeySpec>),
    Budget(Arc<budget::BudgetSpec>),
    McpServer(Arc<mcp::McpServerSpec>),
    McpPolicy(Arc<mcp::McpToolPolicySpec>),
}

/// A Secret's data, by key.
type SecretData = Arc<BTreeMap<String, Vec<u8>>>;

/// A Secret as read: not a credential, its data, or why its data cannot be read.
#[derive(Clone, Debug)]
enum SecretRead {
    Unmarked,
    Data(SecretData),
    Unreadable(String),
}

fn prepare(validator: &Validator, kind: Kind, v: &Value) -> Prepared {
    let spec = match validator.validate_normalized(kind, v) {
        Ok(spec) => spec,
        Err(errors) => return Prepared::Invalid(join_errors(&errors)),
    };
    fn typed<T: DeserializeOwned>(spec: &Value) -> Result<Arc<T>, String> {
        T::deserialize(spec)
            .map(Arc::new)
            .map_err(|e| format!("spec: {e}"))
    }
    let parsed = match kind {
        Kind::LlmProvider => typed(&spec).map(Spec::Provider),
        Kind::LlmRoute => typed(&spec).map(Spec::Route),
        Kind::VirtualKey => typed(&spec).map(Spec::Key),
        Kind::Budget => typed(&spec).map(Spec::Budget),
        Kind::McpServer => typed(&spec).map(Spec::McpServer),
        Kind::McpToolPolicy => typed(&spec).map(Spec::McpPolicy),
    };
    let labels: BTreeMap<String, String> = v
        .pointer("/metadata/labels")
        .and_then(|l| <BTreeMap<String, String> as serde::Deserialize>::deserialize(l).ok())
        .unwrap_or_default();
    match parsed {
        Ok(spec) => Prepared::Valid(Arc::new(labels), spec),
        Err(message) => Prepared::Invalid(message),
    }
}

fn read_secret(v: &Value) -> SecretRead {
    if !is_credential(v) {
        return SecretRead::Unmarked;
    }
    match secret_data(v) {
        Ok(data) => SecretRead::Data(Arc::new(data)),
        Err(message) => SecretRead::Unreadable(message),
    }
}

/// Kind, namespace and name.
type ObjectKey = (Kind, String, String);

/// Compiles `inputs`. Objects without a namespace go to `default_namespace`.
pub fn compile(inputs: &Inputs, validator: &Validator, default_namespace: &str) -> Compiled {
    Compiler::default().update(validator, default_namespace, Change::whole(inputs))
}

/// The shortest key a VirtualKey's Secret may hold: a shorter one can be guessed.
pub const MIN_KEY_LEN: usize = 16;

/// A version that changes exactly when the body changes (prost encodes maps as BTreeMaps,
/// so the encoding is deterministic).
fn version_of(body: &Body) -> String {
    let resource = pb::Resource {
        name: String::new(),
        version: String::new(),
        body: Some(body.clone()),
    };
    let digest = Sha256::digest(resource.encode_to_vec());
    to_hex(&digest[..8])
}

pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 0xf) as usize] as char);
    }
    s
}

fn secret_data(v: &Value) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut out = BTreeMap::new();
    if let Some(data) = v.get("data").and_then(Value::as_object) {
        for (k, val) in data {
            let text = val
                .as_str()
                .ok_or_else(|| format!("data.{k} is not a string"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| format!("data.{k} is not valid base64"))?;
            out.insert(k.clone(), bytes);
        }
    }
    if let Some(data) = v.get("stringData").and_then(Value::as_object) {
        for (k, val) in data {
            let text = val
                .as_str()
                .ok_or_else(|| format!("stringData.{k} is not a string"))?;
            out.insert(k.clone(), text.as_bytes().to_vec());
        }
    }
    Ok(out)
}

/// Key of a Vertex AI service-account key file inside its Secret.
pub const VERTEX_SECRET_KEY: &str = "serviceAccount";

/// Bedrock access keys: a Secret with `accessKeyId` and `secretAccessKey` (and optionally
/// `sessionToken`), when `secretRef.key` is not given, packed as JSON for the dataplane.
fn aws_keys(secrets: &Secrets, namespace: &str, r: &SecretKeyRef) -> Option<String> {
    if r.key.is_some() {
        return None;
    }
    let data = secrets.get(&(namespace.to_string(), r.name.clone()))?;
    let text = |k: &str| {
        data.get(k)
            .map(|v| String::from_utf8_lossy(v.trim_ascii()).into_owned())
    };
    let (id, secret) = (text("accessKeyId")?, text("secretAccessKey")?);
    let mut v = serde_json::json!({"accessKeyId": id, "secretAccessKey": secret});
    if let Some(token) = text("sessionToken") {
        v["sessionToken"] = serde_json::Value::String(token);
    }
    Some(v.to_string())
}

/// The value at a Secret key. The error names the Secret and key, never the value.
fn secret_value<'a>(
    secrets: &'a Secrets,
    namespace: &str,
    r: &SecretKeyRef,
    default_key: &str,
) -> Result<&'a [u8], String> {
    let key = r.key.as_deref().unwrap_or(default_key);
    let data = secrets
        .get(&(namespace.to_string(), r.name.clone()))
        .ok_or_else(|| secrets.missing(namespace, &r.name))?;
    data.get(key)
        .map(Vec::as_slice)
        .ok_or_else(|| format!("Secret {} has no key {key:?}", r.name))
}

fn ms(d: Option<&String>) -> u64 {
    d.and_then(|s| parse_duration(s))
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn default_endpoint(spec: &provider::LlmProviderSpec) -> String {
    use provider::ProviderType as T;
    if let Some(e) = &spec.endpoint {
        return e.trim_end_matches('/').to_string();
    }
    let region = spec.region.as_deref().unwrap_or("");
    match spec.provider_type {
        T::Openai => "https://api.openai.com/v1".into(),
        T::Anthropic => "https://api.anthropic.com".into(),
        T::Gemini => "https://generativelanguage.googleapis.com".into(),
        T::VertexAi if region == "global" => "https://aiplatform.googleapis.com".into(),
        T::VertexAi => format!("https://{region}-aiplatform.googleapis.com"),
        T::Bedrock => format!("https://bedrock-runtime.{region}.amazonaws.com"),
        // The schema requires an endpoint for these.
        T::AzureOpenai | T::OpenaiCompatible => String::new(),
    }
}

fn compile_provider(
    p: &Parsed<provider::LlmProviderSpec>,
    secrets: &Secrets,
) -> (pb::Provider, Vec<String>) {
    use provider::ProviderType as T;
    let mut missing = Vec::new();
    let mut credentials = Vec::new();
    for c in &p.spec.credentials {
        let default_key = match p.spec.provider_type {
            T::VertexAi => VERTEX_SECRET_KEY,
            _ => PROVIDER_SECRET_KEY,
        };
        let value = match p.spec.provider_type {
            T::Bedrock => match aws_keys(secrets, &p.namespace, &c.secret_ref) {
                Some(packed) => Ok(std::borrow::Cow::Owned(packed.into_bytes())),
                None => secret_value(secrets, &p.namespace, &c.secret_ref, default_key)
                    .map(std::borrow::Cow::Borrowed),
            },
            _ => secret_value(secrets, &p.namespace, &c.secret_ref, default_key)
                .map(std::borrow::Cow::Borrowed),
        };
        match value {
            Ok(value) => match std::str::from_utf8(value.trim_ascii()) {
                Ok(key) => credentials.push(pb::Credential {
                    id: format!(
                        "{}/{}",
                        c.secret_ref.name,
                        c.secret_ref.key.as_deref().unwrap_or(default_key)
                    ),
                    api_key: key.to_string(),
                    weight: c.weight,
                    requests_per_minute: c
                        .limits
                        .as_ref()
                        .and_then(|l| l.requests_per_minute)
                        .unwrap_or(0),
                    tokens_per_minute: c
                        .limits
                        .as_ref()
                        .and_then(|l| l.tokens_per_minute)
                        .unwrap_or(0),
                }),
                Err(_) => missing.push(format!("Secret {} value is not UTF-8", c.secret_ref.name)),
            },
            Err(message) => missing.push(message),
        }
    }
    let provider_type = match p.spec.provider_type {
        T::Openai => pb::ProviderType::Openai,
        T::AzureOpenai => pb::ProviderType::AzureOpenai,
        T::Anthropic => pb::ProviderType::Anthropic,
        T::Gemini => pb::ProviderType::Gemini,
        T::VertexAi => pb::ProviderType::VertexAi,
        T::Bedrock => pb::ProviderType::Bedrock,
        T::OpenaiCompatible => pb::ProviderType::OpenaiCompatible,
    };
    let body = pb::Provider {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        r#type: provider_type as i32,
        endpoint: default_endpoint(&p.spec),
        region: p.spec.region.clone().unwrap_or_default(),
        project: p.spec.project.clone().unwrap_or_default(),
        api_version: p.spec.api_version.clone().unwrap_or_default(),
        credentials,
        models: p
            .spec
            .models
            .iter()
            .map(|m| pb::ModelPrice {
                name: m.name.clone(),
                input_per_million_usd: m.input_per_million_usd,
                output_per_million_usd: m.output_per_million_usd,
                cached_input_per_million_usd: m.cached_input_per_million_usd,
                context_window: m.context_window.unwrap_or(0),
                price_as: m.price_as.clone().unwrap_or_default(),
            })
            .collect(),
        compatibility: p.spec.compatibility.as_ref().map(|c| pb::Compatibility {
            no_stream_usage: c.stream_usage == Some(false),
            max_tokens_field: match c.max_tokens_field {
                Some(tollgate_crds::provider::MaxTokensField::MaxTokens) => "max_tokens".into(),
                Some(tollgate_crds::provider::MaxTokensField::MaxCompletionTokens) => {
                    "max_completion_tokens".into()
                }
                None => String::new(),
            },
            drop_params: c.drop_params.clone(),
            developer_as_system: c.developer_as_system == Some(true),
            headers: c
                .headers
                .iter()
                .map(|h| pb::Header {
                    name: h.name.clone(),
                    value: h.value.clone(),
                })
                .collect(),
        }),
        health: p.spec.health.as_ref().map(|h| pb::Health {
            consecutive_failures: h.consecutive_failures.unwrap_or(0),
            base_ejection_ms: ms(h.base_ejection_time.as_ref()),
            max_ejection_ms: ms(h.max_ejection_time.as_ref()),
            failure_percent: h.failure_percent.unwrap_or(0),
            minimum_requests: h.minimum_requests.unwrap_or(0),
            interval_ms: ms(h.interval.as_ref()),
        }),
        unpriced_free: p.spec.unpriced_models
            == Some(tollgate_crds::provider::UnpricedModels::Free),
    };
    (body, missing)
}

/// The CRD names of failure classes (`5xx`, `connect-error`, ...).
fn retry_on_names(on: &[route::RetryOn]) -> Vec<String> {
    on.iter()
        .filter_map(|o| serde_json::to_value(o).ok())
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

fn compile_route(r: &Parsed<route::LlmRouteSpec>) -> pb::Route {
    use route::Strategy as S;
    let spec = &r.spec;
    pb::Route {
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        models: spec.route_match.models.clone(),
        headers: spec
            .route_match
            .headers
            .iter()
            .map(|h| pb::HeaderMatch {
                name: h.name.to_ascii_lowercase(),
                value: h.value.clone(),
                regex: h.match_type == route::HeaderMatchType::RegularExpression,
            })
            .collect(),
        strategy: match spec.strategy {
            S::Weighted => pb::Strategy::Weighted,
            S::Priority => pb::Strategy::Priority,
            S::Latency => pb::Strategy::Latency,
            S::LeastBusy => pb::Strategy::LeastBusy,
            S::Cost => pb::Strategy::Cost,
        } as i32,
        targets: spec
            .targets
            .iter()
            .map(|t| pb::Target {
                provider: t.provider.clone(),
                model: t.model.clone().unwrap_or_default(),
                weight: t.weight,
                priority: t.priority,
                timeout_ms: ms(t.timeout.as_ref()),
            })
            .collect(),
        fallbacks: spec
            .fallbacks
            .iter()
            .map(|f| pb::Fallback {
                provider: f.provider.clone(),
                model: f.model.clone().unwrap_or_default(),
                timeout_ms: ms(f.timeout.as_ref()),
            })
            .collect(),
        retries: spec.retries.as_ref().map(|rt| pb::Retries {
            attempts: rt.attempts,
            backoff_base_ms: ms(rt.backoff.as_ref().and_then(|b| b.base.as_ref())),
            backoff_max_ms: ms(rt.backoff.as_ref().and_then(|b| b.max.as_ref())),
            on: retry_on_names(&rt.on),
            budget_percent: rt.budget_percent,
            max_retry_after_ms: ms(rt.max_retry_after.as_ref()),
        }),
        fallback_on: retry_on_names(&spec.fallback_on),
        streaming: spec.streaming.as_ref().map(|st| pb::Streaming {
            continue_on_failure: st.continue_on_failure,
            keep_alive_ms: match st.keep_alive_interval.as_deref().and_then(parse_duration) {
                Some(d) if d.is_zero() => u64::MAX,
                Some(d) => d.as_millis() as u64,
                None => 0,
            },
        }),
        timeouts: spec.timeouts.as_ref().map(|t| pb::Timeouts {
            request_ms: ms(t.request.as_ref()),
            first_token_ms: ms(t.first_token.as_ref()),
            idle_ms: ms(t.idle.as_ref()),
            attempt_ms: ms(t.attempt.as_ref()),
        }),
        record_messages: spec.record_messages,
    }
}

/// `PricesKnown`: whether every target and fallback of a route has a price (built in, or
/// set on its provider), so that keys with a USD limit can use it. A target that sends the
/// requested model on is priced per request: `Unknown` when no fixed target is unpriced.
fn prices_known(
    r: &Parsed<route::LlmRouteSpec>,
    providers: impl Fn(&str) -> Option<Arc<provider::LlmProviderSpec>>,
) -> Condition {
    let mut unpriced = Vec::new();
    let mut per_request = false;
    let targets = r
        .spec
        .targets
        .iter()
        .map(|t| (&t.provider, &t.model))
        .chain(r.spec.fallbacks.iter().map(|f| (&f.provider, &f.model)));
    for (name, model) in targets {
        let Some(p) = providers(name) else {
            continue;
        };
        if p.unpriced_models == Some(provider::UnpricedModels::Free) {
            continue;
        }
        let Some(model) = model else {
            per_request = true;
            continue;
        };
        let overrides: Vec<tollgate_proto::prices::Override> = p
            .models
            .iter()
            .map(|m| tollgate_proto::prices::Override {
                model: m.name.clone(),
                price_as: m.price_as.clone(),
                input: m.input_per_million_usd,
                output: m.output_per_million_usd,
                cached: m.cached_input_per_million_usd,
            })
            .collect();
        if tollgate_proto::prices::lookup(p.provider_type.as_str(), &overrides, model).is_none() {
            unpriced.push(format!("{name}/{model}"));
        }
    }
    if !unpriced.is_empty() {
        return Condition::new(
            ConditionType::PricesKnown,
            false,
            Reason::NoPrice,
            format!(
                "no price for {}: keys with a USD limit are refused it; set spec.models prices (or priceAs) on the provider, or spec.unpricedModels: free",
                unpriced.join(", ")
            ),
        );
    }
    if per_request {
        return Condition::unknown(
            ConditionType::PricesKnown,
            Reason::ModelFromRequest,
            "a target sends the requested model on: its price is looked up per request",
        );
    }
    Condition::new(ConditionType::PricesKnown, true, Reason::PricesKnown, "")
}

fn compile_virtual_key(
    k: &Parsed<virtual_key::VirtualKeySpec>,
    key_sha256: &[u8; 32],
) -> pb::VirtualKey {
    let spec = &k.spec;
    pb::VirtualKey {
        namespace: k.namespace.clone(),
        name: k.name.clone(),
        key_sha256: key_sha256.to_vec(),
        owner: spec.owner.as_ref().map(|o| pb::Owner {
            team: o.team.clone().unwrap_or_default(),
            customer: o.customer.clone().unwrap_or_default(),
            user: o.user.clone().unwrap_or_default(),
        }),
        models: spec.models.clone(),
        routes: spec.routes.clone(),
        limits: spec.limits.as_ref().map(|l| pb::KeyLimits {
            requests_per_minute: l.requests_per_minute.unwrap_or(0),
            tokens_per_minute: l.tokens_per_minute.unwrap_or(0),
            concurrency: l.concurrency.unwrap_or(0),
        }),
        budgets: spec.budget_refs.iter().map(|b| b.name.clone()).collect(),
        session: spec.session.as_ref().map(|s| pb::SessionLimits {
            header: s
                .header
                .clone()
                .unwrap_or_else(|| "x-tollgate-session".into())
                .to_ascii_lowercase(),
            max_tokens: s.max_tokens.unwrap_or(0),
            max_cost_usd: s.max_cost_usd,
        }),
        mcp_tool_policy: spec
            .mcp_tool_policy_ref
            .as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_default(),
        expires_at_unix: spec
            .expires_at
            .as_deref()
            .and_then(parse_rfc3339_unix)
            .unwrap_or(0),
        disabled: spec.disabled,
        usd_limited: spec
            .session
            .as_ref()
            .is_some_and(|s| s.max_cost_usd.is_some()),
        record_messages: spec.record_messages,
    }
}

/// Every Budget a key's requests are charged to: those it names, those whose selector
/// matches its labels, and all their ancestors (by `parentRef`), by name, each once.
fn key_budgets(
    k: &Parsed<virtual_key::VirtualKeySpec>,
    budgets: &[Parsed<budget::BudgetSpec>],
) -> Vec<String> {
    let in_ns: HashMap<&str, &Parsed<budget::BudgetSpec>> = budgets
        .iter()
        .filter(|b| b.namespace == k.namespace)
        .map(|b| (b.name.as_str(), b))
        .collect();
    let mut out: Vec<String> = Vec::new();
    let direct = k.spec.budget_refs.iter().map(|r| r.name.as_str()).chain(
        in_ns
            .values()
            .filter(|b| {
                b.spec
                    .selector
                    .as_ref()
                    .is_some_and(|s| selector_matches(s, &k.labels))
            })
            .map(|b| b.name.as_str()),
    );
    for name in direct {
        let mut next = Some(name);
        // A parent cycle ends where a budget repeats.
        while let Some(n) = next.take() {
            let Some(b) = in_ns.get(n) else { break };
            if out.iter().any(|o| o == n) {
                break;
            }
            out.push(n.to_string());
            next = b.spec.parent_ref.as_ref().map(|p| p.name.as_str());
        }
    }
    out.sort();
    out
}

fn compile_policy(p: &Parsed<mcp::McpToolPolicySpec>, keys: Vec<String>) -> pb::McpToolPolicy {
    pb::McpToolPolicy {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        virtual_keys: keys,
        rules: p
            .spec
            .rules
            .iter()
            .map(|r| pb::ToolRule {
                server: r.server.clone(),
                allow: r.allow.clone(),
                deny: r.deny.clone(),
                calls_per_minute: r
                    .limits
                    .as_ref()
                    .and_then(|l| l.calls_per_minute)
                    .unwrap_or(0),
            })
            .collect(),
        compact_schemas: p.spec.compact_schemas,
        log_arguments: p.spec.log_arguments,
    }
}

fn compile_budget(b: &Parsed<budget::BudgetSpec>) -> pb::Budget {
    let spec = &b.spec;
    let period = match spec.period.as_str() {
        "day" | "week" | "month" => pb::budget::Period::Calendar(spec.period.clone()),
        rolling => pb::budget::Period::RollingMs(ms(Some(&rolling.to_string()))),
    };
    pb::Budget {
        namespace: b.namespace.clone(),
        name: b.name.clone(),
        parent: spec
            .parent_ref
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default(),
        limit_usd: spec.limit.usd,
        limit_tokens: spec.limit.tokens,
        period: Some(period),
        time_zone: spec.time_zone.clone().unwrap_or_else(|| "UTC".into()),
        thresholds: spec
            .thresholds
            .iter()
            .map(|t| pb::Threshold {
                percent: t.percent,
                block: t.action == budget::ThresholdAction::Block,
            })
            .collect(),
    }
}

fn compile_mcp_server(
    s: &Parsed<mcp::McpServerSpec>,
    secrets: &Secrets,
) -> (pb::McpServer, Vec<String>) {
    let mut missing = Vec::new();
    let mut body = pb::McpServer {
        namespace: s.namespace.clone(),
        name: s.name.clone(),
        url: s.spec.url.clone(),
        sse: s.spec.transport == mcp::McpTransport::Sse,
        tool_prefix: s.spec.tool_prefix.clone().unwrap_or_else(|| s.name.clone()),
        timeout_ms: ms(s.spec.timeout.as_ref()),
        ..Default::default()
    };
    let text = |r: &SecretKeyRef, default: &str, missing: &mut Vec<String>| -> String {
        match secret_value(secrets, &s.namespace, r, default) {
            Ok(v) => String::from_utf8_lossy(v.trim_ascii()).into_owned(),
            Err(m) => {
                missing.push(m);
                String::new()
            }
        }
    };
    if let Some(auth) = &s.spec.auth {
        if let Some(h) = &auth.header {
            body.auth_header_name = h.name.clone();
            let value = text(&h.secret_ref, "token", &mut missing);
            body.auth_header_value = format!("{}{}", h.prefix.as_deref().unwrap_or(""), value);
        }
        if let Some(o) = &auth.oauth {
            body.oauth = Some(pb::OAuthClient {
                token_url: o.token_url.clone(),
                client_id: o.client_id.clone(),
                client_secret: text(&o.client_secret_ref, "clientSecret", &mut missing),
                scopes: o.scopes.clone(),
            });
        }
    }
    (body, missing)
}

/// Kubernetes label-selector semantics: every matchLabels entry and every expression holds.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

#[cfg(test)]
mod tests;
