//! Reply-path connmark in the pod netns, programmed over nf_tables netlink.
//!
//! In underlay mode the pod's default route leaves through `eth0` (or there
//! is none), yet connections can also enter through `veth0` (kubelet probes,
//! NodePort and Service traffic DNATed on the node). Their replies must go
//! back through `veth0`. We own one table in the pod:
//!
//! ```text
//! table inet coordinator {
//!   chain prerouting { type filter hook prerouting priority -150
//!     iifname "<iif>" ct state new ct mark set <mark>
//!     ct mark <mark> meta mark set ct mark }
//!   chain output { type route hook output priority -150
//!     ct mark <mark> meta mark set ct mark }
//! }
//! ```
//!
//! The caller's `ip rule fwmark <mark> lookup <table>` sends marked packets
//! out through `veth0`. Two ways carry the mark into the reply's route:
//! - The `route` chain type makes the kernel redo the route lookup when the
//!   packet mark changes. That only helps a packet that had a route in the
//!   first place: a UDP reply, or anything the pod sends while `main` holds
//!   a default.
//! - A TCP SYN-ACK is routed by the request socket before any output hook,
//!   with the request's mark; with no default in `main` that lookup fails and
//!   nothing is sent. So the packets of marked connections are marked on the
//!   way in too, and the planner turns on `net.ipv4.tcp_fwmark_accept`
//!   (IPv4 and IPv6 sockets alike): the request socket takes the SYN's mark
//!   (with SYN cookies, the final ACK's: hence every packet, not only the
//!   first), and so does the accepted socket.
//!
//! The table is written as raw netlink (no `nft` binary, no C libraries, no
//! GPL crates).

mod expr;

use std::sync::Mutex;

use cni::netlink::nftables::{
    self as wire, Attrs, NfMessage, NftMsg, Nftables, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL,
};
use cni::netlink::NlError;
use cni::netns::NetNs;
use cni::{Error, Result};

use expr::{CmpOp, CtKey, MetaKey};

/// Name of our table (family inet: IPv4 and IPv6 alike).
pub const TABLE: &str = "coordinator";
pub const PREROUTING_CHAIN: &str = "prerouting";
pub const OUTPUT_CHAIN: &str = "output";
/// Just before conntrack's own priority (-200 is conntrack, -150 is mangle):
/// the ct entry exists, and the mark is set before the routing decision.
pub const CHAIN_PRIORITY: i32 = -150;

const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_ACCEPT: u32 = 1;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;

/// What to mark: connections entering through `iif` get ct mark `mark`, and
/// their packets, in and out, get packet mark `mark`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyMark {
    pub iif: String,
    pub mark: u32,
}

/// One base chain of our table.
struct ChainSpec {
    name: &'static str,
    kind: &'static str,
    hook: u32,
}

const CHAINS: [ChainSpec; 2] = [
    ChainSpec {
        name: PREROUTING_CHAIN,
        kind: "filter",
        hook: NF_INET_PRE_ROUTING,
    },
    ChainSpec {
        name: OUTPUT_CHAIN,
        kind: "route",
        hook: NF_INET_LOCAL_OUT,
    },
];

/// One message of an install or remove transaction: the message, its extra
/// flags, and how errors name it.
type Step = (NfMessage, u16, String);

fn table_msg(msg: NftMsg) -> NfMessage {
    NfMessage::nft(msg, Attrs::new().string(NFTA_TABLE_NAME, TABLE))
}

fn chain_msg(c: &ChainSpec) -> NfMessage {
    let hook = Attrs::new()
        .be32(NFTA_HOOK_HOOKNUM, c.hook)
        .be32(NFTA_HOOK_PRIORITY, CHAIN_PRIORITY as u32);
    NfMessage::nft(
        NftMsg::NewChain,
        Attrs::new()
            .string(NFTA_CHAIN_TABLE, TABLE)
            .string(NFTA_CHAIN_NAME, c.name)
            .nested(NFTA_CHAIN_HOOK, hook)
            .be32(NFTA_CHAIN_POLICY, NF_ACCEPT)
            .string(NFTA_CHAIN_TYPE, c.kind),
    )
}

fn rule_msg(chain: &str, exprs: &[expr::Expr]) -> NfMessage {
    NfMessage::nft(
        NftMsg::NewRule,
        Attrs::new()
            .string(NFTA_RULE_TABLE, TABLE)
            .string(NFTA_RULE_CHAIN, chain)
            .nested(NFTA_RULE_EXPRESSIONS, expr::expression_list(exprs)),
    )
}

/// `iifname "<iif>" ct state new ct mark set <mark>`
fn prerouting_rule(iif: &[u8; expr::IFNAMSIZ], mark: u32) -> Vec<expr::Expr> {
    vec![
        expr::meta_load(MetaKey::IifName),
        expr::cmp(CmpOp::Eq, iif),
        expr::ct_load(CtKey::State),
        expr::and_mask(expr::CT_STATE_NEW),
        expr::cmp(CmpOp::Neq, &0u32.to_ne_bytes()),
        expr::immediate_u32(mark),
        expr::ct_set(CtKey::Mark),
    ]
}

/// `ct mark <mark> meta mark set ct mark`: register 1 still holds the ct
/// mark after the compare, so it is stored straight into the packet mark.
/// In both chains: packets of a marked connection carry the mark in and out.
fn restore_mark_rule(mark: u32) -> Vec<expr::Expr> {
    vec![
        expr::ct_load(CtKey::Mark),
        expr::cmp(CmpOp::Eq, &mark.to_ne_bytes()),
        expr::meta_set(MetaKey::Mark),
    ]
}

/// Every rule of the table in order, with its chain.
fn rules(iif: &[u8; expr::IFNAMSIZ], mark: u32) -> [(&'static str, Vec<expr::Expr>); 3] {
    [
        (PREROUTING_CHAIN, prerouting_rule(iif, mark)),
        (PREROUTING_CHAIN, restore_mark_rule(mark)),
        (OUTPUT_CHAIN, restore_mark_rule(mark)),
    ]
}

/// How the install transaction treats a table already in the netns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Install {
    /// Create only, failing with EEXIST when the table exists. A batch of
    /// nothing but new objects leaves no transaction for the kernel's
    /// deferred destroy work, so releasing the socket does not wait out an
    /// RCU grace period (~10 ms at HZ=250; it was most of an ADD).
    Create,
    /// Replace whatever is there: add the table, delete it, add it again
    /// (the trick `nft -f` files use), so the delete succeeds whether or not
    /// an old copy exists. The delete leaves destroy work behind.
    Replace,
}

/// The install transaction as data.
fn install_plan(spec: &ReplyMark, how: Install) -> Result<Vec<Step>> {
    let iif = expr::ifname_bytes(&spec.iif).ok_or_else(|| {
        Error::config(
            "reply mark interface",
            format!("{:?} is not an interface name", spec.iif),
        )
    })?;
    if spec.mark == 0 {
        // ct mark 0 is every unmarked connection: the output rule would
        // re-route all of the pod's traffic.
        return Err(Error::config("reply mark", "must not be 0"));
    }
    let add_table = (
        table_msg(NftMsg::NewTable),
        NLM_F_CREATE,
        format!("add table {TABLE}"),
    );
    let mut plan = match how {
        Install::Create => vec![(
            table_msg(NftMsg::NewTable),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("create table {TABLE}"),
        )],
        Install::Replace => vec![add_table.clone(), delete_table(), add_table],
    };
    for c in &CHAINS {
        plan.push((
            chain_msg(c),
            NLM_F_CREATE,
            format!("add chain {TABLE} {}", c.name),
        ));
    }
    for (chain, rule) in rules(&iif, spec.mark) {
        plan.push((
            rule_msg(chain, &rule),
            NLM_F_CREATE | NLM_F_APPEND,
            format!("add rule {TABLE} {chain}"),
        ));
    }
    Ok(plan)
}

fn delete_table() -> Step {
    (
        table_msg(NftMsg::DelTable),
        0,
        format!("delete table {TABLE}"),
    )
}

fn kernel(what: &str, e: NlError) -> Error {
    Error::kernel(format!("nftables {what}"), e)
}

/// Sockets kept open until the process exits (see [`in_netns`]).
static LINGER: Mutex<Vec<Nftables>> = Mutex::new(Vec::new());

/// Run `f` with a fresh nf_tables socket inside `ns`.
///
/// The socket is not closed here: closing an nf_tables socket right after a
/// commit that deleted something (a replace, a remove) blocks until the
/// kernel's transaction clean-up has waited out an RCU grace period
/// (`nft_rcv_nl_event` flushes the destroy work on NETLINK_URELEASE), 3-15 ms
/// measured on the benchmark machine. Parked until exit, that grace period
/// runs while the call does its remaining work instead of in front of it.
/// (A create-only commit leaves no destroy work: see [`Install::Create`].)
fn in_netns<T: Send>(ns: &NetNs, what: &str, f: impl FnOnce(&Nftables) -> Result<T>) -> Result<T> {
    let sock = Nftables::open_in(ns).map_err(|e| kernel(what, e))?;
    let out = f(&sock);
    if let Ok(mut parked) = LINGER.lock() {
        parked.push(sock);
    }
    out
}

/// Create (or re-create: idempotent, replaces our table) the table in netns
/// `ns`. True when it was created, false when an existing one was replaced.
pub fn install(ns: &NetNs, spec: &ReplyMark) -> Result<bool> {
    let create = install_plan(spec, Install::Create)?;
    let replace = install_plan(spec, Install::Replace)?;
    let created = in_netns(ns, "install", |sock| match sock.batch(&create) {
        Ok(()) => Ok(true),
        // A repeated ADD: the table is there, replace it.
        Err(NlError::Exists) => sock
            .batch(&replace)
            .map(|()| false)
            .map_err(|e| kernel("install", e)),
        Err(e) => Err(kernel("install", e)),
    })?;
    tracing::debug!(iif = %spec.iif, mark = spec.mark, "nftables reply-mark table installed");
    Ok(created)
}

/// Delete our table; Ok when it's absent.
pub fn remove(ns: &NetNs) -> Result<()> {
    in_netns(ns, "remove", |sock| match sock.batch(&[delete_table()]) {
        Ok(()) | Err(NlError::NotFound) => Ok(()),
        Err(e) => Err(kernel("remove", e)),
    })?;
    tracing::debug!("nftables reply-mark table removed");
    Ok(())
}

/// Is our table there exactly as [`install`] makes it of `spec` (see
/// [`verify`])? For `coordinator explain`.
pub fn present(ns: &NetNs, spec: &ReplyMark) -> Result<bool> {
    Ok(verify(ns, spec)?.is_none())
}

/// For CHECK: how the table differs from what [`install`] makes of `spec`
/// (chains' type, hook, priority and policy; each rule's expressions), or
/// None when it is exactly that.
pub fn verify(ns: &NetNs, spec: &ReplyMark) -> Result<Option<String>> {
    let iif = expr::ifname_bytes(&spec.iif)
        .ok_or_else(|| Error::config("reply mark interface", format!("{:?}", spec.iif)))?;
    let expected = rules(&iif, spec.mark);
    in_netns(ns, "check", |sock| {
        match sock.get(table_msg(NftMsg::GetTable)) {
            Ok(_) => {}
            Err(NlError::NotFound) => {
                return Ok(Some(format!("nftables table inet {TABLE} is missing")))
            }
            Err(e) => return Err(kernel("check", e)),
        }
        for c in &CHAINS {
            if let Some(why) = chain_differs(sock, c)? {
                return Ok(Some(why));
            }
            let want: Vec<Vec<u8>> = expected
                .iter()
                .filter(|(chain, _)| *chain == c.name)
                .map(|(_, e)| expr::expression_list(e).as_bytes().to_vec())
                .collect();
            let dump = NfMessage::nft(
                NftMsg::GetRule,
                Attrs::new()
                    .string(NFTA_RULE_TABLE, TABLE)
                    .string(NFTA_RULE_CHAIN, c.name),
            );
            let got: Vec<Vec<u8>> = sock
                .dump(dump)
                .map_err(|e| kernel(&format!("check: list rules of {}", c.name), e))?
                .iter()
                .filter(|r| {
                    wire::find_attr(r.attrs.as_bytes(), NFTA_RULE_CHAIN).map(wire::c_string)
                        == Some(c.name.to_string())
                })
                .filter_map(|r| {
                    wire::find_attr(r.attrs.as_bytes(), NFTA_RULE_EXPRESSIONS).map(<[u8]>::to_vec)
                })
                .collect();
            let same =
                got.len() == want.len() && got.iter().zip(&want).all(|(g, w)| same_attrs(g, w));
            if !same {
                return Ok(Some(format!(
                    "nftables chain {TABLE} {} holds {} rule(s) that are not the reply-mark \
                     rule(s) it should hold ({} expected)",
                    c.name,
                    got.len(),
                    want.len()
                )));
            }
        }
        Ok(None)
    })
}

/// How base chain `c` differs from what install makes.
fn chain_differs(sock: &Nftables, c: &ChainSpec) -> Result<Option<String>> {
    let get = NfMessage::nft(
        NftMsg::GetChain,
        Attrs::new()
            .string(NFTA_CHAIN_TABLE, TABLE)
            .string(NFTA_CHAIN_NAME, c.name),
    );
    let chain = match sock.get(get) {
        Ok(chain) => chain,
        Err(NlError::NotFound) => {
            return Ok(Some(format!(
                "nftables chain {TABLE} {} is missing",
                c.name
            )))
        }
        Err(e) => return Err(kernel(&format!("check: get chain {}", c.name), e)),
    };
    let attrs = chain.attrs.as_bytes();
    let kind = wire::find_attr(attrs, NFTA_CHAIN_TYPE).map(wire::c_string);
    let hook = wire::find_attr(attrs, NFTA_CHAIN_HOOK);
    let num = hook
        .and_then(|h| wire::find_attr(h, NFTA_HOOK_HOOKNUM))
        .and_then(wire::be32);
    let prio = hook
        .and_then(|h| wire::find_attr(h, NFTA_HOOK_PRIORITY))
        .and_then(wire::be32)
        .map(|p| p as i32);
    let policy = wire::find_attr(attrs, NFTA_CHAIN_POLICY).and_then(wire::be32);
    let why = if kind.as_deref() != Some(c.kind) {
        format!("type {kind:?}, not {}", c.kind)
    } else if num != Some(c.hook) {
        format!("hook {num:?}, not {}", c.hook)
    } else if prio != Some(CHAIN_PRIORITY) {
        format!("priority {prio:?}, not {CHAIN_PRIORITY}")
    } else if policy != Some(NF_ACCEPT) {
        format!("policy {policy:?}, not accept")
    } else {
        return Ok(None);
    };
    Ok(Some(format!("nftables chain {TABLE} {}: {why}", c.name)))
}

/// A whole attribute list: (type without flags, payload), or None when the
/// bytes are not exactly one.
fn attr_list(buf: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let len = u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(buf.get(at + 2..at + 4)?.try_into().ok()?) & 0x3fff;
        if len < 4 || at + len > buf.len() {
            return None;
        }
        out.push((kind, &buf[at + 4..at + len]));
        at += (len + 3) & !3;
    }
    Some(out)
}

/// Do the dumped attributes `got` carry everything `want` (what we send)
/// says? Nested lists are compared attribute by attribute (the kernel may
/// flag them nested, or add attributes of its own); leaves byte for byte.
fn same_attrs(got: &[u8], want: &[u8]) -> bool {
    if got == want {
        return true;
    }
    let (Some(g), Some(w)) = (attr_list(got), attr_list(want)) else {
        return false;
    };
    if w.is_empty() {
        return false;
    }
    // Expressions (list elements) in order, one for one; inside an
    // expression, each attribute we send must be there.
    let elems = w.iter().all(|(k, _)| *k == 1);
    if elems {
        return g.len() == w.len()
            && g.iter()
                .zip(&w)
                .all(|((gk, gv), (wk, wv))| gk == wk && same_attrs(gv, wv));
    }
    w.iter()
        .all(|(wk, wv)| g.iter().any(|(gk, gv)| gk == wk && same_attrs(gv, wv)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(iif: &str, mark: u32) -> ReplyMark {
        ReplyMark {
            iif: iif.into(),
            mark,
        }
    }

    #[test]
    fn replace_plan_adds_deletes_and_adds_the_table() {
        let plan = install_plan(&spec("veth0", 0x100), Install::Replace).unwrap();
        let kinds: Vec<_> = plan.iter().map(|(r, ..)| r.msg_type & 0xff).collect();
        assert_eq!(kinds, [0, 2, 0, 3, 3, 6, 6, 6]);
        assert!(plan.iter().all(|(r, ..)| r.family == wire::NFPROTO_INET));
    }

    #[test]
    fn create_plan_only_creates_and_refuses_an_existing_table() {
        let plan = install_plan(&spec("veth0", 0x100), Install::Create).unwrap();
        let kinds: Vec<_> = plan.iter().map(|(r, ..)| r.msg_type & 0xff).collect();
        assert_eq!(kinds, [0, 3, 3, 6, 6, 6]);
        assert_ne!(plan[0].1 & NLM_F_EXCL, 0);
    }

    /// The rules of the plan, as (chain, expression names, expression data).
    fn planned_rules(mark: u32) -> Vec<(String, Vec<String>, Vec<Vec<u8>>)> {
        let plan = install_plan(&spec("veth0", mark), Install::Create).unwrap();
        plan.iter()
            .filter(|(r, ..)| r.msg_type & 0xff == NftMsg::NewRule as u16)
            .map(|(r, ..)| {
                let a = r.attrs.as_bytes();
                let chain = wire::c_string(wire::find_attr(a, NFTA_RULE_CHAIN).unwrap());
                let list = wire::find_attr(a, NFTA_RULE_EXPRESSIONS).unwrap();
                let data = wire::attr_iter(list)
                    .map(|(_, e)| wire::find_attr(e, 2).unwrap().to_vec())
                    .collect();
                let names = wire::attr_iter(list)
                    .filter_map(|(_, e)| wire::find_attr(e, expr::NFTA_EXPR_NAME))
                    .map(wire::c_string)
                    .collect();
                (chain, names, data)
            })
            .collect()
    }

    /// Packets of a marked connection get the mark on the way in as well
    /// as on the way out: a SYN-ACK is routed with the SYN's mark (or, with
    /// SYN cookies, the final ACK's) before any output hook runs.
    #[test]
    fn marked_connections_are_marked_in_both_directions() {
        let rules = planned_rules(0xc0de);
        let shape = |chain: &str, names: &[&str]| {
            (
                chain.to_string(),
                names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            )
        };
        let got: Vec<_> = rules
            .iter()
            .map(|(c, n, _)| (c.clone(), n.clone()))
            .collect();
        assert_eq!(
            got,
            [
                shape(
                    PREROUTING_CHAIN,
                    &["meta", "cmp", "ct", "bitwise", "cmp", "immediate", "ct"]
                ),
                shape(PREROUTING_CHAIN, &["ct", "cmp", "meta"]),
                shape(OUTPUT_CHAIN, &["ct", "cmp", "meta"]),
            ]
        );
        // The ingress and the output mark rule are the same rule.
        assert_eq!(rules[1].2, rules[2].2);
        // It loads the ct mark, compares it with ours and stores it in the
        // packet mark (meta key mark, from a source register).
        let (cmp, meta) = (&rules[1].2[1], &rules[1].2[2]);
        let value = wire::find_attr(wire::find_attr(cmp, 3).unwrap(), 1).unwrap();
        assert_eq!(value, 0xc0deu32.to_ne_bytes());
        assert_eq!(wire::find_attr(meta, 2).and_then(wire::be32), Some(3));
        assert!(wire::find_attr(meta, 3).is_some(), "meta set, not load");
    }

    /// CHECK's comparison: what we send must be in what the kernel dumps,
    /// which may add attributes of its own; a changed value is a difference.
    #[test]
    fn dumped_rules_compare_by_what_we_sent() {
        let iif = expr::ifname_bytes("veth0").unwrap();
        let ours = |mark: u32| expr::expression_list(&prerouting_rule(&iif, mark));
        let want = ours(0xc0de);
        assert!(same_attrs(want.as_bytes(), want.as_bytes()));
        assert!(!same_attrs(ours(0xc0df).as_bytes(), want.as_bytes()));
        // The kernel's dump with an attribute of its own in an expression's
        // data (a flag set on the `ct` expression) is still ours.
        let extra = expr::expression_list(&[
            expr::meta_load(MetaKey::IifName),
            expr::cmp(CmpOp::Eq, &iif),
        ]);
        let mut with_flag = extra.as_bytes().to_vec();
        // Append an unknown attribute (type 99, 4 bytes) to the last
        // expression's data and fix the nested lengths up.
        let fixed = append_to_last_data(&with_flag, &[8, 0, 99, 0, 1, 0, 0, 0]);
        with_flag = fixed;
        assert!(same_attrs(&with_flag, extra.as_bytes()));
        assert!(!same_attrs(&[], want.as_bytes()));
    }

    /// `list` (NFTA_LIST_ELEM of name + data) with `attr` added at the end of
    /// its last element's data.
    fn append_to_last_data(list: &[u8], attr: &[u8]) -> Vec<u8> {
        let elems: Vec<(u16, &[u8])> = attr_list(list).unwrap();
        let mut out = Vec::new();
        for (i, (_, e)) in elems.iter().enumerate() {
            let mut body = Vec::new();
            for (k, v) in attr_list(e).unwrap() {
                let mut v = v.to_vec();
                if i + 1 == elems.len() && k == 2 {
                    v.extend_from_slice(attr);
                }
                push_attr(&mut body, k, &v);
            }
            push_attr(&mut out, 1 | 0x8000, &body);
        }
        out
    }

    fn push_attr(buf: &mut Vec<u8>, kind: u16, v: &[u8]) {
        let len = (v.len() + 4) as u16;
        buf.extend_from_slice(&len.to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(v);
        while !buf.len().is_multiple_of(4) {
            buf.push(0);
        }
    }

    #[test]
    fn chains_carry_hook_type_and_priority() {
        let r = chain_msg(&CHAINS[1]);
        let a = r.attrs.as_bytes();
        assert_eq!(
            wire::find_attr(a, NFTA_CHAIN_TYPE)
                .map(wire::c_string)
                .as_deref(),
            Some("route")
        );
        let hook = wire::find_attr(a, NFTA_CHAIN_HOOK).unwrap();
        assert_eq!(
            wire::find_attr(hook, NFTA_HOOK_HOOKNUM).and_then(wire::be32),
            Some(NF_INET_LOCAL_OUT)
        );
        assert_eq!(
            wire::find_attr(hook, NFTA_HOOK_PRIORITY).and_then(wire::be32),
            Some(-150i32 as u32)
        );
    }

    #[test]
    fn bad_specs_are_config_errors() {
        for s in [spec("", 1), spec("veth0", 0), spec("a-very-long-ifname", 1)] {
            for how in [Install::Create, Install::Replace] {
                assert_eq!(install_plan(&s, how).unwrap_err().code(), 7, "{s:?}");
            }
        }
    }
}
