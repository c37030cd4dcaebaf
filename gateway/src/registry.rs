//! The participant registry: names, currencies, activation, callback endpoints.
//!
//! Durable through the engine's registry store (one JSON record per participant) and
//! cached in memory, where the notifier reads endpoints without touching disk. Balances
//! and limits are not here: they live in the engine.

use crate::limits::{
    ENDPOINTS_PER_PARTICIPANT_MAX, HUB_ACCOUNTS_MAX, PARTICIPANTS_MAX, SETTLEMENT_MODELS_MAX,
};
use engine::runtime::Hub;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;

const KEY_PREFIX: &str = "participant/";
/// Hub accounts (`HUB_MULTILATERAL_SETTLEMENT`, `HUB_RECONCILIATION`) per currency:
/// `hub-account/{currency}/{type}`. Recorded so that central-ledger provisioning scripts
/// run unchanged; this hub needs no hub accounts to move money.
const HUB_ACCOUNT_PREFIX: &str = "hub-account/";
/// Settlement models, by name, as given (`settlement-model/{name}`); recorded for the
/// same reason.
const SETTLEMENT_MODEL_PREFIX: &str = "settlement-model/";

/// Hub account types central-ledger's provisioning creates.
pub const HUB_ACCOUNT_TYPES: [&str; 2] = ["HUB_MULTILATERAL_SETTLEMENT", "HUB_RECONCILIATION"];

/// Endpoint types a participant may register for transfers (others are stored as given).
pub const TRANSFER_POST: &str = "FSPIOP_CALLBACK_URL_TRANSFER_POST";
pub const TRANSFER_PUT: &str = "FSPIOP_CALLBACK_URL_TRANSFER_PUT";
pub const TRANSFER_ERROR: &str = "FSPIOP_CALLBACK_URL_TRANSFER_ERROR";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Participant {
    pub name: String,
    /// Creation order, from 1; account ids derive from it.
    pub seq: u64,
    pub created_ms: i64,
    pub is_active: bool,
    pub currencies: Vec<String>,
    pub endpoints: BTreeMap<String, String>,
    /// `alarmPercentage` of the NET_DEBIT_CAP per currency, as the operator set it
    /// (the engine does not use it; it is reported back).
    #[serde(default)]
    pub alarm_pct: BTreeMap<String, f64>,
    /// Currencies whose accounts the operator switched off
    /// (`PUT /participants/{name}/accounts/{id}`).
    #[serde(default)]
    pub inactive_currencies: BTreeSet<String>,
}

impl Participant {
    /// central-ledger style numeric account ids: POSITION and SETTLEMENT per currency.
    pub fn account_id(&self, currency_index: usize, settlement: bool) -> u64 {
        self.seq * 1_000 + 2 * currency_index as u64 + if settlement { 2 } else { 1 }
    }

    /// Whether the participant and its account in `currency` are both active.
    pub fn account_active(&self, currency: &str) -> bool {
        self.is_active && !self.inactive_currencies.contains(currency)
    }

    /// (currency, is settlement) of an account id of this participant.
    pub fn account(&self, id: u64) -> Option<(String, bool)> {
        let offset = id.checked_sub(self.seq.checked_mul(1_000)?)?;
        if offset == 0 || offset > 2 * self.currencies.len() as u64 {
            return None;
        }
        let index = ((offset - 1) / 2) as usize;
        Some((self.currencies[index].clone(), offset % 2 == 0))
    }
}

impl Participant {
    /// Decodes a stored participant record (JSON). Refuses, like bytes that are not a
    /// participant, a record whose account ids cannot be formed: `account_id` of its last
    /// currency would overflow (only a damaged or foreign record has such a `seq`).
    pub fn decode(bytes: &[u8]) -> Option<Participant> {
        let p: Participant = serde_json::from_slice(bytes).ok()?;
        let pairs = u64::try_from(p.currencies.len()).ok()?;
        p.seq
            .checked_mul(1_000)?
            .checked_add(pairs.checked_mul(2)?)?;
        Some(p)
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
    /// (currency, type) of each hub account.
    hub_accounts: RwLock<BTreeSet<(String, String)>>,
    settlement_models: RwLock<BTreeMap<String, serde_json::Value>>,
}

impl Registry {
    /// Loads every participant, hub account and settlement model from the store.
    pub fn load(hub: &Hub) -> Result<Registry, RegistryError> {
        let mut participants = Vec::new();
        for (key, value) in hub.registry_scan(KEY_PREFIX)? {
            match Participant::decode(&value) {
                Some(p) => participants.push(p),
                None => tracing::warn!(%key, "ignoring a participant record that does not decode"),
            }
        }
        let registry = Registry::with_participants(participants);
        {
            let mut accounts = registry
                .hub_accounts
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for (key, _) in hub.registry_scan(HUB_ACCOUNT_PREFIX)? {
                let rest = &key[HUB_ACCOUNT_PREFIX.len().min(key.len())..];
                if let Some((currency, kind)) = rest.split_once('/') {
                    accounts.insert((currency.to_string(), kind.to_string()));
                }
            }
        }
        {
            let mut models = registry
                .settlement_models
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for (key, value) in hub.registry_scan(SETTLEMENT_MODEL_PREFIX)? {
                if let Ok(model) = serde_json::from_slice(&value) {
                    let name = &key[SETTLEMENT_MODEL_PREFIX.len().min(key.len())..];
                    models.insert(name.to_string(), model);
                }
            }
        }
        Ok(registry)
    }

    /// A registry held in memory only (the notifier's unit tests).
    pub fn with_participants(participants: Vec<Participant>) -> Registry {
        Registry {
            cache: RwLock::new(
                participants
                    .into_iter()
                    .map(|p| (p.name.clone(), p))
                    .collect(),
            ),
            hub_accounts: RwLock::new(BTreeSet::new()),
            settlement_models: RwLock::new(BTreeMap::new()),
        }
    }

    /// Hub accounts as (currency, type).
    pub fn hub_accounts(&self) -> Vec<(String, String)> {
        self.hub_accounts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Records a hub account durably; `false` if it already existed.
    pub async fn put_hub_account(
        &self,
        hub: &Hub,
        currency: &str,
        kind: &str,
    ) -> Result<bool, RegistryError> {
        let entry = (currency.to_string(), kind.to_string());
        {
            let accounts = self.hub_accounts.read().unwrap_or_else(|p| p.into_inner());
            if accounts.contains(&entry) {
                return Ok(false);
            }
            if accounts.len() >= HUB_ACCOUNTS_MAX {
                return Err(RegistryError::Full("hub account limit reached"));
            }
        }
        hub.registry_put(
            &format!("{HUB_ACCOUNT_PREFIX}{currency}/{kind}"),
            Vec::new(),
        )
        .await?;
        self.hub_accounts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry);
        Ok(true)
    }

    pub fn settlement_models(&self) -> Vec<serde_json::Value> {
        self.settlement_models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Records a settlement model durably; `false` if one of that name exists.
    pub async fn put_settlement_model(
        &self,
        hub: &Hub,
        name: &str,
        model: serde_json::Value,
    ) -> Result<bool, RegistryError> {
        {
            let models = self
                .settlement_models
                .read()
                .unwrap_or_else(|p| p.into_inner());
            if models.contains_key(name) {
                return Ok(false);
            }
            if models.len() >= SETTLEMENT_MODELS_MAX {
                return Err(RegistryError::Full("settlement model limit reached"));
            }
        }
        let bytes = serde_json::to_vec(&model).unwrap_or_default();
        hub.registry_put(&format!("{SETTLEMENT_MODEL_PREFIX}{name}"), bytes)
            .await?;
        self.settlement_models
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), model);
        Ok(true)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn participant(seq: u64, currencies: &[&str]) -> Participant {
        Participant {
            name: format!("dfsp{seq}"),
            seq,
            created_ms: 0,
            is_active: true,
            currencies: currencies.iter().map(|c| c.to_string()).collect(),
            endpoints: BTreeMap::new(),
            alarm_pct: BTreeMap::new(),
            inactive_currencies: Default::default(),
        }
    }

    #[test]
    fn account_ids_round_trip() {
        let p = participant(7, &["USD", "EUR"]);
        assert_eq!(p.account_id(0, false), 7_001);
        assert_eq!(p.account_id(0, true), 7_002);
        assert_eq!(p.account_id(1, false), 7_003);
        assert_eq!(p.account_id(1, true), 7_004);
        assert_eq!(p.account(7_002), Some(("USD".into(), true)));
        assert_eq!(p.account(7_003), Some(("EUR".into(), false)));
        for other in [7_000, 7_005, 6_999, 0, 8_001, u64::MAX] {
            assert_eq!(p.account(other), None, "{other}");
        }
    }

    #[test]
    fn an_account_lookup_on_a_huge_seq_is_none_not_an_overflow() {
        // Found with the `records` fuzz target: a stored record's `seq` is any u64, and
        // `seq * 1_000` overflowed (a panic with overflow checks, a wrong id without).
        let p = participant(u64::MAX / 1_000 + 1, &["USD"]);
        for id in [0, 1, 7_002, u64::MAX] {
            assert_eq!(p.account(id), None, "{id}");
        }
    }

    #[test]
    fn a_stored_record_whose_account_ids_overflow_does_not_decode() {
        let record = |seq: u64| {
            format!(
                r#"{{"name":"dfsp1","seq":{seq},"created_ms":0,"is_active":true,"currencies":["USD","EUR"],"endpoints":{{}}}}"#
            )
        };
        let last = (u64::MAX - 5) / 1_000;
        let p = Participant::decode(record(last).as_bytes()).expect("ids fit");
        assert_eq!(p.account_id(1, true), last * 1_000 + 4);
        assert!(Participant::decode(record(last + 1).as_bytes()).is_none());
        assert!(Participant::decode(b"not json").is_none());
    }

    #[test]
    fn records_written_before_alarm_percentages_still_load() {
        let old = r#"{"name":"dfsp1","seq":1,"created_ms":0,"is_active":true,"currencies":["USD"],"endpoints":{}}"#;
        let p: Participant = serde_json::from_str(old).expect("old record");
        assert!(p.alarm_pct.is_empty());
    }
}
