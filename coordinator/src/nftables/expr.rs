//! nf_tables rule expressions (linux/netfilter/nf_tables.h), each encoded as
//! one `NFTA_LIST_ELEM` of a rule's expression list.
//!
//! Only the handful the reply-path rules need. All of them work on register 1
//! (`NFT_REG_1`, 16 bytes wide), the same register `nft` itself uses.

use cni::netlink::nftables::Attrs;

const NFTA_LIST_ELEM: u16 = 1;
pub const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

const NFT_REG_1: u32 = 1;

const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_META_SREG: u16 = 3;

const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;

const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_CT_SREG: u16 = 4;

const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;

const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;

/// `enum nft_meta_keys`.
#[derive(Debug, Clone, Copy)]
pub enum MetaKey {
    Mark = 3,
    IifName = 6,
}

/// `enum nft_ct_keys`.
#[derive(Debug, Clone, Copy)]
pub enum CtKey {
    State = 0,
    Mark = 3,
}

/// `enum nft_cmp_ops`.
#[derive(Debug, Clone, Copy)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
}

/// `NF_CT_STATE_BIT(IP_CT_NEW)`: bit 3 of the ct state word.
pub const CT_STATE_NEW: u32 = 1 << 3;

/// Interface names are compared over the whole `IFNAMSIZ` buffer.
pub const IFNAMSIZ: usize = 16;

/// One expression: its kernel name and its `NFTA_EXPR_DATA` attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr {
    name: &'static str,
    data: Attrs,
}

fn data_value(bytes: &[u8]) -> Attrs {
    Attrs::new().bytes(NFTA_DATA_VALUE, bytes)
}

/// An expression that reads `key` into register 1 (`reg_attr` a DREG) or
/// writes it from register 1 (`reg_attr` an SREG).
fn key_with_reg1(name: &'static str, key_attr: u16, key: u32, reg_attr: u16) -> Expr {
    Expr {
        name,
        data: Attrs::new().be32(key_attr, key).be32(reg_attr, NFT_REG_1),
    }
}

/// `meta load <key> => reg 1`
pub fn meta_load(key: MetaKey) -> Expr {
    key_with_reg1("meta", NFTA_META_KEY, key as u32, NFTA_META_DREG)
}

/// `meta set <key> with reg 1`
pub fn meta_set(key: MetaKey) -> Expr {
    key_with_reg1("meta", NFTA_META_KEY, key as u32, NFTA_META_SREG)
}

/// `ct load <key> => reg 1`
pub fn ct_load(key: CtKey) -> Expr {
    key_with_reg1("ct", NFTA_CT_KEY, key as u32, NFTA_CT_DREG)
}

/// `ct set <key> with reg 1`
pub fn ct_set(key: CtKey) -> Expr {
    key_with_reg1("ct", NFTA_CT_KEY, key as u32, NFTA_CT_SREG)
}

/// `cmp <op> reg 1 <value>`; `value` in the register's byte order.
pub fn cmp(op: CmpOp, value: &[u8]) -> Expr {
    Expr {
        name: "cmp",
        data: Attrs::new()
            .be32(NFTA_CMP_SREG, NFT_REG_1)
            .be32(NFTA_CMP_OP, op as u32)
            .nested(NFTA_CMP_DATA, data_value(value)),
    }
}

/// `reg 1 = (reg 1 & mask) ^ 0` over a host-endian u32.
pub fn and_mask(mask: u32) -> Expr {
    Expr {
        name: "bitwise",
        data: Attrs::new()
            .be32(NFTA_BITWISE_SREG, NFT_REG_1)
            .be32(NFTA_BITWISE_DREG, NFT_REG_1)
            .be32(NFTA_BITWISE_LEN, 4)
            .nested(NFTA_BITWISE_MASK, data_value(&mask.to_ne_bytes()))
            .nested(NFTA_BITWISE_XOR, data_value(&0u32.to_ne_bytes())),
    }
}

/// `immediate reg 1 <value>` for a host-endian u32.
pub fn immediate_u32(value: u32) -> Expr {
    Expr {
        name: "immediate",
        data: Attrs::new()
            .be32(NFTA_IMMEDIATE_DREG, NFT_REG_1)
            .nested(NFTA_IMMEDIATE_DATA, data_value(&value.to_ne_bytes())),
    }
}

/// An interface name as the kernel holds it: NUL-padded to `IFNAMSIZ`.
/// `None` when it cannot be an interface name.
pub fn ifname_bytes(name: &str) -> Option<[u8; IFNAMSIZ]> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() >= IFNAMSIZ || b.contains(&0) {
        return None;
    }
    let mut out = [0u8; IFNAMSIZ];
    out[..b.len()].copy_from_slice(b);
    Some(out)
}

/// Encode a rule body: the nested `NFTA_RULE_EXPRESSIONS` payload.
pub fn expression_list(exprs: &[Expr]) -> Attrs {
    exprs.iter().fold(Attrs::new(), |list, e| {
        list.nested(
            NFTA_LIST_ELEM,
            Attrs::new()
                .string(NFTA_EXPR_NAME, e.name)
                .nested(NFTA_EXPR_DATA, e.data.clone()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni::netlink::nftables::{attr_iter, be32, c_string, find_attr};

    #[test]
    fn ifnames_are_padded_and_validated() {
        let b = ifname_bytes("veth0").unwrap();
        assert_eq!(&b[..6], b"veth0\0");
        assert!(b[5..].iter().all(|x| *x == 0));
        assert!(ifname_bytes("").is_none());
        assert!(ifname_bytes("sixteen-chars-xx").is_none());
        assert!(ifname_bytes("fifteen-chars-x").is_some());
        assert!(ifname_bytes("a\0b").is_none());
    }

    #[test]
    fn expression_list_names_each_expression() {
        let list = expression_list(&[ct_load(CtKey::Mark), cmp(CmpOp::Eq, &7u32.to_ne_bytes())]);
        let elems: Vec<_> = attr_iter(list.as_bytes()).collect();
        assert_eq!(elems.len(), 2);
        assert!(elems.iter().all(|(k, _)| *k == NFTA_LIST_ELEM));
        let names: Vec<_> = elems
            .iter()
            .map(|(_, e)| c_string(find_attr(e, NFTA_EXPR_NAME).unwrap()))
            .collect();
        assert_eq!(names, ["ct", "cmp"]);
        let ct = find_attr(elems[0].1, NFTA_EXPR_DATA).unwrap();
        assert_eq!(be32(find_attr(ct, NFTA_CT_KEY).unwrap()), Some(3));
        assert_eq!(be32(find_attr(ct, NFTA_CT_DREG).unwrap()), Some(1));
        let cmp = find_attr(elems[1].1, NFTA_EXPR_DATA).unwrap();
        let value = find_attr(find_attr(cmp, NFTA_CMP_DATA).unwrap(), NFTA_DATA_VALUE).unwrap();
        assert_eq!(value, 7u32.to_ne_bytes());
    }
}
