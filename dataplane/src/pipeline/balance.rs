//! Choosing where a request goes, and remembering how each place has been doing: the
//! routing strategies, outlier ejection (per target and per credential), the latency and
//! in-flight figures the strategies read, credential rate limits, and the retry budget.
//!
//! The state lives in a [`Registry`] that outlives config snapshots, so a config change
//! neither forgets an ejection nor resets a latency estimate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::failure::HealthPolicy;
use crate::config::model::{Credential, Provider, Route, Strategy, Target};
use crate::config::snapshot::Snapshot;

/// What an endpoint (a target, or a credential) can take right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    Healthy,
    /// Ejected, and its ejection is over: one request may probe it.
    Probe,
    /// Ejected, or (a credential) out of its rate limit.
    Unavailable,
}

/// How one endpoint has been doing.
#[derive(Debug)]
struct EndpointState {
    consecutive: u32,
    /// Set while ejected; the probe is allowed once it has passed.
    ejected_until: Option<Instant>,
    /// A probe is in flight: nobody else may use the endpoint until it is answered.
    probing: bool,
    /// Ejections in a row, without a quiet spell between: the ejection time grows with it.
    streak: u32,
    last_ejection: Option<Instant>,
    /// The failure ratio window: requests and failures since `window_start`.
    window_start: Instant,
    window_requests: u32,
    window_failures: u32,
    /// Peak-EWMA latency (seconds) and when it was last updated.
    ewma: f64,
    ewma_at: Instant,
    /// A credential's own limits: the provider said it is exhausted until then.
    limited_until: Option<Instant>,
    /// Requests and tokens in the current minute (credentials with limits).
    minute_start: Instant,
    minute_requests: u64,
    minute_tokens: u64,
}

/// One target (provider and model) or one credential.
#[derive(Debug)]
pub struct Endpoint {
    state: Mutex<EndpointState>,
    inflight: AtomicU32,
}

/// How fast an old latency is forgotten (the EWMA's time constant).
const EWMA_DECAY: Duration = Duration::from_secs(5);
/// The latency a failure counts as, at least.
const FAILURE_LATENCY: Duration = Duration::from_secs(1);

pub use crate::base::metrics::Transition;

impl Default for Endpoint {
    fn default() -> Self {
        let now = Instant::now();
        Self {
            state: Mutex::new(EndpointState {
                consecutive: 0,
                ejected_until: None,
                probing: false,
                streak: 0,
                last_ejection: None,
                window_start: now,
                window_requests: 0,
                window_failures: 0,
                ewma: 0.0,
                ewma_at: now,
                limited_until: None,
                minute_start: now,
                minute_requests: 0,
                minute_tokens: 0,
            }),
            inflight: AtomicU32::new(0),
        }
    }
}

impl Endpoint {
    fn lock(&self) -> std::sync::MutexGuard<'_, EndpointState> {
        crate::base::lock(&self.state)
    }

    pub fn availability(&self, now: Instant) -> Availability {
        let s = self.lock();
        if s.limited_until.is_some_and(|t| now < t) {
            return Availability::Unavailable;
        }
        match s.ejected_until {
            None => Availability::Healthy,
            Some(_) if s.probing => Availability::Unavailable,
            Some(t) if now >= t => Availability::Probe,
            Some(_) => Availability::Unavailable,
        }
    }

    /// Claims the endpoint for a request: `Some(false)` when it is healthy, `Some(true)`
    /// when the request is the half-open probe of an ejected endpoint whose time is up,
    /// `None` when it may not be used (another request holds the probe).
    pub fn claim_probe(&self, now: Instant) -> Option<bool> {
        let mut s = self.lock();
        match s.ejected_until {
            Some(t) if now >= t && !s.probing => {
                s.probing = true;
                Some(true)
            }
            None => Some(false),
            _ => None,
        }
    }

    /// Gives up a probe whose outcome was not reported (the request ended first).
    fn release_probe(&self) {
        self.lock().probing = false;
    }

    pub fn is_ejected(&self) -> bool {
        self.lock().ejected_until.is_some()
    }

    /// A request succeeded after `latency` (time to the provider's first byte).
    pub fn success(&self, latency: Duration, now: Instant) -> Transition {
        self.first_byte(latency, now);
        self.settled(now)
    }

    /// A stream's first byte came after `latency`: the latency estimate takes it; whether
    /// the request succeeded is known when the stream ends ([`Endpoint::settled`]).
    pub fn first_byte(&self, latency: Duration, now: Instant) {
        observe_latency(&mut self.lock(), latency.as_secs_f64(), now);
    }

    /// A request ended well.
    pub fn settled(&self, now: Instant) -> Transition {
        let mut s = self.lock();
        s.consecutive = 0;
        roll_window(&mut s, now, Duration::from_secs(10));
        s.window_requests += 1;
        s.probing = false;
        if s.ejected_until.take().is_some() {
            Transition::Recovered
        } else {
            Transition::None
        }
    }

    /// A request failed in a way that counts against the endpoint.
    pub fn failure(&self, policy: &HealthPolicy, now: Instant, latency: Duration) -> Transition {
        let mut s = self.lock();
        s.consecutive += 1;
        roll_window(&mut s, now, policy.interval);
        s.window_requests += 1;
        s.window_failures += 1;
        // A failure counts as a slow answer, however fast it came (a refused connection is
        // instant): the latency strategy turns away from it too.
        let penalised = latency.max(FAILURE_LATENCY).as_secs_f64();
        observe_latency(&mut s, penalised, now);
        let probe_failed = s.probing;
        s.probing = false;
        let by_count = s.consecutive >= policy.consecutive_failures.max(1);
        let by_ratio = s.window_requests >= policy.minimum_requests.max(1)
            && u64::from(s.window_failures) * 100
                >= u64::from(policy.failure_percent) * u64::from(s.window_requests);
        if probe_failed || (s.ejected_until.is_none() && (by_count || by_ratio)) {
            return Transition::Ejected(eject(&mut s, policy, now));
        }
        Transition::None
    }

    /// Takes the endpoint out at once (a credential the provider refused).
    pub fn eject_now(&self, policy: &HealthPolicy, now: Instant) -> Transition {
        let mut s = self.lock();
        s.probing = false;
        Transition::Ejected(eject(&mut s, policy, now))
    }

    /// The provider says this credential is out of quota for `wait`.
    pub fn limit_for(&self, wait: Duration, now: Instant) {
        let mut s = self.lock();
        let until = now + wait;
        if s.limited_until.is_none_or(|t| t < until) {
            s.limited_until = Some(until);
        }
    }

    /// Counts a request against per-minute limits (0: no limit); false when over one.
    pub fn take_rate(&self, rpm: u64, tpm: u64, now: Instant) -> bool {
        if rpm == 0 && tpm == 0 {
            return true;
        }
        let mut s = self.lock();
        if now.duration_since(s.minute_start) >= Duration::from_secs(60) {
            s.minute_start = now;
            s.minute_requests = 0;
            s.minute_tokens = 0;
        }
        if (rpm > 0 && s.minute_requests >= rpm) || (tpm > 0 && s.minute_tokens >= tpm) {
            return false;
        }
        s.minute_requests += 1;
        true
    }

    /// Tokens a finished request used, against the tokens-per-minute limit.
    pub fn add_tokens(&self, tokens: u64) {
        self.lock().minute_tokens += tokens;
    }

    /// The peak-EWMA cost: latency estimate (decayed to now) times the requests that
    /// would share it.
    pub fn latency_cost(&self, now: Instant) -> f64 {
        let s = self.lock();
        let elapsed = now.duration_since(s.ewma_at).as_secs_f64();
        let decayed = s.ewma * (-elapsed / EWMA_DECAY.as_secs_f64()).exp();
        decayed * f64::from(self.inflight.load(Ordering::Relaxed) + 1)
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

fn roll_window(s: &mut EndpointState, now: Instant, interval: Duration) {
    if now.duration_since(s.window_start) >= interval {
        s.window_start = now;
        s.window_requests = 0;
        s.window_failures = 0;
    }
}

/// Peak EWMA: a slower sample is taken at once, a faster one blends in over time.
fn observe_latency(s: &mut EndpointState, sample: f64, now: Instant) {
    let elapsed = now.duration_since(s.ewma_at).as_secs_f64();
    s.ewma_at = now;
    if sample > s.ewma {
        s.ewma = sample;
    } else {
        let w = (-elapsed / EWMA_DECAY.as_secs_f64()).exp();
        s.ewma = s.ewma * w + sample * (1.0 - w);
    }
}

fn eject(s: &mut EndpointState, policy: &HealthPolicy, now: Instant) -> Duration {
    // Ejections close together grow; after a quiet spell as long as the longest
    // ejection, the next starts from the base again.
    let quiet = s
        .last_ejection
        .is_none_or(|t| now.duration_since(t) > policy.max_ejection + policy.base_ejection);
    s.streak = if quiet { 1 } else { s.streak.saturating_add(1) };
    let factor = 1u32 << (s.streak - 1).min(16);
    let time = policy
        .base_ejection
        .saturating_mul(factor)
        .min(policy.max_ejection.max(policy.base_ejection));
    s.ejected_until = Some(now + time);
    s.last_ejection = Some(now);
    s.consecutive = 0;
    s.window_requests = 0;
    s.window_failures = 0;
    time
}

/// An in-flight request on an endpoint.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Retries allowed as a share of recent requests, per route.
#[derive(Debug)]
pub struct RetryBudget {
    state: Mutex<BudgetState>,
}

#[derive(Debug)]
struct BudgetState {
    start: Instant,
    /// Counts of the previous and the current 10-second window.
    requests: [u64; 2],
    retries: [u64; 2],
}

/// The retry budget's window.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);
/// Retries always allowed per second, whatever the share.
const BUDGET_FLOOR_PER_SEC: u64 = 3;

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            state: Mutex::new(BudgetState {
                start: Instant::now(),
                requests: [0; 2],
                retries: [0; 2],
            }),
        }
    }
}

impl RetryBudget {
    fn lock(&self, now: Instant) -> std::sync::MutexGuard<'_, BudgetState> {
        let mut s = crate::base::lock(&self.state);
        let elapsed = now.duration_since(s.start);
        if elapsed >= BUDGET_WINDOW * 2 {
            *s = BudgetState {
                start: now,
                requests: [0; 2],
                retries: [0; 2],
            };
        } else if elapsed >= BUDGET_WINDOW {
            s.start += BUDGET_WINDOW;
            s.requests = [s.requests[1], 0];
            s.retries = [s.retries[1], 0];
        }
        s
    }

    pub fn request(&self, now: Instant) {
        self.lock(now).requests[1] += 1;
    }

    /// Takes one retry from the budget; false when the route has retried enough.
    pub fn try_retry(&self, percent: u32, now: Instant) -> bool {
        let mut s = self.lock(now);
        let requests: u64 = s.requests.iter().sum();
        let retries: u64 = s.retries.iter().sum();
        let floor = BUDGET_FLOOR_PER_SEC * BUDGET_WINDOW.as_secs();
        let allowed = (requests * u64::from(percent) / 100).max(floor);
        if retries >= allowed {
            return false;
        }
        s.retries[1] += 1;
        true
    }
}

/// The health and load state of every target, credential and route, kept across config
/// changes. Entries are keyed by name; an entry whose target is gone stays (it is small)
/// until the process ends.
#[derive(Debug, Default)]
pub struct Registry {
    /// provider id -> model -> endpoint.
    targets: ByProvider<Arc<str>, Endpoint>,
    /// provider id -> credential id -> endpoint.
    credentials: ByProvider<String, Endpoint>,
    budgets: RwLock<HashMap<Arc<str>, Arc<RetryBudget>>>,
}

/// Entries by provider id, then by a name within the provider.
type ByProvider<K, V> = RwLock<HashMap<Arc<str>, HashMap<K, Arc<V>>>>;

fn get_or_insert<K, V>(
    map: &ByProvider<K, V>,
    outer: &Arc<str>,
    inner: &str,
    make_key: impl FnOnce() -> K,
) -> Arc<V>
where
    K: std::borrow::Borrow<str> + std::hash::Hash + Eq,
    V: Default,
{
    if let Ok(m) = map.read()
        && let Some(e) = m.get(outer).and_then(|m| m.get(inner))
    {
        return e.clone();
    }
    let mut m = match map.write() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    m.entry(outer.clone())
        .or_default()
        .entry(make_key())
        .or_default()
        .clone()
}

impl Registry {
    pub fn target(&self, provider: &Arc<str>, model: &Arc<str>) -> Arc<Endpoint> {
        get_or_insert(&self.targets, provider, model, || model.clone())
    }

    pub fn credential(&self, provider: &Arc<str>, credential: &str) -> Arc<Endpoint> {
        get_or_insert(&self.credentials, provider, credential, || {
            credential.to_string()
        })
    }

    pub fn budget(&self, route: &Arc<str>) -> Arc<RetryBudget> {
        if let Ok(m) = self.budgets.read()
            && let Some(b) = m.get(route)
        {
            return b.clone();
        }
        let mut m = match self.budgets.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        m.entry(route.clone()).or_default().clone()
    }
}

/// The label of a requested model that configuration does not list.
pub const OTHER_MODEL: &str = "other";

/// [`OTHER_MODEL`], shared: a request with an unlisted model allocates no label.
fn other_model() -> Arc<str> {
    static OTHER: std::sync::LazyLock<Arc<str>> =
        std::sync::LazyLock::new(|| Arc::from(OTHER_MODEL));
    OTHER.clone()
}

/// One place a request may go: a route target or a fallback, resolved.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub provider: Arc<Provider>,
    /// The model sent upstream.
    pub model: Arc<str>,
    /// The model as metrics, health and usage records name it: the model configured, or
    /// the requested one if configuration lists it (a price override or the built-in
    /// table), else [`OTHER_MODEL`]. Never a client's own string.
    pub label: Arc<str>,
    pub endpoint: Arc<Endpoint>,
    /// Index in the route's targets, or `targets.len() + i` for fallback `i`.
    pub index: usize,
    /// The attempt's deadline: its own, or the route's.
    pub timeout: Duration,
    pub is_fallback: bool,
    /// This request is the half-open probe of an ejected endpoint.
    pub probe: bool,
}

/// Releases a claimed probe when the attempt ends without reporting an outcome (the
/// client went away, or the gateway failed before sending).
pub struct ProbeGuard<'a>(Option<&'a Endpoint>);

impl<'a> ProbeGuard<'a> {
    pub fn new(c: &'a Candidate) -> Self {
        Self(c.probe.then_some(&*c.endpoint))
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(e) = self.0 {
            // Reported outcomes have already cleared it; this only matters otherwise.
            if e.lock().ejected_until.is_some() {
                e.release_probe();
            }
        }
    }
}

/// The places a request may go, in the order they are tried, and which have been.
pub struct Plan {
    route: Arc<Route>,
    pub candidates: Vec<Candidate>,
    tried: Vec<bool>,
    /// The fallback to try next (index into the fallbacks).
    next_fallback: usize,
}

impl Plan {
    /// A plan with nothing left to try.
    pub fn empty(route: Arc<Route>) -> Self {
        Self {
            route,
            candidates: vec![],
            tried: vec![],
            next_fallback: 0,
        }
    }

    /// Resolves the route's targets and fallbacks against the snapshot's providers;
    /// targets whose provider does not exist are left out.
    pub fn new(
        route: Arc<Route>,
        snapshot: &Snapshot,
        registry: &Registry,
        requested: &str,
    ) -> Self {
        let mut candidates = Vec::with_capacity(route.targets.len() + route.fallbacks.len());
        // One copy of the requested model for every target that sends it on.
        let sent_on = std::cell::OnceCell::new();
        let resolve = |t: &Target, index: usize, is_fallback| {
            let provider = snapshot.providers.get(&t.provider)?.clone();
            let model: Arc<str> = match &t.model {
                Some(m) => m.clone(),
                None => sent_on.get_or_init(|| Arc::<str>::from(requested)).clone(),
            };
            let label = if t.model.is_some() || provider.lists(requested) {
                model.clone()
            } else {
                other_model()
            };
            let endpoint = registry.target(&provider.id, &label);
            Some(Candidate {
                provider,
                model,
                label,
                endpoint,
                index,
                timeout: t.timeout.unwrap_or(route.attempt_timeout),
                is_fallback,
                probe: false,
            })
        };
        for (i, t) in route.targets.iter().enumerate() {
            candidates.extend(resolve(t, i, false));
        }
        for (i, f) in route.fallbacks.iter().enumerate() {
            candidates.extend(resolve(&f.target, route.targets.len() + i, true));
        }
        let tried = vec![false; candidates.len()];
        Self {
            route,
            candidates,
            tried,
            next_fallback: 0,
        }
    }

    fn target_weight(&self, c: &Candidate) -> u32 {
        self.route.targets.get(c.index).map_or(0, |t| t.weight)
    }

    /// The first attempt's target, or a retry's: by the route's strategy among the
    /// targets that can take it, preferring ones not tried yet. `None` when no target can.
    pub fn pick_target(&mut self, now: Instant) -> Option<Candidate> {
        loop {
            let i = self
                .pick_among(now, true)
                .or_else(|| self.pick_among(now, false))?;
            self.tried[i] = true;
            if let Some(probe) = self.candidates[i].endpoint.claim_probe(now) {
                return Some(Candidate {
                    probe,
                    ..self.candidates[i].clone()
                });
            }
        }
    }

    /// The target a single-attempt request takes, by strategy, without claiming a probe
    /// (the request's outcome is not reported back).
    pub fn peek_target(&self, now: Instant) -> Option<Candidate> {
        let all: Vec<usize> = (0..self.candidates.len())
            .filter(|&i| !self.candidates[i].is_fallback)
            .collect();
        let healthy: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&i| self.candidates[i].endpoint.availability(now) == Availability::Healthy)
            .collect();
        let i = self
            .by_strategy(&healthy, now)
            .or_else(|| self.by_strategy(&all, now))?;
        Some(self.candidates[i].clone())
    }

    /// The next place after a failure: an untried target, then the fallbacks in order.
    pub fn fail_over(&mut self, now: Instant) -> Option<Candidate> {
        while let Some(i) = self.pick_among(now, true) {
            self.tried[i] = true;
            if let Some(probe) = self.candidates[i].endpoint.claim_probe(now) {
                return Some(Candidate {
                    probe,
                    ..self.candidates[i].clone()
                });
            }
        }
        while let Some(c) = self.next_fallback_candidate(now) {
            if let Some(probe) = c.endpoint.claim_probe(now) {
                return Some(Candidate { probe, ..c });
            }
        }
        None
    }

    /// The next fallback in order that can take the request; ejected ones are passed over.
    fn next_fallback_candidate(&mut self, now: Instant) -> Option<Candidate> {
        let first = self.candidates.iter().position(|c| c.is_fallback)?;
        let start = first + self.next_fallback;
        for i in start..self.candidates.len() {
            if self.tried[i] || !usable(&self.candidates[i], now) {
                continue;
            }
            self.tried[i] = true;
            self.next_fallback = i + 1 - first;
            return Some(self.candidates[i].clone());
        }
        None
    }

    /// Whether any untried place is left: nothing left means the last failure is the
    /// answer.
    pub fn exhausted(&self) -> bool {
        self.tried.iter().all(|t| *t)
    }

    /// A target by strategy among those untried (`untried_only`) or all, healthy first.
    fn pick_among(&self, now: Instant, untried_only: bool) -> Option<usize> {
        let eligible: Vec<usize> = (0..self.candidates.len())
            .filter(|&i| {
                let c = &self.candidates[i];
                !c.is_fallback && (!untried_only || !self.tried[i]) && usable(c, now)
            })
            .collect();
        let chosen = self.by_strategy(&eligible, now);
        if chosen.is_some() || untried_only {
            return chosen;
        }
        None
    }

    fn by_strategy(&self, eligible: &[usize], now: Instant) -> Option<usize> {
        let weight = |&i: &usize| self.target_weight(&self.candidates[i]);
        match self.route.strategy {
            Strategy::Weighted => crate::config::model::pick_weighted(eligible, weight)
                .or_else(|| eligible.first())
                .copied(),
            Strategy::Priority => {
                let best = eligible
                    .iter()
                    .map(|&i| self.route.targets[self.candidates[i].index].priority)
                    .min()?;
                let group: Vec<usize> = eligible
                    .iter()
                    .copied()
                    .filter(|&i| self.route.targets[self.candidates[i].index].priority == best)
                    .collect();
                crate::config::model::pick_weighted(&group, weight)
                    .or_else(|| group.first())
                    .copied()
            }
            Strategy::Latency => {
                // Power of two choices over the peak-EWMA cost.
                match eligible.len() {
                    0 => None,
                    1 => Some(eligible[0]),
                    n => {
                        let a = fastrand::usize(0..n);
                        let mut b = fastrand::usize(0..n - 1);
                        if b >= a {
                            b += 1;
                        }
                        let (a, b) = (eligible[a], eligible[b]);
                        let cost = |i: usize| self.candidates[i].endpoint.latency_cost(now);
                        Some(if cost(b) < cost(a) { b } else { a })
                    }
                }
            }
            Strategy::LeastBusy => {
                let least = eligible
                    .iter()
                    .map(|&i| self.candidates[i].endpoint.inflight())
                    .min()?;
                let group: Vec<usize> = eligible
                    .iter()
                    .copied()
                    .filter(|&i| self.candidates[i].endpoint.inflight() == least)
                    .collect();
                crate::config::model::pick_weighted(&group, weight)
                    .or_else(|| group.first())
                    .copied()
            }
            Strategy::Cost => {
                let price = |i: usize| {
                    let c = &self.candidates[i];
                    c.provider.price(&c.model).unwrap_or(f64::INFINITY)
                };
                let cheapest = eligible
                    .iter()
                    .map(|&i| price(i))
                    .fold(f64::INFINITY, f64::min);
                let group: Vec<usize> = eligible
                    .iter()
                    .copied()
                    .filter(|&i| price(i) == cheapest)
                    .collect();
                crate::config::model::pick_weighted(&group, weight)
                    .or_else(|| group.first())
                    .copied()
            }
        }
    }

    /// When no target or fallback can take the request (all ejected), the request still
    /// goes somewhere rather than failing outright: the target whose turn comes first by
    /// strategy, ejection ignored.
    pub fn pick_any(&mut self) -> Option<Candidate> {
        let all: Vec<usize> = (0..self.candidates.len())
            .filter(|&i| !self.candidates[i].is_fallback && !self.tried[i])
            .collect();
        let i = self
            .by_strategy(&all, Instant::now())
            .or_else(|| (0..self.candidates.len()).find(|&i| !self.tried[i]))?;
        self.tried[i] = true;
        Some(self.candidates[i].clone())
    }
}

/// A candidate that may take a request now: healthy, or due for its half-open probe.
fn usable(c: &Candidate, now: Instant) -> bool {
    c.endpoint.availability(now) != Availability::Unavailable
}

/// `c` of `provider`, when it can take a request: not ejected (or its probe is free), with
/// weight, within its per-minute limits.
fn this_one<'p>(
    provider: &Provider,
    c: &'p Credential,
    registry: &Registry,
    now: Instant,
) -> Option<(&'p Credential, Arc<Endpoint>)> {
    let e = registry.credential(&provider.id, &c.id);
    let usable = c.weight > 0
        && match e.availability(now) {
            Availability::Healthy => true,
            Availability::Probe => e.claim_probe(now).is_some(),
            Availability::Unavailable => false,
        };
    (usable && e.take_rate(c.requests_per_minute, c.tokens_per_minute, now)).then_some((c, e))
}

/// The credential of `provider` named `id`, when it can take a request: a conversation
/// stored by its account can go on with no other.
pub fn pick_named<'p>(
    provider: &'p Provider,
    id: &str,
    registry: &Registry,
    now: Instant,
) -> Option<(&'p Credential, Arc<Endpoint>)> {
    let c = provider.credentials.iter().find(|c| c.id == id)?;
    this_one(provider, c, registry, now)
}

/// Picks a credential of `provider` that can take a request: by weight among those that
/// are not ejected, not exhausted and within their per-minute limits.
pub fn pick_credential<'p>(
    provider: &'p Provider,
    registry: &Registry,
    now: Instant,
) -> Option<(&'p Credential, Arc<Endpoint>)> {
    // The common case, one key, without the pool's bookkeeping.
    if let [c] = provider.credentials.as_slice() {
        return this_one(provider, c, registry, now);
    }
    let endpoints: Vec<(usize, Arc<Endpoint>, Availability)> = provider
        .credentials
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let e = registry.credential(&provider.id, &c.id);
            let a = e.availability(now);
            (i, e, a)
        })
        .collect();
    for wanted in [Availability::Healthy, Availability::Probe] {
        let mut pool: Vec<&(usize, Arc<Endpoint>, Availability)> =
            endpoints.iter().filter(|(_, _, a)| *a == wanted).collect();
        while let Some(&&(i, ref e, _)) =
            crate::config::model::pick_weighted(&pool, |(i, _, _)| provider.credentials[*i].weight)
        {
            let c = &provider.credentials[i];
            let claimed = wanted == Availability::Healthy || e.claim_probe(now).is_some();
            if claimed && e.take_rate(c.requests_per_minute, c.tokens_per_minute, now) {
                return Some((c, e.clone()));
            }
            pool.retain(|(j, _, _)| *j != i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HealthPolicy {
        HealthPolicy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(35),
            failure_percent: 50,
            minimum_requests: 10,
            interval: Duration::from_secs(10),
        }
    }

    #[test]
    fn consecutive_failures_eject_for_a_growing_time_and_a_probe_recovers() {
        let p = policy();
        let e = Endpoint::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        assert_eq!(e.failure(&p, t0, ms), Transition::None);
        assert_eq!(e.failure(&p, t0, ms), Transition::None);
        assert_eq!(
            e.failure(&p, t0, ms),
            Transition::Ejected(Duration::from_secs(10))
        );
        assert_eq!(e.availability(t0), Availability::Unavailable);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(e.availability(t1), Availability::Probe);
        assert_eq!(e.claim_probe(t1), Some(true));
        assert_eq!(e.claim_probe(t1), None, "one probe at a time");
        assert_eq!(e.availability(t1), Availability::Unavailable);
        // The probe fails: ejected again, for twice as long, then capped.
        assert_eq!(
            e.failure(&p, t1, ms),
            Transition::Ejected(Duration::from_secs(20))
        );
        let t2 = t1 + Duration::from_secs(20);
        assert_eq!(e.claim_probe(t2), Some(true));
        assert_eq!(
            e.failure(&p, t2, ms),
            Transition::Ejected(Duration::from_secs(35))
        );
        let t3 = t2 + Duration::from_secs(35);
        assert_eq!(e.claim_probe(t3), Some(true));
        assert_eq!(e.success(ms, t3), Transition::Recovered);
        assert_eq!(e.availability(t3), Availability::Healthy);
        // After a long quiet spell, the next ejection starts from the base again.
        let t4 = t3 + Duration::from_secs(100);
        for _ in 0..2 {
            assert_eq!(e.failure(&p, t4, ms), Transition::None);
        }
        assert_eq!(
            e.failure(&p, t4, ms),
            Transition::Ejected(Duration::from_secs(10))
        );
    }

    #[test]
    fn a_failure_ratio_ejects_without_consecutive_failures() {
        let p = HealthPolicy {
            consecutive_failures: 100,
            ..policy()
        };
        let e = Endpoint::default();
        let t = Instant::now();
        let ms = Duration::from_millis(1);
        // Alternating success and failure: never two failures in a row, 50% failures.
        let mut outcome = Transition::None;
        for i in 0..10 {
            outcome = if i % 2 == 0 {
                e.success(ms, t)
            } else {
                e.failure(&p, t, ms)
            };
        }
        assert_eq!(outcome, Transition::Ejected(Duration::from_secs(10)));
        // Below the minimum number of requests, the ratio does not count.
        let e = Endpoint::default();
        assert_eq!(e.failure(&p, t, ms), Transition::None);
    }

    #[test]
    fn peak_ewma_takes_slow_samples_at_once_and_forgets_them() {
        let e = Endpoint::default();
        let t = Instant::now();
        e.success(Duration::from_millis(10), t);
        e.success(Duration::from_millis(500), t);
        assert!((e.latency_cost(t) - 0.5).abs() < 1e-9);
        let later = t + EWMA_DECAY;
        assert!(e.latency_cost(later) < 0.5 / 2.0);
        let shared = Arc::new(Endpoint::default());
        shared.success(Duration::from_millis(100), t);
        let g = shared.start();
        assert!(
            (shared.latency_cost(t) - 0.2).abs() < 1e-9,
            "in-flight doubles"
        );
        drop(g);
        assert_eq!(shared.inflight(), 0);
    }

    #[test]
    fn retry_budget_is_a_share_of_recent_requests_with_a_floor() {
        let b = RetryBudget::default();
        let t = Instant::now();
        for _ in 0..1000 {
            b.request(t);
        }
        let allowed = (0..500).filter(|_| b.try_retry(20, t)).count();
        assert_eq!(allowed, 200);
        // With few requests, the floor still allows some.
        let b = RetryBudget::default();
        b.request(t);
        let allowed = (0..100).filter(|_| b.try_retry(20, t)).count();
        assert_eq!(allowed, 30);
        // Two windows later everything is forgotten.
        assert!(b.try_retry(20, t + BUDGET_WINDOW * 3));
    }

    #[test]
    fn rate_limits_per_minute() {
        let e = Endpoint::default();
        let t = Instant::now();
        assert!(e.take_rate(2, 0, t));
        assert!(e.take_rate(2, 0, t));
        assert!(!e.take_rate(2, 0, t));
        assert!(e.take_rate(2, 0, t + Duration::from_secs(60)));
        e.add_tokens(100);
        assert!(!e.take_rate(0, 100, t + Duration::from_secs(61)));
        e.limit_for(Duration::from_secs(1), t);
        assert_eq!(e.availability(t), Availability::Unavailable);
        assert_eq!(
            e.availability(t + Duration::from_secs(1)),
            Availability::Healthy
        );
    }
}
