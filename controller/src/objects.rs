//! What a source (a manifests directory, later the Kubernetes API) hands to the compiler:
//! parsed objects with where they came from, and the errors met while reading them.

use serde::Serialize;
use serde_json::Value;

/// One object as read: a Tollgate kind, a `v1/Secret`, or something else.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceObject {
    /// Where the object came from, e.g. `routes.yaml#2` (second document).
    pub origin: String,
    pub value: Value,
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
