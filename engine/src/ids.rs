//! Small, `Copy`, fixed-size identifiers. Fixed sizes bound the bytes an open transfer costs
//! and keep hashing cheap; every constructor validates, so a value of these types is always
//! well formed.

use serde::{Deserialize, Serialize};
use std::fmt;

/// FSPIOP's `FspId` is 1..=32 characters.
pub const FSP_ID_LEN_MAX: usize = 32;
/// A UUID in canonical form is 36 characters, a ULID 26.
pub const TRANSFER_ID_LEN_MAX: usize = 36;

/// A participant (DFSP or hub) name: 1..=32 printable ASCII characters, no whitespace.
/// Serialised as its string, so stored records stay small.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FspId {
    len: u8,
    bytes: [u8; FSP_ID_LEN_MAX],
}

impl FspId {
    pub fn new(name: &str) -> Option<FspId> {
        let raw = name.as_bytes();
        if raw.is_empty() || raw.len() > FSP_ID_LEN_MAX {
            return None;
        }
        if !raw.iter().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        let mut bytes = [0u8; FSP_ID_LEN_MAX];
        bytes[..raw.len()].copy_from_slice(raw);
        Some(FspId {
            len: raw.len() as u8,
            bytes,
        })
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever stored (checked in `new`).
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl Serialize for FspId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FspId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<FspId, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        FspId::new(&text).ok_or_else(|| serde::de::Error::custom("malformed participant name"))
    }
}

impl fmt::Debug for FspId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_str())
    }
}

impl fmt::Display for FspId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An ISO 4217 alphabetic currency code, upper case.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn new(code: &str) -> Option<Currency> {
        let raw = code.as_bytes();
        if raw.len() != 3 || !raw.iter().all(|b| b.is_ascii_uppercase()) {
            return None;
        }
        Some(Currency([raw[0], raw[1], raw[2]]))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One participant in one currency: the unit that has a position and limits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Debug)]
pub struct AccountKey {
    pub fsp: FspId,
    pub currency: Currency,
}

impl AccountKey {
    pub fn new(fsp: FspId, currency: Currency) -> AccountKey {
        AccountKey { fsp, currency }
    }
}

/// A transferId: a UUID (36 chars) or a ULID (26 chars), stored lower-cased so that routing,
/// duplicate detection and lookups agree whatever case a DFSP used.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransferId {
    len: u8,
    bytes: [u8; TRANSFER_ID_LEN_MAX],
}

impl TransferId {
    /// Accepts the canonical UUID form (8-4-4-4-12 hex) and ULIDs (26 Crockford base32).
    pub fn parse(id: &str) -> Option<TransferId> {
        let raw = id.as_bytes();
        let valid = match raw.len() {
            36 => raw.iter().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => *b == b'-',
                _ => b.is_ascii_hexdigit(),
            }),
            26 => {
                raw[0] <= b'7'
                    && raw.iter().all(|b| {
                        let c = b.to_ascii_uppercase();
                        c.is_ascii_digit()
                            || (c.is_ascii_uppercase() && !matches!(c, b'I' | b'L' | b'O' | b'U'))
                    })
            }
            _ => false,
        };
        if !valid {
            return None;
        }
        let mut bytes = [0u8; TRANSFER_ID_LEN_MAX];
        for (slot, b) in bytes.iter_mut().zip(raw) {
            *slot = b.to_ascii_lowercase();
        }
        Some(TransferId {
            len: raw.len() as u8,
            bytes,
        })
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }

    /// The 64-bit routing hash of DESIGN §4.
    pub fn route_hash(&self) -> u64 {
        sharding::route_hash(self.as_str())
    }
}

impl Serialize for TransferId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TransferId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<TransferId, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        TransferId::parse(&text).ok_or_else(|| serde::de::Error::custom("malformed transfer id"))
    }
}

impl fmt::Debug for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_ids() {
        let uuid = TransferId::parse("B51EC534-EE48-4575-B6A9-EAD2955B8069").expect("uuid");
        assert_eq!(uuid.as_str(), "b51ec534-ee48-4575-b6a9-ead2955b8069");
        assert!(TransferId::parse("01ARZ3NDEKTSV4RRFFQ69G5FAV").is_some());
        assert!(
            TransferId::parse("81ARZ3NDEKTSV4RRFFQ69G5FAV").is_none(),
            "ULID overflow"
        );
        assert!(
            TransferId::parse("01ARZ3NDEKTSV4RRFFQ69G5FAU").is_none(),
            "U is not Crockford"
        );
        assert!(TransferId::parse("b51ec534ee48-4575-b6a9-ead2955b80691").is_none());
        assert!(TransferId::parse("").is_none());
    }

    #[test]
    fn names_and_currencies() {
        assert!(FspId::new("dfsp1").is_some());
        assert!(FspId::new("").is_none());
        assert!(FspId::new("has space").is_none());
        assert!(FspId::new(&"x".repeat(33)).is_none());
        assert!(Currency::new("USD").is_some());
        assert!(Currency::new("usd").is_none());
        assert!(Currency::new("USDT").is_none());
    }
}
