//! Model prices: the built-in table (`data/prices.json`, with its date and sources), how a
//! model name finds its entry, and what tokens cost. Shared by the controller (which says
//! on each route whether its targets have a price) and the dataplane (which reserves and
//! charges with them).
//!
//! A model is found by its exact name, or by the name with the suffixes providers add to
//! one model's snapshots taken off, one rule at a time (see [`names`]); never by a prefix,
//! so `o1-pro` is not `o1` and a fine-tune is not its base model.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde::Deserialize;

/// USD per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub input: f64,
    pub output: f64,
    /// Prompt-cache reads; the input rate when unknown.
    pub cached: Option<f64>,
    /// Prompt-cache writes (Anthropic's, Bedrock's); the input rate when unknown.
    pub cache_write: Option<f64>,
    /// USD per server-side web search (Anthropic's `web_search` tool); none: not billed.
    pub per_search: Option<f64>,
}

/// A model's price: its rates, and the rates of a request whose input passes a
/// long-context threshold (the whole request is then billed at them).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Price {
    pub base: Rates,
    /// `(threshold in input tokens, rates above it)`.
    pub long: Option<(u64, Rates)>,
}

/// Nano-USD in one USD.
pub const NANO: f64 = 1e9;

/// Tokens of one request as a price applies to them. `input` includes `cached` and
/// `cache_write`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u64,
    pub cached: u64,
    pub cache_write: u64,
    pub output: u64,
    /// Server-side web searches, billed per search.
    pub web_searches: u64,
}

impl Price {
    /// A price with one set of rates.
    pub fn flat(input: f64, output: f64, cached: Option<f64>) -> Self {
        Price {
            base: Rates {
                input,
                output,
                cached,
                cache_write: None,
                per_search: None,
            },
            long: None,
        }
    }

    /// The rates a request with `input` tokens is billed at.
    pub fn rates_for(&self, input: u64) -> &Rates {
        match &self.long {
            Some((above, long)) if input > *above => long,
            _ => &self.base,
        }
    }

    /// The cost of `t`, in nano-USD (1e-9 USD), rounded to the nearest and saturating.
    pub fn cost_nano(&self, t: Tokens) -> u64 {
        let r = self.rates_for(t.input);
        let cached = t.cached.min(t.input);
        let written = t.cache_write.min(t.input - cached);
        let fresh = t.input - cached - written;
        // No tokens cost nothing, whatever the rate (0 x infinity would be NaN).
        let term = |n: u64, per_million: f64| {
            if n == 0 {
                0.0
            } else {
                n as f64 * per_million * (NANO / 1e6)
            }
        };
        let cost = term(fresh, r.input)
            + term(cached, r.cached.unwrap_or(r.input))
            + term(written, r.cache_write.unwrap_or(r.input))
            + term(t.output, r.output)
            + if t.web_searches == 0 {
                0.0
            } else {
                t.web_searches as f64 * r.per_search.unwrap_or(0.0) * NANO
            };
        if cost.is_nan() {
            // Only from a rate that is not a number: the most, never nothing.
            return u64::MAX;
        }
        // `as` saturates: an absurd count costs u64::MAX, never wraps.
        cost.round().max(0.0) as u64
    }

    /// What `n` web searches cost at most, in nano-USD.
    pub fn search_fees_nano(&self, n: u64) -> u64 {
        let per = [Some(&self.base), self.long.as_ref().map(|(_, l)| l)]
            .into_iter()
            .flatten()
            .filter_map(|r| r.per_search)
            .fold(0.0, f64::max);
        if n == 0 || per == 0.0 {
            return 0;
        }
        (n as f64 * per * NANO).round().max(0.0) as u64
    }

    /// The most `input` tokens in and `output` tokens out can cost, in nano-USD: every
    /// input token at the dearest of the input, cache-read and cache-write rates, at the
    /// base rates and (when `input` passes their threshold) the long-context ones,
    /// whichever costs more, as a request of fewer tokens is billed at the base rates.
    pub fn worst_case_nano(&self, input: u64, output: u64) -> u64 {
        let at = |r: &Rates| {
            let dearest = r
                .input
                .max(r.cache_write.unwrap_or(0.0))
                .max(r.cached.unwrap_or(0.0));
            Price::flat(dearest, r.output, None).cost_nano(Tokens {
                input,
                output,
                ..Tokens::default()
            })
        };
        let base = at(&self.base);
        match &self.long {
            Some((above, long)) if input > *above => base.max(at(long)),
            _ => base,
        }
    }
}

/// A provider's override for one model (`spec.models`): fields it leaves out come from the
/// built-in price of the model it is priced as.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Override {
    /// The name requests use (an Azure deployment, a local model).
    pub model: String,
    /// The built-in entry it is priced as (an Azure deployment's model); `None`: itself.
    pub price_as: Option<String>,
    pub input: Option<f64>,
    pub output: Option<f64>,
    pub cached: Option<f64>,
}

#[derive(Deserialize)]
struct Table {
    families: HashMap<String, Vec<Entry>>,
    providers: HashMap<String, Vec<String>>,
}

#[derive(Deserialize)]
struct EntryRates {
    input: f64,
    output: f64,
    #[serde(default)]
    cached: Option<f64>,
    #[serde(default)]
    cache_write: Option<f64>,
    #[serde(default)]
    web_search: Option<f64>,
}

impl From<&EntryRates> for Rates {
    fn from(e: &EntryRates) -> Self {
        Rates {
            input: e.input,
            output: e.output,
            cached: e.cached,
            cache_write: e.cache_write,
            per_search: e.web_search,
        }
    }
}

#[derive(Deserialize)]
struct Long {
    above: u64,
    #[serde(flatten)]
    rates: EntryRates,
}

#[derive(Deserialize)]
struct Entry {
    model: String,
    #[serde(flatten)]
    rates: EntryRates,
    #[serde(default)]
    long: Option<Long>,
    /// Other names of the same model at the same price.
    #[serde(default)]
    aliases: Vec<String>,
}

/// Per provider type, every name its families list, with its price.
static BUILTIN: LazyLock<HashMap<String, HashMap<String, Price>>> = LazyLock::new(|| {
    let table: Table = match serde_json::from_str(include_str!("../data/prices.json")) {
        Ok(t) => t,
        // A test reads the table, so a build whose table does not parse does not ship.
        Err(_) => return HashMap::new(),
    };
    table
        .providers
        .iter()
        .map(|(kind, families)| {
            let names = families
                .iter()
                .filter_map(|f| table.families.get(f))
                .flatten()
                .flat_map(|e| {
                    let price = Price {
                        base: Rates::from(&e.rates),
                        long: e.long.as_ref().map(|l| (l.above, Rates::from(&l.rates))),
                    };
                    std::iter::once(&e.model)
                        .chain(&e.aliases)
                        .map(move |name| (name.clone(), price))
                })
                .collect();
            (kind.clone(), names)
        })
        .collect()
});

/// Bedrock's cross-region inference profiles put a geography before the model id.
const GEOGRAPHIES: [&str; 7] = ["us.", "eu.", "apac.", "jp.", "au.", "global.", "us-gov."];

/// `name` without `suffix`'s shape at its end: `#` is a digit, anything else itself.
fn strip_shape<'a>(name: &'a str, shape: &str) -> Option<&'a str> {
    let cut = name.len().checked_sub(shape.len())?;
    let (rest, tail) = (name.get(..cut)?, name.get(cut..)?);
    let fits = tail.bytes().zip(shape.bytes()).all(|(c, s)| {
        if s == b'#' {
            c.is_ascii_digit()
        } else {
            c == s
        }
    });
    (fits && !rest.is_empty()).then_some(rest)
}

/// `name` without a `<sep><digits>` end (one or two digits), as Bedrock's versions end.
fn strip_number<'a>(name: &'a str, sep: &str) -> Option<&'a str> {
    let (rest, n) = name.rsplit_once(sep)?;
    let digits = !n.is_empty() && n.len() <= 2 && n.bytes().all(|b| b.is_ascii_digit());
    (digits && !rest.is_empty()).then_some(rest)
}

/// The names a model is looked up by, in order: the name as sent, then with the parts
/// providers add to a model's snapshots taken off one rule at a time (documented in
/// docs/budgets.md):
///
/// 1. Gemini's `models/` prefix and Bedrock's geography prefix (`us.`, `eu.`, ...);
/// 2. Bedrock's version (`:0`, then `-v1`; a name such as `titan-embed-text-v2` is
///    tried before the `-v2` goes);
/// 3. Vertex AI's snapshot date (`@20251001`);
/// 4. a dated snapshot: OpenAI's `-2024-08-06`, Anthropic's and Bedrock's `-20250929`;
/// 5. Gemini's version number (`-002`).
pub fn names(model: &str) -> Vec<&str> {
    let mut out = vec![model];
    let mut name = model.strip_prefix("models/").unwrap_or(model);
    if let Some(rest) = GEOGRAPHIES.iter().find_map(|g| name.strip_prefix(g)) {
        name = rest;
    }
    out.push(name);
    if let Some(n) = strip_number(name, ":") {
        name = n;
        out.push(name);
        if let Some(n) = strip_number(name, "-v") {
            name = n;
            out.push(name);
        }
    }
    if let Some((base, date)) = name.rsplit_once('@')
        && !date.is_empty()
        && date.bytes().all(|b| b.is_ascii_digit())
    {
        name = base;
        out.push(name);
    }
    if let Some(n) = strip_shape(name, "-####-##-##").or_else(|| strip_shape(name, "-########")) {
        name = n;
        out.push(name);
    }
    if let Some(n) = strip_shape(name, "-###") {
        out.push(n);
    }
    out.dedup();
    out
}

/// The built-in price of `model` on a provider of type `kind` (`openai`, `anthropic`,
/// ...): the first of its [`names`] the table lists.
pub fn builtin(kind: &str, model: &str) -> Option<Price> {
    let entries = BUILTIN.get(kind)?;
    names(model)
        .into_iter()
        .find_map(|n| entries.get(n))
        .copied()
}

/// Whether `model` is a name the operator configured (`overrides`) or the built-in table
/// lists as it is for a provider of type `kind`: a name from configuration, as opposed to
/// one a client made up, so one that may be a metric label.
pub fn listed(kind: &str, overrides: &[Override], model: &str) -> bool {
    overrides.iter().any(|o| o.model == model)
        || BUILTIN
            .get(kind)
            .is_some_and(|entries| entries.contains_key(model))
}

/// The price of `model` on a provider of type `kind` with `overrides`: an override names
/// the model exactly; what it leaves out comes from the built-in price of the model it is
/// priced as.
pub fn lookup(kind: &str, overrides: &[Override], model: &str) -> Option<Price> {
    let Some(o) = overrides.iter().find(|o| o.model == model) else {
        return builtin(kind, model);
    };
    let base = builtin(kind, o.price_as.as_deref().unwrap_or(model));
    if o.input.is_none() && o.output.is_none() && o.cached.is_none() {
        // Only a mapping (an Azure deployment to its model): priced as that model.
        return base;
    }
    // Half a price is no price: what it leaves out would be free.
    let input = o.input.or(base.map(|b| b.base.input))?;
    let output = o.output.or(base.map(|b| b.base.output))?;
    let b = base.unwrap_or_default();
    Some(Price {
        base: Rates {
            input,
            output,
            cached: o.cached.or(b.base.cached),
            cache_write: b.base.cache_write,
            per_search: b.base.per_search,
        },
        // A price the operator set is the price, whatever the input's length.
        long: None,
    })
}

/// When the table was last checked against the providers' price pages.
pub fn as_of() -> &'static str {
    static AS_OF: LazyLock<String> = LazyLock::new(|| {
        serde_json::from_str::<serde_json::Value>(include_str!("../data/prices.json"))
            .ok()
            .and_then(|v| v["as_of"].as_str().map(str::to_string))
            .unwrap_or_default()
    });
    &AS_OF
}

/// How many names the table has, over every provider type.
pub fn table_size() -> usize {
    BUILTIN.values().map(HashMap::len).sum()
}

#[cfg(test)]
mod tests;
