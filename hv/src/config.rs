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
//! | `bench_floor`             | answer CPUID leaf 0x400000FF with zeros before any exit handler: the exit-cost floor `scripts/bench` measures | off |
//! | `vm=IMAGE`                | create and start a VM from a built-in image (repeatable, up to 16) | none |
//! | `vm_pmu=SPEC`             | the vPMU of `vm=` VMs: `none`, `intel:V[:GP[:FIXED[:WIDTH]]]`, `amd:KIND[:GP]` | `none` |
//! | `vpmu_backing=none\|hardware` | back guest PMU counters with the host's hardware counters where the host PMU can carry the guest's model (`hv::vpmu::backing`; only unit-tested, so off by default) | `none` |
//! | `tdx=on\|off\|auto`        | bring the TDX module up (`on` logs why not when the machine cannot) | `off` |
//! | `api_token=TOKEN`         | require `Authorization: Bearer TOKEN` on every API request (1 to 128 of `A-Z a-z 0-9 - . _ ~ + /`, then `=`s) | none: no auth |
//! | `http_max_headers=N`      | most header fields in a request, 1..=64 (more: 431) | `32`     |
//! | `http_max_head_bytes=N`   | most bytes in a request head, 256..=65536 (more: 431) | `8192` |
//! | `http_max_body_bytes=N`   | most bytes in a JSON request body, 0..=1048576 (more: 413) | `65536` |
//! | `http_max_upload_bytes=N` | most bytes in an image upload, 0..=67108864 (more: 413) | `16777216` |
//! | `http_max_conns=N`        | most open API connections, 1..=1024 (more: 503 with `Retry-After`, then closed) | `64` |
//! | `http_idle_ms=N`          | close an API connection idle this long, 100..=3600000 ms (408) | `30000` |
//!
//! The `http_*` values are `None` in [`BootConfig`] when not given; the `net` crate's
//! `Settings::from_boot_config` applies its documented defaults (the ones above).

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
    /// Answer CPUID leaf 0x400000FF with zeros straight from the exit loop, skipping the exit
    /// handler: the floor of the exit cost (`scripts/bench`, the `bench` guest).
    pub bench_floor: bool,
    /// Built-in images to start as VMs at boot, in order.
    pub vms: heapless::Vec<heapless::String<32>, 16>,
    /// Whether to bring the TDX module up (never fatal when the machine has no TDX).
    pub tdx: TdxRequest,
    /// The vPMU of the VMs started with `vm=`.
    pub vm_pmu: crate::vpmu::PmuConfig,
    /// Whether guest PMU counters may be backed by the host's hardware counters.
    pub vpmu_backing: crate::vpmu::BackingRequest,
    /// The API's bearer token; `None`: no authentication.
    pub api_token: Option<ApiToken>,
    /// `http_*` limits; `None` where not given.
    pub http: HttpConfig,
}

/// Longest API token.
pub const API_TOKEN_MAX: usize = 128;

/// A bearer token (RFC 6750 §2.1 `b64token`). Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(heapless::String<API_TOKEN_MAX>);

impl ApiToken {
    /// A token if `s` is 1 to [`API_TOKEN_MAX`] of `A-Z a-z 0-9 - . _ ~ + /` followed by
    /// any number of `=`.
    pub fn new(s: &str) -> Option<ApiToken> {
        let body = s.trim_end_matches('=');
        let ok = !body.is_empty()
            && s.len() <= API_TOKEN_MAX
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
        if !ok {
            return None;
        }
        heapless::String::try_from(s).ok().map(ApiToken)
    }

    /// The token.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

/// The control endpoint's limits from the command line; `None`: the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpConfig {
    pub max_headers: Option<u32>,
    pub max_head_bytes: Option<u32>,
    pub max_body_bytes: Option<u32>,
    pub max_upload_bytes: Option<u32>,
    pub max_conns: Option<u32>,
    pub idle_ms: Option<u32>,
}

/// The allowed ranges of the `http_*` keys, in the order of [`HttpConfig`]'s fields.
pub const HTTP_RANGES: [(&str, u32, u32); 6] = [
    ("http_max_headers", 1, 64),
    ("http_max_head_bytes", 256, 65536),
    ("http_max_body_bytes", 0, 1 << 20),
    ("http_max_upload_bytes", 0, 64 << 20),
    ("http_max_conns", 1, 1024),
    ("http_idle_ms", 100, 3_600_000),
];

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            port: 8080,
            ip: IpConfig::Dhcp,
            exit_after_boot: false,
            crash_test: false,
            bench_floor: false,
            vms: heapless::Vec::new(),
            tdx: TdxRequest::Off,
            vm_pmu: crate::vpmu::PmuConfig::Off,
            vpmu_backing: crate::vpmu::BackingRequest::None,
            api_token: None,
            http: HttpConfig::default(),
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
                ("vm_pmu", Some(v)) => {
                    c.vm_pmu = crate::vpmu::PmuConfig::parse_compact(v).ok_or_else(bad)?
                }
                ("vpmu_backing", Some(v)) => {
                    c.vpmu_backing = crate::vpmu::BackingRequest::parse(v).ok_or_else(bad)?
                }
                ("exit_after_boot", None) => c.exit_after_boot = true,
                ("crash_test", None) => c.crash_test = true,
                ("bench_floor", None) => c.bench_floor = true,
                ("api_token", Some(v)) => c.api_token = Some(ApiToken::new(v).ok_or_else(bad)?),
                (k, Some(v)) if k.starts_with("http_") => {
                    let Some(i) = HTTP_RANGES.iter().position(|r| r.0 == k) else {
                        return Err(ConfigError::UnknownKey(key));
                    };
                    let (_, min, max) = HTTP_RANGES[i];
                    let n: u32 = v
                        .parse()
                        .ok()
                        .filter(|n| (min..=max).contains(n) && !v.starts_with('+'))
                        .ok_or_else(bad)?;
                    let h = &mut c.http;
                    *[
                        &mut h.max_headers,
                        &mut h.max_head_bytes,
                        &mut h.max_body_bytes,
                        &mut h.max_upload_bytes,
                        &mut h.max_conns,
                        &mut h.idle_ms,
                    ][i] = Some(n);
                }
                ("vm", Some(v)) => {
                    let name = heapless::String::try_from(v).map_err(|_| bad())?;
                    if v.is_empty() || c.vms.push(name).is_err() {
                        return Err(bad());
                    }
                }
                (k, None) if HTTP_RANGES.iter().any(|r| r.0 == k) => return Err(bad()),
                (
                    "port" | "ip" | "gw" | "vm" | "vm_pmu" | "vpmu_backing" | "tdx" | "api_token",
                    None,
                )
                | ("exit_after_boot" | "crash_test" | "bench_floor", Some(_)) => {
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
    fn vm_pmu_compact_form() {
        use crate::vpmu::{AmdKind, PmuConfig};
        let pmu = |w: &'static str| BootConfig::parse([w]).map(|c| c.vm_pmu);
        assert_eq!(pmu("vm_pmu=none"), Ok(PmuConfig::Off));
        assert_eq!(pmu("vm_pmu=intel:2"), Ok(PmuConfig::intel(2)));
        assert_eq!(
            pmu("vm_pmu=intel:5:8:4:40"),
            Ok(PmuConfig::intel_with(5, Some(8), Some(4), Some(40), None))
        );
        assert_eq!(
            pmu("vm_pmu=amd:core_ext"),
            Ok(PmuConfig::amd(AmdKind::CoreExt))
        );
        assert_eq!(
            pmu("vm_pmu=amd:perfmon_v2:3"),
            Ok(PmuConfig::amd_with(AmdKind::PerfMonV2, Some(3)))
        );
        for bad in [
            "vm_pmu=intel",
            "vm_pmu=intel:9",
            "vm_pmu=intel:2:4:3:48:1",
            "vm_pmu=amd:turbo",
            "vm_pmu=amd:legacy:6",
            "vm_pmu=via",
            "vm_pmu=intel:x",
        ] {
            assert!(pmu(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn vpmu_backing_word() {
        use crate::vpmu::BackingRequest;
        let b = |w: &'static str| BootConfig::parse([w]).map(|c| c.vpmu_backing);
        assert_eq!(
            BootConfig::parse([]).unwrap().vpmu_backing,
            BackingRequest::None
        );
        assert_eq!(b("vpmu_backing=hardware"), Ok(BackingRequest::Hardware));
        assert_eq!(b("vpmu_backing=none"), Ok(BackingRequest::None));
        for bad in ["vpmu_backing=hw", "vpmu_backing=", "vpmu_backing"] {
            assert_eq!(
                b(bad),
                Err(ConfigError::BadValue {
                    key: "vpmu_backing",
                    value: bad.split_once('=').map_or("", |(_, v)| v),
                }),
                "{bad}"
            );
        }
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
    fn api_token() {
        let c = BootConfig::parse(["api_token=s3cr3t-Tok.en_~+/=="]).unwrap();
        assert_eq!(
            c.api_token.as_ref().unwrap().as_str(),
            "s3cr3t-Tok.en_~+/=="
        );
        assert_eq!(format!("{:?}", c.api_token), "Some(ApiToken(..))");
        assert_eq!(BootConfig::parse([]).unwrap().api_token, None);
        let long = format!("api_token={}", "a".repeat(API_TOKEN_MAX + 1));
        for bad in [
            "api_token=",
            "api_token==",
            "api_token=a b",
            "api_token=a=b",
            "api_token=\u{e9}",
            &long,
        ] {
            let key = "api_token";
            assert!(
                matches!(BootConfig::parse([bad]), Err(ConfigError::BadValue { key: k, .. }) if k == key),
                "{bad}"
            );
        }
        assert!(BootConfig::parse(["api_token"]).is_err());
        let max = format!("api_token={}", "a".repeat(API_TOKEN_MAX));
        assert!(BootConfig::parse([max.as_str()]).is_ok());
    }

    #[test]
    fn http_limits() {
        let c = BootConfig::parse([
            "http_max_headers=10",
            "http_max_head_bytes=4096",
            "http_max_body_bytes=0",
            "http_max_upload_bytes=1048576",
            "http_max_conns=4",
            "http_idle_ms=5000",
        ])
        .unwrap();
        assert_eq!(
            c.http,
            HttpConfig {
                max_headers: Some(10),
                max_head_bytes: Some(4096),
                max_body_bytes: Some(0),
                max_upload_bytes: Some(1 << 20),
                max_conns: Some(4),
                idle_ms: Some(5000),
            }
        );
        assert_eq!(BootConfig::parse([]).unwrap().http, HttpConfig::default());
        for (key, min, max) in HTTP_RANGES {
            let ok = [format!("{key}={min}"), format!("{key}={max}")];
            for w in &ok {
                assert!(BootConfig::parse([w.as_str()]).is_ok(), "{w}");
            }
            let bad = [
                format!("{key}={}", u64::from(max) + 1),
                format!("{key}=-1"),
                format!("{key}=+1"),
                format!("{key}=x"),
                format!("{key}="),
                format!("{key}=99999999999999999999"),
            ];
            for w in &bad {
                assert_eq!(
                    BootConfig::parse([w.as_str()]),
                    Err(ConfigError::BadValue {
                        key,
                        value: w.split_once('=').unwrap().1
                    }),
                    "{w}"
                );
            }
            if min > 0 {
                let w = format!("{key}={}", min - 1);
                assert!(BootConfig::parse([w.as_str()]).is_err(), "{w}");
            }
            assert!(BootConfig::parse([key]).is_err());
        }
        assert_eq!(
            BootConfig::parse(["http_colour=1"]),
            Err(ConfigError::UnknownKey("http_colour"))
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
