//! Account names and their definitions from the compiled config.
//!
//! - `budget/<namespace>/<name>`: a Budget's limit, period and thresholds.
//! - `rate/<namespace>/<key>`: a VirtualKey's requests and tokens per minute (rolling).
//! - `conc/<namespace>/<key>`: a VirtualKey's requests in flight at once.
//! - `session/<namespace>/<key>/<session id>`: a VirtualKey's per-session caps.
//! - `tool/<namespace>/<policy>/<rule index>/<key namespace>/<key>/<tool>`: a key's calls
//!   a minute of one MCP tool under an MCPToolPolicy rule's `callsPerMinute` (rolling).

use std::sync::Arc;

use tollgate_proto as pb;
use tollgate_proto::resource::Body;

use crate::compile::Compiled;
use crate::spend::ledger::{AccountDef, Definitions, Qty, Unit, Window};

/// USD to nano-USD, rounded down (a limit never grows by rounding).
pub fn nano_usd(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e9).floor() as u64
    } else {
        0
    }
}

/// An account's name as shown on the admin port: a session id (chosen by the client,
/// and a key to the session's spend) is replaced by a short digest of it.
pub fn shown(account: &str) -> String {
    use sha2::Digest;
    match account
        .strip_prefix("session/")
        .and_then(|r| r.rsplit_once('/'))
    {
        Some((key, id)) => {
            let digest = sha2::Sha256::digest(id.as_bytes());
            let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
            format!("session/{key}/sha256:{hex}")
        }
        None => account.to_owned(),
    }
}

/// Account definitions read straight from a compiled config.
#[derive(Debug, Default)]
pub struct ConfigDefs(pub Arc<Compiled>);

impl ConfigDefs {
    fn body(&self, type_url: &str, name: &str) -> Option<&Body> {
        self.0.resources_of(type_url)?.get(name)?.body.as_ref()
    }

    fn key(&self, name: &str) -> Option<&pb::VirtualKey> {
        match self.body(pb::type_url::VIRTUAL_KEY, name)? {
            Body::VirtualKey(k) => Some(k),
            _ => None,
        }
    }

    fn tool_policy(&self, name: &str) -> Option<&pb::McpToolPolicy> {
        match self.body(pb::type_url::MCP_TOOL_POLICY, name)? {
            Body::McpToolPolicy(p) => Some(p),
            _ => None,
        }
    }

    fn budget(&self, name: &str) -> Option<&pb::Budget> {
        match self.body(pb::type_url::BUDGET, name)? {
            Body::Budget(b) => Some(b),
            _ => None,
        }
    }
}

pub fn budget_def(b: &pb::Budget) -> AccountDef {
    let window = match &b.period {
        Some(pb::budget::Period::Calendar(c)) => {
            let unit = match c.as_str() {
                "week" => Unit::Week,
                "month" => Unit::Month,
                _ => Unit::Day,
            };
            let tz = jiff::tz::TimeZone::get(&b.time_zone).unwrap_or(jiff::tz::TimeZone::UTC);
            Window::Calendar { unit, tz }
        }
        Some(pb::budget::Period::RollingMs(ms)) => Window::Rolling {
            ms: (*ms as i64).max(1),
        },
        None => Window::Lifetime,
    };
    AccountDef {
        limit: Qty {
            usd: b.limit_usd.map(nano_usd).unwrap_or(Qty::UNLIMITED),
            tokens: b.limit_tokens.unwrap_or(Qty::UNLIMITED),
            requests: Qty::UNLIMITED,
        },
        window,
        block_percent: b
            .thresholds
            .iter()
            .filter(|t| t.block)
            .map(|t| t.percent)
            .min()
            .unwrap_or(100),
        warn_percents: b
            .thresholds
            .iter()
            .filter(|t| !t.block)
            .map(|t| t.percent)
            .collect(),
    }
}

/// A limit without thresholds: spend stops at the limit and nothing warns before.
fn hard(limit: Qty, window: Window) -> AccountDef {
    AccountDef {
        limit,
        window,
        block_percent: 100,
        warn_percents: vec![],
    }
}

/// A limit on requests alone.
fn requests(n: u64) -> Qty {
    Qty {
        usd: Qty::UNLIMITED,
        tokens: Qty::UNLIMITED,
        requests: n,
    }
}

/// 0 in a resource's limit field means no limit.
fn or_unlimited(v: u64) -> u64 {
    if v == 0 { Qty::UNLIMITED } else { v }
}

impl Definitions for ConfigDefs {
    fn define(&self, account: &str) -> Option<AccountDef> {
        let (kind, rest) = account.split_once('/')?;
        match kind {
            "budget" => self.budget(rest).map(budget_def),
            "rate" => {
                let l = self.key(rest)?.limits.as_ref()?;
                if l.requests_per_minute == 0 && l.tokens_per_minute == 0 {
                    return None;
                }
                Some(hard(
                    Qty {
                        usd: Qty::UNLIMITED,
                        tokens: or_unlimited(l.tokens_per_minute),
                        requests: or_unlimited(l.requests_per_minute),
                    },
                    Window::Rolling { ms: 60_000 },
                ))
            }
            "conc" => {
                let n = self.key(rest)?.limits.as_ref()?.concurrency;
                (n > 0).then(|| hard(requests(u64::from(n)), Window::Concurrent))
            }
            "session" => {
                let (key, _session) = rest.rsplit_once('/')?;
                let s = self.key(key)?.session.as_ref()?;
                Some(hard(
                    Qty {
                        usd: s.max_cost_usd.map(nano_usd).unwrap_or(Qty::UNLIMITED),
                        tokens: or_unlimited(s.max_tokens),
                        requests: Qty::UNLIMITED,
                    },
                    Window::Lifetime,
                ))
            }
            "tool" => {
                // The key and tool that follow only tell accounts apart: the rule alone
                // sets the limit.
                let mut parts = rest.splitn(4, '/');
                let (ns, policy, index) = (parts.next()?, parts.next()?, parts.next()?);
                let rule = self
                    .tool_policy(&format!("{ns}/{policy}"))?
                    .rules
                    .get(index.parse::<usize>().ok()?)?;
                (rule.calls_per_minute > 0).then(|| {
                    hard(
                        requests(rule.calls_per_minute),
                        Window::Rolling { ms: 60_000 },
                    )
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_shown_as_digests_and_other_accounts_as_they_are() {
        let shown = shown("session/team-a/agent/run-42");
        assert!(shown.starts_with("session/team-a/agent/sha256:"), "{shown}");
        assert!(!shown.contains("run-42"));
        assert_eq!(shown.len(), "session/team-a/agent/sha256:".len() + 12);
        assert_eq!(
            super::shown("budget/team-a/monthly"),
            "budget/team-a/monthly"
        );
    }

    #[test]
    fn usd_becomes_whole_nano_usd_rounded_down() {
        assert_eq!(nano_usd(1.0), 1_000_000_000);
        assert_eq!(nano_usd(0.000_000_001_9), 1);
        assert_eq!(nano_usd(-1.0), 0);
        assert_eq!(nano_usd(f64::NAN), 0);
    }

    #[test]
    fn a_budget_blocks_at_its_lowest_block_threshold() {
        let b = pb::Budget {
            limit_usd: Some(10.0),
            period: Some(pb::budget::Period::Calendar("month".into())),
            time_zone: "Europe/Paris".into(),
            thresholds: vec![
                pb::Threshold {
                    percent: 80,
                    block: false,
                },
                pb::Threshold {
                    percent: 95,
                    block: true,
                },
            ],
            ..Default::default()
        };
        let d = budget_def(&b);
        assert_eq!(d.block_percent, 95);
        assert_eq!(d.warn_percents, vec![80]);
        assert_eq!(d.limit.usd, 10_000_000_000);
        assert_eq!(d.limit.tokens, Qty::UNLIMITED);
        assert_eq!(d.limited(), 1);
        assert!(matches!(
            d.window,
            Window::Calendar {
                unit: Unit::Month,
                ..
            }
        ));
    }
}
