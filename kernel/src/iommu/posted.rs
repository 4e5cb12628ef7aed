//! Interrupt posting (Intel VT-d Architecture Specification rev 4.1, §5.2, §9.10, §9.11):
//! a device message whose IRTE is in posted format does not interrupt a CPU; the unit sets a
//! bit in a posted-interrupt descriptor (PID) in memory and sends that descriptor's one
//! notification vector, unless a notification is already outstanding (ON) or suppressed (SN).
//!
//! * [`PostedDescriptor`]: a PID in kernel memory (64 bytes, 64-byte aligned): the 256 PIR
//!   bits, ON, SN, the notification vector NV and destination NDST, with the atomic
//!   operations software needs on it. The unit updates it with locked read-modify-writes,
//!   so every change here is one locked instruction too.
//! * [`PostedRoute`]: a device message (MSI, MSI-X or IMS entry) whose IRTE posts to (PID,
//!   bit), with the same source-ID check as [`MsiRoute`]. `retarget_posted` changes PID and
//!   bit in one atomic 128-bit IRTE update followed by an interrupt-entry-cache invalidation;
//!   [`MsiRoute::into_posted`] and [`PostedRoute::into_remapped`] convert in place (the
//!   message stays the same).
//! * [`posted_supported`]: every unit has CAP.PI and the CPU has CMPXCHG16B.
//!
//! What a post guarantees (§5.2.3): PIR\[v\] is set before ON is tested, ON is set by the
//! post that sends the notification and by no other, and a post that finds ON set (or SN
//! set, URG clear) sends nothing. A receiver that clears ON and then harvests PIR therefore
//! sees every post either in this harvest or through a new notification.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

#[cfg(feature = "ktest")]
use vtd::spec::{IrteFormat, SourceValidation};
use vtd::spec::{PidControl, pid};
use vtd::{IrteHandle, VtdError};

#[cfg(feature = "ktest")]
use super::rid;
use super::{IommuError, MsiRoute, apic_of, iommu};
#[cfg(feature = "ktest")]
use crate::pci::MsiMessage;
use crate::pci::PciAddress;

/// A posted-interrupt descriptor (§9.11) in kernel memory. RAM is identity-mapped, so its
/// address is its physical address. It must not be reachable by any device's DMA (§5.2.5:
/// only the remapping unit and the CPUs may write it); kernel memory is not mapped in
/// device address spaces except pass-through ones, which the posting devices must not use
/// for it.
///
/// Routes hold `&'static` references: a descriptor the unit may still post into is never
/// freed.
#[repr(C, align(64))]
pub struct PostedDescriptor {
    /// PIR: bit v of the 256 is qword v / 64, bit v % 64.
    pir: [AtomicU64; pid::PIR_QWORDS],
    /// ON, SN, NV, NDST ([`PidControl`]).
    control: AtomicU64,
    /// Reserved: zero (the unit faults with 0x28 otherwise).
    reserved: [AtomicU64; 3],
}

const _: () = assert!(core::mem::size_of::<PostedDescriptor>() == pid::SIZE);
const _: () = assert!(core::mem::align_of::<PostedDescriptor>() == pid::SIZE);

impl Default for PostedDescriptor {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for PostedDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostedDescriptor")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("pir", &[self.pir(0), self.pir(1), self.pir(2), self.pir(3)])
            .field("control", &self.control())
            .finish()
    }
}

impl PostedDescriptor {
    /// All zero: no request, ON and SN clear, no notification target yet (set one with
    /// [`PostedDescriptor::set_notification`] before a route posts to it).
    pub const fn new() -> Self {
        Self {
            pir: [const { AtomicU64::new(0) }; pid::PIR_QWORDS],
            control: AtomicU64::new(0),
            reserved: [const { AtomicU64::new(0) }; 3],
        }
    }

    /// Its physical address (the PDA its posted IRTEs carry).
    pub fn addr(&self) -> u64 {
        core::ptr::from_ref::<Self>(self) as u64
    }

    /// The control word as it is now.
    pub fn control(&self) -> PidControl {
        PidControl::decode(self.control.load(Ordering::SeqCst))
    }

    /// Sends notifications to `vector` on `cpu` from now on (NV, NDST), leaving ON and SN as
    /// they are (one compare-and-exchange loop: the unit may set ON at any moment). NDST is
    /// in the format the IRTEs use (x2APIC when the units use 32-bit destinations).
    pub fn set_notification(&self, cpu: usize, vector: u8) -> Result<(), IommuError> {
        if vector < 16 {
            return Err(IommuError::BadNotificationVector(vector));
        }
        let apic_id = apic_of(cpu)?;
        let x2apic = ndst_x2apic()?;
        let ndst =
            PidControl::ndst(apic_id, x2apic).ok_or(IommuError::ApicIdTooWide { cpu, apic_id })?;
        let _ = self
            .control
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                let mut v = PidControl::decode(c);
                v.nv = vector;
                v.ndst = ndst;
                Some(v.encode())
            });
        Ok(())
    }

    #[cfg(feature = "ktest")]
    /// The notification's (NV, destination APIC ID), NDST decoded in the units' format.
    pub fn notification(&self) -> Result<(u8, u32), IommuError> {
        let c = self.control();
        Ok((c.nv, PidControl::apic_id(c.ndst, ndst_x2apic()?)))
    }

    #[cfg(feature = "ktest")]
    /// Outstanding notification (ON).
    pub fn on(&self) -> bool {
        self.control.load(Ordering::SeqCst) & pid::ON != 0
    }

    #[cfg(feature = "ktest")]
    /// Suppress notification (SN).
    pub fn sn(&self) -> bool {
        self.control.load(Ordering::SeqCst) & pid::SN != 0
    }

    #[cfg(feature = "ktest")]
    /// Clears ON (`lock and`); returns whether it was set. The receiver does this before it
    /// harvests PIR, so a post after the harvest notifies again.
    pub fn test_and_clear_on(&self) -> bool {
        self.control.fetch_and(!pid::ON, Ordering::SeqCst) & pid::ON != 0
    }

    #[cfg(feature = "ktest")]
    /// Sets ON (`lock or`); returns whether it was set. Software that clears SN with requests
    /// pending sets ON itself and, if it was clear, notifies (posts under SN leave ON clear).
    pub fn test_and_set_on(&self) -> bool {
        self.control.fetch_or(pid::ON, Ordering::SeqCst) & pid::ON != 0
    }

    #[cfg(feature = "ktest")]
    /// Sets SN: later non-urgent posts set their PIR bit and notify nobody.
    pub fn set_sn(&self) {
        self.control.fetch_or(pid::SN, Ordering::SeqCst);
    }

    #[cfg(feature = "ktest")]
    /// Clears SN. Requests posted meanwhile stay in PIR with ON clear: see
    /// [`PostedDescriptor::test_and_set_on`].
    pub fn clear_sn(&self) {
        self.control.fetch_and(!pid::SN, Ordering::SeqCst);
    }

    /// PIR qword `q` (0..4; bits 64q..64q+63).
    pub fn pir(&self, q: usize) -> u64 {
        self.pir.get(q).map_or(0, |w| w.load(Ordering::SeqCst))
    }

    #[cfg(feature = "ktest")]
    /// Takes PIR qword `q`: swaps in zero (`xchg`) and returns what was set.
    pub fn take_pir(&self, q: usize) -> u64 {
        self.pir.get(q).map_or(0, |w| w.swap(0, Ordering::SeqCst))
    }

    #[cfg(feature = "ktest")]
    /// Whether PIR bit `v` is set.
    pub fn pir_bit(&self, v: u8) -> bool {
        let (q, m) = pid::pir_bit(v);
        self.pir(q) & m != 0
    }

    #[cfg(feature = "ktest")]
    /// Sets PIR bit `v` (`lock or`), e.g. to move a request found at the old descriptor
    /// after a retarget; returns whether it was set.
    pub fn set_pir_bit(&self, v: u8) -> bool {
        let (q, m) = pid::pir_bit(v);
        self.pir[q].fetch_or(m, Ordering::SeqCst) & m != 0
    }

    #[cfg(feature = "ktest")]
    /// Clears PIR bit `v` (`lock and`); returns whether it was set.
    pub fn clear_pir_bit(&self, v: u8) -> bool {
        let (q, m) = pid::pir_bit(v);
        self.pir[q].fetch_and(!m, Ordering::SeqCst) & m != 0
    }

    #[cfg(feature = "ktest")]
    /// Whether no PIR bit is set.
    pub fn pir_is_empty(&self) -> bool {
        (0..pid::PIR_QWORDS).all(|q| self.pir(q) == 0)
    }

    /// The four PIR words (the IMS chip's handler takes them with `xchg`).
    pub fn pir_words(&self) -> &[AtomicU64; pid::PIR_QWORDS] {
        &self.pir
    }

    /// The control word (ON, SN, NV, NDST; the IMS chip's handler clears ON in it).
    pub fn control_word(&self) -> &AtomicU64 {
        &self.control
    }
}

/// Whether NDST values use the x2APIC format: the units' IRTE format (IRTA.EIME), which must
/// be the same on all of them for a descriptor any of them may post to.
fn ndst_x2apic() -> Result<bool, IommuError> {
    let io = iommu()?;
    let mut modes = io.units.iter().map(|u| u.lock().x2apic_irtes());
    let first = modes.next().ok_or(IommuError::NotEnabled)?;
    if modes.any(|m| m != first) {
        return Err(IommuError::MixedInterruptModes);
    }
    Ok(first)
}

/// Whether posted routes can be made: an IOMMU is in use, every unit reports CAP.PI, and the
/// CPU has CMPXCHG16B (a posted IRTE's descriptor address spans both of its qwords; Linux
/// demands the same).
pub fn posted_supported() -> bool {
    crate::arch::features().cx16
        && iommu().is_ok_and(|io| {
            !io.units.is_empty() && io.units.iter().all(|u| u.lock().posted_interrupts())
        })
}

/// A device message (MSI, MSI-X or IMS entry) that posts: its IRTE (posted format, §9.10)
/// checks the device's requester ID like [`MsiRoute`]'s and then sets bit `vector` of the
/// descriptor's PIR. Dropping it frees the IRTE; mask the device's entry first.
#[derive(Debug)]
pub struct PostedRoute {
    dev: PciAddress,
    unit: usize,
    irte: IrteHandle,
    pid: &'static PostedDescriptor,
    vector: u8,
    urgent: bool,
}

fn check_target(pid: &PostedDescriptor) -> Result<(), IommuError> {
    if !crate::arch::features().cx16 {
        return Err(IommuError::PostedUnsupported);
    }
    let nv = pid.control().nv;
    if nv < 16 {
        return Err(IommuError::BadNotificationVector(nv));
    }
    Ok(())
}

fn posted_error(unit: usize, err: VtdError) -> IommuError {
    match err {
        VtdError::Missing(vtd::error::Requirement::PostedInterrupts) => {
            IommuError::PostedUnsupported
        }
        err => IommuError::Vtd { unit, err },
    }
}

impl PostedRoute {
    #[cfg(feature = "ktest")]
    /// Routes `dev`'s message to PIR bit `vector` of `pid` (non-urgent). `pid` needs its
    /// notification set ([`PostedDescriptor::set_notification`]). Fails with
    /// [`IommuError::PostedUnsupported`] when the device's unit has no CAP.PI.
    pub fn new(
        dev: PciAddress,
        pid: &'static PostedDescriptor,
        vector: u8,
    ) -> Result<Self, IommuError> {
        check_target(pid)?;
        let s = iommu()?.unit_of(dev)?;
        let sv = SourceValidation::RequesterId {
            sid: rid(dev).sid(),
            sq: 0,
        };
        let irte = s
            .lock()
            .alloc_posted_irte(pid.addr(), vector, false, sv)
            .map_err(|e| posted_error(s.index, e))?;
        Ok(Self {
            dev,
            unit: s.index,
            irte,
            pid,
            vector,
            urgent: false,
        })
    }

    #[cfg(feature = "ktest")]
    /// The address/data the device must send (remappable format, naming the IRTE).
    pub fn message(&self) -> MsiMessage {
        let m = vtd::spec::RemappableMsi::for_handle(self.irte.index);
        MsiMessage {
            address: m.address(),
            data: m.data,
        }
    }

    /// IRTE index (interrupt-remapping fault records name it).
    pub fn irte_index(&self) -> u16 {
        self.irte.index
    }

    #[cfg(feature = "ktest")]
    /// The device.
    pub fn device(&self) -> PciAddress {
        self.dev
    }

    #[cfg(feature = "ktest")]
    /// The descriptor posted to.
    pub fn descriptor(&self) -> &'static PostedDescriptor {
        self.pid
    }

    #[cfg(feature = "ktest")]
    /// The PIR bit set.
    pub fn vector(&self) -> u8 {
        self.vector
    }

    #[cfg(feature = "ktest")]
    /// Whether posts notify even when the descriptor's SN is set (URG).
    pub fn urgent(&self) -> bool {
        self.urgent
    }

    fn write(
        &mut self,
        pid: &'static PostedDescriptor,
        vector: u8,
        urgent: bool,
    ) -> Result<(), IommuError> {
        check_target(pid)?;
        let s = &iommu()?.units[self.unit];
        s.lock()
            .set_irte_posted(self.irte, pid.addr(), vector, urgent)
            .map_err(|e| posted_error(self.unit, e))?;
        self.pid = pid;
        self.vector = vector;
        self.urgent = urgent;
        Ok(())
    }

    /// Posts to PIR bit `vector` of `pid` from now on: one atomic IRTE update (a 128-bit
    /// compare-and-exchange when the descriptor address changes in both qwords), then an
    /// index-selective interrupt-entry-cache invalidation, waited for. Returns the previous
    /// (descriptor, bit): a request the unit processed with the old entry may have landed
    /// there, so the caller checks that bit once.
    pub fn retarget_posted(
        &mut self,
        pid: &'static PostedDescriptor,
        vector: u8,
    ) -> Result<(&'static PostedDescriptor, u8), IommuError> {
        let old = (self.pid, self.vector);
        self.write(pid, vector, self.urgent)?;
        Ok(old)
    }

    #[cfg(feature = "ktest")]
    /// Sets or clears URG (notify despite SN, §9.10).
    pub fn set_urgent(&mut self, urgent: bool) -> Result<(), IommuError> {
        self.write(self.pid, self.vector, urgent)
    }

    #[cfg(feature = "ktest")]
    /// Changes the requester ID the IRTE accepts (as [`MsiRoute::set_source_id`]).
    pub fn set_source_id(&mut self, sid: u16) -> Result<(), IommuError> {
        let s = &iommu()?.units[self.unit];
        s.vtd(
            s.lock()
                .set_irte_source(self.irte, SourceValidation::RequesterId { sid, sq: 0 }),
        )
    }

    #[cfg(feature = "ktest")]
    /// The IRTE as the unit holds it (diagnostics).
    pub fn irte(&self) -> Option<IrteFormat> {
        iommu().ok()?.units[self.unit]
            .lock()
            .read_irte_format(self.irte.index)
            .ok()
    }

    #[cfg(feature = "ktest")]
    /// Writes raw bits into the IRTE (atomically, then IEC), for tests that need entries the
    /// API refuses to build (reserved bits, a descriptor in MMIO); the route's own view of
    /// its target is not updated.
    ///
    /// # Safety
    /// A posted-format entry makes the unit write to the descriptor address it names.
    pub unsafe fn write_irte_raw(&mut self, q: [u64; 2]) -> Result<(), IommuError> {
        let s = &iommu()?.units[self.unit];
        // SAFETY: forwarded to the caller.
        s.vtd(unsafe { s.lock().write_irte_raw(self.irte, q) })
    }

    #[cfg(feature = "ktest")]
    /// Converts the IRTE back to the remapped format, delivering `vector` on `cpu` (same
    /// IRTE, same message; one atomic update and an IEC invalidation). On error the route
    /// comes back unchanged.
    pub fn into_remapped(
        self,
        cpu: usize,
        vector: u8,
    ) -> Result<MsiRoute, (PostedRoute, IommuError)> {
        let r = apic_of(cpu).and_then(|apic_id| {
            let s = &iommu()?.units[self.unit];
            s.vtd(s.lock().set_irte_remapped(self.irte, apic_id, vector))
                .map_err(|e| match e {
                    IommuError::Vtd {
                        err: VtdError::ApicIdTooWide { apic_id },
                        ..
                    } => IommuError::ApicIdTooWide { cpu, apic_id },
                    e => e,
                })
        });
        if let Err(e) = r {
            return Err((self, e));
        }
        let this = core::mem::ManuallyDrop::new(self);
        Ok(MsiRoute {
            dev: this.dev,
            cpu,
            vector,
            irte: Some((this.unit, this.irte)),
        })
    }

    /// Frees the IRTE now, reporting errors (dropping does the same, logging them). The unit
    /// may still complete a request it read the entry for before the invalidation: the
    /// descriptor's bit may be set once more.
    pub fn free(self) -> Result<(), IommuError> {
        let this = core::mem::ManuallyDrop::new(self);
        this.free_irte()
    }

    fn free_irte(&self) -> Result<(), IommuError> {
        let s = &iommu()?.units[self.unit];
        s.vtd(s.lock().free_irte(self.irte))
    }
}

impl Drop for PostedRoute {
    fn drop(&mut self) {
        if let Err(e) = self.free_irte() {
            log::error!("freeing the posted route of {}: {e}", self.dev);
        }
    }
}

impl MsiRoute {
    #[cfg(feature = "ktest")]
    /// As [`PostedRoute::write_irte_raw`], for a remapped route (its own view of its target is
    /// not updated).
    ///
    /// # Safety
    /// A posted-format entry makes the unit write to the descriptor address it names.
    pub unsafe fn write_irte_raw(&mut self, q: [u64; 2]) -> Result<(), IommuError> {
        let Some((u, h)) = self.irte else {
            return Err(IommuError::NotEnabled);
        };
        let s = &iommu()?.units[u];
        // SAFETY: forwarded to the caller.
        s.vtd(unsafe { s.lock().write_irte_raw(h, q) })
    }

    /// Converts a remapped route to a posted one in place: the same IRTE (so the device's
    /// message stays the same) now posts to PIR bit `vector` of `pid`; one atomic IRTE update
    /// and an IEC invalidation. On error the route comes back unchanged.
    pub fn into_posted(
        mut self,
        pid: &'static PostedDescriptor,
        vector: u8,
    ) -> Result<PostedRoute, (MsiRoute, IommuError)> {
        let Some((unit, irte)) = self.irte else {
            return Err((self, IommuError::NotEnabled));
        };
        let r = check_target(pid).and_then(|()| {
            let s = &iommu()?.units[unit];
            s.lock()
                .set_irte_posted(irte, pid.addr(), vector, false)
                .map_err(|e| posted_error(unit, e))
        });
        if let Err(e) = r {
            return Err((self, e));
        }
        // The IRTE now belongs to the posted route.
        self.irte = None;
        Ok(PostedRoute {
            dev: self.dev,
            unit,
            irte,
            pid,
            vector,
            urgent: false,
        })
    }
}
