//! Generic IMS irqchip: one shared vector per CPU, per-handle demultiplexing, per-PASID quotas
#![cfg_attr(not(test), no_std)]
