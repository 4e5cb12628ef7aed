//! Workload descriptions for exercising and measuring a DSA driver: the `workload=` kernel
//! command-line syntax and the cases it expands to. The kernel's workload runner executes
//! them; this module only parses and validates (so it is host-tested).
//!
//! Syntax: one or more specs separated by `;`. A spec is `:`-separated fields; each field
//! is `key=value[,value…]`, and the first field may be a bare operation list:
//!
//! ```text
//! memmove,fill,crc:size=4k,64k:mode=dwq,swq:batch=1,32:completion=poll,irq:cpus=0-3:devices=all:depth=32:iters=256:align=64
//! ```
//!
//! | key | values | default |
//! |---|---|---|
//! | `op` (or the bare first field) | `noop memmove fill compare cpattern dualcast crc copycrc flush cdelta adelta difchk difins difstrip difupd` or an opcode number | `memmove` |
//! | `size` | bytes, with `k`/`m` suffixes (powers of 1024) | `4k` |
//! | `mode` | `dwq` (dedicated, MOVDIR64B), `swq` (shared, ENQCMDS) | `dwq` |
//! | `batch` | descriptors per submission: 1 = single descriptors, 2..=1024 = batch descriptors | `1` |
//! | `completion` (`comp`) | `poll`, `irq` | `poll` |
//! | `cpus` | `all` or a list of CPUs and ranges (`0-3,6`) | `0` |
//! | `devices` (`dev`) | `all` or a list of device indices | `all` |
//! | `depth` | descriptors in flight per CPU (clamped to the WQ capacity share and memory) | `32` |
//! | `iters` | work descriptors per CPU per case (rounded up to whole batches) | `256` |
//! | `align` | buffer alignment in bytes: addresses are multiples of it and, below 4096, not of twice it | `4096` |
//! | `verify` | `on`/`off`: compare every result with the CPU reference | `on` |
//! | `client` | `kernel` (the kernel's PASID or no PASID), `pasid` (each CPU a client PASID of its own with first-stage tables; shared WQs, polling), `process` (each CPU a ring-3 process submitting through the `dsa_submit` system call), `direct` (each CPU a ring-3 process submitting with ENQCMD to its mapped portal; needs the kernel policy `sva.direct=on`); `process` and `direct` run memmove on a shared WQ of device 0, batch 1, polling, one descriptor in flight, sizes in whole KiB | `kernel` |
//!
//! Cases are the cartesian product op × size × mode × batch × completion, in that nesting
//! order; every case runs on all selected CPUs at once.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Operations a workload can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum WlOp {
    /// `noop`: No-op (opcode 0x00, DSA spec §8.3.1); measures the submission and
    /// completion path alone.
    Noop,
    /// `memmove`: Memory Move (0x03, §8.3.4).
    MemMove,
    /// `fill`: Fill with an 8-byte pattern (0x04, §8.3.5).
    Fill,
    /// `compare`: Compare two buffers (0x05, §8.3.6).
    Compare,
    /// `cpattern`: Compare Pattern (0x06, §8.3.7).
    ComparePattern,
    /// `dualcast`: Memory Copy with Dualcast (0x09, §8.3.10).
    Dualcast,
    /// `crc`: CRC Generation, CRC-32C (0x10, §8.3.12).
    CrcGen,
    /// `copycrc`: Copy with CRC Generation (0x11, §8.3.13).
    CopyCrc,
    /// `flush`: Cache Flush (0x20, §8.3).
    CacheFlush,
    /// `cdelta`: Create Delta Record (0x07, §8.3.8).
    CreateDelta,
    /// `adelta`: Apply Delta Record (0x08, §8.3.9).
    ApplyDelta,
    /// `difchk`: DIF Check (0x12, §8.3.14).
    DifCheck,
    /// `difins`: DIF Insert (0x13, §8.3.15).
    DifInsert,
    /// `difstrip`: DIF Strip (0x14, §8.3.16).
    DifStrip,
    /// `difupd`: DIF Update (0x15, §8.3.17).
    DifUpdate,
}

impl WlOp {
    /// Every operation, in declaration order (the order names and opcodes are looked up in).
    pub const ALL: [WlOp; 15] = [
        WlOp::Noop,
        WlOp::MemMove,
        WlOp::Fill,
        WlOp::Compare,
        WlOp::ComparePattern,
        WlOp::Dualcast,
        WlOp::CrcGen,
        WlOp::CopyCrc,
        WlOp::CacheFlush,
        WlOp::CreateDelta,
        WlOp::ApplyDelta,
        WlOp::DifCheck,
        WlOp::DifInsert,
        WlOp::DifStrip,
        WlOp::DifUpdate,
    ];

    /// Name in specs and results.
    pub fn name(self) -> &'static str {
        match self {
            WlOp::Noop => "noop",
            WlOp::MemMove => "memmove",
            WlOp::Fill => "fill",
            WlOp::Compare => "compare",
            WlOp::ComparePattern => "cpattern",
            WlOp::Dualcast => "dualcast",
            WlOp::CrcGen => "crc",
            WlOp::CopyCrc => "copycrc",
            WlOp::CacheFlush => "flush",
            WlOp::CreateDelta => "cdelta",
            WlOp::ApplyDelta => "adelta",
            WlOp::DifCheck => "difchk",
            WlOp::DifInsert => "difins",
            WlOp::DifStrip => "difstrip",
            WlOp::DifUpdate => "difupd",
        }
    }

    /// The DSA opcode (DSA spec §8.1.2, Table 8-2), also accepted in specs.
    pub fn opcode(self) -> dsa_spec::Opcode {
        use dsa_spec::Opcode as O;
        match self {
            WlOp::Noop => O::Noop,
            WlOp::MemMove => O::MemMove,
            WlOp::Fill => O::Fill,
            WlOp::Compare => O::Compare,
            WlOp::ComparePattern => O::ComparePattern,
            WlOp::Dualcast => O::Dualcast,
            WlOp::CrcGen => O::CrcGen,
            WlOp::CopyCrc => O::CopyCrc,
            WlOp::CacheFlush => O::CacheFlush,
            WlOp::CreateDelta => O::CreateDelta,
            WlOp::ApplyDelta => O::ApplyDelta,
            WlOp::DifCheck => O::DifCheck,
            WlOp::DifInsert => O::DifInsert,
            WlOp::DifStrip => O::DifStrip,
            WlOp::DifUpdate => O::DifUpdate,
        }
    }

    fn parse(s: &str) -> Option<WlOp> {
        let by_name = WlOp::ALL.iter().copied().find(|o| o.name() == s);
        let alias = match s {
            "memcpy" | "copy" => Some(WlOp::MemMove),
            "comparepattern" | "compval" => Some(WlOp::ComparePattern),
            "crcgen" => Some(WlOp::CrcGen),
            "cacheflush" => Some(WlOp::CacheFlush),
            _ => None,
        };
        by_name.or(alias).or_else(|| {
            let n = parse_u64(s)?;
            WlOp::ALL.iter().copied().find(|o| o.opcode() as u64 == n)
        })
    }
}

/// Which queue kind (and so which submission instruction).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum QueueMode {
    /// Dedicated WQ, MOVDIR64B.
    Dedicated,
    /// Shared WQ, ENQCMDS.
    Shared,
}

impl QueueMode {
    /// Name in specs and results (`dwq`, `swq`).
    pub fn name(self) -> &'static str {
        match self {
            QueueMode::Dedicated => "dwq",
            QueueMode::Shared => "swq",
        }
    }
}

/// How completions are noticed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Completion {
    /// The submitting CPU spins on the completion record's status byte.
    Poll,
    /// Descriptors request a completion interrupt (flag RCI); the CPU waits for it, then
    /// reads the records.
    Interrupt,
}

impl Completion {
    /// Name in specs and results (`poll`, `irq`).
    pub fn name(self) -> &'static str {
        match self {
            Completion::Poll => "poll",
            Completion::Interrupt => "irq",
        }
    }
}

/// Whose descriptors a workload submits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKind {
    /// The kernel (its PASID, or no PASID without an IOMMU).
    Kernel,
    /// A client PASID per CPU, with its own address space.
    Pasid,
    /// A ring-3 process per CPU submitting through the submit system call.
    Process,
    /// A ring-3 process per CPU submitting with ENQCMD through its mapped portal.
    Direct,
}

impl ClientKind {
    /// Name in specs and results (`kernel`, `pasid`).
    pub fn name(self) -> &'static str {
        match self {
            ClientKind::Kernel => "kernel",
            ClientKind::Pasid => "pasid",
            ClientKind::Process => "process",
            ClientKind::Direct => "direct",
        }
    }
}

/// `all` or an explicit list (sorted, deduplicated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Every CPU or device present.
    All,
    /// These indices (sorted, deduplicated; entries that do not exist are reported, not run).
    List(Vec<u32>),
}

impl Selection {
    /// The selected indices among `0..n` (out-of-range entries are reported by
    /// [`Selection::missing`]).
    pub fn resolve(&self, n: u32) -> Vec<u32> {
        match self {
            Selection::All => (0..n).collect(),
            Selection::List(v) => v.iter().copied().filter(|&i| i < n).collect(),
        }
    }
    /// Entries that do not exist among `0..n`.
    pub fn missing(&self, n: u32) -> Vec<u32> {
        match self {
            Selection::All => Vec::new(),
            Selection::List(v) => v.iter().copied().filter(|&i| i >= n).collect(),
        }
    }
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selection::All => write!(f, "all"),
            Selection::List(v) => {
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        write!(f, ",")?;
                    }
                    write!(f, "{x}")?;
                }
                Ok(())
            }
        }
    }
}

/// One parsed spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// Operations to run (`op`), sorted and deduplicated.
    pub ops: Vec<WlOp>,
    /// Transfer sizes in bytes (`size`), 1 ..= [`MAX_SIZE`].
    pub sizes: Vec<u32>,
    /// Queue kinds (`mode`).
    pub modes: Vec<QueueMode>,
    /// Descriptors per submission (`batch`): 1 submits single descriptors, more submits a
    /// Batch descriptor with that many members; at most [`MAX_BATCH`].
    pub batches: Vec<u16>,
    /// How completions are noticed (`completion`).
    pub completions: Vec<Completion>,
    /// CPUs that submit (`cpus`); every case runs on all of them at once.
    pub cpus: Selection,
    /// DSA devices used, by enumeration index (`devices`).
    pub devices: Selection,
    /// Submissions in flight per CPU (`depth`), 1 ..= [`MAX_DEPTH`]; the runner clamps it
    /// further to the CPU's share of the WQ and to memory.
    pub depth: u16,
    /// Work descriptors per CPU per case (`iters`), 1 ..= [`MAX_ITERS`].
    pub iters: u32,
    /// Buffer alignment in bytes (`align`), a power of two up to 4096.
    pub align: u32,
    /// Check every result against the CPU reference (`verify`).
    pub verify: bool,
    /// Whose address space the descriptors use (`client`).
    pub client: ClientKind,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        WorkloadSpec {
            ops: alloc::vec![WlOp::MemMove],
            sizes: alloc::vec![4096],
            modes: alloc::vec![QueueMode::Dedicated],
            batches: alloc::vec![1],
            completions: alloc::vec![Completion::Poll],
            cpus: Selection::List(alloc::vec![0]),
            devices: Selection::All,
            depth: 32,
            iters: 256,
            align: 4096,
            verify: true,
            client: ClientKind::Kernel,
        }
    }
}

/// One case of a spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    /// The operation.
    pub op: WlOp,
    /// Transfer size of each work descriptor in bytes.
    pub size: u32,
    /// Queue kind.
    pub mode: QueueMode,
    /// Descriptors per submission (1 = no Batch descriptor).
    pub batch: u16,
    /// How completions are noticed.
    pub completion: Completion,
}

/// Largest transfer size a spec accepts (the runner also checks the device's maximum).
pub const MAX_SIZE: u32 = 1 << 30;
/// Largest batch (DSA 1.0 maximum).
pub const MAX_BATCH: u16 = 1024;
/// Largest `depth`: submissions in flight per CPU.
pub const MAX_DEPTH: u16 = 4096;
/// Largest `iters`: work descriptors per CPU per case (bounds a case's run time).
pub const MAX_ITERS: u32 = 1 << 24;
/// Most cases one `workload=` may expand to (all specs together): far more than any
/// measurement needs, far fewer than a run can finish before its timeout.
pub const MAX_CASES: u64 = 4096;

/// Why a spec was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecError {
    /// No spec at all (empty string, or only `;` and spaces).
    Empty,
    /// A field is not `key=value` (and not the leading operation list).
    NotKeyValue(String),
    /// A key not in the table of the module documentation.
    UnknownKey(String),
    /// A key (or its alias) given twice in one spec.
    DuplicateKey(String),
    /// A key with an empty value or an empty list entry (`size=4k,`).
    EmptyValue(String),
    /// An operation that is neither a known name nor the opcode of one.
    UnknownOp(String),
    /// A value that should be a number (decimal or 0x-hex, optional k/m/g suffix) is not.
    BadNumber {
        /// The key as written.
        key: String,
        /// The offending value.
        value: String,
    },
    /// A value that is not one of the key's choices.
    BadChoice {
        /// The key.
        key: &'static str,
        /// The offending value.
        value: String,
        /// The accepted values, for the message.
        allowed: &'static str,
    },
    /// A number outside the key's limits.
    OutOfRange {
        /// The key.
        key: &'static str,
        /// The number given.
        value: u64,
        /// Smallest accepted.
        min: u64,
        /// Largest accepted.
        max: u64,
    },
    /// A `cpus`/`devices` entry that is not an index or an ascending range below 4096.
    BadRange(String),
    /// `align` is not a power of two.
    NotPowerOfTwo {
        /// The key.
        key: &'static str,
        /// The number given.
        value: u64,
    },
    /// The specs expand to more than [`MAX_CASES`] cases.
    TooManyCases {
        /// How many cases the specs expand to.
        cases: u64,
    },
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecError::Empty => write!(f, "empty workload"),
            SpecError::NotKeyValue(s) => write!(f, "'{s}' is not key=value"),
            SpecError::UnknownKey(k) => write!(
                f,
                "unknown key '{k}' (op size mode batch completion cpus devices depth iters align verify client)"
            ),
            SpecError::DuplicateKey(k) => write!(f, "key '{k}' given twice"),
            SpecError::EmptyValue(k) => write!(f, "key '{k}' has an empty value"),
            SpecError::UnknownOp(o) => write!(
                f,
                "unknown operation '{o}' (noop memmove fill compare cpattern dualcast crc copycrc flush cdelta adelta difchk difins difstrip difupd)"
            ),
            SpecError::BadNumber { key, value } => write!(f, "{key}: '{value}' is not a number"),
            SpecError::BadChoice {
                key,
                value,
                allowed,
            } => write!(f, "{key}: '{value}' is not one of {allowed}"),
            SpecError::OutOfRange {
                key,
                value,
                min,
                max,
            } => write!(f, "{key}: {value} is outside {min}..={max}"),
            SpecError::BadRange(s) => write!(f, "'{s}' is not a valid index range"),
            SpecError::NotPowerOfTwo { key, value } => {
                write!(f, "{key}: {value} is not a power of two")
            }
            SpecError::TooManyCases { cases } => write!(
                f,
                "the workload expands to {cases} cases (op × size × mode × batch × completion); at most {MAX_CASES} are allowed"
            ),
        }
    }
}

impl core::error::Error for SpecError {}

/// Decimal or 0x-hex, with an optional k/m/g suffix (×1024ⁿ).
fn parse_u64(s: &str) -> Option<u64> {
    let (num, mul) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1u64 << 10),
        b'm' | b'M' => (&s[..s.len() - 1], 1 << 20),
        b'g' | b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let v = if let Some(h) = num.strip_prefix("0x").or_else(|| num.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()?
    } else {
        num.parse::<u64>().ok()?
    };
    v.checked_mul(mul)
}

fn number(key: &str, v: &str, min: u64, max: u64, name: &'static str) -> Result<u64, SpecError> {
    let n = parse_u64(v).ok_or_else(|| SpecError::BadNumber {
        key: key.into(),
        value: v.into(),
    })?;
    if n < min || n > max {
        return Err(SpecError::OutOfRange {
            key: name,
            value: n,
            min,
            max,
        });
    }
    Ok(n)
}

fn list<'a>(key: &str, v: &'a str) -> Result<impl Iterator<Item = &'a str>, SpecError> {
    if v.is_empty() || v.split(',').any(str::is_empty) {
        return Err(SpecError::EmptyValue(key.into()));
    }
    Ok(v.split(','))
}

/// Sorted, deduplicated.
fn uniq<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v.dedup();
    v
}

fn selection(key: &str, v: &str) -> Result<Selection, SpecError> {
    if v == "all" {
        return Ok(Selection::All);
    }
    let mut out = Vec::new();
    for item in list(key, v)? {
        let (a, b) = match item.split_once('-') {
            Some((a, b)) => (a, b),
            None => (item, item),
        };
        let a = parse_u64(a).ok_or_else(|| SpecError::BadRange(item.into()))?;
        let b = parse_u64(b).ok_or_else(|| SpecError::BadRange(item.into()))?;
        if a > b || b >= 4096 {
            return Err(SpecError::BadRange(item.into()));
        }
        out.extend(a as u32..=b as u32);
    }
    Ok(Selection::List(uniq(out)))
}

impl WorkloadSpec {
    /// Parses one spec (no `;`).
    pub fn parse_one(s: &str) -> Result<WorkloadSpec, SpecError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(SpecError::Empty);
        }
        let mut w = WorkloadSpec::default();
        let mut seen: Vec<&str> = Vec::new();
        for (i, field) in s.split(':').enumerate() {
            let (key, val) = match field.split_once('=') {
                Some(kv) => kv,
                None if i == 0 => ("op", field),
                None => return Err(SpecError::NotKeyValue(field.into())),
            };
            let canon = match key {
                "ops" => "op",
                "comp" => "completion",
                "dev" => "devices",
                "cpu" => "cpus",
                k => k,
            };
            if seen.contains(&canon) {
                return Err(SpecError::DuplicateKey(canon.into()));
            }
            seen.push(canon);
            match canon {
                "op" => {
                    w.ops = uniq(
                        list(key, val)?
                            .map(|o| WlOp::parse(o).ok_or_else(|| SpecError::UnknownOp(o.into())))
                            .collect::<Result<_, _>>()?,
                    );
                }
                "size" => {
                    w.sizes = uniq(
                        list(key, val)?
                            .map(|x| {
                                number(key, x, 1, u64::from(MAX_SIZE), "size").map(|n| n as u32)
                            })
                            .collect::<Result<_, _>>()?,
                    );
                }
                "mode" => {
                    w.modes = uniq(
                        list(key, val)?
                            .map(|x| match x {
                                "dwq" | "dedicated" => Ok(QueueMode::Dedicated),
                                "swq" | "shared" => Ok(QueueMode::Shared),
                                _ => Err(SpecError::BadChoice {
                                    key: "mode",
                                    value: x.into(),
                                    allowed: "dwq, swq",
                                }),
                            })
                            .collect::<Result<_, _>>()?,
                    );
                }
                "batch" => {
                    w.batches = uniq(
                        list(key, val)?
                            .map(|x| {
                                number(key, x, 1, u64::from(MAX_BATCH), "batch").map(|n| n as u16)
                            })
                            .collect::<Result<_, _>>()?,
                    );
                }
                "completion" => {
                    w.completions = uniq(
                        list(key, val)?
                            .map(|x| match x {
                                "poll" | "polling" => Ok(Completion::Poll),
                                "irq" | "interrupt" | "intr" => Ok(Completion::Interrupt),
                                _ => Err(SpecError::BadChoice {
                                    key: "completion",
                                    value: x.into(),
                                    allowed: "poll, irq",
                                }),
                            })
                            .collect::<Result<_, _>>()?,
                    );
                }
                "cpus" => w.cpus = selection(key, val)?,
                "devices" => w.devices = selection(key, val)?,
                "depth" => w.depth = number(key, val, 1, u64::from(MAX_DEPTH), "depth")? as u16,
                "iters" => w.iters = number(key, val, 1, u64::from(MAX_ITERS), "iters")? as u32,
                "align" => {
                    let a = number(key, val, 1, 4096, "align")?;
                    if !a.is_power_of_two() {
                        return Err(SpecError::NotPowerOfTwo {
                            key: "align",
                            value: a,
                        });
                    }
                    w.align = a as u32;
                }
                "verify" => {
                    w.verify = match val {
                        "on" | "1" | "yes" | "true" => true,
                        "off" | "0" | "no" | "false" => false,
                        _ => {
                            return Err(SpecError::BadChoice {
                                key: "verify",
                                value: val.into(),
                                allowed: "on, off",
                            });
                        }
                    }
                }
                "client" => {
                    w.client = match val {
                        "kernel" => ClientKind::Kernel,
                        "pasid" | "user" => ClientKind::Pasid,
                        "process" => ClientKind::Process,
                        "direct" => ClientKind::Direct,
                        _ => {
                            return Err(SpecError::BadChoice {
                                key: "client",
                                value: val.into(),
                                allowed: "kernel, pasid, process, direct",
                            });
                        }
                    }
                }
                _ => return Err(SpecError::UnknownKey(key.into())),
            }
        }
        Ok(w)
    }

    /// Parses `;`-separated specs.
    pub fn parse(s: &str) -> Result<Vec<WorkloadSpec>, SpecError> {
        let specs: Vec<WorkloadSpec> = s
            .split(';')
            .filter(|p| !p.trim().is_empty())
            .map(WorkloadSpec::parse_one)
            .collect::<Result<_, _>>()?;
        if specs.is_empty() {
            return Err(SpecError::Empty);
        }
        let cases = specs
            .iter()
            .fold(0u64, |n, w| n.saturating_add(w.case_count()));
        if cases > MAX_CASES {
            return Err(SpecError::TooManyCases { cases });
        }
        Ok(specs)
    }

    /// How many cases [`WorkloadSpec::cases`] returns, without building them.
    pub fn case_count(&self) -> u64 {
        [
            self.ops.len(),
            self.sizes.len(),
            self.modes.len(),
            self.batches.len(),
            self.completions.len(),
        ]
        .iter()
        .fold(1u64, |n, &k| n.saturating_mul(k as u64))
    }

    /// The cases, op-major.
    pub fn cases(&self) -> Vec<Case> {
        let mut v = Vec::new();
        for &op in &self.ops {
            for &size in &self.sizes {
                for &mode in &self.modes {
                    for &batch in &self.batches {
                        for &completion in &self.completions {
                            v.push(Case {
                                op,
                                size,
                                mode,
                                batch,
                                completion,
                            });
                        }
                    }
                }
            }
        }
        v
    }
}

/// A transfer size as the runner prints it (4k, 64k, 1m, 100).
pub fn size_name(n: u32) -> String {
    use core::fmt::Write;
    let mut s = String::new();
    let _ = if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        write!(s, "{}m", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        write!(s, "{}k", n >> 10)
    } else {
        write!(s, "{n}")
    };
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_example_parses() {
        let w = WorkloadSpec::parse_one(
            "memmove,fill,crc:size=4k,64k:mode=dwq,swq:batch=1,32:completion=poll,irq:cpus=0-3:devices=all:depth=16:iters=100:align=64",
        )
        .unwrap();
        assert_eq!(w.ops, [WlOp::MemMove, WlOp::Fill, WlOp::CrcGen]);
        assert_eq!(w.sizes, [4096, 65536]);
        assert_eq!(w.modes, [QueueMode::Dedicated, QueueMode::Shared]);
        assert_eq!(w.batches, [1, 32]);
        assert_eq!(w.completions, [Completion::Poll, Completion::Interrupt]);
        assert_eq!(w.cpus, Selection::List(alloc::vec![0, 1, 2, 3]));
        assert_eq!(w.devices, Selection::All);
        assert_eq!((w.depth, w.iters, w.align, w.verify), (16, 100, 64, true));
        assert_eq!(w.cases().len(), 3 * 2 * 2 * 2 * 2);
        let c = w.cases()[0];
        assert_eq!(
            (c.op, c.size, c.mode, c.batch, c.completion),
            (
                WlOp::MemMove,
                4096,
                QueueMode::Dedicated,
                1,
                Completion::Poll
            )
        );
        let last = *w.cases().last().unwrap();
        assert_eq!(
            (last.op, last.size, last.mode, last.batch, last.completion),
            (
                WlOp::CrcGen,
                65536,
                QueueMode::Shared,
                32,
                Completion::Interrupt
            )
        );
    }

    #[test]
    fn defaults_keys_aliases_and_opcodes() {
        let w = WorkloadSpec::parse_one(
            "op=3,0x10,cpattern:comp=irq:cpu=1,3:dev=1:verify=off:client=pasid",
        )
        .unwrap();
        assert_eq!(w.client, ClientKind::Pasid);
        for (name, kind) in [
            ("process", ClientKind::Process),
            ("direct", ClientKind::Direct),
        ] {
            let p =
                WorkloadSpec::parse_one(&alloc::format!("memmove:mode=swq:client={name}")).unwrap();
            assert_eq!((p.client, p.client.name()), (kind, name));
        }
        assert_eq!(w.ops, [WlOp::MemMove, WlOp::ComparePattern, WlOp::CrcGen]);
        assert_eq!(w.completions, [Completion::Interrupt]);
        assert_eq!(w.cpus, Selection::List(alloc::vec![1, 3]));
        assert_eq!(w.devices, Selection::List(alloc::vec![1]));
        assert!(!w.verify);
        assert_eq!(w.sizes, [4096]);
        let d = WorkloadSpec::parse_one("memmove").unwrap();
        assert_eq!(d, WorkloadSpec::default());
        let two = WorkloadSpec::parse("fill;crc:size=1m").unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two[1].sizes, [1 << 20]);
        // Every operation is reachable by name and by opcode.
        for op in WlOp::ALL {
            assert_eq!(WlOp::parse(op.name()), Some(op));
            assert_eq!(
                WlOp::parse(&alloc::format!("{}", op.opcode() as u8)),
                Some(op)
            );
        }
    }

    #[test]
    fn selections_resolve_against_what_exists() {
        let s = selection("cpus", "0-2,5,1").unwrap();
        assert_eq!(s, Selection::List(alloc::vec![0, 1, 2, 5]));
        assert_eq!(s.resolve(4), [0, 1, 2]);
        assert_eq!(s.missing(4), [5]);
        assert_eq!(Selection::All.resolve(3), [0, 1, 2]);
        assert_eq!(alloc::format!("{s}"), "0,1,2,5");
    }

    #[test]
    fn the_number_of_cases_is_capped() {
        let list = |n: u32| {
            (1..=n)
                .map(|i| alloc::format!("{i}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let ops = WlOp::ALL.map(WlOp::name).join(",");
        // 15 × 230 × 2 × 230 × 2 = 3 174 000 cases: once accepted, it ran until the timeout.
        let huge = alloc::format!(
            "{ops}:size={}:mode=dwq,swq:batch={}:completion=poll,irq",
            list(230),
            list(230)
        );
        let e = WorkloadSpec::parse(&huge).unwrap_err();
        assert_eq!(e, SpecError::TooManyCases { cases: 3_174_000 });
        assert!(e.to_string().contains("at most 4096"), "{e}");
        // The cap counts all specs of one workload together.
        let half = alloc::format!("memmove:size={}:batch={}", list(64), list(32));
        assert_eq!(WorkloadSpec::parse(&half).unwrap()[0].case_count(), 2048);
        assert!(WorkloadSpec::parse(&alloc::format!("{half};{half}")).is_ok());
        assert_eq!(
            WorkloadSpec::parse(&alloc::format!("{half};{half};noop")),
            Err(SpecError::TooManyCases { cases: 4097 })
        );
    }

    #[test]
    fn invalid_specs_are_rejected_with_the_reason() {
        let e = |s| WorkloadSpec::parse(s).unwrap_err();
        assert_eq!(e(""), SpecError::Empty);
        assert_eq!(e(" ; "), SpecError::Empty);
        assert_eq!(e("memmove:bogus"), SpecError::NotKeyValue("bogus".into()));
        assert_eq!(e("frob"), SpecError::UnknownOp("frob".into()));
        assert_eq!(
            e("memmove:colour=red"),
            SpecError::UnknownKey("colour".into())
        );
        assert_eq!(
            e("memmove:size=4k:size=8k"),
            SpecError::DuplicateKey("size".into())
        );
        assert_eq!(
            e("memmove:size=4k,,8k"),
            SpecError::EmptyValue("size".into())
        );
        assert_eq!(
            e("memmove:size=4q"),
            SpecError::BadNumber {
                key: "size".into(),
                value: "4q".into()
            }
        );
        assert!(matches!(
            e("memmove:size=0"),
            SpecError::OutOfRange { key: "size", .. }
        ));
        assert!(matches!(
            e("memmove:batch=2000"),
            SpecError::OutOfRange { key: "batch", .. }
        ));
        assert!(matches!(
            e("memmove:mode=fast"),
            SpecError::BadChoice { key: "mode", .. }
        ));
        assert!(matches!(
            e("memmove:completion=x"),
            SpecError::BadChoice { .. }
        ));
        assert_eq!(e("memmove:cpus=3-1"), SpecError::BadRange("3-1".into()));
        assert_eq!(
            e("memmove:align=48"),
            SpecError::NotPowerOfTwo {
                key: "align",
                value: 48
            }
        );
        assert!(matches!(
            e("memmove:align=8192"),
            SpecError::OutOfRange { .. }
        ));
        assert!(matches!(
            e("memmove:verify=maybe"),
            SpecError::BadChoice { .. }
        ));
        assert!(matches!(
            e("memmove:client=root"),
            SpecError::BadChoice { key: "client", .. }
        ));
        // The message names the problem.
        assert!(alloc::format!("{}", e("memmove:mode=fast")).contains("dwq, swq"));
    }

    #[test]
    fn size_names() {
        assert_eq!(size_name(4096), "4k");
        assert_eq!(size_name(1 << 20), "1m");
        assert_eq!(size_name(100), "100");
        assert_eq!(size_name(1536), "1536");
        assert_eq!(parse_u64("0x1000"), Some(4096));
        assert_eq!(parse_u64("2M"), Some(2 << 20));
    }
}
