//! accel-config JSON configurations (the format `accel-config save-config` writes and
//! `accel-config load-config` reads; also the profiles in idxd-config `contrib/configs`).
//!
//! The top level is an array of device objects (`"dev":"dsa0"`), each with `groups`, each
//! group with `grouped_workqueues` and `grouped_engines`. Read-only attributes that
//! `accel-config list`/`save-config` print (capabilities, state, clients, …) are accepted
//! and ignored; any other unknown key is rejected, so a misspelt field never silently
//! falls back to a default.

use crate::caps::Capabilities;
use crate::config::{ConfigError, DeviceConfig, GroupConfig, WqConfig, WqType};
use crate::json::{self, Value};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use dsa_spec::WqMode;

/// Read-only device attributes printed by `accel-config list` / `save-config`.
const DEVICE_INFO_KEYS: &[&str] = &[
    "max_groups",
    "max_work_queues",
    "max_engines",
    "work_queue_size",
    "numa_node",
    "op_cap",
    "gen_cap",
    "version",
    "state",
    "max_read_buffers",
    "max_tokens",
    "max_batch_size",
    "max_transfer_size",
    "configurable",
    "pasid_enabled",
    "cdev_major",
    "clients",
    "ims_size",
    "errors",
    "iaa_cap",
];
/// Read-only WQ attributes.
const WQ_INFO_KEYS: &[&str] = &["cdev_minor", "state", "clients"];

/// One WQ as written in the file, before defaults that depend on the device are filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
struct WqEntry {
    cfg: WqConfig,
    size_given: bool,
    op_config: Option<[u32; 8]>,
}

/// One device of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceEntry {
    /// N of `dsaN`.
    pub index: u32,
    groups: Vec<GroupConfig>,
    wqs: Vec<WqEntry>,
    read_buffer_limit: u8,
}

/// A parsed accel-config file.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AccelConfig {
    /// The devices the file lists, in file order.
    pub devices: Vec<DeviceEntry>,
}

fn bad(object: &str, key: &str, why: &'static str) -> ConfigError {
    ConfigError::BadValue {
        object: object.to_string(),
        key: key.to_string(),
        why,
    }
}

fn int(object: &str, key: &str, v: &Value, lo: i64, hi: i64) -> Result<i64, ConfigError> {
    match v {
        Value::Int(n) if (lo..=hi).contains(n) => Ok(*n),
        Value::Int(_) => Err(bad(object, key, "is out of range")),
        _ => Err(bad(object, key, "must be an integer")),
    }
}

fn boolean(object: &str, key: &str, v: &Value) -> Result<bool, ConfigError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Int(0) => Ok(false),
        Value::Int(1) => Ok(true),
        _ => Err(bad(object, key, "must be 0 or 1")),
    }
}

fn string<'a>(object: &str, key: &str, v: &'a Value) -> Result<&'a str, ConfigError> {
    match v {
        Value::Str(s) => Ok(s),
        _ => Err(bad(object, key, "must be a string")),
    }
}

fn fields<'a>(v: &'a Value, what: &str) -> Result<&'a [(String, Value)], ConfigError> {
    match v {
        Value::Object(f) => Ok(f),
        _ => Err(ConfigError::BadValue {
            object: what.to_string(),
            key: String::new(),
            why: "must be an object",
        }),
    }
}

fn items<'a>(object: &str, key: &str, v: &'a Value) -> Result<&'a [Value], ConfigError> {
    match v {
        Value::Array(a) => Ok(a),
        _ => Err(bad(object, key, "must be an array")),
    }
}

/// Fields accel-config knows under two names (the older "token" spelling): one of each pair
/// per object.
fn alias_once<'k>(
    object: &str,
    key: &'k str,
    canonical: &'static str,
    seen: &mut Vec<&'static str>,
) -> Result<&'k str, ConfigError> {
    if seen.contains(&canonical) {
        return Err(bad(object, key, "is given twice (under both of its names)"));
    }
    seen.push(canonical);
    Ok(key)
}

fn unknown(object: &str, key: &str) -> ConfigError {
    ConfigError::UnknownField {
        object: object.to_string(),
        key: key.to_string(),
    }
}

/// The `dev` field of an object (required, and first in every accel-config output).
fn dev_name<'a>(f: &'a [(String, Value)], what: &str) -> Result<&'a str, ConfigError> {
    match f.iter().find(|(k, _)| k == "dev") {
        Some((_, Value::Str(s))) => Ok(s),
        Some(_) => Err(bad(what, "dev", "must be a string")),
        None => Err(bad(what, "dev", "is missing")),
    }
}

/// Parses `<prefix><dev>.<id>` (e.g. `wq0.3`) into (dev, id).
fn sub_name(name: &str, prefix: &str) -> Option<(u32, u32)> {
    let rest = name.strip_prefix(prefix)?;
    let (d, i) = rest.split_once('.')?;
    Some((d.parse().ok()?, i.parse().ok()?))
}

fn parse_op_config(object: &str, s: &str) -> Result<[u32; 8], ConfigError> {
    let words: Vec<&str> = s.split(',').collect();
    if words.len() != 8 {
        return Err(bad(
            object,
            "op_config",
            "must be 8 comma-separated hex words",
        ));
    }
    let mut out = [0u32; 8];
    // Most significant word first.
    for (i, w) in words.iter().enumerate() {
        out[7 - i] = u32::from_str_radix(w.trim().trim_start_matches("0x"), 16)
            .map_err(|_| bad(object, "op_config", "must be 8 comma-separated hex words"))?;
    }
    Ok(out)
}

impl AccelConfig {
    /// Parses the file (syntax and field checks only; see [`AccelConfig::resolve`]).
    pub fn parse(text: &str) -> Result<AccelConfig, ConfigError> {
        let root = json::parse(text).map_err(ConfigError::Syntax)?;
        let devs = match &root {
            Value::Array(a) => a.as_slice(),
            // A single device object is accepted too.
            Value::Object(_) => core::slice::from_ref(&root),
            _ => {
                return Err(ConfigError::BadValue {
                    object: "top level".into(),
                    key: String::new(),
                    why: "must be an array of devices",
                });
            }
        };
        let mut devices: Vec<DeviceEntry> = Vec::new();
        for d in devs {
            // IAA entries (iaxN) configure another driver's devices: skip them.
            if let Ok(name) = dev_name(fields(d, "device")?, "device")
                && name.starts_with("iax")
            {
                log::info!("accel-config: skipping {name} (not a DSA device)");
                continue;
            }
            let e = Self::device(d)?;
            if devices.iter().any(|x| x.index == e.index) {
                return Err(ConfigError::BadName {
                    name: format!("dsa{}", e.index),
                    why: "device listed twice",
                });
            }
            devices.push(e);
        }
        Ok(AccelConfig { devices })
    }

    fn device(v: &Value) -> Result<DeviceEntry, ConfigError> {
        let f = fields(v, "device")?;
        let name = dev_name(f, "device")?;
        let index: u32 = match name.strip_prefix("dsa").map(str::parse) {
            Some(Ok(n)) => n,
            _ => {
                return Err(ConfigError::BadName {
                    name: name.to_string(),
                    why: "not a DSA device name (dsaN)",
                });
            }
        };
        let mut dev = DeviceEntry {
            index,
            groups: Vec::new(),
            wqs: Vec::new(),
            read_buffer_limit: 0,
        };
        let mut aliases = Vec::new();
        for (k, val) in f {
            match k.as_str() {
                "dev" => {}
                "read_buffer_limit" | "token_limit" => {
                    alias_once(name, k, "read_buffer_limit", &mut aliases)?;
                    dev.read_buffer_limit = int(name, k, val, 0, 255)? as u8;
                }
                "event_log_size" => {
                    if int(name, k, val, 0, 0xFFFF)? != 0 {
                        return Err(ConfigError::Unsupported {
                            what: "event log (DSA 2.0)",
                        });
                    }
                }
                "groups" => {
                    for g in items(name, k, val)? {
                        Self::group(&mut dev, g)?;
                    }
                }
                "ungrouped_engines" => {
                    for e in items(name, k, val)? {
                        let ef = fields(e, "engine")?;
                        let en = dev_name(ef, "engine")?;
                        Self::check_sub(en, "engine", index)?;
                    }
                }
                // `accel-config list -i` output: idle WQs, not configured.
                "ungrouped workqueues" => {
                    items(name, k, val)?;
                }
                _ if DEVICE_INFO_KEYS.contains(&k.as_str()) => {}
                _ => return Err(unknown(name, k)),
            }
        }
        Ok(dev)
    }

    fn check_sub(name: &str, prefix: &'static str, dev: u32) -> Result<u32, ConfigError> {
        match sub_name(name, prefix) {
            Some((d, id)) if d == dev => Ok(id),
            Some(_) => Err(ConfigError::BadName {
                name: name.to_string(),
                why: "belongs to another device",
            }),
            None => Err(ConfigError::BadName {
                name: name.to_string(),
                why: "malformed name",
            }),
        }
    }

    fn group(dev: &mut DeviceEntry, v: &Value) -> Result<(), ConfigError> {
        let f = fields(v, "group")?;
        let name = dev_name(f, "group")?;
        let id = Self::check_sub(name, "group", dev.index)?;
        let id = u8::try_from(id).map_err(|_| ConfigError::BadName {
            name: name.to_string(),
            why: "group id too large",
        })?;
        if dev.groups.iter().any(|g| g.id == id) {
            return Err(ConfigError::BadName {
                name: name.to_string(),
                why: "group listed twice",
            });
        }
        let mut g = GroupConfig {
            id,
            ..Default::default()
        };
        let mut wqs = Vec::new();
        let mut aliases = Vec::new();
        for (k, val) in f {
            match k.as_str() {
                "dev" => {}
                "read_buffers_reserved" | "tokens_reserved" => {
                    alias_once(name, k, "read_buffers_reserved", &mut aliases)?;
                    g.read_buffers_reserved = int(name, k, val, 0, 255)? as u8;
                }
                "read_buffers_allowed" | "tokens_allowed" => {
                    alias_once(name, k, "read_buffers_allowed", &mut aliases)?;
                    g.read_buffers_allowed = int(name, k, val, 0, 255)? as u8;
                }
                "use_read_buffer_limit" | "use_token_limit" => {
                    alias_once(name, k, "use_read_buffer_limit", &mut aliases)?;
                    g.use_read_buffer_limit = boolean(name, k, val)?;
                }
                "traffic_class_a" | "traffic_class_b" => {
                    let tc = int(name, k, val, -1, 7)?;
                    let tc = (tc >= 0).then_some(tc as u8);
                    if k == "traffic_class_a" {
                        g.tc_a = tc;
                    } else {
                        g.tc_b = tc;
                    }
                }
                "desc_progress_limit" => g.desc_progress_limit = int(name, k, val, 0, 3)? as u8,
                "batch_progress_limit" => g.batch_progress_limit = int(name, k, val, 0, 3)? as u8,
                "grouped_workqueues" => {
                    for w in items(name, k, val)? {
                        wqs.push(Self::wq(dev.index, id, w)?);
                    }
                }
                "grouped_engines" => {
                    for e in items(name, k, val)? {
                        let ef = fields(e, "engine")?;
                        let en = dev_name(ef, "engine")?;
                        let eid = Self::check_sub(en, "engine", dev.index)?;
                        for (ek, ev) in ef {
                            match ek.as_str() {
                                "dev" => {}
                                "group_id" => {
                                    if int(en, ek, ev, -1, 255)? != i64::from(id) {
                                        return Err(bad(en, ek, "does not match its group"));
                                    }
                                }
                                _ => return Err(unknown(en, ek)),
                            }
                        }
                        if eid >= 64 {
                            return Err(ConfigError::BadName {
                                name: en.to_string(),
                                why: "engine id too large",
                            });
                        }
                        if g.engines >> eid & 1 == 1 {
                            return Err(ConfigError::EngineInTwoGroups { engine: eid as u8 });
                        }
                        g.engines |= 1 << eid;
                    }
                }
                _ => return Err(unknown(name, k)),
            }
        }
        for w in wqs {
            if dev.wqs.iter().any(|x| x.cfg.id == w.cfg.id) {
                return Err(ConfigError::WqInTwoGroups { wq: w.cfg.id });
            }
            dev.wqs.push(w);
        }
        dev.groups.push(g);
        Ok(())
    }

    fn wq(dev: u32, group: u8, v: &Value) -> Result<WqEntry, ConfigError> {
        let f = fields(v, "wq")?;
        let name = dev_name(f, "wq")?;
        let id = Self::check_sub(name, "wq", dev)?;
        let id = u8::try_from(id).map_err(|_| ConfigError::BadName {
            name: name.to_string(),
            why: "wq id too large",
        })?;
        let mut c = WqConfig::new(id, group, WqMode::Dedicated, 0);
        let mut e = WqEntry {
            cfg: c.clone(),
            size_given: false,
            op_config: None,
        };
        let mut mode_given = false;
        for (k, val) in f {
            match k.as_str() {
                "dev" => {}
                "mode" => {
                    c.mode = match string(name, k, val)? {
                        "dedicated" => WqMode::Dedicated,
                        "shared" => WqMode::Shared,
                        _ => return Err(bad(name, k, "must be \"dedicated\" or \"shared\"")),
                    };
                    mode_given = true;
                }
                "size" => {
                    c.size = int(name, k, val, 0, 0xFFFF)? as u16;
                    e.size_given = true;
                }
                "group_id" => {
                    if int(name, k, val, -1, 255)? != i64::from(group) {
                        return Err(bad(name, k, "does not match its group"));
                    }
                }
                "priority" => c.priority = int(name, k, val, 0, 255)? as u8,
                "block_on_fault" => c.block_on_fault = boolean(name, k, val)?,
                "max_batch_size" => c.max_batch_size = int(name, k, val, 0, 1 << 16)? as u32,
                "max_transfer_size" => c.max_transfer_size = int(name, k, val, 0, 1 << 31)? as u64,
                "threshold" => c.threshold = int(name, k, val, 0, 0xFFFF)? as u16,
                "ats_disable" => c.ats_disable = boolean(name, k, val)?,
                "prs_disable" => c.prs_disable = boolean(name, k, val)?,
                "type" => {
                    c.wq_type = match string(name, k, val)? {
                        "kernel" => WqType::Kernel,
                        "user" => WqType::User,
                        "none" => WqType::None,
                        _ => return Err(bad(name, k, "must be kernel, user or none")),
                    }
                }
                "name" => c.name = string(name, k, val)?.to_string(),
                "driver_name" => {
                    string(name, k, val)?;
                }
                "op_config" => e.op_config = Some(parse_op_config(name, string(name, k, val)?)?),
                _ if WQ_INFO_KEYS.contains(&k.as_str()) => {}
                _ => return Err(unknown(name, k)),
            }
        }
        if !mode_given {
            return Err(bad(name, "mode", "is missing"));
        }
        e.cfg = c;
        Ok(e)
    }

    /// The `dsaN` entries that name no device when `count` devices exist (they configure
    /// nothing; the kernel warns about them).
    pub fn unmatched(&self, count: usize) -> Vec<u32> {
        self.devices
            .iter()
            .map(|d| d.index)
            .filter(|&i| i as usize >= count)
            .collect()
    }

    /// Device `dsa<index>` of the file, if present.
    pub fn device_entry(&self, index: u32) -> Option<&DeviceEntry> {
        self.devices.iter().find(|d| d.index == index)
    }

    /// The configuration for device `dsa<index>` with device-dependent defaults filled in
    /// (missing WQ size = total / number of WQs, as accel-config does). `None` if the file
    /// does not mention the device.
    pub fn resolve(
        &self,
        index: u32,
        caps: &Capabilities,
    ) -> Option<Result<DeviceConfig, ConfigError>> {
        self.device_entry(index).map(|d| d.resolve(caps))
    }
}

impl DeviceEntry {
    /// This entry as a device configuration for a device with `caps`, device-dependent
    /// defaults filled in (missing WQ size = total / number of WQs, as accel-config does).
    pub fn resolve(&self, caps: &Capabilities) -> Result<DeviceConfig, ConfigError> {
        let default_size = (caps.total_wq_size / u16::from(caps.num_wqs.max(1))).max(1);
        let mut wqs = Vec::new();
        for e in &self.wqs {
            let mut w = e.cfg.clone();
            if !e.size_given {
                w.size = default_size;
            }
            if let Some(ops) = e.op_config {
                // The driver does not program OPCFG (a DSA 2.0 feature): every WQ runs every
                // supported operation, so only that op_config is accepted.
                let mut cap = [0u32; 8];
                for (i, c) in cap.iter_mut().enumerate() {
                    *c = (caps.opcap.0[i / 2] >> (32 * (i % 2))) as u32;
                }
                if ops != cap {
                    return Err(ConfigError::Unsupported {
                        what: "per-WQ op_config other than the device's op_cap",
                    });
                }
            }
            wqs.push(w);
        }
        Ok(DeviceConfig {
            groups: self.groups.clone(),
            wqs,
            read_buffer_limit: self.read_buffer_limit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WQ: &str = r#"{"dev":"wq0.0","mode":"dedicated","size":8,"group_id":0}"#;

    fn file(dev: &str, wq: &str) -> String {
        format!(
            r#"[{{"dev":"{dev}","groups":[{{"dev":"group{n}.0","grouped_workqueues":[{wq}],"grouped_engines":[{{"dev":"engine{n}.0","group_id":0}}]}}]}}]"#,
            n = dev.trim_start_matches("dsa"),
            wq = wq.replace("wq0.", &format!("wq{}.", dev.trim_start_matches("dsa")))
        )
    }

    #[test]
    fn a_key_given_twice_is_rejected_wherever_it_is() {
        AccelConfig::parse(&file("dsa0", WQ)).unwrap();
        for dup in [
            WQ.replace(r#""size":8"#, r#""size":8,"size":16"#),
            WQ.replace(
                r#""mode":"dedicated""#,
                r#""mode":"shared","mode":"dedicated""#,
            ),
        ] {
            let e = AccelConfig::parse(&file("dsa0", &dup)).unwrap_err();
            assert!(
                matches!(&e, ConfigError::Syntax(s) if s.what.contains("duplicate key")),
                "{e}"
            );
        }
        let e = AccelConfig::parse(r#"{"dev":"dsa0","dev":"dsa1"}"#).unwrap_err();
        assert!(e.to_string().contains(r#"duplicate key "dev""#), "{e}");
        // Aliases of one field count as the same field.
        let e = AccelConfig::parse(r#"[{"dev":"dsa0","token_limit":1,"read_buffer_limit":2}]"#)
            .unwrap_err();
        assert!(e.to_string().contains("given twice"), "{e}");
    }

    #[test]
    fn the_shapes_seen_in_the_field_are_rejected_with_a_reason() {
        let f = |wq: &str| file("dsa0", wq);
        let deep = "[".repeat(40) + &"]".repeat(40);
        let two = format!(
            "[{},{}]",
            &f(WQ)[1..f(WQ).len() - 1],
            &f(WQ)[1..f(WQ).len() - 1]
        );
        for (text, why) in [
            (f(WQ)[..40].to_string(), "JSON syntax error"),
            (f(&WQ.replace("8", "\"8\"")), "must be an integer"),
            (f(&WQ.replace(":8", ":70000")), "out of range"),
            (f(&WQ.replace(":8", ":-1")), "out of range"),
            (two, "device listed twice"),
            (
                f(&WQ.replace("dedicated", "exclusive")),
                "\"dedicated\" or \"shared\"",
            ),
            (deep, "nesting deeper than 32"),
            (String::new(), "EOF while parsing"),
            ("\u{1}\u{2}".into(), "JSON syntax error"),
        ] {
            let e = AccelConfig::parse(&text).unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn entries_for_missing_devices_are_reported() {
        let a = AccelConfig::parse(&file("dsa3", WQ)).unwrap();
        assert_eq!(a.unmatched(1), vec![3]);
        assert_eq!(a.unmatched(4), Vec::<u32>::new());
        assert!(a.device_entry(0).is_none());
    }
}
