//! The spans of a traced MCP request: one server span per JSON-RPC request (named by its
//! method, as the MCP semantic conventions name them), and under a `tools/call` one
//! `execute_tool {tool}` span, as the GenAI conventions name a tool's execution, whose
//! context goes to the MCP server in the call's `traceparent`. The tool's arguments and
//! result are never in them.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use tollgate_telemetry::{Attribute as A, FinishedSpan, Kind, Sampled, Telemetry};

use crate::config::model::VirtualKey;

/// Exports the span of the JSON-RPC request `method` (MCP's own, or `other`: never a
/// client's text) traced as `s`, answered with `status`.
pub(super) fn request_span(
    telemetry: &Telemetry,
    s: &Sampled,
    method: &'static str,
    key: &VirtualKey,
    status: u16,
) {
    let mut attributes = vec![
        A::new("mcp.method.name", method),
        A::new("http.response.status_code", i64::from(status)),
        A::new("tollgate.key", key.id().to_string()),
    ];
    if !key.attribution.team.is_empty() {
        attributes.push(A::new("tollgate.team", key.attribution.team.to_string()));
    }
    telemetry.export(FinishedSpan {
        name: method.into(),
        kind: Kind::Server,
        trace_id: s.trace_id,
        span_id: s.span_id,
        parent: s.parent,
        parent_remote: true,
        start: s.start,
        end: SystemTime::now(),
        attributes,
        error: (status >= 400).then_some(Cow::Borrowed("http_error")),
    });
}

/// A tool call's span, begun when the call is: a child of its request's.
pub(super) struct ToolSpan {
    telemetry: Arc<Telemetry>,
    trace_id: u128,
    parent: u64,
    id: u64,
    start: SystemTime,
}

impl ToolSpan {
    pub(super) fn child_of(telemetry: &Arc<Telemetry>, request: &Sampled) -> Self {
        Self {
            telemetry: telemetry.clone(),
            trace_id: request.trace_id,
            parent: request.span_id,
            id: tollgate_telemetry::new_span_id(),
            start: SystemTime::now(),
        }
    }

    pub(super) fn trace_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The `traceparent` the call carries to its server.
    pub(super) fn traceparent(&self) -> String {
        tollgate_telemetry::TraceParent {
            trace_id: self.trace_id,
            span_id: self.id,
            sampled: true,
        }
        .format()
    }

    /// The call ended with `decision` (`ok`, `denied`, `tool_error`, ...).
    pub(super) fn end(self, tool: &str, server: &str, decision: &str) {
        let mut attributes = vec![
            A::new("gen_ai.operation.name", "execute_tool"),
            A::new("gen_ai.tool.name", tool.to_string()),
            A::new("tollgate.mcp.decision", decision.to_string()),
        ];
        if !server.is_empty() {
            attributes.push(A::new("tollgate.mcp.server", server.to_string()));
        }
        let failed = decision != "ok";
        if failed {
            attributes.push(A::new("error.type", decision.to_string()));
        }
        self.telemetry.export(FinishedSpan {
            name: format!("execute_tool {tool}").into(),
            kind: Kind::Internal,
            trace_id: self.trace_id,
            span_id: self.id,
            parent: Some(self.parent),
            parent_remote: false,
            start: self.start,
            end: SystemTime::now(),
            attributes,
            error: failed.then(|| Cow::Owned(decision.to_string())),
        });
    }
}
