//! The CNI verbs of the coordinator.

use cni::plugin::{Call, Plugin};
use cni::result::CniResult;
use cni::Result;

use crate::config::{Config, Mode};

pub struct Coordinator;

fn load(call: &Call) -> Result<Config> {
    let cfg = Config::from_raw(&call.raw)?;
    cni::logging::init(&cfg.log.settings());
    Ok(cfg)
}

impl Plugin for Coordinator {
    fn add(&self, call: &Call) -> Result<CniResult> {
        crate::add::add(call, &load(call)?)
    }

    fn del(&self, call: &Call) -> Result<()> {
        // A config that no longer validates must not block pod deletion:
        // clean up with the defaults (the host veth name needs no config).
        let cfg = match load(call) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("DEL with an invalid config ({e}); cleaning up with defaults");
                let mut c = Config::from_map(&Default::default())?;
                c.mode = Mode::Auto;
                c
            }
        };
        crate::del::del(call, &cfg)
    }

    fn check(&self, call: &Call) -> Result<()> {
        crate::check::check(call, &load(call)?)
    }

    fn gc(&self, call: &Call) -> Result<()> {
        // Like DEL, GC must not be blocked by a config that no longer
        // validates: it needs only the network's name.
        if let Ok(cfg) = Config::from_raw(&call.raw) {
            cni::logging::init(&cfg.log.settings());
        }
        crate::del::gc(call)
    }
}
