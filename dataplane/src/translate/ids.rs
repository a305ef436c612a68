//! The provider's own response ids (`"resp_..."` strings in an answer, a stream's events,
//! a stored response) rewritten on their way to the client, to ids the gateway can route
//! back. What an id becomes is the pipeline's business ([`IdSeal`]); finding them is here.

use memchr::memmem;

/// Turns a provider's response id into the client's.
pub trait IdSeal: Send + Sync + std::fmt::Debug {
    /// The client's id for the provider's `raw`; `None` leaves it as it is.
    fn seal(&self, raw: &str) -> Option<String>;
}

/// The longest id looked at: OpenAI's are about 50 characters.
const MAX_ID: usize = 256;

/// `text` with every quoted `resp_...` id (letters, digits, `_` and `-`) that `seal`
/// rewrites rewritten; `None` when nothing changed, so the caller keeps its buffer.
pub fn rewrite(text: &[u8], seal: &dyn IdSeal) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    for at in memmem::find_iter(text, b"\"resp_") {
        let start = at + 1;
        let len = text[start..]
            .iter()
            .take(MAX_ID + 1)
            .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-'));
        let Some(len) = len.filter(|n| *n <= MAX_ID) else {
            continue;
        };
        if text.get(start + len) != Some(&b'"') {
            continue;
        }
        // ASCII by construction.
        let raw = std::str::from_utf8(&text[start..start + len]).unwrap_or("");
        let Some(sealed) = seal.seal(raw) else {
            continue;
        };
        let buf = out.get_or_insert_with(|| Vec::with_capacity(text.len() + 256));
        buf.extend_from_slice(&text[copied..start]);
        buf.extend_from_slice(sealed.as_bytes());
        copied = start + len;
    }
    let mut buf = out?;
    buf.extend_from_slice(&text[copied..]);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Upper;

    impl IdSeal for Upper {
        fn seal(&self, raw: &str) -> Option<String> {
            (!raw.starts_with("resp_X")).then(|| format!("resp_X{}", raw.to_uppercase()))
        }
    }

    #[test]
    fn every_quoted_response_id_is_rewritten_and_nothing_else() {
        let text = br#"{"id":"resp_abc","previous_response_id":"resp_def","text":"see resp_ghi","item":{"id":"msg_1"}}"#;
        let out = rewrite(text, &Upper).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"id":"resp_XRESP_ABC","previous_response_id":"resp_XRESP_DEF","text":"see resp_ghi","item":{"id":"msg_1"}}"#
        );
        assert_eq!(rewrite(br#"{"id":"msg_1"}"#, &Upper), None);
        assert_eq!(
            rewrite(br#"{"id":"resp_Xdone"}"#, &Upper),
            None,
            "already the client's"
        );
        assert_eq!(rewrite(br#"{"id":"resp_a b"}"#, &Upper), None, "not an id");
    }
}
