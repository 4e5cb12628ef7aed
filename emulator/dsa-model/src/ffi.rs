//! The C ABI of `include/dsa_model.h` (used by the QEMU adapter). Every entry point checks
//! its pointers for NULL and catches panics, so nothing unwinds into C.

use crate::{Config, Device, DmaSpace, Platform, PortalResult, StoreKind, TraceEvent};
use std::ffi::{c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// `DsaModelConfig`: zero means "default".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DsaModelConfig {
    pub version: u32,
    pub num_wqs: u32,
    pub num_engines: u32,
    pub num_groups: u32,
    pub total_wq_size: u32,
    pub ims_entries: u32,
    pub ims_disable: u32,
    pub max_xfer_shift: u32,
    pub max_batch_shift: u32,
    pub msix_entries: u32,
    pub no_shared_wq: u32,
    pub cmdcap: u32,
    pub fault_injection: u32,
}

impl DsaModelConfig {
    /// The Rust configuration this C configuration describes.
    pub fn to_config(&self) -> Config {
        let d = Config::default();
        let or = |v: u32, def: u32| if v == 0 { def } else { v };
        let num_wqs = or(self.num_wqs, d.num_wqs);
        Config {
            version: or(self.version, d.version),
            num_wqs,
            num_engines: or(self.num_engines, d.num_engines),
            num_groups: or(self.num_groups, d.num_groups),
            total_wq_size: or(self.total_wq_size, d.total_wq_size),
            ims_entries: if self.ims_disable != 0 {
                0
            } else {
                or(self.ims_entries, d.ims_entries)
            },
            max_xfer_shift: or(self.max_xfer_shift, d.max_xfer_shift),
            max_batch_shift: or(self.max_batch_shift, d.max_batch_shift),
            msix_entries: or(self.msix_entries, num_wqs.saturating_add(1)),
            shared_wq: self.no_shared_wq == 0,
            cmdcap: self.cmdcap != 0,
            fault_injection: self.fault_injection != 0,
            ..d
        }
    }
}

/// `DsaModelLayout`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DsaModelLayout {
    pub bar0_size: u64,
    pub bar2_size: u64,
    pub msix_table_off: u64,
    pub msix_pba_off: u64,
    pub msix_entries: u32,
    pub num_workers: u32,
}

pub type DmaReadFn = unsafe extern "C" fn(*mut c_void, i64, bool, u64, *mut u8, u64) -> u64;
pub type DmaWriteFn = unsafe extern "C" fn(*mut c_void, i64, bool, u64, *const u8, u64) -> u64;
pub type MsixNotifyFn = unsafe extern "C" fn(*mut c_void, u32);
pub type SendMsiFn = unsafe extern "C" fn(*mut c_void, u64, u32);
pub type TraceFn = unsafe extern "C" fn(*mut c_void, u32, u64, u64, u64, u64);

/// `DsaPlatformOps`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DsaPlatformOps {
    pub dma_read: Option<DmaReadFn>,
    pub dma_write: Option<DmaWriteFn>,
    pub msix_notify: Option<MsixNotifyFn>,
    pub send_msi: Option<SendMsiFn>,
    pub trace: Option<TraceFn>,
}

struct CPlatform {
    ops: DsaPlatformOps,
    opaque: *mut c_void,
}

// SAFETY: the header's contract makes the callbacks callable from any thread, concurrently,
// and `opaque` is owned by the adapter and outlives the model (freed after dsa_model_free).
unsafe impl Send for CPlatform {}
// SAFETY: as above; the model only passes `opaque` back to the callbacks.
unsafe impl Sync for CPlatform {}

fn pasid_arg(space: DmaSpace) -> (i64, bool) {
    match space {
        Some((p, privileged)) => (i64::from(p), privileged),
        None => (-1, false),
    }
}

impl Platform for CPlatform {
    fn dma_read(&self, space: DmaSpace, addr: u64, buf: &mut [u8]) -> usize {
        let Some(f) = self.ops.dma_read else { return 0 };
        let (p, pr) = pasid_arg(space);
        // SAFETY: `buf` is a valid, exclusive buffer of `buf.len()` bytes for the call.
        let n = unsafe { f(self.opaque, p, pr, addr, buf.as_mut_ptr(), buf.len() as u64) };
        n.min(buf.len() as u64) as usize
    }
    fn dma_write(&self, space: DmaSpace, addr: u64, buf: &[u8]) -> usize {
        let Some(f) = self.ops.dma_write else {
            return 0;
        };
        let (p, pr) = pasid_arg(space);
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the call.
        let n = unsafe { f(self.opaque, p, pr, addr, buf.as_ptr(), buf.len() as u64) };
        n.min(buf.len() as u64) as usize
    }
    fn msix_notify(&self, entry: u32) {
        if let Some(f) = self.ops.msix_notify {
            // SAFETY: plain-value arguments; the callback contract is the header's.
            unsafe { f(self.opaque, entry) }
        }
    }
    fn send_msi(&self, addr: u64, data: u32) {
        if let Some(f) = self.ops.send_msi {
            // SAFETY: plain-value arguments; the callback contract is the header's.
            unsafe { f(self.opaque, addr, data) }
        }
    }
    fn trace(&self, event: TraceEvent) {
        if let Some(f) = self.ops.trace {
            let (id, a) = event.to_raw();
            // SAFETY: plain-value arguments; the callback contract is the header's.
            unsafe { f(self.opaque, id, a[0], a[1], a[2], a[3]) }
        }
    }
}

/// Opaque handle of the C API.
pub struct DsaModel {
    dev: Device,
}

impl core::fmt::Debug for DsaModel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.dev.fmt(f)
    }
}

fn write_err(err: *mut c_char, err_len: usize, msg: &str) {
    if err.is_null() || err_len == 0 {
        return;
    }
    let n = msg.len().min(err_len - 1);
    // SAFETY: the caller provides `err_len` writable bytes at `err`; we write n + 1 ≤ err_len.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), err.cast::<u8>(), n);
        *err.add(n) = 0;
    }
}

fn guard<T>(default: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(default)
}

/// # Safety
/// `cfg` and `ops` must be NULL or valid; `err` must be NULL or hold `err_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dsa_model_new(
    cfg: *const DsaModelConfig,
    ops: *const DsaPlatformOps,
    opaque: *mut c_void,
    err: *mut c_char,
    err_len: usize,
) -> *mut DsaModel {
    guard(std::ptr::null_mut(), || {
        if cfg.is_null() || ops.is_null() {
            write_err(err, err_len, "NULL config or ops");
            return std::ptr::null_mut();
        }
        // SAFETY: checked non-NULL; the caller guarantees validity.
        let (c, o) = unsafe { (*cfg, *ops) };
        let platform = Arc::new(CPlatform { ops: o, opaque });
        match Device::new(c.to_config(), platform) {
            Ok(dev) => Box::into_raw(Box::new(DsaModel { dev })),
            Err(e) => {
                write_err(err, err_len, &e.to_string());
                std::ptr::null_mut()
            }
        }
    })
}

/// # Safety
/// `m` must be NULL or a pointer from `dsa_model_new` not yet freed, with every worker
/// returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dsa_model_free(m: *mut DsaModel) {
    if !m.is_null() {
        // SAFETY: the pointer came from Box::into_raw in dsa_model_new and is freed once.
        let b = unsafe { Box::from_raw(m) };
        guard((), move || drop(b));
    }
}

/// Dereferences a model handle.
///
/// # Safety
/// `m` must be NULL or a live pointer from `dsa_model_new`.
unsafe fn dev<'a>(m: *const DsaModel) -> Option<&'a Device> {
    // SAFETY: the caller guarantees `m` is NULL or live; shared access only.
    unsafe { m.as_ref() }.map(|m| &m.dev)
}

/// # Safety
/// `m` must be NULL or live; `out` must be NULL or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dsa_model_layout(m: *const DsaModel, out: *mut DsaModelLayout) {
    // SAFETY: see the function contract.
    let Some(d) = (unsafe { dev(m) }) else { return };
    if out.is_null() {
        return;
    }
    let l = d.layout();
    let v = DsaModelLayout {
        bar0_size: l.bar0_size,
        bar2_size: l.bar2_size,
        msix_table_off: l.msix_table_off,
        msix_pba_off: l.msix_pba_off,
        msix_entries: l.msix_entries,
        num_workers: l.num_workers,
    };
    // SAFETY: checked non-NULL; the caller guarantees it is writable.
    unsafe { out.write(v) };
}

/// # Safety
/// `m` must be NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dsa_model_bar0_read(m: *mut DsaModel, offset: u64, size: u32) -> u64 {
    // SAFETY: see the function contract.
    let Some(d) = (unsafe { dev(m) }) else {
        return 0;
    };
    guard(0, || d.bar0_read(offset, size))
}

/// # Safety
/// `m` must be NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dsa_model_bar0_write(
    m: *mut DsaModel,
    offset: u64,
    value: u64,
    size: u32,
) {
    // SAFETY: see the function contract.
    let Some(d) = (unsafe { dev(m) }) else { return };
    guard((), || d.bar0_write(offset, value, size));
}

/// `DSA_PORTAL_ACCEPTED` / `DSA_PORTAL_RETRY`.
pub const DSA_PORTAL_ACCEPTED: u32 = 0;
pub const DSA_PORTAL_RETRY: u32 = 1;
pub const DSA_PORTAL_POSTED: u32 = 0;
pub const DSA_PORTAL_DMWR: u32 = 1;

/// # Safety
/// `m` must be NULL or live; `desc` must be NULL or point to 64 readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dsa_model_portal_submit(
    m: *mut DsaModel,
    offset: u64,
    desc: *const u8,
    kind: u32,
) -> u32 {
    // SAFETY: see the function contract.
    let Some(d) = (unsafe { dev(m) }) else {
        return DSA_PORTAL_RETRY;
    };
    if desc.is_null() {
        return DSA_PORTAL_RETRY;
    }
    let mut b = [0u8; 64];
    // SAFETY: the caller guarantees 64 readable bytes at `desc`.
    unsafe { std::ptr::copy_nonoverlapping(desc, b.as_mut_ptr(), 64) };
    let k = if kind == DSA_PORTAL_DMWR {
        StoreKind::DmWr
    } else {
        StoreKind::Posted
    };
    guard(DSA_PORTAL_RETRY, || match d.portal_submit(offset, &b, k) {
        PortalResult::Accepted => DSA_PORTAL_ACCEPTED,
        PortalResult::Retry => DSA_PORTAL_RETRY,
    })
}

/// # Safety
/// `m` must be NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dsa_model_portal_partial(m: *mut DsaModel, offset: u64, size: u32) {
    // SAFETY: see the function contract.
    let Some(d) = (unsafe { dev(m) }) else { return };
    guard((), || d.portal_partial(offset, size));
}

/// # Safety
/// `m` must be NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dsa_model_set_pci_state(m: *mut DsaModel, flags: u32) {
    // SAFETY: see the function contract.
    let Some(d) = (unsafe { dev(m) }) else { return };
    guard((), || d.set_pci_state(flags));
}

/// # Safety
/// `m` must be NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dsa_model_reset(m: *mut DsaModel) {
    // SAFETY: see the function contract.
    let Some(d) = (unsafe { dev(m) }) else { return };
    guard((), || d.reset());
}

/// # Safety
/// `m` must be NULL or live, and stay live until this returns.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dsa_model_worker_run(m: *mut DsaModel, worker_index: u32) {
    // SAFETY: see the function contract.
    let Some(d) = (unsafe { dev(m) }) else { return };
    // A panic inside one descriptor must not kill the engine: restart the loop.
    loop {
        if catch_unwind(AssertUnwindSafe(|| d.worker_run(worker_index))).is_ok() {
            return;
        }
    }
}

/// # Safety
/// `m` must be NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dsa_model_stop(m: *mut DsaModel) {
    // SAFETY: see the function contract.
    let Some(d) = (unsafe { dev(m) }) else { return };
    guard((), || d.stop());
}
