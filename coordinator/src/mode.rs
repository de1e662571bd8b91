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

/// None: `mode: disabled`, touch nothing.
pub fn resolve(mode: Mode, is_first: bool, first: FirstNic, veth0_present: bool) -> Option<Layout> {
    let underlay = match mode {
        Mode::Disabled => return None,
        Mode::Underlay => true,
        Mode::Overlay => false,
        Mode::Auto if is_first => !(first.is_veth && first.peer_in_host),
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
        for (mode, first, eth0, veth0, want) in cases {
            assert_eq!(
                resolve(mode, first, eth0, veth0),
                want,
                "{mode:?} first={first} {eth0:?} veth0={veth0}"
            );
        }
    }
}
