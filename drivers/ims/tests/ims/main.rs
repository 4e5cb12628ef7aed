//! Host tests of the IMS irqchip: chip logic against a software IMS device, and the whole
//! stack (DSA driver + DSA model as the device) on a fake machine.

mod dsa_rig;
mod logic;
mod machine;
mod on_dsa;
// The whole-stack tests once more in posted mode (`on_dsa::mode`).
#[allow(clippy::duplicate_mod)]
#[path = "on_dsa.rs"]
mod on_dsa_posted;
mod posted;
mod soft;
mod watched;
