//! The usage stream server: counts each batch into the ledger once, persists the ledger
//! before acknowledging (so an acknowledged batch survives a restart and a replayed one is
//! recognised), and answers lease requests with grants.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use prometheus::IntCounter;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::usage_reporting_server::UsageReporting;
use tollgate_proto::{UsageAck, UsageBatch};
use tonic::{Request, Response, Status, Streaming};

use crate::accounts::ConfigDefs;
use crate::compile::Compiled;
use crate::ledger::{Ledger, Persisted};

pub use tollgate_proto::time::now_unix_ms as now_ms;

/// Where local mode keeps the ledger: one JSON file, replaced atomically.
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(StateFile {
            path: dir.join("ledger.json"),
        })
    }

    pub fn load(&self) -> std::io::Result<Persisted> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Persisted::default()),
            Err(e) => Err(e),
        }
    }

    /// Writes a temporary file, syncs it, and renames it over the old one.
    pub fn save(&self, p: &Persisted) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(p).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

/// The ledger and the config it reads account definitions from.
#[derive(Debug)]
pub struct Books {
    pub ledger: Ledger,
    defs: ConfigDefs,
}

impl Books {
    pub fn new(ledger: Ledger) -> Self {
        Books {
            ledger,
            defs: ConfigDefs::default(),
        }
    }

    /// Follows the config: a newly published one redefines the accounts.
    pub fn sync(&mut self, compiled: &Arc<Compiled>) {
        if !Arc::ptr_eq(compiled, &self.defs.0) {
            self.defs = ConfigDefs(compiled.clone());
            self.ledger.redefine(&self.defs);
        }
    }

    pub fn defs(&self) -> &ConfigDefs {
        &self.defs
    }
}

#[derive(Clone, Debug)]
pub struct UsageServer {
    books: Arc<Mutex<Books>>,
    snapshots: watch::Receiver<Arc<Compiled>>,
    state: Option<StateFile>,
    /// Kubernetes mode: only the leader keeps the books.
    leader: Option<watch::Receiver<bool>>,
    records: IntCounter,
}

impl UsageServer {
    pub fn new(
        books: Arc<Mutex<Books>>,
        snapshots: watch::Receiver<Arc<Compiled>>,
        state: Option<StateFile>,
        leader: Option<watch::Receiver<bool>>,
        records: IntCounter,
    ) -> Self {
        Self {
            books,
            snapshots,
            state,
            leader,
            records,
        }
    }

    /// Counts one batch and answers it; `None` when the state cannot be persisted (the
    /// batch is then not acknowledged, and the dataplane sends it again).
    fn apply(&self, batch: &UsageBatch) -> Result<UsageAck, Status> {
        let mut books = lock(&self.books);
        books.sync(&self.snapshots.borrow());
        let Books { ledger, defs, .. } = &mut *books;
        let before = ledger.records_counted;
        let applied = ledger.apply(batch, defs, now_ms());
        self.records.inc_by(ledger.records_counted - before);
        if applied.changed
            && let Some(state) = &self.state
            && let Err(e) = state.save(&ledger.persisted())
        {
            tracing::error!(error = %e, "cannot persist usage; not acknowledging");
            return Err(Status::unavailable("usage cannot be persisted"));
        }
        Ok(applied.ack)
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
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
        if let Some(leader) = &self.leader
            && !*leader.borrow()
        {
            return Err(Status::unavailable(
                "this controller replica is not the leader; usage goes to the leader",
            ));
        }
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(batch)) = inbound.message().await {
                let answer = this.apply(&batch);
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
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
    fn an_acknowledged_batch_is_persisted_and_a_replay_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::new(dir.path()).unwrap();
        let counter = IntCounter::new("t", "t").unwrap();
        let (_tx, rx) = watch::channel(Arc::new(Compiled::default()));
        let books = Arc::new(Mutex::new(Books::new(Ledger::new(10_000))));
        let server = UsageServer::new(books, rx, Some(state.clone()), None, counter.clone());
        let batch = UsageBatch {
            dataplane_id: "dp-1".into(),
            sequence: 1,
            records: vec![Default::default(), Default::default()],
            ..Default::default()
        };
        assert_eq!(server.apply(&batch).unwrap().acked_sequence, 1);
        assert_eq!(server.apply(&batch).unwrap().acked_sequence, 1);
        assert_eq!(counter.get(), 2);
        let saved = state.load().unwrap();
        assert_eq!(saved.sequences["dp-1"].0, 1);
    }
}
