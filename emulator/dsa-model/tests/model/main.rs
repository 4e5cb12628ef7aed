//! Host tests of the DSA model core (one test binary, several modules).

mod common;
mod irq;
mod ops;
mod partial;
mod registers;
mod threads;
