//! AWS event-stream framing (`application/vnd.amazon.eventstream`), as Bedrock's
//! ConverseStream sends it: an incremental decoder that checks both CRCs of every frame,
//! and an encoder (used by tests and mock-llm).
//!
//! A frame: total length (u32, big-endian), headers length (u32), CRC32 of those eight
//! bytes, the headers, the payload, and a CRC32 of everything before it. A header: name
//! length (u8), name, value type (u8), value.

use crate::base::sse::Event;

/// Smallest frame: the 12-byte prelude and the 4-byte message CRC.
const MIN_FRAME: usize = 16;
/// Largest frame accepted (the format allows 16 MiB).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("frame length {0} out of range")]
    BadLength(usize),
    #[error("prelude CRC mismatch")]
    PreludeCrc,
    #[error("message CRC mismatch")]
    MessageCrc,
    #[error("malformed headers")]
    BadHeaders,
}

/// One header value; only strings matter to Bedrock's events, the others are skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderValue {
    String(String),
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub headers: Vec<(String, HeaderValue)>,
    pub payload: Vec<u8>,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|(n, v)| match v {
            HeaderValue::String(s) if n == name => Some(s.as_str()),
            _ => None,
        })
    }

    /// The message as an event: named by `:event-type`; exceptions and errors become an
    /// `error` event whose data is `{"type": ..., "message": ...}`.
    pub fn to_event(&self) -> Event {
        let payload = String::from_utf8_lossy(&self.payload).into_owned();
        match self.header(":message-type") {
            Some("exception") => {
                let kind = self.header(":exception-type").unwrap_or("exception");
                let message = serde_json::from_str::<serde_json::Value>(&payload)
                    .ok()
                    .and_then(|v| {
                        v.get("message")
                            .and_then(|m| m.as_str())
                            .map(str::to_string)
                    })
                    .unwrap_or(payload);
                Event {
                    name: "error".into(),
                    data: serde_json::json!({"type": kind, "message": message}).to_string(),
                }
            }
            Some("error") => Event {
                name: "error".into(),
                data: serde_json::json!({
                    "type": self.header(":error-code").unwrap_or("error"),
                    "message": self.header(":error-message").unwrap_or(""),
                })
                .to_string(),
            },
            _ => Event {
                name: self.header(":event-type").unwrap_or("").to_string(),
                data: payload,
            },
        }
    }
}

fn read_u32(b: &[u8]) -> usize {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
}

fn parse_headers(mut b: &[u8]) -> Result<Vec<(String, HeaderValue)>, DecodeError> {
    let mut out = Vec::new();
    let take = |b: &mut &[u8], n: usize| -> Result<Vec<u8>, DecodeError> {
        if b.len() < n {
            return Err(DecodeError::BadHeaders);
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head.to_vec())
    };
    while !b.is_empty() {
        let name_len = take(&mut b, 1)?[0] as usize;
        let name =
            String::from_utf8(take(&mut b, name_len)?).map_err(|_| DecodeError::BadHeaders)?;
        let kind = take(&mut b, 1)?[0];
        let value = match kind {
            0 | 1 => HeaderValue::Other,
            2 => {
                take(&mut b, 1)?;
                HeaderValue::Other
            }
            3 => {
                take(&mut b, 2)?;
                HeaderValue::Other
            }
            4 => {
                take(&mut b, 4)?;
                HeaderValue::Other
            }
            5 | 8 => {
                take(&mut b, 8)?;
                HeaderValue::Other
            }
            6 | 7 => {
                let len = take(&mut b, 2)?;
                let len = u16::from_be_bytes([len[0], len[1]]) as usize;
                let bytes = take(&mut b, len)?;
                if kind == 7 {
                    HeaderValue::String(
                        String::from_utf8(bytes).map_err(|_| DecodeError::BadHeaders)?,
                    )
                } else {
                    HeaderValue::Other
                }
            }
            9 => {
                take(&mut b, 16)?;
                HeaderValue::Other
            }
            _ => return Err(DecodeError::BadHeaders),
        };
        out.push((name, value));
    }
    Ok(out)
}

/// Bytes received so far that do not yet make a whole frame.
#[derive(Debug, Default)]
pub struct Decoder {
    buffer: Vec<u8>,
}

impl Decoder {
    /// Adds `bytes` and returns the frames they complete. After an error the stream cannot
    /// be trusted any more: the caller ends it.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Message>, DecodeError> {
        self.buffer.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut at = 0;
        while self.buffer.len() - at >= 12 {
            let b = &self.buffer[at..];
            let total = read_u32(b);
            let headers_len = read_u32(&b[4..]);
            if !(MIN_FRAME..=MAX_FRAME).contains(&total) || headers_len > total - MIN_FRAME {
                return Err(DecodeError::BadLength(total));
            }
            if crc32fast::hash(&b[..8]) != read_u32(&b[8..]) as u32 {
                return Err(DecodeError::PreludeCrc);
            }
            if b.len() < total {
                break;
            }
            let frame = &b[..total];
            if crc32fast::hash(&frame[..total - 4]) != read_u32(&frame[total - 4..]) as u32 {
                return Err(DecodeError::MessageCrc);
            }
            let headers = parse_headers(&frame[12..12 + headers_len])?;
            out.push(Message {
                headers,
                payload: frame[12 + headers_len..total - 4].to_vec(),
            });
            at += total;
        }
        self.buffer.drain(..at);
        Ok(out)
    }

    /// True when bytes of an unfinished frame are held.
    pub fn has_partial(&self) -> bool {
        !self.buffer.is_empty()
    }
}

/// Encodes a frame with string headers.
pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(name.len() as u8);
        h.extend_from_slice(name.as_bytes());
        h.push(7);
        h.extend_from_slice(&(value.len() as u16).to_be_bytes());
        h.extend_from_slice(value.as_bytes());
    }
    let total = 12 + h.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// An event frame as Bedrock sends it.
pub fn encode_event(event_type: &str, payload: &[u8]) -> Vec<u8> {
    encode(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_crc() {
        // The CRC-32 (IEEE) check value.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn round_trip_at_every_split() {
        let mut stream = encode_event("messageStart", br#"{"role":"assistant"}"#);
        stream.extend(encode_event(
            "contentBlockDelta",
            br#"{"contentBlockIndex":0,"delta":{"text":"Hi"},"p":"abc"}"#,
        ));
        stream.extend(encode(
            &[
                (":message-type", "exception"),
                (":exception-type", "throttlingException"),
            ],
            br#"{"message":"slow down"}"#,
        ));
        for cut in 0..stream.len() {
            let mut d = Decoder::default();
            let mut got = d.feed(&stream[..cut]).unwrap();
            got.extend(d.feed(&stream[cut..]).unwrap());
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert!(!d.has_partial());
            assert_eq!(got[0].to_event().name, "messageStart");
            assert_eq!(
                got[1].to_event().data,
                r#"{"contentBlockIndex":0,"delta":{"text":"Hi"},"p":"abc"}"#
            );
            let e = got[2].to_event();
            assert_eq!(e.name, "error");
            assert!(e.data.contains("throttlingException") && e.data.contains("slow down"));
        }
    }

    #[test]
    fn corruption_is_detected() {
        let frame = encode_event("messageStop", br#"{"stopReason":"end_turn"}"#);
        for i in 0..frame.len() {
            let mut bad = frame.clone();
            bad[i] ^= 0x01;
            // The prelude CRC covers the lengths, the message CRC the rest: no flip passes.
            assert!(
                Decoder::default().feed(&bad).is_err(),
                "byte {i} not detected"
            );
        }
    }
}
