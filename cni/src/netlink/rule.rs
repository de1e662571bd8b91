//! Policy routing rules.
//!
//! Every rule installed carries action FR_ACT_TO_TBL explicitly: a rule sent
//! with the unspecified action is accepted by the kernel but makes lookups
//! fail instead of consulting the table.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::route::header_table;
use super::{Family, Netlink, NlError, NlResult, Rule};

impl Netlink {
    /// Rules of one family, in kernel order. Rules whose action is not
    /// "lookup table" are returned with `table` 0. A rule added with a fwmark
    /// and no mask reads back with mask 0xffffffff (the kernel's default).
    pub fn rules(&self, family: Family) -> NlResult<Vec<Rule>> {
        self.rule_dump(address_family(family))
    }

    /// The rules of both families in one dump.
    pub fn all_rules(&self) -> NlResult<Vec<Rule>> {
        self.rule_dump(AddressFamily::Unspec)
    }

    fn rule_dump(&self, af: AddressFamily) -> NlResult<Vec<Rule>> {
        let mut msg = RuleMessage::default();
        msg.header.family = af;
        let out = self.dump(RouteNetlinkMessage::GetRule(msg))?;
        Ok(out
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRule(r) => parse_rule(r),
                _ => None,
            })
            .collect())
    }

    /// `Exists` when an identical rule is present.
    pub fn add_rule(&self, rule: &Rule) -> NlResult<()> {
        self.ack(
            RouteNetlinkMessage::NewRule(rule_message(rule)?),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// `NotFound` when absent. The kernel treats selectors missing from a
    /// delete request as wildcards, so the exact rule is looked up first:
    /// `del_rule` never removes a rule that merely contains this one.
    pub fn del_rule(&self, rule: &Rule) -> NlResult<()> {
        self.del_rule_listed(rule, &self.rules(rule.family)?)
    }

    /// [`Netlink::del_rule`] against a dump the caller already holds
    /// (`current`), so removing several rules costs one dump, not one each.
    pub fn del_rule_listed(&self, rule: &Rule, current: &[Rule]) -> NlResult<()> {
        let msg = rule_message(rule)?;
        if !current.iter().any(|r| same_rule(r, rule)) {
            return Err(NlError::NotFound);
        }
        self.ack(RouteNetlinkMessage::DelRule(msg), 0)
    }
}

fn address_family(f: Family) -> AddressFamily {
    match f {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

/// (mark, mask) as the kernel stores them: a mark without a mask matches all bits.
fn effective_mark(rule: &Rule) -> (u32, u32) {
    let mark = rule.fwmark.unwrap_or(0);
    let default_mask = if mark != 0 { u32::MAX } else { 0 };
    (mark, rule.fwmask.unwrap_or(default_mask))
}

/// Equal as the kernel sees them (fwmark/fwmask defaults normalised).
pub(super) fn same_rule(a: &Rule, b: &Rule) -> bool {
    a.family == b.family
        && a.priority == b.priority
        && a.table == b.table
        && a.src == b.src
        && a.dst == b.dst
        && effective_mark(a) == effective_mark(b)
        && a.iif == b.iif
        && a.oif == b.oif
}

fn check_family(rule: &Rule, net: &Option<IpNet>) -> NlResult<()> {
    match net {
        Some(n) if Family::of_net(n) != rule.family => Err(NlError::Kernel {
            errno: libc::EINVAL,
            msg: format!("rule selector {n} is not of the rule's family"),
        }),
        _ => Ok(()),
    }
}

fn rule_message(rule: &Rule) -> NlResult<RuleMessage> {
    check_family(rule, &rule.src)?;
    check_family(rule, &rule.dst)?;
    let mut msg = RuleMessage::default();
    msg.header.family = address_family(rule.family);
    msg.header.action = RuleAction::ToTable;
    msg.header.table = header_table(rule.table);
    msg.attributes.push(RuleAttribute::Priority(rule.priority));
    msg.attributes.push(RuleAttribute::Table(rule.table));
    if let Some(src) = rule.src {
        msg.header.src_len = src.prefix_len();
        msg.attributes.push(RuleAttribute::Source(src.addr()));
    }
    if let Some(dst) = rule.dst {
        msg.header.dst_len = dst.prefix_len();
        msg.attributes.push(RuleAttribute::Destination(dst.addr()));
    }
    if let Some(mark) = rule.fwmark {
        msg.attributes.push(RuleAttribute::FwMark(mark));
    }
    if let Some(mask) = rule.fwmask {
        msg.attributes.push(RuleAttribute::FwMask(mask));
    }
    if let Some(iif) = &rule.iif {
        msg.attributes.push(RuleAttribute::Iifname(iif.clone()));
    }
    if let Some(oif) = &rule.oif {
        msg.attributes.push(RuleAttribute::Oifname(oif.clone()));
    }
    Ok(msg)
}

fn parse_rule(msg: RuleMessage) -> Option<Rule> {
    let family = match msg.header.family {
        AddressFamily::Inet => Family::V4,
        AddressFamily::Inet6 => Family::V6,
        _ => return None,
    };
    let to_table = msg.header.action == RuleAction::ToTable;
    let mut rule = Rule::new(family, 0, 0);
    let mut table = msg.header.table as u32;
    let mut src: Option<IpAddr> = None;
    let mut dst: Option<IpAddr> = None;
    for attr in msg.attributes {
        match attr {
            RuleAttribute::Priority(p) => rule.priority = p,
            RuleAttribute::Table(t) => table = t,
            RuleAttribute::Source(a) => src = Some(a),
            RuleAttribute::Destination(a) => dst = Some(a),
            RuleAttribute::FwMark(m) => rule.fwmark = Some(m),
            RuleAttribute::FwMask(m) => rule.fwmask = Some(m),
            RuleAttribute::Iifname(n) => rule.iif = Some(n),
            RuleAttribute::Oifname(n) => rule.oif = Some(n),
            _ => {}
        }
    }
    if to_table {
        rule.table = table;
    }
    rule.src = match src {
        Some(a) => Some(IpNet::new(a, msg.header.src_len).ok()?),
        None => None,
    };
    rule.dst = match dst {
        Some(a) => Some(IpNet::new(a, msg.header.dst_len).ok()?),
        None => None,
    };
    Some(rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_always_looks_up_a_table() {
        let mut r = Rule::new(Family::V4, 100, 1000);
        r.src = Some("10.0.0.0/24".parse().unwrap());
        r.fwmark = Some(0x10);
        let msg = rule_message(&r).unwrap();
        assert_eq!(msg.header.action, RuleAction::ToTable);
        assert_eq!(msg.header.table, 0);
        assert_eq!(msg.header.src_len, 24);
        assert!(msg.attributes.contains(&RuleAttribute::Table(1000)));
        assert!(msg.attributes.contains(&RuleAttribute::Priority(100)));

        let mut bad = Rule::new(Family::V6, 1, 1);
        bad.dst = Some("10.0.0.0/8".parse().unwrap());
        assert!(rule_message(&bad).is_err());
    }

    #[test]
    fn parse_and_compare() {
        let mut msg = RuleMessage::default();
        msg.header.family = AddressFamily::Inet6;
        msg.header.action = RuleAction::ToTable;
        msg.header.table = 252;
        msg.header.src_len = 64;
        msg.attributes = vec![
            RuleAttribute::Priority(300),
            RuleAttribute::Table(500),
            RuleAttribute::Source("fd00::".parse().unwrap()),
            RuleAttribute::FwMark(7),
            RuleAttribute::FwMask(u32::MAX),
            RuleAttribute::Iifname("eth0".into()),
        ];
        let got = parse_rule(msg.clone()).unwrap();
        let mut want = Rule::new(Family::V6, 300, 500);
        want.src = Some("fd00::/64".parse().unwrap());
        want.fwmark = Some(7);
        want.iif = Some("eth0".into());
        assert_ne!(got, want);
        assert!(same_rule(&got, &want));
        want.fwmask = Some(0xff);
        assert!(!same_rule(&got, &want));

        // Not a lookup: table reads as 0.
        msg.header.action = RuleAction::Nop;
        assert_eq!(parse_rule(msg).unwrap().table, 0);
    }
}
