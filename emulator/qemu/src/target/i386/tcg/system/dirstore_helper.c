/*
 * MOVDIR64B, ENQCMD and ENQCMDS for TCG system emulation.
 *
 * All three read 64 bytes from an ordinary memory source and store them to a 64-byte
 * aligned destination as a single transaction. QEMU's MMIO path splits stores into
 * callbacks of at most 8 bytes, so a destination MemoryRegion that registered a 64-byte
 * handler (system/direct-store.h) receives the store whole. Behaviour (Intel SDM vol. 2,
 * as summarised in the project's instructions reference):
 *  - the source is read completely before anything is written, so a fault on the source
 *    leaves the destination untouched;
 *  - MOVDIR64B to RAM writes the 64 bytes with 64-byte write atomicity: under MTTCG the
 *    instruction is re-run in an exclusive section (cpu_loop_exit_atomic), so no other
 *    vCPU observes a partly written line; to a registered region it calls the handler
 *    (posted, no status; the handler runs under the BQL and takes the 64 bytes whole); to
 *    any other MMIO it falls back to naturally split stores;
 *  - ENQCMD/ENQCMDS report the enqueue register's answer in ZF (0 accepted, 1 retry) and
 *    clear CF/PF/AF/SF/OF; a destination that is not an enqueue register (RAM or other
 *    MMIO) answers retry and nothing is written anywhere.
 *
 * Part of the project's QEMU patches (emulator/qemu); not upstream QEMU code.
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qemu/main-loop.h"
#include "qemu/rcu.h"
#include "cpu.h"
#include "exec/helper-proto.h"
#include "exec/cpu_ldst.h"
#include "exec/exec-all.h"
#include "exec/translation-block.h"
#include "exec/memory.h"
#include "tcg/helper-tcg.h"
#include "system/direct-store.h"

#define DIRSTORE_BYTES 64

/* ENQCMDS: descriptor dword 0 bits 30:20 must be zero. */
#define ENQCMDS_DWORD0_RESERVED 0x7ff00000u

static void dirstore_check_dest(CPUX86State *env, target_ulong dest, uintptr_t ra)
{
    /* Misalignment is #GP(0), not #AC, whatever CR0.AM and EFLAGS.AC say. */
    if (dest & (DIRSTORE_BYTES - 1)) {
        raise_exception_err_ra(env, EXCP0D_GPF, 0, ra);
    }
}

static void dirstore_read_source(CPUX86State *env, target_ulong src,
                                 uint8_t buf[DIRSTORE_BYTES], uintptr_t ra)
{
    /*
     * Ordinary loads: any alignment, no atomicity; the MMU index truncates
     * 32-bit addresses.
     */
    for (int i = 0; i < DIRSTORE_BYTES / 8; i++) {
        stq_le_p(buf + i * 8, cpu_ldq_data_ra(env, src + i * 8, ra));
    }
}

/*
 * Translate the destination for a store (raising #PF/#GP as a store would) and, if it is
 * MMIO, offer the 64 bytes to the terminal region's direct-store handler. Returns true
 * when a handler took the store; *is_mmio tells the caller which fallback applies.
 */
static bool dirstore_deliver(CPUX86State *env, target_ulong dest,
                             const uint8_t buf[DIRSTORE_BYTES], DirectStoreKind kind,
                             DirectStoreResult *result, bool *is_mmio,
                             void **host, uintptr_t ra)
{
    CPUState *cs = env_cpu(env);
    int mmu_idx = cpu_mmu_index(cs, false);
    CPUTLBEntryFull *full;
    int flags;
    bool handled = false;

    flags = probe_access_full(env, dest, DIRSTORE_BYTES, MMU_DATA_STORE, mmu_idx,
                              false, host, &full, ra);
    *is_mmio = (flags & TLB_MMIO) != 0;
    if (!*is_mmio) {
        return false;
    }

    {
        hwaddr paddr = (full->phys_addr & TARGET_PAGE_MASK) | (dest & ~TARGET_PAGE_MASK);
        MemTxAttrs attrs = full->attrs;
        AddressSpace *as = cpu_get_address_space(cs, cpu_asidx_from_attrs(cs, attrs));
        bool locked = bql_locked();
        hwaddr xlat, len = DIRSTORE_BYTES;
        MemoryRegion *mr;

        RCU_READ_LOCK_GUARD();
        if (!locked) {
            bql_lock();
        }
        mr = address_space_translate(as, paddr, &xlat, &len, true, attrs);
        /* A region that ends inside the 64 bytes cannot take the store whole. */
        if (len >= DIRSTORE_BYTES) {
            handled = memory_region_direct_store64(mr, xlat, buf, kind, result);
        }
        if (!locked) {
            bql_unlock();
        }
    }
    return handled;
}

void helper_movdir64b(CPUX86State *env, target_ulong dest, target_ulong src)
{
    uintptr_t ra = GETPC();
    uint8_t buf[DIRSTORE_BYTES];
    DirectStoreResult result;
    bool is_mmio;
    void *host = NULL;
    int mmu_idx;

    dirstore_check_dest(env, dest, ra);
    dirstore_read_source(env, src, buf, ra);
    if (dirstore_deliver(env, dest, buf, DIRECT_STORE_POSTED, &result, &is_mmio,
                         &host, ra)) {
        return;
    }
    if (!is_mmio && host) {
        CPUState *cs = env_cpu(env);

        /*
         * A host memcpy is not one transaction: another vCPU thread could read half a
         * line. In parallel mode start again in an exclusive section (every other vCPU
         * stopped between translation blocks); nothing has been written yet and the
         * source is read again there.
         */
        if (tcg_cflags_has(cs, CF_PARALLEL) && !cpu_in_exclusive_context(cs)) {
            cpu_loop_exit_atomic(cs, ra);
        }
        /* Plain RAM already marked dirty by the probe. */
        memcpy(host, buf, DIRSTORE_BYTES);
        return;
    }
    /* MMIO without a handler, or RAM with watchpoints/ROM: ordinary split stores. */
    mmu_idx = cpu_mmu_index(env_cpu(env), false);
    for (int i = 0; i < DIRSTORE_BYTES / 8; i++) {
        cpu_stq_le_mmuidx_ra(env, dest + i * 8, ldq_le_p(buf + i * 8), mmu_idx, ra);
    }
}

void helper_enqcmd(CPUX86State *env, target_ulong dest, target_ulong src,
                   uint32_t supervisor)
{
    uintptr_t ra = GETPC();
    uint8_t buf[DIRSTORE_BYTES];
    DirectStoreResult result = DIRECT_STORE_RETRY;
    bool is_mmio;
    void *host = NULL;
    uint32_t dword0;

    dirstore_check_dest(env, dest, ra);
    if (!supervisor && !(env->msr_ia32_pasid & MSR_IA32_PASID_VALID)) {
        raise_exception_err_ra(env, EXCP0D_GPF, 0, ra);
    }
    dirstore_read_source(env, src, buf, ra);
    dword0 = ldl_le_p(buf);
    if (supervisor) {
        /* ENQCMDS sends PASID and privilege from the descriptor itself. */
        if (dword0 & ENQCMDS_DWORD0_RESERVED) {
            raise_exception_err_ra(env, EXCP0D_GPF, 0, ra);
        }
    } else {
        /* ENQCMD: PASID from IA32_PASID, privilege 0 regardless of CPL. */
        if (dword0 != 0) {
            raise_exception_err_ra(env, EXCP0D_GPF, 0, ra);
        }
        stl_le_p(buf, (uint32_t)(env->msr_ia32_pasid & MSR_IA32_PASID_PASID));
    }
    if (!dirstore_deliver(env, dest, buf, DIRECT_STORE_DMWR, &result, &is_mmio,
                          &host, ra)) {
        /* Not an enqueue register (RAM or other MMIO): dropped, retry. */
        result = DIRECT_STORE_RETRY;
    }
    CC_SRC = result == DIRECT_STORE_ACCEPTED ? 0 : CC_Z;
    CC_OP = CC_OP_EFLAGS;
}
