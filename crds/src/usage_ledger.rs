//! `UsageLedger`: the controller's own record of spend, not written by operators.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The usage ledger of one gateway: the spend of every Budget and agent session and the
/// last usage batch counted per dataplane, so that a new leader counts on exactly where the
/// last one stopped. Cluster-scoped, so its place does not depend on the namespace the
/// controller runs in: a controller reinstalled elsewhere finds it.
#[derive(CustomResource, JsonSchema, Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "UsageLedger",
    root = "UsageLedger",
    plural = "usageledgers",
    singular = "usageledger",
    category = "tollgate",
    doc = "The usage ledger a Tollgate controller keeps (written by the controller only).",
    printcolumn(name = "Kept By", type_ = "string", json_path = ".spec.keptBy"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct UsageLedgerSpec {
    /// The ledger, as JSON.
    pub ledger: String,
    /// The controller that last wrote it: its election Lease, `namespace/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_by: Option<String>,
}
