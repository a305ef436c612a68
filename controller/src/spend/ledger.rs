//! The usage ledger: what each account (a Budget, a key's rate limits, an agent session) has
//! spent in its period, and what each dataplane has been granted to spend.
//!
//! A dataplane reserves a request's worst case out of its grant and settles the actual
//! usage when the request ends. The ledger grants only out of what is free:
//!
//! ```text
//! free = limit - spent - Σ over dataplanes of what they may still spend
//! ```
//!
//! where what a dataplane may still spend is its grant less what it has settled (while the
//! grant is live), or what it reported as still reserved (once the grant expired). Grants
//! are cumulative per dataplane epoch (usage stream) and period, so a repeated or lost
//! message cannot double one. Usage is counted once per batch sequence; the spend and the
//! sequences seen are what is persisted, so a restarted controller counts on exactly.
//!
//! Pure: time comes in as an argument; the server and the persistence are elsewhere.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use tollgate_proto as pb;
pub use tollgate_proto::quantity::Qty;

/// How long a grant lasts unless renewed.
pub const DEFAULT_LEASE_TTL_MS: i64 = 10_000;
/// A session account unused this long is forgotten.
const SESSION_IDLE_MS: i64 = 24 * 3600 * 1000;
/// An MCP tool's call account (a one-minute rolling window) unused this long is
/// forgotten: there is one per key and limited tool, and nothing in it outlives a minute.
const TOOL_IDLE_MS: i64 = 10 * 60 * 1000;
/// A dataplane not heard of for this long leaves the replay table.
const DATAPLANE_FORGET_MS: i64 = 7 * 24 * 3600 * 1000;
/// Rolling windows are kept in this many buckets.
const BUCKETS: i64 = 60;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Day,
    Week,
    Month,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Window {
    /// Calendar periods in a time zone; spend resets at each period's start.
    Calendar { unit: Unit, tz: jiff::tz::TimeZone },
    /// Spend of the last `ms`.
    Rolling { ms: i64 },
    /// Never resets (agent sessions).
    Lifetime,
    /// Nothing is spent: the limit is on requests in flight at once, and grants are the
    /// slots each dataplane holds (a key's `limits.concurrency`).
    Concurrent,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AccountDef {
    /// `Qty::UNLIMITED` in a dimension the account does not limit.
    pub limit: Qty,
    pub window: Window,
    /// Spend is refused past this percentage of the limit (100 unless a block threshold
    /// says less).
    pub block_percent: u32,
    /// Warn thresholds, in percent.
    pub warn_percents: Vec<u32>,
}

impl AccountDef {
    /// The limit spend is held to: the block threshold's share of the limit.
    fn effective(&self) -> Qty {
        let cut = |l: u64| {
            if l == Qty::UNLIMITED {
                l
            } else {
                (l as u128 * self.block_percent.min(100) as u128 / 100) as u64
            }
        };
        Qty {
            usd: cut(self.limit.usd),
            tokens: cut(self.limit.tokens),
            requests: cut(self.limit.requests),
        }
    }

    /// The mask of the dimensions limited (see [`tollgate_proto::quantity`]).
    pub fn limited(&self) -> u32 {
        self.limit.limited()
    }

    /// Whether `spent` has passed a warn threshold.
    fn warned(&self, spent: Qty) -> bool {
        self.warn_percents
            .iter()
            .any(|p| spent.reaches(self.limit, *p))
    }
}

/// The period `now` falls in: `[start, end)` in unix ms; `(0, 0)` for windows without one.
pub fn period_of(window: &Window, now_ms: i64) -> (i64, i64) {
    let Window::Calendar { unit, tz } = window else {
        return (0, 0);
    };
    let Ok(ts) = jiff::Timestamp::from_millisecond(now_ms) else {
        return (0, 0);
    };
    let zoned = ts.to_zoned(tz.clone());
    let date = zoned.date();
    let start_date = match unit {
        Unit::Day => date,
        Unit::Week => {
            let back = date.weekday().to_monday_zero_offset() as i64;
            date.checked_sub(jiff::Span::new().days(back))
                .unwrap_or(date)
        }
        Unit::Month => date.first_of_month(),
    };
    let step = match unit {
        Unit::Day => jiff::Span::new().days(1),
        Unit::Week => jiff::Span::new().weeks(1),
        Unit::Month => jiff::Span::new().months(1),
    };
    let end_date = start_date.checked_add(step).unwrap_or(start_date);
    let at = |d: jiff::civil::Date| {
        d.to_zoned(tz.clone())
            .map(|z| z.timestamp().as_millisecond())
            .unwrap_or(now_ms)
    };
    (at(start_date), at(end_date))
}

#[derive(Clone, Debug, Default)]
struct Grant {
    epoch: u64,
    period: i64,
    granted: Qty,
    settled: Qty,
    in_flight: Qty,
    expires_ms: i64,
}

impl Grant {
    /// Granted and not yet settled: in flight or room left, as of the last report.
    fn unsettled(&self) -> Qty {
        self.granted.minus(self.settled)
    }

    /// What the dataplane may still spend under this grant.
    fn outstanding(&self, now_ms: i64) -> Qty {
        let unsettled = self.unsettled();
        if now_ms < self.expires_ms {
            unsettled
        } else {
            unsettled.min_each(self.in_flight)
        }
    }
}

/// What is persisted of an account: its spend, never its grants.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Spend {
    /// Calendar: the period's start; 0 otherwise.
    #[serde(default)]
    pub period_start: i64,
    #[serde(default)]
    pub spent: Qty,
    /// Rolling windows: (bucket start, spend) pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<(i64, Qty)>,
    #[serde(default)]
    pub last_used_ms: i64,
}

#[derive(Debug)]
struct Account {
    def: Option<AccountDef>,
    period: (i64, i64),
    spent: Qty,
    buckets: VecDeque<(i64, Qty)>,
    grants: HashMap<String, Grant>,
    last_used_ms: i64,
    /// A request was refused for want of room: the account shows as exceeded until then.
    refused_until_ms: i64,
}

impl Account {
    fn new(def: Option<AccountDef>) -> Self {
        Account {
            def,
            period: (0, 0),
            spent: Qty::default(),
            buckets: VecDeque::new(),
            grants: HashMap::new(),
            last_used_ms: 0,
            refused_until_ms: 0,
        }
    }

    /// Moves to the period `now` is in, resetting spend and grants on a change, and drops
    /// rolling buckets that left the window.
    fn roll(&mut self, now_ms: i64) {
        let Some(def) = &self.def else { return };
        match &def.window {
            Window::Calendar { .. } => {
                if now_ms >= self.period.1 || now_ms < self.period.0 {
                    let next = period_of(&def.window, now_ms);
                    if next.0 > self.period.0 {
                        self.spent = Qty::default();
                        self.grants.clear();
                        self.refused_until_ms = 0;
                    }
                    if next.0 >= self.period.0 {
                        // The same period (its end not known yet, after a restore), or
                        // the next one.
                        self.period = next;
                    }
                }
            }
            Window::Rolling { ms } => {
                let ms = *ms;
                while self
                    .buckets
                    .front()
                    .is_some_and(|(t, _)| *t + bucket_ms(ms) <= now_ms - ms)
                {
                    self.buckets.pop_front();
                }
            }
            Window::Lifetime | Window::Concurrent => {}
        }
    }

    fn spent_now(&self) -> Qty {
        match self.def.as_ref().map(|d| &d.window) {
            Some(Window::Rolling { .. }) => self
                .buckets
                .iter()
                .fold(Qty::default(), |acc, (_, q)| acc.plus(*q)),
            _ => self.spent,
        }
    }

    fn outstanding(&self, now_ms: i64) -> Qty {
        self.grants
            .values()
            .fold(Qty::default(), |acc, g| acc.plus(g.outstanding(now_ms)))
    }

    fn free(&self, now_ms: i64) -> Qty {
        let Some(def) = &self.def else {
            return Qty::default();
        };
        def.effective()
            .minus(self.spent_now())
            .minus(self.outstanding(now_ms))
    }

    /// Adds settled usage made at `at_ms` in the period starting `period`.
    fn charge(&mut self, amount: Qty, period: i64, at_ms: i64) {
        self.last_used_ms = self.last_used_ms.max(at_ms);
        match self.def.as_ref().map(|d| &d.window) {
            Some(Window::Rolling { ms }) => {
                let b = bucket_ms(*ms);
                let start = at_ms - at_ms.rem_euclid(b);
                // Buckets are in time order; a late record joins its own bucket.
                match self.buckets.iter_mut().rev().find(|(t, _)| *t <= start) {
                    Some((t, q)) if *t == start => *q = q.plus(amount),
                    _ => {
                        let at = self
                            .buckets
                            .iter()
                            .position(|(t, _)| *t > start)
                            .unwrap_or(self.buckets.len());
                        self.buckets.insert(at, (start, amount));
                    }
                }
            }
            Some(Window::Calendar { .. }) => {
                if period == self.period.0 {
                    self.spent = self.spent.plus(amount);
                }
                // Usage of an earlier period belongs to that period, which is over.
            }
            Some(Window::Lifetime) | None => self.spent = self.spent.plus(amount),
            // Slots are returned, not spent.
            Some(Window::Concurrent) => {}
        }
    }

    fn state(&self, now_ms: i64) -> &'static str {
        let Some(def) = &self.def else {
            return "Unknown";
        };
        let spent = self.spent_now();
        // Nothing free: not even one unit fits in some limited dimension.
        let one = Qty {
            usd: 1,
            tokens: 1,
            requests: 1,
        };
        if spent.reaches(def.limit, def.block_percent.min(100))
            || now_ms < self.refused_until_ms
            || !one.fits(self.free(now_ms), def.limited())
        {
            "Exceeded"
        } else if def.warned(spent) {
            "Warning"
        } else {
            "Ok"
        }
    }

    fn view(&self, name: &str, now_ms: i64) -> Option<AccountView> {
        let def = self.def.as_ref()?;
        let spent = self.spent_now();
        Some(AccountView {
            account: name.to_string(),
            spent,
            remaining: def.limit.minus(spent),
            limit: def.limit,
            limited: def.limited(),
            period_start_ms: self.period.0,
            period_end_ms: self.period.1,
            state: self.state(now_ms),
        })
    }
}

fn bucket_ms(window_ms: i64) -> i64 {
    (window_ms / BUCKETS).max(1)
}

/// Looks up an account's definition in the current config.
pub trait Definitions {
    fn define(&self, account: &str) -> Option<AccountDef>;
}

/// What an account looks like from outside: for status, metrics and the admin port.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AccountView {
    pub account: String,
    pub spent: Qty,
    pub remaining: Qty,
    pub limit: Qty,
    pub limited: u32,
    pub period_start_ms: i64,
    pub period_end_ms: i64,
    pub state: &'static str,
}

/// What is persisted: spend per account and the last batch counted per dataplane.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    pub accounts: BTreeMap<String, Spend>,
    /// dataplane id → (last sequence counted, when last heard of).
    pub sequences: BTreeMap<String, (u64, i64)>,
}

#[derive(Debug, Default)]
pub struct Ledger {
    accounts: HashMap<String, Account>,
    sequences: HashMap<String, (u64, i64)>,
    pub lease_ttl_ms: i64,
    /// Records counted (not replays), for the metric.
    pub records_counted: u64,
    /// Bounds on the accounts a client brings into being by naming them.
    pub caps: Caps,
    /// Client-named accounts (sessions, tool calls) by owner, and in all.
    owned: HashMap<String, usize>,
    named: usize,
    /// New client-named accounts refused by a cap, for the metric.
    pub refused_accounts: u64,
}

/// Bounds on the accounts clients create by naming them (agent sessions, tool-call
/// counts), so that one key cannot grow the ledger until its store refuses every write:
/// past a bound, new ones are refused (their requests are refused as exhausted), and
/// everything else is still counted and acknowledged.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// Live sessions of one key; tool-call accounts of one key under one policy rule.
    pub per_owner: usize,
    /// Client-named accounts in all (the store's capacity).
    pub total: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            per_owner: 1_000,
            total: usize::MAX,
        }
    }
}

/// The longest account name kept: longer ones come only from a misbehaving client.
const MAX_ACCOUNT_NAME: usize = 512;

/// An account whose name a client chooses (a session id, a tool name).
fn client_named(account: &str) -> bool {
    account.starts_with("session/") || account.starts_with("tool/")
}

/// Who a client-named account belongs to: its name less the last part (the session id,
/// the tool), i.e. the key (and, for tools, the policy rule).
fn owner(account: &str) -> &str {
    account.rsplit_once('/').map_or(account, |(o, _)| o)
}

/// The result of one batch.
#[derive(Debug, Default)]
pub struct Applied {
    pub ack: pb::UsageAck,
    /// The batch carried new usage: the state must be persisted before the ack is sent.
    pub changed: bool,
}

impl Ledger {
    pub fn new(lease_ttl_ms: i64) -> Self {
        Ledger {
            lease_ttl_ms,
            ..Default::default()
        }
    }

    pub fn restore(p: Persisted, defs: &dyn Definitions, lease_ttl_ms: i64, caps: Caps) -> Self {
        let mut ledger = Ledger::new(lease_ttl_ms);
        ledger.caps = caps;
        ledger.sequences = p.sequences.into_iter().collect();
        for (name, s) in p.accounts {
            let mut a = Account::new(defs.define(&name));
            // The end is found when the account is next used (definitions may come later).
            a.period = (s.period_start, 0);
            a.spent = s.spent;
            a.buckets = s.buckets.into_iter().collect();
            a.last_used_ms = s.last_used_ms;
            ledger.note_new(&name);
            ledger.accounts.insert(name, a);
        }
        ledger
    }

    fn note_new(&mut self, name: &str) {
        if client_named(name) {
            *self.owned.entry(owner(name).to_string()).or_default() += 1;
            self.named += 1;
        }
    }

    fn note_gone(&mut self, name: &str) {
        if client_named(name) {
            let o = owner(name);
            if let Some(n) = self.owned.get_mut(o) {
                *n -= 1;
                if *n == 0 {
                    self.owned.remove(o);
                }
            }
            self.named = self.named.saturating_sub(1);
        }
    }

    /// Whether a lease for `name` would bring a client-named account into being past a
    /// cap.
    fn over_cap(&self, name: &str) -> bool {
        if self.accounts.contains_key(name) || !client_named(name) {
            return false;
        }
        name.len() > MAX_ACCOUNT_NAME
            || self.named >= self.caps.total
            || self.owned.get(owner(name)).copied().unwrap_or(0) >= self.caps.per_owner
    }

    pub fn persisted(&self) -> Persisted {
        Persisted {
            accounts: self
                .accounts
                .iter()
                .map(|(name, a)| {
                    (
                        name.clone(),
                        Spend {
                            period_start: a.period.0,
                            spent: a.spent,
                            buckets: a.buckets.iter().copied().collect(),
                            last_used_ms: a.last_used_ms,
                        },
                    )
                })
                .collect(),
            sequences: self
                .sequences
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        }
    }

    /// Re-reads every account's definition after a config change.
    pub fn redefine(&mut self, defs: &dyn Definitions) {
        for (name, a) in &mut self.accounts {
            a.def = defs.define(name);
        }
    }

    fn account(&mut self, name: &str, defs: &dyn Definitions, now_ms: i64) -> &mut Account {
        if !self.accounts.contains_key(name) {
            self.note_new(name);
        }
        let a = self
            .accounts
            .entry(name.to_string())
            .or_insert_with(|| Account::new(defs.define(name)));
        if a.def.is_none() {
            a.def = defs.define(name);
        }
        a.roll(now_ms);
        a
    }

    /// Counts a batch's usage (once per sequence) and answers its lease requests.
    pub fn apply(
        &mut self,
        batch: &pb::UsageBatch,
        defs: &dyn Definitions,
        now_ms: i64,
    ) -> Applied {
        let mut out = Applied {
            ack: pb::UsageAck {
                acked_sequence: batch.sequence,
                leases: vec![],
            },
            changed: false,
        };
        let dp = batch.dataplane_id.as_str();
        let last = self.sequences.get(dp).map(|s| s.0).unwrap_or(0);
        let fresh = batch.sequence > last;
        if fresh {
            self.sequences
                .insert(dp.to_string(), (batch.sequence, now_ms));
            out.changed = true;
            for r in &batch.records {
                self.records_counted += 1;
                let amount = Qty {
                    usd: r.cost_nano_usd,
                    tokens: r.input_tokens + r.output_tokens,
                    requests: r.requests,
                };
                for c in &r.charges {
                    let a = self.account(&c.account, defs, now_ms);
                    a.charge(amount, c.period_start_unix_ms, r.timestamp_unix_ms);
                    if let Some(g) = a.grants.get_mut(dp)
                        && g.epoch == r.lease_epoch
                        && g.period == c.period_start_unix_ms
                    {
                        g.settled = g.settled.plus(amount);
                    }
                }
            }
            // Dataplanes heard from within a lease's life: near a limit, each holds no more
            // than its share of what is left.
            let peers = self
                .sequences
                .values()
                .filter(|(_, seen)| now_ms - seen < self.lease_ttl_ms)
                .count() as u64;
            // A replayed batch's lease requests are stale: only fresh ones are answered.
            for req in &batch.lease_requests {
                if let Some(lease) = self.lease(dp, batch.epoch, req, defs, now_ms, peers) {
                    out.ack.leases.push(lease);
                }
            }
        }
        out
    }

    fn lease(
        &mut self,
        dp: &str,
        epoch: u64,
        req: &pb::LeaseRequest,
        defs: &dyn Definitions,
        now_ms: i64,
        peers: u64,
    ) -> Option<pb::QuotaLease> {
        let ttl = self.lease_ttl_ms;
        if self.over_cap(&req.account) {
            // Refused without being created: nothing of it reaches the store.
            self.refused_accounts += 1;
            return Some(pb::QuotaLease {
                account: req.account.clone(),
                granted: Some(Qty::default().into()),
                expires_unix_ms: now_ms + ttl,
                remaining: Some(Qty::default().into()),
                exhausted: true,
                limited: tollgate_proto::quantity::USD
                    | tollgate_proto::quantity::TOKENS
                    | tollgate_proto::quantity::REQUESTS,
                ..Default::default()
            });
        }
        let a = self.account(&req.account, defs, now_ms);
        let def = a.def.clone()?;
        a.last_used_ms = a.last_used_ms.max(now_ms);
        let period = a.period;
        let in_flight = Qty::from(req.in_flight.as_ref());
        let g = a.grants.entry(dp.to_string()).or_default();
        if g.epoch != epoch || g.period != period.0 {
            // A new stream, a new period, or a grant forgotten once it lapsed: what the
            // dataplane still has reserved is carried. Its counts are cumulative, so a
            // grant it still counts in this period starts from what it says has settled.
            let settled = if req.period_start_unix_ms == period.0 {
                Qty::from(req.settled.as_ref())
            } else {
                Qty::default()
            };
            *g = Grant {
                epoch,
                period: period.0,
                granted: settled.plus(in_flight),
                settled,
                ..Default::default()
            };
        }
        let mut need = Qty::from(req.need.as_ref());
        let mut want = Qty::from(req.want.as_ref()).max_each(need);
        // The slots a dataplane means to hold (concurrency accounts), in flight included.
        let hold = req
            .hold
            .as_ref()
            .filter(|_| def.window == Window::Concurrent)
            .map(|h| Qty::from(Some(h)).max_each(in_flight));
        // Asking for nothing is a report of what is in flight, which neither grants nor
        // extends (a dataplane whose grant lapsed gives back what it does not use).
        let report = hold.is_none() && want == Qty::default();
        if g.expires_ms <= now_ms || (report && def.window == Window::Concurrent) {
            // An expired grant's unreserved part is forfeit, on both sides: the dataplane
            // stopped reserving from it when it expired. Concurrency slots are given back
            // at once: the dataplane stopped using those not in flight before it reported.
            g.granted = g.settled.plus(g.unsettled().min_each(in_flight));
        }
        if hold.is_none() {
            // What the dataplane still has room for (its unspent grant beyond what is in
            // flight, answers on their way to it included) covers that much of the need:
            // a waiting request asks again until the first answer comes.
            need = need.minus(g.unsettled().minus(in_flight));
        }
        if let Some(hold) = hold {
            // Slots beyond what it holds: the dataplane stopped using them before it
            // asked. Fewer: what is missing is asked for.
            let held = g.unsettled().min_each(hold);
            g.granted = g.settled.plus(held);
            // `hold` counts the waiting requests: what is held already covers that much of
            // their need (the ask may have left before a grant reached them), and nothing
            // is granted beyond `hold`, which the dataplane takes as its cap.
            want = hold.minus(held);
            need = need.min_each(want);
        }
        g.in_flight = in_flight;
        if !report {
            g.expires_ms = now_ms + ttl;
        }
        let expires = g.expires_ms;
        let free = a.free(now_ms);
        let fits = report || need.fits(free, def.limited());
        let add = if want == Qty::default() || !fits {
            Qty::default()
        } else {
            let live = a
                .grants
                .values()
                .filter(|g| g.expires_ms > now_ms)
                .count()
                .max(1) as u64;
            // What this dataplane may hold beyond what it has spent: half of what is left,
            // shared among the dataplanes. Grants are not taken back while in use, so
            // without this cap the first busy dataplanes would hold most of a small limit,
            // and the others would be refused with much of it unspent. (Slots have their
            // own cap: what the dataplane says it holds.)
            let cap = if def.window == Window::Concurrent {
                Qty::NO_LIMIT
            } else {
                let held = a
                    .grants
                    .get(dp)
                    .map(|g| g.outstanding(now_ms))
                    .unwrap_or_default();
                def.effective()
                    .minus(a.spent_now())
                    .over(2 * live.max(peers))
                    .minus(held)
            };
            // A fair share of what is free, within the cap, at least what is needed now, at
            // most what is wanted: near the limit, shares shrink, so little is left idle
            // in grants. Nothing in a dimension the account does not limit.
            free.over(2 * live)
                .min_each(want)
                .min_each(cap)
                .max_each(need)
                .min_each(free)
                .only(def.limited())
        };
        if !fits {
            a.refused_until_ms = now_ms + ttl;
        }
        let g = a.grants.get_mut(dp)?;
        g.granted = g.granted.plus(add);
        let granted = g.granted;
        Some(pb::QuotaLease {
            account: req.account.clone(),
            granted: Some(granted.into()),
            expires_unix_ms: expires,
            period_start_unix_ms: period.0,
            period_end_unix_ms: period.1,
            remaining: Some(free.minus(add).into()),
            warn: def.warned(a.spent_now()),
            exhausted: !fits,
            limited: def.limited(),
        })
    }

    /// Drops idle sessions and tool-call accounts, and dataplanes long gone.
    pub fn sweep(&mut self, now_ms: i64) {
        let mut gone = Vec::new();
        self.accounts.retain(|name, a| {
            let idle = now_ms - a.last_used_ms;
            let keep = !(name.starts_with("session/") && idle > SESSION_IDLE_MS
                || name.starts_with("tool/") && idle > TOOL_IDLE_MS);
            if !keep {
                gone.push(name.clone());
            }
            keep
        });
        for name in gone {
            self.note_gone(&name);
        }
        self.sequences
            .retain(|_, (_, seen)| now_ms - *seen < DATAPLANE_FORGET_MS);
        for a in self.accounts.values_mut() {
            a.roll(now_ms);
            a.grants
                .retain(|_, g| g.expires_ms > now_ms || g.outstanding(now_ms) != Qty::default());
        }
    }

    /// Every account with a definition, for status and metrics.
    pub fn views(&mut self, now_ms: i64) -> Vec<AccountView> {
        let mut out: Vec<AccountView> = self
            .accounts
            .iter_mut()
            .filter_map(|(name, a)| {
                a.roll(now_ms);
                a.view(name, now_ms)
            })
            .collect();
        out.sort_by(|a, b| a.account.cmp(&b.account));
        out
    }

    /// The view of one account, whether or not it has been used (an unused one is created
    /// with nothing spent).
    pub fn view(
        &mut self,
        account: &str,
        defs: &dyn Definitions,
        now_ms: i64,
    ) -> Option<AccountView> {
        self.account(account, defs, now_ms).view(account, now_ms)
    }
}

#[cfg(test)]
mod tests;
