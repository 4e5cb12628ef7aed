//! Intel DSA 1.0 hardware definitions: registers, descriptors, completion records (shared by driver and model)
#![cfg_attr(not(test), no_std)]
