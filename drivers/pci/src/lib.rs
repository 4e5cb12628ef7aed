//! PCI(e) ECAM access, enumeration, BARs and capabilities
#![cfg_attr(not(test), no_std)]
