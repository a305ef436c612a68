//! The one path from a source's objects to the dataplanes: compile, log each new problem
//! once, count objects, publish the snapshot the config streams serve. Local mode and
//! Kubernetes mode both end here, so what is accepted never depends on where it came from.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use prometheus::{IntCounter, IntGaugeVec};
use tokio::sync::watch;
use tollgate_crds::validate::Validator;

use crate::compile::{Compiled, ValidationCache, compile_cached};
use crate::objects::Inputs;

pub struct Publisher {
    validator: Validator,
    cache: ValidationCache,
    reported: HashSet<String>,
    default_namespace: String,
    snapshots: watch::Sender<Arc<Compiled>>,
    ready: watch::Sender<bool>,
    compiles: IntCounter,
    objects: IntGaugeVec,
}

impl Publisher {
    pub fn new(
        default_namespace: &str,
        snapshots: watch::Sender<Arc<Compiled>>,
        ready: watch::Sender<bool>,
        compiles: IntCounter,
        objects: IntGaugeVec,
    ) -> Self {
        Self {
            validator: Validator::new(),
            cache: ValidationCache::default(),
            reported: HashSet::new(),
            default_namespace: default_namespace.to_string(),
            snapshots,
            ready,
            compiles,
            objects,
        }
    }

    /// Compiles `inputs` and publishes the result; `source` names where they came from,
    /// for the log.
    pub fn publish(&mut self, inputs: &Inputs, source: &str) {
        let started = Instant::now();
        let previous = self.snapshots.borrow().clone();
        let compiled = compile_cached(
            inputs,
            &self.validator,
            &self.default_namespace,
            &mut self.cache,
            &previous,
        );
        self.compiles.inc();
        report_problems(&compiled, &mut self.reported);
        self.objects.reset();
        for r in &compiled.reports {
            let accepted = r.condition("Accepted").map_or("False", |c| c.status);
            self.objects
                .with_label_values(&[r.kind.as_str(), accepted])
                .inc();
        }
        tracing::info!(
            source,
            objects = compiled.reports.len(),
            resources = compiled.resource_count(),
            version = %compiled.version,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "config compiled"
        );
        self.snapshots.send_replace(Arc::new(compiled));
        self.ready.send_replace(true);
    }
}

/// Logs each problem once, when it first appears.
fn report_problems(compiled: &Compiled, reported: &mut HashSet<String>) {
    let mut current = HashSet::new();
    for e in &compiled.source_errors {
        let line = format!("{}: {}", e.origin, e.message);
        if !reported.contains(&line) {
            tracing::warn!(origin = %e.origin, reason = %e.message, "cannot read object");
        }
        current.insert(line);
    }
    for r in &compiled.reports {
        for c in r.conditions.iter().filter(|c| c.status == "False") {
            let line = format!(
                "{} {} {}/{} {} {}",
                r.origin, r.kind, r.namespace, r.name, c.type_, c.message
            );
            if !reported.contains(&line) {
                tracing::warn!(
                    origin = %r.origin,
                    kind = %r.kind,
                    object = %format!("{}/{}", r.namespace, r.name),
                    condition = c.type_,
                    reason = %c.reason,
                    message = %c.message,
                    "object not fully accepted"
                );
            }
            current.insert(line);
        }
    }
    *reported = current;
}
