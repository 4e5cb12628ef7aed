//! Intel VT-d: DMAR parsing, scalable-mode tables, queued invalidation, faults, interrupt remapping
#![cfg_attr(not(test), no_std)]
