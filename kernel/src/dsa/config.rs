//! Where the DSA configuration comes from: the kernel command line or a QEMU fw_cfg file,
//! in accel-config's JSON format (`accel-config save-config` output), else the driver's
//! default layout.
//!
//! * `dsa.config=<JSON>`: compact JSON (no whitespace outside strings, which the command
//!   line would split on), e.g. `dsa.config=[{"dev":"dsa0","groups":[…]}]`.
//! * `dsa.config=fw_cfg:<name>`: the fw_cfg file `<name>`.
//! * `dsa.config=default`: the default layout even if a fw_cfg file exists.
//! * otherwise the fw_cfg file [`FW_CFG_FILE`] if QEMU has one (`./qemu-run.sh
//!   --dsa-config FILE` adds it), else the default.

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use core::fmt;

use dsa::AccelConfig;

/// The fw_cfg file name `qemu-run.sh --dsa-config` uses.
pub const FW_CFG_FILE: &str = "opt/dsa/accel-config.json";
/// Largest configuration accepted (accel-config files of 8 devices are ~20 KiB).
const MAX_CONFIG: usize = 256 * 1024;

/// Where the configuration came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    CommandLine,
    FwCfg(String),
    /// The default layout for a device the supplied configuration does not list.
    NotListed(Box<Origin>),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "default layout"),
            Origin::CommandLine => write!(f, "accel-config from the command line"),
            Origin::FwCfg(n) => write!(f, "accel-config from fw_cfg '{n}'"),
            Origin::NotListed(o) => write!(f, "default layout (not listed in the {o})"),
        }
    }
}

/// Why the configuration given could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// The fw_cfg file could not be read.
    FwCfg(crate::fw_cfg::FwCfgError),
    NotUtf8 {
        origin: Origin,
    },
    Invalid {
        origin: Origin,
        why: String,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::FwCfg(e) => write!(f, "DSA configuration: {e}"),
            LoadError::NotUtf8 { origin } => write!(f, "{origin}: not UTF-8 text"),
            LoadError::Invalid { origin, why } => write!(f, "{origin} rejected: {why}"),
        }
    }
}

impl core::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            LoadError::FwCfg(e) => Some(e),
            _ => None,
        }
    }
}

fn parse(text: &str, origin: Origin) -> Result<(Option<AccelConfig>, Origin), LoadError> {
    match AccelConfig::parse(text) {
        Ok(c) => Ok((Some(c), origin)),
        Err(e) => Err(LoadError::Invalid {
            origin,
            why: e.to_string(),
        }),
    }
}

fn from_fw_cfg(name: &str) -> Result<(Option<AccelConfig>, Origin), LoadError> {
    let origin = Origin::FwCfg(name.into());
    let bytes = crate::fw_cfg::read_file(name, MAX_CONFIG).map_err(LoadError::FwCfg)?;
    let text = core::str::from_utf8(&bytes).map_err(|_| LoadError::NotUtf8 {
        origin: origin.clone(),
    })?;
    parse(text, origin)
}

/// Where the configuration is to come from, before it is read: anything but
/// [`Origin::Default`] was supplied by the user, and failing to apply it fails the run.
pub fn requested() -> Origin {
    match crate::cmdline::get("dsa.config") {
        Some("default") => Origin::Default,
        Some(v) if v.starts_with("fw_cfg:") => Origin::FwCfg(v["fw_cfg:".len()..].into()),
        Some(_) => Origin::CommandLine,
        None => {
            let present = crate::fw_cfg::files()
                .map(|fs| fs.iter().any(|f| f.name == FW_CFG_FILE))
                .unwrap_or(false);
            if present {
                Origin::FwCfg(FW_CFG_FILE.into())
            } else {
                Origin::Default
            }
        }
    }
}

/// The configuration to use (`None` = the default layout) and where it came from.
pub fn load() -> Result<(Option<AccelConfig>, Origin), LoadError> {
    match requested() {
        Origin::CommandLine => parse(
            crate::cmdline::get("dsa.config").unwrap_or(""),
            Origin::CommandLine,
        ),
        Origin::FwCfg(name) => from_fw_cfg(&name),
        Origin::Default | Origin::NotListed(_) => Ok((None, Origin::Default)),
    }
}
