//! Per-CPU interrupt-vector matrix (like Linux's `irq_matrix`).
//!
//! Every CPU has its own 256 IDT vectors. Vectors 0–31 are CPU exceptions; the kernel
//! reserves a few *system* vectors on every CPU (spurious, IPIs, LAPIC timer, …); a
//! contiguous *allocatable* range is handed out per CPU with an owner name. The report
//! is exact: it counts what is allocated on that CPU and by whom, which later work uses
//! to show, e.g., that a device consumes one vector per CPU.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Number of IDT vectors.
pub const NUM_VECTORS: usize = 256;
/// First vector after the architectural exceptions.
pub const FIRST_NON_EXCEPTION: u8 = 32;

/// State of one vector on one CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// 0–31: architectural exception.
    Exception,
    /// Reserved by the kernel on every CPU.
    System(&'static str),
    /// Outside the allocatable range and not reserved.
    Unavailable,
    /// Allocatable and free.
    Free,
    /// Allocated to the named owner.
    Allocated(String),
}

/// Errors of the vector matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VectorError {
    /// The CPU index is not in the matrix.
    NoSuchCpu(usize),
    /// No free vector is left on that CPU.
    Exhausted {
        /// The CPU.
        cpu: usize,
    },
    /// The vector is outside the allocatable range (exception, system or unavailable).
    NotAllocatable(u8),
    /// The vector is already allocated.
    InUse {
        /// The vector.
        vector: u8,
        /// Its current owner.
        owner: String,
    },
    /// `free` of a vector that is not allocated.
    NotAllocated {
        /// The CPU.
        cpu: usize,
        /// The vector.
        vector: u8,
    },
}

impl fmt::Display for VectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchCpu(c) => write!(f, "no CPU {c} in the vector matrix"),
            Self::Exhausted { cpu } => write!(f, "no free interrupt vector left on CPU {cpu}"),
            Self::NotAllocatable(v) => write!(f, "vector {v:#04x} is not allocatable"),
            Self::InUse { vector, owner } => {
                write!(f, "vector {vector:#04x} is already owned by {owner}")
            }
            Self::NotAllocated { cpu, vector } => {
                write!(f, "vector {vector:#04x} on CPU {cpu} is not allocated")
            }
        }
    }
}

impl core::error::Error for VectorError {}

/// Exact usage of one CPU's vectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuVectorReport {
    /// CPU index.
    pub cpu: usize,
    /// Size of the allocatable range.
    pub allocatable: usize,
    /// Vectors allocated (by owners).
    pub allocated: usize,
    /// Free allocatable vectors.
    pub free: usize,
    /// System vectors reserved by the kernel.
    pub system: Vec<(u8, &'static str)>,
    /// Allocated vectors with their owners, by vector.
    pub owners: Vec<(u8, String)>,
}

impl CpuVectorReport {
    /// Number of vectors of this CPU allocated to owners whose name starts with `prefix`.
    pub fn count_owned_by(&self, prefix: &str) -> usize {
        self.owners
            .iter()
            .filter(|(_, o)| o.starts_with(prefix))
            .count()
    }
}

impl fmt::Display for CpuVectorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu {}: {} allocated, {} free of {} allocatable, {} system",
            self.cpu,
            self.allocated,
            self.free,
            self.allocatable,
            self.system.len()
        )?;
        if !self.owners.is_empty() {
            write!(f, " [")?;
            for (i, (v, o)) in self.owners.iter().enumerate() {
                if i > 0 {
                    write!(f, ", ")?;
                }
                write!(f, "{v:#04x} {o}")?;
            }
            write!(f, "]")?;
        }
        Ok(())
    }
}

/// The matrix: one row of 256 slots per CPU.
#[derive(Debug, Clone)]
pub struct VectorMatrix {
    rows: Vec<Vec<Slot>>,
    first: u8,
    last: u8,
}

impl VectorMatrix {
    /// A matrix for `cpus` CPUs whose allocatable range is `first..=last`
    /// (`first >= 32`, `first <= last`; clamped otherwise).
    pub fn new(cpus: usize, first: u8, last: u8) -> Self {
        let first = first.max(FIRST_NON_EXCEPTION);
        let last = last.max(first);
        let row: Vec<Slot> = (0..NUM_VECTORS)
            .map(|v| {
                if v < FIRST_NON_EXCEPTION as usize {
                    Slot::Exception
                } else if (first as usize..=last as usize).contains(&v) {
                    Slot::Free
                } else {
                    Slot::Unavailable
                }
            })
            .collect();
        Self {
            rows: alloc::vec![row; cpus],
            first,
            last,
        }
    }

    /// Number of CPUs.
    pub fn cpus(&self) -> usize {
        self.rows.len()
    }

    /// The allocatable range.
    pub fn allocatable_range(&self) -> core::ops::RangeInclusive<u8> {
        self.first..=self.last
    }

    /// Reserves `vector` as a system vector on every CPU. Fails if it is an exception
    /// vector or allocated on some CPU.
    pub fn reserve_system(&mut self, vector: u8, name: &'static str) -> Result<(), VectorError> {
        for row in &self.rows {
            match &row[vector as usize] {
                Slot::Exception => return Err(VectorError::NotAllocatable(vector)),
                Slot::Allocated(o) => {
                    return Err(VectorError::InUse {
                        vector,
                        owner: o.clone(),
                    });
                }
                _ => {}
            }
        }
        for row in &mut self.rows {
            row[vector as usize] = Slot::System(name);
        }
        Ok(())
    }

    fn row_mut(&mut self, cpu: usize) -> Result<&mut Vec<Slot>, VectorError> {
        self.rows.get_mut(cpu).ok_or(VectorError::NoSuchCpu(cpu))
    }

    /// Allocates the lowest free vector on `cpu` for `owner`.
    pub fn alloc(&mut self, cpu: usize, owner: &str) -> Result<u8, VectorError> {
        let (first, last) = (self.first, self.last);
        let row = self.row_mut(cpu)?;
        let v = (first..=last)
            .find(|&v| row[v as usize] == Slot::Free)
            .ok_or(VectorError::Exhausted { cpu })?;
        row[v as usize] = Slot::Allocated(owner.into());
        Ok(v)
    }

    /// Allocates a specific vector on `cpu`.
    pub fn alloc_specific(
        &mut self,
        cpu: usize,
        vector: u8,
        owner: &str,
    ) -> Result<(), VectorError> {
        let row = self.row_mut(cpu)?;
        match &row[vector as usize] {
            Slot::Free => {
                row[vector as usize] = Slot::Allocated(owner.into());
                Ok(())
            }
            Slot::Allocated(o) => Err(VectorError::InUse {
                vector,
                owner: o.clone(),
            }),
            _ => Err(VectorError::NotAllocatable(vector)),
        }
    }

    /// Frees an allocated vector.
    pub fn free(&mut self, cpu: usize, vector: u8) -> Result<(), VectorError> {
        let row = self.row_mut(cpu)?;
        match row[vector as usize] {
            Slot::Allocated(_) => {
                row[vector as usize] = Slot::Free;
                Ok(())
            }
            _ => Err(VectorError::NotAllocated { cpu, vector }),
        }
    }

    /// The slot of `vector` on `cpu`.
    pub fn slot(&self, cpu: usize, vector: u8) -> Option<&Slot> {
        self.rows.get(cpu).map(|r| &r[vector as usize])
    }

    /// Exact usage of `cpu`.
    pub fn report(&self, cpu: usize) -> Result<CpuVectorReport, VectorError> {
        let row = self.rows.get(cpu).ok_or(VectorError::NoSuchCpu(cpu))?;
        let mut rep = CpuVectorReport {
            cpu,
            allocatable: (self.last - self.first) as usize + 1,
            allocated: 0,
            free: 0,
            system: Vec::new(),
            owners: Vec::new(),
        };
        for (v, slot) in row.iter().enumerate() {
            match slot {
                Slot::Free => rep.free += 1,
                Slot::Allocated(o) => {
                    rep.allocated += 1;
                    rep.owners.push((v as u8, o.clone()));
                }
                Slot::System(n) => rep.system.push((v as u8, n)),
                Slot::Exception | Slot::Unavailable => {}
            }
        }
        Ok(rep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_until_exhausted_then_free() {
        let mut m = VectorMatrix::new(2, 0x30, 0xef);
        m.reserve_system(0xec, "timer").unwrap();
        let before = m.report(1).unwrap();
        assert_eq!(before.allocatable, 0xef - 0x30 + 1);
        assert_eq!(before.free, before.allocatable - 1);
        let mut got = Vec::new();
        loop {
            match m.alloc(1, "dev") {
                Ok(v) => got.push(v),
                Err(e) => {
                    assert_eq!(e, VectorError::Exhausted { cpu: 1 });
                    break;
                }
            }
        }
        assert_eq!(got.len(), before.free);
        assert!(!got.contains(&0xec));
        let full = m.report(1).unwrap();
        assert_eq!((full.allocated, full.free), (before.free, 0));
        assert_eq!(m.report(0).unwrap(), {
            let mut r = before.clone();
            r.cpu = 0;
            r
        });
        for v in got {
            m.free(1, v).unwrap();
        }
        assert_eq!(m.report(1).unwrap(), before);
    }

    #[test]
    fn errors() {
        let mut m = VectorMatrix::new(1, 0x30, 0x32);
        assert_eq!(m.alloc(5, "x"), Err(VectorError::NoSuchCpu(5)));
        assert_eq!(
            m.alloc_specific(0, 3, "x"),
            Err(VectorError::NotAllocatable(3))
        );
        assert_eq!(
            m.alloc_specific(0, 0x40, "x"),
            Err(VectorError::NotAllocatable(0x40))
        );
        m.alloc_specific(0, 0x31, "a").unwrap();
        assert_eq!(
            m.alloc_specific(0, 0x31, "b"),
            Err(VectorError::InUse {
                vector: 0x31,
                owner: "a".into()
            })
        );
        assert_eq!(
            m.free(0, 0x30),
            Err(VectorError::NotAllocated {
                cpu: 0,
                vector: 0x30
            })
        );
        assert_eq!(
            m.reserve_system(0x31, "s"),
            Err(VectorError::InUse {
                vector: 0x31,
                owner: "a".into()
            })
        );
        assert_eq!(
            m.reserve_system(8, "s"),
            Err(VectorError::NotAllocatable(8))
        );
        m.reserve_system(0x30, "s").unwrap();
        assert_eq!(
            m.free(0, 0x30),
            Err(VectorError::NotAllocated {
                cpu: 0,
                vector: 0x30
            })
        );
        assert_eq!(m.alloc(0, "c"), Ok(0x32));
        assert_eq!(m.alloc(0, "d"), Err(VectorError::Exhausted { cpu: 0 }));
    }

    #[test]
    fn report_counts_owners_exactly() {
        let mut m = VectorMatrix::new(3, 0x30, 0xef);
        for cpu in 0..3 {
            let v = m.alloc(cpu, "ims-dsa0").unwrap();
            assert_eq!(v, 0x30);
        }
        m.alloc(2, "other").unwrap();
        let r = m.report(2).unwrap();
        assert_eq!(r.count_owned_by("ims-"), 1);
        assert_eq!(r.allocated, 2);
        assert_eq!(
            r.to_string(),
            "cpu 2: 2 allocated, 190 free of 192 allocatable, 0 system [0x30 ims-dsa0, 0x31 other]"
        );
    }
}
