//! Behavioural model of an Intel DSA 1.0 device.
