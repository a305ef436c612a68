//! Reading what an MCP server answers. Over Streamable HTTP a POSTed request is answered
//! with one JSON body (`application/json`) or with a stream of server-sent events
//! (`text/event-stream`) whose `data` are JSON-RPC messages: notifications (progress,
//! logging) and requests from the server first, then the response to the request. Over
//! the older HTTP+SSE transport every message of the session comes on one event stream,
//! after an `endpoint` event that names where to POST.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use super::jsonrpc::{self, Body, Id, Message, RpcError};
use crate::base::sse;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnswerError {
    #[error("the MCP server answered with content type {0:?}")]
    ContentType(String),
    #[error("the MCP server's answer is not JSON-RPC: {0}")]
    NotJsonRpc(String),
    #[error("the MCP server's event stream is malformed")]
    Events,
    #[error("the MCP server's event stream broke off: {0}")]
    Cut(String),
    #[error("the MCP server's event stream ended without an answer")]
    Ended,
    #[error("the MCP server did not answer within {0:?}")]
    Timeout(Duration),
}

/// The messages of a JSON answer (one message or a batch); `media_type` is the answer's
/// media type, lowercased and without parameters.
pub fn messages(media_type: &str, body: &[u8]) -> Result<Vec<Message>, AnswerError> {
    match media_type {
        "application/json" => read(body),
        _ => Err(AnswerError::ContentType(media_type.to_string())),
    }
}

/// An event stream from a server, read as it arrives. Reading is cancel-safe: a read
/// abandoned (by a timeout) loses nothing.
pub struct Events<B = Incoming> {
    body: B,
    parser: sse::Parser,
    events: VecDeque<sse::Event>,
    messages: VecDeque<Message>,
    ended: bool,
}

impl<B> Events<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    pub fn new(body: B) -> Self {
        Events {
            body,
            parser: sse::Parser::default(),
            events: VecDeque::new(),
            messages: VecDeque::new(),
            ended: false,
        }
    }

    /// The next event of any name; `None` once the stream has ended.
    pub async fn next_event(&mut self) -> Result<Option<sse::Event>, AnswerError> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            if self.ended {
                return Ok(None);
            }
            match self.body.frame().await {
                None => {
                    self.ended = true;
                    self.events.extend(self.parser.finish());
                }
                Some(Err(e)) => return Err(AnswerError::Cut(e.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        let events = self.parser.feed(&data).map_err(|_| AnswerError::Events)?;
                        self.events.extend(events);
                    }
                }
            }
        }
    }

    /// The next JSON-RPC message; events of other names (`endpoint`) and empty data are
    /// skipped. An event that is not JSON-RPC is an error, and reading may go on.
    pub async fn next(&mut self) -> Result<Option<Message>, AnswerError> {
        loop {
            if let Some(m) = self.messages.pop_front() {
                return Ok(Some(m));
            }
            let Some(e) = self.next_event().await? else {
                return Ok(None);
            };
            if (e.name.is_empty() || e.name == "message") && !e.data.trim().is_empty() {
                self.messages.extend(read(e.data.as_bytes())?);
            }
        }
    }

    /// Reads until the response to `id`, within `timeout`; other messages are dropped.
    pub async fn answer(
        &mut self,
        id: &Id,
        timeout: Duration,
    ) -> Result<Result<Value, RpcError>, AnswerError> {
        let wait = async {
            loop {
                match self.next().await? {
                    None => return Err(AnswerError::Ended),
                    Some(Message::Response { id: got, outcome }) if got == *id => {
                        return Ok(outcome);
                    }
                    Some(_) => {}
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| AnswerError::Timeout(timeout))?
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

/// The outcome of the response to request `id` among `messages`.
pub fn answer_in(messages: Vec<Message>, id: &Id) -> Option<Result<Value, RpcError>> {
    messages.into_iter().find_map(|m| match m {
        Message::Response { id: got, outcome } if got == *id => Some(outcome),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;
    use serde_json::json;

    /// A body that delivers `chunks` one frame each.
    fn body(
        chunks: &[&str],
    ) -> impl hyper::body::Body<Data = Bytes, Error = std::convert::Infallible> + Unpin {
        let frames: Vec<_> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c.as_bytes()))))
            .collect();
        StreamBody::new(tokio_stream::iter(frames))
    }

    #[tokio::test]
    async fn a_json_answer_and_an_event_stream_read_the_same() {
        let json_body = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}"#;
        let one = messages("application/json", json_body).unwrap();
        assert_eq!(
            one,
            [Message::Response {
                id: Id::Num(1),
                outcome: Ok(json!({"tools": []}))
            }]
        );
        // Cut anywhere, with a comment and an event of another name between messages.
        let mut events = Events::new(body(&[
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",",
            "\"params\":{\"progressToken\":\"p\",\"progress\":1}}\n",
            "\n: a comment\n\nevent: endpoint\ndata: /messages\n\n",
            "id: 2\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[]}}",
        ]));
        assert!(matches!(
            events.next().await,
            Ok(Some(Message::Notification { method, .. })) if method == "notifications/progress"
        ));
        assert_eq!(
            events.next().await.unwrap().as_ref(),
            one.first(),
            "the last event needs no blank line"
        );
        assert_eq!(events.next().await, Ok(None));
    }

    #[tokio::test]
    async fn an_answer_is_the_response_to_its_request() {
        let stream = [
            "data: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{}}\n\n",
            "data: not json\n\n",
        ];
        let mut events = Events::new(body(&stream));
        let wait = Duration::from_secs(5);
        assert!(matches!(
            events.answer(&Id::Num(1), wait).await,
            Err(AnswerError::NotJsonRpc(_))
        ));
        assert_eq!(
            events.answer(&Id::Num(1), wait).await,
            Err(AnswerError::Ended)
        );
        let mut events = Events::new(body(&stream[..1]));
        assert_eq!(events.answer(&Id::Num(2), wait).await, Ok(Ok(json!({}))));
        let mut events = Events::new(Full::new(Bytes::from_static(
            b"event: endpoint\ndata: /m?s=1\n\n",
        )));
        let e = events.next_event().await.unwrap().unwrap();
        assert_eq!((e.name.as_str(), e.data.as_str()), ("endpoint", "/m?s=1"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_times_out() {
        let (_tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
        let mut events = Events::new(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
        let wait = Duration::from_secs(3);
        assert_eq!(
            events.answer(&Id::Num(1), wait).await,
            Err(AnswerError::Timeout(wait))
        );
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
        let other = messages(
            "application/json",
            br#"{"jsonrpc":"2.0","id":2,"result":{}}"#,
        )
        .unwrap();
        assert_eq!(
            answer_in(other, &Id::Num(1)),
            None,
            "another request's answer"
        );
    }
}
