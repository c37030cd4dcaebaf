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
use crate::ids::{AccountKey, Currency, FspId, TransferId};
use crate::limits::*;
use crate::machine::account::Money;
use crate::machine::settlement::{HubBalances, WindowId, WindowNets};
use crate::machine::{home_of, Input, Outgoing};
use crate::storage::{SnapshotRecord, Storage, Store, WalRecordRef};
use crate::EngineError;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, info_span, warn, Instrument};

mod core;
pub use self::core::{Core, CoreFault, Lookup, Released, Staged};
mod actor;
mod api;
mod ledger;
mod outbox;
mod recovery;
mod settlement;
mod workers;
use actor::*;
pub use api::{AccountView, EngineMetrics, HubConfig, PartitionStatus, TransferView};
pub use ledger::LedgerPage;
use outbox::Acks;
pub use outbox::{AckToken, Delivery};
use recovery::*;
pub use settlement::HubAccountsView;
use workers::*;

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

struct ClientRequest {
    command: Command,
    reply: Option<oneshot::Sender<()>>,
}

enum Query {
    Transfer {
        id: TransferId,
        reply: oneshot::Sender<Result<Option<TransferView>, EngineError>>,
    },
    Account {
        account: AccountKey,
        reply: oneshot::Sender<Option<SliceFigures>>,
    },
    /// A closed settlement window's nets on the partition (`None`: open, or dropped).
    WindowNets {
        window: WindowId,
        reply: oneshot::Sender<Option<WindowNets>>,
    },
    /// The hub's accounts on the partition.
    HubBalances { reply: oneshot::Sender<HubFigures> },
    /// The account's position ledger entries the partition holds in memory (released,
    /// not yet known to be written).
    Ledger {
        account: AccountKey,
        from_ms: i64,
        to_ms: i64,
        reply: oneshot::Sender<Vec<crate::ledger::Entry>>,
    },
}

/// The hub's balances on one partition, per currency.
type HubFigures = BTreeMap<Currency, HubBalances>;

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
    /// The settlement book, loaded on first use (`settlement.rs`); its lock also makes
    /// settlement operations one at a time.
    settlement: tokio::sync::Mutex<Option<crate::settlement::Book>>,
    /// Test-only fault injection (`Hub::stop_settlement_after`): settlement operations
    /// stop as a crash would after this many steps; `usize::MAX`, never.
    settlement_stop_after: AtomicUsize,
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
    filter_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Counters as they were when the store closed (metrics after shutdown).
    final_metrics: Mutex<Option<EngineMetrics>>,
}

/// Cheap to clone; every clone talks to the same partition actors.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
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
        limits.validate().map_err(EngineError::Config)?;
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
            settlement: tokio::sync::Mutex::new(None),
            settlement_stop_after: AtomicUsize::new(usize::MAX),
            acks: (0..n).map(|_| Arc::new(Acks::default())).collect(),
            events_shed: AtomicU64::new(0),
            next_request_id: AtomicU64::new((now_ms() as u64) << 16),
            shutting_down: AtomicBool::new(false),
            stop: tokio::sync::watch::channel(false).0,
            syncer: sync_tx,
            archiver: archive_tx,
            archived_upto: recovered
                .iter()
                .map(|r| AtomicU64::new(r.as_ref().map(|r| r.state().batch_seq).unwrap_or(0)))
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
            filter_thread: Mutex::new(None),
            final_metrics: Mutex::new(None),
        });

        // 2. The syncer: one WAL fdatasync for every request queued meanwhile.
        let syncer_store = store.clone();
        let syncer = std::thread::Builder::new()
            .name("engine-syncer".into())
            .spawn(move || run_syncer(syncer_store, sync_rx))
            .map_err(|source| EngineError::Io {
                what: "starting an engine thread".into(),
                source,
            })?;
        *lock(&shared.syncer_thread) = Some(syncer);

        // 2b. The trimmer: makes snapshots durable and deletes the WAL segments they
        //     cover, off the actors' path (deleting behind each snapshot in the actor
        //     once stood a partition still for 10-60 ms).
        let trimmer_store = store.clone();
        let trimmer = std::thread::Builder::new()
            .name("engine-trimmer".into())
            .spawn(move || run_trimmer(trimmer_store, trim_rx))
            .map_err(|source| EngineError::Io {
                what: "starting an engine thread".into(),
                source,
            })?;
        *lock(&shared.trimmer_thread) = Some(trimmer);

        // 3. The archiver: writes finished transfers off the critical path.
        let archiver_shared = Arc::downgrade(&shared);
        let archiver_store = store.clone();
        let retention_ms = limits.retention_ms;
        let ledger_retention_ms = limits.ledger_retention_ms;
        let archiver = std::thread::Builder::new()
            .name("engine-archiver".into())
            .spawn(move || run_archiver(archiver_store, archive_rx, archiver_shared))
            .map_err(|source| EngineError::Io {
                what: "starting an engine thread".into(),
                source,
            })?;
        *lock(&shared.archiver_thread) = Some(archiver);

        // 3b. The compactor: merges the archive's runs and drops expired ones.
        let compactor_store = store.clone();
        let compactor_stop = shared.compactor_stop.clone();
        let compactor = std::thread::Builder::new()
            .name("engine-compactor".into())
            .spawn(move || {
                run_compactor(
                    compactor_store,
                    compactor_stop,
                    retention_ms,
                    ledger_retention_ms,
                )
            })
            .map_err(|source| EngineError::Io {
                what: "starting an engine thread".into(),
                source,
            })?;
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
        let filter_loader = std::thread::Builder::new()
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
            .map_err(|source| EngineError::Io {
                what: "starting an engine thread".into(),
                source,
            })?;
        *lock(&shared.filter_thread) = Some(filter_loader);

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
            let core = match rec {
                Ok(core) => core,
                Err(reason) => {
                    // No actor: its mailbox closes and submitters get `PartitionStopped`.
                    *lock(&shared.stats[p].stopped) = Some(reason);
                    continue;
                }
            };
            assert_eq!(core.partition(), p as u32, "core of another partition");
            assert_eq!(core.epoch(), epoch, "core recovered at another epoch");
            shared.stats[p]
                .committed_batch
                .store(core.state().batch_seq, Ordering::Relaxed);
            let actor = Actor {
                store: store.clone(),
                filter: ArchiveFilter::new(filter_bytes),
                filter_loaded: filter_rxs[p].take(),
                filter_pending: Vec::new(),
                shared: shared.clone(),
                core,
                acks: shared.acks[p].clone(),
                events: events_tx.clone(),
                client_rx,
                peer_rx,
                query_rx,
                stop: shared.stop.subscribe(),
            };
            let span = info_span!("partition", partition = p, epoch = epoch);
            let actor = tokio::spawn(actor.run().instrument(span));
            tasks.push(tokio::spawn(watch_actor(shared.clone(), p as u32, actor)));
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
    pub async fn submit(&self, partition: u32, command: Command) -> Result<(), EngineError> {
        self.admit(&command)?;
        let (reply, done) = oneshot::channel();
        let sender = &self.shared.clients[partition as usize];
        sender
            .try_send(ClientRequest {
                command,
                reply: Some(reply),
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => EngineError::Overloaded { partition },
                mpsc::error::TrySendError::Closed(_) => self.closed(partition),
            })?;
        done.await.map_err(|_| self.closed(partition))
    }

    /// [`Hub::submit`] for commands that must reach every partition they are sent to (an
    /// admin change): a full mailbox is retried, up to [`ADMIN_SUBMIT_ATTEMPTS_MAX`] times
    /// [`ADMIN_RETRY_WAIT_MS`] apart, before the caller is told the hub is overloaded.
    async fn submit_patiently(&self, partition: u32, command: Command) -> Result<(), EngineError> {
        let mut attempts = 1;
        loop {
            match self.submit(partition, command.clone()).await {
                Err(EngineError::Overloaded { .. }) if attempts < ADMIN_SUBMIT_ATTEMPTS_MAX => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(ADMIN_RETRY_WAIT_MS)).await;
                }
                other => return other,
            }
        }
    }

    /// Appends a command to its partition's mailbox without waiting: the results arrive
    /// as events only. Fails at once with `Overloaded` when the mailbox is full.
    pub fn enqueue(&self, partition: u32, command: Command) -> Result<(), EngineError> {
        self.admit(&command)?;
        self.shared.clients[partition as usize]
            .try_send(ClientRequest {
                command,
                reply: None,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => EngineError::Overloaded { partition },
                mpsc::error::TrySendError::Closed(_) => self.closed(partition),
            })
    }

    /// What every command passes before it reaches a mailbox: the hub is running, and
    /// its payload is within `payload_bytes_max` (a larger one could make a WAL record
    /// the log refuses, which would stop the partition; it is refused here instead, and
    /// never written).
    fn admit(&self, command: &Command) -> Result<(), EngineError> {
        if self.shared.shutting_down.load(Ordering::Relaxed) {
            return Err(EngineError::ShuttingDown);
        }
        let payload_bytes = command.payload_bytes();
        if payload_bytes > self.shared.limits.payload_bytes_max {
            return Err(EngineError::refused(
                ErrorCode::Validation,
                format!(
                    "payload of {payload_bytes} bytes is larger than {}",
                    self.shared.limits.payload_bytes_max
                ),
            ));
        }
        Ok(())
    }

    /// Why a partition's mailbox is closed.
    fn closed(&self, partition: u32) -> EngineError {
        match lock(&self.shared.stats[partition as usize].stopped).clone() {
            Some(reason) => EngineError::PartitionStopped { partition, reason },
            None => EngineError::ShuttingDown,
        }
    }

    /// The partition that owns a transfer.
    pub fn partition_of(&self, transfer_id: &TransferId) -> u32 {
        (transfer_id.route_hash() % u64::from(self.shared.partitions)) as u32
    }

    pub async fn prepare(&self, now_ms: TimestampMs, prepare: Prepare) -> Result<(), EngineError> {
        let p = self.partition_of(&prepare.transfer_id);
        self.submit(p, Command::Prepare { now_ms, prepare }).await
    }

    pub async fn fulfil(&self, now_ms: TimestampMs, fulfil: Fulfil) -> Result<(), EngineError> {
        let p = self.partition_of(&fulfil.transfer_id);
        self.submit(p, Command::Fulfil { now_ms, fulfil }).await
    }

    pub async fn reject(&self, now_ms: TimestampMs, reject: Reject) -> Result<(), EngineError> {
        let p = self.partition_of(&reject.transfer_id);
        self.submit(p, Command::Reject { now_ms, reject }).await
    }

    /// GET /transfers/{id}: `Refused(3208)` unknown, `Refused(3000)` when `source` is
    /// neither party (the same answer an unknown transfer would get from its payer's point
    /// of view: nothing about other DFSPs' transfers leaks).
    pub async fn get_transfer(
        &self,
        id: TransferId,
        source: FspId,
    ) -> Result<TransferView, EngineError> {
        let p = self.partition_of(&id);
        let (reply, answer) = oneshot::channel();
        self.shared.queries[p as usize]
            .try_send(Query::Transfer { id, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => EngineError::Overloaded { partition: p },
                mpsc::error::TrySendError::Closed(_) => self.closed(p),
            })?;
        let view = answer.await.map_err(|_| self.closed(p))??;
        match view {
            None => Err(EngineError::refused(
                ErrorCode::TransferNotFound,
                format!("transfer {}", id.as_str()),
            )),
            Some(view) if view.payer != source && view.payee != source => Err(
                EngineError::refused(ErrorCode::GenericClient, "not a party to the transfer"),
            ),
            Some(view) => Ok(view),
        }
    }

    /// Runs an admin command where it belongs and waits for its result.
    pub async fn admin(&self, now_ms: TimestampMs, admin: Admin) -> Result<(), EngineError> {
        let partitions = self.shared.partitions;
        let targets: Vec<u32> = match &admin {
            // The home first: a partition that knows the account while its home does not
            // would send headroom to a home without a bank. Then every other partition;
            // the request is answered once all have it (the gateway records the account
            // only then, so a half-created account is invisible, and a retry completes
            // it: creation is idempotent).
            Admin::CreateAccount { account } => {
                let home = home_of(account, partitions);
                std::iter::once(home)
                    .chain((0..partitions).filter(|p| *p != home))
                    .collect()
            }
            // Participant-wide switches and window closes: every partition answers for
            // itself, so the request is done once each has it durably.
            Admin::SetActive { .. }
            | Admin::CloseWindow { .. }
            | Admin::SetAccountActive { .. } => {
                for p in 0..partitions {
                    self.admin_on(&[p], now_ms, admin.clone()).await?;
                }
                return Ok(());
            }
            Admin::InitialPositionAndLimits { account, .. }
            | Admin::SetNdc { account, .. }
            | Admin::FundsIn { account, .. }
            | Admin::FundsOutReserve { account, .. }
            | Admin::FundsOutCommit { account, .. }
            | Admin::FundsOutAbort { account, .. }
            | Admin::Settle { account, .. } => {
                vec![home_of(account, self.shared.partitions)]
            }
        };
        self.admin_on(&targets, now_ms, admin).await
    }

    /// Sends an admin command to `targets` in order and waits for its one answer.
    async fn admin_on(
        &self,
        targets: &[u32],
        now_ms: TimestampMs,
        admin: Admin,
    ) -> Result<(), EngineError> {
        let request_id = self.shared.next_request_id.fetch_add(1, Ordering::Relaxed);
        let (reply, done) = oneshot::channel();
        lock(&self.shared.admin_waiters).insert(request_id, reply);
        for &p in targets {
            let command = Command::Admin {
                now_ms,
                request_id,
                admin: admin.clone(),
            };
            if let Err(e) = self.submit_patiently(p, command).await {
                lock(&self.shared.admin_waiters).remove(&request_id);
                return Err(e);
            }
        }
        match done.await {
            Ok((None, _)) => Ok(()),
            Ok((Some(code), message)) => Err(EngineError::Refused { code, message }),
            Err(_) => Err(EngineError::ShuttingDown),
        }
    }

    /// An account's figures summed over every partition; `None` if it does not exist,
    /// `Err` when a partition cannot answer (stopped, shutting down).
    pub async fn account(&self, account: AccountKey) -> Result<Option<AccountView>, EngineError> {
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
        for (p, query) in self.shared.queries.iter().enumerate() {
            let p = p as u32;
            let (reply, answer) = oneshot::channel();
            query
                .send(Query::Account { account, reply })
                .await
                .map_err(|_| self.closed(p))?;
            let Some(figures) = answer.await.map_err(|_| self.closed(p))? else {
                return Err(self.closed(p));
            };
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
        Ok(known.then_some(view))
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
    /// Stops taking commands, lets every actor finish its batch, flushes, joins every
    /// thread and closes the store. `Err` when the last sync failed, the store had stopped
    /// on a failed write or sync, or a thread panicked: then not everything acknowledged
    /// may be on disk, and the process must not report a clean stop.
    pub async fn shutdown(&self) -> Result<(), EngineError> {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        self.shared.stop.send_replace(true);
        let tasks = std::mem::take(&mut *lock(&self.shared.tasks));
        for task in tasks {
            let _ = task.await;
        }
        let final_sync = self.sync().await;
        // The archiver writes and syncs what it has, then the syncer takes a last round;
        // once both threads are joined and the handle's store is dropped, the database
        // is closed and the data directory can be opened again.
        let _ = self.shared.archiver.send(ArchiveMsg::Exit).await;
        let _ = self.shared.syncer.send(SyncMsg::Exit).await;
        let _ = self.shared.trimmer.send(TrimMsg::Exit).await;
        self.shared.compactor_stop.store(true, Ordering::Relaxed);
        let threads: Vec<(&'static str, std::thread::JoinHandle<()>)> = [
            ("trimmer", lock(&self.shared.trimmer_thread).take()),
            ("archiver", lock(&self.shared.archiver_thread).take()),
            ("compactor", lock(&self.shared.compactor_thread).take()),
            ("syncer", lock(&self.shared.syncer_thread).take()),
            ("filter loader", lock(&self.shared.filter_thread).take()),
        ]
        .into_iter()
        .filter_map(|(name, thread)| thread.map(|t| (name, t)))
        .collect();
        let panicked: Vec<&'static str> = tokio::task::spawn_blocking(move || {
            threads
                .into_iter()
                .filter_map(|(name, thread)| thread.join().is_err().then_some(name))
                .collect()
        })
        .await
        .unwrap_or_else(|_| vec!["the joiner"]);
        let metrics = self.metrics();
        *lock(&self.shared.final_metrics) = Some(metrics);
        let failed = lock(&self.shared.store)
            .take()
            .and_then(|store| store.failed());
        final_sync?;
        if let Some(reason) = failed {
            return Err(EngineError::Storage(reason));
        }
        if !panicked.is_empty() {
            return Err(EngineError::Storage(format!(
                "engine threads panicked: {}",
                panicked.join(", ")
            )));
        }
        info!("engine stopped");
        Ok(())
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

/// Waits for a partition's actor to end. An actor that panicked (a broken ledger
/// invariant: a wrong balance is worse than a stopped partition) stops its partition with
/// the panic's message, and its WAL is set aside so that the others keep trimming.
async fn watch_actor(shared: Arc<Shared>, partition: u32, actor: tokio::task::JoinHandle<()>) {
    let Err(error) = actor.await else {
        return;
    };
    let reason = if error.is_panic() {
        format!(
            "partition {partition}: stopped on a broken invariant: {}",
            panic_message(error.into_panic().as_ref())
        )
    } else {
        format!("partition {partition}: its actor was cancelled")
    };
    stop_partition(&shared, partition, reason);
}

/// Records why a partition stopped (shown in its status; its submitters get
/// `PartitionStopped`) and sets its WAL aside, so that it does not hold trimming back for
/// every other partition while an operator looks at it. The one way a running partition
/// stops, whether its actor returned an error or panicked.
fn stop_partition(shared: &Shared, partition: u32, reason: String) {
    error!(partition, error = %reason, "partition stopped");
    *lock(&shared.stats[partition as usize].stopped) = Some(reason);
    if let Some(store) = lock(&shared.store).clone() {
        if let Err(e) = store.set_aside_partition(partition) {
            error!(partition, error = %e, "setting a stopped partition's WAL aside failed");
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
