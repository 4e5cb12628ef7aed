//! Host-side harness: build the kernel, boot it through qemu-run.sh, parse the serial log.
