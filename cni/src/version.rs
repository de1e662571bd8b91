//! CNI spec versions this project speaks.

use crate::error::{Error, Result};

/// Every version we accept in a config and can print a result in.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest supported version (used when the input names none we can trust).
pub const LATEST: &str = "1.1.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V030,
    V031,
    V040,
    V100,
    V110,
}

impl Version {
    pub fn parse(s: &str) -> Result<Version> {
        Ok(match s {
            "0.3.0" => Version::V030,
            "0.3.1" => Version::V031,
            "0.4.0" => Version::V040,
            "1.0.0" => Version::V100,
            "1.1.0" => Version::V110,
            "" => {
                return Err(Error::IncompatibleVersion(format!(
                    "config has no cniVersion; supported: {}",
                    SUPPORTED.join(", ")
                )))
            }
            other => {
                return Err(Error::IncompatibleVersion(format!(
                    "incompatible CNI version {other:?}; supported: {}",
                    SUPPORTED.join(", ")
                )))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V030 => "0.3.0",
            Version::V031 => "0.3.1",
            Version::V040 => "0.4.0",
            Version::V100 => "1.0.0",
            Version::V110 => "1.1.0",
        }
    }

    /// Results before 1.0.0 carry `"version": "4"|"6"` on each IP.
    pub fn ip_has_version_field(self) -> bool {
        self < Version::V100
    }

    /// CHECK appeared in 0.4.0.
    pub fn has_check(self) -> bool {
        self >= Version::V040
    }

    /// STATUS and GC appeared in 1.1.0.
    pub fn has_status_gc(self) -> bool {
        self >= Version::V110
    }

    /// Route `mtu`/`advmss`/`priority`/`table`/`scope` and interface
    /// `mtu`/`socketPath`/`pciID` appeared in 1.1.0.
    pub fn has_1_1_fields(self) -> bool {
        self >= Version::V110
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        for s in SUPPORTED {
            assert_eq!(Version::parse(s).unwrap().as_str(), *s);
        }
        assert_eq!(Version::parse("0.2.0").unwrap_err().code(), 1);
        assert_eq!(Version::parse("").unwrap_err().code(), 1);
        assert!(Version::V040.has_check() && !Version::V031.has_check());
        assert!(Version::V110.has_status_gc() && !Version::V100.has_status_gc());
    }
}
