/*
 * 64-byte direct stores (MOVDIR64B) and enqueue stores (ENQCMD/ENQCMDS) to MMIO.
 *
 * QEMU's MMIO dispatch carries at most 8 bytes per callback, so a device that must see a
 * 64-byte store as one transaction (a work-queue portal) registers a handler for its
 * MemoryRegion here. The TCG helpers of those instructions translate the destination,
 * find the terminal MemoryRegion and, when it has a handler, hand it the whole 64 bytes.
 *
 * Part of the project's QEMU patches (emulator/qemu); not upstream QEMU code.
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef SYSTEM_DIRECT_STORE_H
#define SYSTEM_DIRECT_STORE_H

#include "exec/hwaddr.h"

typedef struct MemoryRegion MemoryRegion;

typedef enum DirectStoreKind {
    DIRECT_STORE_POSTED = 0, /* MOVDIR64B: posted write, no status */
    DIRECT_STORE_DMWR = 1,   /* ENQCMD/ENQCMDS: deferrable memory write with status */
} DirectStoreKind;

typedef enum DirectStoreResult {
    DIRECT_STORE_ACCEPTED = 0,
    DIRECT_STORE_RETRY = 1,
} DirectStoreResult;

/*
 * Called with the BQL held. `offset` is relative to the region and 64-byte aligned.
 * The result only matters for DIRECT_STORE_DMWR.
 */
typedef DirectStoreResult (*DirectStore64Fn)(void *opaque, hwaddr offset,
                                             const uint8_t data[64],
                                             DirectStoreKind kind);

/* Register / remove the handler of `mr` (BQL held). One handler per region. */
void memory_region_set_direct_store64(MemoryRegion *mr, DirectStore64Fn fn,
                                      void *opaque);
void memory_region_clear_direct_store64(MemoryRegion *mr);

/*
 * Deliver a 64-byte store to `mr` if it has a handler (BQL held). Returns false when it
 * has none; the caller then applies the instruction's fallback.
 */
bool memory_region_direct_store64(MemoryRegion *mr, hwaddr offset,
                                  const uint8_t data[64], DirectStoreKind kind,
                                  DirectStoreResult *result);

#endif
