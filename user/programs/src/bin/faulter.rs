//! Takes the fault `arg` names: 0 #PF (read of an unmapped user address), 1 #PF (write to
//! the kernel's identity map), 2 #GP (a privileged instruction), 3 #UD, 4 #GP (a
//! non-canonical address), 5 #PF (execute on a non-executable stack page), 6 #GP
//! (ENQCMDS, privileged), 7 #GP (WRMSR to IA32_PASID, 0xD93), and any `arg` ≥ 0x1000: a read
//! of that address (the hostile-process suite passes a DSA MMIO BAR's physical address: #PF).
//! Never exits normally (status 1 if the fault did not happen).
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
            6 => {
                // ENQCMDS rax, [rdx] (F3 0F 38 F8 /r; Intel SDM vol. 2A "ENQCMDS"): #GP(0) at
                // CPL > 0. Spelled as bytes so that no assembler feature is needed.
                let desc = Aligned64([0; 64]);
                core::arch::asm!(
                    ".byte 0xf3, 0x0f, 0x38, 0xf8, 0x02",
                    in("rax") 0x1000u64,
                    in("rdx") desc.0.as_ptr(),
                );
            }
            7 => core::arch::asm!("wrmsr", in("ecx") 0xd93u32, in("eax") 1u32, in("edx") 0u32),
            a if a >= 0x1000 => {
                core::ptr::read_volatile(a as *const u32);
            }
            _ => return 2,
        }
    }
    1
}

#[repr(C, align(64))]
struct Aligned64([u8; 64]);

user_rt::entry!(main);
