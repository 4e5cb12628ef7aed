//! The per-CPU "armed" set: which handle slots of one CPU may have completions to deliver.
//!
//! A two-level bitmap of atomics: any CPU sets a slot's bit with two `fetch_or`s (lock-free,
//! wait-free), only the owning CPU's interrupt handler scans and clears. The summary level
//! keeps a scan proportional to the armed slots plus one word per 4096 slots, instead of
//! proportional to every handle on the CPU.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

pub(crate) struct ArmedSet {
    summary: Box<[AtomicU64]>,
    words: Box<[AtomicU64]>,
}

/// What one scan touched (for the cost counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ScanCost {
    pub summary_words: u32,
    pub words: u32,
}

impl ArmedSet {
    /// A set for slots `0..capacity` (rounded up to whole words).
    pub fn new(capacity: u32) -> ArmedSet {
        let words = (capacity as usize).div_ceil(64).max(1);
        let summary = words.div_ceil(64);
        let mk = |n: usize| -> Box<[AtomicU64]> {
            let mut v = Vec::with_capacity(n);
            v.resize_with(n, || AtomicU64::new(0));
            v.into_boxed_slice()
        };
        ArmedSet {
            summary: mk(summary),
            words: mk(words),
        }
    }

    /// Marks `slot` armed. Out-of-range slots are ignored (a stale location).
    ///
    /// The word bit is set before the summary bit; [`scan`](Self::scan) clears a summary bit
    /// before re-reading its word, so one of the two always sees the other.
    #[inline]
    pub fn set(&self, slot: u32) {
        let w = slot as usize / 64;
        let Some(word) = self.words.get(w) else {
            return;
        };
        word.fetch_or(1 << (slot % 64), SeqCst);
        if let Some(s) = self.summary.get(w / 64) {
            // Already set (the usual case): nothing to do. A scan clearing it concurrently
            // re-reads the word after its clear (both sequentially consistent) and sees the
            // bit just set, so skipping the store cannot lose the arming.
            if s.load(SeqCst) & (1 << (w % 64)) == 0 {
                s.fetch_or(1 << (w % 64), SeqCst);
            }
        }
    }

    /// Clears `slot` (its summary bit is cleaned lazily by the next scan).
    pub fn clear(&self, slot: u32) {
        if let Some(word) = self.words.get(slot as usize / 64) {
            word.fetch_and(!(1 << (slot % 64)), SeqCst);
        }
    }

    pub fn is_set(&self, slot: u32) -> bool {
        self.words
            .get(slot as usize / 64)
            .is_some_and(|w| w.load(SeqCst) & (1 << (slot % 64)) != 0)
    }

    /// Calls `f` for every slot armed when its word is read. `f` may clear or set bits
    /// (including its own); a bit set during the scan may or may not be visited (the arming
    /// party's interrupt comes later and causes another scan).
    #[inline(always)]
    pub fn scan(&self, mut f: impl FnMut(u32)) -> ScanCost {
        let mut cost = ScanCost::default();
        let summary = &*self.summary;
        let words = &*self.words;
        let mut si = 0;
        while si < summary.len() {
            let s = &summary[si];
            cost.summary_words += 1;
            let mut sbits = s.load(SeqCst);
            while sbits != 0 {
                let b = sbits.trailing_zeros();
                sbits &= sbits - 1;
                let wi = si * 64 + b as usize;
                let Some(word) = words.get(wi) else {
                    continue;
                };
                cost.words += 1;
                let mut bits = word.load(SeqCst);
                if bits == 0 {
                    // Possibly stale summary bit: clear it, then look again so that an arming
                    // racing with the clear is not lost.
                    s.fetch_and(!(1 << b), SeqCst);
                    bits = word.load(SeqCst);
                    if bits == 0 {
                        continue;
                    }
                    s.fetch_or(1 << b, SeqCst);
                }
                while bits != 0 {
                    let t = bits.trailing_zeros();
                    bits &= bits - 1;
                    f((wi * 64) as u32 + t);
                }
            }
            si += 1;
        }
        cost
    }

    /// Number of armed slots (diagnostics; not for the hot path).
    pub fn count(&self) -> u32 {
        self.words.iter().map(|w| w.load(SeqCst).count_ones()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(s: &ArmedSet) -> Vec<u32> {
        let mut v = Vec::new();
        s.scan(|x| v.push(x));
        v
    }

    #[test]
    fn set_scan_clear() {
        let s = ArmedSet::new(8192);
        assert!(collect(&s).is_empty());
        for x in [0, 63, 64, 4095, 4096, 8191] {
            s.set(x);
        }
        assert_eq!(collect(&s), vec![0, 63, 64, 4095, 4096, 8191]);
        assert_eq!(s.count(), 6);
        s.clear(64);
        s.clear(8191);
        assert_eq!(collect(&s), vec![0, 63, 4095, 4096]);
        assert!(s.is_set(4095) && !s.is_set(64));
        // Out of range: ignored.
        s.set(8192 + 64 * 64);
        assert_eq!(s.count(), 4);
    }

    #[test]
    fn stale_summary_is_cleaned_and_rearm_seen() {
        let s = ArmedSet::new(128);
        s.set(70);
        s.clear(70);
        let c = s.scan(|_| panic!("nothing armed"));
        assert_eq!(
            c.words, 1,
            "the stale summary bit made the scan look at the word once"
        );
        let c = s.scan(|_| panic!("nothing armed"));
        assert_eq!(c.words, 0, "the stale summary bit was cleaned");
        s.set(71);
        assert_eq!(collect(&s), vec![71]);
    }

    #[test]
    fn scan_cost_is_proportional_to_armed_words() {
        let s = ArmedSet::new(8192);
        s.set(5000);
        let c = s.scan(|_| {});
        assert_eq!(
            c,
            ScanCost {
                summary_words: 2,
                words: 1
            }
        );
    }

    #[test]
    fn callback_may_clear_and_rearm_itself() {
        let s = ArmedSet::new(256);
        for x in 0..256 {
            s.set(x);
        }
        let mut seen = 0;
        s.scan(|x| {
            seen += 1;
            s.clear(x);
            if x % 2 == 0 {
                s.set(x);
            }
        });
        assert_eq!(seen, 256);
        assert_eq!(s.count(), 128);
    }

    #[test]
    fn concurrent_arming_is_never_lost() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        let s = Arc::new(ArmedSet::new(4096));
        let stop = Arc::new(AtomicBool::new(false));
        // A consumer that keeps scanning and clearing; every bit a producer sets must be
        // observed by some scan.
        let seen: Arc<Vec<AtomicU64>> = Arc::new((0..4096).map(|_| AtomicU64::new(0)).collect());
        let consumer = {
            let (s, stop, seen) = (s.clone(), stop.clone(), seen.clone());
            std::thread::spawn(move || {
                while !stop.load(SeqCst) {
                    s.scan(|x| {
                        s.clear(x);
                        seen[x as usize].fetch_add(1, SeqCst);
                    });
                }
                s.scan(|x| {
                    s.clear(x);
                    seen[x as usize].fetch_add(1, SeqCst);
                });
            })
        };
        let producers: Vec<_> = (0..4)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for x in (t..4096).step_by(4) {
                        s.set(x as u32);
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        stop.store(true, SeqCst);
        consumer.join().unwrap();
        for (i, c) in seen.iter().enumerate() {
            assert!(c.load(SeqCst) >= 1, "slot {i} armed but never scanned");
        }
        assert_eq!(s.count(), 0);
    }
}
