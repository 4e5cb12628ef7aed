//! CRC reference functions used by DSA operations (DSA spec §8.3.12, §8.3.14–§8.3.17, Appendices A and B): CRC-32C in the four
//! modes selected by descriptor flags 17/18, and the T10-DIF CRC16 guard.
//!
//! All four CRC-32C modes run on one reflected, table-driven engine; the modes only differ in
//! how the seed enters, whether each data byte is bit-reversed first, and how the result leaves:
//!
//! | flag 17 (bypass inv+refl) | flag 18 (bypass data refl) | init | data byte | result |
//! |---|---|---|---|---|
//! | 0 | 0 | `!seed` | as is | `!r` |
//! | 0 | 1 | `!seed` | bit-reversed | `!r` |
//! | 1 | 0 | `bitrev(seed)` | as is | `bitrev(r)` |
//! | 1 | 1 | `bitrev(seed)` | bit-reversed | `bitrev(r)` (= MSB-first CRC, init seed, no xor) |
//!
//! In every mode the CRC of A‖B equals the CRC of B seeded with the CRC of A, which is what
//! partial-completion resume relies on.

/// Reflected CRC-32C polynomial (0x1EDC6F41 bit-reversed).
pub const CRC32C_POLY_REFLECTED: u32 = 0x82F6_3B78;
/// T10-DIF CRC16 polynomial (MSB-first).
pub const CRC16_T10DIF_POLY: u16 = 0x8BB7;

const fn make_crc32c_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut r = i as u32;
        let mut k = 0;
        while k < 8 {
            r = if r & 1 != 0 {
                (r >> 1) ^ CRC32C_POLY_REFLECTED
            } else {
                r >> 1
            };
            k += 1;
        }
        t[0][i] = r;
        i += 1;
    }
    let mut s = 1;
    while s < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
            i += 1;
        }
        s += 1;
    }
    t
}

static CRC32C_TABLES: [[u32; 256]; 8] = make_crc32c_tables();

const fn make_crc16_table() -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut r = (i as u16) << 8;
        let mut k = 0;
        while k < 8 {
            r = if r & 0x8000 != 0 {
                (r << 1) ^ CRC16_T10DIF_POLY
            } else {
                r << 1
            };
            k += 1;
        }
        t[i] = r;
        i += 1;
    }
    t
}

static CRC16_TABLE: [u16; 256] = make_crc16_table();

/// Runs the reflected engine over `data` from register value `r` (no inversion).
fn crc32c_raw(mut r: u32, data: &[u8]) -> u32 {
    let t = &CRC32C_TABLES;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = r ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        r = t[7][(lo & 0xFF) as usize]
            ^ t[6][((lo >> 8) & 0xFF) as usize]
            ^ t[5][((lo >> 16) & 0xFF) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xFF) as usize]
            ^ t[2][((hi >> 8) & 0xFF) as usize]
            ^ t[1][((hi >> 16) & 0xFF) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        r = (r >> 8) ^ t[0][((r ^ u32::from(b)) & 0xFF) as usize];
    }
    r
}

fn crc32c_raw_rev_bytes(mut r: u32, data: &[u8]) -> u32 {
    let t = &CRC32C_TABLES[0];
    for &b in data {
        r = (r >> 8) ^ t[((r ^ u32::from(b.reverse_bits())) & 0xFF) as usize];
    }
    r
}

/// CRC-32C mode selected by descriptor flags 17 and 18.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CrcMode {
    /// Flag 17: bypass CRC inversion and reflection.
    pub bypass_inv_refl: bool,
    /// Flag 18: bypass data reflection.
    pub bypass_data_refl: bool,
}

/// Incremental CRC-32C as a DSA CRC Generation / Copy with CRC computes it.
#[derive(Clone, Copy, Debug)]
pub struct Crc32c {
    r: u32,
    mode: CrcMode,
}

impl Crc32c {
    /// A CRC started from the descriptor's seed under `mode`.
    pub fn new(seed: u32, mode: CrcMode) -> Self {
        let r = if mode.bypass_inv_refl {
            seed.reverse_bits()
        } else {
            !seed
        };
        Crc32c { r, mode }
    }
    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.r = if self.mode.bypass_data_refl {
            crc32c_raw_rev_bytes(self.r, data)
        } else {
            crc32c_raw(self.r, data)
        };
    }
    /// The CRC of everything so far (also the seed to continue with).
    pub fn value(&self) -> u32 {
        if self.mode.bypass_inv_refl {
            self.r.reverse_bits()
        } else {
            !self.r
        }
    }
}

/// One-shot DSA CRC-32C of `data` with `seed` in `mode`.
pub fn crc32c_dsa(seed: u32, data: &[u8], mode: CrcMode) -> u32 {
    let mut c = Crc32c::new(seed, mode);
    c.update(data);
    c.value()
}

/// Standard CRC-32C (seed 0, default mode): check("123456789") = 0xE3069283.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c_dsa(0, data, CrcMode::default())
}

/// Bit-by-bit CRC-32C reference of the default mode (slow; used to test the tables).
pub fn crc32c_bitwise(seed: u32, data: &[u8]) -> u32 {
    let mut r = !seed;
    for &b in data {
        r ^= u32::from(b);
        for _ in 0..8 {
            r = if r & 1 != 0 {
                (r >> 1) ^ CRC32C_POLY_REFLECTED
            } else {
                r >> 1
            };
        }
    }
    !r
}

/// T10-DIF CRC16 (poly 0x8BB7, MSB-first, no final xor) continuing from `crc`.
pub fn crc16_t10dif(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc = (crc << 8) ^ CRC16_TABLE[(((crc >> 8) as u8) ^ b) as usize];
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;
    const CHECK: &[u8] = b"123456789";

    fn m(a: bool, b: bool) -> CrcMode {
        CrcMode {
            bypass_inv_refl: a,
            bypass_data_refl: b,
        }
    }

    #[test]
    fn crc32c_check_values() {
        assert_eq!(crc32c(CHECK), 0xE306_9283);
        assert_eq!(crc32c_dsa(0xFFFF_FFFF, CHECK, m(false, false)), 0xA71C_05DF);
        assert_eq!(crc32c(&[0, 0, 0, 0]), 0x4867_4BC7);
        assert_eq!(crc32c_dsa(0x1234_5678, &[], m(false, false)), 0x1234_5678);
        assert_eq!(crc32c_dsa(0, CHECK, m(true, true)), 0xC052_A8C8);
        assert_eq!(crc32c_dsa(0xFFFF_FFFF, CHECK, m(true, true)), 0xFABB_F0EA);
        assert_eq!(crc32c_dsa(0, CHECK, m(false, true)), 0xA8F0_22A0);
        assert_eq!(crc32c_dsa(0, CHECK, m(true, false)), 0x045F_C71A);
        for mode in [
            m(false, false),
            m(true, true),
            m(false, true),
            m(true, false),
        ] {
            assert_eq!(crc32c_dsa(0x55AA, &[], mode), 0x55AA, "{mode:?}");
        }
    }

    #[test]
    fn crc32c_chaining_all_modes() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for mode in [
            m(false, false),
            m(true, true),
            m(false, true),
            m(true, false),
        ] {
            for seed in [0, 0xFFFF_FFFF, 0x1357_9BDF] {
                let whole = crc32c_dsa(seed, &data, mode);
                for split in [0, 1, 7, 8, 9, 500, 999, 1000] {
                    let a = crc32c_dsa(seed, &data[..split], mode);
                    assert_eq!(
                        crc32c_dsa(a, &data[split..], mode),
                        whole,
                        "{mode:?} {seed:#x} {split}"
                    );
                }
            }
        }
    }

    #[test]
    fn tables_match_bitwise() {
        let data: Vec<u8> = (0..517u32).map(|i| (i * 131 + 17) as u8).collect();
        for len in [0, 1, 7, 8, 9, 15, 16, 63, 517] {
            assert_eq!(
                crc32c_dsa(0xABCD, &data[..len], CrcMode::default()),
                crc32c_bitwise(0xABCD, &data[..len])
            );
        }
    }

    #[test]
    fn crc16_check() {
        assert_eq!(crc16_t10dif(0, CHECK), 0xD0DB);
        let a = crc16_t10dif(0, &CHECK[..4]);
        assert_eq!(crc16_t10dif(a, &CHECK[4..]), 0xD0DB);
    }
}
