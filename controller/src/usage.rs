//! The usage stream server. For now it records and acknowledges each batch once per
//! dataplane sequence number (a replayed batch is acknowledged, not counted again); budget
//! accounting and quota leases build on this.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use prometheus::IntCounter;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::usage_reporting_server::UsageReporting;
use tollgate_proto::{UsageAck, UsageBatch};
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone, Debug)]
pub struct UsageServer {
    last_sequence: Arc<Mutex<HashMap<String, u64>>>,
    records: IntCounter,
}

impl UsageServer {
    pub fn new(records: IntCounter) -> Self {
        Self {
            last_sequence: Arc::default(),
            records,
        }
    }

    /// Returns whether the batch is new (not a replay).
    fn record(&self, batch: &UsageBatch) -> bool {
        let mut seen = match self.last_sequence.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let last = seen.entry(batch.dataplane_id.clone()).or_insert(0);
        if batch.sequence <= *last {
            return false;
        }
        *last = batch.sequence;
        self.records.inc_by(batch.records.len() as u64);
        true
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<UsageAck, Status>> + Send>>;

#[tonic::async_trait]
impl UsageReporting for UsageServer {
    type ReportStream = AckStream;

    async fn report(
        &self,
        request: Request<Streaming<UsageBatch>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(batch)) = inbound.message().await {
                this.record(&batch);
                let ack = UsageAck {
                    acked_sequence: batch.sequence,
                    leases: vec![],
                };
                if tx.send(Ok(ack)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replayed_batches_count_once() {
        let counter = IntCounter::new("t", "t").unwrap();
        let server = UsageServer::new(counter.clone());
        let batch = UsageBatch {
            dataplane_id: "dp-1".into(),
            sequence: 1,
            records: vec![Default::default(), Default::default()],
        };
        assert!(server.record(&batch));
        assert!(!server.record(&batch));
        assert_eq!(counter.get(), 2);
    }
}
