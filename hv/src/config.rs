//! The kernel command line: the words after `--` (Hermit's convention), each `key=value` or a
//! bare flag. Parsed once at boot into a typed [`BootConfig`]; a bad word stops the boot with a
//! clear message rather than being ignored.
//!
//! | word                      | meaning                                         | default      |
//! |---------------------------|-------------------------------------------------|--------------|
//! | `port=N`                  | TCP port of the control endpoint                | `8080`       |
//! | `ip=dhcp`                 | get the address by DHCP                         | yes          |
//! | `ip=A.B.C.D/N`            | static address and prefix length               |              |
//! | `gw=A.B.C.D`              | default gateway with a static address           | none         |
//! | `exit_after_boot`         | power off once every CPU is up (for tests)      | off          |
//! | `crash_test`              | take the panic path once every CPU is up (tests)| off          |
//! | `vm=IMAGE`                | create and start a VM from a built-in image (repeatable, up to 16) | none |
//! | `tdx=on\|off\|auto`        | bring the TDX module up (`on` logs why not when the machine cannot) | `off` |

use core::fmt;

/// What the command line asked for (`tdx=on|off|auto`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TdxRequest {
    /// Do not touch TDX (the default: no TD guests exist yet).
    #[default]
    Off,
    /// Bring TDX up; if the machine cannot, log why and carry on without it.
    On,
    /// Bring TDX up when the machine supports it, quietly skip otherwise.
    Auto,
}

impl TdxRequest {
    /// Parses the value of `tdx=`; `None` for anything else (the caller logs and uses the
    /// default).
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "on" | "1" | "yes" => Some(TdxRequest::On),
            "off" | "0" | "no" => Some(TdxRequest::Off),
            "auto" => Some(TdxRequest::Auto),
            _ => None,
        }
    }
}

/// How the endpoint's interface gets its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpConfig {
    Dhcp,
    Static {
        addr: [u8; 4],
        prefix: u8,
        gateway: Option<[u8; 4]>,
    },
}

/// Everything the command line configures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootConfig {
    pub port: u16,
    pub ip: IpConfig,
    pub exit_after_boot: bool,
    pub crash_test: bool,
    /// Built-in images to start as VMs at boot, in order.
    pub vms: heapless::Vec<heapless::String<32>, 16>,
    /// Whether to bring the TDX module up (never fatal when the machine has no TDX).
    pub tdx: TdxRequest,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            port: 8080,
            ip: IpConfig::Dhcp,
            exit_after_boot: false,
            crash_test: false,
            vms: heapless::Vec::new(),
            tdx: TdxRequest::Off,
        }
    }
}

/// Why a command line was refused. Carries the offending word for the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError<'a> {
    UnknownKey(&'a str),
    BadValue { key: &'a str, value: &'a str },
    GatewayWithoutStaticIp,
}

impl fmt::Display for ConfigError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::UnknownKey(k) => write!(f, "unknown option `{k}`"),
            ConfigError::BadValue { key, value } => write!(f, "bad value `{value}` for `{key}`"),
            ConfigError::GatewayWithoutStaticIp => write!(f, "`gw=` needs a static `ip=A.B.C.D/N`"),
        }
    }
}

impl BootConfig {
    /// Parse the words after `--`.
    pub fn parse<'a>(
        words: impl IntoIterator<Item = &'a str>,
    ) -> Result<BootConfig, ConfigError<'a>> {
        let mut c = BootConfig::default();
        let mut gateway = None;
        for word in words {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word, None),
            };
            let bad = || ConfigError::BadValue {
                key,
                value: value.unwrap_or(""),
            };
            match (key, value) {
                ("port", Some(v)) => c.port = v.parse().ok().filter(|&p| p != 0).ok_or_else(bad)?,
                ("ip", Some("dhcp")) => c.ip = IpConfig::Dhcp,
                ("ip", Some(v)) => {
                    let (a, p) = v.split_once('/').ok_or_else(bad)?;
                    let prefix = p.parse().ok().filter(|&p| p <= 32).ok_or_else(bad)?;
                    c.ip = IpConfig::Static {
                        addr: parse_ipv4(a).ok_or_else(bad)?,
                        prefix,
                        gateway: None,
                    };
                }
                ("gw", Some(v)) => gateway = Some(parse_ipv4(v).ok_or_else(bad)?),
                ("tdx", Some(v)) => c.tdx = TdxRequest::parse(v).ok_or_else(bad)?,
                ("exit_after_boot", None) => c.exit_after_boot = true,
                ("crash_test", None) => c.crash_test = true,
                ("vm", Some(v)) => {
                    let name = heapless::String::try_from(v).map_err(|_| bad())?;
                    if v.is_empty() || c.vms.push(name).is_err() {
                        return Err(bad());
                    }
                }
                ("port" | "ip" | "gw" | "vm" | "tdx", None)
                | ("exit_after_boot" | "crash_test", Some(_)) => {
                    return Err(bad());
                }
                _ => return Err(ConfigError::UnknownKey(key)),
            }
        }
        if let Some(g) = gateway {
            match &mut c.ip {
                IpConfig::Static { gateway, .. } => *gateway = Some(g),
                IpConfig::Dhcp => return Err(ConfigError::GatewayWithoutStaticIp),
            }
        }
        Ok(c)
    }
}

/// Dotted-quad IPv4 address.
pub fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for b in &mut out {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        *b = p.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_default() {
        assert_eq!(BootConfig::parse([]), Ok(BootConfig::default()));
    }

    #[test]
    fn all_options() {
        let c = BootConfig::parse([
            "port=9000",
            "ip=10.0.2.15/24",
            "gw=10.0.2.2",
            "exit_after_boot",
            "crash_test",
        ])
        .unwrap();
        assert!(c.crash_test);
        assert_eq!(c.port, 9000);
        assert_eq!(
            c.ip,
            IpConfig::Static {
                addr: [10, 0, 2, 15],
                prefix: 24,
                gateway: Some([10, 0, 2, 2])
            }
        );
        assert!(c.exit_after_boot);
    }

    #[test]
    fn tdx_request() {
        assert_eq!(BootConfig::parse([]).unwrap().tdx, TdxRequest::Off);
        assert_eq!(BootConfig::parse(["tdx=on"]).unwrap().tdx, TdxRequest::On);
        assert_eq!(
            BootConfig::parse(["tdx=auto"]).unwrap().tdx,
            TdxRequest::Auto
        );
        assert!(BootConfig::parse(["tdx=maybe"]).is_err());
        assert!(BootConfig::parse(["tdx"]).is_err());
    }

    #[test]
    fn vms_in_order() {
        let c = BootConfig::parse(["vm=hello", "vm=spinner"]).unwrap();
        let names: [&str; 2] = [c.vms[0].as_str(), c.vms[1].as_str()];
        assert_eq!(names, ["hello", "spinner"]);
        assert!(BootConfig::parse(["vm="]).is_err());
        assert!(BootConfig::parse(["vm"]).is_err());
    }

    #[test]
    fn order_of_gw_and_ip_does_not_matter() {
        let a = BootConfig::parse(["gw=1.2.3.4", "ip=1.2.3.5/8"]).unwrap();
        let b = BootConfig::parse(["ip=1.2.3.5/8", "gw=1.2.3.4"]).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn errors_name_the_word() {
        assert_eq!(
            BootConfig::parse(["colour=red"]),
            Err(ConfigError::UnknownKey("colour"))
        );
        assert_eq!(
            BootConfig::parse(["port=0"]),
            Err(ConfigError::BadValue {
                key: "port",
                value: "0"
            })
        );
        assert_eq!(
            BootConfig::parse(["port=70000"]),
            Err(ConfigError::BadValue {
                key: "port",
                value: "70000"
            })
        );
        assert_eq!(
            BootConfig::parse(["port"]),
            Err(ConfigError::BadValue {
                key: "port",
                value: ""
            })
        );
        assert_eq!(
            BootConfig::parse(["ip=10.0.2.15"]),
            Err(ConfigError::BadValue {
                key: "ip",
                value: "10.0.2.15"
            })
        );
        assert_eq!(
            BootConfig::parse(["ip=10.0.2.15/33"]),
            Err(ConfigError::BadValue {
                key: "ip",
                value: "10.0.2.15/33"
            })
        );
        assert_eq!(
            BootConfig::parse(["gw=10.0.2.2"]),
            Err(ConfigError::GatewayWithoutStaticIp)
        );
        assert_eq!(
            BootConfig::parse(["exit_after_boot=1"]),
            Err(ConfigError::BadValue {
                key: "exit_after_boot",
                value: "1"
            })
        );
    }

    #[test]
    fn ipv4_parsing() {
        assert_eq!(parse_ipv4("255.0.0.1"), Some([255, 0, 0, 1]));
        for bad in [
            "256.0.0.1",
            "1.2.3",
            "1.2.3.4.5",
            "1..2.3",
            "a.b.c.d",
            "+1.2.3.4",
            "0001.2.3.4",
            "",
        ] {
            assert_eq!(parse_ipv4(bad), None, "{bad}");
        }
    }
}
