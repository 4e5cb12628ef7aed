//! A deterministic, seedable mutator: byte-level edits (flips, interesting values,
//! inserts, deletes, duplicated and spliced chunks, little-endian integer boundaries) and
//! dictionary tokens for the text formats. Same seed, same corpus → same inputs.

/// SplitMix64: small, fast, and fully determined by its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Integer values at the edges parsers get wrong.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    15,
    16,
    31,
    32,
    36,
    44,
    48,
    63,
    64,
    127,
    128,
    255,
    256,
    511,
    512,
    1023,
    1024,
    4095,
    4096,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    1 << 52,
    (1 << 52) - 4096,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    0xffff_ffff_ffff_f000,
    0xffff_ffff_ffff_fff8,
    u64::MAX,
];

/// Upper bound on a mutated input (the parsers' own limits are smaller or equal).
pub const MAX_LEN: usize = 64 * 1024;

/// Applies 1..=8 stacked mutations to `data`. `other` is another corpus entry for
/// splicing; `dict` holds tokens of the input's language (may be empty).
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8], dict: &[&[u8]]) {
    let rounds = 1 + rng.below(8);
    for _ in 0..rounds {
        mutate_once(rng, data, other, dict);
    }
    data.truncate(MAX_LEN);
}

fn mutate_once(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8], dict: &[&[u8]]) {
    let kinds = if dict.is_empty() { 11 } else { 14 };
    if data.is_empty() {
        data.push(rng.next_u64() as u8);
        return;
    }
    let len = data.len();
    match rng.below(kinds) {
        // Flip one bit.
        0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        // Random byte.
        1 => {
            let i = rng.below(len);
            data[i] = rng.next_u64() as u8;
        }
        // Interesting byte.
        2 => {
            let i = rng.below(len);
            data[i] = *[
                0u8, 1, 0x7f, 0x80, 0xff, b'0', b'9', b' ', b'"', b'\\', b',', b':',
            ]
            .get(rng.below(12))
            .unwrap_or(&0);
        }
        // Interesting little-endian integer of 2, 4 or 8 bytes, possibly ± a small delta.
        3 => {
            let w = [2usize, 4, 8][rng.below(3)];
            if len >= w {
                let i = rng.below(len - w + 1);
                let mut v = INTERESTING[rng.below(INTERESTING.len())];
                if rng.chance(4) {
                    v = v.wrapping_add(rng.below(9) as u64).wrapping_sub(4);
                }
                data[i..i + w].copy_from_slice(&v.to_le_bytes()[..w]);
            }
        }
        // Add or subtract a small value from a byte.
        4 => {
            let i = rng.below(len);
            data[i] = data[i].wrapping_add((rng.below(33) as u8).wrapping_sub(16));
        }
        // Delete a chunk.
        5 => {
            let n = 1 + rng.below(len.min(64));
            let i = rng.below(len - n + 1);
            data.drain(i..i + n);
        }
        // Insert random bytes.
        6 => {
            let n = 1 + rng.below(16);
            let i = rng.below(len + 1);
            for k in 0..n {
                data.insert(i + k, rng.next_u64() as u8);
            }
        }
        // Duplicate a chunk somewhere else.
        7 => {
            let n = 1 + rng.below(len.min(128));
            let s = rng.below(len - n + 1);
            let chunk: Vec<u8> = data[s..s + n].to_vec();
            let at = rng.below(data.len() + 1);
            data.splice(at..at, chunk);
        }
        // Truncate.
        8 => {
            let n = rng.below(len);
            data.truncate(n);
        }
        // Splice in a chunk of another corpus entry.
        9 => {
            if !other.is_empty() {
                let n = 1 + rng.below(other.len().min(256));
                let s = rng.below(other.len() - n + 1);
                let at = rng.below(len + 1);
                let end = (at + n).min(len);
                data.splice(at..end, other[s..s + n].iter().copied());
            }
        }
        // Swap two bytes.
        10 => {
            let (a, b) = (rng.below(len), rng.below(len));
            data.swap(a, b);
        }
        // Insert a dictionary token.
        11 => {
            let t = dict[rng.below(dict.len())];
            let at = rng.below(len + 1);
            data.splice(at..at, t.iter().copied());
        }
        // Overwrite with a dictionary token.
        12 => {
            let t = dict[rng.below(dict.len())];
            let at = rng.below(len);
            let end = (at + t.len()).min(len);
            data.splice(at..end, t.iter().copied());
        }
        // Repeat a token many times (deep nesting, long lists).
        _ => {
            let t = dict[rng.below(dict.len())];
            let n = 1 + rng.below(200);
            let at = rng.below(len + 1);
            let rep: Vec<u8> = t.iter().copied().cycle().take(t.len() * n).collect();
            data.splice(at..at, rep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_inputs() {
        let run = |seed| {
            let mut r = Rng::new(seed);
            let mut d = b"[{\"dev\":\"dsa0\"}]".to_vec();
            for _ in 0..100 {
                mutate(&mut r, &mut d, b"xyz", &[b"\"", b"{"]);
            }
            d
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
