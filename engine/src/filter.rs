//! A bounded, in-memory "certainly not archived" filter in front of the archive.
//!
//! Every prepare of a new transfer must prove that its transferId was not used by a
//! transfer that finished within the retention window (duplicate check, DESIGN §6). The
//! archive answers that exactly, but a disk lookup per prepare is the engine's largest
//! cost (measured: about 9 µs per command under load). This filter answers "certainly
//! not archived" for almost all new ids without touching the disk; anything it cannot
//! rule out still goes to the archive, so answers stay exact.
//!
//! It is a ring of Bloom filters ("generations") of fixed size, filled in order of
//! finishing time. Memory is fixed at creation: `bytes_max`. When the ring is full the
//! oldest generation is dropped; if that generation still held transfers inside the
//! retention window, the filter stops being able to rule anything out until those
//! transfers have aged past retention, and every lookup goes to disk meanwhile (slower,
//! never wrong). A filter is also not trusted until it has been filled from the archive
//! after a start (`mark_complete`).

/// Bits set per transferId; with 10 bits per entry this gives a false-positive rate of
/// about 1 %.
const HASHES: u32 = 7;
/// Filter bits budgeted per entry.
const BITS_PER_ENTRY: usize = 10;
/// Generations in the ring.
const GENERATIONS: usize = 4;

#[derive(Debug)]
struct Generation {
    words: Vec<u64>,
    entries: usize,
    /// Latest finishing time of an entry in it (hub ms).
    newest_ms: i64,
}

impl Generation {
    fn new(words: usize) -> Generation {
        Generation {
            words: vec![0; words],
            entries: 0,
            newest_ms: i64::MIN,
        }
    }

    fn bit_positions(&self, hash: u64) -> impl Iterator<Item = usize> {
        // Double hashing (Kirsch–Mitzenmacher): h1 + i * h2.
        let bits = (self.words.len() * 64) as u64;
        let h1 = hash;
        let h2 = mix(hash) | 1;
        (0..u64::from(HASHES)).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % bits) as usize)
    }

    fn insert(&mut self, hash: u64, finished_ms: i64) {
        let positions: Vec<usize> = self.bit_positions(hash).collect();
        for bit in positions {
            self.words[bit / 64] |= 1 << (bit % 64);
        }
        self.entries += 1;
        self.newest_ms = self.newest_ms.max(finished_ms);
    }

    fn might_contain(&self, hash: u64) -> bool {
        self.bit_positions(hash)
            .all(|bit| self.words[bit / 64] & (1 << (bit % 64)) != 0)
    }
}

fn mix(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The filter of one partition.
#[derive(Debug)]
pub struct ArchiveFilter {
    ring: std::collections::VecDeque<Generation>,
    words_per_generation: usize,
    entries_per_generation: usize,
    /// Transfers finished at or before this time may be missing from the ring.
    uncovered_until_ms: i64,
    complete: bool,
}

impl ArchiveFilter {
    /// A filter using at most `bytes_max` bytes of bit arrays.
    pub fn new(bytes_max: usize) -> ArchiveFilter {
        let words = (bytes_max / 8 / GENERATIONS).max(1);
        ArchiveFilter {
            ring: std::iter::once(Generation::new(words)).collect(),
            words_per_generation: words,
            entries_per_generation: (words * 64 / BITS_PER_ENTRY).max(1),
            uncovered_until_ms: i64::MIN,
            complete: false,
        }
    }

    /// Records that a transfer with this routing hash finished at `finished_ms`.
    pub fn insert(&mut self, hash: u64, finished_ms: i64) {
        let full = self
            .ring
            .back()
            .is_some_and(|g| g.entries >= self.entries_per_generation);
        if full {
            if self.ring.len() == GENERATIONS {
                if let Some(dropped) = self.ring.pop_front() {
                    self.uncovered_until_ms = self.uncovered_until_ms.max(dropped.newest_ms);
                }
            }
            self.ring
                .push_back(Generation::new(self.words_per_generation));
        }
        if let Some(current) = self.ring.back_mut() {
            current.insert(hash, finished_ms);
        }
    }

    /// The filter has seen every archived transfer (after a start, once the archive has
    /// been read into it).
    pub fn mark_complete(&mut self) {
        self.complete = true;
    }

    /// False only when no transfer with this hash finished inside the window
    /// `(now_ms - retention_ms, now_ms]`: then the archive need not be asked.
    pub fn might_contain(&self, hash: u64, now_ms: i64, retention_ms: i64) -> bool {
        if !self.complete || self.uncovered_until_ms > now_ms.saturating_sub(retention_ms) {
            return true;
        }
        self.ring.iter().any(|g| g.might_contain(hash))
    }

    /// Bytes held by the bit arrays.
    pub fn bytes(&self) -> usize {
        self.ring.len() * self.words_per_generation * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(i: u64) -> u64 {
        mix(i.wrapping_add(0x1234_5678))
    }

    #[test]
    fn never_misses_an_inserted_id() {
        let mut filter = ArchiveFilter::new(64 * 1024);
        filter.mark_complete();
        for i in 0..10_000 {
            filter.insert(hash(i), 1_000);
        }
        assert!((0..10_000).all(|i| filter.might_contain(hash(i), 2_000, 10_000)));
        let false_positives = (10_000..110_000)
            .filter(|i| filter.might_contain(hash(*i), 2_000, 10_000))
            .count();
        assert!(
            false_positives < 3_000,
            "false-positive rate too high: {false_positives} / 100000"
        );
    }

    #[test]
    fn is_not_trusted_before_it_is_complete() {
        let filter = ArchiveFilter::new(64 * 1024);
        assert!(filter.might_contain(hash(1), 0, 10));
    }

    #[test]
    fn dropping_a_generation_inside_retention_sends_lookups_to_disk() {
        let mut filter = ArchiveFilter::new(8 * 1024); // small: generations fill fast
        filter.mark_complete();
        let per_generation = filter.entries_per_generation as u64;
        // Fill more than the ring holds, all finishing at t = 100.
        for i in 0..per_generation * (GENERATIONS as u64 + 1) {
            filter.insert(hash(i), 100);
        }
        // The first ids may have been dropped: inside retention, nothing is ruled out.
        assert!(filter.might_contain(hash(999_999_999), 150, 1_000));
        // Once everything dropped has aged past retention, the filter rules out again.
        assert!(!(0..50).all(|i| filter.might_contain(hash(10_000_000 + i), 5_000, 1_000)));
        // Memory stays within the budget.
        assert!(filter.bytes() <= 8 * 1024);
    }
}
