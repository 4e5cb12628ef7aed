//! Host tests of the DSA driver against the DSA model.

mod bringup;
mod common;
mod errors;
mod lend;
mod ops;
mod queues;
mod resume_matrix;
mod spec_resume;
