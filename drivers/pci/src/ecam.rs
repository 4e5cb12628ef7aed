//! ECAM (PCIe enhanced configuration access mechanism; PCI Express Base Specification rev 6.0,
//! §7.2.2) windows, one per MCFG allocation (PCI Firmware Specification rev 3.3, §4.1.2).
//!
//! One MCFG allocation = one [`EcamWindow`]: a base address, a segment and a bus range. Function
//! `seg:bus:dev.fn` register `off` lives at `base + ((bus - start) << 20 | dev << 15 | fn << 12 | off)`.
//! The MMIO itself goes through a [`hwio::Registers`] window (32-bit accesses only), which the
//! kernel implements over its uncached MMIO windows; host tests use a fake.

use alloc::vec::Vec;
use hwio::Registers;
use pci_types::{ConfigRegionAccess, PciAddress};

/// Size of the ECAM area of `buses` buses.
pub const fn ecam_size(bus_start: u8, bus_end: u8) -> usize {
    ((bus_end as usize).saturating_sub(bus_start as usize) + 1) << 20
}

/// One MCFG allocation.
#[derive(Debug, Clone)]
pub struct EcamWindow<M: Registers> {
    mmio: M,
    /// PCI segment group number (MCFG "PCI Segment Group Number").
    pub segment: u16,
    /// First bus decoded by the window (MCFG "Start Bus Number").
    pub bus_start: u8,
    /// Last bus decoded by the window, inclusive (MCFG "End Bus Number").
    pub bus_end: u8,
}

impl<M: Registers> EcamWindow<M> {
    /// `mmio` must cover [`ecam_size`]`(bus_start, bus_end)` bytes starting at the allocation's
    /// base (for MCFG entries whose base is given for bus 0 but whose range starts later, the
    /// caller offsets the base by `bus_start << 20`, as the PCI firmware spec defines it).
    pub fn new(mmio: M, segment: u16, bus_start: u8, bus_end: u8) -> Self {
        Self {
            mmio,
            segment,
            bus_start,
            bus_end,
        }
    }

    /// Whether `addr` is in this window's segment and bus range.
    pub fn covers(&self, addr: PciAddress) -> bool {
        addr.segment() == self.segment && (self.bus_start..=self.bus_end).contains(&addr.bus())
    }

    /// Byte offset of a register inside the window, or None when the address is not ours or
    /// the offset is not a dword inside the 4 KiB function space.
    pub fn offset_of(&self, addr: PciAddress, offset: u16) -> Option<u64> {
        if !self.covers(addr) || offset >= 0x1000 || offset & 3 != 0 {
            return None;
        }
        let bus = u64::from(addr.bus() - self.bus_start);
        Some(
            (bus << 20)
                | (u64::from(addr.device()) << 15)
                | (u64::from(addr.function()) << 12)
                | u64::from(offset),
        )
    }
}

impl<M: Registers> ConfigRegionAccess for EcamWindow<M> {
    /// Addresses outside the window read as all-ones, like a master abort.
    unsafe fn read(&self, address: PciAddress, offset: u16) -> u32 {
        match self.offset_of(address, offset) {
            Some(o) => self.mmio.read32(o),
            None => u32::MAX,
        }
    }

    unsafe fn write(&self, address: PciAddress, offset: u16, value: u32) {
        if let Some(o) = self.offset_of(address, offset) {
            self.mmio.write32(o, value);
        }
    }
}

/// All MCFG windows of the platform; dispatches by segment and bus.
#[derive(Debug, Clone, Default)]
pub struct Ecam<M: Registers> {
    windows: Vec<EcamWindow<M>>,
}

impl<M: Registers> Ecam<M> {
    /// No windows: every access reads all-ones until [`Ecam::add`].
    pub fn new() -> Self {
        Self {
            windows: Vec::new(),
        }
    }

    /// Adds one MCFG allocation.
    pub fn add(&mut self, window: EcamWindow<M>) {
        self.windows.push(window);
    }

    /// The windows, in the order they were added.
    pub fn windows(&self) -> &[EcamWindow<M>] {
        &self.windows
    }

    /// The segment ranges to hand to [`crate::enumerate()`].
    pub fn segment_ranges(&self) -> Vec<crate::SegmentRange> {
        self.windows
            .iter()
            .map(|w| crate::SegmentRange {
                segment: w.segment,
                bus_start: w.bus_start,
                bus_end: w.bus_end,
            })
            .collect()
    }

    fn window(&self, addr: PciAddress) -> Option<&EcamWindow<M>> {
        self.windows.iter().find(|w| w.covers(addr))
    }
}

impl<M: Registers> ConfigRegionAccess for Ecam<M> {
    unsafe fn read(&self, address: PciAddress, offset: u16) -> u32 {
        match self.window(address) {
            // SAFETY: forwarded with the caller's guarantees.
            Some(w) => unsafe { w.read(address, offset) },
            None => u32::MAX,
        }
    }

    unsafe fn write(&self, address: PciAddress, offset: u16, value: u32) {
        if let Some(w) = self.window(address) {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { w.write(address, offset, value) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Recorder(Mutex<Vec<(u64, Option<u32>)>>);
    impl Registers for Recorder {
        fn size(&self) -> u64 {
            256 << 20
        }
        fn read32(&self, offset: u64) -> u32 {
            self.0.lock().unwrap().push((offset, None));
            0x1234_5678
        }
        fn read64(&self, _: u64) -> u64 {
            unreachable!("ECAM is accessed in dwords")
        }
        fn write32(&self, offset: u64, value: u32) {
            self.0.lock().unwrap().push((offset, Some(value)));
        }
        fn write64(&self, _: u64, _: u64) {
            unreachable!("ECAM is accessed in dwords")
        }
    }

    #[test]
    fn ecam_offsets_and_window_bounds() {
        let w = EcamWindow::new(Recorder(Mutex::new(Vec::new())), 1, 0x10, 0x1f);
        let a = PciAddress::new(1, 0x12, 3, 5);
        // SAFETY: test fake.
        unsafe {
            assert_eq!(w.read(a, 0x104), 0x1234_5678);
            w.write(a, 0x10, 7);
            // Wrong segment, bus below/above range, unaligned, beyond 4 KiB: never reach MMIO.
            assert_eq!(w.read(PciAddress::new(0, 0x12, 3, 5), 0), u32::MAX);
            assert_eq!(w.read(PciAddress::new(1, 0x0f, 0, 0), 0), u32::MAX);
            assert_eq!(w.read(PciAddress::new(1, 0x20, 0, 0), 0), u32::MAX);
            assert_eq!(w.read(a, 2), u32::MAX);
            assert_eq!(w.read(a, 0x1000), u32::MAX);
        }
        let log = w.mmio.0.lock().unwrap();
        let base = (2 << 20) | (3 << 15) | (5 << 12);
        assert_eq!(*log, vec![(base + 0x104, None), (base + 0x10, Some(7))]);
        assert_eq!(ecam_size(0, 255), 256 << 20);
    }

    #[test]
    fn ecam_dispatches_by_segment() {
        let mut e = Ecam::new();
        e.add(EcamWindow::new(
            Recorder(Mutex::new(Vec::new())),
            0,
            0,
            0xff,
        ));
        e.add(EcamWindow::new(
            Recorder(Mutex::new(Vec::new())),
            1,
            0,
            0x3f,
        ));
        // SAFETY: test fake.
        unsafe {
            e.read(PciAddress::new(1, 1, 0, 0), 0);
            assert_eq!(e.read(PciAddress::new(2, 0, 0, 0), 0), u32::MAX);
        }
        assert!(e.windows()[0].mmio.0.lock().unwrap().is_empty());
        assert_eq!(
            *e.windows()[1].mmio.0.lock().unwrap(),
            vec![(1 << 20, None)]
        );
        assert_eq!(e.segment_ranges().len(), 2);
    }
}
