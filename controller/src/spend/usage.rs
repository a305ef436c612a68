//! The usage stream server and the keeper of the ledger.
//!
//! The server counts each batch into the ledger once and answers its lease requests at
//! once. A batch is acknowledged only after the keeper has persisted a ledger that
//! includes it (group commit: one write covers every batch counted since the last), so an
//! acknowledged batch survives a restart or a leader change, and a replayed one is
//! recognised by its sequence. The keeper also follows leadership in Kubernetes mode:
//! on taking the lead it loads the ledger its predecessor left, and on losing it the
//! streams are closed (dataplanes reconnect to the new leader and resend what is not
//! acknowledged).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::usage_reporting_server::UsageReporting;
use tollgate_proto::{UsageAck, UsageBatch};
use tonic::{Request, Response, Status, Streaming};

use crate::compile::Compiled;
use crate::spend::accounts::ConfigDefs;
use crate::spend::cluster_store::{LedgerStore, LoadError, SaveError};
use crate::spend::ledger::{Ledger, Persisted};

use crate::lock;
use tollgate_proto::time::now_unix_ms as now_ms;

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

/// Where the ledger is persisted.
pub enum Store {
    /// Nowhere: a restarted controller starts from nothing spent.
    Memory,
    /// Local mode's `--state-dir`.
    File(StateFile),
    /// Kubernetes mode: a cluster-scoped `UsageLedger`.
    Cluster(Box<LedgerStore>),
}

impl Store {
    pub async fn load(&self) -> Result<Persisted, LoadError> {
        match self {
            Store::Memory => Ok(Persisted::default()),
            Store::File(f) => {
                let f = f.clone();
                Ok(tokio::task::spawn_blocking(move || f.load()).await??)
            }
            Store::Cluster(c) => c.load().await,
        }
    }

    async fn save(&self, p: Persisted) -> Result<(), SaveError> {
        match self {
            Store::Memory => Ok(()),
            Store::File(f) => {
                let f = f.clone();
                tokio::task::spawn_blocking(move || f.save(&p))
                    .await
                    .map_err(|e| SaveError::Other(e.to_string()))?
                    .map_err(|e| SaveError::Other(e.to_string()))
            }
            Store::Cluster(c) => c.save(&p).await,
        }
    }

    /// The least time between two writes: batches counted meanwhile share the next one.
    fn pace(&self) -> Duration {
        match self {
            Store::Memory => Duration::ZERO,
            Store::File(_) => Duration::from_millis(10),
            Store::Cluster(_) => Duration::from_millis(250),
        }
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

    /// One account as it stands (created, with nothing spent, if unused).
    pub fn view(
        &mut self,
        account: &str,
        now_ms: i64,
    ) -> Option<crate::spend::ledger::AccountView> {
        self.ledger.view(account, &self.defs, now_ms)
    }

    /// Replaces the ledger with what was persisted (grants start afresh).
    pub fn restore(&mut self, p: Persisted) {
        self.ledger = Ledger::restore(p, &self.defs, self.ledger.lease_ttl_ms, self.ledger.caps);
    }
}

/// The last sequence persisted per dataplane, in one term of keeping the books.
#[derive(Clone, Debug, Default)]
pub struct Durable {
    pub term: u64,
    pub sequences: Arc<HashMap<String, u64>>,
}

impl Durable {
    fn of(term: u64, p: &Persisted) -> Self {
        Durable {
            term,
            sequences: Arc::new(p.sequences.iter().map(|(k, v)| (k.clone(), v.0)).collect()),
        }
    }

    fn acked(&self, term: u64, dataplane: &str) -> u64 {
        if self.term == term {
            self.sequences.get(dataplane).copied().unwrap_or(0)
        } else {
            0
        }
    }
}

/// The usage stream's counters.
#[derive(Clone, Debug)]
pub struct UsageCounters {
    /// Usage records counted.
    pub records: IntCounter,
    /// Streams refused because this replica does not keep the ledger.
    pub refused: IntCounter,
}

/// The usage stream server and the keeper that persists what it counts.
pub fn usage_service(
    books: Arc<Mutex<Books>>,
    snapshots: watch::Receiver<Arc<Compiled>>,
    store: Store,
    preloaded: Option<Persisted>,
    leader: Option<watch::Receiver<bool>>,
    counters: UsageCounters,
    leader_url: LeaderUrl,
) -> (UsageServer, Keeper) {
    let UsageCounters { records, refused } = counters;
    let (term_tx, term) = watch::channel(0);
    let (durable_tx, durable) = watch::channel(Durable::default());
    let dirty = Arc::new(Notify::new());
    let server = UsageServer {
        books: books.clone(),
        snapshots,
        term,
        durable,
        dirty: dirty.clone(),
        records,
        refused,
        leader_url,
        live: None,
    };
    let keeper = Keeper {
        books,
        store,
        preloaded,
        leader,
        term: term_tx,
        durable: durable_tx,
        dirty,
    };
    (server, keeper)
}

/// Loads the ledger when this replica starts keeping the books and persists it after
/// every change.
pub struct Keeper {
    books: Arc<Mutex<Books>>,
    store: Store,
    /// Loaded already (local mode reads its state before serving, to fail fast).
    preloaded: Option<Persisted>,
    /// Kubernetes mode: whether this replica leads; `None` in local mode (always).
    leader: Option<watch::Receiver<bool>>,
    /// The current term of keeping the books; 0 while not keeping them.
    term: watch::Sender<u64>,
    durable: watch::Sender<Durable>,
    dirty: Arc<Notify>,
}

impl Keeper {
    fn leading(&self) -> bool {
        self.leader.as_ref().is_none_or(|l| *l.borrow())
    }

    pub async fn run(mut self) {
        let mut term = 0;
        loop {
            if let Some(l) = &mut self.leader
                && l.wait_for(|l| *l).await.is_err()
            {
                return;
            }
            let loaded = match self.preloaded.take() {
                Some(p) => p,
                None => match self.store.load().await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot load the usage ledger; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
            };
            if !self.leading() {
                continue;
            }
            term += 1;
            self.durable.send_replace(Durable::of(term, &loaded));
            lock(&self.books).restore(loaded);
            self.term.send_replace(term);
            tracing::info!(term, "keeping the usage ledger");
            // Written back at once: what was restored (from a Budget's status, say) is kept
            // even if no usage comes, and a replica that lost the lead meanwhile finds out.
            self.dirty.notify_one();
            self.commit(term).await;
            self.term.send_replace(0);
        }
    }

    /// Persists after each change until the lead is lost or the store says another
    /// replica wrote it.
    async fn commit(&mut self, term: u64) {
        let dirty = self.dirty.clone();
        let mut backoff = Duration::from_millis(100);
        loop {
            let lost = async {
                match &mut self.leader {
                    Some(l) => {
                        let _ = l.wait_for(|l| !*l).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = dirty.notified() => {}
                () = lost => {
                    tracing::info!("no longer the leader; no longer keeping the usage ledger");
                    return;
                }
            }
            let snapshot = lock(&self.books).ledger.persisted();
            let durable = Durable::of(term, &snapshot);
            match self.store.save(snapshot).await {
                Ok(()) => {
                    self.durable.send_replace(durable);
                    backoff = Duration::from_millis(100);
                    tokio::time::sleep(self.store.pace()).await;
                }
                Err(SaveError::Conflict) => {
                    tracing::error!(
                        "the usage ledger was written by another controller replica; reloading it"
                    );
                    return;
                }
                Err(SaveError::Other(e)) => {
                    tracing::error!(error = %e, "cannot persist usage; not acknowledging it");
                    dirty.notify_one();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Where the leader's usage stream is, as this replica knows it (from the replicas'
/// reports): a replica that does not keep the ledger tells dataplanes, so that they
/// connect there instead of trying replicas at random.
#[derive(Clone, Default)]
pub struct LeaderUrl(Option<Arc<dyn Fn() -> Option<String> + Send + Sync>>);

impl LeaderUrl {
    pub fn new(f: impl Fn() -> Option<String> + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(f)))
    }

    fn get(&self) -> Option<String> {
        self.0.as_ref().and_then(|f| f())
    }
}

impl std::fmt::Debug for LeaderUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaderUrl")
    }
}

#[derive(Clone, Debug)]
pub struct UsageServer {
    books: Arc<Mutex<Books>>,
    snapshots: watch::Receiver<Arc<Compiled>>,
    term: watch::Receiver<u64>,
    durable: watch::Receiver<Durable>,
    dirty: Arc<Notify>,
    records: IntCounter,
    /// Usage streams refused because this replica does not keep the ledger.
    refused: IntCounter,
    leader_url: LeaderUrl,
    /// Where the audit records that come with usage go.
    live: Option<Arc<crate::live::Live>>,
}

impl UsageServer {
    /// The server, passing the audit records that come with usage to `live`.
    pub fn with_live(self, live: Arc<crate::live::Live>) -> Self {
        Self {
            live: Some(live),
            ..self
        }
    }

    /// This replica's term of keeping the books: 0 while it does not.
    pub fn keeping(&self) -> watch::Receiver<u64> {
        self.term.clone()
    }

    /// Counts one batch (once per sequence) and returns the grants it asked for.
    fn apply(&self, batch: &UsageBatch) -> Vec<tollgate_proto::QuotaLease> {
        let mut books = lock(&self.books);
        books.sync(&self.snapshots.borrow());
        let Books { ledger, defs, .. } = &mut *books;
        let before = ledger.records_counted;
        let applied = ledger.apply(batch, defs, now_ms());
        self.records.inc_by(ledger.records_counted - before);
        if applied.changed {
            self.dirty.notify_one();
        }
        drop(books);
        if let Some(live) = &self.live {
            live.add(&batch.audit_records);
        }
        applied.ack.leases
    }

    /// One dataplane's stream in one term: each batch is answered at once with its grants
    /// and what is persisted so far; later acknowledgements follow each write.
    async fn serve(
        self,
        term: u64,
        mut inbound: Streaming<UsageBatch>,
        tx: mpsc::Sender<Result<UsageAck, Status>>,
    ) {
        let mut terms = self.term.clone();
        let mut durable = self.durable.clone();
        let mut dataplane: Option<String> = None;
        let mut acked = 0;
        loop {
            let ack = tokio::select! {
                m = inbound.message() => {
                    let Ok(Some(batch)) = m else { return };
                    if *terms.borrow() != term {
                        break;
                    }
                    let leases = self.apply(&batch);
                    acked = acked.max(durable.borrow().acked(term, &batch.dataplane_id));
                    dataplane = Some(batch.dataplane_id);
                    UsageAck { acked_sequence: acked, leases }
                }
                r = durable.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let Some(dp) = &dataplane else { continue };
                    let now = durable.borrow_and_update().acked(term, dp);
                    if now <= acked {
                        continue;
                    }
                    acked = now;
                    UsageAck { acked_sequence: acked, leases: vec![] }
                }
                r = terms.changed() => {
                    if r.is_err() || *terms.borrow_and_update() != term {
                        break;
                    }
                    continue;
                }
            };
            if tx.send(Ok(ack)).await.is_err() {
                return;
            }
        }
        let _ = tx
            .send(Err(self.not_keeping(dataplane.as_deref(), None)))
            .await;
    }

    /// `FAILED_PRECONDITION`, naming the leader's URL when it is known: dataplanes connect
    /// there, or (not knowing it) reconnect at once through the Service. Logged and
    /// counted: a dataplane refused here cannot get budget grants until it reaches the
    /// leader.
    fn not_keeping(&self, dataplane: Option<&str>, remote: Option<std::net::SocketAddr>) -> Status {
        let leader = self.leader_url.get();
        self.refused.inc();
        tracing::info!(
            dataplane = dataplane.unwrap_or("-"),
            remote = ?remote,
            leader = leader.as_deref().unwrap_or("unknown"),
            "refused a usage stream: this replica does not keep the usage ledger (not the leader)"
        );
        let mut status = Status::failed_precondition(
            "this controller replica does not keep the usage ledger (not the leader); usage goes to the leader",
        );
        if let Some(url) = leader
            && let Ok(v) = url.parse()
        {
            status.metadata_mut().insert(tollgate_proto::LEADER_URL, v);
        }
        status
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
        let term = *self.term.borrow();
        if term == 0 {
            return Err(self.not_keeping(None, request.remote_addr()));
        }
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(self.clone().serve(term, request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn durable_for(server: &UsageServer, dp: &str) -> u64 {
        let mut d = server.durable.clone();
        let term = *server.term.borrow();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            d.wait_for(|d| d.acked(term, dp) > 0),
        )
        .await;
        r.expect("persisted in time").unwrap().acked(term, dp)
    }

    #[tokio::test]
    async fn a_batch_is_acknowledged_once_persisted_and_a_replay_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::new(dir.path()).unwrap();
        let counter = IntCounter::new("t", "t").unwrap();
        let (_tx, rx) = watch::channel(Arc::new(Compiled::default()));
        let books = Arc::new(Mutex::new(Books::new(Ledger::new(10_000))));
        let (server, keeper) = usage_service(
            books,
            rx,
            Store::File(state.clone()),
            None,
            None,
            UsageCounters {
                records: counter.clone(),
                refused: IntCounter::new("r", "r").unwrap(),
            },
            LeaderUrl::default(),
        );
        // Not keeping the books yet: nothing is acknowledged as persisted.
        assert_eq!(*server.term.borrow(), 0);
        tokio::spawn(keeper.run());
        let mut term = server.term.clone();
        tokio::time::timeout(Duration::from_secs(5), term.wait_for(|t| *t == 1))
            .await
            .unwrap()
            .unwrap();
        let batch = UsageBatch {
            dataplane_id: "dp-1".into(),
            sequence: 1,
            records: vec![Default::default(), Default::default()],
            ..Default::default()
        };
        server.apply(&batch);
        assert_eq!(durable_for(&server, "dp-1").await, 1);
        assert_eq!(state.load().unwrap().sequences["dp-1"].0, 1);
        server.apply(&batch);
        assert_eq!(counter.get(), 2, "the replay is not counted");
    }

    #[tokio::test]
    async fn the_books_are_kept_only_while_leading_and_reloaded_on_each_lead() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::new(dir.path()).unwrap();
        let written = |seq: u64| Persisted {
            sequences: [("dp-1".to_string(), (seq, 0))].into(),
            ..Default::default()
        };
        state.save(&written(5)).unwrap();
        let (_tx, rx) = watch::channel(Arc::new(Compiled::default()));
        let books = Arc::new(Mutex::new(Books::new(Ledger::new(10_000))));
        let (leader, leading) = watch::channel(false);
        let (server, keeper) = usage_service(
            books.clone(),
            rx,
            Store::File(state.clone()),
            None,
            Some(leading),
            UsageCounters {
                records: IntCounter::new("t", "t").unwrap(),
                refused: IntCounter::new("r", "r").unwrap(),
            },
            LeaderUrl::default(),
        );
        tokio::spawn(keeper.run());
        let term = server.term.clone();
        let wait = |t: u64| {
            let mut term = term.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(5), term.wait_for(|x| *x == t))
                    .await
                    .expect("term in time")
                    .unwrap();
            }
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(*term.borrow(), 0, "not the leader: not keeping");

        leader.send_replace(true);
        wait(1).await;
        assert_eq!(
            durable_for(&server, "dp-1").await,
            5,
            "what was persisted is acknowledged"
        );
        assert_eq!(lock(&books).ledger.persisted().sequences["dp-1"].0, 5);

        // Another replica leads and counts on; this one takes the lead back later.
        leader.send_replace(false);
        wait(0).await;
        state.save(&written(9)).unwrap();
        leader.send_replace(true);
        wait(2).await;
        assert_eq!(
            lock(&books).ledger.persisted().sequences["dp-1"].0,
            9,
            "reloaded"
        );
        let replay = UsageBatch {
            dataplane_id: "dp-1".into(),
            sequence: 9,
            records: vec![Default::default()],
            ..Default::default()
        };
        server.apply(&replay);
        assert_eq!(
            server.records.get(),
            0,
            "counted by the other replica already"
        );
    }
}
