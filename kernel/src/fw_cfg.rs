//! QEMU's firmware configuration device (fw_cfg, QEMU docs/specs/fw_cfg.rst), read through
//! its x86 I/O ports: a 16-bit selector at 0x510 (little-endian) and an 8-bit data port at
//! 0x511 that streams the selected item from offset 0. Only reading is supported, which is
//! all `-fw_cfg name=opt/…,file=…` needs.
//!
//! The device is only probed under a hypervisor (CPUID.1:ECX[31]) and must answer the
//! "QEMU" signature; on bare metal those ports may belong to something else. `fw_cfg=off`
//! on the command line disables the probe.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use spin::Once;
use x86_64::instructions::port::Port;

use crate::sync::IrqMutex;

const SELECTOR_PORT: u16 = 0x510;
const DATA_PORT: u16 = 0x511;
/// Item keys (fw_cfg.rst "Selector Register").
const KEY_SIGNATURE: u16 = 0x0000;
const KEY_FILE_DIR: u16 = 0x0019;
/// Directory entry: be32 size, be16 select, be16 reserved, name[56] (NUL-terminated).
const DIR_ENTRY_SIZE: usize = 64;
const NAME_LEN: usize = 56;
/// A directory larger than this is treated as corrupt (QEMU's default maximum is 0x20 +
/// a few hundred entries).
const MAX_FILES: u32 = 4096;

/// Errors reading fw_cfg.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FwCfgError {
    /// Not under a hypervisor, `fw_cfg=off`, or no "QEMU" signature.
    NotPresent,
    /// The directory reports more entries than plausible.
    BadDirectory { count: u32 },
    /// No file of that name.
    NoSuchFile(String),
    /// The file is larger than the caller accepts.
    TooLarge {
        name: String,
        size: u32,
        limit: usize,
    },
}

impl fmt::Display for FwCfgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FwCfgError::NotPresent => write!(f, "no QEMU fw_cfg device"),
            FwCfgError::BadDirectory { count } => {
                write!(f, "fw_cfg directory claims {count} files")
            }
            FwCfgError::NoSuchFile(n) => write!(f, "fw_cfg has no file '{n}'"),
            FwCfgError::TooLarge { name, size, limit } => write!(
                f,
                "fw_cfg file '{name}' is {size} bytes, more than the {limit} accepted"
            ),
        }
    }
}

impl core::error::Error for FwCfgError {}

/// One entry of the file directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FwFile {
    pub name: String,
    pub size: u32,
    pub select: u16,
}

/// Serialises selector/data sequences (a selection is global device state).
static LOCK: IrqMutex<()> = IrqMutex::new(());
static PRESENT: Once<bool> = Once::new();

fn select(key: u16) {
    // SAFETY: port 0x510 is fw_cfg's selector on x86 QEMU machines; `present()` checked the
    // device answers before any caller gets here.
    unsafe { Port::<u16>::new(SELECTOR_PORT).write(key) };
}

fn read_bytes(out: &mut [u8]) {
    let mut p = Port::<u8>::new(DATA_PORT);
    for b in out {
        // SAFETY: reading fw_cfg's data port only advances the selected item's offset.
        *b = unsafe { p.read() };
    }
}

/// Whether a QEMU fw_cfg device is present.
pub fn present() -> bool {
    *PRESENT.call_once(|| {
        if !crate::arch::features().hypervisor || !crate::cmdline::flag("fw_cfg", true) {
            return false;
        }
        let _g = LOCK.lock();
        select(KEY_SIGNATURE);
        let mut sig = [0u8; 4];
        read_bytes(&mut sig);
        &sig == b"QEMU"
    })
}

/// Parses a directory blob (count, then entries); pure so it can be checked in isolation.
pub(crate) fn parse_dir(count: u32, entries: &[u8]) -> Vec<FwFile> {
    entries
        .chunks_exact(DIR_ENTRY_SIZE)
        .take(count as usize)
        .map(|e| {
            let size = u32::from_be_bytes([e[0], e[1], e[2], e[3]]);
            let select = u16::from_be_bytes([e[4], e[5]]);
            let raw = &e[8..8 + NAME_LEN];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
            FwFile {
                name: String::from_utf8_lossy(&raw[..end]).into_owned(),
                size,
                select,
            }
        })
        .collect()
}

/// The file directory.
pub fn files() -> Result<Vec<FwFile>, FwCfgError> {
    if !present() {
        return Err(FwCfgError::NotPresent);
    }
    let _g = LOCK.lock();
    select(KEY_FILE_DIR);
    let mut c = [0u8; 4];
    read_bytes(&mut c);
    let count = u32::from_be_bytes(c);
    if count > MAX_FILES {
        return Err(FwCfgError::BadDirectory { count });
    }
    let mut entries = alloc::vec![0u8; count as usize * DIR_ENTRY_SIZE];
    read_bytes(&mut entries);
    Ok(parse_dir(count, &entries))
}

/// Reads the whole file `name` if it exists and is at most `limit` bytes.
pub fn read_file(name: &str, limit: usize) -> Result<Vec<u8>, FwCfgError> {
    let f = files()?
        .into_iter()
        .find(|f| f.name == name)
        .ok_or_else(|| FwCfgError::NoSuchFile(name.into()))?;
    if f.size as usize > limit {
        return Err(FwCfgError::TooLarge {
            name: name.into(),
            size: f.size,
            limit,
        });
    }
    let mut data = alloc::vec![0u8; f.size as usize];
    let _g = LOCK.lock();
    select(f.select);
    read_bytes(&mut data);
    Ok(data)
}
