//! Reading what an MCP server answers over Streamable HTTP: a POSTed request is answered
//! with one JSON body (`application/json`) or with a stream of server-sent events
//! (`text/event-stream`) whose `data` are JSON-RPC messages: notifications (progress,
//! logging) and requests from the server first, then the response to the request.

use super::jsonrpc::{self, Body, Id, Message};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnswerError {
    #[error("the MCP server answered with content type {0:?}")]
    ContentType(String),
    #[error("the MCP server's answer is not JSON-RPC: {0}")]
    NotJsonRpc(String),
    #[error("the MCP server's event stream is malformed")]
    Events,
}

/// The messages of an answer, in order. Members of a batch that are not valid messages
/// are left out.
pub fn messages(content_type: &str, body: &[u8]) -> Result<Vec<Message>, AnswerError> {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/json" => read(body),
        "text/event-stream" => {
            let mut parser = crate::sse::Parser::default();
            let mut events = parser.feed(body).map_err(|_| AnswerError::Events)?;
            events.extend(parser.finish());
            let mut out = Vec::new();
            for e in events.iter().filter(|e| !e.data.trim().is_empty()) {
                // Events other than messages (`event: endpoint` of the older transport)
                // are not JSON-RPC: they are skipped here.
                if e.name.is_empty() || e.name == "message" {
                    out.extend(read(e.data.as_bytes())?);
                }
            }
            Ok(out)
        }
        _ => Err(AnswerError::ContentType(content_type.to_string())),
    }
}

/// The messages of one JSON body (one message or a batch).
pub fn read(bytes: &[u8]) -> Result<Vec<Message>, AnswerError> {
    match jsonrpc::parse(bytes).map_err(|e| AnswerError::NotJsonRpc(e.message))? {
        Body::One(m) => m
            .map(|m| vec![m])
            .map_err(|e| AnswerError::NotJsonRpc(e.error.message)),
        Body::Batch(items) => Ok(items.into_iter().flatten().collect()),
    }
}

/// The response to request `id` among `messages`, and what came before it.
pub fn response_to(messages: Vec<Message>, id: &Id) -> (Option<Message>, Vec<Message>) {
    let mut before = Vec::new();
    for m in messages {
        match &m {
            Message::Response { id: got, .. } if got == id => return (Some(m), before),
            _ => before.push(m),
        }
    }
    (None, before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_json_answer_and_an_event_stream_read_the_same() {
        let json_body = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}"#;
        let one = messages("application/json; charset=utf-8", json_body).unwrap();
        assert_eq!(
            one,
            [Message::Response {
                id: Id::Num(1),
                outcome: Ok(json!({"tools": []}))
            }]
        );
        let stream = concat!(
            "event: message\n",
            "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":\"p\",\"progress\":1}}\n\n",
            ": a comment\n\n",
            "id: 2\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[]}}\n\n",
        );
        let all = messages("text/event-stream", stream.as_bytes()).unwrap();
        assert_eq!(all.len(), 2);
        let (response, before) = response_to(all, &Id::Num(1));
        assert_eq!(response.as_ref(), one.first());
        assert!(matches!(
            &before[..],
            [Message::Notification { method, .. }] if method == "notifications/progress"
        ));
    }

    #[test]
    fn other_answers_are_errors() {
        assert_eq!(
            messages("text/html", b"<html>"),
            Err(AnswerError::ContentType("text/html".into()))
        );
        assert!(matches!(
            messages("application/json", b"{\"not\":\"rpc\"}"),
            Err(AnswerError::NotJsonRpc(_))
        ));
        let (none, before) = response_to(
            messages(
                "application/json",
                br#"{"jsonrpc":"2.0","id":2,"result":{}}"#,
            )
            .unwrap(),
            &Id::Num(1),
        );
        assert!(
            none.is_none() && before.len() == 1,
            "another request's answer"
        );
    }
}
