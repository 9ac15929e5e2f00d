//! Where inference runs: the `model.device` setting and what it resolves to here.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// The `model.device` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA device 0 when CUDA is available, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("model.device `{s}`: expected auto, cpu, cuda or cuda:N")),
        }
    }
}

/// A device that exists on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct ResolvedDevice(pub tch::Device);

impl fmt::Display for ResolvedDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            tch::Device::Cuda(n) => write!(f, "cuda:{n}"),
            _ => f.write_str("cpu"),
        }
    }
}

impl From<ResolvedDevice> for String {
    fn from(d: ResolvedDevice) -> String {
        d.to_string()
    }
}

impl DeviceSpec {
    /// Resolves against the CUDA devices libtorch sees. Asking for a GPU that is not
    /// there is an error rather than a silent fall-back to a CPU a hundred times slower.
    pub fn resolve(self) -> Result<ResolvedDevice, String> {
        let gpus = if tch::Cuda::is_available() { tch::Cuda::device_count() as usize } else { 0 };
        match self {
            DeviceSpec::Auto if gpus > 0 => Ok(ResolvedDevice(tch::Device::Cuda(0))),
            DeviceSpec::Auto | DeviceSpec::Cpu => Ok(ResolvedDevice(tch::Device::Cpu)),
            DeviceSpec::Cuda(n) if n < gpus => Ok(ResolvedDevice(tch::Device::Cuda(n))),
            DeviceSpec::Cuda(n) => {
                Err(format!("model.device is cuda:{n}, but libtorch sees {gpus} CUDA device(s); use `auto` or `cpu`"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_names_bad_ones() {
        assert_eq!("auto".parse(), Ok(DeviceSpec::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        assert!("gpu".parse::<DeviceSpec>().unwrap_err().contains("gpu"));
    }

    #[test]
    fn cpu_always_resolves_and_missing_gpu_is_an_error() {
        assert_eq!(DeviceSpec::Cpu.resolve().unwrap().to_string(), "cpu");
        if !tch::Cuda::is_available() {
            assert_eq!(DeviceSpec::Auto.resolve().unwrap().to_string(), "cpu");
            assert!(DeviceSpec::Cuda(0).resolve().is_err());
        }
    }
}
