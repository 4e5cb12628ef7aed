/*
 * Side table of 64-byte store handlers, keyed by MemoryRegion (see direct-store.h).
 *
 * The table is only touched with the BQL held: handlers are registered at realize and
 * removed at unrealize, and the TCG helpers take the BQL before looking one up, since the
 * handler itself runs under the BQL like any MMIO callback.
 *
 * Part of the project's QEMU patches (emulator/qemu); not upstream QEMU code.
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qemu/main-loop.h"
#include "system/direct-store.h"

typedef struct DirectStoreEntry {
    DirectStore64Fn fn;
    void *opaque;
} DirectStoreEntry;

static GHashTable *direct_store_table;

void memory_region_set_direct_store64(MemoryRegion *mr, DirectStore64Fn fn,
                                      void *opaque)
{
    DirectStoreEntry *e = g_new(DirectStoreEntry, 1);

    assert(bql_locked());
    if (!direct_store_table) {
        direct_store_table = g_hash_table_new_full(g_direct_hash, g_direct_equal,
                                                   NULL, g_free);
    }
    e->fn = fn;
    e->opaque = opaque;
    g_hash_table_replace(direct_store_table, mr, e);
}

void memory_region_clear_direct_store64(MemoryRegion *mr)
{
    assert(bql_locked());
    if (direct_store_table) {
        g_hash_table_remove(direct_store_table, mr);
    }
}

bool memory_region_direct_store64(MemoryRegion *mr, hwaddr offset,
                                  const uint8_t data[64], DirectStoreKind kind,
                                  DirectStoreResult *result)
{
    DirectStoreEntry *e;

    assert(bql_locked());
    if (!direct_store_table) {
        return false;
    }
    e = g_hash_table_lookup(direct_store_table, mr);
    if (!e) {
        return false;
    }
    *result = e->fn(e->opaque, offset, data, kind);
    return true;
}
