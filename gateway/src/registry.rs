//! The participant registry: names, currencies, activation, callback endpoints.
//!
//! Durable through the engine's registry store (one JSON record per participant) and
//! cached in memory, where the notifier reads endpoints without touching disk. Balances
//! and limits are not here: they live in the engine.

use crate::limits::{ENDPOINTS_PER_PARTICIPANT_MAX, PARTICIPANTS_MAX};
use engine::runtime::Hub;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::RwLock;

const KEY_PREFIX: &str = "participant/";

/// Endpoint types a participant may register for transfers (others are stored as given).
pub const TRANSFER_POST: &str = "FSPIOP_CALLBACK_URL_TRANSFER_POST";
pub const TRANSFER_PUT: &str = "FSPIOP_CALLBACK_URL_TRANSFER_PUT";
pub const TRANSFER_ERROR: &str = "FSPIOP_CALLBACK_URL_TRANSFER_ERROR";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Participant {
    pub name: String,
    /// Creation order, from 1; account ids derive from it.
    pub seq: u64,
    pub created_ms: i64,
    pub is_active: bool,
    pub currencies: Vec<String>,
    pub endpoints: BTreeMap<String, String>,
}

impl Participant {
    /// central-ledger style numeric account ids: POSITION and SETTLEMENT per currency.
    pub fn account_id(&self, currency_index: usize, settlement: bool) -> u64 {
        self.seq * 1_000 + 2 * currency_index as u64 + if settlement { 2 } else { 1 }
    }

    /// (currency, is settlement) of an account id of this participant.
    pub fn account(&self, id: u64) -> Option<(String, bool)> {
        let offset = id.checked_sub(self.seq * 1_000)?;
        if offset == 0 || offset > 2 * self.currencies.len() as u64 {
            return None;
        }
        let index = ((offset - 1) / 2) as usize;
        Some((self.currencies[index].clone(), offset % 2 == 0))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Full(&'static str),
    #[error("storage: {0}")]
    Storage(#[from] engine::EngineError),
}

pub struct Registry {
    cache: RwLock<BTreeMap<String, Participant>>,
}

impl Registry {
    /// Loads every participant from the store.
    pub fn load(hub: &Hub) -> Result<Registry, RegistryError> {
        let mut cache = BTreeMap::new();
        for (_, value) in hub.registry_scan(KEY_PREFIX)? {
            if let Ok(p) = serde_json::from_slice::<Participant>(&value) {
                cache.insert(p.name.clone(), p);
            }
        }
        Ok(Registry {
            cache: RwLock::new(cache),
        })
    }

    pub fn get(&self, name: &str) -> Option<Participant> {
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn all(&self) -> Vec<Participant> {
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn endpoint(&self, name: &str, kind: &str) -> Option<String> {
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)?
            .endpoints
            .get(kind)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.cache.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes a participant durably, then updates the cache.
    pub async fn put(&self, hub: &Hub, participant: Participant) -> Result<(), RegistryError> {
        if self.get(&participant.name).is_none() && self.len() >= PARTICIPANTS_MAX {
            return Err(RegistryError::Full("participant limit reached"));
        }
        if participant.endpoints.len() > ENDPOINTS_PER_PARTICIPANT_MAX {
            return Err(RegistryError::Full("endpoint limit reached"));
        }
        let bytes = serde_json::to_vec(&participant).unwrap_or_default();
        hub.registry_put(&format!("{KEY_PREFIX}{}", participant.name), bytes)
            .await?;
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(participant.name.clone(), participant);
        Ok(())
    }
}
