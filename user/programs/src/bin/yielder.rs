//! Yields `arg` times and exits with the average TSC delta of one yield (two of these on one
//! CPU: one yield = a round trip through the other process; guest instructions under
//! `-icount shift=0`). With `arg` = 0: 1000 yields.
#![no_std]
#![no_main]

fn main(arg: u64) -> u64 {
    let n = if arg == 0 { 1000 } else { arg };
    // Let the partner start before measuring.
    user_rt::yield_now();
    let t0 = user_rt::rdtsc();
    for _ in 0..n {
        user_rt::yield_now();
    }
    (user_rt::rdtsc() - t0) / n
}

user_rt::entry!(main);
