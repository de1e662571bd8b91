//! Which layout a call gets: the `mode` field, and for `auto` what the pod
//! looks like.

use crate::config::Mode;
use crate::plan::Layout;

/// Facts about the pod's first NIC that decide `auto` for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FirstNic {
    /// A veth...
    pub is_veth: bool,
    /// ...whose peer lives in the host netns (an overlay CNI made it).
    pub peer_in_host: bool,
}

/// Is the first NIC's link partner a host device of ours to route through?
/// Only for a veth whose peer lives in the host netns (an overlay CNI's). A
/// macvlan or SR-IOV `eth0` attached without the coordinator also has a link
/// partner, its parent uplink: host routes and permanent neighbours for a
/// later NIC must never go there (nothing would remove them).
pub fn host_peer(first: FirstNic) -> bool {
    first.is_veth && first.peer_in_host
}

/// None: `mode: disabled`, touch nothing.
pub fn resolve(mode: Mode, is_first: bool, first: FirstNic, veth0_present: bool) -> Option<Layout> {
    let underlay = match mode {
        Mode::Disabled => return None,
        Mode::Underlay => true,
        Mode::Overlay => false,
        Mode::Auto if is_first => !host_peer(first),
        Mode::Auto => veth0_present,
    };
    Some(match (underlay, is_first) {
        (true, true) => Layout::UnderlayFirst,
        (true, false) => Layout::UnderlayLater,
        (false, true) => Layout::OverlayFirst,
        (false, false) => Layout::OverlayLater,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_table() {
        let overlay_eth0 = FirstNic {
            is_veth: true,
            peer_in_host: true,
        };
        let macvlan_eth0 = FirstNic::default();
        let veth_elsewhere = FirstNic {
            is_veth: true,
            peer_in_host: false,
        };
        let cases = [
            // (mode, first?, eth0, veth0 present) -> layout
            (
                Mode::Auto,
                true,
                overlay_eth0,
                false,
                Some(Layout::OverlayFirst),
            ),
            (
                Mode::Auto,
                true,
                macvlan_eth0,
                false,
                Some(Layout::UnderlayFirst),
            ),
            (
                Mode::Auto,
                true,
                veth_elsewhere,
                false,
                Some(Layout::UnderlayFirst),
            ),
            (
                Mode::Auto,
                false,
                macvlan_eth0,
                true,
                Some(Layout::UnderlayLater),
            ),
            (
                Mode::Auto,
                false,
                overlay_eth0,
                false,
                Some(Layout::OverlayLater),
            ),
            (
                Mode::Underlay,
                true,
                overlay_eth0,
                false,
                Some(Layout::UnderlayFirst),
            ),
            (
                Mode::Underlay,
                false,
                overlay_eth0,
                false,
                Some(Layout::UnderlayLater),
            ),
            (
                Mode::Overlay,
                true,
                macvlan_eth0,
                false,
                Some(Layout::OverlayFirst),
            ),
            (
                Mode::Overlay,
                false,
                macvlan_eth0,
                true,
                Some(Layout::OverlayLater),
            ),
            (Mode::Disabled, true, macvlan_eth0, false, None),
            (Mode::Disabled, false, macvlan_eth0, true, None),
        ];
        assert!(host_peer(overlay_eth0));
        assert!(!host_peer(macvlan_eth0));
        assert!(!host_peer(veth_elsewhere));
        for (mode, first, eth0, veth0, want) in cases {
            assert_eq!(
                resolve(mode, first, eth0, veth0),
                want,
                "{mode:?} first={first} {eth0:?} veth0={veth0}"
            );
        }
    }
}
