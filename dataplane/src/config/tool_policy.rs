//! Which tools a key may see and call: the rules of every MCPToolPolicy that selects it.
//! Default deny: a tool is permitted when some rule for its server allows it (a glob) and
//! no rule for that server denies it.

use crate::base::glob;

/// A tool name as policies compare it: without surrounding white space, control and
/// invisible formatting characters (NUL, zero-width spaces), in lower case. A server may
/// match names that loosely, so `deny: [delete]` must also stop `Delete`, `delete ` and
/// `delete\0`.
pub fn canonical(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_control() && !is_format(*c))
        .collect::<String>()
        .trim()
        .to_lowercase()
}

/// Unicode's invisible formatting characters most used to disguise a name.
fn is_format(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
}

fn matches(pattern: &str, tool: &str) -> bool {
    glob::matches(pattern, tool)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The MCPServer (`<namespace>/<name>`) the rule is about.
    pub server: String,
    /// Tool-name globs, in [`canonical`] form (made so once, when the config arrives).
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    /// Calls a minute per tool, across the key's calls; 0 for no limit.
    pub calls_per_minute: u64,
    /// `<policy namespace>/<policy name>/<rule index>`: names the ledger account that
    /// counts a key's calls of a tool under this rule's limit.
    pub origin: String,
}

/// What the MCPToolPolicies that select a key say about it, together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPolicy {
    pub rules: Rules,
    /// Some policy asks for compacted tool schemas.
    pub compact_schemas: bool,
    /// Some policy asks for tool-call arguments in the audit trail.
    pub log_arguments: bool,
}

/// The rules that apply to one key, from all its policies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules(pub Vec<Rule>);

impl Rules {
    fn for_server<'a, 's>(
        &'a self,
        server: &'s str,
    ) -> impl Iterator<Item = &'a Rule> + use<'a, 's> {
        self.0.iter().filter(move |r| r.server == server)
    }

    /// Whether the key may see and call `tool` of `server`.
    /// Names are compared in their [`canonical`] forms.
    pub fn permits(&self, server: &str, tool: &str) -> bool {
        let tool = canonical(tool);
        let mut allowed = false;
        for r in self.for_server(server) {
            if r.deny.iter().any(|g| matches(g, &tool)) {
                return false;
            }
            allowed |= r.allow.iter().any(|g| matches(g, &tool));
        }
        allowed
    }

    /// Whether any of `server`'s tools may be permitted (the server is worth asking).
    pub fn reaches(&self, server: &str) -> bool {
        self.for_server(server).any(|r| !r.allow.is_empty())
    }

    /// The rule with the tightest calls-a-minute limit on `tool` of `server`, if any.
    pub fn limit(&self, server: &str, tool: &str) -> Option<&Rule> {
        let tool = canonical(tool);
        self.for_server(server)
            .filter(|r| r.calls_per_minute > 0 && r.allow.iter().any(|g| matches(g, &tool)))
            .min_by_key(|r| r.calls_per_minute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_respelled_name_is_the_same_tool_to_a_policy() {
        let rules = Rules(vec![rule("ns/fs", &["*"], &["delete*"], 0)]);
        for name in [
            "delete",
            "Delete",
            "delete ",
            " DELETE",
            "delete\0",
            "de\u{200B}lete",
            "DELETE_ALL",
        ] {
            assert!(!rules.permits("ns/fs", name), "{name:?}");
        }
        assert!(rules.permits("ns/fs", "read"));
        let upper = Rules(vec![rule("ns/fs", &["Read*"], &[], 5)]);
        assert!(upper.permits("ns/fs", "read_file"));
        assert!(upper.limit("ns/fs", "READ_FILE").is_some());
    }

    fn rule(server: &str, allow: &[&str], deny: &[&str], cpm: u64) -> Rule {
        Rule {
            server: server.into(),
            allow: allow.iter().map(|s| canonical(s)).collect(),
            deny: deny.iter().map(|s| canonical(s)).collect(),
            calls_per_minute: cpm,
            origin: format!("ns/p/{cpm}"),
        }
    }

    #[test]
    fn default_deny_allow_globs_and_deny_wins() {
        let none = Rules::default();
        assert!(!none.permits("ns/fin", "ledger_read"), "default deny");
        assert!(!none.reaches("ns/fin"));

        let rules = Rules(vec![
            rule(
                "ns/fin",
                &["ledger_*", "invoice_get"],
                &["ledger_delete"],
                0,
            ),
            rule("ns/fin", &[], &["*_admin"], 0),
            rule("ns/mail", &[], &[], 0),
            rule("ns/time", &["*"], &[], 30),
            rule("ns/time", &["now"], &[], 10),
        ]);
        assert!(rules.permits("ns/fin", "ledger_read"));
        assert!(rules.permits("ns/fin", "invoice_get"));
        assert!(!rules.permits("ns/fin", "invoice_pay"), "not allowed");
        assert!(!rules.permits("ns/fin", "ledger_delete"), "denied");
        assert!(
            !rules.permits("ns/fin", "ledger_admin"),
            "denied by another rule"
        );
        assert!(
            !rules.permits("ns/mail", "send"),
            "a rule that allows nothing"
        );
        assert!(!rules.reaches("ns/mail"));
        assert!(
            !rules.permits("other/fin", "ledger_read"),
            "another namespace's server"
        );
        let limit = |server, tool| rules.limit(server, tool).map(|r| r.calls_per_minute);
        assert_eq!(limit("ns/time", "now"), Some(10));
        assert_eq!(limit("ns/time", "zones"), Some(30));
        assert_eq!(limit("ns/fin", "ledger_read"), None);
        assert_eq!(rules.limit("ns/time", "now").unwrap().origin, "ns/p/10");
    }
}
