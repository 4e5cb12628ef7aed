//! Host tests of the IMS irqchip: chip logic against a software IMS device, and the whole
//! stack (DSA driver + DSA model as the device) on a fake machine.

mod dsa_rig;
mod logic;
mod machine;
mod on_dsa;
mod soft;
mod watched;
