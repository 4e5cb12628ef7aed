//! Intel DSA driver: bring-up, work queues, submission, operations, errors
#![cfg_attr(not(test), no_std)]
