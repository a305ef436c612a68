//! JSON-RPC 2.0 messages as MCP uses them: requests (an `id` that is a string or an
//! integer, never null), notifications (no `id`), and responses (`result` or `error`).
//! A body holds one message, or a batch (an array, as protocol version 2025-03-26
//! allows). Parsing never panics on any input; what is not a valid message becomes the
//! JSON-RPC error to answer it with, carrying its `id` when one could be read.

use serde_json::{Map, Value, json};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;

/// A request id: MCP allows strings and integers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Id {
    Num(i64),
    Str(String),
}

impl Id {
    pub fn read(v: &Value) -> Option<Id> {
        match v {
            Value::String(s) => Some(Id::Str(s.clone())),
            Value::Number(n) => n.as_i64().map(Id::Num),
            _ => None,
        }
    }

    pub fn to_value(&self) -> Value {
        match self {
            Id::Num(n) => json!(n),
            Id::Str(s) => json!(s),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    fn to_value(&self) -> Value {
        let mut e = json!({"code": self.code, "message": self.message});
        if let Some(d) = &self.data {
            e["data"] = d.clone();
        }
        e
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Request {
        id: Id,
        method: String,
        /// An object or an array when present.
        params: Option<Value>,
    },
    Notification {
        method: String,
        params: Option<Value>,
    },
    Response {
        id: Id,
        outcome: Result<Value, RpcError>,
    },
}

/// A message that cannot be taken: the error to answer with, and its id if readable.
#[derive(Clone, Debug, PartialEq)]
pub struct Invalid {
    pub id: Option<Id>,
    pub error: RpcError,
}

/// What a body holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    One(Result<Message, Invalid>),
    Batch(Vec<Result<Message, Invalid>>),
}

/// Reads a body. `Err` when it is not JSON (parse error) or is neither an object nor a
/// non-empty array (invalid request): the whole body is answered with that error.
pub fn parse(bytes: &[u8]) -> Result<Body, RpcError> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| RpcError::new(PARSE_ERROR, format!("Parse error: {e}")))?;
    match v {
        Value::Array(items) if items.is_empty() => Err(RpcError::new(
            INVALID_REQUEST,
            "Invalid Request: empty batch",
        )),
        Value::Array(items) => Ok(Body::Batch(items.into_iter().map(message).collect())),
        Value::Object(_) => Ok(Body::One(message(v))),
        _ => Err(RpcError::new(
            INVALID_REQUEST,
            "Invalid Request: a message is a JSON object",
        )),
    }
}

fn invalid(id: Option<Id>, why: &str) -> Invalid {
    Invalid {
        id,
        error: RpcError::new(INVALID_REQUEST, format!("Invalid Request: {why}")),
    }
}

/// Reads one message.
pub fn message(v: Value) -> Result<Message, Invalid> {
    let Value::Object(o) = v else {
        return Err(invalid(None, "a message is a JSON object"));
    };
    let id = match o.get("id") {
        None => None,
        Some(raw) => {
            Some(Id::read(raw).ok_or_else(|| invalid(None, "id must be a string or an integer"))?)
        }
    };
    if o.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid(id, "jsonrpc must be \"2.0\""));
    }
    if let Some(method) = o.get("method") {
        let Some(method) = method.as_str() else {
            return Err(invalid(id, "method must be a string"));
        };
        let params = match o.get("params") {
            None => None,
            Some(p @ (Value::Object(_) | Value::Array(_))) => Some(p.clone()),
            Some(_) => return Err(invalid(id, "params must be an object or an array")),
        };
        return Ok(match id {
            Some(id) => Message::Request {
                id,
                method: method.to_string(),
                params,
            },
            None => Message::Notification {
                method: method.to_string(),
                params,
            },
        });
    }
    let Some(id) = id else {
        return Err(invalid(None, "neither a request nor a response"));
    };
    match (o.get("result"), o.get("error")) {
        (Some(r), None) => Ok(Message::Response {
            id,
            outcome: Ok(r.clone()),
        }),
        (None, Some(e)) => Ok(Message::Response {
            outcome: Err(read_error(e).ok_or_else(|| {
                invalid(
                    Some(id.clone()),
                    "error must have an integer code and a string message",
                )
            })?),
            id,
        }),
        _ => Err(invalid(Some(id), "a response has either result or error")),
    }
}

fn read_error(e: &Value) -> Option<RpcError> {
    Some(RpcError {
        code: e.get("code")?.as_i64()?,
        message: e.get("message")?.as_str()?.to_string(),
        data: e.get("data").cloned(),
    })
}

/// A response carrying `result`.
pub fn result(id: &Id, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id.to_value(), "result": result})
}

/// A response carrying `error`; the id is null when it could not be read.
pub fn error(id: Option<&Id>, e: &RpcError) -> Value {
    let mut o = Map::new();
    o.insert("jsonrpc".into(), json!("2.0"));
    o.insert("id".into(), id.map_or(Value::Null, Id::to_value));
    o.insert("error".into(), e.to_value());
    Value::Object(o)
}

/// A response carrying `outcome`: its result or its error.
pub fn response(id: &Id, outcome: Result<Value, RpcError>) -> Value {
    match outcome {
        Ok(v) => result(id, v),
        Err(e) => error(Some(id), &e),
    }
}

/// A request, as the gateway sends one upstream.
pub fn request(id: &Id, method: &str, params: Option<Value>) -> Value {
    let mut v = json!({"jsonrpc": "2.0", "id": id.to_value(), "method": method});
    if let Some(p) = params {
        v["params"] = p;
    }
    v
}

/// A notification.
pub fn notification(method: &str, params: Option<Value>) -> Value {
    let mut v = json!({"jsonrpc": "2.0", "method": method});
    if let Some(p) = params {
        v["params"] = p;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<Message, Invalid> {
        match parse(text.as_bytes()).unwrap() {
            Body::One(m) => m,
            Body::Batch(_) => panic!("a batch"),
        }
    }

    #[test]
    fn requests_notifications_and_responses_are_told_apart() {
        assert_eq!(
            one(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
            Ok(Message::Request {
                id: Id::Num(1),
                method: "tools/list".into(),
                params: None
            })
        );
        assert_eq!(
            one(r#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"x"}}"#),
            Ok(Message::Request {
                id: Id::Str("a".into()),
                method: "tools/call".into(),
                params: Some(json!({"name": "x"}))
            })
        );
        assert_eq!(
            one(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            Ok(Message::Notification {
                method: "notifications/initialized".into(),
                params: None
            })
        );
        assert_eq!(
            one(r#"{"jsonrpc":"2.0","id":7,"result":{}}"#),
            Ok(Message::Response {
                id: Id::Num(7),
                outcome: Ok(json!({}))
            })
        );
        assert_eq!(
            one(r#"{"jsonrpc":"2.0","id":7,"error":{"code":-32601,"message":"no"}}"#),
            Ok(Message::Response {
                id: Id::Num(7),
                outcome: Err(RpcError::new(METHOD_NOT_FOUND, "no"))
            })
        );
    }

    #[test]
    fn what_is_not_a_message_gets_the_error_to_answer_with() {
        assert_eq!(parse(b"{").unwrap_err().code, PARSE_ERROR);
        assert_eq!(parse(b"[]").unwrap_err().code, INVALID_REQUEST);
        assert_eq!(parse(b"3").unwrap_err().code, INVALID_REQUEST);
        for (text, id) in [
            (r#"{"id":1,"method":"ping"}"#, Some(Id::Num(1))),
            (r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#, None),
            (r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#, None),
            (r#"{"jsonrpc":"2.0","id":2,"method":5}"#, Some(Id::Num(2))),
            (
                r#"{"jsonrpc":"2.0","id":3,"method":"x","params":"p"}"#,
                Some(Id::Num(3)),
            ),
            (r#"{"jsonrpc":"2.0","id":4}"#, Some(Id::Num(4))),
            (
                r#"{"jsonrpc":"2.0","id":5,"error":{"code":"x"}}"#,
                Some(Id::Num(5)),
            ),
            (r#"{"jsonrpc":"2.0"}"#, None),
        ] {
            let e = one(text).unwrap_err();
            assert_eq!(e.error.code, INVALID_REQUEST, "{text}");
            assert_eq!(e.id, id, "{text}");
        }
        // A batch answers each member on its own.
        let Body::Batch(items) =
            parse(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}, 4]"#).unwrap()
        else {
            panic!()
        };
        assert!(items[0].is_ok() && items[1].is_err());
    }

    #[test]
    fn answers_are_well_formed() {
        let id = Id::Str("r1".into());
        assert_eq!(
            result(&id, json!({"tools": []})),
            json!({"jsonrpc": "2.0", "id": "r1", "result": {"tools": []}})
        );
        assert_eq!(
            error(None, &RpcError::new(PARSE_ERROR, "Parse error")),
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "Parse error"}})
        );
        // What is written reads back as itself.
        let req = request(&Id::Num(9), "tools/call", Some(json!({"name": "a"})));
        assert_eq!(
            message(req),
            Ok(Message::Request {
                id: Id::Num(9),
                method: "tools/call".into(),
                params: Some(json!({"name": "a"}))
            })
        );
    }
}
