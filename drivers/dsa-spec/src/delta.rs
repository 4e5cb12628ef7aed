//! The delta record of Create Delta (0x07) and Apply Delta (0x08) (DSA spec §8.3.8, §8.3.9): 10-byte
//! entries, each a little-endian u16 offset in 8-byte words followed by the 8 new bytes.

/// Bytes of one entry.
pub const ENTRY_SIZE: usize = 10;
/// Bytes of data one entry carries (and the unit of its offset).
pub const WORD: usize = 8;
/// The smallest maximum record size Create Delta accepts.
pub const MIN_MAX_RECORD_SIZE: u32 = 80;
/// Create Delta compares at most this many bytes (16-bit offsets in 8-byte words).
pub const MAX_COMPARE: u64 = 0x8_0000;

/// Whether Create Delta accepts `max` as the maximum record size (else status 0x15,
/// "Maximum Delta Record Size or Delta Record Size out of range" in the DSA
/// specification's completion status table): at least [`MIN_MAX_RECORD_SIZE`]. It need not
/// be a multiple of [`ENTRY_SIZE`]: only whole entries are written, so a record overflows
/// when the next entry would end past `max`. Intel's accel-config test client submits twice
/// the transfer size (8192 for 4 KiB) with a floor of 80; Intel's DML library checks for a
/// multiple of 10 before it submits, which is the library's rule, not a device status.
pub const fn max_record_size_valid(max: u32) -> bool {
    max >= MIN_MAX_RECORD_SIZE
}

/// Whether Apply Delta accepts `len` as the record size (else status 0x15).
pub const fn record_size_valid(len: u32) -> bool {
    len.is_multiple_of(ENTRY_SIZE as u32) && len >= ENTRY_SIZE as u32
}

/// The entry that sets word `word` to `new`.
pub fn entry(word: u16, new: &[u8; WORD]) -> [u8; ENTRY_SIZE] {
    let mut e = [0u8; ENTRY_SIZE];
    e[..2].copy_from_slice(&word.to_le_bytes());
    e[2..].copy_from_slice(new);
    e
}

/// The word offset and the new bytes of an entry.
pub fn decode(e: &[u8; ENTRY_SIZE]) -> (u16, [u8; WORD]) {
    let mut new = [0u8; WORD];
    new.copy_from_slice(&e[2..]);
    (u16::from_le_bytes([e[0], e[1]]), new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_sizes() {
        let e = entry(0x0102, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(e, [0x02, 0x01, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(decode(&e), (0x0102, [1, 2, 3, 4, 5, 6, 7, 8]));
        assert!(max_record_size_valid(80) && max_record_size_valid(90));
        assert!(max_record_size_valid(85) && max_record_size_valid(8192));
        assert!(!max_record_size_valid(70) && !max_record_size_valid(79));
        assert!(record_size_valid(10) && record_size_valid(20));
        assert!(!record_size_valid(0) && !record_size_valid(15));
        // The largest offset a u16 can name ends exactly at MAX_COMPARE.
        assert_eq!((u64::from(u16::MAX) + 1) * WORD as u64, MAX_COMPARE);
    }
}
