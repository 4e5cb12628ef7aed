//! Prints one line with its pid and CPU, exits with status `arg`; with `arg` = `u64::MAX`
//! it then spins forever without a system call (only preemption lets its CPU do anything
//! else, only a kill ends it).
#![no_std]
#![no_main]

use user_rt::println;

fn main(arg: u64) -> u64 {
    println!(
        "hello from pid {} on cpu {}",
        user_rt::getpid(),
        user_rt::cpu()
    );
    if arg == u64::MAX {
        loop {
            core::hint::spin_loop();
        }
    }
    arg
}

user_rt::entry!(main);
