//! Model prices: the built-in table (`data/prices.json`, with its sources and date) and a
//! provider's `spec.models` overrides, and what a request's usage costs.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde::Deserialize;

use crate::runtime::ProviderKind;
use crate::translate::Usage;

/// USD per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Prompt-cache reads; the input price when unknown.
    pub cached: Option<f64>,
}

/// Nano-USD in one USD.
pub const NANO: f64 = 1e9;

impl Price {
    /// The cost of `usage`, in nano-USD (1e-9 USD), rounded to the nearest. `usage.input`
    /// includes the cached tokens.
    pub fn cost_nano(&self, usage: &Usage) -> u64 {
        let cached = usage.cached.min(usage.input);
        let fresh = usage.input - cached;
        let per_token = |per_million: f64| per_million * (NANO / 1e6);
        let cost = fresh as f64 * per_token(self.input)
            + cached as f64 * per_token(self.cached.unwrap_or(self.input))
            + usage.output as f64 * per_token(self.output);
        cost.round().max(0.0) as u64
    }

    /// The most `input` tokens in and `output` tokens out can cost, in nano-USD.
    pub fn worst_case_nano(&self, input: u64, output: u64) -> u64 {
        self.cost_nano(&Usage {
            input,
            output,
            cached: 0,
            reasoning: 0,
        })
    }
}

#[derive(Deserialize)]
struct Table {
    families: HashMap<String, Vec<Entry>>,
    providers: HashMap<String, Vec<String>>,
}

#[derive(Deserialize)]
struct Entry {
    model: String,
    input: f64,
    output: f64,
    #[serde(default)]
    cached: Option<f64>,
}

/// Per provider type, its families' entries, longest name first (for prefix lookup).
static BUILTIN: LazyLock<HashMap<String, Vec<(String, Price)>>> = LazyLock::new(|| {
    let table: Table = match serde_json::from_str(include_str!("../data/prices.json")) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "the built-in price table cannot be read; prices are unknown");
            return HashMap::new();
        }
    };
    table
        .providers
        .iter()
        .map(|(kind, families)| {
            let mut entries: Vec<(String, Price)> = families
                .iter()
                .filter_map(|f| table.families.get(f))
                .flatten()
                .map(|e| {
                    let price = Price {
                        input: e.input,
                        output: e.output,
                        cached: e.cached,
                    };
                    (e.model.clone(), price)
                })
                .collect();
            entries.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
            (kind.clone(), entries)
        })
        .collect()
});

/// Bedrock's cross-region inference profiles prefix the model id with a geography.
fn without_geography(model: &str) -> &str {
    for prefix in ["us.", "eu.", "apac.", "jp.", "au.", "global.", "us-gov."] {
        if let Some(rest) = model.strip_prefix(prefix) {
            return rest;
        }
    }
    model
}

/// The built-in price of `model` on a provider of `kind`: an exact entry, else the
/// longest entry the name starts with.
pub fn builtin(kind: ProviderKind, model: &str) -> Option<Price> {
    let entries = BUILTIN.get(kind.as_str())?;
    let model = without_geography(model);
    entries
        .iter()
        .find(|(name, _)| name == model)
        .or_else(|| {
            entries
                .iter()
                .find(|(name, _)| model.starts_with(name.as_str()))
        })
        .map(|(_, p)| *p)
}

/// A provider's override for one model (`spec.models`): fields it leaves out come from the
/// built-in price.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Override {
    pub model: String,
    pub input: Option<f64>,
    pub output: Option<f64>,
    pub cached: Option<f64>,
}

/// The price of `model` on a provider of `kind` with `overrides`.
pub fn lookup(kind: ProviderKind, overrides: &[Override], model: &str) -> Option<Price> {
    let base = builtin(kind, model);
    let Some(o) = overrides.iter().find(|o| o.model == model) else {
        return base;
    };
    let base = base.unwrap_or_default();
    Some(Price {
        input: o.input.unwrap_or(base.input),
        output: o.output.unwrap_or(base.output),
        cached: o.cached.or(base.cached),
    })
}

/// How many entries the table has.
#[cfg(test)]
fn table_size() -> usize {
    BUILTIN.values().map(Vec::len).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_reads_and_covers_every_priced_provider_type() {
        assert!(table_size() > 50);
        for (kind, model) in [
            (ProviderKind::OpenAi, "gpt-4o-mini"),
            (ProviderKind::AzureOpenAi, "gpt-4.1"),
            (ProviderKind::Anthropic, "claude-sonnet-4-5"),
            (ProviderKind::Gemini, "gemini-2.5-flash"),
            (ProviderKind::VertexAi, "gemini-2.5-pro"),
            (ProviderKind::VertexAi, "claude-haiku-4-5@20251001"),
            (
                ProviderKind::Bedrock,
                "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            ),
            (ProviderKind::Bedrock, "amazon.nova-lite-v1:0"),
        ] {
            assert!(builtin(kind, model).is_some(), "{kind:?} {model}");
        }
        assert_eq!(builtin(ProviderKind::OpenAiCompatible, "gpt-4o"), None);
    }

    #[test]
    fn dated_snapshots_take_the_longest_matching_name() {
        let mini = builtin(ProviderKind::OpenAi, "gpt-4o-mini-2024-07-18").unwrap();
        assert_eq!(mini.input, 0.15);
        let full = builtin(ProviderKind::OpenAi, "gpt-4o-2024-08-06").unwrap();
        assert_eq!(full.input, 2.5);
        assert_eq!(
            builtin(ProviderKind::OpenAi, "gpt-4o").unwrap().output,
            10.0
        );
    }

    #[test]
    fn overrides_replace_only_what_they_set() {
        let o = [Override {
            model: "gpt-4o".into(),
            input: Some(1.0),
            ..Default::default()
        }];
        let p = lookup(ProviderKind::OpenAi, &o, "gpt-4o").unwrap();
        assert_eq!((p.input, p.output, p.cached), (1.0, 10.0, Some(1.25)));
        let local = [Override {
            model: "llama".into(),
            input: Some(0.5),
            output: Some(0.5),
            cached: None,
        }];
        assert!(lookup(ProviderKind::OpenAiCompatible, &local, "llama").is_some());
        assert!(lookup(ProviderKind::OpenAiCompatible, &local, "other").is_none());
    }

    #[test]
    fn cost_counts_cached_input_at_its_own_price() {
        let p = Price {
            input: 2.0,
            output: 8.0,
            cached: Some(0.5),
        };
        let u = Usage {
            input: 1000,
            output: 100,
            cached: 400,
            reasoning: 0,
        };
        // 600 x 2000 + 400 x 500 + 100 x 8000 nano-USD.
        assert_eq!(p.cost_nano(&u), 1_200_000 + 200_000 + 800_000);
        assert_eq!(p.worst_case_nano(10, 10), 20_000 + 80_000);
    }
}
