//! The CNI verbs of the coordinator.

use cni::error::code;
use cni::plugin::{Call, Plugin};
use cni::result::CniResult;
use cni::{Error, Result};

use crate::config::{Config, Mode};

pub struct Coordinator;

fn load(call: &Call) -> Result<Config> {
    let cfg = Config::from_raw(&call.raw)?;
    cni::logging::init(cfg.log_level.as_deref(), cfg.log_file.as_deref());
    Ok(cfg)
}

impl Plugin for Coordinator {
    fn add(&self, call: &Call) -> Result<CniResult> {
        let cfg = load(call)?;
        let prev = call.prev_result()?.ok_or_else(|| {
            Error::config(
                "prevResult",
                "is required: coordinator must be chained after a main CNI plugin",
            )
        })?;
        match cfg.mode {
            Mode::Disabled => Ok(prev),
            _ => Err(Error::plugin(
                code::NOT_IMPLEMENTED,
                format!("mode {:?} is not implemented yet", cfg.mode),
            )),
        }
    }

    fn del(&self, call: &Call) -> Result<()> {
        let _cfg = load(call)?;
        Ok(())
    }

    fn check(&self, call: &Call) -> Result<()> {
        let cfg = load(call)?;
        if call.prev_result()?.is_none() {
            return Err(Error::config("prevResult", "is required for CHECK"));
        }
        let _ = cfg;
        Ok(())
    }
}
