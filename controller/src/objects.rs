//! What a source (a manifests directory, later the Kubernetes API) hands to the compiler:
//! parsed objects with where they came from, and the errors met while reading them.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

/// One object as read: a Tollgate kind, a `v1/Secret`, or something else.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceObject {
    /// Where the object came from, e.g. `routes.yaml#2` (second document).
    pub origin: String,
    /// Shared with the source, which hands the same `Arc` again while the object is
    /// unchanged: the compiler then knows it unchanged without comparing it.
    pub value: Arc<Value>,
}

/// A file or document that could not be read at all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SourceError {
    pub origin: String,
    pub message: String,
}

/// Everything one read of the source produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inputs {
    pub objects: Vec<SourceObject>,
    pub errors: Vec<SourceError>,
}
