//! MSI and MSI-X capability access (typed, validated).
//!
//! MSI messages live in config space; the MSI-X table lives in a memory BAR, whose location is
//! validated here against the probed BAR size and then written through a
//! [`hwio::Registers`] window with 32-bit accesses ([`msix_entry`]: the table requires dword
//! accesses).

use crate::bar::{BarInfo, find_bar};
use crate::caps::{CAP_ID_MSI, CAP_ID_MSIX, find_capability};
use crate::{PciError, cfg_read, cfg_write, cfg_write_upper16};
use hwio::{Registers, RegistersExt};
use pci_types::{ConfigRegionAccess, PciAddress};

/// A message as the device writes it: 32-bit data to a 64-bit address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// Message Address (for x86: 0xFEEx_xxxx, or a remappable-format address under VT-d).
    pub address: u64,
    /// Message Data (MSI: bits 15:0 only; MSI-X: 32 bits).
    pub data: u32,
}

hwio::register_map! {
    /// One MSI-X table entry (PCI Express Base Specification rev 6.0, §7.7.2, Figure 7-40),
    /// relative to the entry (entry i at the table's address + 16i).
    pub mod msix_entry {
        /// Message Address, bits 31:0 (dword aligned).
        0x0 => ADDRESS_LO: u32, ReadWrite;
        /// Message Upper Address.
        0x4 => ADDRESS_HI: u32, ReadWrite;
        /// Message Data.
        0x8 => DATA: u32, ReadWrite;
        /// Vector Control (bit 0: Mask).
        0xc => VECTOR_CONTROL: u32, ReadWrite;
    }
}

/// Vector Control with the Mask bit set.
pub const MASKED: u32 = 1;

bitflags::bitflags! {
    /// MSI Message Control (capability +2, here as bits of the header dword >> 16; PCI Express
    /// Base Specification rev 6.0, §7.7.1.2).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct MsiControl: u16 {
        /// Bit 0: MSI Enable.
        const ENABLE = 1 << 0;
        /// Bits 3:1: Multiple Message Capable, log2 of the vectors the function can use.
        const MMC = 0b111 << 1;
        /// Bits 6:4: Multiple Message Enable, log2 of the vectors software allocated.
        const MME = 0b111 << 4;
        /// Bit 7: 64 Bit Address Capable (the capability has a Message Upper Address).
        const ADDR64 = 1 << 7;
        /// Bit 8: Per-Vector Masking Capable (Mask and Pending Bits registers exist).
        const PER_VECTOR_MASK = 1 << 8;
        const _ = !0;
    }
}

/// An MSI capability (PCI Express Base Specification rev 6.0, §7.7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiCap {
    /// The function the capability belongs to.
    pub addr: PciAddress,
    /// Config-space offset of the capability.
    pub offset: u16,
    /// Message Control as read by [`MsiCap::find`] (its read-only capability bits are what
    /// the methods use).
    pub control: MsiControl,
}

impl MsiCap {
    /// Finds the function's MSI capability (`Ok(None)` if it has none).
    pub fn find(
        access: &impl ConfigRegionAccess,
        addr: PciAddress,
    ) -> Result<Option<Self>, PciError> {
        Ok(find_capability(access, addr, CAP_ID_MSI)?.map(|c| Self {
            addr,
            offset: c.offset,
            control: MsiControl::from_bits_retain(c.extension),
        }))
    }

    /// Number of vectors the function can generate (1, 2, 4 … 32).
    pub fn capable_vectors(&self) -> u32 {
        let mmc = (self.control.bits() >> 1) & 0b111;
        1 << mmc.min(5)
    }

    /// Whether the capability has a Message Upper Address (64-bit message addresses).
    pub fn is_64bit(&self) -> bool {
        self.control.contains(MsiControl::ADDR64)
    }

    fn data_offset(&self) -> u16 {
        self.offset + if self.is_64bit() { 0x0c } else { 0x08 }
    }

    /// Offset of the mask register, if per-vector masking is supported.
    pub fn mask_offset(&self) -> Option<u16> {
        self.control
            .contains(MsiControl::PER_VECTOR_MASK)
            .then(|| self.data_offset() + 4)
    }

    fn write_control(&self, access: &impl ConfigRegionAccess, control: MsiControl) {
        cfg_write_upper16(access, self.addr, self.offset, control.bits());
    }

    fn read_control(&self, access: &impl ConfigRegionAccess) -> MsiControl {
        MsiControl::from_bits_retain((cfg_read(access, self.addr, self.offset) >> 16) as u16)
    }

    /// Programs address/data and the number of vectors (`count`: power of two ≤ capable).
    /// MSI stays disabled; call [`MsiCap::set_enabled`] afterwards.
    pub fn program(
        &self,
        access: &impl ConfigRegionAccess,
        msg: MsiMessage,
        count: u32,
    ) -> Result<(), PciError> {
        let capable = self.capable_vectors();
        if count == 0 || !count.is_power_of_two() || count > capable {
            return Err(PciError::MsiBadVectorCount {
                addr: self.addr,
                requested: count,
                capable,
            });
        }
        if !self.is_64bit() && msg.address >> 32 != 0 {
            return Err(PciError::MsiAddressTooWide {
                addr: self.addr,
                address: msg.address,
            });
        }
        let ctl = self.read_control(access);
        self.write_control(access, ctl - MsiControl::ENABLE);
        cfg_write(access, self.addr, self.offset + 4, msg.address as u32);
        if self.is_64bit() {
            cfg_write(
                access,
                self.addr,
                self.offset + 8,
                (msg.address >> 32) as u32,
            );
        }
        // Message data is 16 bits (upper half is extended data, left 0); write the dword.
        cfg_write(access, self.addr, self.data_offset(), msg.data & 0xffff);
        let mme = (count.trailing_zeros() as u16) << 4;
        let ctl = (ctl - MsiControl::ENABLE - MsiControl::MME) | MsiControl::from_bits_retain(mme);
        self.write_control(access, ctl);
        Ok(())
    }

    /// Sets or clears MSI Enable.
    pub fn set_enabled(&self, access: &impl ConfigRegionAccess, enabled: bool) {
        let mut ctl = self.read_control(access);
        ctl.set(MsiControl::ENABLE, enabled);
        self.write_control(access, ctl);
    }

    /// Reads back the programmed message (data: the 16-bit Message Data).
    pub fn message(&self, access: &impl ConfigRegionAccess) -> MsiMessage {
        let lo = u64::from(cfg_read(access, self.addr, self.offset + 4));
        let hi = if self.is_64bit() {
            u64::from(cfg_read(access, self.addr, self.offset + 8))
        } else {
            0
        };
        MsiMessage {
            address: (hi << 32) | lo,
            data: cfg_read(access, self.addr, self.data_offset()) & 0xffff,
        }
    }
}

bitflags::bitflags! {
    /// MSI-X Message Control (capability +2; PCI Express Base Specification rev 6.0, §7.7.2.2).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct MsixControl: u16 {
        /// Bits 10:0: Table Size, the number of entries minus one (read-only).
        const TABLE_SIZE = 0x7ff;
        /// Bit 14: Function Mask, masks every vector regardless of its own mask bit.
        const FUNCTION_MASK = 1 << 14;
        /// Bit 15: MSI-X Enable.
        const ENABLE = 1 << 15;
        const _ = !0;
    }
}

/// An MSI-X capability whose table and PBA have been validated against the BARs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixCap {
    /// The function the capability belongs to.
    pub addr: PciAddress,
    /// Config-space offset of the capability.
    pub offset: u16,
    /// Number of table entries (Table Size + 1, 1..=2048).
    pub table_size: u16,
    /// Table BIR: the BAR slot (0..=5) that holds the table.
    pub table_bir: u8,
    /// Byte offset of the table inside its BAR (8-byte aligned).
    pub table_offset: u32,
    /// PBA BIR: the BAR slot (0..=5) that holds the Pending Bit Array.
    pub pba_bir: u8,
    /// Byte offset of the Pending Bit Array inside its BAR (8-byte aligned).
    pub pba_offset: u32,
    /// Physical address of the table (BAR base + offset).
    pub table_address: u64,
    /// Physical address of the Pending Bit Array (BAR base + offset).
    pub pba_address: u64,
}

/// Size in bytes of one MSI-X table entry (PCI Express Base Specification rev 6.0, §7.7.2).
pub const MSIX_ENTRY_SIZE: u64 = 16;

impl MsixCap {
    /// Finds the MSI-X capability and validates the table/PBA location against `bars`
    /// (from [`crate::bar::probe_bars`]).
    pub fn find(
        access: &impl ConfigRegionAccess,
        addr: PciAddress,
        bars: &[BarInfo],
    ) -> Result<Option<Self>, PciError> {
        let Some(c) = find_capability(access, addr, CAP_ID_MSIX)? else {
            return Ok(None);
        };
        let table = cfg_read(access, addr, c.offset + 4);
        let pba = cfg_read(access, addr, c.offset + 8);
        let table_size = (c.extension & 0x7ff) + 1;
        let table_bir = (table & 7) as u8;
        let pba_bir = (pba & 7) as u8;
        let table_offset = table & !7;
        let pba_offset = pba & !7;
        let table_bytes = u64::from(table_size) * MSIX_ENTRY_SIZE;
        let pba_bytes = u64::from(table_size).div_ceil(64) * 8;
        let locate = |bir: u8, off: u32, bytes: u64, table: bool| -> Result<u64, PciError> {
            if bir > 5 {
                return Err(PciError::MsixBadBir { addr, bir });
            }
            let bar = find_bar(bars, bir)
                .filter(|b| b.is_memory())
                .ok_or(PciError::MsixBarNotMemory { addr, bir })?;
            if u64::from(off) + bytes > bar.size {
                return Err(if table {
                    PciError::MsixTableOutsideBar {
                        addr,
                        bir,
                        offset: off,
                        bytes,
                        bar_size: bar.size,
                    }
                } else {
                    PciError::MsixPbaOutsideBar {
                        addr,
                        bir,
                        offset: off,
                        bytes,
                        bar_size: bar.size,
                    }
                });
            }
            Ok(bar.address + u64::from(off))
        };
        let table_address = locate(table_bir, table_offset, table_bytes, true)?;
        let pba_address = locate(pba_bir, pba_offset, pba_bytes, false)?;
        Ok(Some(Self {
            addr,
            offset: c.offset,
            table_size,
            table_bir,
            table_offset,
            pba_bir,
            pba_offset,
            table_address,
            pba_address,
        }))
    }

    fn update_control(
        &self,
        access: &impl ConfigRegionAccess,
        f: impl FnOnce(MsixControl) -> MsixControl,
    ) {
        let h = cfg_read(access, self.addr, self.offset);
        let ctl = f(MsixControl::from_bits_retain((h >> 16) as u16));
        cfg_write_upper16(access, self.addr, self.offset, ctl.bits());
    }

    /// Sets or clears MSI-X Enable.
    pub fn set_enabled(&self, access: &impl ConfigRegionAccess, enabled: bool) {
        self.update_control(access, |mut c| {
            c.set(MsixControl::ENABLE, enabled);
            c
        });
    }

    /// Sets or clears Function Mask (all vectors masked while set).
    pub fn set_function_mask(&self, access: &impl ConfigRegionAccess, masked: bool) {
        self.update_control(access, |mut c| {
            c.set(MsixControl::FUNCTION_MASK, masked);
            c
        });
    }

    /// Byte offset of entry `index` from the table start.
    pub fn entry_offset(&self, index: u16) -> Result<u64, PciError> {
        if index >= self.table_size {
            return Err(PciError::MsixIndexOutOfRange {
                addr: self.addr,
                index,
                size: self.table_size,
            });
        }
        Ok(u64::from(index) * MSIX_ENTRY_SIZE)
    }

    /// Writes one table entry through `table` (a window mapped at `table_address`), masked
    /// while its address/data change, then sets the requested mask state.
    pub fn write_entry(
        &self,
        table: &impl Registers,
        index: u16,
        msg: MsiMessage,
        masked: bool,
    ) -> Result<(), PciError> {
        let e = table.block(self.entry_offset(index)?, MSIX_ENTRY_SIZE);
        e.write(msix_entry::VECTOR_CONTROL, MASKED);
        e.write(msix_entry::ADDRESS_LO, msg.address as u32);
        e.write(msix_entry::ADDRESS_HI, (msg.address >> 32) as u32);
        e.write(msix_entry::DATA, msg.data);
        e.write(msix_entry::VECTOR_CONTROL, u32::from(masked));
        Ok(())
    }

    /// Sets or clears the Mask bit of entry `index` through `table` (a window mapped at
    /// `table_address`).
    pub fn set_entry_masked(
        &self,
        table: &impl Registers,
        index: u16,
        masked: bool,
    ) -> Result<(), PciError> {
        let o = self.entry_offset(index)?;
        table.write(msix_entry::VECTOR_CONTROL.at(o), u32::from(masked));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bar::probe_bars;
    use crate::fake::FakeConfigSpace;
    use std::sync::Mutex;

    fn dev() -> (FakeConfigSpace, PciAddress) {
        let f = FakeConfigSpace::new();
        let a = PciAddress::new(0, 2, 0, 0);
        f.add_function(a, 0x8086, 0x0b25, (8, 0x80, 0), 0);
        f.add_mem_bar(a, 0, 0x1_0000, 0xfe00_0000, true, false);
        (f, a)
    }

    #[test]
    fn msi_program_64bit_multi_vector() {
        let (f, a) = dev();
        // MMC = 4 vectors (010b), 64-bit, per-vector masking. Writable: control, addr, data, mask.
        f.add_cap(
            a,
            0x50,
            CAP_ID_MSI,
            &[(0x0184 | 0b0100) << 16, 0, 0, 0, 0, 0],
            &[0x0071_0000, 0xffff_fffc, 0xffff_ffff, 0xffff, 0xf],
        );
        let m = MsiCap::find(&f, a).unwrap().unwrap();
        assert_eq!(m.capable_vectors(), 4);
        assert!(m.is_64bit());
        assert_eq!(m.mask_offset(), Some(0x50 + 0x10));
        assert!(
            m.program(
                &f,
                MsiMessage {
                    address: 0xfee0_0018,
                    data: 0
                },
                8
            )
            .is_err()
        );
        assert!(
            m.program(
                &f,
                MsiMessage {
                    address: 0xfee0_0018,
                    data: 0
                },
                3
            )
            .is_err()
        );
        m.program(
            &f,
            MsiMessage {
                address: 0xfee0_1018,
                data: 0x41,
            },
            4,
        )
        .unwrap();
        m.set_enabled(&f, true);
        assert_eq!(
            m.message(&f),
            MsiMessage {
                address: 0xfee0_1018,
                data: 0x41
            }
        );
        let ctl = f.raw_read(a, 0x50) >> 16;
        assert_eq!(ctl & 1, 1);
        assert_eq!((ctl >> 4) & 7, 2, "MME = log2(4)");
    }

    #[test]
    fn msi_32bit_rejects_wide_address() {
        let (f, a) = dev();
        f.add_cap(
            a,
            0x50,
            CAP_ID_MSI,
            &[0, 0, 0],
            &[0x0071_0000, 0xffff_fffc, 0xffff],
        );
        let m = MsiCap::find(&f, a).unwrap().unwrap();
        assert!(matches!(
            m.program(
                &f,
                MsiMessage {
                    address: 1 << 32,
                    data: 0
                },
                1
            ),
            Err(PciError::MsiAddressTooWide { .. })
        ));
    }

    struct Table(Mutex<Vec<(u64, u32)>>);
    impl Registers for Table {
        fn size(&self) -> u64 {
            0x1000
        }
        fn read32(&self, _: u64) -> u32 {
            0
        }
        fn read64(&self, _: u64) -> u64 {
            unreachable!("the MSI-X table takes dword accesses")
        }
        fn write32(&self, o: u64, v: u32) {
            self.0.lock().unwrap().push((o, v));
        }
        fn write64(&self, _: u64, _: u64) {
            unreachable!("the MSI-X table takes dword accesses")
        }
    }

    #[test]
    fn msix_table_validated_against_bar() {
        let (f, a) = dev();
        // 64 entries, table at BAR0+0x2000, PBA at BAR0+0x3000.
        f.add_cap(
            a,
            0x60,
            CAP_ID_MSIX,
            &[63 << 16, 0x2000, 0x3000],
            &[0xc000_0000],
        );
        let bars = probe_bars(&f, a, 0).bars;
        let m = MsixCap::find(&f, a, &bars).unwrap().unwrap();
        assert_eq!(m.table_size, 64);
        assert_eq!(m.table_address, 0xfe00_2000);
        assert_eq!(m.pba_address, 0xfe00_3000);
        let t = Table(Mutex::new(Vec::new()));
        m.write_entry(
            &t,
            1,
            MsiMessage {
                address: 0xfee0_0038,
                data: 0,
            },
            false,
        )
        .unwrap();
        assert_eq!(
            *t.0.lock().unwrap(),
            vec![(28, 1), (16, 0xfee0_0038), (20, 0), (24, 0), (28, 0)]
        );
        assert!(m.write_entry(&t, 64, MsiMessage::default(), false).is_err());
        m.set_enabled(&f, true);
        assert_eq!(f.raw_read(a, 0x60) >> 31, 1);

        // Table running past the 64 KiB BAR.
        f.with(a, |x| x.set32(0x64, 0xfe00));
        assert!(matches!(
            MsixCap::find(&f, a, &bars),
            Err(PciError::MsixTableOutsideBar { .. })
        ));
        // BIR naming an unimplemented BAR / an invalid BIR.
        f.with(a, |x| x.set32(0x64, 0x2000 | 2));
        assert!(matches!(
            MsixCap::find(&f, a, &bars),
            Err(PciError::MsixBarNotMemory { bir: 2, .. })
        ));
        f.with(a, |x| x.set32(0x64, 0x2000 | 7));
        assert!(matches!(
            MsixCap::find(&f, a, &bars),
            Err(PciError::MsixBadBir { bir: 7, .. })
        ));
        f.with(a, |x| {
            x.set32(0x64, 0x2000);
            x.set32(0x68, 0x1_0000);
        });
        assert!(matches!(
            MsixCap::find(&f, a, &bars),
            Err(PciError::MsixPbaOutsideBar { .. })
        ));
    }
}
