//! The secret values a snapshot holds, found and replaced in text a policy asked to record
//! (a prompt or an answer kept in a span or an audit record). What counts as a secret:
//! every provider credential (the header value and, for `Bearer`, the token in it; AWS
//! keys and session tokens), every MCP server's header value and OAuth client secret, and
//! every virtual key the snapshot knows (found by hashing the text's words, since only
//! their hashes are held).

use std::collections::HashMap;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use sha2::{Digest, Sha256};

use crate::config::mcp::McpServer;
use crate::config::model::{Auth, Provider, VirtualKey};

/// What a secret is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Shorter values are not searched for: they would match ordinary words, and are not
/// credentials any provider issues.
const MIN_SECRET: usize = 8;

/// Words longer than this are not hashed as possible virtual keys.
const MAX_KEY_WORD: usize = 512;

/// The secret values of one config, ready to search for.
#[derive(Debug, Default)]
pub struct Redactor {
    values: Option<AhoCorasick>,
}

impl Redactor {
    pub fn new<'a>(
        providers: impl Iterator<Item = &'a Arc<Provider>>,
        mcp_servers: impl Iterator<Item = &'a Arc<McpServer>>,
    ) -> Self {
        let mut values: Vec<Vec<u8>> = Vec::new();
        let mut add = |v: &[u8]| {
            let v = v.trim_ascii();
            if v.len() >= MIN_SECRET {
                values.push(v.to_vec());
            }
            // `Bearer <token>`: the token alone is the secret a text would hold.
            if let Some((scheme, token)) = v.split_at_checked(7)
                && scheme.eq_ignore_ascii_case(b"bearer ")
                && token.trim_ascii().len() >= MIN_SECRET
            {
                values.push(token.trim_ascii().to_vec());
            }
        };
        for p in providers {
            for c in &p.credentials {
                match &c.auth {
                    Auth::Header { value, .. } => add(value.as_bytes()),
                    Auth::Aws(a) => {
                        add(a.access_key_id.as_bytes());
                        add(a.secret_access_key.as_bytes());
                        if let Some(t) = &a.session_token {
                            add(t.as_bytes());
                        }
                    }
                    // Held as a parsed signing key; its text is not kept to search for.
                    Auth::Google(_) => {}
                }
            }
        }
        for s in mcp_servers {
            if let Some((_, value)) = &s.auth {
                add(value.as_bytes());
            }
            if let Some(o) = &s.oauth {
                add(o.client_secret.as_bytes());
            }
        }
        values.sort();
        values.dedup();
        let values = (!values.is_empty()).then(|| {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&values)
        });
        Self {
            values: values.and_then(Result::ok),
        }
    }

    /// `text` with every secret value and every word that is one of `keys` replaced by
    /// [`REDACTED`].
    pub fn redact(&self, text: &str, keys: &HashMap<[u8; 32], Arc<VirtualKey>>) -> String {
        let text = match &self.values {
            Some(ac) => ac.replace_all(text, &vec![REDACTED; ac.patterns_len()]),
            None => text.to_string(),
        };
        redact_keys(&text, keys)
    }
}

/// Characters that end a word which might be a virtual key: space, quotes, brackets and
/// the separators around a value in text or JSON.
fn separates(c: char) -> bool {
    c.is_whitespace()
        || matches!(c, '"' | '\'' | '`' | ',' | ';' | '(' | ')' | '<' | '>')
        || matches!(c, '[' | ']' | '{' | '}' | '=')
}

fn redact_keys(text: &str, keys: &HashMap<[u8; 32], Arc<VirtualKey>>) -> String {
    if keys.is_empty() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest.find(separates).unwrap_or(rest.len());
        let (word, tail) = rest.split_at(end);
        let is_key = (MIN_SECRET..=MAX_KEY_WORD).contains(&word.len()) && {
            let hash: [u8; 32] = Sha256::digest(word.as_bytes()).into();
            keys.contains_key(&hash)
        };
        out.push_str(if is_key { REDACTED } else { word });
        let Some(sep) = tail.chars().next() else {
            break;
        };
        out.push(sep);
        rest = &tail[sep.len_utf8()..];
    }
    out
}

/// A provider of `kind` with one credential, `secret`: what tests of redaction hold.
#[cfg(test)]
pub(crate) fn provider_with_secret(
    kind: tollgate_proto::ProviderType,
    secret: &str,
) -> Arc<Provider> {
    use tollgate_proto as pb;
    let p = pb::Provider {
        namespace: "default".into(),
        name: format!("{kind:?}"),
        r#type: kind as i32,
        region: "us-east-1".into(),
        endpoint: "http://p.test/v1".into(),
        credentials: vec![pb::Credential {
            id: "s/key".into(),
            api_key: secret.into(),
            weight: 1,
            ..Default::default()
        }],
        ..Default::default()
    };
    Arc::new(Provider::try_from(&p).expect("a valid provider"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_proto as pb;

    fn provider(kind: pb::ProviderType, secret: &str) -> Arc<Provider> {
        provider_with_secret(kind, secret)
    }

    #[test]
    fn secret_values_and_bearer_tokens_are_replaced() {
        let openai = provider(pb::ProviderType::Openai, "sk-provider-secret-1");
        let aws = provider(
            pb::ProviderType::Bedrock,
            r#"{"accessKeyId":"AKIAEXAMPLE123","secretAccessKey":"aws/secret+key=1"}"#,
        );
        let r = Redactor::new([openai, aws].iter(), std::iter::empty());
        let keys = HashMap::new();
        assert_eq!(
            r.redact("my key is sk-provider-secret-1, ok?", &keys),
            "my key is <redacted>, ok?"
        );
        assert_eq!(r.redact("Bearer sk-provider-secret-1", &keys), "<redacted>");
        assert_eq!(
            r.redact("id AKIAEXAMPLE123 secret aws/secret+key=1.", &keys),
            "id <redacted> secret <redacted>."
        );
        assert_eq!(r.redact("nothing secret", &keys), "nothing secret");
    }

    #[test]
    fn a_virtual_key_is_found_by_its_hash() {
        let hash: [u8; 32] = Sha256::digest(b"tg-finance-key-1").into();
        let key = VirtualKey::try_from(&pb::VirtualKey {
            namespace: "default".into(),
            name: "finance".into(),
            key_sha256: hash.to_vec(),
            ..Default::default()
        })
        .unwrap();
        let keys = HashMap::from([(hash, Arc::new(key))]);
        let r = Redactor::default();
        assert_eq!(
            r.redact("use \"tg-finance-key-1\" (or tg-finance-key-2)", &keys),
            "use \"<redacted>\" (or tg-finance-key-2)"
        );
        assert_eq!(r.redact("héllo wörld", &keys), "héllo wörld");
        assert_eq!(r.redact("tg-finance-key-1", &keys), "<redacted>");
    }
}
