//! `Budget`: money or tokens over a period.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::LocalRef;

/// Money or tokens over a period, charged by the VirtualKeys it selects (and its children).
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Deserialize, Serialize)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "Budget",
    root = "Budget",
    plural = "budgets",
    singular = "budget",
    namespaced,
    status = "BudgetStatus",
    shortname = "budget",
    category = "tollgate",
    doc = "A spending limit in USD and/or tokens over a rolling or calendar period.",
    printcolumn(name = "Limit USD", type_ = "number", json_path = ".spec.limit.usd"),
    printcolumn(name = "Spent USD", type_ = "number", json_path = ".status.spent.usd"),
    printcolumn(
        name = "Remaining USD",
        type_ = "number",
        json_path = ".status.remaining.usd"
    ),
    printcolumn(
        name = "Limit Tokens",
        type_ = "integer",
        json_path = ".spec.limit.tokens",
        priority = 1
    ),
    printcolumn(
        name = "Spent Tokens",
        type_ = "integer",
        json_path = ".status.spent.tokens",
        priority = 1
    ),
    printcolumn(name = "Period", type_ = "string", json_path = ".spec.period"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state")
)]
#[x_kube(validation = Rule::new("has(self.selector) || has(self.parentRef)").message("a budget needs a selector, a parentRef, or both"))]
#[serde(rename_all = "camelCase")]
pub struct BudgetSpec {
    /// VirtualKeys (by label) whose usage counts against this budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Parent budget: usage charged here is charged there too (org > team > key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_ref: Option<LocalRef>,
    pub limit: BudgetLimit,
    /// A rolling duration (`24h`, `30m`) or a calendar period (`day`, `week`, `month`).
    #[schemars(regex(pattern = r"^(day|week|month|([0-9]+(ms|s|m|h))+)$"))]
    pub period: String,
    /// IANA time zone for calendar periods (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub thresholds: Vec<Threshold>,
}

#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[x_kube(validation = Rule::new("has(self.usd) || has(self.tokens)").message("limit needs usd, tokens, or both"))]
pub struct BudgetLimit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub tokens: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct Threshold {
    #[schemars(range(min = 1, max = 100))]
    pub percent: u32,
    pub action: ThresholdAction,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ThresholdAction {
    Warn,
    Block,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_end: Option<String>,
    /// `Ok`, `Warning` or `Exceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct Amount {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
}
