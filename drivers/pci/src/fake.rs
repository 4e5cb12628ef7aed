//! An in-memory configuration space for host tests (feature `fake`, always on under `cfg(test)`).
//!
//! Each function is 4 KiB of bytes with a per-byte write mask and RW1C mask, the way QEMU models
//! config space, so BAR sizing (write all-ones, read back the mask) behaves like hardware.
//! Every write is logged with the command register value in force at that moment, so tests can
//! check e.g. that BARs were only written while decode was disabled.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use pci_types::{ConfigRegionAccess, PciAddress};

/// One fake function's 4 KiB configuration space.
pub struct FakeFunction {
    /// The register bytes, as a read returns them.
    pub cfg: Vec<u8>,
    /// Per-byte write mask: a write changes only the bits set here.
    pub wmask: Vec<u8>,
    /// Per-byte write-1-to-clear mask: writing 1 to these bits clears them.
    pub w1c: Vec<u8>,
}

impl FakeFunction {
    fn new() -> Self {
        Self {
            cfg: vec![0; 4096],
            wmask: vec![0; 4096],
            w1c: vec![0; 4096],
        }
    }
    /// The dword at byte `off` (all-ones past the end).
    pub fn read32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.cfg[off..off + 4].try_into().unwrap_or([0xff; 4]))
    }
    /// Sets the dword at byte `off`, ignoring the write masks.
    pub fn set32(&mut self, off: usize, v: u32) {
        self.cfg[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    /// Sets the word at byte `off`, ignoring the write masks.
    pub fn set16(&mut self, off: usize, v: u16) {
        self.cfg[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    /// Sets the byte at `off`, ignoring the write masks.
    pub fn set8(&mut self, off: usize, v: u8) {
        self.cfg[off] = v;
    }
    /// Sets the write mask of the dword at byte `off`.
    pub fn set_wmask32(&mut self, off: usize, m: u32) {
        self.wmask[off..off + 4].copy_from_slice(&m.to_le_bytes());
    }
}

/// One logged config write: (function, offset, value, command register before the write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteRecord {
    /// The function written.
    pub addr: PciAddress,
    /// Config-space offset (dword aligned).
    pub offset: u16,
    /// The dword written, before the write masks apply.
    pub value: u32,
    /// The function's command register when the write arrived.
    pub command_before: u16,
}

/// A configuration space of fake functions; absent functions read all-ones.
#[derive(Default)]
pub struct FakeConfigSpace {
    funcs: RefCell<BTreeMap<PciAddress, FakeFunction>>,
    /// Every write, in order.
    pub writes: RefCell<Vec<WriteRecord>>,
    /// Number of reads so far.
    pub reads: RefCell<usize>,
}

impl FakeConfigSpace {
    /// An empty configuration space.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a function with a type-0 (endpoint) or type-1 (bridge) header.
    /// `class` = (base class, subclass, prog-if).
    pub fn add_function(
        &self,
        addr: PciAddress,
        vendor: u16,
        device: u16,
        class: (u8, u8, u8),
        header_type: u8,
    ) {
        let mut f = FakeFunction::new();
        f.set16(0, vendor);
        f.set16(2, device);
        f.set8(0x08, 1); // revision
        f.set8(0x09, class.2);
        f.set8(0x0a, class.1);
        f.set8(0x0b, class.0);
        f.set8(0x0e, header_type);
        // Command: IO, MEM, BME, INTx disable are writable; status upper byte RW1C.
        f.wmask[4] = 0x07;
        f.wmask[5] = 0x04;
        f.w1c[7] = 0xf9;
        if header_type & 0x7f == 1 {
            // Primary/secondary/subordinate bus numbers writable.
            f.wmask[0x18] = 0xff;
            f.wmask[0x19] = 0xff;
            f.wmask[0x1a] = 0xff;
        }
        self.funcs.borrow_mut().insert(addr, f);
    }

    /// Runs `f` on the function at `addr` (panics if it was not added).
    pub fn with<R>(&self, addr: PciAddress, f: impl FnOnce(&mut FakeFunction) -> R) -> R {
        let mut funcs = self.funcs.borrow_mut();
        let func = funcs.get_mut(&addr).expect("fake function not added");
        f(func)
    }

    /// Sets a bridge's primary, secondary and subordinate bus numbers.
    pub fn set_bridge_buses(&self, addr: PciAddress, primary: u8, secondary: u8, subordinate: u8) {
        self.with(addr, |f| {
            f.set8(0x18, primary);
            f.set8(0x19, secondary);
            f.set8(0x1a, subordinate);
        });
    }

    /// A memory BAR of `size` bytes (power of two ≥ 16) at `slot`, programmed to `address`.
    pub fn add_mem_bar(
        &self,
        addr: PciAddress,
        slot: usize,
        size: u64,
        address: u64,
        is64: bool,
        prefetch: bool,
    ) {
        assert!(size.is_power_of_two() && size >= 16);
        self.with(addr, |f| {
            let off = 0x10 + 4 * slot;
            let mask = !(size - 1);
            let ty = (if is64 { 0b100 } else { 0 }) | (if prefetch { 0b1000 } else { 0 });
            f.set32(off, (address as u32 & 0xffff_fff0) | ty);
            f.set_wmask32(off, mask as u32 & 0xffff_fff0);
            if is64 {
                f.set32(off + 4, (address >> 32) as u32);
                f.set_wmask32(off + 4, (mask >> 32) as u32);
            }
        });
    }

    /// An I/O BAR of `size` bytes (power of two ≥ 4) at `slot`, programmed to `port`.
    pub fn add_io_bar(&self, addr: PciAddress, slot: usize, size: u32, port: u32) {
        self.with(addr, |f| {
            let off = 0x10 + 4 * slot;
            f.set32(off, (port & 0xffff_fffc) | 1);
            f.set_wmask32(off, !(size - 1) & 0xffff_fffc);
        });
    }

    /// Appends a standard capability at `offset` with the given body dwords (the first dword's
    /// low 16 bits are replaced by id/next). Links it at the end of the list.
    pub fn add_cap(&self, addr: PciAddress, offset: u8, id: u8, body: &[u32], wmask: &[u32]) {
        self.with(addr, |f| {
            let status = f.read32(4) | (1 << 20);
            f.set32(4, status);
            // Find the tail of the list.
            let mut link = 0x34usize;
            let mut guard = 0;
            while f.cfg[link] != 0 && guard < 64 {
                link = usize::from(f.cfg[link]) + 1;
                guard += 1;
            }
            f.cfg[link] = offset;
            let o = usize::from(offset);
            for (i, d) in body.iter().enumerate() {
                f.set32(o + 4 * i, *d);
            }
            f.cfg[o] = id;
            f.cfg[o + 1] = 0;
            for (i, m) in wmask.iter().enumerate() {
                f.set_wmask32(o + 4 * i, *m);
            }
        });
    }

    /// Writes an extended capability header + body at `offset` (caller links via `next`).
    pub fn put_ext_cap(
        &self,
        addr: PciAddress,
        offset: u16,
        id: u16,
        version: u8,
        next: u16,
        body: &[u32],
    ) {
        self.with(addr, |f| {
            let o = usize::from(offset);
            f.set32(
                o,
                u32::from(id) | (u32::from(version & 0xf) << 16) | (u32::from(next) << 20),
            );
            for (i, d) in body.iter().enumerate() {
                f.set32(o + 4 + 4 * i, *d);
            }
        });
    }

    /// Reads a dword without counting it in [`FakeConfigSpace::reads`].
    pub fn raw_read(&self, addr: PciAddress, offset: u16) -> u32 {
        self.funcs
            .borrow()
            .get(&addr)
            .map_or(u32::MAX, |f| f.read32(usize::from(offset)))
    }
}

impl ConfigRegionAccess for FakeConfigSpace {
    unsafe fn read(&self, address: PciAddress, offset: u16) -> u32 {
        *self.reads.borrow_mut() += 1;
        assert!(
            offset & 3 == 0 && offset < 0x1000,
            "bad config read offset {offset:#x}"
        );
        self.raw_read(address, offset)
    }

    unsafe fn write(&self, address: PciAddress, offset: u16, value: u32) {
        assert!(
            offset & 3 == 0 && offset < 0x1000,
            "bad config write offset {offset:#x}"
        );
        let mut funcs = self.funcs.borrow_mut();
        let Some(f) = funcs.get_mut(&address) else {
            return;
        };
        let command_before = u16::from_le_bytes([f.cfg[4], f.cfg[5]]);
        self.writes.borrow_mut().push(WriteRecord {
            addr: address,
            offset,
            value,
            command_before,
        });
        let o = usize::from(offset);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            let wm = f.wmask[o + i];
            let c = f.w1c[o + i];
            let old = f.cfg[o + i];
            f.cfg[o + i] = ((old & !wm) | (b & wm)) & !(b & c);
        }
    }
}
