//! The 32-bit entry shared by PVH and Multiboot2, and the switch to long mode.
//!
//! Entry state for both protocols: 32-bit protected mode, paging off, flat segments,
//! IF=0, EBX = boot information; EAX = Multiboot2 magic (undefined under PVH); ESP,
//! GDTR and IDTR unusable. The stub zeroes .bss, builds an identity map of 0–4 GiB
//! (2 MiB pages; enough for the kernel, the boot information, ACPI and the local/IO
//! APICs until the kernel installs its own tables), enables PAE, LME (+NXE when the CPU
//! has NX), paging and WP, and far-jumps to 64-bit code that calls `kernel_main64`.
//! No Multiboot1 header: QEMU would then refuse the ELF64 image.

/// Size of the BSP boot stack.
pub const BOOT_STACK_SIZE: usize = 128 * 1024;

unsafe extern "C" {
    static boot_stack_bottom: u8;
    static boot_stack_top: u8;
}

/// `[bottom, top)` of the BSP boot stack.
pub fn boot_stack_range() -> (u64, u64) {
    (
        &raw const boot_stack_bottom as u64,
        &raw const boot_stack_top as u64,
    )
}

core::arch::global_asm!(
    r#"
    .section .multiboot2, "a"
    .balign 8
.Lmb2_start:
    .long 0xe85250d6
    .long 0
    .long .Lmb2_end - .Lmb2_start
    .long 0x100000000 - (0xe85250d6 + (.Lmb2_end - .Lmb2_start))
    .short 0
    .short 0
    .long 8
.Lmb2_end:

    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .balign 4
    .long boot_entry32
    .balign 4

    .section .text.boot, "ax"
    .code32
    .global boot_entry32
boot_entry32:
    cli
    cld
    movl %eax, %ebp
    movl %ebx, %esi

    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb

    movl $boot_stack_top, %esp

    movl $0x80000000, %eax
    cpuid
    cmpl $0x80000001, %eax
    jb .Lno_long_mode
    movl $0x80000001, %eax
    cpuid
    testl $(1 << 29), %edx
    jz .Lno_long_mode
    movl %edx, %ebx

    movl $boot_pdpt, %eax
    orl $3, %eax
    movl %eax, boot_pml4

    movl $boot_pd, %eax
    orl $3, %eax
    movl $boot_pdpt, %edi
    movl $4, %ecx
1:
    movl %eax, (%edi)
    addl $4096, %eax
    addl $8, %edi
    loop 1b

    movl $boot_pd, %edi
    movl $0x83, %eax
    movl $2048, %ecx
2:
    movl %eax, (%edi)
    addl $0x200000, %eax
    addl $8, %edi
    loop 2b

    movl %cr4, %eax
    orl $(1 << 5), %eax
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3

    movl $0xC0000080, %ecx
    rdmsr
    orl $(1 << 8), %eax
    testl $(1 << 20), %ebx
    jz 3f
    orl $(1 << 11), %eax
3:
    wrmsr

    movl %cr0, %eax
    orl $0x80010000, %eax
    movl %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp $0x08, $boot_entry64

.Lno_long_mode:
    movl $.Lmsg_no_lm, %esi
4:
    movb (%esi), %al
    testb %al, %al
    jz 5f
    movw $0x3f8, %dx
    outb %al, %dx
    incl %esi
    jmp 4b
5:
    hlt
    jmp 5b

    .code64
boot_entry64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    movabsq $boot_stack_top, %rsp
    movl %ebp, %edi
    movl %esi, %esi
    xorl %ebp, %ebp
    call kernel_main64
6:
    cli
    hlt
    jmp 6b

    .section .rodata.boot, "a"
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
boot_gdt_ptr:
    .short boot_gdt_ptr - boot_gdt - 1
    .long boot_gdt
.Lmsg_no_lm:
    .asciz "boot: this CPU has no long mode; halting\r\n"

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4 * 4096
    .balign 16
    .global boot_stack_bottom
boot_stack_bottom:
    .skip 128 * 1024
    .global boot_stack_top
boot_stack_top:
    .code64
"#,
    options(att_syntax)
);
