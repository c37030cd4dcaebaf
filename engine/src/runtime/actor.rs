//! The partition actor: one tokio task per partition running the group commit (take a
//! batch, apply it, write one WAL frame, ask for durability, then release what it
//! produced, strictly in batch order). See the module docs of `runtime` for the loop.

use super::*;
use crate::limits::{IDLE_TURN_MS, PIPELINE_DEPTH_MAX};

pub(super) struct Actor {
    pub(super) store: Arc<dyn Storage>,
    /// Rules out most archive lookups for new transfer ids (see `filter.rs`).
    pub(super) filter: ArchiveFilter,
    /// The filter filled from the archive at start arrives here.
    pub(super) filter_loaded: Option<oneshot::Receiver<ArchiveFilter>>,
    /// Finished transfers recorded since start, replayed into the loaded filter.
    pub(super) filter_pending: Vec<(u64, i64)>,
    pub(super) shared: Arc<Shared>,
    /// The partition's bookkeeping, as recovery left it (see `core.rs`).
    pub(super) core: Core,
    pub(super) acks: Arc<Acks>,
    pub(super) events: mpsc::Sender<Delivery>,
    pub(super) client_rx: mpsc::Receiver<ClientRequest>,
    pub(super) peer_rx: mpsc::Receiver<Command>,
    pub(super) query_rx: mpsc::Receiver<Query>,
    /// Turns `true` when the hub shuts down.
    pub(super) stop: tokio::sync::watch::Receiver<bool>,
}

/// The IO half of a staged batch (its bookkeeping half is in the core's pipeline, in
/// the same order): the sync to wait for and who to answer once it is durable.
pub(super) struct Waiting {
    pub(super) done: oneshot::Receiver<Result<u64, String>>,
    pub(super) replies: Vec<oneshot::Sender<()>>,
    /// Read answers computed from a state that includes this batch.
    pub(super) answers: Vec<Answer>,
    pub(super) requested: std::time::Instant,
}

/// A query answer held back until the state it was read from is durable.
pub(super) enum Answer {
    Transfer(
        oneshot::Sender<Result<Option<TransferView>, EngineError>>,
        Result<Option<TransferView>, EngineError>,
    ),
    Account(oneshot::Sender<Option<SliceFigures>>, Option<SliceFigures>),
    WindowNets(oneshot::Sender<Option<WindowNets>>, Option<WindowNets>),
    HubBalances(oneshot::Sender<HubFigures>, HubFigures),
    Ledger(
        oneshot::Sender<Vec<crate::ledger::Entry>>,
        Vec<crate::ledger::Entry>,
    ),
}

impl Answer {
    fn send(self) {
        match self {
            Answer::Transfer(reply, view) => {
                let _ = reply.send(view);
            }
            Answer::WindowNets(reply, nets) => {
                let _ = reply.send(nets);
            }
            Answer::HubBalances(reply, figures) => {
                let _ = reply.send(figures);
            }
            Answer::Account(reply, figures) => {
                let _ = reply.send(figures);
            }
            Answer::Ledger(reply, entries) => {
                let _ = reply.send(entries);
            }
        }
    }
}

impl Actor {
    /// Builds the running actor around its core and runs it until shutdown or a stop.
    pub(super) async fn run(self) {
        let Actor {
            store,
            filter,
            filter_loaded,
            filter_pending,
            shared,
            core,
            acks,
            events,
            client_rx,
            peer_rx,
            query_rx,
            stop,
        } = self;
        let running = Running {
            partition: core.partition(),
            store,
            filter,
            filter_loaded,
            filter_pending,
            shared,
            core,
            acks,
            events,
            client_rx,
            peer_rx,
            query_rx,
            stop,
            waiting: VecDeque::new(),
        };
        running.run().await;
    }
}

/// The actor at run time: the IO around one [`Core`].
struct Running {
    partition: u32,
    store: Arc<dyn Storage>,
    filter: ArchiveFilter,
    filter_loaded: Option<oneshot::Receiver<ArchiveFilter>>,
    filter_pending: Vec<(u64, i64)>,
    shared: Arc<Shared>,
    core: Core,
    acks: Arc<Acks>,
    events: mpsc::Sender<Delivery>,
    client_rx: mpsc::Receiver<ClientRequest>,
    peer_rx: mpsc::Receiver<Command>,
    query_rx: mpsc::Receiver<Query>,
    stop: tokio::sync::watch::Receiver<bool>,
    /// The IO half of the core's staged batches, oldest first.
    waiting: VecDeque<Waiting>,
}

impl Running {
    async fn run(mut self) {
        // Re-send what the receivers may not have made durable before the restart.
        let resend: Vec<Outgoing> = self.core.unconfirmed().values().cloned().collect();
        for message in resend {
            if let Err(e) = self.deliver(message) {
                self.stop(&e);
                return;
            }
        }
        let batch_max = self.shared.limits.batch_size_max.max(1);
        let bytes_max = self.shared.limits.batch_bytes_max.max(1);
        loop {
            let stopping = self.shared.shutting_down.load(Ordering::Relaxed);
            self.dispatch_events();
            let mut commands: Vec<Command> = Vec::new();
            let mut replies: Vec<oneshot::Sender<()>> = Vec::new();
            // WAL bytes of the client commands taken (see `Limits::batch_bytes_max`).
            let mut bytes = 0usize;
            while commands.len() < batch_max && bytes < bytes_max {
                match self.client_rx.try_recv() {
                    Ok(request) => {
                        bytes += request.command.wal_bytes_max();
                        commands.push(request.command);
                        replies.extend(request.reply);
                    }
                    Err(_) => break,
                }
            }
            while let Ok(query) = self.query_rx.try_recv() {
                let answer = self.answer(query);
                match self.waiting.back_mut() {
                    Some(last) => last.answers.push(answer),
                    None => answer.send(),
                }
            }
            if commands.is_empty() {
                if !self.waiting.is_empty() {
                    if let Err(e) = self.release().await {
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
                        bytes += request.command.wal_bytes_max();
                        commands.push(request.command);
                        replies.extend(request.reply);
                    }
                    Some(query) = self.query_rx.recv() => { self.answer(query).send(); continue; }
                    _ = self.stop.changed() => continue,
                    // Results the event channel had no room for are offered again.
                    _ = tokio::time::sleep(Duration::from_millis(IDLE_TURN_MS)) => continue,
                }
                self.wait_for_more(
                    &mut commands,
                    &mut replies,
                    &mut bytes,
                    batch_max,
                    bytes_max,
                )
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
            if let Err(e) = self.stage(commands, replies).await {
                self.stop(&e);
                return;
            }
            let snapshot_due = self.core.snapshot_due();
            while self.waiting.len() >= PIPELINE_DEPTH_MAX
                || (snapshot_due && !self.waiting.is_empty())
            {
                if let Err(e) = self.release().await {
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
        bytes: &mut usize,
        batch_max: usize,
        bytes_max: usize,
    ) {
        let wait = Duration::from_micros(self.shared.limits.batch_wait_us);
        let deadline = tokio::time::Instant::now() + wait;
        while commands.len() < batch_max && *bytes < bytes_max {
            match self.client_rx.try_recv() {
                Ok(request) => {
                    *bytes += request.command.wal_bytes_max();
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
        let state = self.core.state();
        match query {
            Query::Transfer { id, reply } => {
                let view = if let Some(open) = state.transfers.get(&id) {
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
                    let found = match self.core.cached_finished(&id) {
                        Some(record) => Ok(Some(record.clone())),
                        None => self.store.finished(&id),
                    };
                    match found {
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
                            Err(e)
                        }
                    }
                };
                Answer::Transfer(reply, view)
            }
            Query::Account { account, reply } => {
                let mut figures = SliceFigures {
                    active: state
                        .participants
                        .get(&account.fsp)
                        .is_some_and(|f| f.active),
                    ..SliceFigures::default()
                };
                if let Some(entry) = state.accounts.get(&account) {
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
            Query::WindowNets { window, reply } => {
                Answer::WindowNets(reply, state.settlement.closed_window(window))
            }
            Query::HubBalances { reply } => {
                Answer::HubBalances(reply, state.settlement.hub.clone())
            }
            Query::Ledger {
                account,
                from_ms,
                to_ms,
                reply,
            } => Answer::Ledger(reply, self.core.unwritten_ledger(&account, from_ms, to_ms)),
        }
    }

    /// Remembers finished transfers in the filter (and for the loaded one, if pending).
    fn filter_insert(
        filter: &mut ArchiveFilter,
        filter_loaded: &mut Option<oneshot::Receiver<ArchiveFilter>>,
        filter_pending: &mut Vec<(u64, i64)>,
        records: &[FinishedTransfer],
    ) {
        if let Some(loading) = filter_loaded.as_mut() {
            match loading.try_recv() {
                Ok(mut loaded) => {
                    for (hash, finished_ms) in filter_pending.drain(..) {
                        loaded.insert(hash, finished_ms);
                    }
                    loaded.mark_complete();
                    *filter = loaded;
                    *filter_loaded = None;
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
                Err(oneshot::error::TryRecvError::Closed) => {
                    // The loader failed (it logged why): keep going to disk for every check.
                    *filter_loaded = None;
                    filter_pending.clear();
                }
            }
        }
        for record in records {
            let hash = record.parties.transfer_id.route_hash();
            filter.insert(hash, record.finished_ms);
            if filter_loaded.is_some() {
                filter_pending.push((hash, record.finished_ms));
            }
        }
    }

    /// Stages a batch in the core, writes its WAL record and asks for durability (without
    /// waiting).
    async fn stage(
        &mut self,
        commands: Vec<Command>,
        replies: Vec<oneshot::Sender<()>>,
    ) -> Result<(), EngineError> {
        if commands.iter().any(|c| matches!(c, Command::Tick { .. })) {
            self.shared.stats[self.partition as usize]
                .tick_pending
                .store(false, Ordering::Release);
        }
        let filter = &self.filter;
        let store = &self.store;
        let retention_ms = self.shared.limits.retention_ms;
        // The archived record of a transfer neither open nor cached: the filter speaks for
        // the retention window before `now_ms` (the hub time of the command asking).
        let mut lookup = |id: &TransferId, now_ms: Option<TimestampMs>| {
            if let Some(now_ms) = now_ms {
                if !filter.might_contain(id.route_hash(), now_ms, retention_ms) {
                    return Ok(None);
                }
            }
            store.finished(id)
        };
        let staged = self.core.stage(commands, &mut lookup)?;
        self.store
            .append_encoded(self.partition, staged.batch_seq, staged.body)?;
        Self::filter_insert(
            &mut self.filter,
            &mut self.filter_loaded,
            &mut self.filter_pending,
            &staged.output.finished,
        );
        if !staged.confirm_now.is_empty() {
            let confirm_now = staged.confirm_now;
            self.publish_confirmations(&confirm_now);
        }
        let (reply, done) = oneshot::channel();
        self.shared
            .syncer
            .send(SyncMsg::Sync(reply))
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        self.waiting.push_back(Waiting {
            done,
            replies,
            answers: Vec::new(),
            requested: std::time::Instant::now(),
        });
        assert_eq!(
            self.waiting.len(),
            self.core.staged_len(),
            "the IO half of the pipeline is out of step with the core's"
        );
        Ok(())
    }

    /// Waits for the oldest staged batch to be durable, then releases everything it
    /// produced.
    async fn release(&mut self) -> Result<(), EngineError> {
        let Waiting {
            done,
            replies,
            answers,
            requested,
        } = self.waiting.pop_front().expect("a batch is waiting");
        let synced = done
            .await
            .map_err(|_| EngineError::ShuttingDown)?
            .map(|_| ())
            .map_err(EngineError::Storage);
        let released = self.core.release_oldest(synced)?;
        self.shared
            .flush_latency_us_total
            .fetch_add(requested.elapsed().as_micros() as u64, Ordering::Relaxed);

        // Durable: release everything.
        let stats = &self.shared.stats[self.partition as usize];
        stats
            .committed_batch
            .store(released.batch_seq, Ordering::Relaxed);
        stats
            .applied_commands
            .fetch_add(released.count as u64, Ordering::Relaxed);
        stats
            .last_batch_size
            .store(released.count as u64, Ordering::Relaxed);
        stats
            .parked
            .store(self.core.state().parked_count, Ordering::Relaxed);
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        self.shared
            .denials
            .fetch_add(released.denials as u64, Ordering::Relaxed);
        self.publish_confirmations(&released.confirmations);
        for message in released.messages {
            self.deliver(message)?;
        }
        if !released.finished.is_empty() || !released.ledger.is_empty() {
            let job = ArchiveJob {
                partition: self.partition,
                batch_seq: released.batch_seq,
                records: released.finished,
                ledger: released.ledger,
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
        for event in released.admin_done {
            if let Event::AdminDone {
                request_id,
                code,
                message,
            } = event
            {
                if let Some(waiter) = lock(&self.shared.admin_waiters).remove(&request_id) {
                    let _ = waiter.send((code, message));
                }
            }
        }
        if released.shed > 0 {
            self.shared
                .events_shed
                .fetch_add(released.shed, Ordering::Relaxed);
            warn!(
                partition = self.partition,
                shed = released.shed,
                bound = self.shared.limits.outbox_events_max,
                "results shed: the event consumer is too far behind"
            );
        }
        self.dispatch_events();
        self.trim_finished_cache();
        // Over its bound, the cache waits for the archiver instead of growing: this
        // partition slows down (its mailbox fills and answers "overloaded").
        while self.core.finished_cache_len() > self.shared.limits.finished_cache_max {
            tokio::time::sleep(Duration::from_millis(ARCHIVE_SYNC_INTERVAL_MS / 10)).await;
            self.trim_finished_cache();
        }
        Ok(())
    }

    /// Records why this partition stops; its mailbox closes when the actor returns.
    fn stop(&self, error: &EngineError) {
        stop_partition(&self.shared, self.partition, error.to_string());
    }

    /// Sends a message into the receiver's log (its peer lane). A closed lane (a stopped
    /// receiver) keeps the message in `unconfirmed`, re-sent after a restart.
    fn deliver(&self, message: Outgoing) -> Result<(), EngineError> {
        let Outgoing { to, seq, message } = message;
        let command = Command::Peer {
            from: self.partition,
            seq,
            message,
        };
        match self.shared.peers[to as usize].try_send(command) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(EngineError::Overflow(format!(
                "peer lane of partition {} is over its bound of {} messages",
                to, self.shared.limits.peer_lane_capacity
            ))),
        }
    }

    /// Hands released results to the event consumer, as many as its channel takes now;
    /// the rest stay in the outbox for the next turn (the ledger never waits for it).
    fn dispatch_events(&mut self) {
        outbox::take_acks(self.core.outbox_mut(), &self.acks);
        while let Some((seq, event)) = self.core.next_event() {
            match self.events.try_reserve() {
                Ok(permit) => {
                    permit.send(outbox::delivery(self.partition, seq, event, &self.acks));
                    self.core.event_dispatched(seq);
                }
                Err(mpsc::error::TrySendError::Full(())) => break,
                Err(mpsc::error::TrySendError::Closed(())) => {
                    // Nobody consumes results (the consumer is gone): nothing to keep.
                    self.core.event_dispatched(seq);
                    self.core.ack_event(seq);
                }
            }
        }
        self.shared.stats[self.partition as usize]
            .outbox_pending
            .store(self.core.events_pending(), Ordering::Relaxed);
    }

    /// Tells senders how far this partition has durably applied their messages, then
    /// drops this partition's sent messages that their receivers have confirmed.
    fn publish_confirmations(&mut self, confirms: &[(u32, u64)]) {
        let n = self.shared.partitions as usize;
        let me = self.partition as usize;
        for (from, watermark) in confirms {
            self.shared.confirmed[me * n + *from as usize].store(*watermark, Ordering::Release);
        }
        let confirmed = &self.shared.confirmed;
        self.core
            .prune_unconfirmed(&|to| confirmed[to as usize * n + me].load(Ordering::Acquire));
    }

    /// Drops cached finished transfers once the archiver has made them durable.
    fn trim_finished_cache(&mut self) {
        let archived = self.shared.archived_upto[self.partition as usize].load(Ordering::Acquire);
        self.core.trim_finished_cache(archived);
    }

    /// Writes a snapshot and drops the WAL before it.
    fn snapshot(&mut self) -> Result<(), EngineError> {
        let snapshot = self.core.snapshot();
        self.store.write_snapshot(self.partition, &snapshot)?;
        // Full queue: skip; the next snapshot's trim covers these records too.
        let _ = self.shared.trimmer.try_send(TrimMsg::Trim {
            partition: self.partition,
            upto: snapshot.batch_seq,
        });
        Ok(())
    }
}
