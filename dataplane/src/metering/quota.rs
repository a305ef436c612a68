//! Quota: what this dataplane may spend of each account (a Budget, a key's rate limits, an
//! agent session), reserved per request and settled when the request ends, and the usage
//! records the controller is told about.
//!
//! A request reserves its worst case from the grants the controller made to this
//! dataplane; a request that does not fit asks for more and waits (briefly) for the answer.
//! When it ends, the reservation is replaced by the actual usage, which goes into a record.
//! Grants are cumulative per stream epoch and period, as the controller keeps them: on a
//! new stream, what is still reserved is carried and declared, and nothing else is held.
//! The stream itself is in [`crate::metering::reporter`].

pub use crate::config::model::Attribution;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tollgate_proto as pb;
pub use tollgate_proto::quantity::Qty;

/// A lease is treated as expired this long before the controller's expiry.
const EXPIRY_MARGIN: Duration = Duration::from_millis(500);
/// A lease is renewed once less than this share of its life is left.
const RENEW_AT: f64 = 0.5;
/// An account unused for this long is no longer renewed (and is forgotten once idle).
const IDLE: Duration = Duration::from_secs(30);
/// Spare concurrency slots held while an account has plenty left: at least this many,
const SPARE_SLOTS_MIN: u64 = 8;
/// ... and, where there is room for them, up to this many (or as many as are in use).
const SPARE_SLOTS_WIDE: u64 = 64;
/// ... and only while what is left for everyone else is this many times what is held.
const SPARE_ROOM: u64 = 16;
/// After the controller said an account is exhausted, requests that do not fit are refused
/// at once for this long instead of each asking again.
const EXHAUSTED_HOLD: Duration = Duration::from_millis(250);

pub use tollgate_proto::time::now_unix_ms as now_ms;

/// A concurrency account (`conc/<namespace>/<key>`): reserved per request and given back
/// when it ends.
fn is_slot(account: &str) -> bool {
    account.starts_with("conc/")
}

/// One account as this dataplane holds it.
#[derive(Debug)]
struct Account {
    period: i64,
    period_end_ms: i64,
    /// Cumulative grant of this epoch and period.
    granted: Qty,
    /// Settled usage plus live reservations, under `granted`.
    used: Qty,
    /// Live reservations.
    in_flight: Qty,
    /// `in_flight` as last told to the controller.
    reported_in_flight: Qty,
    /// Until when `granted` may be spent from (`None`: nothing granted yet).
    expires: Option<Instant>,
    lifetime: Duration,
    limited: u32,
    /// Left for everyone else when the last lease came.
    remaining: Qty,
    warn: bool,
    exhausted_at: Option<Instant>,
    /// What a waiting request needs.
    need: Qty,
    /// A typical reservation, to ask for several at once.
    typical: Qty,
    /// What is reserved per second, to ask ahead of it.
    pace: Pace,
    /// Concurrency slots: the most in flight since the usage stream last looked, which
    /// are kept (slots beyond go back to the controller).
    peak_slots: u64,
    /// Concurrency slots: what the last lease request said this dataplane holds. An answer
    /// grants no more than its request said, so an answer above this one is to an earlier
    /// request, overtaken by a release the controller has counted since.
    slots_told: u64,
    last_used: Instant,
    /// A request for this account is on its way.
    asked: bool,
    /// Requests waiting for a grant that includes this account.
    waiters: u64,
}

impl Account {
    fn new(now: Instant) -> Self {
        Account {
            period: 0,
            period_end_ms: 0,
            granted: Qty::default(),
            used: Qty::default(),
            in_flight: Qty::default(),
            reported_in_flight: Qty::default(),
            expires: None,
            lifetime: Duration::from_secs(10),
            limited: 0,
            remaining: Qty::default(),
            warn: false,
            exhausted_at: None,
            need: Qty::default(),
            typical: Qty::default(),
            pace: Pace::new(now),
            peak_slots: 0,
            slots_told: 0,
            last_used: now,
            asked: false,
            waiters: 0,
        }
    }

    /// Room below which more is asked for: a quarter of a second of reservations at the
    /// current pace, and at least two typical ones.
    fn ahead(&self) -> Qty {
        let p = self.pace.per_second();
        self.typical.times(2).max_each(Qty {
            usd: p.usd / 4,
            tokens: p.tokens / 4,
            requests: p.requests / 4,
        })
    }

    /// Reserving more than eight typical requests a second: worth asking ahead of at
    /// once rather than at the usage stream's next tick. (Near a small limit, asking
    /// ahead takes a share other dataplanes may need, so a quiet account does not.)
    fn busy(&self) -> bool {
        let p = self.pace.per_second();
        let t = self.typical.times(8);
        p.usd > t.usd || p.tokens > t.tokens || p.requests > t.requests
    }

    /// What to ask for beyond what a waiting request needs: a second of reservations at
    /// the current pace, and at least eight typical ones (the controller's fair share
    /// caps it near a limit).
    fn extra(&self) -> Qty {
        self.typical.times(8).max_each(self.pace.per_second())
    }

    fn live(&self, now: Instant, now_ms: i64) -> bool {
        self.expires.is_some_and(|e| now < e)
            && (self.period_end_ms == 0 || now_ms < self.period_end_ms)
    }

    fn room(&self) -> Qty {
        self.granted.minus(self.used)
    }

    /// The lease request of a concurrency account, if one is due. It states the slots
    /// this dataplane holds from now on: the most in flight since the last look (or those
    /// in flight plus one for each waiting request, if more), and spare slots while the
    /// account has plenty left. Slots beyond go back (given up here first, so nothing more
    /// is reserved from them), so that the next request may run on any dataplane.
    fn slots_request(
        &mut self,
        name: &str,
        waiting: bool,
        renew: bool,
        report: bool,
    ) -> Option<pb::LeaseRequest> {
        let in_flight = self.in_flight.requests;
        let peak = in_flight.max(self.peak_slots);
        self.peak_slots = in_flight;
        let waiting_slots = if waiting {
            self.need.requests.max(1) * self.waiters.max(1)
        } else {
            0
        };
        let base = peak.max(in_flight + waiting_slots);
        let spare = self.spare_slots(base);
        let hold = base + spare;
        let held = self.granted.requests;
        let release = !waiting && held > hold;
        // Fewer spare slots than half of what is wanted: asked for ahead of a burst.
        let low = spare > 0 && held < base + spare / 2;
        if release && !self.asked {
            self.granted.requests = hold;
        }
        let due = waiting || release || report || low || (renew && held > 0);
        if !due || (self.asked && !waiting) {
            return None;
        }
        self.asked = true;
        self.reported_in_flight = self.in_flight;
        self.slots_told = hold;
        let slots = |n| Some(Qty::requests(n).into());
        Some(pb::LeaseRequest {
            account: name.to_string(),
            in_flight: Some(self.in_flight.into()),
            need: Some(self.need.into()),
            want: slots(hold.saturating_sub(held)),
            hold: slots(hold),
            settled: None,
            period_start_unix_ms: 0,
        })
    }

    /// Spare concurrency slots to hold beyond `base`, so that a burst does not wait for
    /// the controller. While the account is in use, what is held stays within a
    /// [`SPARE_ROOM`]th of what was left for everyone else at the last lease; within that,
    /// as many spares as `base` or [`SPARE_SLOTS_WIDE`], whichever is more, and none
    /// unless there is room for `base` or [`SPARE_SLOTS_MIN`], whichever is more. Near the
    /// limit none: a slot idle here could make a request on another dataplane wait or be
    /// refused.
    fn spare_slots(&self, base: u64) -> u64 {
        let room = (self.remaining.requests / SPARE_ROOM).saturating_sub(base);
        if base == 0 || room < base.max(SPARE_SLOTS_MIN) {
            return 0;
        }
        room.min(base.max(SPARE_SLOTS_WIDE))
    }
}

/// Reservations per one-second window: the current window and the last full one.
#[derive(Debug)]
struct Pace {
    start: Instant,
    this: Qty,
    last: Qty,
}

impl Pace {
    fn new(now: Instant) -> Self {
        Pace {
            start: now,
            this: Qty::default(),
            last: Qty::default(),
        }
    }

    fn add(&mut self, amount: Qty, now: Instant) {
        let gone = now.duration_since(self.start);
        if gone >= Duration::from_secs(1) {
            // A window with nothing in it between: the last full one was empty.
            self.last = if gone < Duration::from_secs(2) {
                self.this
            } else {
                Qty::default()
            };
            self.this = Qty::default();
            self.start = now;
        }
        self.this = self.this.plus(amount);
    }

    fn per_second(&self) -> Qty {
        self.this.max_each(self.last)
    }
}

/// What is left of an account, for response headers.
#[derive(Clone, Copy, Debug)]
pub struct Left {
    pub amount: Qty,
    /// Spend has passed a warn threshold.
    pub warn: bool,
    /// The dimensions the account limits.
    pub limited: u32,
}

/// Why a request was not admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The account has no room: spent (or past a block threshold) across all dataplanes.
    Exhausted { account: Arc<str> },
    /// No grant could be had in time: the controller is unreachable or slow.
    Unavailable { account: Arc<str> },
}

/// What a request asks of one account.
#[derive(Clone, Debug)]
pub struct Demand {
    pub account: Arc<str>,
    pub amount: Qty,
}

/// The labels of one record: requests with equal labels in a batch are summed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RecordKey {
    who: Attribution,
    route: Arc<str>,
    provider: Arc<str>,
    model: Arc<str>,
    status: u16,
    charges: Vec<(Arc<str>, i64)>,
    epoch: u64,
    second_ms: i64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Sums {
    requests: u64,
    input: u64,
    output: u64,
    cached: u64,
    reasoning: u64,
    cost_nano: u64,
}

#[derive(Debug, Default)]
struct Inner {
    epoch: u64,
    /// Keyed by account and then period: a reservation settles into its own period.
    accounts: HashMap<Arc<str>, Account>,
    pending: HashMap<RecordKey, Sums>,
}

impl Inner {
    fn left(&self, account: &str) -> Option<Left> {
        let a = self.accounts.get(account)?;
        a.expires?;
        Some(Left {
            amount: a.remaining.plus(a.room()),
            warn: a.warn,
            limited: a.limited,
        })
    }
}

/// The quota state shared by the request path and the usage stream.
#[derive(Debug)]
pub struct Quotas {
    inner: Mutex<Inner>,
    /// Wakes the usage stream to send lease requests now.
    pub(crate) ask: Notify,
    /// Wakes requests waiting for a grant.
    granted: Notify,
    pub(crate) connected: AtomicBool,
    /// How long a request waits for a grant before it is refused.
    pub wait: Duration,
    /// Whether requests are admitted (and counted) when no grant can be had because the
    /// controller is unreachable.
    pub fail_open: bool,
    /// Where the time of each wait for a grant is observed (`tollgate_quota_wait_seconds`).
    waits: OnceLock<prometheus::HistogramVec>,
}

/// A request's reservations: (account, period, reserved, live: reserved under a grant).
type Held = Vec<(Arc<str>, i64, Qty, bool)>;

/// A request's reservations, settled once when dropped: by then `record` has set the
/// actual usage (or nothing was used).
#[derive(Debug)]
pub struct Reservation {
    quotas: Arc<Quotas>,
    held: Held,
    pub who: Attribution,
    started_ms: i64,
    outcome: Mutex<Outcome>,
    /// More for a request already counted ([`Quotas::extend`]): it holds no concurrency
    /// slot, and it is not another request in the counts.
    extension: bool,
}

/// What a request used, filled in when its answer ends.
#[derive(Debug, Default)]
struct Outcome {
    route: Arc<str>,
    provider: Arc<str>,
    model: Arc<str>,
    status: u16,
    usage: crate::metering::usage::Usage,
    cost_nano: u64,
    /// No usage was reported: the worst case is charged.
    unknown: bool,
}

impl Quotas {
    pub fn new(wait: Duration, fail_open: bool) -> Arc<Self> {
        Arc::new(Quotas {
            inner: Mutex::default(),
            ask: Notify::new(),
            granted: Notify::new(),
            connected: AtomicBool::new(false),
            wait,
            fail_open,
            waits: OnceLock::new(),
        })
    }

    /// Observes every wait for a grant in `histogram` (labels: account kind, result).
    pub fn observe_waits(&self, histogram: prometheus::HistogramVec) {
        // Set once at start; a second call keeps the first.
        let _ = self.waits.set(histogram);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::base::lock(&self.inner)
    }

    /// Reserves `demands`, all or none, waiting up to `self.wait` for grants.
    pub async fn reserve(
        self: &Arc<Self>,
        demands: &[Demand],
        who: Attribution,
    ) -> Result<Reservation, Refusal> {
        // The common case: the grants cover it (or nothing applies), and nothing waits.
        if let Some(done) = self.attempt(demands) {
            return done.map(|held| self.hold(held, who));
        }
        let waiting = Waiting::new(self, demands);
        let result = self.wait_for(demands, who).await;
        waiting.observe(match &result {
            Ok(_) => "granted",
            Err(Refusal::Exhausted { .. }) => "refused",
            Err(Refusal::Unavailable { .. }) => "unavailable",
        });
        result
    }

    /// Waits, up to `self.wait`, until `demands` are decided.
    async fn wait_for(
        self: &Arc<Self>,
        demands: &[Demand],
        who: Attribution,
    ) -> Result<Reservation, Refusal> {
        let deadline = Instant::now() + self.wait;
        loop {
            let waiting = self.granted.notified();
            tokio::pin!(waiting);
            waiting.as_mut().enable();
            // Looked at again once registered, so a grant that came in between wakes it.
            if let Some(done) = self.attempt(demands) {
                return done.map(|held| self.hold(held, who));
            }
            self.ask.notify_one();
            let timed_out = tokio::time::timeout_at(deadline.into(), waiting)
                .await
                .is_err();
            if timed_out {
                let account = self.first_short(demands);
                if !self.connected.load(Ordering::Relaxed) && self.fail_open {
                    tracing::debug!(%account, "no grant (controller unreachable); admitting as configured");
                    let held = demands
                        .iter()
                        .map(|d| (d.account.clone(), 0, Qty::default(), false))
                        .collect();
                    return Ok(self.hold(held, who));
                }
                self.explain_unavailable(&account);
                return Err(Refusal::Unavailable { account });
            }
        }
    }

    /// Says in the log, at most every ten seconds, why a request got no grant: the
    /// usage stream to the controller's leader is down (the replica reached may not be
    /// the leader), or the leader did not answer within the wait.
    fn explain_unavailable(&self, account: &str) {
        // A session account ends with the client's session id, which stays out of logs.
        let account = match account.strip_prefix("session/") {
            Some(rest) => rest.rsplit_once('/').map_or(rest, |(key, _)| key),
            None => account,
        };
        static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let now = crate::base::now_unix().max(0) as u64;
        let last = LAST.load(Ordering::Relaxed);
        if now < last + 10
            || LAST
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        if self.connected.load(Ordering::Relaxed) {
            tracing::warn!(%account, wait = ?self.wait, "requests refused (503): the controller did not grant quota within --quota-wait");
        } else {
            tracing::warn!(%account, "requests refused (503): no usage stream to the controller's leader (unreachable, or only a replica that is not the leader answers); --quota-unreachable=open admits them instead");
        }
    }

    /// `Some` when the request is decided now (reserved or refused), `None` when it waits.
    fn attempt(&self, demands: &[Demand]) -> Option<Result<Held, Refusal>> {
        match self.try_reserve(demands) {
            Ok(held) => Some(Ok(held)),
            Err(Some(refusal)) => Some(Err(refusal)),
            Err(None) => None,
        }
    }

    fn hold(self: &Arc<Self>, held: Held, who: Attribution) -> Reservation {
        Reservation {
            quotas: self.clone(),
            held,
            who,
            started_ms: now_ms(),
            outcome: Mutex::default(),
            extension: false,
        }
    }

    /// Reserves `factor` times what `of` reserved again, for another billed attempt of the
    /// same request (a failover after an attempt the provider billed, or a stream's
    /// continuation): the same accounts, no concurrency slot, and no request counted.
    pub async fn extend(
        self: &Arc<Self>,
        of: &Reservation,
        factor: u64,
    ) -> Result<Reservation, Refusal> {
        let demands: Vec<Demand> = of
            .held
            .iter()
            .filter(|(account, ..)| !is_slot(account))
            .map(|(account, _, amount, _)| Demand {
                account: account.clone(),
                amount: Qty {
                    requests: 0,
                    ..amount.times(factor)
                },
            })
            .collect();
        let mut more = self.reserve(&demands, of.who.clone()).await?;
        more.extension = true;
        Ok(more)
    }

    fn first_short(&self, demands: &[Demand]) -> Arc<str> {
        let inner = self.lock();
        let (now, now_ms) = (Instant::now(), now_ms());
        demands
            .iter()
            .find(|d| {
                inner
                    .accounts
                    .get(&d.account)
                    .is_none_or(|a| !a.live(now, now_ms) || !d.amount.fits(a.room(), a.limited))
            })
            .or(demands.first())
            .map(|d| d.account.clone())
            .unwrap_or_else(|| Arc::from(""))
    }

    /// Ok: reserved. Err(Some): refused now. Err(None): asked for more; wait.
    fn try_reserve(&self, demands: &[Demand]) -> Result<Held, Option<Refusal>> {
        if demands.is_empty() {
            return Ok(Vec::new());
        }
        let mut inner = self.lock();
        let (now, now_ms) = (Instant::now(), now_ms());
        let mut short = false;
        for d in demands {
            let a = inner
                .accounts
                .entry(d.account.clone())
                .or_insert_with(|| Account::new(now));
            a.last_used = now;
            let ewma = |t: u64, x: u64| t.saturating_mul(7).saturating_add(x) / 8;
            a.typical = if a.typical == Qty::default() {
                d.amount
            } else {
                Qty {
                    usd: ewma(a.typical.usd, d.amount.usd),
                    tokens: ewma(a.typical.tokens, d.amount.tokens),
                    requests: ewma(a.typical.requests, d.amount.requests)
                        .max(d.amount.requests.min(1)),
                }
            };
            let live = a.live(now, now_ms);
            if live && d.amount.fits(a.room(), a.limited) {
                continue;
            }
            if live
                && a.exhausted_at
                    .is_some_and(|t| now.duration_since(t) < EXHAUSTED_HOLD)
            {
                return Err(Some(Refusal::Exhausted {
                    account: d.account.clone(),
                }));
            }
            a.need = a.need.max_each(d.amount);
            short = true;
        }
        if short {
            return Err(None);
        }
        let mut held = Vec::with_capacity(demands.len());
        let mut low = false;
        for d in demands {
            if let Some(a) = inner.accounts.get_mut(&d.account) {
                a.used = a.used.plus(d.amount);
                a.in_flight = a.in_flight.plus(d.amount);
                a.need = Qty::default();
                a.pace.add(d.amount, now);
                a.peak_slots = a.peak_slots.max(a.in_flight.requests);
                low |= !a.asked
                    && !is_slot(&d.account)
                    && a.busy()
                    && !a.ahead().fits(a.room(), a.limited);
                held.push((d.account.clone(), a.period, d.amount, true));
            }
        }
        drop(inner);
        if low {
            // Ask ahead, so that the next requests find room and do not wait.
            self.ask.notify_one();
        }
        Ok(held)
    }

    /// Settles one request: its reservations give way to what it used, and its usage goes
    /// into a record.
    fn settle(&self, r: &Reservation, outcome: &Outcome) {
        let actual = |reserved: Qty| {
            if outcome.unknown {
                reserved
            } else {
                Qty {
                    usd: outcome.cost_nano,
                    tokens: outcome.usage.input.saturating_add(outcome.usage.output),
                    requests: u64::from(!r.extension),
                }
            }
        };
        let mut inner = self.lock();
        let epoch = inner.epoch;
        let mut freed_for_waiters = false;
        let mut charges = Vec::with_capacity(r.held.len());
        let mut charged_cost = outcome.cost_nano;
        // Unknown usage is charged its worst case in tokens too (as input: the split is
        // not known), so that token budgets see what was held for it.
        let mut unknown_tokens = 0;
        for (account, period, reserved, live) in &r.held {
            // A concurrency slot is given back: nothing of it is spent or reported.
            let slot = is_slot(account);
            let used = if slot {
                Qty::default()
            } else {
                actual(*reserved)
            };
            if outcome.unknown {
                charged_cost = charged_cost.max(used.usd);
                unknown_tokens = unknown_tokens.max(used.tokens);
            }
            if *live
                && let Some(a) = inner.accounts.get_mut(account)
                && a.period == *period
            {
                a.used = a.used.minus(*reserved).plus(used);
                a.in_flight = a.in_flight.minus(*reserved);
                freed_for_waiters |= a.waiters > 0 && used != *reserved;
            }
            if !slot {
                charges.push((account.clone(), *period));
            }
        }
        let key = RecordKey {
            who: r.who.clone(),
            route: outcome.route.clone(),
            provider: outcome.provider.clone(),
            model: outcome.model.clone(),
            status: outcome.status,
            charges,
            epoch,
            second_ms: r.started_ms - r.started_ms.rem_euclid(1000),
        };
        let u = &outcome.usage;
        let s = inner.pending.entry(key).or_default();
        s.requests += u64::from(!r.extension);
        s.input = s
            .input
            .saturating_add(u.input.saturating_add(unknown_tokens));
        s.output = s.output.saturating_add(u.output);
        s.cached = s.cached.saturating_add(u.cached);
        s.reasoning = s.reasoning.saturating_add(u.reasoning);
        s.cost_nano = s.cost_nano.saturating_add(charged_cost);
        drop(inner);
        if freed_for_waiters {
            // A slot given back, or a reservation that used less than it held: room a
            // waiting request may take without asking the controller.
            self.granted.notify_waiters();
        }
    }

    /// The records made since the last call, summed by labels.
    pub(crate) fn take_records(&self) -> Vec<pb::UsageRecord> {
        let pending = std::mem::take(&mut self.lock().pending);
        pending
            .into_iter()
            .map(|(k, s)| pb::UsageRecord {
                virtual_key: k.who.key.to_string(),
                route: k.route.to_string(),
                provider: k.provider.to_string(),
                model: k.model.to_string(),
                session: k.who.session.to_string(),
                team: k.who.team.to_string(),
                customer: k.who.customer.to_string(),
                user: k.who.user.to_string(),
                charges: k
                    .charges
                    .into_iter()
                    .map(|(account, period)| pb::Charge {
                        account: account.to_string(),
                        period_start_unix_ms: period,
                    })
                    .collect(),
                input_tokens: s.input,
                output_tokens: s.output,
                cached_input_tokens: s.cached,
                reasoning_tokens: s.reasoning,
                cost_nano_usd: s.cost_nano,
                timestamp_unix_ms: k.second_ms,
                status_code: k.status as u32,
                requests: s.requests,
                lease_epoch: k.epoch,
            })
            .collect()
    }

    /// A new stream: grants of the last one are void; what is reserved is carried.
    /// Returns the new epoch.
    pub(crate) fn new_epoch(&self) -> u64 {
        let mut inner = self.lock();
        inner.epoch += 1;
        for a in inner.accounts.values_mut() {
            a.granted = a.in_flight;
            a.used = a.in_flight;
            a.expires = None;
            a.asked = false;
        }
        inner.epoch
    }

    /// Lease requests due now: accounts a request waits on, and live ones in use whose
    /// lease is running out or whose room is low. Idle accounts are forgotten.
    pub(crate) fn lease_requests(&self) -> Vec<pb::LeaseRequest> {
        let mut inner = self.lock();
        let (now, now_ms) = (Instant::now(), now_ms());
        inner
            .accounts
            .retain(|_, a| now.duration_since(a.last_used) < IDLE || a.in_flight != Qty::default());
        let mut out = Vec::new();
        for (name, a) in inner.accounts.iter_mut() {
            let waiting = a.need != Qty::default();
            let renew = match a.expires {
                None => true,
                Some(e) => {
                    let left = e.saturating_duration_since(now);
                    left.as_secs_f64() < a.lifetime.as_secs_f64() * RENEW_AT
                        || (a.period_end_ms != 0 && now_ms >= a.period_end_ms)
                }
            };
            let low = !a.ahead().fits(a.room(), a.limited);
            // Renewed only while in use: a grant left idle lapses, and what it held is
            // free for the other dataplanes again.
            let active = now.duration_since(a.last_used) < a.lifetime / 2;
            // Once a grant has lapsed, the controller counts what was last reported as in
            // flight: it is told when that changes, so the rest is free again.
            let lapsed = a.expires.is_some_and(|e| now >= e);
            let report = (lapsed && a.in_flight != a.reported_in_flight)
                || (a.expires.is_none() && a.in_flight != Qty::default());
            if is_slot(name) {
                out.extend(a.slots_request(name, waiting, active && renew, report));
                continue;
            }
            let renewing = active && (renew || low);
            if (waiting || renewing || report) && (!a.asked || waiting) {
                a.asked = true;
                a.reported_in_flight = a.in_flight;
                // Asking for nothing is a report of what is in flight, which does not
                // extend the grant.
                let want = if !(waiting || renewing) {
                    a.need
                } else {
                    a.need.plus(a.extra())
                };
                out.push(pb::LeaseRequest {
                    account: name.to_string(),
                    in_flight: Some(a.in_flight.into()),
                    need: Some(a.need.into()),
                    want: Some(want.into()),
                    hold: None,
                    settled: Some(a.used.minus(a.in_flight).into()),
                    period_start_unix_ms: a.period,
                });
            }
        }
        out
    }

    /// Applies the leases of an acknowledgement and wakes waiting requests.
    pub(crate) fn apply_leases(&self, leases: &[pb::QuotaLease]) {
        if leases.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let (now, now_ms) = (Instant::now(), now_ms());
        for l in leases {
            let Some(a) = inner.accounts.get_mut(l.account.as_str()) else {
                continue;
            };
            if l.period_start_unix_ms != a.period {
                // A new period: reservations of the last one settle there, not here.
                a.period = l.period_start_unix_ms;
                a.used = Qty::default();
                a.in_flight = Qty::default();
            }
            a.period_end_ms = l.period_end_unix_ms;
            a.granted = Qty::from(l.granted.as_ref());
            if is_slot(&l.account) {
                // Answers come in order, but a waiting request may ask again before the
                // first answer: an answer to a request made before the last release would
                // bring back slots the controller now counts as free.
                a.granted.requests = a.granted.requests.min(a.slots_told);
            }
            // The used part may exceed what is granted (actual over the reservation):
            // then there is no room until more comes.
            let life = Duration::from_millis((l.expires_unix_ms - now_ms).max(0) as u64);
            a.lifetime = life;
            a.expires = Some(now + life.saturating_sub(EXPIRY_MARGIN));
            a.limited = l.limited;
            a.remaining = Qty::from(l.remaining.as_ref());
            a.warn = l.warn;
            a.exhausted_at = l.exhausted.then_some(now);
            if l.exhausted {
                // The waiting request that asked will be refused; later ones ask again.
                a.need = Qty::default();
            } else if a.need.fits(a.room(), a.limited) {
                a.need = Qty::default();
            }
            a.asked = false;
        }
        drop(inner);
        self.granted.notify_waiters();
    }

    /// What is left of `account` for this dataplane's requests (its own room plus what
    /// was left for everyone else at the last lease), as of the last lease. `None` when
    /// no lease has come.
    pub fn remaining(&self, account: &str) -> Option<Left> {
        self.lock().left(account)
    }

    /// What is left of each of `accounts` the dataplane holds a grant for, read under one
    /// lock (a response's quota headers read several): `found` gets each one's position in
    /// `accounts` and what is left of it.
    pub fn each_remaining<'a>(
        &self,
        accounts: impl IntoIterator<Item = &'a str>,
        mut found: impl FnMut(usize, Left),
    ) {
        let inner = self.lock();
        for (i, account) in accounts.into_iter().enumerate() {
            if let Some(left) = inner.left(account) {
                found(i, left);
            }
        }
    }

    /// Nothing is waiting to be reported.
    pub(crate) fn idle(&self) -> bool {
        let inner = self.lock();
        inner.pending.is_empty()
            && inner
                .accounts
                .values()
                .all(|a| a.in_flight == Qty::default())
    }
}

/// A request waiting for grants, counted in each of its accounts while it waits.
struct Waiting<'a> {
    quotas: &'a Quotas,
    demands: &'a [Demand],
    since: Instant,
    /// The kind of the first account it was short of (`conc`, `rate`, ...).
    kind: &'static str,
}

impl<'a> Waiting<'a> {
    fn new(quotas: &'a Quotas, demands: &'a [Demand]) -> Self {
        let mut inner = quotas.lock();
        let mut kind = None;
        for d in demands {
            if let Some(a) = inner.accounts.get_mut(&d.account) {
                a.waiters += 1;
                if kind.is_none() && a.need != Qty::default() {
                    kind = Some(account_kind(&d.account));
                }
            }
        }
        Waiting {
            quotas,
            demands,
            since: Instant::now(),
            kind: kind.unwrap_or("other"),
        }
    }

    fn observe(&self, result: &str) {
        if let Some(h) = self.quotas.waits.get() {
            h.with_label_values(&[self.kind, result])
                .observe(self.since.elapsed().as_secs_f64());
        }
    }
}

/// The kinds of account, as `tollgate_quota_wait_seconds` labels them: a fixed set, so
/// that a metric label cannot take arbitrary values.
pub const ACCOUNT_KINDS: [&str; 6] = ["budget", "rate", "conc", "session", "tool", "other"];

/// The kind of an account, from its name's first segment.
fn account_kind(account: &str) -> &'static str {
    let first = account.split('/').next().unwrap_or_default();
    ACCOUNT_KINDS
        .into_iter()
        .find(|k| *k == first)
        .unwrap_or("other")
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut inner = self.quotas.lock();
        for d in self.demands {
            if let Some(a) = inner.accounts.get_mut(&d.account) {
                a.waiters = a.waiters.saturating_sub(1);
            }
        }
    }
}

impl Reservation {
    /// Notes what the request used (called once its answer has ended; a later call, such
    /// as a continuation on another target, adds to it).
    pub fn record(
        &self,
        route: &Arc<str>,
        provider: &Arc<str>,
        model: &Arc<str>,
        status: u16,
        usage: Option<crate::metering::usage::Usage>,
        cost_nano: u64,
    ) {
        let mut o = crate::base::lock(&self.outcome);
        o.route = route.clone();
        o.provider = provider.clone();
        o.model = model.clone();
        o.status = status;
        match usage {
            Some(u) => {
                o.usage.input = o.usage.input.saturating_add(u.input);
                o.usage.output = o.usage.output.saturating_add(u.output);
                o.usage.cached = o.usage.cached.saturating_add(u.cached);
                o.usage.reasoning = o.usage.reasoning.saturating_add(u.reasoning);
                o.cost_nano = o.cost_nano.saturating_add(cost_nano);
            }
            // A success without usage: what it cost is not known, so its worst case is
            // charged.
            None if (200..300).contains(&status) => o.unknown = true,
            None => {}
        }
    }

    /// Notes an attempt the provider billed without saying what it used (it timed out,
    /// the client went away, the stream broke or went silent): its worst case is charged,
    /// as the provider may have produced up to the output limit.
    pub fn charge_worst(
        &self,
        route: &Arc<str>,
        provider: &Arc<str>,
        model: &Arc<str>,
        status: u16,
    ) {
        self.record(route, provider, model, status, None, 0);
        crate::base::lock(&self.outcome).unknown = true;
    }

    /// Something has been charged to it: another billed attempt needs a reservation of
    /// its own.
    pub fn charged(&self) -> bool {
        let o = crate::base::lock(&self.outcome);
        o.unknown || o.usage != crate::metering::usage::Usage::default() || o.cost_nano > 0
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let outcome = std::mem::take(match self.outcome.get_mut() {
            Ok(o) => o,
            Err(p) => p.into_inner(),
        });
        self.quotas.settle(self, &outcome);
    }
}

#[cfg(test)]
mod tests;
