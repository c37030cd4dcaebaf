//! The operator's settlement driver of the seeded simulation, and the settlement checks.
//!
//! The driver closes settlement windows (an `Admin::CloseWindow` in every partition's log)
//! and settles closed windows through central-settlement's steps (`Admin::Settle` at each
//! account's home: reserve, then commit or abort), interleaved with the workload, crashes
//! and limit changes. It moves on only on results the partitions released, as the hub's
//! settlement book does.
//!
//! What it checks, on top of the simulation's invariants:
//!
//! * a closed window's nets, summed over partitions, are zero per currency, and they never
//!   change once every partition acknowledged the close;
//! * per account, at every step, the positions its transfers made (`Σ slice.position` over
//!   partitions) equal the nets of every window (kept or dropped): a commit counted in no
//!   window or in two breaks it (`window_accounting`);
//! * per currency, at every step, the covers and the hub's settlement and reconciliation
//!   accounts sum to zero (`cover_accounting`); the positions and the hub's multilateral
//!   account sum to the initial positions (in the simulation's invariant 2).

use engine::ids::{AccountKey, Currency};
use engine::machine::account::Money;
use engine::machine::settlement::{SettleStep, WindowNets};
use engine::machine::PartitionState;
use std::collections::{BTreeMap, BTreeSet};

/// Closed windows waiting for a settlement, at most (the driver stops closing beyond).
const CLOSED_WAITING_MAX: usize = 6;

/// A settlement in progress.
#[derive(Debug)]
pub struct Settlement {
    pub id: u64,
    pub windows: Vec<(u64, WindowNets)>,
    /// Each account's net over the settlement's windows (non-zero only).
    pub nets: BTreeMap<AccountKey, i64>,
    /// The step sent last.
    pub step: SettleStep,
    /// Request ids of that step not answered yet.
    pub waiting: BTreeSet<u64>,
}

/// What the driver asks the simulation to send next.
pub enum Send {
    Nothing,
    /// `Admin::CloseWindow { window }` to every partition.
    Close {
        window: u64,
    },
    /// `Admin::Settle` of `step` to each account's home.
    Steps {
        settlement: u64,
        step: SettleStep,
        nets: Vec<(AccountKey, i64)>,
    },
}

#[derive(Debug, Default)]
pub struct Settling {
    /// The window the next close closes.
    pub open: u64,
    /// A close on its way: the partitions that acknowledged it.
    pub closing: Option<BTreeSet<u32>>,
    /// Closed windows in no settlement, with their nets summed over partitions.
    pub closed: Vec<(u64, WindowNets)>,
    pub current: Option<Settlement>,
    pub next_settlement: u64,
    pub windows_closed: u64,
    pub settlements_committed: u64,
    pub settlements_aborted: u64,
}

impl Settling {
    pub fn new() -> Settling {
        Settling {
            open: 1,
            next_settlement: 1,
            ..Settling::default()
        }
    }

    /// The operator closes the open window, unless a close is on its way.
    pub fn close(&mut self) -> Send {
        if self.closing.is_some() || self.closed.len() >= CLOSED_WAITING_MAX {
            return Send::Nothing;
        }
        self.closing = Some(BTreeSet::new());
        Send::Close { window: self.open }
    }

    /// Partition `p` acknowledged the close; once all have, the window's nets are read
    /// from the partitions and checked.
    pub fn close_acknowledged(
        &mut self,
        window: u64,
        p: u32,
        parts: &[&PartitionState],
    ) -> Result<(), String> {
        if window != self.open {
            return Err(format!(
                "partition {p} acknowledged closing window {window}, the open one is {}",
                self.open
            ));
        }
        let closing = self
            .closing
            .as_mut()
            .ok_or("a close acknowledged while none is on its way")?;
        closing.insert(p);
        if closing.len() < parts.len() {
            return Ok(());
        }
        let window = self.open;
        let mut nets = WindowNets::default();
        for part in parts {
            let here = part.settlement.closed_window(window).ok_or_else(|| {
                format!(
                    "partition {} acknowledged closing window {window} but keeps no nets of it",
                    part.partition
                )
            })?;
            nets.merge(&here);
        }
        let mut sums: BTreeMap<Currency, Money> = BTreeMap::new();
        for (account, net) in &nets.nets {
            *sums.entry(account.currency).or_default() += net;
        }
        if let Some((currency, sum)) = sums.iter().find(|(_, sum)| **sum != 0) {
            return Err(format!(
                "closed window {window}: nets of {currency:?} sum to {sum}, not zero"
            ));
        }
        self.closed.push((window, nets));
        self.closing = None;
        self.open += 1;
        self.windows_closed += 1;
        Ok(())
    }

    /// The closed windows' nets must not change after the close (checked at every step).
    pub fn closed_windows_unchanged(&self, parts: &[&PartitionState]) -> Result<(), String> {
        let settling = self.current.iter().flat_map(|s| s.windows.iter());
        for (window, nets) in self.closed.iter().chain(settling) {
            let mut now = WindowNets::default();
            for part in parts {
                match part.settlement.closed_window(*window) {
                    Some(here) => now.merge(&here),
                    None => return Ok(()), // dropped: `window_accounting` still covers it
                }
            }
            if now != *nets {
                return Err(format!(
                    "closed window {window} changed after its close: {nets:?} became {now:?}"
                ));
            }
        }
        Ok(())
    }

    /// The operator moves the settlement on: starts one over every closed window, or sends
    /// the next step once every account answered the last. `commit` picks commit over abort.
    pub fn advance(&mut self, commit: bool) -> Send {
        match &mut self.current {
            None if self.closed.is_empty() => Send::Nothing,
            None => {
                let windows = std::mem::take(&mut self.closed);
                let mut sums: BTreeMap<AccountKey, Money> = BTreeMap::new();
                for (_, nets) in &windows {
                    for (account, net) in &nets.nets {
                        *sums.entry(*account).or_default() += net;
                    }
                }
                let nets: BTreeMap<AccountKey, i64> = sums
                    .into_iter()
                    .filter(|(_, net)| *net != 0)
                    .map(|(account, net)| {
                        (
                            account,
                            i64::try_from(net).expect("a simulated net fits i64"),
                        )
                    })
                    .collect();
                let id = self.next_settlement;
                self.next_settlement += 1;
                let send = Send::Steps {
                    settlement: id,
                    step: SettleStep::Reserve,
                    nets: nets.iter().map(|(a, n)| (*a, *n)).collect(),
                };
                self.current = Some(Settlement {
                    id,
                    windows,
                    nets,
                    step: SettleStep::Reserve,
                    waiting: BTreeSet::new(),
                });
                send
            }
            Some(s) if !s.waiting.is_empty() => Send::Nothing,
            Some(s) if s.step == SettleStep::Reserve => {
                s.step = if commit {
                    SettleStep::Commit
                } else {
                    SettleStep::Abort
                };
                Send::Steps {
                    settlement: s.id,
                    step: s.step,
                    nets: s.nets.iter().map(|(a, n)| (*a, *n)).collect(),
                }
            }
            Some(_) => {
                let done = self.current.take().expect("matched Some");
                if done.step == SettleStep::Abort {
                    // An aborted settlement's windows can be settled again.
                    self.settlements_aborted += 1;
                    self.closed.extend(done.windows);
                } else {
                    self.settlements_committed += 1;
                }
                Send::Nothing
            }
        }
    }

    /// A step of the current settlement was answered (successfully).
    pub fn step_done(&mut self, request_id: u64) {
        if let Some(s) = &mut self.current {
            s.waiting.remove(&request_id);
        }
    }
}

/// Per account, summed over partitions: the positions transfers made equal the nets of
/// every window, kept or dropped.
pub fn window_accounting(parts: &[&PartitionState]) -> Result<(), String> {
    let mut positions: BTreeMap<AccountKey, Money> = BTreeMap::new();
    let mut nets: BTreeMap<AccountKey, Money> = BTreeMap::new();
    for part in parts {
        for (account, entry) in &part.accounts {
            *positions.entry(*account).or_default() += entry.slice.position;
        }
        let book = &part.settlement;
        for (account, net) in &book.dropped {
            *nets.entry(*account).or_default() += net;
        }
        for window in book.windows.values() {
            for (account, net) in &window.nets {
                *nets.entry(*account).or_default() += net;
            }
        }
    }
    for (account, position) in &positions {
        let counted = nets.get(account).copied().unwrap_or(0);
        if *position != counted {
            return Err(format!(
                "window accounting broken for {account:?}: its transfers moved its position \
                 by {position}, its windows' nets sum to {counted}"
            ));
        }
    }
    Ok(())
}

/// Per currency: covers plus the hub's settlement and reconciliation accounts sum to zero.
/// `liquidity` is each account's liquidity at its home.
pub fn cover_accounting(
    parts: &[&PartitionState],
    liquidity: &BTreeMap<AccountKey, Money>,
) -> Result<(), String> {
    let mut sums: BTreeMap<Currency, Money> = BTreeMap::new();
    for (account, amount) in liquidity {
        *sums.entry(account.currency).or_default() += amount;
    }
    for part in parts {
        for (currency, hub) in &part.settlement.hub {
            *sums.entry(*currency).or_default() += hub.settlement + hub.reconciliation;
        }
    }
    match sums.iter().find(|(_, sum)| **sum != 0) {
        Some((currency, sum)) => Err(format!(
            "cover accounting broken for {currency:?}: covers and the hub's settlement and \
             reconciliation accounts sum to {sum}, not zero"
        )),
        None => Ok(()),
    }
}

/// The hub's multilateral settlement account per currency, summed over partitions.
pub fn multilateral(parts: &[&PartitionState]) -> BTreeMap<Currency, Money> {
    let mut sums = BTreeMap::new();
    for part in parts {
        for (currency, hub) in &part.settlement.hub {
            *sums.entry(*currency).or_default() += hub.multilateral;
        }
    }
    sums
}
