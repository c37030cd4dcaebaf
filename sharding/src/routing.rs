//! The routing hash of DESIGN §4.
//!
//! `H(bytes) = fmix64(fnv1a64(bytes))`:
//! * `fnv1a64` is the 64-bit FNV-1a hash (offset basis `0xcbf29ce484222325`, prime
//!   `0x100000001b3`), byte by byte;
//! * `fmix64` is MurmurHash3's 64-bit finaliser, which spreads FNV's weak low bits over the
//!   whole word so that `H mod N` is even for small `N`.
//!
//! A transfer lives on `H(lowercase(transferId)) mod N`. An account's home is
//! `H(lowercase(participant) ++ [0x1f] ++ uppercase(currency)) mod N`; the unit separator
//! byte cannot appear in an FSPIOP participant name, so no two accounts share an input.
//! Rust's `DefaultHasher` is never used: it is randomly seeded and may change between
//! releases.

/// Upper bound on the number of partitions of a cluster. Fixed when a cluster is created.
pub const PARTITIONS_MAX: u32 = 1024;

/// A validated partition count, `1..=PARTITIONS_MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartitionCount(u32);

impl PartitionCount {
    /// `None` when `count` is zero or above [`PARTITIONS_MAX`].
    pub fn new(count: u32) -> Option<PartitionCount> {
        if count == 0 || count > PARTITIONS_MAX {
            None
        } else {
            Some(PartitionCount(count))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a64_step(hash: u64, byte: u8) -> u64 {
    (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// `H` over the ASCII-lower-cased bytes of `parts`, joined by the 0x1f separator.
fn hash_parts(parts: &[(&[u8], bool)]) -> u64 {
    let mut hash = FNV_OFFSET_BASIS;
    for (index, (bytes, upper)) in parts.iter().enumerate() {
        if index > 0 {
            hash = fnv1a64_step(hash, 0x1f);
        }
        for &byte in bytes.iter() {
            let byte = if *upper {
                byte.to_ascii_uppercase()
            } else {
                byte.to_ascii_lowercase()
            };
            hash = fnv1a64_step(hash, byte);
        }
    }
    fmix64(hash)
}

/// The documented 64-bit routing hash of a transferId (lower-cased first).
pub fn route_hash(transfer_id: &str) -> u64 {
    hash_parts(&[(transfer_id.as_bytes(), false)])
}

/// The partition that owns every step of a transfer: prepare, fulfil, reject, GET, expiry.
pub fn transfer_partition(transfer_id: &str, partitions: PartitionCount) -> u32 {
    (route_hash(transfer_id) % u64::from(partitions.get())) as u32
}

/// The home partition of an account (participant in one currency): it keeps the account's
/// bank of unallocated headroom, its limits and its admin history.
pub fn home_partition(participant: &str, currency: &str, partitions: PartitionCount) -> u32 {
    let hash = hash_parts(&[(participant.as_bytes(), false), (currency.as_bytes(), true)]);
    (hash % u64::from(partitions.get())) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(count: u32) -> PartitionCount {
        PartitionCount::new(count).expect("valid count")
    }

    #[test]
    fn fnv_matches_published_vectors() {
        // FNV-1a 64 reference values from the FNV authors' test suite.
        let fnv = |bytes: &[u8]| {
            bytes
                .iter()
                .fold(FNV_OFFSET_BASIS, |h, &b| fnv1a64_step(h, b))
        };
        assert_eq!(fnv(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn golden_vectors_are_pinned() {
        // Values cross-checked with an independent implementation of the formula above.
        // If one of these changes, live transfers would move partition: never change them.
        let cases = [
            ("b51ec534-ee48-4575-b6a9-ead2955b8069", GOLDEN[0]),
            ("01ARZ3NDEKTSV4RRFFQ69G5FAV", GOLDEN[1]),
            ("00000000-0000-0000-0000-000000000000", GOLDEN[2]),
        ];
        for (id, expected) in cases {
            assert_eq!(route_hash(id), expected, "route_hash({id})");
        }
        assert_eq!(
            transfer_partition("b51ec534-ee48-4575-b6a9-ead2955b8069", n(8)),
            GOLDEN_P8[0]
        );
        assert_eq!(
            transfer_partition("01ARZ3NDEKTSV4RRFFQ69G5FAV", n(8)),
            GOLDEN_P8[1]
        );
        assert_eq!(home_partition("dfsp1", "USD", n(8)), GOLDEN_HOME_P8[0]);
        assert_eq!(home_partition("payerfsp", "XOF", n(16)), GOLDEN_HOME_P8[1]);
    }

    const GOLDEN: [u64; 3] = [
        0xc316_ed6a_eec3_ae28,
        0x566a_2831_3647_d80b,
        0x1e2d_fea2_dc3b_4b04,
    ];
    const GOLDEN_P8: [u32; 2] = [0, 3];
    const GOLDEN_HOME_P8: [u32; 2] = [5, 10];

    #[test]
    fn case_is_ignored() {
        assert_eq!(
            route_hash("B51EC534-EE48-4575-B6A9-EAD2955B8069"),
            route_hash("b51ec534-ee48-4575-b6a9-ead2955b8069")
        );
        assert_eq!(
            home_partition("DFSP1", "usd", n(64)),
            home_partition("dfsp1", "USD", n(64))
        );
    }

    #[test]
    fn spreads_evenly() {
        let partitions = n(8);
        let mut counts = [0u32; 8];
        for i in 0..80_000u32 {
            let id = format!("{:08x}-0000-4000-8000-{:012x}", i, u64::from(i) * 7919);
            counts[transfer_partition(&id, partitions) as usize] += 1;
        }
        for count in counts {
            assert!(
                (9_000..11_000).contains(&count),
                "uneven spread: {counts:?}"
            );
        }
    }

    #[test]
    fn partition_count_bounds() {
        assert!(PartitionCount::new(0).is_none());
        assert!(PartitionCount::new(PARTITIONS_MAX + 1).is_none());
        assert_eq!(
            PartitionCount::new(PARTITIONS_MAX).map(PartitionCount::get),
            Some(PARTITIONS_MAX)
        );
    }
}
