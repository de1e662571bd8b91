//! The coordinator's own config fields (Spiderpool-compatible names), merged
//! with the node defaults file and validated. Every invalid value is refused
//! with code 7 naming the field.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod duration;
mod fields;
mod ids;

pub use duration::{parse_duration, DurationError};
pub use ids::{is_reserved_table, Ids, MAIN_RULE_PRIORITY};

use cni::config::absolute_path;
use cni::Error;
use fields::{parse_link_local, Fields};
use ipnet::IpNet;
use serde_json::{Map, Value};

pub const DEFAULTS_FILE: &str = "/etc/cni/coordinator/defaults.json";
pub const DEFAULT_LOG_FILE: &str = "/var/log/coordinator/coordinator.log";
pub const DEFAULT_QUARANTINE_FILE: &str = "/var/lib/cni/coordinator/quarantine.json";
/// The IPv6 minimum link MTU.
const MIN_VETH_MTU: i64 = 1280;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Auto,
    Underlay,
    Overlay,
    Disabled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRoute {
    pub dst: IpNet,
    pub gw: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectOptions {
    pub retries: u32,
    pub interval: Duration,
    pub timeout: Duration,
}

impl Default for DetectOptions {
    fn default() -> Self {
        DetectOptions {
            retries: 3,
            interval: Duration::from_millis(10),
            timeout: Duration::from_millis(100),
        }
    }
}

impl DetectOptions {
    /// The whole probe window: `retries × interval + timeout` (at least one
    /// round), saturating: the config caps the values, but no input may
    /// make this panic.
    pub fn window(&self) -> Duration {
        self.interval
            .saturating_mul(self.retries.max(1))
            .saturating_add(self.timeout)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub mode: Mode,
    pub pod_default_cni_nic: String,
    pub tune_pod_routes: bool,
    /// `resultRoutes`: list the routes ADD installs in a 1.1.0 result (off
    /// by default: the reference main plugins' CHECK looks for a result's
    /// routes in `main`, whatever their table).
    pub result_routes: bool,
    /// None: the first NIC keeps the default route.
    pub pod_default_route_nic: Option<String>,
    /// Every table id and rule priority of ours (`hostRuleTable` among them).
    pub ids: Ids,
    /// None: leave the pod's rp_filter alone (-1).
    pub pod_rp_filter: Option<u8>,
    /// 0: leave.
    pub tx_queue_len: u32,
    /// None: the first NIC's MTU.
    pub veth_mtu: Option<u32>,
    pub veth_link_address: Option<IpNet>,
    pub pod_mac_prefix: Option<[u8; 2]>,
    pub service_cidr: Vec<IpNet>,
    pub overlay_pod_cidr: Vec<IpNet>,
    pub hijack_cidr: Vec<IpNet>,
    pub policy_routes: Vec<PolicyRoute>,
    pub detect_ip_conflict: bool,
    pub detect_gateway: bool,
    pub detect_options: DetectOptions,
    pub quarantine_file: PathBuf,
    pub quarantine_ttl: Duration,
    pub log: LogOptions,
}

/// `logOptions`: level, file (`None`: stderr) and the file's rotation.
#[derive(Debug, Clone, PartialEq)]
pub struct LogOptions {
    pub level: Option<String>,
    pub file: Option<PathBuf>,
    pub rotation: cni::logging::Rotation,
}

impl LogOptions {
    pub fn settings(&self) -> cni::logging::Settings<'_> {
        cni::logging::Settings {
            level: self.level.as_deref(),
            file: self.file.as_deref(),
            rotation: self.rotation,
        }
    }
}

impl Config {
    /// Every CIDR that must be reached through the host (veth0 in underlay,
    /// eth0 in overlay).
    pub fn hijack_all(&self) -> Vec<IpNet> {
        let mut v: Vec<IpNet> = Vec::new();
        for n in self
            .service_cidr
            .iter()
            .chain(&self.overlay_pod_cidr)
            .chain(&self.hijack_cidr)
        {
            if !v.contains(n) {
                v.push(*n);
            }
        }
        v
    }

    /// The NIC that keeps the default route in `main`.
    pub fn default_route_nic(&self) -> &str {
        self.pod_default_route_nic
            .as_deref()
            .unwrap_or(&self.pod_default_cni_nic)
    }

    /// Parse the plugin's stdin JSON, filling gaps from the node defaults file
    /// (path from the `defaultsFile` field, else [`DEFAULTS_FILE`]).
    pub fn from_raw(raw: &Value) -> cni::Result<Config> {
        let obj = raw
            .as_object()
            .ok_or_else(|| Error::Decode("network config is not an object".into()))?;
        let defaults_path = match obj.get("defaultsFile") {
            None => PathBuf::from(DEFAULTS_FILE),
            Some(Value::String(s)) if !s.is_empty() => absolute_path("defaultsFile", s)?,
            Some(_) => return Err(Error::config("defaultsFile", "must be a non-empty path")),
        };
        let defaults = load_defaults(&defaults_path)?;
        let mut merged = defaults;
        for (k, v) in obj {
            if !v.is_null() {
                merged.insert(k.clone(), v.clone());
            }
        }
        Config::from_map(&merged)
    }

    pub fn from_map(m: &Map<String, Value>) -> cni::Result<Config> {
        let f = Fields(m, "");
        let mode = match f.string("mode")?.as_deref() {
            None | Some("") | Some("auto") => Mode::Auto,
            Some("underlay") => Mode::Underlay,
            Some("overlay") => Mode::Overlay,
            Some("disabled") | Some("disable") => Mode::Disabled,
            Some(other) => {
                return Err(Error::config(
                    "mode",
                    format!("{other:?} is not one of auto, underlay, overlay, disabled"),
                ))
            }
        };
        let pod_default_cni_nic = f
            .ifname("podDefaultCniNic")?
            .unwrap_or_else(|| "eth0".into());
        let pod_default_route_nic = f.ifname("podDefaultRouteNic")?;
        let ids = Ids::parse(&f)?;
        let pod_rp_filter = match f.int("podRPFilter")? {
            None => Some(0),
            Some(-1) => None,
            Some(v @ 0..=2) => Some(v as u8),
            Some(v) => {
                return Err(Error::config(
                    "podRPFilter",
                    format!("{v} is not -1, 0, 1 or 2"),
                ))
            }
        };
        let tx_queue_len = match f.int("txQueueLen")? {
            None => 0,
            Some(v) if (0..=u32::MAX as i64).contains(&v) => v as u32,
            Some(v) => return Err(Error::config("txQueueLen", format!("{v} is out of range"))),
        };
        // The kernel removes a link's IPv6 configuration below 1280 (RFC 8200's
        // minimum), and the veth's IPv6 sysctls with it, so a smaller MTU
        // would pass here and fail every ADD. Refused whatever the families.
        let veth_mtu = match f.int("vethMTU")? {
            None | Some(0) => None,
            Some(v) if (MIN_VETH_MTU..=65535).contains(&v) => Some(v as u32),
            Some(v) => {
                return Err(Error::config(
                    "vethMTU",
                    format!("{v} is not between {MIN_VETH_MTU} and 65535"),
                ))
            }
        };
        let veth_link_address = match f.string("vethLinkAddress")? {
            None => None,
            Some(s) if s.is_empty() => None,
            Some(s) => Some(parse_link_local(&s)?),
        };
        let pod_mac_prefix = match f.string("podMACPrefix")? {
            None => None,
            Some(s) if s.is_empty() => None,
            Some(s) => Some(crate::macprefix::parse_prefix(&s)?),
        };
        let policy_routes = f.policy_routes("policyRoutes")?;
        let detect_options = f.detect_options("detectOptions")?;
        let quarantine_file = match f.string("quarantineFile")?.filter(|s| !s.is_empty()) {
            Some(s) => absolute_path("quarantineFile", &s)?,
            None => PathBuf::from(DEFAULT_QUARANTINE_FILE),
        };
        let quarantine_ttl = f
            .duration("quarantineTTL")?
            .unwrap_or(Duration::from_secs(600));
        let log = f.log_options("logOptions")?;
        Ok(Config {
            mode,
            pod_default_cni_nic,
            tune_pod_routes: f.bool("tunePodRoutes")?.unwrap_or(true),
            result_routes: f.bool("resultRoutes")?.unwrap_or(false),
            pod_default_route_nic,
            ids,
            pod_rp_filter,
            tx_queue_len,
            veth_mtu,
            veth_link_address,
            pod_mac_prefix,
            service_cidr: f.cidrs("serviceCIDR")?,
            overlay_pod_cidr: f.cidrs("overlayPodCIDR")?,
            hijack_cidr: f.cidrs("hijackCIDR")?,
            policy_routes,
            detect_ip_conflict: f.bool("detectIPConflict")?.unwrap_or(false),
            detect_gateway: f.bool("detectGateway")?.unwrap_or(false),
            detect_options,
            quarantine_file,
            quarantine_ttl,
            log,
        })
    }
}

fn load_defaults(path: &Path) -> cni::Result<Map<String, Value>> {
    // Bounded like stdin, and a FIFO or device in its place fails at once.
    let text = match cni::fsutil::read_optional(path, cni::config::MAX_STDIN as u64) {
        Ok(Some(t)) => t,
        Ok(None) => return Ok(Map::new()),
        Err(e) => return Err(Error::config("defaultsFile", e)),
    };
    match serde_json::from_slice::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::config(
            "defaultsFile",
            format!("{} is not a JSON object", path.display()),
        )),
        Err(e) => Err(Error::config(
            "defaultsFile",
            format!("{} is not valid JSON: {e}", path.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> cni::Result<Config> {
        let mut v = v;
        v["defaultsFile"] = json!("/nonexistent/defaults.json");
        Config::from_raw(&v)
    }

    #[test]
    fn defaults() {
        let c = parse(json!({})).unwrap();
        assert_eq!(c.mode, Mode::Auto);
        assert_eq!(c.pod_default_cni_nic, "eth0");
        assert_eq!(
            c.ids,
            Ids {
                reply_table: 100,
                first_nic_table: 101,
                reply_priority: 900,
                from_priority: 1000,
                host_table: 500,
                host_priority: 1000,
            }
        );
        assert_eq!(c.pod_rp_filter, Some(0));
        assert!(c.tune_pod_routes);
        assert_eq!(c.detect_options.window(), Duration::from_millis(130));
        assert_eq!(c.default_route_nic(), "eth0");
        assert_eq!(c.log.file.as_deref(), Some(Path::new(DEFAULT_LOG_FILE)));
    }

    #[test]
    fn full_spiderpool_config() {
        let c = parse(json!({
            "mode": "disable", "podDefaultCniNic": "eth0", "podDefaultRouteNic": "net1",
            "hostRuleTable": 600, "podRPFilter": -1, "txQueueLen": 2000, "vethMTU": 1400,
            "vethLinkAddress": "169.254.200.1", "podMACPrefix": "0a:1b",
            "serviceCIDR": ["10.233.0.0/18", "fd00:233::/110"], "overlayPodCIDR": ["10.244.0.1/16"],
            "hijackCIDR": ["10.233.0.0/18", "169.254.25.10/32"],
            "policyRoutes": [{"dst": "192.168.0.0/16", "gw": "10.6.0.1"}],
            "detectIPConflict": true, "detectGateway": true,
            "detectOptions": {"retries": 5, "interval": "20ms", "timeout": 200},
            "logOptions": {"logLevel": "debug", "logFilePath": "-", "logMaxSize": 5,
                           "logMaxAge": 0, "logMaxCount": 3},
            "multusNicPrefix": "net"
        }))
        .unwrap();
        // Every field the config sets, as set.
        let nets = |v: &[IpNet]| v.iter().map(IpNet::to_string).collect::<Vec<_>>();
        assert_eq!(c.mode, Mode::Disabled);
        assert_eq!(c.pod_default_cni_nic, "eth0");
        assert_eq!(c.pod_default_route_nic.as_deref(), Some("net1"));
        assert_eq!(c.default_route_nic(), "net1");
        assert_eq!(
            c.ids,
            Ids {
                host_table: 600,
                ..Ids::default()
            }
        );
        assert_eq!(c.pod_rp_filter, None);
        assert_eq!(c.tx_queue_len, 2000);
        assert_eq!(c.veth_mtu, Some(1400));
        assert_eq!(
            c.veth_link_address,
            Some("169.254.200.1/32".parse().unwrap())
        );
        assert_eq!(c.pod_mac_prefix, Some([0x0a, 0x1b]));
        assert_eq!(nets(&c.service_cidr), ["10.233.0.0/18", "fd00:233::/110"]);
        assert_eq!(nets(&c.overlay_pod_cidr), ["10.244.0.0/16"]);
        assert_eq!(nets(&c.hijack_cidr), ["10.233.0.0/18", "169.254.25.10/32"]);
        assert_eq!(c.hijack_all().len(), 4);
        assert_eq!(
            c.policy_routes,
            [PolicyRoute {
                dst: "192.168.0.0/16".parse().unwrap(),
                gw: "10.6.0.1".parse().unwrap()
            }]
        );
        assert!(c.detect_ip_conflict && c.detect_gateway);
        assert_eq!(
            c.detect_options,
            DetectOptions {
                retries: 5,
                interval: Duration::from_millis(20),
                timeout: Duration::from_millis(200)
            }
        );
        assert_eq!(c.detect_options.window(), Duration::from_millis(300));
        // Left at their defaults: not in the config.
        assert!(c.tune_pod_routes);
        assert_eq!(c.quarantine_file, Path::new(DEFAULT_QUARANTINE_FILE));
        assert_eq!(c.quarantine_ttl, Duration::from_secs(600));
        assert_eq!(c.log.file, None);
        assert_eq!(c.log.level.as_deref(), Some("debug"));
        assert_eq!(
            c.log.rotation,
            cni::logging::Rotation {
                max_bytes: 5 << 20,
                max_age: None,
                max_backups: Some(3),
            }
        );
    }

    #[test]
    fn moved_ids() {
        let c = parse(json!({
            "podReplyTable": 2000, "podRuleTableFirst": 2001, "podReplyRulePriority": 2900,
            "podRulePriority": 3000, "hostRuleTable": 600, "hostRulePriority": 2500
        }))
        .unwrap();
        assert_eq!(
            c.ids,
            Ids {
                reply_table: 2000,
                first_nic_table: 2001,
                reply_priority: 2900,
                from_priority: 3000,
                host_table: 600,
                host_priority: 2500,
            }
        );
        // The edges: the last table id, the last priority before main's, a
        // reply table right below the NIC tables, the host's ids anywhere
        // (the node's netns is not the pod's).
        let c = parse(json!({
            "podReplyTable": 4_294_967_294u64, "podRuleTableFirst": 4_294_967_295u64,
            "podReplyRulePriority": 1, "podRulePriority": 32765,
            "hostRuleTable": 101, "hostRulePriority": 32765
        }))
        .unwrap();
        assert_eq!(c.ids.first_nic_table, u32::MAX);
        assert_eq!((c.ids.reply_priority, c.ids.from_priority), (1, 32765));
        assert_eq!((c.ids.host_table, c.ids.host_priority), (101, 32765));
        // Pod tables of ours: the reply table and the NIC range, never a
        // reserved one.
        let ids = Ids::default();
        for (t, ours) in [
            (100, true),
            (101, true),
            (5000, true),
            (99, false),
            (253, false),
        ] {
            assert_eq!(ids.is_pod_table(t), ours, "{t}");
        }
        // A conflict between two fields explains both.
        let e = parse(json!({"podRuleTableFirst": 100})).unwrap_err();
        assert!(
            e.to_string()
                .contains("podReplyTable 100 must be below podRuleTableFirst 100"),
            "{e}"
        );
    }

    #[test]
    fn log_rotation_defaults_are_spiderpools() {
        for conf in [json!({}), json!({"logOptions": {"logMaxSize": 0}})] {
            let r = parse(conf).unwrap().log.rotation;
            assert_eq!(r.max_bytes, 100 << 20);
            assert_eq!(r.max_age, Some(Duration::from_secs(30 * 86_400)));
            assert_eq!(r.max_backups, Some(10));
        }
    }

    #[test]
    fn each_invalid_value_names_its_field() {
        let cases = [
            (json!({"mode": "fancy"}), "mode"),
            (json!({"mode": 3}), "mode"),
            (
                json!({"podDefaultCniNic": "way-too-long-name0"}),
                "podDefaultCniNic",
            ),
            (json!({"podDefaultRouteNic": "a/b"}), "podDefaultRouteNic"),
            (json!({"tunePodRoutes": "yes"}), "tunePodRoutes"),
            (json!({"resultRoutes": 1}), "resultRoutes"),
            (json!({"hostRuleTable": 254}), "hostRuleTable"),
            (json!({"hostRuleTable": -5}), "hostRuleTable"),
            (json!({"hostRuleTable": "500"}), "hostRuleTable"),
            (json!({"hostRuleTable": 0}), "hostRuleTable"),
            (json!({"hostRuleTable": 4_294_967_296u64}), "hostRuleTable"),
            (json!({"podReplyTable": 0}), "podReplyTable"),
            (json!({"podReplyTable": 253}), "podReplyTable"),
            (json!({"podReplyTable": 255}), "podReplyTable"),
            (json!({"podReplyTable": -1}), "podReplyTable"),
            (json!({"podReplyTable": 100.5}), "podReplyTable"),
            (json!({"podRuleTableFirst": 254}), "podRuleTableFirst"),
            (json!({"podRuleTableFirst": 0}), "podRuleTableFirst"),
            // NIC tables start above the reply table; the field set is named.
            (json!({"podReplyTable": 101}), "podReplyTable"),
            (json!({"podReplyTable": 2000}), "podReplyTable"),
            (json!({"podRuleTableFirst": 100}), "podRuleTableFirst"),
            (json!({"podRuleTableFirst": 50}), "podRuleTableFirst"),
            (
                json!({"podReplyTable": 300, "podRuleTableFirst": 300}),
                "podReplyTable",
            ),
            (json!({"podRulePriority": 0}), "podRulePriority"),
            (json!({"podRulePriority": 32766}), "podRulePriority"),
            (json!({"podRulePriority": 40000}), "podRulePriority"),
            (json!({"podRulePriority": "1000"}), "podRulePriority"),
            (json!({"podReplyRulePriority": 0}), "podReplyRulePriority"),
            (
                json!({"podReplyRulePriority": 32767}),
                "podReplyRulePriority",
            ),
            // The reply-mark rule comes before the `from` rules.
            (
                json!({"podReplyRulePriority": 1000}),
                "podReplyRulePriority",
            ),
            (json!({"podRulePriority": 900}), "podRulePriority"),
            (json!({"podRulePriority": 500}), "podRulePriority"),
            (json!({"hostRulePriority": 0}), "hostRulePriority"),
            (json!({"hostRulePriority": 32766}), "hostRulePriority"),
            (json!({"hostRulePriority": -3}), "hostRulePriority"),
            (json!({"podRPFilter": 3}), "podRPFilter"),
            (json!({"txQueueLen": -1}), "txQueueLen"),
            (json!({"vethMTU": 10}), "vethMTU"),
            (json!({"vethLinkAddress": "10.0.0.1"}), "vethLinkAddress"),
            (json!({"vethLinkAddress": "nope"}), "vethLinkAddress"),
            (json!({"podMACPrefix": "0b:00"}), "podMACPrefix"),
            (json!({"podMACPrefix": "zz:00"}), "podMACPrefix"),
            (json!({"serviceCIDR": "10.0.0.0/8"}), "serviceCIDR"),
            (json!({"serviceCIDR": ["10.0.0.0/33"]}), "serviceCIDR[0]"),
            (json!({"overlayPodCIDR": [1]}), "overlayPodCIDR[0]"),
            (json!({"hijackCIDR": ["x"]}), "hijackCIDR[0]"),
            (
                json!({"policyRoutes": [{"dst": "10.0.0.0/8"}]}),
                "policyRoutes[0].gw",
            ),
            (
                json!({"policyRoutes": [{"dst": "10.0.0.0/8", "gw": "fd00::1"}]}),
                "policyRoutes[0]",
            ),
            (json!({"detectIPConflict": 1}), "detectIPConflict"),
            (json!({"detectGateway": "true"}), "detectGateway"),
            (
                json!({"detectOptions": {"retries": 0}}),
                "detectOptions.retries",
            ),
            (json!({"detectOptions": {"interval": "fast"}}), "interval"),
            (
                json!({"detectOptions": {"timeout": "1h"}}),
                "detectOptions.timeout",
            ),
            (
                json!({"logOptions": {"logLevel": "loud"}}),
                "logOptions.logLevel",
            ),
            (
                json!({"logOptions": {"logMaxSize": -1}}),
                "logOptions.logMaxSize",
            ),
            (
                json!({"logOptions": {"logMaxSize": 10_241}}),
                "logOptions.logMaxSize",
            ),
            (
                json!({"logOptions": {"logMaxAge": "7d"}}),
                "logOptions.logMaxAge",
            ),
            (
                json!({"logOptions": {"logMaxCount": -3}}),
                "logOptions.logMaxCount",
            ),
            (json!({"quarantineTTL": "soon"}), "quarantineTTL"),
            (
                json!({"quarantineTTL": "20000000000000000000s"}),
                "quarantineTTL",
            ),
            (
                json!({"detectOptions": {"interval": "20000000000000000000s"}}),
                "detectOptions.interval",
            ),
            (
                json!({"detectOptions": {"timeout": "9999999999999999999999h"}}),
                "detectOptions.timeout",
            ),
            (json!({"vethMTU": 1279}), "vethMTU"),
            (json!({"vethMTU": 68}), "vethMTU"),
            (json!({"defaultsFile": 5}), "defaultsFile"),
            (json!({"defaultsFile": "defaults.json"}), "defaultsFile"),
            (json!({"quarantineFile": "q.json"}), "quarantineFile"),
            (
                json!({"logOptions": {"logFile": "log/c.log"}}),
                "logOptions.logFile",
            ),
            (
                json!({"logOptions": {"logFilePath": "c.log"}}),
                "logOptions.logFile",
            ),
        ];
        for (v, field) in cases {
            let mut v = v;
            if v.get("defaultsFile").is_none() {
                v["defaultsFile"] = json!("/nonexistent/defaults.json");
            }
            let e = Config::from_raw(&v).unwrap_err();
            assert_eq!(e.code(), 7, "{v}: {e}");
            assert!(
                e.to_string().contains(field),
                "{v}: {e} should name {field}"
            );
        }
    }

    #[test]
    fn node_defaults_fill_gaps_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("defaults.json");
        std::fs::write(
            &p,
            r#"{"serviceCIDR": ["10.233.0.0/18"], "hostRuleTable": 700, "mode": "overlay"}"#,
        )
        .unwrap();
        let c = Config::from_raw(&json!({"defaultsFile": p, "mode": "underlay"})).unwrap();
        assert_eq!(c.mode, Mode::Underlay);
        assert_eq!(c.ids.host_table, 700);
        assert_eq!(c.service_cidr.len(), 1);
        std::fs::write(&p, "{oops").unwrap();
        let e = Config::from_raw(&json!({"defaultsFile": p})).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("defaultsFile"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_duration("10"), Err(DurationError::Syntax));
        assert_eq!(parse_duration("ms"), Err(DurationError::Syntax));
        assert_eq!(parse_duration("1e400s"), Err(DurationError::Syntax));
        // Past u64::MAX seconds: used to panic in Duration::from_secs_f64.
        for huge in [
            "20000000000000000000s",
            "3000000000000000000000h",
            "99999999999999999999999m",
        ] {
            assert_eq!(parse_duration(huge), Err(DurationError::Range), "{huge}");
        }
    }
}
