/*
 * dsa_model.h - C ABI of the Intel DSA device model core (crate emulator/dsa-model).
 *
 * The Rust core owns the device's behaviour: BAR0 registers (except the MSI-X table and
 * PBA, which QEMU's msix helpers own), the MSI-X permission table, the IMS table, the work
 * queues behind the BAR2 portals, the engines and every operation. The C adapter in QEMU
 * (emulator/qemu/src/hw/dsa/intel_dsa.c) owns PCI registration, config space, MMIO dispatch,
 * DMA through the IOMMU, MSI delivery, trace events and the worker threads.
 *
 * Threading and locking contract (read before changing either side):
 *  - dsa_model_bar0_read/_write, dsa_model_portal_submit, dsa_model_set_pci_state and
 *    dsa_model_reset are called from vCPU threads with the BQL held. They never block
 *    waiting for a worker: a command that must wait for in-flight work (drain, disable,
 *    abort) leaves CMDSTATUS.active set and is completed later by a worker.
 *  - dsa_model_worker_run is called once per worker thread (thread created by the adapter,
 *    registered with RCU). It returns only after dsa_model_stop.
 *  - The core never holds one of its own locks while it calls a DsaPlatformOps callback,
 *    because the callbacks may take the BQL (DMA to MMIO, IOMMU fault events, MSI), and a
 *    vCPU thread holding the BQL may be waiting for the core's lock.
 *  - Callbacks may be called from any thread, concurrently.
 */
#ifndef DSA_MODEL_H
#define DSA_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct DsaModel DsaModel;

/* Device properties (QEMU: -device intel-dsa,<prop>=<value>). Zero means "default". */
typedef struct DsaModelConfig {
    uint32_t version;         /* VERSION register; default 0x100 (DSA 1.0) */
    uint32_t num_wqs;         /* default 8 */
    uint32_t num_engines;     /* default 4 */
    uint32_t num_groups;      /* default 4 */
    uint32_t total_wq_size;   /* WQCAP[15:0]; default 128 */
    uint32_t ims_entries;     /* multiple of 256 (GENCAP[30:25] x 256); default 2048; 0 = no IMS
                                 is expressed with ims_disable = 1 */
    uint32_t ims_disable;
    uint32_t max_xfer_shift;  /* GENCAP[20:16]; default 31 */
    uint32_t max_batch_shift; /* GENCAP[24:21]; default 10 */
    uint32_t msix_entries;    /* default 1 + num_wqs */
    uint32_t no_shared_wq;    /* 1 = do not advertise shared mode (WQCAP.48) */
    uint32_t cmdcap;          /* 1 = GENCAP.4 with CMDCAP: request/release interrupt handle */
    uint32_t fault_injection; /* 1 = the test-only injection page in BAR0 exists (see model docs) */
} DsaModelConfig;

/* Where QEMU must place its pieces. Filled by dsa_model_layout. */
typedef struct DsaModelLayout {
    uint64_t bar0_size;       /* power of two */
    uint64_t bar2_size;       /* power of two: num_wqs x 16 KiB rounded up */
    uint64_t msix_table_off;  /* in BAR0 */
    uint64_t msix_pba_off;    /* in BAR0 */
    uint32_t msix_entries;
    uint32_t num_workers;     /* worker threads the adapter must start */
} DsaModelLayout;

/* PCI state the core depends on (dsa_model_set_pci_state flags). */
#define DSA_PCI_BME            (1u << 0) /* command register Bus Master Enable */
#define DSA_PCI_PASID_ENABLE   (1u << 1) /* PASID extended capability: PASID Enable */
#define DSA_PCI_PASID_PRIV     (1u << 2) /* PASID extended capability: Privileged Mode Enable */
#define DSA_PCI_ATS_ENABLE     (1u << 3) /* ATS capability enable (if the adapter offers ATS) */

/* Portal store kinds (dsa_model_portal_submit). */
#define DSA_PORTAL_POSTED 0u /* MOVDIR64B: posted 64-byte write, no status */
#define DSA_PORTAL_DMWR   1u /* ENQCMD/ENQCMDS: deferrable memory write, status returned */

/* dsa_model_portal_submit results (meaningful for DSA_PORTAL_DMWR only). */
#define DSA_PORTAL_ACCEPTED 0u
#define DSA_PORTAL_RETRY    1u

/* Trace event identifiers passed to DsaPlatformOps.trace. Arguments a0..a3 per event. */
enum DsaTraceEvent {
    DSA_TRACE_REG_READ = 1,  /* offset, size, value */
    DSA_TRACE_REG_WRITE,     /* offset, size, value */
    DSA_TRACE_CMD,           /* code, operand, status (error byte), active */
    DSA_TRACE_PORTAL,        /* wq, page kind (0..3), store kind, result */
    DSA_TRACE_DESC,          /* wq, opcode, flags, pasid | (valid << 20) | (priv << 21) */
    DSA_TRACE_COMPLETION,    /* wq, opcode, status byte, bytes completed */
    DSA_TRACE_IRQ,           /* table (0 MSI-X, 1 IMS), index, sent (1) or suppressed (0), reason */
    DSA_TRACE_FAULT,         /* pasid (-1 = none, as u64), address, is_write, bytes done */
    DSA_TRACE_SWERR,         /* error code, wq, opcode, overflow */
    DSA_TRACE_INJECT,        /* kind, a, b, 0 */
};

typedef struct DsaPlatformOps {
    /*
     * DMA between guest memory and buf. pasid < 0 means a request without PASID (the
     * device's ordinary DMA address space); otherwise the request carries that PASID and
     * the privilege bit. Returns the number of bytes transferred before the first
     * translation or access failure: len on success. Must refuse (return early) when
     * Bus Master Enable is clear.
     */
    uint64_t (*dma_read)(void *opaque, int64_t pasid, bool priv, uint64_t addr,
                         uint8_t *buf, uint64_t len);
    uint64_t (*dma_write)(void *opaque, int64_t pasid, bool priv, uint64_t addr,
                          const uint8_t *buf, uint64_t len);
    /* Signal MSI-X table entry `entry`. Masking and the PBA are the adapter's business. */
    void (*msix_notify)(void *opaque, uint32_t entry);
    /* Send an MSI (an IMS entry's message) as a write from the device's requester ID, so
       that it goes through interrupt remapping like any device interrupt. */
    void (*send_msi)(void *opaque, uint64_t addr, uint32_t data);
    /* Trace hook; may be NULL. */
    void (*trace)(void *opaque, uint32_t event, uint64_t a0, uint64_t a1, uint64_t a2,
                  uint64_t a3);
} DsaPlatformOps;

/*
 * Create a device. Returns NULL and writes a NUL-terminated reason into err (if err_len > 0)
 * when the configuration is invalid. `ops` is copied; `opaque` is passed to every callback.
 */
DsaModel *dsa_model_new(const DsaModelConfig *cfg, const DsaPlatformOps *ops, void *opaque,
                        char *err, size_t err_len);
/* Frees the device. Call only after dsa_model_stop and after every worker has returned. */
void dsa_model_free(DsaModel *m);

void dsa_model_layout(const DsaModel *m, DsaModelLayout *out);

/* BAR0 accesses of 1, 2, 4 or 8 bytes, naturally aligned (others read 0 / are ignored). */
uint64_t dsa_model_bar0_read(DsaModel *m, uint64_t offset, uint32_t size);
void dsa_model_bar0_write(DsaModel *m, uint64_t offset, uint64_t value, uint32_t size);

/* A whole, 64-byte-aligned 64-byte store to BAR2 at `offset`. Returns DSA_PORTAL_*. */
uint32_t dsa_model_portal_submit(DsaModel *m, uint64_t offset, const uint8_t desc[64],
                                 uint32_t kind);
/* Any other store to BAR2 (partial or misaligned): dropped, as on hardware; traced. */
void dsa_model_portal_partial(DsaModel *m, uint64_t offset, uint32_t size);

/* Config-space state changes (BME, PASID enable, ...). A change while the device is
   enabled halts it with SWERR 0x51, as the spec requires. */
void dsa_model_set_pci_state(DsaModel *m, uint32_t flags);

/* Function-level or system reset: abandon all work, registers to reset values. */
void dsa_model_reset(DsaModel *m);

/* Worker thread body: executes descriptors until dsa_model_stop. */
void dsa_model_worker_run(DsaModel *m, uint32_t worker_index);
/* Ask every worker to return; idempotent. */
void dsa_model_stop(DsaModel *m);

#ifdef __cplusplus
}
#endif

#endif /* DSA_MODEL_H */
