/*
 * intel-dsa: Intel Data Streaming Accelerator (DSA 1.0) PCIe function.
 *
 * A thin adapter: the device's behaviour (registers, work queues, engines, operations)
 * lives in the Rust core behind dsa_model.h (crate emulator/dsa-model). This file owns
 * what only QEMU can do: PCI identity and config space (PCIe, MSI-X, PASID capability),
 * BAR dispatch, 64-byte portal stores (system/direct-store.h), DMA through the machine's
 * IOMMU (per-PASID address spaces of intel-iommu), MSI delivery, trace events and the
 * worker threads that execute descriptors.
 *
 * Locking: MMIO, config and reset callbacks run with the BQL held and call the core
 * directly. Workers run without the BQL; every platform callback that needs it
 * (PASID address-space creation, DMA while an IOMMU may report faults, MSI-X, IMS
 * messages) takes it only for its own duration, and the core never holds its own
 * locks across a callback, so a vCPU holding the BQL while it waits for the core
 * cannot deadlock with a worker.
 *
 * Part of the project's QEMU patches (emulator/qemu); not upstream QEMU code.
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qemu/main-loop.h"
#include "qemu/module.h"
#include "qemu/rcu.h"
#include "qemu/thread.h"
#include "qemu/range.h"
#include "qemu/host-utils.h"
#include "qapi/error.h"
#include "hw/pci/pci_device.h"
#include "hw/pci/pci_bus.h"
#include "hw/pci/pcie.h"
#include "hw/pci/msix.h"
#include "hw/qdev-properties.h"
#include "hw/i386/x86-iommu.h"
#include "hw/i386/intel_iommu.h"
#include "system/dma.h"
#include "system/direct-store.h"
#include "system/system.h"
#include "exec/address-spaces.h"
#include "migration/vmstate.h"
#include "trace.h"
#include "dsa_model.h"

#define TYPE_INTEL_DSA "intel-dsa"
OBJECT_DECLARE_SIMPLE_TYPE(IntelDSAState, INTEL_DSA)

#define INTEL_DSA_DEVICE_ID     0x0b25
#define INTEL_DSA_PCIE_CAP      0x40
#define INTEL_DSA_MSIX_CAP      0x80
#define INTEL_DSA_PASID_CAP     0x100
#define INTEL_DSA_PASID_WIDTH   20
/* PCIe DEVCAP2 bit 28: DMWr completer (ENQCMD targets need it). */
#define INTEL_DSA_DEVCAP2_DMWR  (1u << 28)

/* Requests with PASID must never target the interrupt range (vtd asserts on it). */
#define INTEL_DSA_MSI_BASE      0xfee00000ull
#define INTEL_DSA_MSI_SIZE      0x100000ull

#define INTEL_DSA_DMA_CHUNK     4096ull

typedef struct IntelDSAWorker {
    struct IntelDSAState *dsa;
    uint32_t index;
    QemuThread thread;
} IntelDSAWorker;

struct IntelDSAState {
    PCIDevice parent_obj;

    /* Properties (mapped onto DsaModelConfig). */
    uint32_t version;
    uint32_t num_wqs;
    uint32_t num_engines;
    uint32_t num_groups;
    uint32_t wq_size;
    uint32_t ims_entries;
    bool ims;
    uint32_t max_xfer_shift;
    uint32_t max_batch_shift;
    uint32_t msix_entries;
    bool shared_wq;
    bool cmdcap;
    bool fault_injection;

    char *tag;                  /* instance name in trace events */
    DsaModel *model;
    DsaModelLayout layout;
    MemoryRegion bar0;
    MemoryRegion bar2;
    uint32_t pci_flags;         /* last DSA_PCI_* state given to the core */

    X86IOMMUState *iommu;       /* NULL: DMA goes straight to memory */
    IntelIOMMUState *vtd;       /* non-NULL when the IOMMU is intel-iommu with PASIDs */
    QemuMutex as_lock;          /* protects pasid_as; never held while taking the BQL */
    GHashTable *pasid_as;       /* PASID -> AddressSpace * (owned by intel-iommu) */

    IntelDSAWorker *workers;
    uint32_t num_workers;
    Notifier exit_notifier;
};

static unsigned intel_dsa_instances;

/* ---- BQL helpers --------------------------------------------------------- */

/* Take the BQL unless this thread already holds it; returns whether it was taken. */
static bool intel_dsa_bql_enter(void)
{
    if (bql_locked()) {
        return false;
    }
    bql_lock();
    return true;
}

static void intel_dsa_bql_leave(bool taken)
{
    if (taken) {
        bql_unlock();
    }
}

/* ---- DMA ----------------------------------------------------------------- */

static bool intel_dsa_bus_master(IntelDSAState *s)
{
    return pci_get_word(s->parent_obj.config + PCI_COMMAND) & PCI_COMMAND_MASTER;
}

/*
 * The address space for requests with `pasid`, or NULL if the platform cannot carry them
 * (an IOMMU without PASID support). Without any IOMMU, PASID-tagged requests reach memory
 * untranslated, like requests without PASID.
 */
static AddressSpace *intel_dsa_pasid_as(IntelDSAState *s, uint32_t pasid)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    AddressSpace *as;
    VTDAddressSpace *vas;
    bool taken;

    if (!s->iommu) {
        return pci_get_address_space(pdev);
    }
    if (!s->vtd) {
        return NULL;
    }
    qemu_mutex_lock(&s->as_lock);
    as = g_hash_table_lookup(s->pasid_as, GUINT_TO_POINTER(pasid));
    qemu_mutex_unlock(&s->as_lock);
    if (as) {
        return as;
    }
    /* Creating the space builds memory regions: BQL required. */
    taken = intel_dsa_bql_enter();
    vas = vtd_find_add_as(s->vtd, pci_get_bus(pdev), pdev->devfn, pasid);
    intel_dsa_bql_leave(taken);
    as = &vas->as;
    qemu_mutex_lock(&s->as_lock);
    g_hash_table_insert(s->pasid_as, GUINT_TO_POINTER(pasid), as);
    qemu_mutex_unlock(&s->as_lock);
    return as;
}

/*
 * Move `len` bytes in page-sized pieces so that a translation failure reports exactly the
 * bytes done before the failing page. Returns the bytes transferred.
 */
static uint64_t intel_dsa_dma(IntelDSAState *s, int64_t pasid, bool priv, uint64_t addr,
                              uint8_t *buf, uint64_t len, DMADirection dir)
{
    AddressSpace *as;
    uint64_t done = 0;
    const char *why = NULL;

    if (!intel_dsa_bus_master(s)) {
        why = "bus master disabled";
        goto out;
    }
    if (pasid >= 0) {
        as = intel_dsa_pasid_as(s, (uint32_t)pasid);
        if (!as) {
            why = "IOMMU without PASID support";
            goto out;
        }
    } else {
        as = pci_get_address_space(PCI_DEVICE(s));
    }

    while (done < len) {
        uint64_t a = addr + done;
        uint64_t chunk = MIN(len - done,
                             INTEL_DSA_DMA_CHUNK - (a & (INTEL_DSA_DMA_CHUNK - 1)));
        MemTxResult r;
        bool taken;

        if (a < addr) {
            why = "address wraps";
            break;
        }
        /* Chunks never straddle a page, and the interrupt range is page aligned. */
        if (pasid >= 0 && s->iommu &&
            ranges_overlap(a, chunk, INTEL_DSA_MSI_BASE, INTEL_DSA_MSI_SIZE)) {
            why = "PASID request to the interrupt range";
            break;
        }
        /*
         * With an IOMMU, a failed translation records a fault and raises its event
         * interrupt, which touches IOMMU and APIC state that the BQL protects.
         */
        taken = s->iommu ? intel_dsa_bql_enter() : false;
        r = dma_memory_rw(as, a, buf + done, chunk, dir, MEMTXATTRS_UNSPECIFIED);
        intel_dsa_bql_leave(taken);
        if (r != MEMTX_OK) {
            why = "translation or access failure";
            break;
        }
        done += chunk;
    }
out:
    if (why) {
        trace_intel_dsa_dma_fail(s->tag, pasid, priv, addr + done,
                                 dir == DMA_DIRECTION_FROM_DEVICE, done, why);
    }
    return done;
}

static uint64_t intel_dsa_dma_read(void *opaque, int64_t pasid, bool priv, uint64_t addr,
                                   uint8_t *buf, uint64_t len)
{
    return intel_dsa_dma(opaque, pasid, priv, addr, buf, len, DMA_DIRECTION_TO_DEVICE);
}

static uint64_t intel_dsa_dma_write(void *opaque, int64_t pasid, bool priv, uint64_t addr,
                                    const uint8_t *buf, uint64_t len)
{
    /* dma_memory_rw does not write to buf when the direction is FROM_DEVICE. */
    return intel_dsa_dma(opaque, pasid, priv, addr, (uint8_t *)buf, len,
                         DMA_DIRECTION_FROM_DEVICE);
}

/* ---- Interrupts ---------------------------------------------------------- */

static void intel_dsa_msix_notify(void *opaque, uint32_t entry)
{
    IntelDSAState *s = opaque;
    PCIDevice *pdev = PCI_DEVICE(s);
    bool taken;

    if (entry >= s->layout.msix_entries) {
        trace_intel_dsa_msix_bad(s->tag, entry);
        return;
    }
    taken = intel_dsa_bql_enter();
    /* msix_notify handles masking (pending bit) and BME (the message is a DMA write). */
    trace_intel_dsa_msix(s->tag, entry, msix_enabled(pdev), msix_is_masked(pdev, entry));
    msix_notify(pdev, entry);
    intel_dsa_bql_leave(taken);
}

static void intel_dsa_send_msi(void *opaque, uint64_t addr, uint32_t data)
{
    IntelDSAState *s = opaque;
    PCIDevice *pdev = PCI_DEVICE(s);
    MemTxResult r = MEMTX_OK;
    bool taken;

    taken = intel_dsa_bql_enter();
    {
        /* The requester ID lets interrupt remapping validate the source (SVT). */
        MemTxAttrs attrs = { .requester_id = pci_requester_id(pdev) };

        address_space_stl_le(pci_get_address_space(pdev), addr, data, attrs, &r);
        trace_intel_dsa_ims_msi(s->tag, addr, data, attrs.requester_id, r);
    }
    intel_dsa_bql_leave(taken);
}

/* ---- Trace --------------------------------------------------------------- */

static void intel_dsa_trace(void *opaque, uint32_t event, uint64_t a0, uint64_t a1,
                            uint64_t a2, uint64_t a3)
{
    IntelDSAState *s = opaque;

    switch (event) {
    case DSA_TRACE_REG_READ:
        trace_intel_dsa_reg_read(s->tag, a0, a1, a2);
        break;
    case DSA_TRACE_REG_WRITE:
        trace_intel_dsa_reg_write(s->tag, a0, a1, a2);
        break;
    case DSA_TRACE_CMD:
        trace_intel_dsa_cmd(s->tag, a0, a1, a2, a3);
        break;
    case DSA_TRACE_PORTAL:
        trace_intel_dsa_portal(s->tag, a0, a1, a2, a3);
        break;
    case DSA_TRACE_DESC:
        trace_intel_dsa_desc(s->tag, a0, a1, a2, a3 & 0xfffff, (a3 >> 20) & 1,
                             (a3 >> 21) & 1);
        break;
    case DSA_TRACE_COMPLETION:
        trace_intel_dsa_completion(s->tag, a0, a1, a2, a3);
        break;
    case DSA_TRACE_IRQ:
        trace_intel_dsa_irq(s->tag, a0, a1, a2, a3);
        break;
    case DSA_TRACE_FAULT:
        trace_intel_dsa_fault(s->tag, (int64_t)a0, a1, a2, a3);
        break;
    case DSA_TRACE_SWERR:
        trace_intel_dsa_swerr(s->tag, a0, a1, a2, a3);
        break;
    case DSA_TRACE_INJECT:
        trace_intel_dsa_inject(s->tag, a0, a1, a2);
        break;
    default:
        trace_intel_dsa_trace_unknown(s->tag, event, a0, a1, a2, a3);
        break;
    }
}

/* ---- BARs ---------------------------------------------------------------- */

static uint64_t intel_dsa_bar0_read(void *opaque, hwaddr addr, unsigned size)
{
    IntelDSAState *s = opaque;

    return dsa_model_bar0_read(s->model, addr, size);
}

static void intel_dsa_bar0_write(void *opaque, hwaddr addr, uint64_t val, unsigned size)
{
    IntelDSAState *s = opaque;

    dsa_model_bar0_write(s->model, addr, val, size);
}

static const MemoryRegionOps intel_dsa_bar0_ops = {
    .read = intel_dsa_bar0_read,
    .write = intel_dsa_bar0_write,
    .endianness = DEVICE_LITTLE_ENDIAN,
    /* The core decides what a misaligned access does (reads 0, writes ignored). */
    .valid = { .min_access_size = 1, .max_access_size = 8, .unaligned = true },
    .impl = { .min_access_size = 1, .max_access_size = 8, .unaligned = true },
};

/* Anything but a whole 64-byte store reaches the portals here: dropped, as on HW. */
static uint64_t intel_dsa_bar2_read(void *opaque, hwaddr addr, unsigned size)
{
    return 0;
}

static void intel_dsa_bar2_write(void *opaque, hwaddr addr, uint64_t val, unsigned size)
{
    IntelDSAState *s = opaque;

    trace_intel_dsa_portal_partial(s->tag, addr, size);
    dsa_model_portal_partial(s->model, addr, size);
}

static const MemoryRegionOps intel_dsa_bar2_ops = {
    .read = intel_dsa_bar2_read,
    .write = intel_dsa_bar2_write,
    .endianness = DEVICE_LITTLE_ENDIAN,
    .valid = { .min_access_size = 1, .max_access_size = 8, .unaligned = true },
    .impl = { .min_access_size = 1, .max_access_size = 8, .unaligned = true },
};

/* Whole 64-byte MOVDIR64B / ENQCMD(S) stores to BAR2 (BQL held). */
static DirectStoreResult intel_dsa_portal_store(void *opaque, hwaddr offset,
                                                const uint8_t data[64],
                                                DirectStoreKind kind)
{
    IntelDSAState *s = opaque;
    uint32_t r;

    r = dsa_model_portal_submit(s->model, offset, data,
                                kind == DIRECT_STORE_DMWR ? DSA_PORTAL_DMWR
                                                          : DSA_PORTAL_POSTED);
    trace_intel_dsa_portal_store(s->tag, offset, kind, r);
    return r == DSA_PORTAL_ACCEPTED ? DIRECT_STORE_ACCEPTED : DIRECT_STORE_RETRY;
}

/* ---- Config space and reset ---------------------------------------------- */

static uint32_t intel_dsa_config_flags(IntelDSAState *s)
{
    const uint8_t *cfg = s->parent_obj.config;
    uint16_t ctrl = pci_get_word(cfg + INTEL_DSA_PASID_CAP + PCI_PASID_CTRL);
    uint32_t flags = 0;

    if (pci_get_word(cfg + PCI_COMMAND) & PCI_COMMAND_MASTER) {
        flags |= DSA_PCI_BME;
    }
    if (ctrl & PCI_PASID_CTRL_ENABLE) {
        flags |= DSA_PCI_PASID_ENABLE;
    }
    if (ctrl & PCI_PASID_CTRL_PRIV) {
        flags |= DSA_PCI_PASID_PRIV;
    }
    return flags;
}

static void intel_dsa_sync_pci_state(IntelDSAState *s)
{
    uint32_t flags = intel_dsa_config_flags(s);

    if (flags != s->pci_flags) {
        trace_intel_dsa_pci_state(s->tag, s->pci_flags, flags);
        s->pci_flags = flags;
        dsa_model_set_pci_state(s->model, flags);
    }
}

static void intel_dsa_config_write(PCIDevice *pdev, uint32_t addr, uint32_t val, int len)
{
    pci_default_write_config(pdev, addr, val, len);
    intel_dsa_sync_pci_state(INTEL_DSA(pdev));
}

static void intel_dsa_find_iommu(IntelDSAState *s)
{
    X86IOMMUState *x86 = x86_iommu_get_default();
    IntelIOMMUState *vtd;

    s->iommu = x86;
    s->vtd = NULL;
    if (!x86 || !object_dynamic_cast(OBJECT(x86), TYPE_INTEL_IOMMU_DEVICE)) {
        return;
    }
    vtd = INTEL_IOMMU_DEVICE(x86);
    /* PASID-tagged requests need scalable mode with PASID support (x-pasid-mode=on). */
    if (vtd->scalable_mode && vtd->pasid) {
        s->vtd = vtd;
    }
}

static void intel_dsa_reset(DeviceState *dev)
{
    IntelDSAState *s = INTEL_DSA(dev);
    uint8_t *cfg = s->parent_obj.config;

    trace_intel_dsa_reset(s->tag);
    /*
     * Machine reset runs after every device is realized: look the IOMMU up again in
     * case it was created after this device on the command line.
     */
    intel_dsa_find_iommu(s);
    /*
     * The PCI core clears the command register after this hook but leaves extended
     * capabilities alone; the PASID enables reset to 0 on hardware.
     */
    pci_set_word(cfg + INTEL_DSA_PASID_CAP + PCI_PASID_CTRL, 0);
    dsa_model_reset(s->model);
    s->pci_flags = 0;
    dsa_model_set_pci_state(s->model, 0);
}

/* ---- Workers ------------------------------------------------------------- */

static void *intel_dsa_worker_thread(void *opaque)
{
    IntelDSAWorker *w = opaque;

    rcu_register_thread();
    dsa_model_worker_run(w->dsa->model, w->index);
    rcu_unregister_thread();
    return NULL;
}

static void intel_dsa_stop_workers(IntelDSAState *s)
{
    bool held;

    if (!s->workers) {
        return;
    }
    dsa_model_stop(s->model);
    /* A worker may be waiting for the BQL inside a callback: let it finish. */
    held = bql_locked();
    if (held) {
        bql_unlock();
    }
    for (uint32_t i = 0; i < s->num_workers; i++) {
        qemu_thread_join(&s->workers[i].thread);
    }
    if (held) {
        bql_lock();
    }
    g_free(s->workers);
    s->workers = NULL;
    s->num_workers = 0;
}

static void intel_dsa_exit_notify(Notifier *n, void *data)
{
    IntelDSAState *s = container_of(n, IntelDSAState, exit_notifier);

    /* Process exit: stop executing descriptors; threads end with the process. */
    if (s->model) {
        dsa_model_stop(s->model);
    }
}

/* ---- Realize / exit ------------------------------------------------------ */

static void intel_dsa_init_pasid_cap(IntelDSAState *s)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    uint16_t off = INTEL_DSA_PASID_CAP;

    pcie_add_capability(pdev, PCI_EXT_CAP_ID_PASID, 1, off, PCI_EXT_CAP_PASID_SIZEOF);
    /* No execute permission; privileged mode supported; 20-bit PASIDs. */
    pci_set_word(pdev->config + off + PCI_PASID_CAP,
                 PCI_PASID_CAP_PRIV | (INTEL_DSA_PASID_WIDTH << 8));
    pci_set_word(pdev->config + off + PCI_PASID_CTRL, 0);
    pci_set_word(pdev->wmask + off + PCI_PASID_CTRL,
                 PCI_PASID_CTRL_ENABLE | PCI_PASID_CTRL_PRIV);
}

static void intel_dsa_realize(PCIDevice *pdev, Error **errp)
{
    IntelDSAState *s = INTEL_DSA(pdev);
    DeviceState *dev = DEVICE(pdev);
    const DsaPlatformOps ops = {
        .dma_read = intel_dsa_dma_read,
        .dma_write = intel_dsa_dma_write,
        .msix_notify = intel_dsa_msix_notify,
        .send_msi = intel_dsa_send_msi,
        .trace = intel_dsa_trace,
    };
    const DsaModelConfig cfg = {
        .version = s->version,
        .num_wqs = s->num_wqs,
        .num_engines = s->num_engines,
        .num_groups = s->num_groups,
        .total_wq_size = s->wq_size,
        .ims_entries = s->ims ? s->ims_entries : 0,
        .ims_disable = !s->ims,
        .max_xfer_shift = s->max_xfer_shift,
        .max_batch_shift = s->max_batch_shift,
        .msix_entries = s->msix_entries,
        .no_shared_wq = !s->shared_wq,
        .cmdcap = s->cmdcap,
        .fault_injection = s->fault_injection,
    };
    char err[256] = "";
    uint8_t bar_type = PCI_BASE_ADDRESS_SPACE_MEMORY | PCI_BASE_ADDRESS_MEM_TYPE_64 |
                       PCI_BASE_ADDRESS_MEM_PREFETCH;
    uint8_t *cfgsp = pdev->config;

    if (!pci_is_express(pdev) || !pci_bus_is_express(pci_get_bus(pdev))) {
        error_setg(errp, "intel-dsa is a PCI Express function: use a PCIe bus (q35)");
        return;
    }

    s->tag = dev->id ? g_strdup(dev->id) : g_strdup_printf("dsa%u", intel_dsa_instances);
    intel_dsa_instances++;

    s->model = dsa_model_new(&cfg, &ops, s, err, sizeof(err));
    if (!s->model) {
        error_setg(errp, "intel-dsa: %s", err[0] ? err : "invalid configuration");
        return;
    }
    dsa_model_layout(s->model, &s->layout);
    if (s->layout.msix_entries == 0 || s->layout.num_workers == 0 ||
        s->layout.bar0_size == 0 || s->layout.bar2_size == 0 ||
        !is_power_of_2(s->layout.bar0_size) || !is_power_of_2(s->layout.bar2_size)) {
        error_setg(errp, "intel-dsa: the model reported an unusable layout");
        goto fail_model;
    }

    pci_config_set_interrupt_pin(cfgsp, 0);

    if (pcie_endpoint_cap_init(pdev, INTEL_DSA_PCIE_CAP) < 0) {
        error_setg(errp, "intel-dsa: cannot add the PCIe capability");
        goto fail_model;
    }
    pci_long_test_and_set_mask(cfgsp + pdev->exp.exp_cap + PCI_EXP_DEVCAP2,
                               INTEL_DSA_DEVCAP2_DMWR);

    memory_region_init_io(&s->bar0, OBJECT(s), &intel_dsa_bar0_ops, s,
                          "intel-dsa-regs", s->layout.bar0_size);
    memory_region_init_io(&s->bar2, OBJECT(s), &intel_dsa_bar2_ops, s,
                          "intel-dsa-portals", s->layout.bar2_size);

    /* The MSI-X table and PBA overlay the register BAR at the core's offsets. */
    if (msix_init(pdev, s->layout.msix_entries, &s->bar0, 0, s->layout.msix_table_off,
                  &s->bar0, 0, s->layout.msix_pba_off, INTEL_DSA_MSIX_CAP, errp) < 0) {
        goto fail_pcie;
    }
    for (uint32_t i = 0; i < s->layout.msix_entries; i++) {
        msix_vector_use(pdev, i);
    }

    intel_dsa_init_pasid_cap(s);

    pci_register_bar(pdev, 0, bar_type, &s->bar0);
    pci_register_bar(pdev, 2, bar_type, &s->bar2);
    memory_region_set_direct_store64(&s->bar2, intel_dsa_portal_store, s);

    intel_dsa_find_iommu(s);
    qemu_mutex_init(&s->as_lock);
    s->pasid_as = g_hash_table_new(g_direct_hash, g_direct_equal);
    s->pci_flags = 0;
    dsa_model_set_pci_state(s->model, 0);

    s->num_workers = s->layout.num_workers;
    s->workers = g_new0(IntelDSAWorker, s->num_workers);
    for (uint32_t i = 0; i < s->num_workers; i++) {
        g_autofree char *name = g_strdup_printf("%s-w%u", s->tag, i);

        s->workers[i].dsa = s;
        s->workers[i].index = i;
        qemu_thread_create(&s->workers[i].thread, name, intel_dsa_worker_thread,
                           &s->workers[i], QEMU_THREAD_JOINABLE);
    }
    s->exit_notifier.notify = intel_dsa_exit_notify;
    qemu_add_exit_notifier(&s->exit_notifier);

    trace_intel_dsa_realize(s->tag, s->layout.bar0_size, s->layout.bar2_size,
                            s->layout.msix_entries, s->num_workers, s->iommu != NULL,
                            s->vtd != NULL);
    return;

fail_pcie:
    pcie_cap_exit(pdev);
fail_model:
    dsa_model_stop(s->model);
    dsa_model_free(s->model);
    s->model = NULL;
}

static void intel_dsa_exit(PCIDevice *pdev)
{
    IntelDSAState *s = INTEL_DSA(pdev);

    if (!s->model) {
        return;
    }
    qemu_remove_exit_notifier(&s->exit_notifier);
    intel_dsa_stop_workers(s);
    memory_region_clear_direct_store64(&s->bar2);
    msix_uninit(pdev, &s->bar0, &s->bar0);
    pcie_cap_exit(pdev);
    dsa_model_free(s->model);
    s->model = NULL;
    g_hash_table_destroy(s->pasid_as);
    qemu_mutex_destroy(&s->as_lock);
    g_free(s->tag);
    s->tag = NULL;
}

/* Defaults mirror DsaModelConfig's documented defaults so that `help` shows them. */
static const Property intel_dsa_properties[] = {
    DEFINE_PROP_UINT32("version", IntelDSAState, version, 0x100),
    DEFINE_PROP_UINT32("num-wqs", IntelDSAState, num_wqs, 8),
    DEFINE_PROP_UINT32("num-engines", IntelDSAState, num_engines, 4),
    DEFINE_PROP_UINT32("num-groups", IntelDSAState, num_groups, 4),
    DEFINE_PROP_UINT32("wq-size", IntelDSAState, wq_size, 128),
    DEFINE_PROP_BOOL("ims", IntelDSAState, ims, true),
    DEFINE_PROP_UINT32("ims-entries", IntelDSAState, ims_entries, 2048),
    DEFINE_PROP_UINT32("max-xfer-shift", IntelDSAState, max_xfer_shift, 31),
    DEFINE_PROP_UINT32("max-batch-shift", IntelDSAState, max_batch_shift, 10),
    DEFINE_PROP_UINT32("msix-entries", IntelDSAState, msix_entries, 0),
    DEFINE_PROP_BOOL("shared-wq", IntelDSAState, shared_wq, true),
    DEFINE_PROP_BOOL("cmdcap", IntelDSAState, cmdcap, false),
    DEFINE_PROP_BOOL("fault-injection", IntelDSAState, fault_injection, false),
};

static const struct {
    const char *name;
    const char *desc;
} intel_dsa_property_help[] = {
    { "version", "VERSION register (0x100 = DSA 1.0)" },
    { "num-wqs", "number of work queues (WQCAP)" },
    { "num-engines", "number of engines (ENGCAP)" },
    { "num-groups", "number of groups (GRPCAP)" },
    { "wq-size", "total WQ entries shared by all WQs (WQCAP[15:0])" },
    { "ims", "advertise an IMS table (off: no IMS, IMS portals drop/retry)" },
    { "ims-entries", "IMS table entries, multiple of 256 (GENCAP[30:25])" },
    { "max-xfer-shift", "log2 of the maximum transfer size (GENCAP[20:16])" },
    { "max-batch-shift", "log2 of the maximum batch size (GENCAP[24:21])" },
    { "msix-entries", "MSI-X table entries (0: 1 + num-wqs)" },
    { "shared-wq", "advertise shared WQ mode (WQCAP[48])" },
    { "cmdcap", "advertise CMDCAP with request/release interrupt handle" },
    { "fault-injection", "expose the test-only fault injection page in BAR0" },
};

static const VMStateDescription intel_dsa_vmstate = {
    .name = TYPE_INTEL_DSA,
    .unmigratable = 1,
};

static void intel_dsa_class_init(ObjectClass *oc, void *data)
{
    DeviceClass *dc = DEVICE_CLASS(oc);
    PCIDeviceClass *pc = PCI_DEVICE_CLASS(oc);

    pc->realize = intel_dsa_realize;
    pc->exit = intel_dsa_exit;
    pc->config_write = intel_dsa_config_write;
    pc->vendor_id = PCI_VENDOR_ID_INTEL;
    pc->device_id = INTEL_DSA_DEVICE_ID;
    pc->revision = 0;
    pc->class_id = PCI_CLASS_SYSTEM_OTHER; /* 0x0880, prog-if 0 */
    pc->subsystem_vendor_id = PCI_VENDOR_ID_INTEL;
    pc->subsystem_id = 0;
    dc->desc = "Intel Data Streaming Accelerator (DSA 1.0 model)";
    dc->vmsd = &intel_dsa_vmstate;
    device_class_set_props(dc, intel_dsa_properties);
    for (size_t i = 0; i < ARRAY_SIZE(intel_dsa_property_help); i++) {
        object_class_property_set_description(oc, intel_dsa_property_help[i].name,
                                              intel_dsa_property_help[i].desc);
    }
    device_class_set_legacy_reset(dc, intel_dsa_reset);
    set_bit(DEVICE_CATEGORY_MISC, dc->categories);
}

static const TypeInfo intel_dsa_info = {
    .name = TYPE_INTEL_DSA,
    .parent = TYPE_PCI_DEVICE,
    .instance_size = sizeof(IntelDSAState),
    .class_init = intel_dsa_class_init,
    .interfaces = (InterfaceInfo[]) {
        { INTERFACE_PCIE_DEVICE },
        { }
    },
};

static void intel_dsa_register_types(void)
{
    type_register_static(&intel_dsa_info);
}

type_init(intel_dsa_register_types)
