//! A DSA work descriptor copied from ring 3 (`klib::usersubmit::validate`), as the
//! `dsa_submit` system call validates it before it reaches a shared work queue.
//!
//! Input: 64 descriptor bytes (missing bytes read as 0), then the caller's PASID (u32), a
//! limit selector and the device's maximum transfer size, and the one interrupt-handle id
//! the process holds with the device handle it maps to.
//!
//! Beyond "does not panic": an accepted descriptor carries the caller's PASID with
//! privilege 0 and bits 30:20 zero in dword 0 (DSA spec §8.1.1), is otherwise byte for byte
//! what the process wrote except the interrupt handle (translated from the process's id
//! exactly when Request Completion Interrupt is set), has a whitelisted opcode (never Batch),
//! CRAV and RCR with only cache control and RCI added, a 32-byte aligned completion record
//! in the user half (§8.1.4), a transfer size of 1 ..= the device's maximum, and every
//! address operand inside the user half. A reference validator written here from the
//! descriptor layout (§8.1, Table 8-1) must give the same verdict and the same bytes.
//!
//! Seeds (`corpus/usersubmit/`): one accepted descriptor per whitelisted opcode (PASID 5,
//! the 2 MiB limit, handle id 3 held and mapped to device handle 0x1234), No-op and Memory
//! Move also with RCI, and `top` with its operands and completion record ending at
//! `USER_TOP`. `cargo test -p fuzz` checks that each is accepted.

use dsa_spec::{DescFlags, Opcode};
use klib::usersubmit::{COMPLETION_ALIGN, DescError, Limits, validate};
use user_abi::{USER_BASE, USER_TOP};

use super::Bytes;

const CRAV: u32 = 1 << 2;
const RCR: u32 = 1 << 3;
const RCI: u32 = 1 << 4;
const CACHE_CONTROL: u32 = 1 << 8;

fn le(b: &[u8]) -> u64 {
    b.iter().rev().fold(0, |v, &x| v << 8 | u64::from(x))
}

/// `[a, a + n)` inside `[USER_BASE, USER_TOP)`, computed in 128 bits (no wrap to reason
/// about).
fn in_user_half(a: u64, n: u64) -> bool {
    a >= USER_BASE && u128::from(a) + u128::from(n) <= u128::from(USER_TOP)
}

/// The verdict of the reference validator, by the same names as `DescError`.
fn reference(
    raw: &[u8; 64],
    pasid: u32,
    max: u64,
    held: (u16, u16),
) -> Result<[u8; 64], DescError> {
    let opcode = raw[7];
    let flags = le(&raw[4..7]) as u32;
    let completion = le(&raw[8..16]);
    let (addr1, addr2) = (le(&raw[16..24]), le(&raw[24..32]));
    let size = le(&raw[32..36]);
    let handle = le(&raw[36..38]) as u16;
    let reserved = le(&raw[38..40]);
    // (opcode, operand 1 is an address, operand 2 is an address): §8.3's operations.
    let (a1, a2) = match opcode {
        0x01 => return Err(DescError::Batch),
        0x00 => (false, false),
        0x03 | 0x05 | 0x11 => (true, true),
        0x04 => (false, true),
        0x06 | 0x10 => (true, false),
        o => return Err(DescError::Opcode(o)),
    };
    if flags & (CRAV | RCR) != CRAV | RCR || flags & !(CRAV | RCR | RCI | CACHE_CONTROL) != 0 {
        return Err(DescError::Flags(flags));
    }
    if !completion.is_multiple_of(32) || !in_user_half(completion, 32) {
        return Err(DescError::Completion(completion));
    }
    let interrupt = flags & RCI != 0;
    if (!interrupt && handle != 0) || reserved != 0 {
        return Err(DescError::Reserved);
    }
    if opcode != 0 && (size == 0 || size > max) {
        return Err(DescError::Size(size as u32));
    }
    for (is_addr, a) in [(a1, addr1), (a2, addr2)] {
        if is_addr && !in_user_half(a, size) {
            return Err(DescError::Address(a));
        }
    }
    let mut out = *raw;
    if interrupt {
        if handle != held.0 {
            return Err(DescError::Handle(handle));
        }
        out[36..38].copy_from_slice(&held.1.to_le_bytes());
    }
    out[0..4].copy_from_slice(&(pasid & 0xf_ffff).to_le_bytes());
    Ok(out)
}

pub fn run(data: &[u8]) {
    let mut raw = [0u8; 64];
    let n = data.len().min(64);
    raw[..n].copy_from_slice(&data[..n]);
    let mut b = Bytes(data.get(64..).unwrap_or(&[]));
    let pasid = b.u32();
    let max = match b.u8() & 3 {
        0 => 1 << 21,
        1 => 1 << 31,
        2 => u64::from(u32::MAX),
        _ => b.u64(),
    };
    let held = (b.u16(), b.u16());
    let mut calls = Vec::new();
    let limits = Limits { max_transfer: max };
    let got = validate(&raw, pasid, &limits, |id| {
        calls.push(id);
        (id == held.0).then_some(held.1)
    });
    let want = reference(&raw, pasid, max, held);
    assert_eq!(got, want, "validate and the reference disagree");
    let flags = le(&raw[4..7]) as u32;
    match got {
        Ok(out) => {
            let w0 = u32::from_le_bytes(out[0..4].try_into().unwrap_or_default());
            assert_eq!(w0, pasid & 0xf_ffff, "dword 0: caller's PASID, privilege 0");
            assert_eq!(out[4..36], raw[4..36], "bytes 4..36 as written");
            assert_eq!(out[38..], raw[38..], "bytes 38..64 as written");
            let op = Opcode::from_u8(out[7]).expect("an accepted opcode is known");
            assert!(
                matches!(
                    op,
                    Opcode::Noop
                        | Opcode::MemMove
                        | Opcode::Fill
                        | Opcode::Compare
                        | Opcode::ComparePattern
                        | Opcode::CrcGen
                        | Opcode::CopyCrc
                ),
                "{op:?} accepted"
            );
            let f = DescFlags::from_bits_retain(flags);
            assert!(f.contains(DescFlags::CRAV | DescFlags::RCR));
            let cr = le(&out[8..16]);
            assert!(cr.is_multiple_of(COMPLETION_ALIGN) && in_user_half(cr, COMPLETION_ALIGN));
            let size = le(&out[32..36]);
            assert!(
                op == Opcode::Noop || (1..=max).contains(&size),
                "size {size}"
            );
            if f.contains(DescFlags::RCI) {
                assert_eq!(calls, [held.0], "the process's id is translated once");
                assert_eq!(le(&out[36..38]) as u16, held.1, "the device's handle");
            } else {
                assert!(calls.is_empty(), "no translation without RCI");
                assert_eq!(le(&out[36..38]), 0);
            }
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            if raw[7] == Opcode::Batch as u8 {
                assert_eq!(e, DescError::Batch);
            }
            // A refused descriptor never had its handle id translated to a device handle
            // unless only the translation failed.
            assert!(calls.is_empty() || e == DescError::Handle(calls[0]));
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every committed seed is accepted (one per whitelisted opcode, with and without RCI).
    #[test]
    fn every_seed_is_accepted() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/usersubmit");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let input = std::fs::read(&p).unwrap();
            let mut raw = [0u8; 64];
            raw.copy_from_slice(&input[..64]);
            let held = u16::from_le_bytes([input[69], input[70]]);
            let r = klib::usersubmit::validate(
                &raw,
                1,
                &klib::usersubmit::Limits {
                    max_transfer: 1 << 21,
                },
                |id| (id == held).then_some(7),
            );
            assert!(r.is_ok(), "{}: {r:?}", p.display());
            super::run(&input);
            n += 1;
        }
        assert!(n >= 7);
    }
}

#[cfg(test)]
mod reach {
    use std::collections::BTreeSet;

    use klib::usersubmit::{Limits, validate};

    use crate::targets::mutated;

    /// The mutated inputs reach acceptance (with and without an interrupt) and every
    /// refusal: 20 000 inputs of seed 1.
    #[test]
    fn mutations_reach_acceptance_and_every_refusal() {
        let (mut ok, mut ok_rci, mut kinds) = (0, 0, BTreeSet::new());
        for input in mutated("usersubmit", 20_000) {
            super::run(&input);
            let mut raw = [0u8; 64];
            let n = input.len().min(64);
            raw[..n].copy_from_slice(&input[..n]);
            let lim = Limits {
                max_transfer: 1 << 21,
            };
            match validate(&raw, 1, &lim, |id| (id == 3).then_some(9)) {
                Ok(out) => {
                    ok += 1;
                    ok_rci += usize::from(out[4] & 0x10 != 0);
                }
                Err(e) => {
                    kinds.insert(format!("{e:?}").split('(').next().unwrap().to_string());
                }
            }
        }
        eprintln!("accepted {ok} ({ok_rci} with RCI), refusals {kinds:?}");
        assert!(
            ok > 1000 && ok_rci > 100,
            "{ok} accepted, {ok_rci} with RCI"
        );
        assert_eq!(kinds.len(), 8, "{kinds:?}");
    }
}
