//! Time: a TSC clock calibrated against the HPET (or the ACPI PM timer, or CPUID leaf
//! 0x15/0x16), deadlines for bounded waits, delays, and the LAPIC timer.
//!
//! `now_ns()` counts from kernel entry. Under `-icount shift=0` QEMU advances the TSC by
//! one per guest instruction, so TSC deltas are deterministic instruction counts.

use alloc::boxed::Box;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

use hwio::RegistersExt;
use spin::Once;
use x86_64::instructions::port::Port;

use crate::arch::apic::{self, reg};
use crate::arch::{percpu, rdtsc};
use crate::mm::Mmio;
use crate::sync::IrqMutex;

static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
static TSC_HZ: AtomicU64 = AtomicU64::new(0);
/// `ns = (tsc_delta * NS_MULT) >> 32`.
static NS_MULT: AtomicU64 = AtomicU64::new(0);
/// LAPIC timer ticks per second with divide-by-16.
static LAPIC_HZ: AtomicU64 = AtomicU64::new(0);
static CALIBRATION: Once<Calibration> = Once::new();

/// TSC rate assumed before calibration: high, so early timeouts are never shorter than
/// asked on real CPUs.
const UNCALIBRATED_HZ: u64 = 10_000_000_000;
/// LAPIC timer divide configuration value for divide-by-16.
const LAPIC_DIVIDE_16: u32 = 0b0011;

/// Records the TSC at kernel entry (time zero).
pub fn mark_boot() {
    BOOT_TSC.store(rdtsc(), Ordering::Relaxed);
}

/// Nanoseconds since kernel entry (0 before calibration).
pub fn now_ns() -> u64 {
    let m = NS_MULT.load(Ordering::Relaxed);
    let d = rdtsc().wrapping_sub(BOOT_TSC.load(Ordering::Relaxed));
    ((d as u128 * m as u128) >> 32) as u64
}

/// Calibrated TSC frequency (0 before calibration).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

fn hz_or_guess() -> u64 {
    match TSC_HZ.load(Ordering::Relaxed) {
        0 => UNCALIBRATED_HZ,
        h => h,
    }
}

/// A point in time for bounded waits.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    tsc: u64,
}

impl Deadline {
    /// `d` from now.
    pub fn after(d: Duration) -> Self {
        let ticks = (d.as_nanos().saturating_mul(hz_or_guess() as u128) / 1_000_000_000)
            .min(u64::MAX as u128 / 2);
        Self {
            tsc: rdtsc().saturating_add(ticks as u64),
        }
    }
    /// `us` microseconds from now.
    pub fn after_us(us: u64) -> Self {
        Self::after(Duration::from_micros(us))
    }
    /// `ms` milliseconds from now.
    pub fn after_ms(ms: u64) -> Self {
        Self::after(Duration::from_millis(ms))
    }
    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        rdtsc() >= self.tsc
    }
    /// Time left (zero once expired).
    pub fn remaining(&self) -> Duration {
        let t = self.tsc.saturating_sub(rdtsc());
        Duration::from_nanos((t as u128 * 1_000_000_000 / hz_or_guess() as u128) as u64)
    }
}

/// A bounded wait ran out (the one timeout type of every driver crate).
pub use hwio::Timeout;

/// The calibrated clock as the driver crates' [`hwio::Clock`] (use it after calibration:
/// before, [`now_ns`] stands still and `hwio::wait_until` ends on its poll count).
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelClock;

impl hwio::Clock for KernelClock {
    fn now_ns(&self) -> u64 {
        now_ns()
    }
    fn delay_us(&self, us: u32) {
        delay_us(u64::from(us));
    }
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T, Timeout> {
    let d = Deadline::after(timeout);
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if d.expired() {
            // One last look: the condition may have become true while we were preempted.
            return f().ok_or(Timeout);
        }
        core::hint::spin_loop();
    }
}

/// Busy-waits `d`.
pub fn delay(d: Duration) {
    let dl = Deadline::after(d);
    while !dl.expired() {
        core::hint::spin_loop();
    }
}

/// Busy-waits `us` microseconds.
pub fn delay_us(us: u64) {
    delay(Duration::from_micros(us))
}

/// Time errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeError {
    /// No HPET, no PM timer, no CPUID frequency leaves.
    NoReferenceTimer,
    /// The reference timer did not advance during calibration.
    ReferenceStuck(&'static str),
    /// The HPET reports an invalid period.
    BadHpetPeriod(u64),
    /// Mapping the HPET failed.
    Map(crate::mm::MmError),
    /// Calibration produced an implausible frequency.
    Implausible {
        /// Which clock.
        what: &'static str,
        /// Measured Hz.
        hz: u64,
    },
    /// The LAPIC timer is not calibrated.
    NotCalibrated,
    /// The requested timer interval does not fit the 32-bit count.
    IntervalTooLong(u64),
}

impl fmt::Display for TimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoReferenceTimer => write!(
                f,
                "no reference timer (HPET, ACPI PM timer or CPUID 0x15/0x16)"
            ),
            Self::ReferenceStuck(w) => write!(f, "the {w} does not advance"),
            Self::BadHpetPeriod(p) => write!(
                f,
                "HPET period {p} fs is out of range (or no HPET answers at its address)"
            ),
            Self::Map(e) => write!(f, "cannot map the HPET: {e}"),
            Self::Implausible { what, hz } => {
                write!(f, "calibrated {what} frequency {hz} Hz is implausible")
            }
            Self::NotCalibrated => write!(f, "the LAPIC timer is not calibrated"),
            Self::IntervalTooLong(ns) => write!(f, "timer interval {ns} ns is too long"),
        }
    }
}

impl core::error::Error for TimeError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Map(e) => Some(e),
            _ => None,
        }
    }
}

/// Result of calibration.
#[derive(Debug, Clone, Copy)]
pub struct Calibration {
    /// Reference used.
    pub reference: &'static str,
    /// TSC frequency.
    pub tsc_hz: u64,
    /// LAPIC timer ticks per second at divide-by-16.
    pub lapic_hz: u64,
    /// Window length used.
    pub window_ns: u64,
}

/// The calibration result, if done.
pub fn calibration() -> Option<&'static Calibration> {
    CALIBRATION.get()
}

hwio::register_map! {
    /// The HPET registers the kernel uses (IA-PC HPET Specification 1.0a, §2.3.1).
    mod hpet {
        /// General Capabilities and ID (§2.3.4).
        0x00 => GCAP_ID: u64, ReadOnly;
        /// General Configuration (§2.3.5): bit 0 ENABLE_CNF, bit 1 LEG_RT_CNF.
        0x10 => GEN_CONF: u64, ReadWrite;
        /// Main Counter Value (§2.3.7).
        0xf0 => MAIN_COUNTER: u64, ReadOnly;
    }
}

enum Reference {
    Hpet {
        regs: Mmio,
        period_fs: u64,
        wide: bool,
    },
    PmTimer {
        port: u16,
        wide: bool,
    },
}

impl Reference {
    fn name(&self) -> &'static str {
        match self {
            Self::Hpet { .. } => "HPET",
            Self::PmTimer { .. } => "ACPI PM timer",
        }
    }
    fn hz(&self) -> u64 {
        match self {
            Self::Hpet { period_fs, .. } => 1_000_000_000_000_000 / period_fs,
            Self::PmTimer { .. } => 3_579_545,
        }
    }
    fn mask(&self) -> u64 {
        match self {
            Self::Hpet { wide: true, .. } => u64::MAX,
            Self::Hpet { wide: false, .. } | Self::PmTimer { wide: true, .. } => 0xffff_ffff,
            Self::PmTimer { wide: false, .. } => 0x00ff_ffff,
        }
    }
    fn read(&self) -> u64 {
        match self {
            Self::Hpet { regs, .. } => regs.read(hpet::MAIN_COUNTER) & self.mask(),
            Self::PmTimer { port, .. } => {
                // SAFETY: the PM timer port from the FADT is read-only status.
                unsafe { Port::<u32>::new(*port).read() as u64 & self.mask() }
            }
        }
    }
}

/// The HPET as a reference, if the ACPI table names one that answers: its register block
/// maps as MMIO (not RAM), REV_ID is non-zero and the period is within the HPET
/// specification's 100 ns (IA-PC HPET spec 1.0a, 2.3.4). An absent device reads all-ones.
fn hpet_reference() -> Option<Result<Reference, TimeError>> {
    let h = crate::acpi::info().and_then(|i| i.hpet)?;
    Some((|| {
        let regs =
            Mmio::map(h.base_address, klib::acpi::HPET_REGISTER_BLOCK).map_err(TimeError::Map)?;
        let (caps, conf) = (regs.read(hpet::GCAP_ID), regs.read(hpet::GEN_CONF));
        let period = caps >> 32;
        if caps & 0xff == 0 || period == 0 || period > 100_000_000 {
            return Err(TimeError::BadHpetPeriod(period));
        }
        if conf & 1 == 0 {
            // ENABLE_CNF starts the main counter; legacy routing stays off.
            regs.write(hpet::GEN_CONF, (conf | 1) & !2);
        }
        Ok(Reference::Hpet {
            regs,
            period_fs: period,
            wide: caps & (1 << 13) != 0,
        })
    })())
}

/// The ACPI PM timer from the FADT, if there is one.
fn pm_timer_reference() -> Option<Reference> {
    crate::acpi::info()
        .and_then(|i| i.pm_timer)
        .map(|p| Reference::PmTimer {
            port: p.port,
            wide: p.wide,
        })
}

/// TSC frequency from CPUID 0x15 (crystal ratio) or 0x16 (base frequency).
fn cpuid_tsc_hz() -> Option<u64> {
    let f = crate::arch::features();
    let (den, num, crystal) = f.tsc_ratio;
    if den != 0 && num != 0 && crystal != 0 {
        Some(crystal as u64 * num as u64 / den as u64)
    } else if f.base_mhz != 0 {
        Some(f.base_mhz as u64 * 1_000_000)
    } else {
        None
    }
}

/// Calibrates the TSC against the reference timer, then the LAPIC timer against the TSC
/// (BSP, after ACPI, the APIC and the system-vector handlers are up).
///
/// The HPET is preferred; one that the firmware lists but that cannot be used (mapped over
/// RAM, absent, an impossible period, a counter that does not move) is reported with a
/// warning and the ACPI PM timer, else CPUID, is used instead.
pub fn init() -> Result<Calibration, TimeError> {
    let window_ms = crate::cmdline::TSC_CALIBRATE_MS.get();
    let mut measured = None;
    match hpet_reference() {
        Some(Ok(r)) => match tsc_against(&r, window_ms) {
            Ok((hz, ns)) => measured = Some((r.name(), hz, ns)),
            Err(e) => log::warn!("HPET unusable ({e}); trying the ACPI PM timer"),
        },
        Some(Err(e)) => log::warn!("HPET unusable ({e}); trying the ACPI PM timer"),
        None => {}
    }
    if measured.is_none()
        && let Some(r) = pm_timer_reference()
    {
        let (hz, ns) = tsc_against(&r, window_ms)?;
        measured = Some((r.name(), hz, ns));
    }
    let (name, tsc_hz, window_ns) = match measured {
        Some(m) => m,
        None => (
            "CPUID 0x15/0x16",
            cpuid_tsc_hz().ok_or(TimeError::NoReferenceTimer)?,
            0,
        ),
    };
    if !(10_000_000..=100_000_000_000).contains(&tsc_hz) {
        return Err(TimeError::Implausible {
            what: "TSC",
            hz: tsc_hz,
        });
    }
    let lapic_hz = lapic_against_tsc(tsc_hz, window_ms)?;
    finish(name, tsc_hz, lapic_hz, window_ns)
}

/// Reads the reference bracketed by two TSC reads, retrying while the pair is not tight
/// (the vCPU may be preempted between the reads under emulation). Returns the reference
/// value and the TSC midpoint.
fn paired(reference: &Reference) -> (u64, u64) {
    let mut best = (0, 0, u64::MAX);
    for _ in 0..64 {
        let a = rdtsc();
        let r = reference.read();
        let b = rdtsc();
        if b - a < best.2 {
            best = (r, a + (b - a) / 2, b - a);
        }
        // 20 µs at 5 GHz: far above the cost of one timer read, far below any preemption.
        if b - a < 100_000 {
            break;
        }
    }
    (best.0, best.1)
}

/// Counts TSC ticks over `window_ms` of the reference; returns (TSC Hz, window ns).
fn tsc_against(reference: &Reference, window_ms: u64) -> Result<(u64, u64), TimeError> {
    let ref_hz = reference.hz();
    let want = ref_hz * window_ms / 1000;
    let mask = reference.mask();
    let (first, _) = paired(reference);
    let mut spins = 0u64;
    let (r0, t0) = loop {
        let (r, t) = paired(reference);
        if r != first {
            break (r, t);
        }
        spins += 1;
        if spins > 50_000_000 {
            return Err(TimeError::ReferenceStuck(reference.name()));
        }
    };
    let mut spins = 0u64;
    let (r1, t1) = loop {
        spins += 1;
        if spins > 500_000_000 {
            return Err(TimeError::ReferenceStuck(reference.name()));
        }
        let (r, t) = paired(reference);
        if (r.wrapping_sub(r0) & mask) >= want {
            break (r, t);
        }
    };
    let dr = (r1.wrapping_sub(r0) & mask) as u128;
    Ok((
        ((t1 - t0) as u128 * ref_hz as u128 / dr) as u64,
        (dr * 1_000_000_000 / ref_hz as u128) as u64,
    ))
}

/// Measures the LAPIC timer rate against the TSC.
///
/// Default: read the current-count register at both ends of the window, each read paired
/// with the TSC like the reference reads — immune to the vCPU being descheduled by the host,
/// which only delays *interrupts*. Under QEMU `-icount`, reading that register through the
/// x2APIC MSR aborts QEMU ("Bad icount read"), so `lapic.calibrate=irq` (added by
/// `qemu-run.sh --icount`) times one-shot interrupts instead: the count doubles until one
/// interval is at least half the window, then the shortest of three intervals at that
/// count is used.
fn lapic_against_tsc(tsc_hz: u64, window_ms: u64) -> Result<u64, TimeError> {
    let by_irq =
        apic::mode() == apic::Mode::X2Apic && crate::cmdline::get("lapic.calibrate") == Some("irq");
    if !by_irq {
        apic::write(reg::TIMER_DIVIDE, LAPIC_DIVIDE_16);
        apic::write(
            reg::LVT_TIMER,
            apic::LVT_MASKED | crate::irq::TIMER_VECTOR as u32,
        );
        apic::write(reg::TIMER_INITIAL, u32::MAX);
        // Each count read bracketed by two TSC reads, the tightest pair of a few tries: a
        // vCPU preempted between a TSC read and its count read would skew the rate.
        let paired_count = || {
            let mut best = (0u32, 0u64, u64::MAX);
            for _ in 0..64 {
                let a = rdtsc();
                let l = apic::read(reg::TIMER_CURRENT);
                let b = rdtsc();
                if b - a < best.2 {
                    best = (l, a + (b - a) / 2, b - a);
                }
                if b - a < 100_000 {
                    break;
                }
            }
            (best.0, best.1)
        };
        let (l0, t0) = paired_count();
        let end = t0 + tsc_hz * window_ms / 1000;
        while rdtsc() < end {
            core::hint::spin_loop();
        }
        let (l1, t1) = paired_count();
        stop_timer();
        return Ok(
            (l0.wrapping_sub(l1) as u128 * tsc_hz as u128 / (t1 - t0).max(1) as u128) as u64,
        );
    }
    let mut count: u32 = 1 << 16;
    loop {
        let elapsed = time_oneshot(count, tsc_hz)?;
        if elapsed * 1000 >= tsc_hz * window_ms / 2 || count >= 1 << 30 {
            let best = elapsed
                .min(time_oneshot(count, tsc_hz)?)
                .min(time_oneshot(count, tsc_hz)?);
            return Ok((count as u128 * tsc_hz as u128 / best.max(1) as u128) as u64);
        }
        count <<= 1;
    }
}

/// TSC ticks from arming a one-shot of `count` until its interrupt arrives.
fn time_oneshot(count: u32, tsc_hz: u64) -> Result<u64, TimeError> {
    let cpu = percpu::current_index();
    let was_on = x86_64::instructions::interrupts::are_enabled();
    let (before, _) = timer_ticks(cpu);
    apic::write(reg::TIMER_DIVIDE, LAPIC_DIVIDE_16);
    apic::write(reg::LVT_TIMER, crate::irq::TIMER_VECTOR as u32);
    let t0 = rdtsc();
    apic::write(reg::TIMER_INITIAL, count);
    x86_64::instructions::interrupts::enable();
    let limit = t0 + tsc_hz * 2;
    let fired = loop {
        if timer_ticks(cpu).0 != before {
            break Some(rdtsc());
        }
        if rdtsc() > limit {
            break None;
        }
        core::hint::spin_loop();
    };
    if !was_on {
        x86_64::instructions::interrupts::disable();
    }
    stop_timer();
    match fired {
        Some(t1) => Ok(t1 - t0),
        None => Err(TimeError::Implausible {
            what: "LAPIC timer (no interrupt within 2 s)",
            hz: 0,
        }),
    }
}

fn finish(
    reference: &'static str,
    tsc_hz: u64,
    lapic_hz: u64,
    window_ns: u64,
) -> Result<Calibration, TimeError> {
    if !(10_000..=100_000_000_000).contains(&lapic_hz) {
        return Err(TimeError::Implausible {
            what: "LAPIC timer",
            hz: lapic_hz,
        });
    }
    TSC_HZ.store(tsc_hz, Ordering::Relaxed);
    NS_MULT.store(
        ((1_000_000_000u128 << 32) / tsc_hz as u128) as u64,
        Ordering::Relaxed,
    );
    LAPIC_HZ.store(lapic_hz, Ordering::Relaxed);
    Ok(*CALIBRATION.call_once(|| Calibration {
        reference,
        tsc_hz,
        lapic_hz,
        window_ns,
    }))
}

/// Per-CPU LAPIC timer state.
pub struct CpuTimer {
    ticks: AtomicU64,
    last_ns: AtomicU64,
    callback: IrqMutex<Option<Box<dyn FnMut() + Send>>>,
}

impl CpuTimer {
    pub(crate) const fn new() -> Self {
        Self {
            ticks: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            callback: IrqMutex::new(None),
        }
    }
}

pub(crate) fn on_timer_interrupt() {
    let t = &percpu::current().timer;
    t.last_ns.store(now_ns(), Ordering::Relaxed);
    t.ticks.fetch_add(1, Ordering::Release);
    if let Some(cb) = t.callback.lock().as_mut() {
        cb();
    }
}

fn lapic_count(ns: u64) -> Result<u32, TimeError> {
    let hz = LAPIC_HZ.load(Ordering::Relaxed);
    if hz == 0 {
        return Err(TimeError::NotCalibrated);
    }
    let c = (ns as u128 * hz as u128 / 1_000_000_000).max(1);
    u32::try_from(c).map_err(|_| TimeError::IntervalTooLong(ns))
}

/// Arms this CPU's LAPIC timer to fire once after `ns`.
pub fn arm_oneshot(ns: u64) -> Result<(), TimeError> {
    let c = lapic_count(ns)?;
    apic::write(reg::TIMER_DIVIDE, LAPIC_DIVIDE_16);
    apic::write(reg::LVT_TIMER, crate::irq::TIMER_VECTOR as u32);
    apic::write(reg::TIMER_INITIAL, c);
    Ok(())
}

/// Arms this CPU's LAPIC timer to fire every `ns`.
pub fn arm_periodic(ns: u64) -> Result<(), TimeError> {
    let c = lapic_count(ns)?;
    apic::write(reg::TIMER_DIVIDE, LAPIC_DIVIDE_16);
    apic::write(
        reg::LVT_TIMER,
        crate::irq::TIMER_VECTOR as u32 | apic::LVT_TIMER_PERIODIC,
    );
    apic::write(reg::TIMER_INITIAL, c);
    Ok(())
}

/// Stops this CPU's LAPIC timer.
pub fn stop_timer() {
    apic::write(reg::TIMER_INITIAL, 0);
    apic::write(
        reg::LVT_TIMER,
        apic::LVT_MASKED | crate::irq::TIMER_VECTOR as u32,
    );
}

/// Sets (or clears) the callback run on each timer interrupt of this CPU.
pub fn set_timer_callback(cb: Option<Box<dyn FnMut() + Send>>) {
    *percpu::current().timer.callback.lock() = cb;
}

/// Timer interrupts taken on `cpu`, and the time of the last one.
pub fn timer_ticks(cpu: usize) -> (u64, u64) {
    percpu::get(cpu).map_or((0, 0), |c| {
        (
            c.timer.ticks.load(Ordering::Acquire),
            c.timer.last_ns.load(Ordering::Relaxed),
        )
    })
}
