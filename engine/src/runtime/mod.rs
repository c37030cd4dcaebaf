//! The in-process runtime: one actor per partition, wired by in-process logs, sharing one
//! durable store and one syncer. The embedded hub and the engine benchmark run on it.
//!
//! An actor is a tokio task that owns its `PartitionState`. Its loop (group commit):
//!
//! 1. take up to `batch_size_max` commands: peer messages and ticks first, then clients;
//! 2. look up archived records for transfers that are not in memory;
//! 3. apply the batch (pure), append one WAL record;
//! 4. ask the syncer for durability (one fdatasync of the WAL covers every partition that
//!    asked meanwhile);
//! 5. only then: answer the submitters, publish events, deliver peer messages, hand
//!    finished transfers to the archiver.
//!
//! Queues: the client mailbox is bounded (`mailbox_capacity`; full → `Overloaded`, which the
//! gateway answers with 503 + Retry-After). The peer lane holds at most
//! `peer_lane_capacity` messages, a bound the protocol itself keeps far below: a partition
//! sends at most one borrow per parked prepare (`parked_prepares_max`), one recall per
//! account per round and one answer per recall, and at most one tick is pending per
//! partition. A full peer lane therefore means a broken protocol bound: the sending
//! partition stops with an error naming it rather than drop a message.

use crate::command::{
    Admin, Command, ErrorCode, Event, FinishedTransfer, Fulfil, Prepare, Reject, TimestampMs,
    TransferState,
};
use crate::filter::ArchiveFilter;
use crate::ids::{AccountKey, FspId, TransferId};
use crate::limits::Limits;
use crate::machine::account::Money;
use crate::machine::{home_of, Input, Outgoing, PartitionState};
use crate::storage::{encode_batch, SnapshotRecord, Storage, Store, WalRecordRef};
use crate::EngineError;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, info_span, warn, Instrument};

mod outbox;
pub use outbox::{AckToken, Delivery};
use outbox::{Acks, Outbox};

/// Configuration of an in-process hub engine.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub data_dir: PathBuf,
    pub partitions: u32,
    pub limits: Limits,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The partition's mailbox is full: answer 503 + Retry-After.
    #[error("partition {partition} is overloaded")]
    Overloaded { partition: u32 },
    #[error("the hub is shutting down")]
    ShuttingDown,
    /// The partition stopped on an error (a corrupt record, a storage failure); an
    /// operator must look at it. The other partitions keep working.
    #[error("partition {partition} is stopped: {reason}")]
    PartitionStopped { partition: u32, reason: String },
}

/// What GET /transfers/{id} shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferView {
    pub transfer_id: TransferId,
    pub payer: FspId,
    pub payee: FspId,
    pub state: TransferState,
    pub fulfilment: Option<[u8; 32]>,
    pub completed_ms: Option<TimestampMs>,
}

/// An account's figures summed over all slices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountView {
    pub account: AccountKey,
    pub active: bool,
    pub position: i128,
    pub reserved: i128,
    pub ndc: i128,
    pub liquidity_cover: i128,
    pub limits_set: bool,
    /// `min(ndc, liquidity cover)`.
    pub limit: i128,
    /// Free headroom: the home's bank plus every slice's allowance. Once no headroom is
    /// travelling between partitions (at quiescence) it equals
    /// `limit - position - reserved` exactly (DESIGN §5, invariant 1).
    pub headroom: i128,
}

/// Operator view of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStatus {
    pub partition: u32,
    pub owner: String,
    pub epoch: u64,
    pub committed_batch: u64,
    pub queue_depth: usize,
    pub applied_commands: u64,
    /// Why the partition stopped, if it did.
    pub stopped: Option<String>,
}

/// Counters of one partition, shared with the hub handle.
#[derive(Default)]
struct Stats {
    epoch: AtomicU64,
    committed_batch: AtomicU64,
    applied_commands: AtomicU64,
    last_batch_size: AtomicU64,
    parked: AtomicUsize,
    tick_pending: AtomicBool,
    /// Results released but not yet acknowledged by the event consumer.
    outbox_pending: AtomicUsize,
    stopped: Mutex<Option<String>>,
}

/// Engine-wide counters for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineMetrics {
    pub fsyncs: u64,
    pub batches: u64,
    pub commands: u64,
    pub parked_prepares: u64,
    pub flush_latency_us_total: u64,
    pub denials: u64,
    /// Time spent making sled durable (its flush, then fdatasync of its data file):
    /// registry and epoch writes, and snapshots before WAL segments are deleted;
    /// microseconds.
    pub sled_flush_us_total: u64,
    /// Time the syncer spent in the WAL's fdatasync, microseconds.
    pub fdatasync_us_total: u64,
    /// Results released and not yet acknowledged by the event consumer, all partitions.
    pub outbox_events: u64,
    /// Results shed because an outbox was over `outbox_events_max` (a consumer far
    /// behind); the DFSP can still GET the transfer.
    pub events_shed: u64,
}

struct ClientRequest {
    command: Command,
    reply: Option<oneshot::Sender<()>>,
}

enum Query {
    Transfer {
        id: TransferId,
        reply: oneshot::Sender<Result<Option<TransferView>, ErrorCode>>,
    },
    Account {
        account: AccountKey,
        reply: oneshot::Sender<Option<SliceFigures>>,
    },
}

/// One partition's part of an account.
#[derive(Debug, Clone, Default)]
struct SliceFigures {
    known: bool,
    active: bool,
    position: Money,
    reserved: Money,
    headroom: Money,
    bank: Option<BankFigures>,
}

/// The home's part of an account.
#[derive(Debug, Clone, Default)]
struct BankFigures {
    ndc: Money,
    cover: Money,
    limit: Money,
    base_position: Money,
    bank: Money,
    limits_set: bool,
}

type AdminWaiters = Arc<Mutex<HashMap<u64, oneshot::Sender<(Option<ErrorCode>, String)>>>>;

struct Shared {
    partitions: u32,
    limits: Limits,
    /// Taken (and so closed) by `shutdown`; actors and threads hold their own handles.
    store: Mutex<Option<Arc<dyn Storage>>>,
    clients: Vec<mpsc::Sender<ClientRequest>>,
    peers: Vec<mpsc::Sender<Command>>,
    queries: Vec<mpsc::Sender<Query>>,
    stats: Vec<Stats>,
    /// `confirmed[to * N + from]`: receiver `to` has durably applied `from`'s messages up
    /// to this sequence number.
    confirmed: Vec<AtomicU64>,
    admin_waiters: AdminWaiters,
    /// `acks[p]`: event sequence numbers of partition p its consumer has finished with.
    acks: Vec<Arc<Acks>>,
    events_shed: AtomicU64,
    next_request_id: AtomicU64,
    shutting_down: AtomicBool,
    /// Set to `true` by `shutdown`: wakes the ticker and idle actors at once (they do not
    /// poll for it).
    stop: tokio::sync::watch::Sender<bool>,
    syncer: mpsc::Sender<SyncMsg>,
    archiver: mpsc::Sender<ArchiveMsg>,
    /// `archived_upto[p]`: every finished transfer of partition p's batches up to this one
    /// is written to the archive.
    archived_upto: Vec<AtomicU64>,
    batches: AtomicU64,
    flush_latency_us_total: AtomicU64,
    denials: AtomicU64,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    archiver_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Set by `shutdown`: the compactor gives up its merge and ends.
    compactor_stop: Arc<AtomicBool>,
    compactor_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    syncer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    trimmer: mpsc::Sender<TrimMsg>,
    trimmer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Counters as they were when the store closed (metrics after shutdown).
    final_metrics: Mutex<Option<EngineMetrics>>,
}

/// Cheap to clone; every clone talks to the same partition actors.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

/// Bound on archiver backlog, in batches of finished transfers.
const ARCHIVE_QUEUE_BATCHES_MAX: usize = 1_024;
/// The archiver makes at most this many jobs durable with one sync.
const ARCHIVE_JOBS_PER_SYNC_MAX: usize = 4_096;
/// The archiver makes its writes durable at most this often.
const ARCHIVE_SYNC_INTERVAL_MS: u64 = 200;
/// Bound on queued read queries per partition.
const QUERY_QUEUE_MAX: usize = 1_024;
/// Bound on WAL trims waiting for the trimmer (a full queue skips a trim: the next
/// snapshot's trim covers it).
const TRIM_QUEUE_MAX: usize = 256;
/// Bound on sync requests waiting for the syncer.
const SYNC_QUEUE_MAX: usize = 4_096;
/// With nothing to merge or prune, the compactor looks again after this long.
const COMPACTOR_IDLE_MS: u64 = 100;
/// Nice value of the maintenance threads (compactor, trimmer, filter loader): their work
/// can wait, so when the cores are busy the actors and the syncer (and, in the embedded
/// hub, the HTTP workers) go first. The archiver keeps the normal priority: partitions
/// wait for it when their cache of finished transfers is full.
const MAINTENANCE_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority to [`MAINTENANCE_NICE`] (on Linux nice is per
/// thread). Failing to is harmless: the thread then competes at normal priority.
fn lower_priority_of_this_thread() {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), MAINTENANCE_NICE) {
        tracing::warn!(error = %e, "could not lower a maintenance thread's priority");
    }
}

pub fn now_ms() -> TimestampMs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Hub {
    /// Opens (or recovers) the data directory and starts one actor per partition. Must be
    /// called inside a tokio runtime. Returns the event stream the notifier consumes.
    pub fn open(config: HubConfig) -> Result<(Hub, mpsc::Receiver<Delivery>), EngineError> {
        if sharding::PartitionCount::new(config.partitions).is_none() {
            return Err(EngineError::Config(format!(
                "partitions must be 1..={}, got {}",
                sharding::PARTITIONS_MAX,
                config.partitions
            )));
        }
        let limits = config.limits.clone();
        let store: Arc<dyn Storage> = Arc::new(Store::open_with(
            &config.data_dir,
            config.partitions,
            limits.sled_cache_bytes,
            limits.wal_segment_bytes,
        )?);
        Hub::open_with_store(store, config.partitions, limits)
    }

    /// As [`Hub::open`], on any [`Storage`].
    pub fn open_with_store(
        store: Arc<dyn Storage>,
        partitions: u32,
        limits: Limits,
    ) -> Result<(Hub, mpsc::Receiver<Delivery>), EngineError> {
        let n = partitions as usize;
        // 1. Recover every partition before any actor runs.
        // A partition that cannot recover (say, a corrupt record) stays stopped with the
        // error naming the record; the others start.
        // Each partition's new epoch is taken first: every WAL record must carry an
        // earlier one (a record from a later owner than this one is not ours to replay).
        let mut epochs = Vec::with_capacity(n);
        for p in 0..partitions {
            epochs.push(store.next_epoch(p)?);
        }
        let mut recovered = Vec::with_capacity(n);
        for (p, epoch) in (0..partitions).zip(&epochs) {
            let result = recover_or_stop(&*store, p, partitions, *epoch, &limits);
            if let Err(reason) = &result {
                error!(partition = p, error = %reason, "partition stopped: recovery failed");
                // Its frames are kept aside, so that it does not hold WAL trimming back
                // for every other partition while an operator looks at it.
                if let Err(e) = store.set_aside_partition(p) {
                    error!(partition = p, error = %e, "setting a stopped partition's WAL aside failed");
                }
            }
            recovered.push(result);
        }
        store.sync()?;

        let (events_tx, events_rx) = mpsc::channel(limits.events_capacity);
        let mut clients = Vec::new();
        let mut client_rxs = Vec::new();
        let mut peers = Vec::new();
        let mut peer_rxs = Vec::new();
        let mut queries = Vec::new();
        let mut query_rxs = Vec::new();
        for _ in 0..n {
            let (tx, rx) = mpsc::channel(limits.mailbox_capacity);
            clients.push(tx);
            client_rxs.push(rx);
            let (tx, rx) = mpsc::channel(limits.peer_lane_capacity);
            peers.push(tx);
            peer_rxs.push(rx);
            let (tx, rx) = mpsc::channel(QUERY_QUEUE_MAX);
            queries.push(tx);
            query_rxs.push(rx);
        }
        let (sync_tx, sync_rx) = mpsc::channel(SYNC_QUEUE_MAX);
        let (trim_tx, trim_rx) = mpsc::channel(TRIM_QUEUE_MAX);
        let (archive_tx, archive_rx) = mpsc::channel(ARCHIVE_QUEUE_BATCHES_MAX);
        let confirmed = (0..n * n).map(|_| AtomicU64::new(0)).collect();
        let shared = Arc::new(Shared {
            partitions,
            limits: limits.clone(),
            store: Mutex::new(Some(store.clone())),
            clients,
            peers,
            queries,
            stats: (0..n).map(|_| Stats::default()).collect(),
            confirmed,
            admin_waiters: Arc::new(Mutex::new(HashMap::new())),
            acks: (0..n).map(|_| Arc::new(Acks::default())).collect(),
            events_shed: AtomicU64::new(0),
            next_request_id: AtomicU64::new((now_ms() as u64) << 16),
            shutting_down: AtomicBool::new(false),
            stop: tokio::sync::watch::channel(false).0,
            syncer: sync_tx,
            archiver: archive_tx,
            archived_upto: recovered
                .iter()
                .map(|r| AtomicU64::new(r.as_ref().map(|r| r.state.batch_seq).unwrap_or(0)))
                .collect(),
            batches: AtomicU64::new(0),
            flush_latency_us_total: AtomicU64::new(0),
            denials: AtomicU64::new(0),
            tasks: Mutex::new(Vec::new()),
            archiver_thread: Mutex::new(None),
            compactor_stop: Arc::new(AtomicBool::new(false)),
            compactor_thread: Mutex::new(None),
            syncer_thread: Mutex::new(None),
            trimmer: trim_tx,
            trimmer_thread: Mutex::new(None),
            final_metrics: Mutex::new(None),
        });

        // 2. The syncer: one WAL fdatasync for every request queued meanwhile.
        let syncer_store = store.clone();
        let syncer = std::thread::Builder::new()
            .name("engine-syncer".into())
            .spawn(move || run_syncer(syncer_store, sync_rx))
            .map_err(|e| EngineError::Storage(e.to_string()))?;
        *lock(&shared.syncer_thread) = Some(syncer);

        // 2b. The trimmer: makes snapshots durable and deletes the WAL segments they
        //     cover, off the actors' path (deleting behind each snapshot in the actor
        //     once stood a partition still for 10-60 ms).
        let trimmer_store = store.clone();
        let trimmer = std::thread::Builder::new()
            .name("engine-trimmer".into())
            .spawn(move || run_trimmer(trimmer_store, trim_rx))
            .map_err(|e| EngineError::Storage(e.to_string()))?;
        *lock(&shared.trimmer_thread) = Some(trimmer);

        // 3. The archiver: writes finished transfers off the critical path.
        let archiver_shared = Arc::downgrade(&shared);
        let archiver_store = store.clone();
        let retention_ms = limits.retention_ms;
        let archiver = std::thread::Builder::new()
            .name("engine-archiver".into())
            .spawn(move || run_archiver(archiver_store, archive_rx, archiver_shared))
            .map_err(|e| EngineError::Storage(e.to_string()))?;
        *lock(&shared.archiver_thread) = Some(archiver);

        // 3b. The compactor: merges the archive's runs and drops expired ones.
        let compactor_store = store.clone();
        let compactor_stop = shared.compactor_stop.clone();
        let compactor = std::thread::Builder::new()
            .name("engine-compactor".into())
            .spawn(move || run_compactor(compactor_store, compactor_stop, retention_ms))
            .map_err(|e| EngineError::Storage(e.to_string()))?;
        *lock(&shared.compactor_thread) = Some(compactor);

        // 4. The filters: filled from the archive in the background; until a partition
        //    has its filter, its duplicate checks all go to disk.
        let filter_bytes = limits.archive_filter_bytes_max / n;
        let mut filter_txs = Vec::with_capacity(n);
        let mut filter_rxs = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = oneshot::channel();
            filter_txs.push(tx);
            filter_rxs.push(Some(rx));
        }
        let loader_store = store.clone();
        let loader_retention_ms = limits.retention_ms;
        std::thread::Builder::new()
            .name("engine-filter-loader".into())
            .spawn(move || {
                load_filters(
                    loader_store,
                    filter_txs,
                    partitions,
                    filter_bytes,
                    loader_retention_ms,
                )
            })
            .map_err(|e| EngineError::Storage(e.to_string()))?;

        // 5. The actors.
        let hub = Hub {
            shared: shared.clone(),
        };
        let mut tasks = Vec::new();
        for (p, (((rec, client_rx), peer_rx), query_rx)) in recovered
            .into_iter()
            .zip(client_rxs)
            .zip(peer_rxs)
            .zip(query_rxs)
            .enumerate()
        {
            let epoch = epochs[p];
            shared.stats[p].epoch.store(epoch, Ordering::Relaxed);
            let rec = match rec {
                Ok(rec) => rec,
                Err(reason) => {
                    // No actor: its mailbox closes and submitters get `PartitionStopped`.
                    *lock(&shared.stats[p].stopped) = Some(reason);
                    continue;
                }
            };
            shared.stats[p]
                .committed_batch
                .store(rec.state.batch_seq, Ordering::Relaxed);
            let actor = Actor {
                partition: p as u32,
                store: store.clone(),
                filter: ArchiveFilter::new(filter_bytes),
                filter_loaded: filter_rxs[p].take(),
                filter_pending: Vec::new(),
                epoch,
                shared: shared.clone(),
                state: rec.state,
                unconfirmed: rec.unconfirmed,
                outbox: rec.outbox,
                acks: shared.acks[p].clone(),
                finished_cache: HashMap::new(),
                finished_order: VecDeque::new(),
                events: events_tx.clone(),
                client_rx,
                peer_rx,
                query_rx,
                stop: shared.stop.subscribe(),
                last_snapshot_batch: rec.snapshot_batch,
            };
            let span = info_span!("partition", partition = p, epoch = epoch);
            tasks.push(tokio::spawn(actor.run().instrument(span)));
        }
        // 6. The ticker: expiry and idle returns.
        let ticker = hub.clone();
        tasks.push(tokio::spawn(async move { ticker.run_ticker().await }));
        *lock(&shared.tasks) = tasks;
        info!(partitions, "engine started");
        Ok((hub, events_rx))
    }

    pub fn partition_count(&self) -> u32 {
        self.shared.partitions
    }

    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    async fn run_ticker(&self) {
        let mut interval = tokio::time::interval(Duration::from_millis(
            self.shared.limits.tick_interval_ms.max(1),
        ));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut stop = self.shared.stop.subscribe();
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.wait_for(|stopping| *stopping) => return,
            }
            let now = now_ms();
            for (p, peer) in self.shared.peers.iter().enumerate() {
                offer_tick(&self.shared.stats[p].tick_pending, peer, now);
            }
        }
    }

    /// Appends a command to its partition's mailbox and waits until it is durably applied.
    pub async fn submit(&self, partition: u32, command: Command) -> Result<(), SubmitError> {
        if self.shared.shutting_down.load(Ordering::Relaxed) {
            return Err(SubmitError::ShuttingDown);
        }
        let (reply, done) = oneshot::channel();
        let sender = &self.shared.clients[partition as usize];
        sender
            .try_send(ClientRequest {
                command,
                reply: Some(reply),
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SubmitError::Overloaded { partition },
                mpsc::error::TrySendError::Closed(_) => self.closed(partition),
            })?;
        done.await.map_err(|_| self.closed(partition))
    }

    /// Appends a command to its partition's mailbox without waiting: the results arrive
    /// as events only. Fails at once with `Overloaded` when the mailbox is full.
    pub fn enqueue(&self, partition: u32, command: Command) -> Result<(), SubmitError> {
        if self.shared.shutting_down.load(Ordering::Relaxed) {
            return Err(SubmitError::ShuttingDown);
        }
        self.shared.clients[partition as usize]
            .try_send(ClientRequest {
                command,
                reply: None,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SubmitError::Overloaded { partition },
                mpsc::error::TrySendError::Closed(_) => self.closed(partition),
            })
    }

    /// Why a partition's mailbox is closed.
    fn closed(&self, partition: u32) -> SubmitError {
        match lock(&self.shared.stats[partition as usize].stopped).clone() {
            Some(reason) => SubmitError::PartitionStopped { partition, reason },
            None => SubmitError::ShuttingDown,
        }
    }

    /// The partition that owns a transfer.
    pub fn partition_of(&self, transfer_id: &TransferId) -> u32 {
        (transfer_id.route_hash() % u64::from(self.shared.partitions)) as u32
    }

    pub async fn prepare(&self, now_ms: TimestampMs, prepare: Prepare) -> Result<(), SubmitError> {
        let p = self.partition_of(&prepare.transfer_id);
        self.submit(p, Command::Prepare { now_ms, prepare }).await
    }

    pub async fn fulfil(&self, now_ms: TimestampMs, fulfil: Fulfil) -> Result<(), SubmitError> {
        let p = self.partition_of(&fulfil.transfer_id);
        self.submit(p, Command::Fulfil { now_ms, fulfil }).await
    }

    pub async fn reject(&self, now_ms: TimestampMs, reject: Reject) -> Result<(), SubmitError> {
        let p = self.partition_of(&reject.transfer_id);
        self.submit(p, Command::Reject { now_ms, reject }).await
    }

    /// GET /transfers/{id}: `Err(3208)` unknown, `Err(3000)` when `source` is neither party.
    pub async fn get_transfer(
        &self,
        id: TransferId,
        source: FspId,
    ) -> Result<TransferView, ErrorCode> {
        let p = self.partition_of(&id);
        let (reply, answer) = oneshot::channel();
        self.shared.queries[p as usize]
            .try_send(Query::Transfer { id, reply })
            .map_err(|_| ErrorCode::ServiceUnavailable)?;
        let view = answer.await.map_err(|_| ErrorCode::ServiceUnavailable)??;
        match view {
            None => Err(ErrorCode::TransferNotFound),
            Some(view) if view.payer != source && view.payee != source => {
                Err(ErrorCode::GenericClient)
            }
            Some(view) => Ok(view),
        }
    }

    /// Runs an admin command where it belongs and waits for its result.
    pub async fn admin(
        &self,
        now_ms: TimestampMs,
        admin: Admin,
    ) -> Result<(), (ErrorCode, String)> {
        let request_id = self.shared.next_request_id.fetch_add(1, Ordering::Relaxed);
        let (reply, done) = oneshot::channel();
        lock(&self.shared.admin_waiters).insert(request_id, reply);
        let targets: Vec<u32> = match &admin {
            Admin::CreateAccount { .. } | Admin::SetActive { .. } => {
                (0..self.shared.partitions).collect()
            }
            Admin::InitialPositionAndLimits { account, .. }
            | Admin::SetNdc { account, .. }
            | Admin::FundsIn { account, .. }
            | Admin::FundsOutReserve { account, .. }
            | Admin::FundsOutCommit { account, .. }
            | Admin::FundsOutAbort { account, .. } => {
                vec![home_of(account, self.shared.partitions)]
            }
        };
        let unavailable = |e: SubmitError| (ErrorCode::ServiceUnavailable, e.to_string());
        for p in targets {
            let command = Command::Admin {
                now_ms,
                request_id,
                admin: admin.clone(),
            };
            if let Err(e) = self.submit(p, command).await {
                lock(&self.shared.admin_waiters).remove(&request_id);
                return Err(unavailable(e));
            }
        }
        match done.await {
            Ok((None, _)) => Ok(()),
            Ok((Some(code), message)) => Err((code, message)),
            Err(_) => Err((
                ErrorCode::ServiceUnavailable,
                "the hub is shutting down".into(),
            )),
        }
    }

    /// An account's figures summed over every partition; `None` if it does not exist.
    pub async fn account(&self, account: AccountKey) -> Option<AccountView> {
        let mut view = AccountView {
            account,
            active: false,
            position: 0,
            reserved: 0,
            ndc: 0,
            liquidity_cover: 0,
            limits_set: false,
            limit: 0,
            headroom: 0,
        };
        let mut known = false;
        for query in &self.shared.queries {
            let (reply, answer) = oneshot::channel();
            query.send(Query::Account { account, reply }).await.ok()?;
            let figures = answer.await.ok()??;
            known |= figures.known;
            view.active = figures.active;
            view.position += figures.position;
            view.reserved += figures.reserved;
            view.headroom += figures.headroom;
            if let Some(bank) = figures.bank {
                view.ndc = bank.ndc;
                view.liquidity_cover = bank.cover;
                view.limit = bank.limit;
                view.position += bank.base_position;
                view.headroom += bank.bank;
                view.limits_set = bank.limits_set;
            }
        }
        known.then_some(view)
    }

    /// Why the store refuses durability, if it does (a failed write or fdatasync stops it
    /// for good, until a restart): the hub is then not ready, and every partition stops
    /// at its next batch.
    pub fn storage_failed(&self) -> Option<String> {
        self.store().ok().and_then(|store| store.failed())
    }

    /// How far partition `receiver` has told `sender` it has durably applied its peer
    /// messages (for tests of the confirmation rule).
    #[doc(hidden)]
    pub fn confirmed_watermark(&self, receiver: u32, sender: u32) -> u64 {
        let n = self.shared.partitions as usize;
        self.shared.confirmed[receiver as usize * n + sender as usize].load(Ordering::Acquire)
    }

    pub fn partitions(&self) -> Vec<PartitionStatus> {
        (0..self.shared.partitions)
            .map(|p| {
                let stats = &self.shared.stats[p as usize];
                let sender = &self.shared.clients[p as usize];
                PartitionStatus {
                    partition: p,
                    owner: "local".to_string(),
                    epoch: stats.epoch.load(Ordering::Relaxed),
                    committed_batch: stats.committed_batch.load(Ordering::Relaxed),
                    queue_depth: sender.max_capacity() - sender.capacity(),
                    applied_commands: stats.applied_commands.load(Ordering::Relaxed),
                    stopped: lock(&stats.stopped).clone(),
                }
            })
            .collect()
    }

    pub fn metrics(&self) -> EngineMetrics {
        let s = &self.shared;
        let Some(store) = lock(&s.store).clone() else {
            return lock(&s.final_metrics).clone().unwrap_or_default();
        };
        EngineMetrics {
            fsyncs: store.fsyncs(),
            batches: s.batches.load(Ordering::Relaxed),
            commands: s
                .stats
                .iter()
                .map(|st| st.applied_commands.load(Ordering::Relaxed))
                .sum(),
            parked_prepares: s
                .stats
                .iter()
                .map(|st| st.parked.load(Ordering::Relaxed) as u64)
                .sum(),
            flush_latency_us_total: s.flush_latency_us_total.load(Ordering::Relaxed),
            denials: s.denials.load(Ordering::Relaxed),
            sled_flush_us_total: store.sync_time_us().0,
            fdatasync_us_total: store.sync_time_us().1,
            outbox_events: s
                .stats
                .iter()
                .map(|st| st.outbox_pending.load(Ordering::Relaxed) as u64)
                .sum(),
            events_shed: s.events_shed.load(Ordering::Relaxed),
        }
    }

    /// Durable key-value store for the gateway's participant registry.
    pub async fn registry_put(&self, key: &str, value: Vec<u8>) -> Result<(), EngineError> {
        self.store()?.registry_put(key, &value)?;
        self.sync().await
    }

    pub fn registry_get(&self, key: &str) -> Result<Option<Vec<u8>>, EngineError> {
        self.store()?.registry_get(key)
    }

    pub fn registry_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, EngineError> {
        self.store()?.registry_scan(prefix)
    }

    fn store(&self) -> Result<Arc<dyn Storage>, EngineError> {
        lock(&self.shared.store)
            .clone()
            .ok_or(EngineError::ShuttingDown)
    }

    async fn sync(&self) -> Result<(), EngineError> {
        request_sync(&self.shared).await.map(|_| ())
    }

    /// Stops taking commands, lets every actor finish its batch, flushes, and waits.
    pub async fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        self.shared.stop.send_replace(true);
        let tasks = std::mem::take(&mut *lock(&self.shared.tasks));
        for task in tasks {
            let _ = task.await;
        }
        let _ = self.sync().await;
        // The archiver writes and syncs what it has, then the syncer takes a last round;
        // once both threads are joined and the handle's store is dropped, the database
        // is closed and the data directory can be opened again.
        let _ = self.shared.archiver.send(ArchiveMsg::Exit).await;
        let _ = self.shared.syncer.send(SyncMsg::Exit).await;
        let _ = self.shared.trimmer.send(TrimMsg::Exit).await;
        self.shared.compactor_stop.store(true, Ordering::Relaxed);
        let archiver = lock(&self.shared.archiver_thread).take();
        let compactor = lock(&self.shared.compactor_thread).take();
        let syncer = lock(&self.shared.syncer_thread).take();
        let trimmer = lock(&self.shared.trimmer_thread).take();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(thread) = trimmer {
                let _ = thread.join();
            }
            if let Some(thread) = archiver {
                let _ = thread.join();
            }
            if let Some(thread) = compactor {
                let _ = thread.join();
            }
            if let Some(thread) = syncer {
                let _ = thread.join();
            }
        })
        .await;
        let metrics = self.metrics();
        *lock(&self.shared.final_metrics) = Some(metrics);
        lock(&self.shared.store).take();
        info!("engine stopped");
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means another thread panicked mid-update; the engine stops anyway.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn request_sync(shared: &Shared) -> Result<u64, EngineError> {
    let (reply, done) = oneshot::channel();
    shared
        .syncer
        .send(SyncMsg::Sync(reply))
        .await
        .map_err(|_| EngineError::ShuttingDown)?;
    let started = std::time::Instant::now();
    let result = done.await.map_err(|_| EngineError::ShuttingDown)?;
    shared
        .flush_latency_us_total
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    result.map_err(EngineError::Storage)
}

/// A request to the trimmer.
enum TrimMsg {
    /// Partition p's WAL records up to and including this batch are in a snapshot.
    Trim {
        partition: u32,
        upto: u64,
    },
    Exit,
}

/// Deletes WAL segments covered by snapshots. Only garbage collection: recovery reads the
/// WAL after its snapshot's batch, so a segment left behind (trim skipped, crash before
/// it) is never read past that point, and `truncate_batches` makes the snapshots durable
/// before it deletes anything.
fn run_trimmer(store: Arc<dyn Storage>, mut requests: mpsc::Receiver<TrimMsg>) {
    lower_priority_of_this_thread();
    while let Some(TrimMsg::Trim { partition, upto }) = requests.blocking_recv() {
        if let Err(e) = store.truncate_batches(partition, upto) {
            error!(partition, error = %e, "deleting WAL segments behind a snapshot failed");
        }
    }
}

/// A request to the syncer.
enum SyncMsg {
    Sync(oneshot::Sender<Result<u64, String>>),
    /// Sync one last time and end the thread (structured shutdown).
    Exit,
}

/// Group commit across partitions: every request that arrived while the previous sync ran
/// is covered by the next one.
fn run_syncer(store: Arc<dyn Storage>, mut requests: mpsc::Receiver<SyncMsg>) {
    let mut exiting = false;
    while !exiting {
        let Some(first) = requests.blocking_recv() else {
            return;
        };
        let mut waiting = Vec::new();
        for message in std::iter::once(first).chain(std::iter::from_fn(|| requests.try_recv().ok()))
        {
            match message {
                SyncMsg::Sync(reply) => waiting.push(reply),
                SyncMsg::Exit => exiting = true,
            }
        }
        let result = store
            .sync()
            .map(|_| store.fsyncs())
            .map_err(|e| e.to_string());
        for reply in waiting {
            let _ = reply.send(result.clone());
        }
    }
}

/// Finished transfers of one batch, for the archiver.
struct ArchiveJob {
    partition: u32,
    batch_seq: u64,
    records: Vec<FinishedTransfer>,
}

/// A message to the archiver.
enum ArchiveMsg {
    Job(ArchiveJob),
    /// Write and sync what is pending, then end the thread (structured shutdown).
    Exit,
}

fn run_archiver(
    store: Arc<dyn Storage>,
    mut jobs: mpsc::Receiver<ArchiveMsg>,
    shared: std::sync::Weak<Shared>,
) {
    let mut done: Vec<(u32, u64)> = Vec::new();
    let mut last_sync = std::time::Instant::now();
    let mut exiting = false;
    loop {
        // Write jobs as they come; make the archive durable at most every
        // ARCHIVE_SYNC_INTERVAL_MS (many small syncs starve the group commit's IO), and
        // only then tell the partitions, which drop their in-memory copies on that word.
        let wait =
            Duration::from_millis(ARCHIVE_SYNC_INTERVAL_MS).saturating_sub(last_sync.elapsed());
        let message = if exiting {
            None
        } else {
            match jobs.try_recv() {
                Ok(message) => Some(message),
                Err(mpsc::error::TryRecvError::Empty) if done.is_empty() => jobs.blocking_recv(),
                Err(mpsc::error::TryRecvError::Empty) => {
                    std::thread::sleep(wait.min(Duration::from_millis(1)));
                    None
                }
                Err(mpsc::error::TryRecvError::Disconnected) => Some(ArchiveMsg::Exit),
            }
        };
        match message {
            Some(ArchiveMsg::Job(job)) => {
                if let Err(e) = store.archive(&job.records) {
                    error!(error = %e, "archiving finished transfers failed; stopping the archiver");
                    return;
                }
                done.push((job.partition, job.batch_seq));
            }
            Some(ArchiveMsg::Exit) => exiting = true,
            None => {}
        }
        let due = last_sync.elapsed() >= Duration::from_millis(ARCHIVE_SYNC_INTERVAL_MS);
        if !done.is_empty() && (due || exiting || done.len() >= ARCHIVE_JOBS_PER_SYNC_MAX) {
            last_sync = std::time::Instant::now();
            if let Err(e) = store.sync_archive() {
                error!(error = %e, "syncing the archive failed; stopping the archiver");
                return;
            }
            if let Some(shared) = shared.upgrade() {
                for (partition, batch_seq) in done.drain(..) {
                    shared.archived_upto[partition as usize].store(batch_seq, Ordering::Release);
                }
            }
            done.clear();
        }
        if exiting {
            return;
        }
    }
}

/// Archive upkeep off the critical path: merges runs (so lookups probe few of them) and
/// drops runs past retention, one step at a time, until `stop` is set.
fn run_compactor(store: Arc<dyn Storage>, stop: Arc<AtomicBool>, retention_ms: i64) {
    lower_priority_of_this_thread();
    while !stop.load(Ordering::Relaxed) {
        match store.maintain_archive(now_ms() - retention_ms, &stop) {
            Ok(true) => {}
            Ok(false) => std::thread::sleep(Duration::from_millis(COMPACTOR_IDLE_MS)),
            Err(e) => {
                // Lookups stay correct with unmerged runs, only slower; say so and stop.
                error!(error = %e, "archive maintenance failed; runs are no longer merged");
                return;
            }
        }
    }
}

/// Sends a tick to a partition unless one is already pending there (at most one pending
/// tick per partition keeps the peer lane bounded). A tick that cannot be sent (a full
/// or closed lane) is not pending: the next round offers it again.
fn offer_tick(pending: &AtomicBool, lane: &mpsc::Sender<Command>, now_ms: TimestampMs) {
    if !pending.swap(true, Ordering::AcqRel) && lane.try_send(Command::Tick { now_ms }).is_err() {
        pending.store(false, Ordering::Release);
    }
}

/// Hub time carried by a command, if any.
fn command_time(command: &Command) -> Option<TimestampMs> {
    match command {
        Command::Prepare { now_ms, .. }
        | Command::Fulfil { now_ms, .. }
        | Command::Reject { now_ms, .. }
        | Command::Tick { now_ms }
        | Command::Admin { now_ms, .. } => Some(*now_ms),
        Command::Peer { .. } => None,
    }
}

/// Fills one filter per partition from the archive (transfers inside retention only) and
/// hands each to its actor.
fn load_filters(
    store: Arc<dyn Storage>,
    senders: Vec<oneshot::Sender<ArchiveFilter>>,
    partitions: u32,
    filter_bytes: usize,
    retention_ms: i64,
) {
    lower_priority_of_this_thread();
    let mut filters: Vec<ArchiveFilter> = (0..partitions)
        .map(|_| ArchiveFilter::new(filter_bytes))
        .collect();
    let oldest_ms = now_ms() - retention_ms;
    let mut records = Vec::new();
    let result = store.for_each_finished(&mut |hash, finished_ms| {
        if finished_ms >= oldest_ms {
            records.push((finished_ms, hash));
        }
    });
    if let Err(e) = result {
        error!(error = %e, "filling the archive filters failed; duplicate checks go to disk");
        return; // dropping the senders tells the actors
    }
    // Oldest first, so that the filters' generations follow finishing time.
    records.sort_unstable();
    for (finished_ms, hash) in records {
        filters[(hash % u64::from(partitions)) as usize].insert(hash, finished_ms);
    }
    for (filter, sender) in filters.into_iter().zip(senders) {
        let _ = sender.send(filter);
    }
}

/// A partition as recovered from storage.
struct Recovered {
    state: PartitionState,
    unconfirmed: BTreeMap<(u32, u64), Outgoing>,
    /// The snapshot's unacknowledged results plus those of the replayed batches: all
    /// published again (callbacks are at least once).
    outbox: Outbox,
    snapshot_batch: u64,
}

/// Snapshot + replay of the WAL after it. Replaying gives the same outputs the original
/// run gave: its messages are re-sent (receivers drop duplicates), its finished transfers
/// re-archived, its events republished (callbacks are at least once).
/// [`recover`], with a panic on the way (a broken ledger invariant found while replaying a
/// decodable but wrong record) stopping this partition only, not the whole hub.
fn recover_or_stop(
    store: &dyn Storage,
    partition: u32,
    partitions: u32,
    epoch: u64,
    limits: &Limits,
) -> Result<Recovered, String> {
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        recover(store, partition, partitions, epoch, limits)
    }));
    match attempt {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(panic) => Err(format!(
            "partition {partition}: recovery stopped on a broken invariant: {}",
            panic_message(panic.as_ref())
        )),
    }
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".to_string())
}

fn recover(
    store: &dyn Storage,
    partition: u32,
    partitions: u32,
    epoch: u64,
    limits: &Limits,
) -> Result<Recovered, EngineError> {
    let (mut state, mut unconfirmed, mut outbox, snapshot_batch) =
        match store.load_snapshot(partition)? {
            Some(snapshot) => {
                let state = PartitionState::from_snapshot(&snapshot.state, limits.clone())
                    .map_err(|e| EngineError::Corrupt {
                        partition,
                        what: format!("snap/{}", snapshot.batch_seq),
                        detail: e.to_string(),
                    })?;
                if state.partition != partition || state.partitions != partitions {
                    return Err(EngineError::Corrupt {
                        partition,
                        what: "snapshot".into(),
                        detail: "belongs to another partition".into(),
                    });
                }
                let outbox = restore_outbox(partition, limits, &snapshot)?;
                let unconfirmed = snapshot
                    .unconfirmed
                    .into_iter()
                    .map(|o| ((o.to, o.seq), o))
                    .collect();
                store.archive(&snapshot.unarchived)?;
                store.sync_archive()?;
                (state, unconfirmed, outbox, snapshot.batch_seq)
            }
            None => (
                PartitionState::new(partition, partitions, limits.clone()),
                BTreeMap::new(),
                Outbox::restore(limits.outbox_events_max, 0, Vec::new()),
                0,
            ),
        };
    let mut last_epoch = 0;
    for record in store.batches_after(partition, state.batch_seq)? {
        if record.batch_seq != state.batch_seq + 1 {
            return Err(EngineError::Corrupt {
                partition,
                what: format!("wal/{}", record.batch_seq),
                detail: format!("expected batch {}", state.batch_seq + 1),
            });
        }
        // Owner epochs only grow along the log, and all of them are older than the
        // epoch this start has just taken: anything else was written by another owner.
        if record.epoch < last_epoch || record.epoch >= epoch {
            return Err(EngineError::Corrupt {
                partition,
                what: format!("wal/{}", record.batch_seq),
                detail: format!(
                    "written at owner epoch {}: epochs must not fall along the log (the \
                     record before had {last_epoch}) and must be older than this start's \
                     epoch {epoch}",
                    record.epoch
                ),
            });
        }
        last_epoch = record.epoch;
        let inputs = record
            .inputs
            .into_iter()
            .map(|(command, prior)| Input { command, prior })
            .collect();
        let output = state.apply_batch(inputs);
        for message in output.messages {
            unconfirmed.insert((message.to, message.seq), message);
        }
        store.archive(&output.finished)?;
        for event in output.events {
            if !matches!(event, Event::AdminDone { .. }) {
                outbox.push(event);
            }
        }
    }
    store.sync_archive()?;
    state.check().map_err(|detail| EngineError::Corrupt {
        partition,
        what: format!("state after replay to batch {}", state.batch_seq),
        detail,
    })?;
    info!(partition, batch = state.batch_seq, "partition recovered");
    Ok(Recovered {
        state,
        unconfirmed,
        outbox,
        snapshot_batch,
    })
}

/// The outbox a snapshot recorded, checked: its events are numbered below its next
/// number, in order.
fn restore_outbox(
    partition: u32,
    limits: &Limits,
    snapshot: &SnapshotRecord,
) -> Result<Outbox, EngineError> {
    let ordered = snapshot.outbox.windows(2).all(|w| w[0].0 < w[1].0)
        && snapshot
            .outbox
            .last()
            .is_none_or(|(seq, _)| *seq < snapshot.next_event_seq);
    if !ordered {
        return Err(EngineError::Corrupt {
            partition,
            what: format!("snap/{}", snapshot.batch_seq),
            detail: "outbox events out of order".into(),
        });
    }
    Ok(Outbox::restore(
        limits.outbox_events_max,
        snapshot.next_event_seq,
        snapshot.outbox.clone(),
    ))
}

struct Actor {
    partition: u32,
    store: Arc<dyn Storage>,
    /// Rules out most archive lookups for new transfer ids (see `filter.rs`).
    filter: ArchiveFilter,
    /// The filter filled from the archive at start arrives here.
    filter_loaded: Option<oneshot::Receiver<ArchiveFilter>>,
    /// Finished transfers recorded since start, replayed into the loaded filter.
    filter_pending: Vec<(u64, i64)>,
    epoch: u64,
    shared: Arc<Shared>,
    state: PartitionState,
    /// Messages sent whose receiver has not yet made them durable (re-sent after a crash).
    unconfirmed: BTreeMap<(u32, u64), Outgoing>,
    /// Released results not yet acknowledged by the event consumer (see `outbox`).
    outbox: Outbox,
    acks: Arc<Acks>,
    /// Finished transfers not yet known to be archived, for duplicate checks and GET.
    finished_cache: HashMap<TransferId, FinishedTransfer>,
    finished_order: VecDeque<(u64, Vec<TransferId>)>,
    events: mpsc::Sender<Delivery>,
    client_rx: mpsc::Receiver<ClientRequest>,
    peer_rx: mpsc::Receiver<Command>,
    query_rx: mpsc::Receiver<Query>,
    /// Turns `true` when the hub shuts down.
    stop: tokio::sync::watch::Receiver<bool>,
    last_snapshot_batch: u64,
}

/// A batch applied and written, waiting for its fsync before anything of it is released.
struct InFlight {
    done: oneshot::Receiver<Result<u64, String>>,
    batch_seq: u64,
    count: usize,
    output: crate::machine::Output,
    replies: Vec<oneshot::Sender<()>>,
    /// Read answers computed from a state that includes this batch.
    answers: Vec<Answer>,
    /// How far this partition had applied each sender's messages once this batch was
    /// applied (`inbound` watermarks): published as confirmations at its release, never
    /// the live state, which may include messages of later batches not yet durable.
    confirms: Vec<(u32, u64)>,
    requested: std::time::Instant,
}

/// A query answer held back until the state it was read from is durable.
enum Answer {
    Transfer(
        oneshot::Sender<Result<Option<TransferView>, ErrorCode>>,
        Result<Option<TransferView>, ErrorCode>,
    ),
    Account(oneshot::Sender<Option<SliceFigures>>, Option<SliceFigures>),
}

impl Answer {
    fn send(self) {
        match self {
            Answer::Transfer(reply, view) => {
                let _ = reply.send(view);
            }
            Answer::Account(reply, figures) => {
                let _ = reply.send(figures);
            }
        }
    }
}

/// Batches applied ahead of durability, per partition: batch k+1 is applied while batch
/// k is being synced.
const PIPELINE_DEPTH_MAX: usize = 2;
/// An idle actor wakes at least this often (to offer results the event channel had no
/// room for).
const IDLE_TURN_MS: u64 = 50;

impl Actor {
    async fn run(mut self) {
        // Re-send what the receivers may not have made durable before the restart.
        for message in self.unconfirmed.values() {
            if let Err(e) = self.deliver(message) {
                self.stop(&e);
                return;
            }
        }
        let batch_max = self.shared.limits.batch_size_max.max(1);
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        loop {
            let stopping = self.shared.shutting_down.load(Ordering::Relaxed);
            self.dispatch_events();
            let mut commands: Vec<Command> = Vec::new();
            let mut replies: Vec<oneshot::Sender<()>> = Vec::new();
            while commands.len() < batch_max {
                match self.client_rx.try_recv() {
                    Ok(request) => {
                        commands.push(request.command);
                        replies.extend(request.reply);
                    }
                    Err(_) => break,
                }
            }
            while let Ok(query) = self.query_rx.try_recv() {
                let answer = self.answer(query);
                match in_flight.back_mut() {
                    Some(last) => last.answers.push(answer),
                    None => answer.send(),
                }
            }
            if commands.is_empty() {
                if let Some(oldest) = in_flight.pop_front() {
                    if let Err(e) = self.release(oldest).await {
                        self.stop(&e);
                        return;
                    }
                    continue;
                }
                if stopping {
                    break;
                }
                // Nothing to do: sleep until something arrives.
                tokio::select! {
                    Some(command) = self.peer_rx.recv() => commands.push(command),
                    Some(request) = self.client_rx.recv() => {
                        commands.push(request.command);
                        replies.extend(request.reply);
                    }
                    Some(query) = self.query_rx.recv() => { self.answer(query).send(); continue; }
                    _ = self.stop.changed() => continue,
                    // Results the event channel had no room for are offered again.
                    _ = tokio::time::sleep(Duration::from_millis(IDLE_TURN_MS)) => continue,
                }
                self.wait_for_more(&mut commands, &mut replies, batch_max)
                    .await;
            }
            // Peer messages go first in the batch, and are taken *after* the client
            // commands: a message that was in the lane before a client sent its command
            // (say, the headroom return of a credit whose callback the client saw) is then
            // always applied before that command.
            let mut peers = Vec::new();
            while peers.len() < batch_max {
                match self.peer_rx.try_recv() {
                    Ok(command) => peers.push(command),
                    Err(_) => break,
                }
            }
            if !peers.is_empty() {
                peers.append(&mut commands);
                commands = peers;
            }
            if commands.is_empty() {
                continue;
            }
            match self.stage(commands, replies).await {
                Ok(entry) => in_flight.push_back(entry),
                Err(e) => {
                    self.stop(&e);
                    return;
                }
            }
            let snapshot_due = self.state.batch_seq - self.last_snapshot_batch
                >= self.shared.limits.snapshot_every_batches;
            while in_flight.len() >= PIPELINE_DEPTH_MAX || (snapshot_due && !in_flight.is_empty()) {
                let oldest = in_flight.pop_front().expect("not empty");
                if let Err(e) = self.release(oldest).await {
                    self.stop(&e);
                    return;
                }
            }
            if snapshot_due {
                if let Err(e) = self.snapshot() {
                    self.stop(&e);
                    return;
                }
            }
        }
    }

    /// Group commit: wait up to `batch_wait_us` for more commands after the first.
    async fn wait_for_more(
        &mut self,
        commands: &mut Vec<Command>,
        replies: &mut Vec<oneshot::Sender<()>>,
        batch_max: usize,
    ) {
        let wait = Duration::from_micros(self.shared.limits.batch_wait_us);
        let deadline = tokio::time::Instant::now() + wait;
        while commands.len() < batch_max {
            match self.client_rx.try_recv() {
                Ok(request) => {
                    commands.push(request.command);
                    replies.extend(request.reply);
                    continue;
                }
                Err(_) if tokio::time::Instant::now() >= deadline => break,
                Err(_) => tokio::task::yield_now().await,
            }
        }
    }

    fn answer(&self, query: Query) -> Answer {
        match query {
            Query::Transfer { id, reply } => {
                let view = if let Some(open) = self.state.transfers.get(&id) {
                    Ok(Some(TransferView {
                        transfer_id: id,
                        payer: open.parties.payer,
                        payee: open.parties.payee,
                        state: if open.reserved {
                            TransferState::Reserved
                        } else {
                            TransferState::Received
                        },
                        fulfilment: None,
                        completed_ms: None,
                    }))
                } else {
                    match self.lookup_finished(&id, None) {
                        Ok(record) => Ok(record.map(|record| TransferView {
                            transfer_id: id,
                            payer: record.parties.payer,
                            payee: record.parties.payee,
                            state: record.state,
                            fulfilment: record.fulfilment,
                            completed_ms: record.completed_ms,
                        })),
                        Err(e) => {
                            error!(partition = self.partition, error = %e, "reading an archived transfer failed");
                            Err(ErrorCode::Internal)
                        }
                    }
                };
                Answer::Transfer(reply, view)
            }
            Query::Account { account, reply } => {
                let mut figures = SliceFigures {
                    active: self
                        .state
                        .participants
                        .get(&account.fsp)
                        .is_some_and(|f| f.active),
                    ..SliceFigures::default()
                };
                if let Some(entry) = self.state.accounts.get(&account) {
                    figures.known = true;
                    figures.position = entry.slice.position;
                    figures.reserved = entry.slice.reserved;
                    figures.headroom = entry.slice.headroom;
                    figures.bank = entry.bank.as_ref().map(|b| BankFigures {
                        ndc: b.ndc,
                        cover: b.cover(),
                        limit: b.limit(),
                        base_position: b.base_position,
                        bank: b.bank,
                        limits_set: b.limits_set,
                    });
                }
                Answer::Account(reply, Some(figures))
            }
        }
    }

    /// The archived record of a transfer that is not open here, if any. `now_ms` is the
    /// hub time of the command asking (the filter only speaks for the retention window).
    fn lookup_finished(
        &self,
        id: &TransferId,
        now_ms: Option<TimestampMs>,
    ) -> Result<Option<FinishedTransfer>, EngineError> {
        if let Some(record) = self.finished_cache.get(id) {
            return Ok(Some(record.clone()));
        }
        if let Some(now_ms) = now_ms {
            if !self
                .filter
                .might_contain(id.route_hash(), now_ms, self.shared.limits.retention_ms)
            {
                return Ok(None);
            }
        }
        self.store.finished(id)
    }

    /// Remembers finished transfers in the filter (and for the loaded one, if pending).
    fn filter_insert(&mut self, records: &[FinishedTransfer]) {
        if let Some(loading) = self.filter_loaded.as_mut() {
            match loading.try_recv() {
                Ok(mut loaded) => {
                    for (hash, finished_ms) in self.filter_pending.drain(..) {
                        loaded.insert(hash, finished_ms);
                    }
                    loaded.mark_complete();
                    self.filter = loaded;
                    self.filter_loaded = None;
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
                Err(oneshot::error::TryRecvError::Closed) => {
                    // The loader failed (it logged why): keep going to disk for every check.
                    self.filter_loaded = None;
                    self.filter_pending.clear();
                }
            }
        }
        for record in records {
            let hash = record.parties.transfer_id.route_hash();
            self.filter.insert(hash, record.finished_ms);
            if self.filter_loaded.is_some() {
                self.filter_pending.push((hash, record.finished_ms));
            }
        }
    }

    /// Applies a batch, writes its WAL record and asks for durability (without waiting).
    async fn stage(
        &mut self,
        commands: Vec<Command>,
        replies: Vec<oneshot::Sender<()>>,
    ) -> Result<InFlight, EngineError> {
        let count = commands.len();
        let mut inputs = Vec::with_capacity(count);
        for command in commands {
            if matches!(command, Command::Tick { .. }) {
                self.shared.stats[self.partition as usize]
                    .tick_pending
                    .store(false, Ordering::Release);
            }
            let prior = match command.transfer_id() {
                Some(id) if !self.state.is_open(&id) => {
                    self.lookup_finished(&id, command_time(&command))?
                }
                _ => None,
            };
            inputs.push(Input { command, prior });
        }
        // The WAL record is encoded before applying (applying consumes the input) without
        // cloning it, and written after: a batch that trips an invariant never reaches disk.
        let batch_seq = self.state.batch_seq + 1;
        let body = encode_batch(&WalRecordRef {
            batch_seq,
            epoch: self.epoch,
            inputs: inputs.iter().map(|i| (&i.command, &i.prior)).collect(),
        })?;
        let output = self.state.apply_batch(inputs);
        assert_eq!(
            self.state.batch_seq, batch_seq,
            "batch numbering out of step"
        );
        self.store
            .append_encoded(self.partition, batch_seq, &body)?;
        if cfg!(debug_assertions) {
            self.state.audit();
        }
        self.filter_insert(&output.finished);
        // Finished transfers stay readable (GET, duplicates) until the archiver has them.
        for record in &output.finished {
            self.finished_cache
                .insert(record.parties.transfer_id, record.clone());
        }
        let (reply, done) = oneshot::channel();
        self.shared
            .syncer
            .send(SyncMsg::Sync(reply))
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        Ok(InFlight {
            done,
            batch_seq: self.state.batch_seq,
            count,
            output,
            replies,
            answers: Vec::new(),
            confirms: self
                .state
                .inbound
                .iter()
                .map(|(from, inbound)| (*from, inbound.watermark))
                .collect(),
            requested: std::time::Instant::now(),
        })
    }

    /// Waits for a staged batch to be durable, then releases everything it produced.
    async fn release(&mut self, entry: InFlight) -> Result<(), EngineError> {
        let InFlight {
            done,
            batch_seq,
            count,
            output,
            replies,
            answers,
            confirms,
            requested,
        } = entry;
        done.await
            .map_err(|_| EngineError::ShuttingDown)?
            .map_err(EngineError::Storage)?;
        self.shared
            .flush_latency_us_total
            .fetch_add(requested.elapsed().as_micros() as u64, Ordering::Relaxed);

        // Durable: release everything.
        let stats = &self.shared.stats[self.partition as usize];
        stats.committed_batch.store(batch_seq, Ordering::Relaxed);
        stats
            .applied_commands
            .fetch_add(count as u64, Ordering::Relaxed);
        stats.last_batch_size.store(count as u64, Ordering::Relaxed);
        stats
            .parked
            .store(self.state.parked_count, Ordering::Relaxed);
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        self.shared
            .denials
            .fetch_add(output.denials.len() as u64, Ordering::Relaxed);
        self.publish_confirmations(&confirms);
        for message in output.messages {
            self.deliver(&message)?;
            self.unconfirmed.insert((message.to, message.seq), message);
        }
        if !output.finished.is_empty() {
            let ids: Vec<TransferId> = output
                .finished
                .iter()
                .map(|r| r.parties.transfer_id)
                .collect();
            self.finished_order.push_back((batch_seq, ids));
            let job = ArchiveJob {
                partition: self.partition,
                batch_seq,
                records: output.finished,
            };
            // A full archiver queue slows this partition down instead of growing memory.
            self.shared
                .archiver
                .send(ArchiveMsg::Job(job))
                .await
                .map_err(|_| EngineError::Storage("archiver stopped".into()))?;
        }
        for reply in replies {
            let _ = reply.send(());
        }
        for answer in answers {
            answer.send();
        }
        let mut shed = 0;
        for event in output.events {
            if let Event::AdminDone {
                request_id,
                code,
                message,
            } = &event
            {
                if let Some(waiter) = lock(&self.shared.admin_waiters).remove(request_id) {
                    let _ = waiter.send((*code, message.clone()));
                }
                continue;
            }
            shed += self.outbox.push(event);
        }
        if shed > 0 {
            self.shared.events_shed.fetch_add(shed, Ordering::Relaxed);
            warn!(
                partition = self.partition,
                shed,
                bound = self.shared.limits.outbox_events_max,
                "results shed: the event consumer is too far behind"
            );
        }
        self.dispatch_events();
        self.trim_finished_cache();
        // Over its bound, the cache waits for the archiver instead of growing: this
        // partition slows down (its mailbox fills and answers "overloaded").
        while self.finished_cache.len() > self.shared.limits.finished_cache_max {
            tokio::time::sleep(Duration::from_millis(ARCHIVE_SYNC_INTERVAL_MS / 10)).await;
            self.trim_finished_cache();
        }
        Ok(())
    }

    /// Records why this partition stops; its mailbox closes when the actor returns.
    fn stop(&self, error: &EngineError) {
        error!(partition = self.partition, error = %error, "partition stopped");
        *lock(&self.shared.stats[self.partition as usize].stopped) = Some(error.to_string());
    }

    /// Sends a message into the receiver's log (its peer lane). A closed lane (a stopped
    /// receiver) keeps the message in `unconfirmed`, re-sent after a restart.
    fn deliver(&self, message: &Outgoing) -> Result<(), EngineError> {
        let command = Command::Peer {
            from: self.partition,
            seq: message.seq,
            message: message.message.clone(),
        };
        match self.shared.peers[message.to as usize].try_send(command) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(EngineError::Overflow(format!(
                "peer lane of partition {} is over its bound of {} messages",
                message.to, self.shared.limits.peer_lane_capacity
            ))),
        }
    }

    /// Hands released results to the event consumer, as many as its channel takes now;
    /// the rest stay in the outbox for the next turn (the ledger never waits for it).
    fn dispatch_events(&mut self) {
        outbox::take_acks(&mut self.outbox, &self.acks);
        while let Some((seq, event)) = self.outbox.next_to_dispatch() {
            match self.events.try_reserve() {
                Ok(permit) => {
                    permit.send(outbox::delivery(self.partition, seq, event, &self.acks));
                    self.outbox.dispatched(seq);
                }
                Err(mpsc::error::TrySendError::Full(())) => break,
                Err(mpsc::error::TrySendError::Closed(())) => {
                    // Nobody consumes results (the consumer is gone): nothing to keep.
                    self.outbox.dispatched(seq);
                    self.outbox.ack(seq);
                }
            }
        }
        self.shared.stats[self.partition as usize]
            .outbox_pending
            .store(self.outbox.pending(), Ordering::Relaxed);
    }

    /// Tells senders how far this partition has durably applied their messages:
    /// `confirms` are the watermarks as of the batch just made durable.
    fn publish_confirmations(&mut self, confirms: &[(u32, u64)]) {
        let n = self.shared.partitions as usize;
        for (from, watermark) in confirms {
            self.shared.confirmed[self.partition as usize * n + *from as usize]
                .store(*watermark, Ordering::Release);
        }
        let confirmed = &self.shared.confirmed;
        let me = self.partition as usize;
        self.unconfirmed
            .retain(|(to, seq), _| *seq > confirmed[*to as usize * n + me].load(Ordering::Acquire));
    }

    /// Drops cached finished transfers once the archiver has made them durable.
    fn trim_finished_cache(&mut self) {
        let archived = self.shared.archived_upto[self.partition as usize].load(Ordering::Acquire);
        while let Some((batch, _)) = self.finished_order.front() {
            if *batch > archived {
                break;
            }
            let (_, ids) = self.finished_order.pop_front().expect("front exists");
            for id in ids {
                self.finished_cache.remove(&id);
            }
        }
    }

    /// Writes a snapshot and drops the WAL before it.
    fn snapshot(&mut self) -> Result<(), EngineError> {
        let snapshot = SnapshotRecord {
            batch_seq: self.state.batch_seq,
            state: self.state.snapshot_bytes(),
            unconfirmed: self.unconfirmed.values().cloned().collect(),
            // Finished transfers the archiver may not have written yet: recovery writes them.
            unarchived: self.finished_cache.values().cloned().collect(),
            outbox: self.outbox.pending_events(),
            next_event_seq: self.outbox.next_seq(),
        };
        self.store.write_snapshot(self.partition, &snapshot)?;
        // Full queue: skip; the next snapshot's trim covers these records too.
        let _ = self.shared.trimmer.try_send(TrimMsg::Trim {
            partition: self.partition,
            upto: snapshot.batch_seq,
        });
        self.last_snapshot_batch = snapshot.batch_seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tick_that_finds_the_lane_full_is_offered_again() {
        let (lane, mut partition) = mpsc::channel(1);
        let pending = AtomicBool::new(false);
        lane.try_send(Command::Tick { now_ms: 0 })
            .expect("room for one");
        offer_tick(&pending, &lane, 1);
        assert!(
            !pending.load(Ordering::Acquire),
            "a tick that was not sent must not count as pending"
        );
        partition.recv().await.expect("the first tick");
        offer_tick(&pending, &lane, 2);
        assert!(matches!(
            partition.try_recv(),
            Ok(Command::Tick { now_ms: 2 })
        ));
        assert!(pending.load(Ordering::Acquire), "sent and not yet applied");
    }
}
