//! `explain`'s two outputs: text for people, one JSON object for scripts.

use std::net::IpAddr;

use cni::netlink::Family;
use serde_json::{json, Value};

use super::probe::Flow;
use super::verdict::distinct;

/// Who was explained, for the header.
pub struct Header {
    pub netns: String,
    pub mode: &'static str,
    pub host_iface: Option<String>,
    pub host_rule_table: u32,
}

fn family_number(f: Family) -> u8 {
    match f {
        Family::V4 => 4,
        Family::V6 => 6,
    }
}

/// The first reply interface (the only one unless replies spread).
fn reply_nic(f: &Flow) -> Option<String> {
    distinct(&f.facts.replies).into_iter().next().flatten()
}

pub fn json(h: &Header, flows: &[Flow]) -> Value {
    let entries: Vec<Value> = flows
        .iter()
        .map(|f| {
            json!({
                "nic": f.facts.nic,
                "family": family_number(f.family),
                "flow": f.facts.kind.name(),
                "address": f.facts.addr.to_string(),
                "peer": f.facts.peer.to_string(),
                "request_nic": f.facts.request_nic,
                "reply_nic": reply_nic(f),
                "reply_nics": distinct(&f.facts.replies),
                "reply_gateway": f.reply_gateway.map(|g| g.to_string()),
                "symmetric": f.verdict.symmetric,
                "fix": f.verdict.fix,
            })
        })
        .collect();
    json!({
        "netns": h.netns,
        "mode": h.mode,
        "host_iface": h.host_iface,
        "host_rule_table": h.host_rule_table,
        "symmetric": flows.iter().all(|f| f.verdict.symmetric),
        "flows": entries,
    })
}

fn via(gw: Option<IpAddr>) -> String {
    gw.map(|g| format!(" via {g}")).unwrap_or_default()
}

pub fn text(h: &Header, flows: &[Flow]) -> String {
    let mut s = format!(
        "pod {}: mode {}{}, node hostRuleTable {}\n",
        h.netns,
        h.mode,
        h.host_iface
            .as_ref()
            .map(|i| format!(" (to the node through {i})"))
            .unwrap_or_default(),
        h.host_rule_table
    );
    let mut last: Option<(String, Family)> = None;
    for f in flows {
        let key = (f.facts.nic.clone(), f.family);
        if last.as_ref() != Some(&key) {
            s.push_str(&format!(
                "{} {} {}\n",
                f.facts.nic,
                f.family.name(),
                f.facts.addr
            ));
            last = Some(key);
        }
        let req = f.facts.request_nic.as_deref().unwrap_or("-");
        let replies: Vec<String> = distinct(&f.facts.replies)
            .into_iter()
            .map(|r| r.unwrap_or_else(|| "unreachable".into()))
            .collect();
        let reply = if replies.is_empty() {
            "-".to_string()
        } else {
            replies.join("+")
        };
        let path = match f.facts.kind.name() {
            "service" => format!(
                "request out {req}{}, reply in {reply}",
                via(f.reply_gateway)
            ),
            _ => format!(
                "request in {req}, reply out {reply}{}",
                via(f.reply_gateway)
            ),
        };
        let verdict = if f.verdict.symmetric {
            "symmetric"
        } else {
            "ASYMMETRIC"
        };
        s.push_str(&format!(
            "  {:<9}{:<28}{:<48}{verdict}\n",
            f.facts.kind.name(),
            f.facts.peer.to_string(),
            path
        ));
        if let Some(fix) = &f.verdict.fix {
            s.push_str(&format!("      fix: {fix}\n"));
        }
    }
    let bad = flows.iter().filter(|f| !f.verdict.symmetric).count();
    s.push_str(&match bad {
        0 => format!("all {} flows symmetric\n", flows.len()),
        n => format!("{n} of {} flows not symmetric\n", flows.len()),
    });
    s
}
