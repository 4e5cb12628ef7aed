//! BAR2 WQ submission portals (DSA spec §9.3, Figure 9-2).

/// Bytes of BAR2 owned by one WQ (4 pages).
pub const WQ_PORTAL_STRIDE: u64 = 0x4000;
/// Size of one portal page.
pub const PORTAL_PAGE_SIZE: u64 = 0x1000;

/// The four portal pages of a WQ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PortalKind {
    /// +0x0000: accepts while occupancy < WQ size; interrupts through MSI-X.
    UnlimitedMsix = 0,
    /// +0x1000: accepts while occupancy < threshold (shared WQ); MSI-X.
    LimitedMsix = 1,
    /// +0x2000: unlimited; interrupts through IMS.
    UnlimitedIms = 2,
    /// +0x3000: limited; IMS.
    LimitedIms = 3,
}

impl PortalKind {
    /// The kind of portal page `page` (0..=3; higher bits ignored).
    pub const fn from_page(page: u8) -> PortalKind {
        match page & 3 {
            0 => PortalKind::UnlimitedMsix,
            1 => PortalKind::LimitedMsix,
            2 => PortalKind::UnlimitedIms,
            _ => PortalKind::LimitedIms,
        }
    }
    /// Whether completion interrupts of descriptors submitted here go through IMS.
    pub const fn is_ims(self) -> bool {
        matches!(self, PortalKind::UnlimitedIms | PortalKind::LimitedIms)
    }
    /// Whether the page accepts only while occupancy is below the WQ threshold.
    pub const fn is_limited(self) -> bool {
        matches!(self, PortalKind::LimitedMsix | PortalKind::LimitedIms)
    }
}

/// BAR2 offset of WQ `wq`'s portal page `kind`.
pub const fn portal_offset(wq: u32, kind: PortalKind) -> u64 {
    wq as u64 * WQ_PORTAL_STRIDE + kind as u64 * PORTAL_PAGE_SIZE
}

/// Decodes a BAR2 offset into (WQ index, portal page). Bits 11:6 select one of the 64
/// equivalent slots of the page and are ignored.
pub const fn decode_portal(offset: u64) -> (u64, PortalKind) {
    (
        offset >> 14,
        PortalKind::from_page(((offset >> 12) & 3) as u8),
    )
}

/// BAR2 size for `num_wqs` WQs: 16 KiB each, rounded up to a power of two.
pub const fn bar2_size(num_wqs: u32) -> u64 {
    let s = num_wqs as u64 * WQ_PORTAL_STRIDE;
    if s <= WQ_PORTAL_STRIDE {
        WQ_PORTAL_STRIDE
    } else {
        s.next_power_of_two()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn portal_math() {
        assert_eq!(portal_offset(0, PortalKind::LimitedMsix), 0x1000);
        assert_eq!(portal_offset(3, PortalKind::LimitedIms), 0xF000);
        assert_eq!(decode_portal(0xF000 + 0x7C0), (3, PortalKind::LimitedIms));
        assert_eq!(decode_portal(0x1_6000), (5, PortalKind::UnlimitedIms));
        assert_eq!(bar2_size(8), 0x20000);
        assert_eq!(bar2_size(5), 0x20000);
        assert_eq!(bar2_size(1), 0x4000);
        assert!(PortalKind::LimitedIms.is_ims() && PortalKind::LimitedIms.is_limited());
    }
}
