//! Takes the fault `arg` names: 0 #PF (read of an unmapped user address), 1 #PF (write to
//! the kernel's identity map), 2 #GP (a privileged instruction), 3 #UD, 4 #GP (a
//! non-canonical address), 5 #PF (execute on a non-executable stack page). Never exits
//! normally (status 1 if the fault did not happen).
#![no_std]
#![no_main]

use user_rt::println;

fn main(arg: u64) -> u64 {
    println!("faulter: case {arg}");
    // SAFETY: (all cases) the point is to fault; the kernel ends this process.
    unsafe {
        match arg {
            0 => {
                let p = 0x5000_0000_0000u64 as *const u64;
                core::ptr::read_volatile(p);
            }
            1 => {
                let p = 0x20_0000u64 as *mut u64;
                core::ptr::write_volatile(p, 0xdead);
            }
            2 => core::arch::asm!("cli"),
            3 => core::arch::asm!("ud2"),
            4 => {
                let p = 0x8000_0000_0000u64 as *const u64;
                core::ptr::read_volatile(p);
            }
            5 => {
                let code = [0xc3u8; 16]; // ret
                let f: extern "C" fn() = core::mem::transmute(code.as_ptr());
                f();
            }
            _ => return 2,
        }
    }
    1
}

user_rt::entry!(main);
