//! `explain`'s two outputs: text for people, one JSON object for scripts.

use std::borrow::Cow;
use std::net::IpAddr;

use cni::netlink::Family;
use serde_json::{json, Value};

use super::probe::Flow;
use super::verdict::{distinct, FlowKind};

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
                "pod_table": f.pod_table,
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

/// `s` safe to print to a terminal: interface names (and the fix text that
/// quotes them) are chosen by whoever controls the pod, and a name may hold
/// escape sequences that would rewrite the operator's screen. Control
/// characters (C0, DEL, C1), the invisible and bidirectional formatting
/// characters, and the backslash itself are written as escapes (`\x1b`,
/// `\u{202e}`, `\\`); everything else is kept.
pub fn shown(s: &str) -> Cow<'_, str> {
    let hidden = |c: char| {
        c == '\\'
            || c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}' | '\u{feff}' | '\u{ad}')
    };
    if !s.chars().any(hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if hidden(c) && (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if hidden(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn via(gw: Option<IpAddr>) -> String {
    gw.map(|g| format!(" via {g}")).unwrap_or_default()
}

/// "request in X, reply out Y via G" (a Service request goes out, its reply
/// comes in).
fn path(f: &Flow) -> String {
    let req = shown(f.facts.request_nic.as_deref().unwrap_or("-"));
    let replies: Vec<String> = distinct(&f.facts.replies)
        .into_iter()
        .map(|r| r.map_or_else(|| "unreachable".into(), |r| shown(&r).into_owned()))
        .collect();
    let reply = if replies.is_empty() {
        "-".to_string()
    } else {
        replies.join("+")
    };
    let via = match f.pod_table {
        Some(254) => format!("{} (table main)", via(f.reply_gateway)),
        Some(t) => format!("{} (table {t})", via(f.reply_gateway)),
        None => via(f.reply_gateway),
    };
    match f.facts.kind {
        FlowKind::Service => format!("request out {req}{via}, reply in {reply}"),
        _ => format!("request in {req}, reply out {reply}{via}"),
    }
}

pub fn text(h: &Header, flows: &[Flow]) -> String {
    let mut s = format!(
        "pod {}: mode {}{}, node hostRuleTable {}\n",
        shown(&h.netns),
        h.mode,
        h.host_iface
            .as_ref()
            .map(|i| format!(" (to the node through {})", shown(i)))
            .unwrap_or_default(),
        h.host_rule_table
    );
    let w_peer = flows
        .iter()
        .map(|f| f.facts.peer.to_string().len())
        .max()
        .unwrap_or(0);
    let w_path = flows.iter().map(|f| path(f).len()).max().unwrap_or(0);
    let mut last: Option<(String, Family)> = None;
    for f in flows {
        let key = (f.facts.nic.clone(), f.family);
        if last.as_ref() != Some(&key) {
            s.push_str(&format!(
                "{} {} {}\n",
                shown(&f.facts.nic),
                f.family.name(),
                f.facts.addr
            ));
            last = Some(key);
        }
        let path = path(f);
        let verdict = if f.verdict.symmetric {
            "symmetric"
        } else {
            "ASYMMETRIC"
        };
        s.push_str(&format!(
            "  {:<9}{:<w_peer$} {:<w_path$} {verdict}\n",
            f.facts.kind.name(),
            f.facts.peer.to_string(),
            path
        ));
        if let Some(fix) = &f.verdict.fix {
            s.push_str(&format!("      fix: {}\n", shown(fix)));
        }
    }
    let bad = flows.iter().filter(|f| !f.verdict.symmetric).count();
    s.push_str(&match bad {
        0 => format!("all {} flows symmetric\n", flows.len()),
        n => format!("{n} of {} flows not symmetric\n", flows.len()),
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::verdict::{decide, Facts};

    fn flow(replies: &[&str]) -> Flow {
        let facts = Facts {
            kind: FlowKind::Routed,
            nic: "net1".into(),
            addr: "fd00:7::1:1".parse().unwrap(),
            peer: "2001:db8::1".parse().unwrap(),
            host_iface: Some("veth0".into()),
            request_nic: Some("net1".into()),
            refused: None,
            replies: replies.iter().map(|r| Some(r.to_string())).collect(),
            nic_table: Some(101),
            from_rule: true,
            reply_mark: true,
            reply_table: 100,
            host_rule_table: 500,
            service_cidr: vec![],
        };
        Flow {
            family: Family::V6,
            verdict: decide(&facts),
            facts,
            reply_gateway: Some("fd00:7::1".parse().unwrap()),
            pod_table: Some(101),
        }
    }

    fn header() -> Header {
        Header {
            netns: "/run/netns/p".into(),
            mode: "underlay",
            host_iface: Some("veth0".into()),
            host_rule_table: 500,
        }
    }

    #[test]
    fn json_has_the_documented_fields() {
        let v = json(&header(), &[flow(&["net1"]), flow(&["net1", "eth0"])]);
        assert_eq!(v["symmetric"], false);
        let f = &v["flows"][0];
        assert_eq!(f["nic"], "net1");
        assert_eq!(f["family"], 6);
        assert_eq!(f["flow"], "routed");
        assert_eq!(f["request_nic"], "net1");
        assert_eq!(f["reply_nic"], "net1");
        assert_eq!(f["reply_gateway"], "fd00:7::1");
        assert_eq!(f["pod_table"], 101);
        assert_eq!(f["symmetric"], true);
        assert!(f["fix"].is_null());
        let spread = &v["flows"][1];
        assert_eq!(spread["reply_nics"], serde_json::json!(["net1", "eth0"]));
        assert!(spread["fix"].as_str().unwrap().contains("multipath"));
    }

    #[test]
    fn shown_escapes_what_a_terminal_would_act_on() {
        assert!(matches!(shown("net1"), Cow::Borrowed("net1")));
        assert_eq!(shown("ä-nic"), "ä-nic");
        assert_eq!(shown("\x1b]0;owned\x07"), "\\x1b]0;owned\\x07");
        assert_eq!(shown("a\rb\x7f"), "a\\x0db\\x7f");
        assert_eq!(shown("\u{9b}2J"), "\\u{9b}2J");
        assert_eq!(shown("eth\u{202e}0"), "eth\\u{202e}0");
        assert_eq!(shown("a\\x1b"), "a\\\\x1b");
    }

    /// Every pod-chosen name in the text (the NIC, the request and reply
    /// interfaces, the host interface, the fix that quotes them) is escaped.
    #[test]
    fn text_escapes_pod_chosen_names() {
        let evil = "n\x1b[2J\u{9b}1";
        let mut f = flow(&[evil, "eth0"]);
        f.facts.nic = evil.into();
        f.facts.request_nic = Some(evil.into());
        f.verdict = decide(&f.facts);
        assert!(f.verdict.fix.as_deref().is_some_and(|x| x.contains(evil)));
        let mut h = header();
        h.host_iface = Some(evil.into());
        let t = text(&h, &[f]);
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
        assert!(t.contains("n\\x1b[2J\\u{9b}1 IPv6"), "{t}");
        assert!(t.contains("through n\\x1b[2J"), "{t}");
    }

    #[test]
    fn text_names_each_nic_once_and_counts() {
        let t = text(&header(), &[flow(&["net1"]), flow(&["eth0"])]);
        assert_eq!(t.matches("net1 IPv6 fd00:7::1:1").count(), 1, "{t}");
        assert!(
            t.contains("reply out eth0 via fd00:7::1 (table 101)"),
            "{t}"
        );
        assert!(t.contains("ASYMMETRIC\n      fix: "), "{t}");
        assert!(t.ends_with("1 of 2 flows not symmetric\n"), "{t}");
    }
}
