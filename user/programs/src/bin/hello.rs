//! Prints one line with its pid and CPU, exits with status `arg`.
#![no_std]
#![no_main]

use user_rt::println;

fn main(arg: u64) -> u64 {
    println!(
        "hello from pid {} on cpu {}",
        user_rt::getpid(),
        user_rt::cpu()
    );
    arg
}

user_rt::entry!(main);
