//! The routing table ids and rule priorities the coordinator uses, in one
//! place: config fields (defaults = the ids of every release before them),
//! validated together. Nothing else in the coordinator names an id, so a
//! moved id moves everywhere: ADD, CHECK, DEL and its sweep, `explain`.

use cni::Error;

use super::fields::Fields;

/// Table ids the kernel reserves: unspecified, `default`, `main`, `local`.
pub const RESERVED_TABLES: [u32; 4] = [0, 253, 254, 255];
/// Priority of `main`'s rule: ours must come before it (and `default`'s).
pub const MAIN_RULE_PRIORITY: u32 = 32766;

/// Every table id and rule priority of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    /// `podReplyTable`: the pod table of the reply path (underlay: default
    /// back through `veth0` for marked connections; overlay: the first
    /// NIC's own table).
    pub reply_table: u32,
    /// `podRuleTableFirst`: NIC tables are the lowest free ids from here up.
    pub first_nic_table: u32,
    /// `podReplyRulePriority`: the pod's `fwmark` rule.
    pub reply_priority: u32,
    /// `podRulePriority`: the pod's `from <NIC address>` rules.
    pub from_priority: u32,
    /// `hostRuleTable`: the node table of the routes to pod addresses.
    pub host_table: u32,
    /// `hostRulePriority`: the node's `from all lookup <hostRuleTable>` rule.
    pub host_priority: u32,
}

impl Default for Ids {
    fn default() -> Self {
        Ids {
            reply_table: 100,
            first_nic_table: 101,
            reply_priority: 900,
            from_priority: 1000,
            host_table: 500,
            host_priority: 1000,
        }
    }
}

pub fn is_reserved_table(t: u32) -> bool {
    RESERVED_TABLES.contains(&t)
}

impl Ids {
    /// The table of an overlay pod's first NIC once a later NIC is attached.
    /// An overlay pod has no `veth0` and no reply mark, so the reply table's
    /// id is free there; Spiderpool's layout gives it to `eth0`, and pods
    /// attached by earlier releases have it so.
    pub fn overlay_first_nic_table(&self) -> u32 {
        self.reply_table
    }

    /// Is `t` a table of ours in the pod: the reply table, or one NIC
    /// tables are taken from.
    pub fn is_pod_table(&self, t: u32) -> bool {
        t == self.reply_table || (t >= self.first_nic_table && !is_reserved_table(t))
    }

    pub(super) fn parse(f: &Fields) -> cni::Result<Ids> {
        let d = Ids::default();
        let reply_table = table(f, "podReplyTable")?;
        let first_nic_table = table(f, "podRuleTableFirst")?;
        let reply_priority = priority(f, "podReplyRulePriority")?;
        let from_priority = priority(f, "podRulePriority")?;
        let ids = Ids {
            reply_table: reply_table.unwrap_or(d.reply_table),
            first_nic_table: first_nic_table.unwrap_or(d.first_nic_table),
            reply_priority: reply_priority.unwrap_or(d.reply_priority),
            from_priority: from_priority.unwrap_or(d.from_priority),
            host_table: table(f, "hostRuleTable")?.unwrap_or(d.host_table),
            host_priority: priority(f, "hostRulePriority")?.unwrap_or(d.host_priority),
        };
        // NIC tables are the free ids from podRuleTableFirst up: the reply
        // table below them keeps the two apart whatever number of NICs.
        if ids.reply_table >= ids.first_nic_table {
            let field = blame(
                reply_table,
                first_nic_table,
                "podReplyTable",
                "podRuleTableFirst",
            );
            return Err(Error::config(
                field,
                format!(
                    "podReplyTable {} must be below podRuleTableFirst {}: NIC tables are \
                     the free ids from podRuleTableFirst up",
                    ids.reply_table, ids.first_nic_table
                ),
            ));
        }
        // A marked reply from the first NIC's address must find the reply
        // table before that NIC's own `from` rule sends it out of the NIC;
        // at one priority the order would be the order of insertion.
        if ids.reply_priority >= ids.from_priority {
            let field = blame(
                reply_priority,
                from_priority,
                "podReplyRulePriority",
                "podRulePriority",
            );
            return Err(Error::config(
                field,
                format!(
                    "podReplyRulePriority {} must be below podRulePriority {}: replies of \
                     connections that came in through the node must find their table before \
                     the NICs' `from` rules",
                    ids.reply_priority, ids.from_priority
                ),
            ));
        }
        Ok(ids)
    }
}

/// Which of two related fields a conflict between them names: the one the
/// config set (the other is a default), the first when both or neither.
fn blame<'a>(a: Option<u32>, b: Option<u32>, a_name: &'a str, b_name: &'a str) -> &'a str {
    match (a, b) {
        (None, Some(_)) => b_name,
        _ => a_name,
    }
}

fn table(f: &Fields, k: &str) -> cni::Result<Option<u32>> {
    match f.int(k)? {
        None => Ok(None),
        Some(t) if t <= 0 || t > u32::MAX as i64 => {
            Err(Error::config(k, format!("{t} is not a table id")))
        }
        Some(t) if is_reserved_table(t as u32) => Err(Error::config(
            k,
            format!("{t} is a reserved table (default/main/local)"),
        )),
        Some(t) => Ok(Some(t as u32)),
    }
}

fn priority(f: &Fields, k: &str) -> cni::Result<Option<u32>> {
    match f.int(k)? {
        None => Ok(None),
        Some(p) if (1..MAIN_RULE_PRIORITY as i64).contains(&p) => Ok(Some(p as u32)),
        Some(p) => Err(Error::config(
            k,
            format!(
                "{p} is not between 1 and {}: 0 is the `local` table's rule, {} `main`'s",
                MAIN_RULE_PRIORITY - 1,
                MAIN_RULE_PRIORITY
            ),
        )),
    }
}
