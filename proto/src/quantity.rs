//! Amounts of the three dimensions quota is counted in (nano-USD, tokens, requests), as
//! the controller's ledger and the dataplane's grants both do arithmetic on them.

use serde::{Deserialize, Serialize};

use crate::Quantity;

/// Bits of a dimension mask: which dimensions an account limits.
pub const USD: u32 = 1;
pub const TOKENS: u32 = 2;
pub const REQUESTS: u32 = 4;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Qty {
    /// Nano-USD (1e-9 USD): integers, so sums are exact.
    pub usd: u64,
    pub tokens: u64,
    pub requests: u64,
}

impl Qty {
    /// A limit's value in a dimension it does not limit.
    pub const UNLIMITED: u64 = u64::MAX;

    /// [`Qty::UNLIMITED`] in every dimension.
    pub const NO_LIMIT: Qty = Qty::all(Qty::UNLIMITED);

    /// `n` requests and nothing else: a concurrency slot's or a call count's amount.
    pub const fn requests(n: u64) -> Qty {
        Qty {
            usd: 0,
            tokens: 0,
            requests: n,
        }
    }

    fn zip(self, o: Qty, f: impl Fn(u64, u64) -> u64) -> Qty {
        Qty {
            usd: f(self.usd, o.usd),
            tokens: f(self.tokens, o.tokens),
            requests: f(self.requests, o.requests),
        }
    }

    /// Saturating sum, per dimension.
    pub fn plus(self, o: Qty) -> Qty {
        self.zip(o, u64::saturating_add)
    }

    /// Saturating difference, per dimension.
    pub fn minus(self, o: Qty) -> Qty {
        self.zip(o, u64::saturating_sub)
    }

    pub fn min_each(self, o: Qty) -> Qty {
        self.zip(o, u64::min)
    }

    pub fn max_each(self, o: Qty) -> Qty {
        self.zip(o, u64::max)
    }

    /// `n` in every dimension.
    const fn all(n: u64) -> Qty {
        Qty {
            usd: n,
            tokens: n,
            requests: n,
        }
    }

    pub fn times(self, n: u64) -> Qty {
        self.zip(Qty::all(n), u64::saturating_mul)
    }

    /// Each dimension divided by `n` (rounded down; `n` of 0 counts as 1).
    pub fn over(self, n: u64) -> Qty {
        self.zip(Qty::all(n.max(1)), |a, b| a / b)
    }

    /// Zero in the dimensions outside the mask `limited`.
    pub fn only(self, limited: u32) -> Qty {
        let keep = |bit: u32, v: u64| if limited & bit != 0 { v } else { 0 };
        Qty {
            usd: keep(USD, self.usd),
            tokens: keep(TOKENS, self.tokens),
            requests: keep(REQUESTS, self.requests),
        }
    }

    pub fn dims(self) -> [u64; 3] {
        [self.usd, self.tokens, self.requests]
    }

    /// The mask of the dimensions this limit limits (those not [`Qty::UNLIMITED`]).
    pub fn limited(self) -> u32 {
        [USD, TOKENS, REQUESTS]
            .into_iter()
            .zip(self.dims())
            .filter(|(_, l)| *l != Qty::UNLIMITED)
            .map(|(bit, _)| bit)
            .sum()
    }

    /// Whether `self` fits in `room` in every dimension of the mask `limited`.
    pub fn fits(self, room: Qty, limited: u32) -> bool {
        [USD, TOKENS, REQUESTS]
            .into_iter()
            .zip(self.dims().into_iter().zip(room.dims()))
            .all(|(bit, (n, r))| limited & bit == 0 || n <= r)
    }

    /// Whether `self` reaches `percent` of `limit` in a dimension `limit` limits.
    pub fn reaches(self, limit: Qty, percent: u32) -> bool {
        self.dims()
            .into_iter()
            .zip(limit.dims())
            .any(|(s, l)| l != Qty::UNLIMITED && s as u128 * 100 >= l as u128 * percent as u128)
    }
}

impl From<Option<&Quantity>> for Qty {
    fn from(q: Option<&Quantity>) -> Self {
        q.map(|q| Qty {
            usd: q.nano_usd,
            tokens: q.tokens,
            requests: q.requests,
        })
        .unwrap_or_default()
    }
}

impl From<Qty> for Quantity {
    fn from(q: Qty) -> Self {
        Quantity {
            nano_usd: q.usd,
            tokens: q.tokens,
            requests: q.requests,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_fits_and_thresholds_look_only_at_limited_dimensions() {
        let limit = Qty {
            usd: 100,
            tokens: Qty::UNLIMITED,
            requests: 10,
        };
        assert_eq!(limit.limited(), USD | REQUESTS);
        let ask = Qty {
            usd: 50,
            tokens: 1_000_000,
            requests: 1,
        };
        let room = Qty {
            usd: 60,
            tokens: 0,
            requests: 1,
        };
        assert!(ask.fits(room, limit.limited()));
        assert!(!ask.fits(room, USD | TOKENS));
        assert!(ask.reaches(limit, 50));
        assert!(!ask.reaches(limit, 51));
        assert_eq!(ask.minus(room).usd, 0);
        assert_eq!(ask.times(3).requests, 3);
        assert_eq!(
            ask.over(2),
            Qty {
                usd: 25,
                tokens: 500_000,
                requests: 0
            }
        );
        assert_eq!(ask.over(0), ask);
        assert_eq!(ask.only(limit.limited()), Qty { tokens: 0, ..ask });
        assert_eq!(Qty::NO_LIMIT.limited(), 0);
        assert_eq!(Qty::from(Some(&Quantity::from(ask))), ask);
    }
}
