//! Prices on the request path: the shared table ([`tollgate_proto::prices`], with its
//! date, sources and name rules) looked up for a provider, and applied to the usage an
//! answer reported.

pub use tollgate_proto::prices::{NANO, Override, Price};

use crate::config::model::ProviderKind;
use crate::metering::usage::Usage;

/// The price of `model` on a provider of `kind` with `overrides` (`spec.models`).
pub fn lookup(kind: ProviderKind, overrides: &[Override], model: &str) -> Option<Price> {
    tollgate_proto::prices::lookup(kind.as_str(), overrides, model)
}

/// What `usage` costs at `price`, in nano-USD.
pub fn cost_nano(price: &Price, usage: &Usage) -> u64 {
    price.cost_nano(tollgate_proto::prices::Tokens {
        input: usage.input,
        cached: usage.cached,
        cache_write: usage.cache_write,
        output: usage.output,
        web_searches: usage.web_searches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_costed_with_its_cache_reads_and_writes() {
        let p = lookup(ProviderKind::Anthropic, &[], "claude-haiku-4-5-20251001").unwrap();
        let u = Usage {
            input: 1000,
            output: 100,
            cached: 400,
            cache_write: 100,
            reasoning: 0,
            web_searches: 0,
        };
        // 500 fresh at 1 USD, 400 reads at 0.10, 100 writes at 1.25, 100 out at 5.
        assert_eq!(
            cost_nano(&p, &u),
            500 * 1_000 + 400 * 100 + 100 * 1_250 + 100 * 5_000
        );
    }
}
