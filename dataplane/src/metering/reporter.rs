//! The usage stream client: every 100 ms (or at once when a request waits for quota) it
//! sends the usage records made since the last batch and the lease requests due, and
//! applies the grants that come back. A batch stays in memory until the controller
//! acknowledges it; after a reconnect the unacknowledged ones are sent again, with the
//! same sequence numbers, and the controller counts each once.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto as pb;
use tollgate_proto::usage_reporting_client::UsageReportingClient;

use crate::base::link::{self, StreamError};
use crate::base::metrics::Metrics;
use crate::metering::quota::Quotas;

const TICK: Duration = Duration::from_millis(100);

/// Audit records sent with one batch at most (about 1 KB each), and their bytes at most:
/// the controller reads messages of up to 4 MiB. More wait for the next batch.
const MAX_AUDIT_PER_BATCH: usize = 1000;
const MAX_AUDIT_BYTES_PER_BATCH: usize = 1 << 20;

pub struct Reporter {
    pub controller: Arc<link::Controller>,
    /// The node id and a per-process instance id: sequences restart with the process.
    pub dataplane_id: String,
    pub quotas: Arc<Quotas>,
    pub metrics: Metrics,
    /// Audit records go to the controller's live request log with each batch.
    pub audit: Option<Arc<crate::base::audit::Auditor>>,
    unacked: Mutex<VecDeque<pb::UsageBatch>>,
    next_sequence: Mutex<u64>,
    /// The leader replica's own address, as a replica that refused the stream named it:
    /// the next connection goes there. Forgotten when that connection fails or ends.
    leader: Mutex<Option<Arc<link::Controller>>>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("controller", &self.controller)
            .field("dataplane_id", &self.dataplane_id)
            .finish_non_exhaustive()
    }
}

impl Reporter {
    pub fn new(
        controller: Arc<link::Controller>,
        node_id: &str,
        quotas: Arc<Quotas>,
        metrics: Metrics,
        audit: Option<Arc<crate::base::audit::Auditor>>,
    ) -> Arc<Self> {
        Arc::new(Reporter {
            controller,
            dataplane_id: format!("{node_id}/{:016x}", fastrand::u64(..)),
            quotas,
            metrics,
            audit,
            unacked: Mutex::default(),
            next_sequence: Mutex::new(1),
            leader: Mutex::default(),
        })
    }

    fn unacked(&self) -> std::sync::MutexGuard<'_, VecDeque<pb::UsageBatch>> {
        crate::base::lock(&self.unacked)
    }

    /// Runs forever, reconnecting with capped, jittered backoff.
    pub async fn run(self: Arc<Self>) {
        link::run_forever(
            || self.stream_once(),
            |e| {
                let named = e.leader_url().and_then(|url| self.controller.at(&url));
                let mut leader = crate::base::lock(&self.leader);
                if let Some(to) = named {
                    tracing::info!(controller = %self.controller, leader = %to, "usage stream refused by a controller replica that is not the leader; connecting to the leader");
                    *leader = Some(Arc::new(to));
                } else if e.wrong_replica() {
                    *leader = None;
                    // Tried again up to 50 times in quick succession: not worth a line each.
                    tracing::debug!(controller = %self.controller, error = %e, "usage stream refused by a controller replica that is not the leader, which did not say where the leader is; trying another connection");
                } else {
                    *leader = None;
                    tracing::warn!(controller = %self.controller, error = %e, "usage stream lost; usage is kept until it is acknowledged");
                }
                self.quotas.connected.store(false, Ordering::Relaxed);
                self.metrics.usage_connected.set(0);
            },
        )
        .await;
    }

    async fn stream_once(&self) -> Result<(), StreamError> {
        let controller = crate::base::lock(&self.leader)
            .clone()
            .unwrap_or_else(|| self.controller.clone());
        let mut client = UsageReportingClient::new(link::connect(&controller).await?);
        let (tx, rx) = mpsc::channel(256);
        let mut inbound = client.report(ReceiverStream::new(rx)).await?.into_inner();
        let epoch = self.quotas.new_epoch();
        // What was sent before and not acknowledged goes again, first, and without its
        // lease requests (they were for grants that are void now).
        let resend: Vec<pb::UsageBatch> = self
            .unacked()
            .iter()
            .map(|b| pb::UsageBatch {
                lease_requests: vec![],
                ..b.clone()
            })
            .collect();
        for b in resend {
            tx.send(b).await.map_err(|_| StreamError::Closed)?;
        }
        self.quotas.connected.store(true, Ordering::Relaxed);
        self.metrics.usage_connected.set(1);
        tracing::info!(controller = %controller, epoch, "usage stream connected");
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.quotas.ask.notified() => {}
                ack = inbound.message() => {
                    let Some(ack) = ack? else { return Err(StreamError::Closed) };
                    {
                        let mut unacked = self.unacked();
                        while unacked.front().is_some_and(|b| b.sequence <= ack.acked_sequence) {
                            unacked.pop_front();
                        }
                        self.metrics.usage_unacked.set(unacked.len() as i64);
                    }
                    self.quotas.apply_leases(&ack.leases);
                    continue;
                }
            }
            // Lease requests before records: a request that ends in between has its record
            // in this batch and its reservation still in the requests' in-flight count,
            // which errs toward holding more. (The other way round, a grant started again
            // from the settled count would count that record twice.)
            let lease_requests = self.quotas.lease_requests();
            let records = self.quotas.take_records();
            let audit_records = self
                .audit
                .as_ref()
                .map(|a| a.take_forward(MAX_AUDIT_PER_BATCH, MAX_AUDIT_BYTES_PER_BATCH))
                .unwrap_or_default();
            if records.is_empty() && lease_requests.is_empty() && audit_records.is_empty() {
                continue;
            }
            let batch = {
                let mut seq = crate::base::lock(&self.next_sequence);
                let batch = pb::UsageBatch {
                    dataplane_id: self.dataplane_id.clone(),
                    sequence: *seq,
                    records,
                    epoch,
                    lease_requests,
                    audit_records,
                };
                *seq += 1;
                let mut unacked = self.unacked();
                unacked.push_back(pb::UsageBatch {
                    lease_requests: vec![],
                    ..batch.clone()
                });
                self.metrics.usage_unacked.set(unacked.len() as i64);
                batch
            };
            tx.send(batch).await.map_err(|_| StreamError::Closed)?;
        }
    }

    /// Waits until every request has settled and every record is acknowledged, or
    /// `timeout` passes (on shutdown).
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.quotas.idle() && self.unacked().is_empty() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    unacked = self.unacked().len(),
                    "shutting down with usage the controller has not acknowledged"
                );
                return false;
            }
            self.quotas.ask.notify_one();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
