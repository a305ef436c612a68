//! The one path from a source's objects to the dataplanes: compile, log each new problem
//! once, count objects, publish the snapshot the config streams serve. Local mode and
//! Kubernetes mode both end here, so what is accepted never depends on where it came from.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use prometheus::{IntCounter, IntGaugeVec};
use tokio::sync::watch;
use tollgate_crds::validate::Validator;

use imbl::ordmap::DiffItem;

use crate::compile::{Change, Compiled, Compiler, ConditionType, ObjectReport};
use crate::objects::SourceError;

pub struct Publisher {
    validator: Validator,
    compiler: Compiler,
    default_namespace: String,
    snapshots: watch::Sender<Arc<Compiled>>,
    ready: watch::Sender<bool>,
    compiles: IntCounter,
    objects: IntGaugeVec,
    /// Objects by kind and whether accepted, kept up to date from each change.
    counts: HashMap<(String, &'static str), i64>,
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
            compiler: Compiler::default(),
            default_namespace: default_namespace.to_string(),
            snapshots,
            ready,
            compiles,
            objects,
            counts: HashMap::new(),
        }
    }

    /// Compiles what `change` brings without publishing it: the next `publish` carries it.
    pub fn stage(&mut self, change: Change) {
        self.compiler
            .update(&self.validator, &self.default_namespace, change);
    }

    /// Compiles what `changes` bring, one after the other, and publishes the result once;
    /// `source` names where they came from, for the log. Only the reports that changed
    /// are looked at: the maps of the new result share every unchanged part with the
    /// previous one.
    pub fn publish(&mut self, changes: impl IntoIterator<Item = Change>, source: &str) {
        let span = tracing::info_span!(
            target: tollgate_telemetry::TARGET,
            "compile",
            "tollgate.source" = source,
            "tollgate.groups" = tracing::field::Empty,
            "tollgate.objects" = tracing::field::Empty,
            "tollgate.resources" = tracing::field::Empty,
            "tollgate.version" = tracing::field::Empty,
        );
        let _in = span.enter();
        let started = Instant::now();
        let mut groups = 0;
        let mut compiled = None;
        for change in changes {
            groups += change.groups.len();
            compiled = Some(
                self.compiler
                    .update(&self.validator, &self.default_namespace, change),
            );
        }
        let mut compiled = compiled.unwrap_or_else(|| {
            self.compiler
                .update(&self.validator, &self.default_namespace, Change::default())
        });
        compiled.trace = tollgate_telemetry::current_traceparent(&span);
        span.record("tollgate.groups", groups);
        span.record("tollgate.objects", compiled.report_map.len());
        span.record("tollgate.resources", compiled.resource_count());
        span.record("tollgate.version", compiled.version.as_str());
        self.compiles.inc();
        let previous = self.snapshots.borrow().clone();
        report_source_errors(&previous.source_errors, &compiled.source_errors);
        let mut count = |r: &ObjectReport, by: i64| {
            let accepted = r
                .condition(ConditionType::Accepted)
                .map_or("False", |c| c.status);
            let n = self.counts.entry((r.kind.clone(), accepted)).or_default();
            *n += by;
            self.objects
                .with_label_values(&[r.kind.as_str(), accepted])
                .set(*n);
        };
        for item in previous.report_map.diff(&compiled.report_map) {
            match item {
                DiffItem::Add(_, new) => {
                    count(new, 1);
                    report_problems(None, new);
                }
                DiffItem::Update {
                    old: (_, old),
                    new: (_, new),
                } => {
                    count(old, -1);
                    count(new, 1);
                    report_problems(Some(old), new);
                }
                DiffItem::Remove(_, old) => count(old, -1),
            }
        }
        tracing::info!(
            source,
            groups,
            objects = compiled.report_map.len(),
            resources = compiled.resource_count(),
            version = %compiled.version,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "config compiled"
        );
        self.snapshots.send_replace(Arc::new(compiled));
        self.ready.send_replace(true);
    }
}

/// Logs each source error that was not there before.
fn report_source_errors(before: &[SourceError], now: &[SourceError]) {
    for e in now.iter().filter(|e| !before.contains(e)) {
        tracing::warn!(origin = %e.origin, reason = %e.message, "cannot read object");
    }
}

/// Logs each failing condition of `new` that its previous report did not have.
fn report_problems(old: Option<&ObjectReport>, new: &ObjectReport) {
    for c in new.conditions.iter().filter(|c| c.status == "False") {
        if old.is_some_and(|o| o.conditions.contains(c)) {
            continue;
        }
        tracing::warn!(
            origin = %new.origin,
            kind = %new.kind,
            object = %format!("{}/{}", new.namespace, new.name),
            condition = c.type_.as_str(),
            reason = %c.reason,
            message = %c.message,
            "object not fully accepted"
        );
    }
}
