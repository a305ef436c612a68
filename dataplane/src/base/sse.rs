//! An incremental parser of server-sent events: feed it bytes as they arrive, in chunks
//! cut anywhere, and take out each complete event.

/// One event: its `event:` name (empty when none) and its `data:` lines joined by `\n`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    pub data: String,
}

/// Bytes received so far that do not yet end an event.
#[derive(Debug, Default)]
pub struct Parser {
    buffer: Vec<u8>,
    /// How much of `buffer` is known to hold no blank line, so a long event arriving in
    /// small chunks is scanned once, not once per chunk.
    scanned: usize,
}

/// Longest event accepted; a stream that sends more without a blank line is broken.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("an event of more than {MAX_EVENT_BYTES} bytes")]
pub struct TooLarge;

impl Parser {
    /// Adds `bytes` and returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Event>, TooLarge> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        // A separator may straddle the old end: look back three bytes.
        let mut from = self.scanned.saturating_sub(3);
        while let Some((at, sep)) = find_blank_line(&self.buffer[from..]) {
            let end = from + at;
            if let Some(event) = parse_event(&self.buffer[..end]) {
                events.push(event);
            }
            self.buffer.drain(..end + sep);
            from = 0;
        }
        self.scanned = self.buffer.len();
        if self.buffer.len() > MAX_EVENT_BYTES {
            return Err(TooLarge);
        }
        Ok(events)
    }

    /// The event left when the stream ends without a final blank line.
    pub fn finish(&mut self) -> Option<Event> {
        let raw = std::mem::take(&mut self.buffer);
        self.scanned = 0;
        parse_event(&raw)
    }
}

/// Position of the first blank line (the end of an event) and the separator's length.
pub fn find_blank_line(b: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 1 < b.len() {
        match (b[i], b[i + 1]) {
            (b'\n', b'\n') => return Some((i, 2)),
            (b'\r', b'\r') => return Some((i, 2)),
            (b'\r', b'\n') if b.get(i + 2) == Some(&b'\r') && b.get(i + 3) == Some(&b'\n') => {
                return Some((i, 4));
            }
            _ => i += 1,
        }
    }
    None
}

/// The event in `raw` (one event's lines, without the blank line); `None` for comments.
pub fn parse_event(raw: &[u8]) -> Option<Event> {
    let text = String::from_utf8_lossy(raw);
    let mut event = Event::default();
    let mut data: Vec<&str> = Vec::new();
    for line in text.split(['\n', '\r']).filter(|l| !l.is_empty()) {
        if line.starts_with(':') {
            continue; // comment
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event.name = value.to_string(),
            "data" => data.push(value),
            _ => {}
        }
    }
    if data.is_empty() && event.name.is_empty() {
        return None;
    }
    event.data = data.join("\n");
    Some(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "event: message_start\ndata: {\"a\":1}\n\n: keep-alive\n\nevent: ping\ndata: {}\n\ndata: line1\ndata: line2\n\n";

    fn expected() -> Vec<Event> {
        vec![
            Event {
                name: "message_start".into(),
                data: "{\"a\":1}".into(),
            },
            Event {
                name: "ping".into(),
                data: "{}".into(),
            },
            Event {
                name: String::new(),
                data: "line1\nline2".into(),
            },
        ]
    }

    #[test]
    fn whole_and_split_at_every_byte() {
        let mut p = Parser::default();
        assert_eq!(p.feed(STREAM.as_bytes()).unwrap(), expected());
        for cut in 0..STREAM.len() {
            let mut p = Parser::default();
            let mut got = p.feed(&STREAM.as_bytes()[..cut]).unwrap();
            got.extend(p.feed(&STREAM.as_bytes()[cut..]).unwrap());
            assert_eq!(got, expected(), "cut at {cut}");
        }
    }

    #[test]
    fn byte_at_a_time() {
        let mut p = Parser::default();
        let mut got = Vec::new();
        for b in STREAM.as_bytes() {
            got.extend(p.feed(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(got, expected());
        let mut p = Parser::default();
        let mut got = Vec::new();
        for b in b"data: a\r\n\r\ndata: b\r\n\r\n" {
            got.extend(p.feed(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn crlf_and_unterminated_tail() {
        let mut p = Parser::default();
        let got = p.feed(b"data: a\r\n\r\ndata: b").unwrap();
        assert_eq!(
            got,
            vec![Event {
                name: String::new(),
                data: "a".into()
            }]
        );
        assert_eq!(
            p.finish(),
            Some(Event {
                name: String::new(),
                data: "b".into()
            })
        );
    }
}
