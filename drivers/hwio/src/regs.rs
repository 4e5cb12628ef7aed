//! Register windows and typed register maps.

use core::fmt;
use core::marker::PhantomData;

/// A window of device registers (uncached MMIO in the kernel, a fake or a device model in host
/// tests).
///
/// Every call is exactly one access of the named width at `offset` bytes from the start of the
/// window (devices and QEMU's models reject other widths: VT-d units abort on an 8-byte access
/// to a 32-bit register). Drivers only access registers inside `0..size()`, naturally aligned;
/// an implementation answers anything else like a master abort (reads all-ones, drops writes)
/// and never touches memory outside the window.
pub trait Registers: Send + Sync {
    /// Size of the window in bytes.
    fn size(&self) -> u64;
    /// One 32-bit read.
    fn read32(&self, offset: u64) -> u32;
    /// One 64-bit read.
    fn read64(&self, offset: u64) -> u64;
    /// One 32-bit write.
    fn write32(&self, offset: u64, value: u32);
    /// One 64-bit write.
    fn write64(&self, offset: u64, value: u64);
}

impl<W: Registers + ?Sized> Registers for &W {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read32(&self, offset: u64) -> u32 {
        (**self).read32(offset)
    }
    fn read64(&self, offset: u64) -> u64 {
        (**self).read64(offset)
    }
    fn write32(&self, offset: u64, value: u32) {
        (**self).write32(offset, value);
    }
    fn write64(&self, offset: u64, value: u64) {
        (**self).write64(offset, value);
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for u32 {}
    impl Sealed for u64 {}
    impl<const N: usize> Sealed for [u32; N] {}
    impl<const N: usize> Sealed for [u64; N] {}
}

/// The raw contents of a register: one dword, one qword, or several of either (a 128- or
/// 256-bit register, a table entry), accessed in ascending order.
pub trait Raw: Copy + sealed::Sealed {
    /// Bytes the register spans.
    const WIDTH: u64;
    /// Alignment of its offset (the width of one access).
    const ALIGN: u64;
    /// Reads it from `regs` at `offset`.
    fn read_from<W: Registers + ?Sized>(regs: &W, offset: u64) -> Self;
    /// Writes it to `regs` at `offset`.
    fn write_to<W: Registers + ?Sized>(self, regs: &W, offset: u64);
}

impl Raw for u32 {
    const WIDTH: u64 = 4;
    const ALIGN: u64 = 4;
    fn read_from<W: Registers + ?Sized>(regs: &W, offset: u64) -> Self {
        regs.read32(offset)
    }
    fn write_to<W: Registers + ?Sized>(self, regs: &W, offset: u64) {
        regs.write32(offset, self);
    }
}

impl Raw for u64 {
    const WIDTH: u64 = 8;
    const ALIGN: u64 = 8;
    fn read_from<W: Registers + ?Sized>(regs: &W, offset: u64) -> Self {
        regs.read64(offset)
    }
    fn write_to<W: Registers + ?Sized>(self, regs: &W, offset: u64) {
        regs.write64(offset, self);
    }
}

impl<const N: usize> Raw for [u32; N] {
    const WIDTH: u64 = 4 * N as u64;
    const ALIGN: u64 = 4;
    fn read_from<W: Registers + ?Sized>(regs: &W, offset: u64) -> Self {
        let mut v = [0; N];
        for (i, d) in (0u64..).zip(v.iter_mut()) {
            *d = regs.read32(offset + 4 * i);
        }
        v
    }
    fn write_to<W: Registers + ?Sized>(self, regs: &W, offset: u64) {
        for (i, d) in (0u64..).zip(self) {
            regs.write32(offset + 4 * i, d);
        }
    }
}

impl<const N: usize> Raw for [u64; N] {
    const WIDTH: u64 = 8 * N as u64;
    const ALIGN: u64 = 8;
    fn read_from<W: Registers + ?Sized>(regs: &W, offset: u64) -> Self {
        let mut v = [0; N];
        for (i, q) in (0u64..).zip(v.iter_mut()) {
            *q = regs.read64(offset + 8 * i);
        }
        v
    }
    fn write_to<W: Registers + ?Sized>(self, regs: &W, offset: u64) {
        for (i, q) in (0u64..).zip(self) {
            regs.write64(offset + 8 * i, q);
        }
    }
}

/// The typed value of a register: its raw form fixes the access width.
///
/// Implemented for the raw forms themselves, and by the spec crates for their `bitflags`
/// types (through `from_bits_retain`, so unknown bits survive a read-modify-write) and
/// newtypes over a raw value.
pub trait Value: Copy {
    /// The raw form.
    type Raw: Raw;
    /// The value a raw read produced.
    fn from_raw(raw: Self::Raw) -> Self;
    /// The raw form to write.
    fn to_raw(self) -> Self::Raw;
}

impl<R: Raw> Value for R {
    type Raw = R;
    fn from_raw(raw: R) -> R {
        raw
    }
    fn to_raw(self) -> R {
        self
    }
}

/// Register access types, as the specifications name them.
///
/// A write to a read-only register, or a read of a write-only one, does not compile:
///
/// ```compile_fail
/// use hwio::{Reg, Registers, RegistersExt, access::ReadOnly};
/// const CAP: Reg<u64, ReadOnly> = Reg::new(0x8);
/// fn clobber(regs: &dyn Registers) {
///     regs.write(CAP, 0);
/// }
/// ```
pub mod access {
    /// Reads are allowed.
    pub trait Readable {}
    /// Writes are allowed.
    pub trait Writable {}

    /// RO: read-only.
    #[derive(Debug, Clone, Copy)]
    pub enum ReadOnly {}
    /// WO: write-only (reads return nothing meaningful).
    #[derive(Debug, Clone, Copy)]
    pub enum WriteOnly {}
    /// RW: read/write (including RWL, writable only in some device states).
    #[derive(Debug, Clone, Copy)]
    pub enum ReadWrite {}
    /// RW1C: readable; writing a 1 to a bit clears it (write back what was read to acknowledge).
    #[derive(Debug, Clone, Copy)]
    pub enum WriteOneToClear {}

    impl Readable for ReadOnly {}
    impl Readable for ReadWrite {}
    impl Readable for WriteOneToClear {}
    impl Writable for WriteOnly {}
    impl Writable for ReadWrite {}
    impl Writable for WriteOneToClear {}
}

/// One register: its offset, its value type `T` (and with it the width) and its access `A`,
/// declared once (usually by [`register_map!`](crate::register_map)).
pub struct Reg<T, A> {
    offset: u64,
    _t: PhantomData<fn() -> (T, A)>,
}

impl<T, A> Clone for Reg<T, A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T, A> Copy for Reg<T, A> {}

impl<T, A> fmt::Debug for Reg<T, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reg({:#x})", self.offset)
    }
}

impl<T: Value, A> Reg<T, A> {
    /// The register at `offset`, which must be aligned to the width of one access (checked at
    /// compile time when the register is a constant).
    pub const fn new(offset: u64) -> Self {
        assert!(
            offset.is_multiple_of(<T::Raw as Raw>::ALIGN),
            "register offset not aligned to its access width"
        );
        Self {
            offset,
            _t: PhantomData,
        }
    }

    /// Its byte offset.
    pub const fn offset(self) -> u64 {
        self.offset
    }

    /// The same register in an entry of a table that starts at `base` (the map declares the
    /// entry's registers relative to the entry).
    pub const fn at(self, base: u64) -> Self {
        Self::new(base + self.offset)
    }
}

/// Bytes a register of value type `T` spans (for [`register_map!`](crate::register_map)).
pub const fn width_of<T: Value>() -> u64 {
    <T::Raw as Raw>::WIDTH
}

/// Checks a register map at compile time: registers in ascending order of offset, none
/// overlapping the next. Each entry is `(offset, width)`.
pub const fn check_layout(regs: &[(u64, u64)]) {
    let mut i = 1;
    while i < regs.len() {
        assert!(
            regs[i - 1].0 + regs[i - 1].1 <= regs[i].0,
            "register map: registers out of order or overlapping"
        );
        i += 1;
    }
}

/// Typed access through a [`Registers`] window (implemented for every window).
pub trait RegistersExt: Registers {
    /// Reads `reg`.
    fn read<T: Value, A: access::Readable>(&self, reg: Reg<T, A>) -> T {
        T::from_raw(T::Raw::read_from(self, reg.offset))
    }

    /// Writes `value` to `reg`.
    fn write<T: Value, A: access::Writable>(&self, reg: Reg<T, A>, value: T) {
        value.to_raw().write_to(self, reg.offset);
    }

    /// Reads `reg`, changes the value with `f` and writes the result back.
    fn modify<T: Value, A: access::Readable + access::Writable>(
        &self,
        reg: Reg<T, A>,
        f: impl FnOnce(T) -> T,
    ) {
        let v = self.read(reg);
        self.write(reg, f(v));
    }

    /// The `len` bytes from `base` as a window of their own (a table entry whose registers a
    /// map declares relative to the entry).
    fn block(&self, base: u64, len: u64) -> Block<'_, Self> {
        Block {
            regs: self,
            base,
            len,
        }
    }
}

impl<W: Registers + ?Sized> RegistersExt for W {}

/// A part of a window: offsets count from `base`; accesses outside `0..len` read all-ones and
/// drop writes, like accesses outside the window itself.
pub struct Block<'a, W: ?Sized> {
    regs: &'a W,
    base: u64,
    len: u64,
}

impl<W: ?Sized> fmt::Debug for Block<'_, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Block({:#x}+{:#x})", self.base, self.len)
    }
}

impl<W: Registers + ?Sized> Block<'_, W> {
    fn at(&self, offset: u64, width: u64) -> Option<u64> {
        offset
            .checked_add(width)
            .is_some_and(|end| end <= self.len)
            .then(|| self.base.checked_add(offset))
            .flatten()
    }
}

impl<W: Registers + ?Sized> Registers for Block<'_, W> {
    fn size(&self) -> u64 {
        self.len
    }
    fn read32(&self, offset: u64) -> u32 {
        self.at(offset, 4).map_or(u32::MAX, |o| self.regs.read32(o))
    }
    fn read64(&self, offset: u64) -> u64 {
        self.at(offset, 8).map_or(u64::MAX, |o| self.regs.read64(o))
    }
    fn write32(&self, offset: u64, value: u32) {
        if let Some(o) = self.at(offset, 4) {
            self.regs.write32(o, value);
        }
    }
    fn write64(&self, offset: u64, value: u64) {
        if let Some(o) = self.at(offset, 8) {
            self.regs.write64(o, value);
        }
    }
}

/// A table of equal entries inside a window, located by the device (base and entry size from
/// capability registers): DSA's GRPCFG, WQCFG, MSIXPERM and IMS tables, VT-d's fault-recording
/// registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    /// Offset of entry 0.
    pub base: u64,
    /// Bytes from one entry to the next.
    pub stride: u64,
    /// Number of entries.
    pub len: u64,
}

impl Table {
    /// Offset of entry `index`, if it exists.
    pub fn entry(&self, index: u64) -> Option<u64> {
        (index < self.len)
            .then(|| self.base.checked_add(index.checked_mul(self.stride)?))
            .flatten()
    }

    /// Bytes the whole table spans (`None` if that overflows).
    pub fn span(&self) -> Option<u64> {
        self.len.checked_mul(self.stride)
    }
}

/// Implements [`Value`] for `bitflags` types over a raw register value: `from_bits_retain`, so
/// bits the type does not name survive a read-modify-write.
///
/// ```
/// bitflags::bitflags! {
///     #[derive(Clone, Copy, Debug, PartialEq, Eq)]
///     pub struct Ctl: u32 { const GO = 1; const _ = !0; }
/// }
/// hwio::flags_value!(Ctl: u32);
/// assert_eq!(<Ctl as hwio::Value>::from_raw(0x11).bits(), 0x11);
/// ```
#[macro_export]
macro_rules! flags_value {
    ($($t:ty: $raw:ty),* $(,)?) => {$(
        impl $crate::Value for $t {
            type Raw = $raw;
            fn from_raw(raw: $raw) -> Self {
                <$t>::from_bits_retain(raw)
            }
            fn to_raw(self) -> $raw {
                self.bits()
            }
        }
    )*};
}

/// Implements [`Value`] for newtypes over a raw register value (`struct GenSts(pub u32)`).
#[macro_export]
macro_rules! newtype_value {
    ($($t:ident: $raw:ty),* $(,)?) => {$(
        impl $crate::Value for $t {
            type Raw = $raw;
            fn from_raw(raw: $raw) -> Self {
                $t(raw)
            }
            fn to_raw(self) -> $raw {
                self.0
            }
        }
    )*};
}

/// Declares a register map: one module with one [`Reg`] constant per register (offset, value
/// type, access), checked at compile time for alignment, ascending order and overlaps, plus a
/// sub-module `off` with the bare offsets and a `LAYOUT` table of `(offset, bytes)` for models
/// and fakes that dispatch on offsets or check access widths.
///
/// ```
/// use hwio::{Registers, RegistersExt, Value};
///
/// #[derive(Clone, Copy, Debug, PartialEq)]
/// pub struct Status(pub u32);
/// impl Value for Status {
///     type Raw = u32;
///     fn from_raw(r: u32) -> Self { Status(r) }
///     fn to_raw(self) -> u32 { self.0 }
/// }
///
/// hwio::register_map! {
///     /// The example device.
///     pub mod regs {
///         /// Capabilities.
///         0x00 => CAP: u64, ReadOnly;
///         /// Status.
///         0x08 => STATUS: Status, WriteOneToClear;
///     }
/// }
///
/// struct Fives;
/// impl Registers for Fives {
///     fn size(&self) -> u64 { 16 }
///     fn read32(&self, _: u64) -> u32 { 5 }
///     fn read64(&self, _: u64) -> u64 { 5 }
///     fn write32(&self, _: u64, _: u32) {}
///     fn write64(&self, _: u64, _: u64) {}
/// }
///
/// fn main() {
///     assert_eq!(regs::off::STATUS, 0x08);
///     assert_eq!(Fives.read(regs::STATUS), Status(5));
///     // Fives.write(regs::CAP, 1); // does not compile: CAP is read-only
/// }
/// ```
#[macro_export]
macro_rules! register_map {
    (
        $(#[$meta:meta])*
        $vis:vis mod $name:ident {
            $(
                $(#[$rmeta:meta])*
                $off:literal => $reg:ident: $ty:ty, $acc:ident;
            )*
        }
    ) => {
        $(#[$meta])*
        $vis mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[$rmeta])*
                pub const $reg: $crate::Reg<$ty, $crate::access::$acc> = $crate::Reg::new($off);
            )*
            /// `(offset, bytes)` of every register above, in ascending order (checked at
            /// compile time: aligned, none overlapping the next).
            #[allow(dead_code)] // for models and fakes; a driver's private map may not need it
            pub const LAYOUT: &[(u64, u64)] = &[$(($off, $crate::width_of::<$ty>())),*];
            const _: () = $crate::check_layout(LAYOUT);
            /// The registers' bare byte offsets (for device models and fakes that dispatch on
            /// the offset of an access).
            #[allow(dead_code)] // for models and fakes; a driver's private map may not need it
            pub mod off {
                $(
                    #[doc = concat!("Offset of [`", stringify!($reg), "`](super::", stringify!($reg), ").")]
                    pub const $reg: u64 = $off;
                )*
            }
        }
    };
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // the fake memory splits values into bytes
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A window over plain memory that records every access.
    struct Mem {
        bytes: Mutex<Vec<u8>>,
        log: Mutex<Vec<(char, u64, u64)>>,
    }

    impl Mem {
        fn new(len: usize) -> Self {
            Mem {
                bytes: Mutex::new(vec![0; len]),
                log: Mutex::new(Vec::new()),
            }
        }
        fn get(&self, off: u64, n: usize) -> u64 {
            let b = self.bytes.lock().unwrap();
            let o = usize::try_from(off).unwrap();
            b[o..o + n]
                .iter()
                .rev()
                .fold(0, |a, &x| (a << 8) | u64::from(x))
        }
        fn put(&self, off: u64, n: usize, v: u64) {
            let mut b = self.bytes.lock().unwrap();
            let o = usize::try_from(off).unwrap();
            for (i, x) in b[o..o + n].iter_mut().enumerate() {
                *x = (v >> (8 * i)) as u8;
            }
        }
    }

    impl Registers for Mem {
        fn size(&self) -> u64 {
            self.bytes.lock().unwrap().len() as u64
        }
        fn read32(&self, off: u64) -> u32 {
            self.log.lock().unwrap().push(('r', off, 4));
            self.get(off, 4) as u32
        }
        fn read64(&self, off: u64) -> u64 {
            self.log.lock().unwrap().push(('r', off, 8));
            self.get(off, 8)
        }
        fn write32(&self, off: u64, v: u32) {
            self.log.lock().unwrap().push(('w', off, 4));
            self.put(off, 4, u64::from(v));
        }
        fn write64(&self, off: u64, v: u64) {
            self.log.lock().unwrap().push(('w', off, 8));
            self.put(off, 8, v);
        }
    }

    bitflags::bitflags! {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        struct Ctl: u32 {
            const GO = 1 << 0;
            const IRQ = 1 << 4;
            const _ = !0;
        }
    }
    impl Value for Ctl {
        type Raw = u32;
        fn from_raw(r: u32) -> Self {
            Ctl::from_bits_retain(r)
        }
        fn to_raw(self) -> u32 {
            self.bits()
        }
    }

    crate::register_map! {
        /// A test device.
        mod dev {
            0x00 => ID: u32, ReadOnly;
            0x04 => CTL: Ctl, ReadWrite;
            0x08 => BIG: [u64; 2], ReadWrite;
            0x18 => DOORBELL: u32, WriteOnly;
        }
    }

    crate::register_map! {
        /// One entry of a table.
        mod entry {
            0x0 => ADDR: u64, ReadWrite;
            0x8 => DATA: u32, ReadWrite;
        }
    }

    #[test]
    fn typed_access_has_the_declared_width_and_order() {
        let m = Mem::new(0x40);
        m.put(0, 4, 0x1234);
        assert_eq!(m.read(dev::ID), 0x1234);
        m.write(dev::CTL, Ctl::GO | Ctl::from_bits_retain(1 << 9));
        m.modify(dev::CTL, |c| c | Ctl::IRQ);
        assert_eq!(m.get(4, 4), 0x211);
        m.write(dev::BIG, [1, 2]);
        assert_eq!(m.read(dev::BIG), [1, 2]);
        m.write(dev::DOORBELL, 7);
        let log = m.log.lock().unwrap().clone();
        assert_eq!(
            log,
            [
                ('r', 0, 4),
                ('w', 4, 4),
                ('r', 4, 4),
                ('w', 4, 4),
                ('w', 8, 8),
                ('w', 0x10, 8),
                ('r', 8, 8),
                ('r', 0x10, 8),
                ('w', 0x18, 4),
            ]
        );
        assert_eq!(dev::off::DOORBELL, 0x18);
        assert_eq!(dev::LAYOUT, &[(0, 4), (4, 4), (8, 16), (0x18, 4)]);
        assert_eq!(dev::BIG.offset(), 8);
    }

    #[test]
    fn blocks_and_tables_reach_entries_and_nothing_else() {
        let m = Mem::new(0x100);
        let t = Table {
            base: 0x40,
            stride: 0x10,
            len: 4,
        };
        assert_eq!(t.entry(3), Some(0x70));
        assert_eq!(t.entry(4), None);
        assert_eq!(t.span(), Some(0x40));
        let e = m.block(t.entry(2).unwrap(), t.stride);
        e.write(entry::ADDR, 0xfee0_0000);
        e.write(entry::DATA, 0x41);
        assert_eq!(m.get(0x60, 8), 0xfee0_0000);
        assert_eq!(m.get(0x68, 4), 0x41);
        assert_eq!(m.read(entry::DATA.at(0x60)), 0x41);
        // Outside the entry: all-ones, writes dropped, the window untouched.
        assert_eq!(e.read32(0x10), u32::MAX);
        assert_eq!(e.read64(0xc), u64::MAX);
        e.write32(0x10, 5);
        e.write64(u64::MAX - 3, 5);
        assert_eq!(m.get(0x70, 4), 0);
        assert_eq!(e.size(), 0x10);
    }

    #[test]
    fn layout_checks() {
        check_layout(&[(0, 4), (4, 8), (0x10, 4)]);
        let bad = std::panic::catch_unwind(|| check_layout(&[(0, 8), (4, 4)]));
        assert!(bad.is_err());
        let unaligned = std::panic::catch_unwind(|| Reg::<u64, access::ReadOnly>::new(4));
        assert!(unaligned.is_err());
        assert_eq!(width_of::<[u32; 8]>(), 32);
        assert_eq!(format!("{:?}", dev::CTL), "Reg(0x4)");
    }
}
