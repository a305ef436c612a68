//! Admission: a request's worst case reserved against every account that applies to it
//! (the key's budgets and their ancestors, its rate limits, its agent session) before it
//! goes upstream, and the headers that say what is left.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::State;
use crate::config::model::{Route, VirtualKey};
use crate::config::snapshot::Snapshot;
use crate::error::ApiError;
use crate::metering::quota::{Attribution, Demand, Qty, Refusal, Reservation};
use crate::translate::head::ChatHead;

/// What a request's worst case assumes where the request itself does not bound it.
#[derive(Clone, Copy, Debug)]
pub struct WorstCase {
    /// The output limit set on a request of a metered key that sets none (and assumed for
    /// it): the gateway writes it into the request, so the provider cannot exceed it.
    pub output_tokens: u64,
    /// Input tokens of one image or audio clip, beyond its bytes in the body.
    pub media_tokens: u64,
    /// Input tokens of one file or document (a PDF of many pages), beyond its bytes.
    pub file_tokens: u64,
    /// The `max_uses` set on a metered request's web search tools that set none.
    pub web_searches: u64,
}

impl WorstCase {
    /// The most input tokens a request of `body_len` bytes can be: every token is at
    /// least one byte of the body, and each attachment is counted at its own amount.
    pub fn input(&self, body_len: usize, head: &ChatHead) -> u64 {
        let a = head.attachments;
        (body_len as u64)
            .saturating_add(a.media.saturating_mul(self.media_tokens))
            .saturating_add(a.files.saturating_mul(self.file_tokens))
    }

    /// The most output tokens: the limit per choice, times the choices.
    pub fn output(&self, head: &ChatHead) -> u64 {
        head.max_tokens
            .unwrap_or(self.output_tokens)
            .saturating_mul(head.choices)
    }
}

/// Whether a key's requests are metered in tokens or money (budgets, sessions, a tokens
/// per minute limit): these get an output limit when they set none.
pub fn metered(key: &VirtualKey, headers: &HeaderMap) -> bool {
    !key.budget_accounts.is_empty()
        || key.rate.as_ref().is_some_and(|r| r.tokens_per_minute > 0)
        || session(key, headers).is_ok_and(|s| s.is_some())
}

/// The longest agent session id: a UUID, a ULID or a framework's run id fits.
pub const MAX_SESSION_ID: usize = 128;

/// The agent session a request names, if its key has sessions: an id of 1 to
/// [`MAX_SESSION_ID`] letters, digits, `-`, `_`, `.`, `:`. A malformed one is refused, so
/// that an id the ledger would not take cannot be used to step around the session's caps.
fn session<'h>(key: &VirtualKey, headers: &'h HeaderMap) -> Result<Option<&'h str>, ApiError> {
    let Some((s, v)) = key
        .session
        .as_ref()
        .and_then(|s| Some((s, headers.get(&s.header)?)))
    else {
        return Ok(None);
    };
    let well_formed = !v.is_empty()
        && v.len() <= MAX_SESSION_ID
        && v.as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    match v.to_str() {
        Ok(id) if well_formed => Ok(Some(id)),
        _ => Err(ApiError::BadRequest(format!(
            "{}: a session id is 1 to {MAX_SESSION_ID} letters, digits, '-', '_', '.' or ':'",
            s.header
        ))),
    }
}

/// The most a request to `route` for `model` of `input` and `output` tokens can cost, in
/// nano-USD: the dearest of its targets and fallbacks (the target is picked later). `Err`
/// names a model that has no price, on a provider that does not take unpriced models as
/// free.
fn dearest(
    snapshot: &Snapshot,
    route: &Route,
    model: &str,
    (input, output, searches): (u64, u64, u64),
) -> Result<u64, String> {
    let mut worst = 0u64;
    for t in route
        .targets
        .iter()
        .chain(route.fallbacks.iter().map(|f| &f.target))
    {
        let Some(provider) = snapshot.providers.get(&t.provider) else {
            continue;
        };
        let name = t.model.as_deref().unwrap_or(model);
        match provider.price_of(name) {
            Some(p) => {
                let cost = p
                    .worst_case_nano(input, output)
                    .saturating_add(p.search_fees_nano(searches));
                worst = worst.max(cost);
            }
            None if provider.unpriced_free => {}
            None => return Err(name.to_string()),
        }
    }
    Ok(worst)
}

/// What the request asks of each account that applies to it.
fn demands(
    snapshot: &Snapshot,
    key: &VirtualKey,
    session: Option<&str>,
    head: &ChatHead,
    route: &Route,
    (input, output): (u64, u64),
) -> Result<Vec<Demand>, ApiError> {
    let budgeted = !key.budget_accounts.is_empty() || session.is_some();
    if !budgeted && key.rate.is_none() && key.concurrency.is_none() {
        return Ok(vec![]);
    }
    // The input and output bounds come from the caller ([`WorstCase`]; no output for
    // embeddings).
    let usd = if budgeted {
        // A metered request's web searches are bounded (the gateway set `max_uses`).
        match dearest(
            snapshot,
            route,
            &head.model,
            (input, output, head.web_searches),
        ) {
            Ok(usd) => usd,
            // A cost that cannot be counted cannot be held to a USD limit.
            Err(model) if key.usd_limited => return Err(ApiError::PriceUnknown(model)),
            Err(_) => 0,
        }
    } else {
        0
    };
    let worst = Qty {
        // At least one nano-USD: a spent budget refuses even a model priced at nothing.
        usd: usd.max(1),
        tokens: input.saturating_add(output),
        requests: 1,
    };
    Ok(accounts(key, session, worst, Qty { usd: 0, ..worst }))
}

/// Every account a request of `key` (in `session`) is charged to, and what it asks of
/// each: `spend` of its budgets and session, `rate` of its rate limits, and one
/// concurrency slot, given back when the request ends.
fn accounts(key: &VirtualKey, session: Option<&str>, spend: Qty, rate: Qty) -> Vec<Demand> {
    let mut out: Vec<Demand> = key
        .budget_accounts
        .iter()
        .map(|a| Demand {
            account: a.clone(),
            amount: spend,
        })
        .collect();
    if let Some(r) = &key.rate {
        out.push(Demand {
            account: r.account.clone(),
            amount: rate,
        });
    }
    if let Some(s) = session {
        out.push(Demand {
            account: Arc::from(format!("session/{}/{s}", key.id())),
            amount: spend,
        });
    }
    if let Some(c) = &key.concurrency {
        out.push(Demand {
            account: c.clone(),
            amount: Qty::requests(1),
        });
    }
    out
}

/// Reserves the request's worst case: `size` is the most input and output tokens it may
/// count ([`WorstCase`]). The reservation also carries the request's attribution, so
/// every admitted request ends as a usage record.
pub async fn admit(
    state: &State,
    snapshot: &Snapshot,
    key: &VirtualKey,
    headers: &HeaderMap,
    head: &ChatHead,
    route: &Route,
    size: (u64, u64),
) -> Result<Reservation, ApiError> {
    let session = session(key, headers)?;
    let demands = match demands(snapshot, key, session, head, route, size) {
        Ok(d) => d,
        Err(e) => {
            state
                .metrics
                .denials
                .with_label_values(&["price_unknown"])
                .inc();
            return Err(e);
        }
    };
    reserve(state, key, session, &demands).await
}

/// Reserves `demands` for a request of `key` in `session`, attributed to both.
async fn reserve(
    state: &State,
    key: &VirtualKey,
    session: Option<&str>,
    demands: &[Demand],
) -> Result<Reservation, ApiError> {
    let who = Attribution {
        session: session.map(Arc::from).unwrap_or_default(),
        ..key.attribution.clone()
    };
    state
        .quotas
        .reserve(demands, who)
        .await
        .map_err(|r| refusal(state, key, &r))
}

/// The least that does not fit an account with nothing left in the dimensions it limits.
pub const LEAST: Qty = Qty {
    usd: 1,
    tokens: 1,
    requests: 0,
};

/// What a prompt of `body_len` bytes would reserve with one token of output, for a
/// request that produces none (token counting): a key whose budgets could not take the
/// prompt itself is refused it.
pub fn prompt_demand(
    state: &State,
    snapshot: &Snapshot,
    head: &ChatHead,
    route: &Route,
    body_len: usize,
) -> Qty {
    let input = state.worst.input(body_len, head);
    let usd = dearest(snapshot, route, &head.model, (input, 1, 0)).unwrap_or(0);
    Qty {
        usd: usd.max(1),
        tokens: input.saturating_add(1),
        requests: 0,
    }
}

/// Admits a request that costs no tokens (token counting, an MCP message): one request
/// against the key's rate and concurrency limits, and refused while any of its budgets or
/// its session cannot take `least` (at least [`LEAST`]: a spent budget says no). Its
/// reservation is recorded with no usage, so it is charged a request and nothing else.
pub async fn admit_free(
    state: &State,
    key: &VirtualKey,
    headers: &HeaderMap,
    least: Qty,
) -> Result<Reservation, ApiError> {
    let session = session(key, headers)?;
    let demands = accounts(key, session, least.max_each(LEAST), Qty::requests(1));
    reserve(state, key, session, &demands).await
}

/// The client's error for a refusal, counted by reason.
pub fn refusal(state: &State, key: &VirtualKey, r: &Refusal) -> ApiError {
    let (reason, err) = match r {
        Refusal::Exhausted { account } if account.starts_with("rate/") => (
            "rate_limit",
            ApiError::RateLimited(rate_dimension(key, &state.quotas)),
        ),
        Refusal::Exhausted { account } if account.starts_with("conc/") => {
            ("concurrency", ApiError::RateLimited("concurrent requests"))
        }
        Refusal::Exhausted { account } if account.starts_with("session/") => {
            ("session_budget", ApiError::SessionBudgetExceeded)
        }
        Refusal::Exhausted { account } => (
            "budget",
            ApiError::BudgetExceeded(budget_name(account).to_string()),
        ),
        Refusal::Unavailable { account } => (
            "quota_unavailable",
            ApiError::QuotaUnavailable(budget_name(account).to_string()),
        ),
    };
    state.metrics.denials.with_label_values(&[reason]).inc();
    err
}

/// `budget/<ns>/<name>` → `<name>` (what the client may be told).
fn budget_name(account: &str) -> &str {
    account.rsplit('/').next().unwrap_or(account)
}

fn rate_dimension(key: &VirtualKey, quotas: &crate::metering::quota::Quotas) -> &'static str {
    let Some(r) = &key.rate else {
        return "requests per minute";
    };
    match quotas.remaining(&r.account) {
        Some(left) if r.requests_per_minute > 0 && left.amount.requests == 0 => {
            "requests per minute"
        }
        Some(_) if r.tokens_per_minute > 0 => "tokens per minute",
        _ => "requests per minute",
    }
}

/// `x-ratelimit-*` (as OpenAI names them) for the key's rate limits, and
/// `x-tollgate-budget-remaining` (USD, the tightest of the key's budgets, rounded down to
/// the micro-dollar). Every account is read under one lock, and numbers are formatted as
/// integers: this runs on every answer.
pub fn quota_headers(state: &State, key: &VirtualKey, out: &mut HeaderMap) {
    let rate = key.rate.as_ref();
    let mut rate_left = None;
    let mut tightest: Option<u64> = None;
    let mut warned: Vec<&str> = Vec::new();
    let accounts = rate
        .map(|r| &*r.account)
        .into_iter()
        .chain(key.budget_accounts.iter().map(|a| &**a));
    // Budget `i` is at position `i + first_budget` in `accounts`.
    let first_budget = usize::from(rate.is_some());
    state.quotas.each_remaining(accounts, |i, left| {
        if i < first_budget {
            rate_left = Some(left.amount);
            return;
        }
        if left.limited & tollgate_proto::quantity::USD != 0 {
            let usd = left.amount.usd;
            tightest = Some(tightest.map_or(usd, |t| t.min(usd)));
        }
        if left.warn {
            warned.push(budget_name(&key.budget_accounts[i - first_budget]));
        }
    });
    let mut set = |name: &'static str, value: HeaderValue| {
        out.insert(HeaderName::from_static(name), value);
    };
    if let Some(r) = rate {
        if r.requests_per_minute > 0 {
            set(
                "x-ratelimit-limit-requests",
                HeaderValue::from(r.requests_per_minute),
            );
            if let Some(q) = rate_left {
                set(
                    "x-ratelimit-remaining-requests",
                    HeaderValue::from(q.requests.min(r.requests_per_minute)),
                );
            }
        }
        if r.tokens_per_minute > 0 {
            set(
                "x-ratelimit-limit-tokens",
                HeaderValue::from(r.tokens_per_minute),
            );
            if let Some(q) = rate_left {
                set(
                    "x-ratelimit-remaining-tokens",
                    HeaderValue::from(q.tokens.min(r.tokens_per_minute)),
                );
            }
        }
    }
    if let Some(nano) = tightest {
        set("x-tollgate-budget-remaining", usd_value(nano));
    }
    if !warned.is_empty() {
        state.metrics.budget_warnings.inc();
        if let Ok(v) = HeaderValue::try_from(warned.join(",")) {
            set("x-tollgate-budget-warning", v);
        }
    }
}

/// Nano-dollars as dollars with six decimals, rounded down (`1.500000`).
fn usd_value(nano: u64) -> HeaderValue {
    let micros = nano / 1_000;
    let text = format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000);
    // Digits and a point: always a valid header value (the String's buffer is kept).
    HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::{WorstCase, usd_value};
    use crate::translate::head::ChatHead;
    use tollgate_proto::prices::{Price, Rates, Tokens};

    /// A random rate up to `max` USD per million tokens, zero and `max` included.
    fn rate(rng: &mut fastrand::Rng, max: f64) -> f64 {
        match rng.u8(..8) {
            0 => 0.0,
            1 => max,
            _ => rng.f64() * max,
        }
    }

    fn rates(rng: &mut fastrand::Rng) -> Rates {
        Rates {
            input: rate(rng, 200.0),
            output: rate(rng, 800.0),
            cached: rng.bool().then(|| rate(rng, 100.0)),
            cache_write: rng.bool().then(|| rate(rng, 400.0)),
            per_search: rng.bool().then(|| rate(rng, 0.05)),
        }
    }

    /// A random price: any rates, with or without cache and long-context rates.
    fn any_price(rng: &mut fastrand::Rng) -> Price {
        let base = rates(rng);
        let long = if rng.bool() {
            Some((rng.u64(..2_000_000), rates(rng)))
        } else {
            None
        };
        Price { base, long }
    }

    /// A request body with random limits and attachments, and the most a provider can
    /// bill for it, worked out from what the body asks for (not from the gateway's
    /// reading of it): input within the body's bytes and the attachments' documented
    /// amounts, output within the larger limit field (or the cap the gateway sets) for
    /// each choice.
    fn body(rng: &mut fastrand::Rng) -> (String, u64, u64, u64) {
        let mut parts = vec![r#"{"type":"text","text":"hello"}"#.to_string()];
        let (mut media, mut files) = (0, 0);
        for _ in 0..rng.usize(..6) {
            let kind = rng.usize(..3);
            if kind == 2 {
                files += 1;
            } else {
                media += 1;
            }
            parts.push(
                [
                    r#"{"type":"image_url","image_url":{"url":"https://x/a.png"}}"#,
                    r#"{"type":"input_audio","input_audio":{"data":"AA","format":"wav"}}"#,
                    r#"{"type":"file","file":{"file_id":"f"}}"#,
                ][kind]
                    .to_string(),
            );
        }
        let mut b = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":[{}]}}]"#,
            parts.join(",")
        );
        let mut limit: Option<u64> = None;
        for field in ["max_tokens", "max_completion_tokens"] {
            if rng.bool() {
                let n = rng.u64(..=1_000_000);
                limit = Some(limit.map_or(n, |l| l.max(n)));
                b.push_str(&format!(r#","{field}":{n}"#));
            }
        }
        let mut choices = 1;
        if rng.bool() {
            choices = rng.u64(1..=128);
            b.push_str(&format!(r#","n":{choices}"#));
        }
        // Web search tools, each with its bound on searches.
        let mut searches = 0;
        if rng.bool() {
            let tools: Vec<String> = (0..rng.u64(1..3))
                .map(|_| {
                    let n = rng.u64(..10);
                    searches += n;
                    format!(r#"{{"type":"web_search_20250305","name":"w","max_uses":{n}}}"#)
                })
                .collect();
            b.push_str(&format!(r#","tools":[{}]"#, tools.join(",")));
        }
        b.push('}');
        let input = b.len() as u64 + media * 3000 + files * 100_000;
        let output = limit.unwrap_or(4096) * choices;
        (b, input, output, searches)
    }

    /// Admission and settlement arithmetic, over random requests, prices and the usage a
    /// provider could report for them: what settlement charges never passes what was
    /// reserved, and nothing overflows (the arithmetic saturates).
    #[test]
    fn no_request_is_charged_more_than_it_reserved() {
        let mut rng = fastrand::Rng::with_seed(0x7011_9a7e);
        let worst = WorstCase {
            output_tokens: 4096,
            media_tokens: 3000,
            file_tokens: 100_000,
            web_searches: 5,
        };
        for case in 0..20_000 {
            let (text, most_in, most_out, most_searches) = body(&mut rng);
            let head = ChatHead::parse(text.as_bytes()).unwrap();
            let (input, output) = (worst.input(text.len(), &head), worst.output(&head));
            let price = any_price(&mut rng);
            // As admission prices it (`dearest`), for one target.
            let reserved = price
                .worst_case_nano(input, output)
                .saturating_add(price.search_fees_nano(head.web_searches));
            // What the provider may report: some of the input cache reads or writes.
            let used_in = rng.u64(..=most_in);
            let cached = rng.u64(..=used_in);
            let cache_write = rng.u64(..=used_in - cached);
            let used = Tokens {
                input: used_in,
                cached,
                cache_write,
                output: rng.u64(..=most_out),
                web_searches: rng.u64(..=most_searches),
            };
            let charged = price.cost_nano(used);
            // Rounding to the nano-dollar is the only slack: one per kind of token.
            assert!(
                charged <= reserved.saturating_add(4),
                "case {case}: charged {charged} > reserved {reserved}: {text} {price:?} {used:?}"
            );
            assert!(
                used.input + used.output <= input.saturating_add(output),
                "case {case}: tokens {used:?} over {input} + {output}: {text}"
            );
        }
        // The extremes saturate instead of wrapping.
        let head = ChatHead::parse(br#"{"model":"m","max_tokens":1000000,"n":128}"#).unwrap();
        assert_eq!(worst.output(&head), 128_000_000);
        let p = Price::flat(f64::MAX, f64::MAX, None);
        assert_eq!(p.worst_case_nano(u64::MAX, u64::MAX), u64::MAX);
        let images = ChatHead::parse(
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"},{"type":"file"}]}]}"#,
        )
        .unwrap();
        let absurd = WorstCase {
            output_tokens: u64::MAX,
            media_tokens: u64::MAX,
            file_tokens: u64::MAX,
            web_searches: u64::MAX,
        };
        assert_eq!(absurd.input(usize::MAX, &images), u64::MAX);
        assert_eq!(absurd.output(&images), u64::MAX);
    }

    #[test]
    fn budget_left_reads_as_dollars_rounded_down_to_the_micro_dollar() {
        let read = |nano| usd_value(nano).to_str().unwrap().to_string();
        assert_eq!(read(0), "0.000000");
        assert_eq!(read(1_500_000_000), "1.500000");
        assert_eq!(read(4_999_999_999), "4.999999");
        assert_eq!(read(12_345), "0.000012");
        assert_eq!(read(u64::MAX), "18446744073.709551");
    }
}
