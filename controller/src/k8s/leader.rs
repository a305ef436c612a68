//! Leader election over a `coordination.k8s.io/v1` Lease. Every replica serves the config
//! stream; only the leader writes status, Events and Secrets, so two replicas never fight
//! over an object's status.
//!
//! The holder renews the Lease every quarter of its duration. Another replica takes it over
//! once the Lease has gone unchanged for `leaseDurationSeconds` by its own clock (as
//! client-go does: the holder's `renewTime` is written with the holder's clock, which may
//! be ahead or behind), with the update conditioned on the Lease's `resourceVersion`, so
//! two contenders cannot both win. A leader that cannot renew
//! within two thirds of the duration steps down before anyone else may take over, and one
//! that stops releases the Lease so that the next one need not wait: the others watch the
//! Lease, and the first to see it released takes it at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;

/// What a contender does with the Lease it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// There is none: create it, holding it.
    Create,
    /// It holds it: renew.
    Renew,
    /// Nobody holds it, or the holder let it expire: take it.
    TakeOver,
    /// Someone else holds it.
    Wait { holder: String },
}

/// `unchanged_for`: how long, by this replica's clock, the Lease has been seen as it is
/// now (holder and renewal unchanged).
pub fn decide(lease: Option<&LeaseSpec>, me: &str, unchanged_for: Duration) -> Decision {
    let Some(spec) = lease else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    let seconds = u64::try_from(spec.lease_duration_seconds.unwrap_or(15).max(1)).unwrap_or(15);
    if unchanged_for >= Duration::from_secs(seconds) {
        Decision::TakeOver
    } else {
        Decision::Wait {
            holder: holder.to_string(),
        }
    }
}

/// What identifies one renewal of a Lease: any write changes it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renewed: Option<String>,
    transitions: Option<i32>,
}

impl Record {
    fn of(spec: &LeaseSpec) -> Self {
        Self {
            holder: spec.holder_identity.clone(),
            renewed: spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map(|t| t.0.to_string()),
            transitions: spec.lease_transitions,
        }
    }
}

/// The Lease as last seen, and when (by this replica's monotonic clock) it was first seen
/// so.
#[derive(Default)]
pub struct Observed(std::sync::Mutex<Option<(Record, tokio::time::Instant)>>);

impl Observed {
    /// How long `spec` has been seen unchanged, counting from now if it is new.
    fn unchanged_for(&self, spec: Option<&LeaseSpec>) -> Duration {
        let now = tokio::time::Instant::now();
        let Some(spec) = spec else {
            return Duration::ZERO;
        };
        let record = Record::of(spec);
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*seen {
            Some((r, since)) if *r == record => now.duration_since(*since),
            _ => {
                *seen = Some((record, now));
                Duration::ZERO
            }
        }
    }
}

impl std::fmt::Debug for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observed")
    }
}

/// One replica's side of the election.
#[derive(Clone)]
pub struct Elector {
    pub api: Api<Lease>,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    /// The Lease as last seen, by this replica's clock.
    pub observed: std::sync::Arc<Observed>,
}

impl Elector {
    /// One round: returns whether this replica holds the Lease afterwards.
    pub async fn try_once(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let seconds = i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let decision = decide(spec, &self.identity, self.observed.unchanged_for(spec));
        let result = match (decision, current) {
            (Decision::Wait { .. }, _) => return Ok(false),
            (Decision::Create, _) | (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(seconds),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (decision, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                if decision == Decision::TakeOver {
                    spec.holder_identity = Some(self.identity.clone());
                    spec.acquire_time = Some(MicroTime(now));
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.lease_duration_seconds = Some(seconds);
                spec.renew_time = Some(MicroTime(now));
                // The read's resourceVersion travels with the update: if anyone wrote the
                // Lease since, the API refuses it with a conflict.
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Runs the election until `stop` turns true, publishing leadership on `leader`, then
    /// releases the Lease if it holds it.
    pub async fn run(self, leader: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
        use futures_util::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let retry = self.duration / 4;
        let deadline = self.duration * 2 / 3;
        let mut renewed: Option<tokio::time::Instant> = None;
        // Each change of the Lease (a release, above all) is looked at once, not at the
        // next round.
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let mut changes = watcher::watcher(self.api.clone(), config)
            .default_backoff()
            .boxed();
        loop {
            match self.try_once().await {
                Ok(true) => {
                    renewed = Some(tokio::time::Instant::now());
                    if !*leader.borrow() {
                        tracing::info!(lease = %self.name, identity = %self.identity, "became the leader");
                    }
                    leader.send_replace(true);
                }
                Ok(false) => {
                    if *leader.borrow() {
                        tracing::warn!(lease = %self.name, "lost the lease");
                    }
                    renewed = None;
                    leader.send_replace(false);
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "cannot reach the lease");
                    if renewed.is_some_and(|t| t.elapsed() >= deadline) {
                        tracing::warn!(lease = %self.name, "stepping down: the lease was not renewed in time");
                        renewed = None;
                        leader.send_replace(false);
                    }
                }
            }
            let jitter = Duration::from_millis(fastrand::u64(0..=retry.as_millis() as u64 / 5));
            let released = async {
                loop {
                    match changes.next().await {
                        Some(Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l)))
                            if l.spec.as_ref().is_none_or(|s| s.holder_identity.is_none()) =>
                        {
                            return;
                        }
                        Some(Ok(watcher::Event::Delete(_))) => return,
                        Some(_) => {}
                        None => std::future::pending::<()>().await,
                    }
                }
            };
            tokio::select! {
                () = tokio::time::sleep(retry + jitter) => {}
                () = released, if !*leader.borrow() => {
                    tracing::info!(lease = %self.name, "the lease was released; taking it");
                }
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        if *leader.borrow() {
            leader.send_replace(false);
            if let Err(e) = self.release().await {
                tracing::warn!(lease = %self.name, error = %e, "cannot release the lease");
            } else {
                tracing::info!(lease = %self.name, "released the lease");
            }
        }
    }

    /// Gives the Lease up, so that another replica takes it at once.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed: Timestamp, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(seconds),
            renew_time: Some(MicroTime(renewed)),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_lease_is_taken_only_when_free_or_unchanged_for_its_duration() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let secs = Duration::from_secs;
        assert_eq!(decide(None, "a", secs(0)), Decision::Create);
        let held = spec(Some("b"), t0, 15);
        assert_eq!(
            decide(Some(&held), "a", secs(14)),
            Decision::Wait { holder: "b".into() }
        );
        assert_eq!(decide(Some(&held), "a", secs(15)), Decision::TakeOver);
        assert_eq!(decide(Some(&held), "b", secs(100)), Decision::Renew);
        assert_eq!(
            decide(Some(&spec(None, t0, 15)), "a", secs(0)),
            Decision::TakeOver
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_is_this_replicas_whatever_the_renew_time_says() {
        let observed = Observed::default();
        // Renewed "long ago" by a holder whose clock is behind: not expired on sight.
        let old: Timestamp = "2001-01-01T00:00:00Z".parse().unwrap();
        let held = spec(Some("b"), old, 15);
        assert_eq!(observed.unchanged_for(Some(&held)), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(observed.unchanged_for(Some(&held)), Duration::from_secs(10));
        // A renewal (even one stamped in the future) starts the count again.
        let future: Timestamp = "2099-01-01T00:00:00Z".parse().unwrap();
        let renewed = spec(Some("b"), future, 15);
        assert_eq!(observed.unchanged_for(Some(&renewed)), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(
            decide(Some(&renewed), "a", observed.unchanged_for(Some(&renewed))),
            Decision::TakeOver,
            "a holder whose clock runs ahead cannot keep the lease by stamping the future"
        );
    }
}
