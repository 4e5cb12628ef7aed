//! The kernel command line (`-append` in QEMU, the `multiboot2` line in GRUB).
//!
//! Keys in use: `ktest[=<filter>[,<filter>…]]`, `ktest.list`, `loglevel=`, `console=`,
//! and whatever later subsystems document in the README. See [`boot::cmdline`] for syntax.

use boot::cmdline::Cmdline;

use crate::bootinfo;

/// The parsed command line.
pub fn cmdline() -> Cmdline<'static> {
    Cmdline::new(bootinfo::get().cmdline())
}

/// The raw command line.
pub fn raw() -> &'static str {
    bootinfo::get().cmdline()
}

/// Value of the last `key=value` (`Some("")` for `key=`, `None` for bare `key` or absent).
pub fn get(key: &str) -> Option<&'static str> {
    cmdline().get(key)
}

/// Whether `key` is present (bare or with a value).
pub fn has(key: &str) -> bool {
    cmdline().has(key)
}

/// Boolean flag: bare `key` or `key=1|on|yes|true` → true, `key=0|off|no|false` → false.
pub fn flag(key: &str, default: bool) -> bool {
    cmdline().flag(key, default)
}

/// `key=<number>` (decimal or 0x-hex); `Err` carries the text that did not parse.
pub fn number(key: &str) -> Option<Result<u64, &'static str>> {
    cmdline().number(key)
}
