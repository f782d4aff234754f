//! Request bodies: JSON documents into hv's model types, with errors that name the field.
//!
//! Why a hand-written visitor over serde-json-core instead of `#[derive(Deserialize)]`: a
//! client that sends `{"memory_mib": 4096}` should read `memory_mib: expected an integer from
//! 1 to 1024`, not "invalid type". serde-json-core's errors carry no position and no field, so
//! the visitor records which field it is reading (`Diag`) and the error is built from that
//! and from hv's own validation ([`hv::vm::VmConfigError::expected`],
//! [`hv::vpmu::ConfigError`]). The JSON grammar itself is still serde-json-core's.
//!
//! Rules, on purpose strict (a typo must not silently become a default):
//!
//! * The body is exactly one JSON object; anything else is `invalid_body`.
//! * Unknown fields are refused (`unknown field "memry_mib"`), and so are repeated ones.
//! * Optional fields may be left out; only `cpu` may be `null` (= run on any CPU).
//! * Values are checked by hv: [`hv::vm::VmConfig::new`] / `set_cmdline` / `validate` and
//!   [`hv::vpmu::PmuConfig::validate`].
//!
//! `POST /v1/vms`:
//!
//! | field       | type                | default  |
//! |-------------|---------------------|----------|
//! | `name`      | string, required    |          |
//! | `image`     | string, required    |          |
//! | `memory_mib`| integer 1..=1024    | 16       |
//! | `cpu`       | integer 0..=63/null | null     |
//! | `cmdline`   | string              | `""`     |
//! | `on_crash`  | `"stop"`/`"reset"`  | `"stop"` |
//! | `local_apic`| boolean             | true, false for the PIC-era built-ins ([`hv::vm::default_local_apic`]) |
//! | `strict_mmio`| boolean            | false: an access outside RAM stops the VM (`npt_violation`) |
//! | `pmu`       | PMU object          | none     |
//! | `start`     | boolean             | false    |
//!
//! PMU object (`PUT /v1/vms/{id}/pmu` and the `pmu` field), defaults from
//! [`hv::vpmu::PmuConfig::intel_with`] and [`hv::vpmu::PmuConfig::amd_with`]:
//!
//! * `{"vendor":"none"}`
//! * `{"vendor":"intel","version":2,"gp_counters":4,"fixed_counters":3,"width":48,
//!   "full_width_writes":true}`: `version` defaults to 2; `gp_counters` 4; `fixed_counters`
//!   0 for version 1 and 3 otherwise; `width` 48; `full_width_writes` false for version 1 and
//!   true from version 2 (hv's defaults).
//! * `{"vendor":"amd","kind":"perfmon_v2","gp_counters":6}`: `kind` defaults to `legacy`;
//!   `gp_counters` to 4 for legacy and 6 for the others.

use core::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};

use hv::vm::{MEMORY_MIB_MAX, OnCrash, VmConfig, VmConfigError};
use hv::vpmu::{AmdKind, ConfigError, PmuConfig};

/// Guest memory when `memory_mib` is left out.
pub const DEFAULT_MEMORY_MIB: u32 = 16;

/// Longest string value accepted (the longest field, `cmdline`, is 256).
const TEXT_MAX: usize = 256;

/// Why a body was refused: 400 `invalid_body`, message `"{field}: {problem}"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BodyError {
    /// Not one JSON object (bad syntax, empty, an array, trailing bytes).
    Syntax,
    /// A required field is missing.
    Missing(&'static str),
    /// A field this body does not have; the name as sent (cut to [`Key::MAX`] bytes), and the
    /// object it was in (`""` or `"pmu."`).
    Unknown {
        /// The object's prefix.
        prefix: &'static str,
        /// The name as sent.
        key: Key,
    },
    /// A field sent twice.
    Duplicate(&'static str),
    /// `image` is a string but names no image (not even a valid name: `""`, `"../x"`): the
    /// server answers it as the backend's 400 `unknown_image`, like `"nope"`.
    UnknownImage,
    /// A field with a wrong type or value; `expected` says what would do.
    Invalid {
        /// The field.
        field: &'static str,
        /// A valid value, in words.
        expected: &'static str,
    },
    /// A PMU field that the chosen vendor does not have.
    NotForVendor {
        /// The field.
        field: &'static str,
        /// The vendor sent.
        vendor: &'static str,
    },
    /// A PMU configuration hv refused ([`PmuConfig::validate`]).
    Pmu {
        /// `""` or `"pmu."`.
        prefix: &'static str,
        /// What hv said.
        error: ConfigError,
    },
}

impl BodyError {
    /// The field the error is about (`""` for [`BodyError::Syntax`]).
    pub fn field(&self) -> &'static str {
        match *self {
            BodyError::Syntax => "",
            BodyError::UnknownImage => "image",
            BodyError::Missing(f) | BodyError::Duplicate(f) => f,
            BodyError::Invalid { field, .. } | BodyError::NotForVendor { field, .. } => field,
            BodyError::Unknown { prefix, .. } => prefix,
            BodyError::Pmu { error, .. } => error.field(),
        }
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Syntax => f.write_str("body must be one JSON object"),
            BodyError::Missing(field) => write!(f, "{field}: required"),
            BodyError::Unknown { prefix, key } => write!(f, "{prefix}{key}: unknown field"),
            BodyError::Duplicate(field) => write!(f, "{field}: given twice"),
            BodyError::UnknownImage => f.write_str("image: no built-in image has that name"),
            BodyError::Invalid { field, expected } => write!(f, "{field}: expected {expected}"),
            BodyError::NotForVendor { field, vendor } => {
                write!(f, "{field}: not a field of a {vendor} PMU")
            }
            BodyError::Pmu { prefix, error } => write!(f, "{prefix}{error}"),
        }
    }
}

/// An object key as sent, cut to [`Key::MAX`] bytes at a character boundary (for messages).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    bytes: [u8; Key::MAX],
    len: u8,
    cut: bool,
}

impl Key {
    /// Most bytes kept.
    pub const MAX: usize = 32;

    fn new(s: &str) -> Key {
        let mut end = s.len().min(Key::MAX);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0; Key::MAX];
        bytes[..end].copy_from_slice(&s.as_bytes()[..end]);
        Key {
            bytes,
            len: end as u8,
            cut: end < s.len(),
        }
    }

    /// The kept text.
    pub fn as_str(&self) -> &str {
        // Cut at a character boundary of a `str`.
        core::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "\"{}{}\"",
            self.as_str(),
            if self.cut { "..." } else { "" }
        )
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A parsed `POST /v1/vms` body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateVm {
    /// The validated configuration.
    pub config: VmConfig,
    /// The validated PMU ([`PmuConfig::Off`] when left out).
    pub pmu: PmuConfig,
    /// Whether to start the VM right away.
    pub start: bool,
}

/// Parses and validates a `POST /v1/vms` body.
pub fn parse_create(body: &[u8]) -> Result<CreateVm, BodyError> {
    parse_with(body, |d, diag| d.deserialize_map(CreateVisitor { diag }))?
}

/// Parses and validates a PMU object (`PUT /v1/vms/{id}/pmu`).
pub fn parse_pmu(body: &[u8]) -> Result<PmuConfig, BodyError> {
    parse_with(body, |d, diag| {
        d.deserialize_map(PmuVisitor {
            diag,
            prefix: Prefix::Top,
        })
    })?
}

/// What the visitors learned about an error that serde-json-core will only report as a bare
/// error value.
#[derive(Debug, Default)]
struct Diag {
    /// An error the visitor decided itself.
    error: Option<BodyError>,
    /// The field whose value is being read, and what it expects.
    reading: Option<(&'static str, &'static str)>,
}

fn parse_with<T>(
    body: &[u8],
    f: impl FnOnce(
        &mut serde_json_core::de::Deserializer<'_, '_>,
        &mut Diag,
    ) -> Result<T, serde_json_core::de::Error>,
) -> Result<T, BodyError> {
    let mut unescape = [0u8; TEXT_MAX * 2];
    let mut diag = Diag::default();
    let mut de = serde_json_core::de::Deserializer::new(body, Some(&mut unescape));
    let result = f(&mut de, &mut diag).and_then(|v| de.end().map(|_| v));
    use serde_json_core::de::Error as E;
    result.map_err(|e| match (diag.error, diag.reading) {
        (Some(e), _) => e,
        // A body cut short is a syntax error, whatever field it was cut in.
        (None, _)
            if matches!(
                e,
                E::EofWhileParsingList
                    | E::EofWhileParsingObject
                    | E::EofWhileParsingString
                    | E::EofWhileParsingNumber
                    | E::EofWhileParsingValue
            ) =>
        {
            BodyError::Syntax
        }
        (None, Some((field, expected))) => BodyError::Invalid { field, expected },
        (None, None) => BodyError::Syntax,
    })
}

/// Reads an object key.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(KeySeed)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(Key::new(v))
    }
}

/// A string value of at most [`TEXT_MAX`] bytes.
struct Text(heapless::String<TEXT_MAX>);

impl<'de> de::Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                heapless::String::try_from(v)
                    .map(Text)
                    .map_err(|_| E::custom("too long"))
            }
        }
        d.deserialize_str(V)
    }
}

/// Reads one field's value, remembering which field it is for the error.
fn value<'de, A: MapAccess<'de>, T: de::Deserialize<'de>>(
    map: &mut A,
    diag: &mut Diag,
    seen: &mut u32,
    bit: u32,
    field: &'static str,
    expected: &'static str,
    numeric: bool,
) -> Result<T, A::Error> {
    if *seen & bit != 0 {
        return fail(diag, BodyError::Duplicate(field));
    }
    *seen |= bit;
    diag.reading = Some((field, expected));
    let v = map.next_value()?;
    // A number stays blamed until the next key is read: serde-json-core takes the `1` of `1.5`
    // as a whole integer and stumbles only on the `.` after it. Other values end cleanly.
    if !numeric {
        diag.reading = None;
    }
    Ok(v)
}

fn fail<T, E: de::Error>(diag: &mut Diag, e: BodyError) -> Result<T, E> {
    diag.error = Some(e);
    Err(E::custom(""))
}

fn invalid<E: de::Error, T>(diag: &mut Diag, e: VmConfigError) -> Result<T, E> {
    let field = match e {
        VmConfigError::Name => "name",
        VmConfigError::Image => "image",
        VmConfigError::MemoryMib => "memory_mib",
        VmConfigError::Cpu => "cpu",
        VmConfigError::Cmdline => "cmdline",
    };
    fail(
        diag,
        BodyError::Invalid {
            field,
            expected: e.expected(),
        },
    )
}

const ON_CRASH_EXPECTED: &str = "\"stop\" or \"reset\"";
const BOOL_EXPECTED: &str = "true or false";

struct CreateVisitor<'d> {
    diag: &'d mut Diag,
}

impl<'de> Visitor<'de> for CreateVisitor<'_> {
    type Value = Result<CreateVm, BodyError>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a VM object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let diag = self.diag;
        let mut seen = 0u32;
        let mut name: Option<Text> = None;
        let mut image: Option<Text> = None;
        let mut memory_mib: Option<u64> = None;
        let mut cpu: Option<Option<u64>> = None;
        let mut cmdline: Option<Text> = None;
        let mut on_crash: Option<Text> = None;
        let mut pmu = None;
        let mut start = None;
        let mut local_apic: Option<bool> = None;
        let mut strict_mmio: Option<bool> = None;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let d = &mut *diag;
            d.reading = None;
            match key.as_str() {
                "name" => {
                    name = Some(value(
                        &mut map,
                        d,
                        &mut seen,
                        1,
                        "name",
                        VmConfigError::Name.expected(),
                        false,
                    )?)
                }
                "image" => {
                    image = Some(value(
                        &mut map,
                        d,
                        &mut seen,
                        2,
                        "image",
                        VmConfigError::Image.expected(),
                        false,
                    )?)
                }
                "memory_mib" => {
                    memory_mib = Some(value(
                        &mut map,
                        d,
                        &mut seen,
                        4,
                        "memory_mib",
                        VmConfigError::MemoryMib.expected(),
                        true,
                    )?)
                }
                "cpu" => {
                    cpu = Some(value(
                        &mut map,
                        d,
                        &mut seen,
                        8,
                        "cpu",
                        "a CPU number from 0 to 63, or null",
                        true,
                    )?)
                }
                "cmdline" => {
                    cmdline = Some(value(
                        &mut map,
                        d,
                        &mut seen,
                        16,
                        "cmdline",
                        VmConfigError::Cmdline.expected(),
                        false,
                    )?)
                }
                "on_crash" => {
                    on_crash = Some(value(
                        &mut map,
                        d,
                        &mut seen,
                        32,
                        "on_crash",
                        ON_CRASH_EXPECTED,
                        false,
                    )?)
                }
                "pmu" => {
                    if seen & 64 != 0 {
                        return fail(d, BodyError::Duplicate("pmu"));
                    }
                    seen |= 64;
                    d.reading = Some(("pmu", PMU_EXPECTED));
                    let p = map.next_value_seed(PmuSeed(d))?;
                    pmu = Some(p);
                }
                "start" => {
                    start = Some(value(
                        &mut map,
                        d,
                        &mut seen,
                        128,
                        "start",
                        BOOL_EXPECTED,
                        false,
                    )?)
                }
                "local_apic" => {
                    local_apic = Some(value(
                        &mut map,
                        d,
                        &mut seen,
                        256,
                        "local_apic",
                        BOOL_EXPECTED,
                        false,
                    )?)
                }
                "strict_mmio" => {
                    strict_mmio = Some(value(
                        &mut map,
                        d,
                        &mut seen,
                        512,
                        "strict_mmio",
                        BOOL_EXPECTED,
                        false,
                    )?)
                }
                _ => return fail(d, BodyError::Unknown { prefix: "", key }),
            }
        }
        diag.reading = None;

        let Some(name) = name else {
            return fail(diag, BodyError::Missing("name"));
        };
        let Some(image) = image else {
            return fail(diag, BodyError::Missing("image"));
        };
        let memory_mib = match memory_mib {
            None => DEFAULT_MEMORY_MIB,
            // Anything above u32 is above MEMORY_MIB_MAX too.
            Some(m) => u32::try_from(m).unwrap_or(MEMORY_MIB_MAX + 1),
        };
        let mut config = match VmConfig::new(&name.0, &image.0, memory_mib) {
            Ok(c) => c,
            Err(VmConfigError::Image) => return fail(diag, BodyError::UnknownImage),
            Err(e) => return invalid(diag, e),
        };
        if let Some(Some(c)) = cpu {
            // Above u32: certainly above the CPU limit too.
            config.cpu = Some(u32::try_from(c).unwrap_or(u32::MAX));
        }
        if let Some(c) = cmdline {
            if let Err(e) = config.set_cmdline(&c.0) {
                return invalid(diag, e);
            }
        }
        if let Some(oc) = on_crash {
            match OnCrash::parse(&oc.0) {
                Some(oc) => config.on_crash = oc,
                None => {
                    return fail(
                        diag,
                        BodyError::Invalid {
                            field: "on_crash",
                            expected: ON_CRASH_EXPECTED,
                        },
                    );
                }
            }
        }
        if let Some(l) = local_apic {
            config.local_apic = l;
        }
        if let Some(s) = strict_mmio {
            config.strict_mmio = s;
        }
        if let Err(e) = config.validate() {
            return invalid(diag, e);
        }
        let pmu = match pmu {
            None => PmuConfig::Off,
            Some(Ok(p)) => p,
            Some(Err(e)) => return fail(diag, e),
        };
        Ok(Ok(CreateVm {
            config,
            pmu,
            start: start.unwrap_or(false),
        }))
    }
}

const PMU_EXPECTED: &str = "an object with \"vendor\": \"none\", \"intel\" or \"amd\"";

/// Which object the PMU fields are in, for their names in messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prefix {
    /// The body is the PMU object.
    Top,
    /// The `pmu` field of a VM object.
    Nested,
}

impl Prefix {
    const fn as_str(self) -> &'static str {
        match self {
            Prefix::Top => "",
            Prefix::Nested => "pmu.",
        }
    }

    /// The field's full name (static, for `BodyError`).
    const fn field(self, f: PmuField) -> &'static str {
        match (self, f) {
            (Prefix::Top, PmuField::Vendor) => "vendor",
            (Prefix::Top, PmuField::Version) => "version",
            (Prefix::Top, PmuField::Gp) => "gp_counters",
            (Prefix::Top, PmuField::Fixed) => "fixed_counters",
            (Prefix::Top, PmuField::Width) => "width",
            (Prefix::Top, PmuField::FullWidth) => "full_width_writes",
            (Prefix::Top, PmuField::Kind) => "kind",
            (Prefix::Nested, PmuField::Vendor) => "pmu.vendor",
            (Prefix::Nested, PmuField::Version) => "pmu.version",
            (Prefix::Nested, PmuField::Gp) => "pmu.gp_counters",
            (Prefix::Nested, PmuField::Fixed) => "pmu.fixed_counters",
            (Prefix::Nested, PmuField::Width) => "pmu.width",
            (Prefix::Nested, PmuField::FullWidth) => "pmu.full_width_writes",
            (Prefix::Nested, PmuField::Kind) => "pmu.kind",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PmuField {
    Vendor,
    Version,
    Gp,
    Fixed,
    Width,
    FullWidth,
    Kind,
}

impl PmuField {
    const ALL: [PmuField; 7] = [
        PmuField::Vendor,
        PmuField::Version,
        PmuField::Gp,
        PmuField::Fixed,
        PmuField::Width,
        PmuField::FullWidth,
        PmuField::Kind,
    ];

    const fn bit(self) -> u32 {
        1 << self as u32
    }

    /// What a valid value is, in words (the ranges are hv's: `INTEL_VERSIONS`...).
    const fn expected(self) -> &'static str {
        match self {
            PmuField::Vendor => "\"none\", \"intel\" or \"amd\"",
            PmuField::Version => "an integer from 1 to 5",
            PmuField::Gp => {
                "an integer: 1 to 8 (intel), 4 (amd legacy), 6 (amd core_ext), 1 to 6 (amd perfmon_v2)"
            }
            PmuField::Fixed => {
                "an integer: 0 (version 1), 0 to 3 (versions 2-4), 0 to 4 (version 5)"
            }
            PmuField::Width => "an integer from 32 to 48",
            PmuField::FullWidth => BOOL_EXPECTED,
            PmuField::Kind => "\"legacy\", \"core_ext\" or \"perfmon_v2\"",
        }
    }

    fn from_key(k: &str) -> Option<PmuField> {
        Some(match k {
            "vendor" => PmuField::Vendor,
            "version" => PmuField::Version,
            "gp_counters" => PmuField::Gp,
            "fixed_counters" => PmuField::Fixed,
            "width" => PmuField::Width,
            "full_width_writes" => PmuField::FullWidth,
            "kind" => PmuField::Kind,
            _ => return None,
        })
    }
}

struct PmuSeed<'d>(&'d mut Diag);

impl<'de> DeserializeSeed<'de> for PmuSeed<'_> {
    type Value = Result<PmuConfig, BodyError>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(PmuVisitor {
            diag: self.0,
            prefix: Prefix::Nested,
        })
    }
}

struct PmuVisitor<'d> {
    diag: &'d mut Diag,
    prefix: Prefix,
}

impl<'de> Visitor<'de> for PmuVisitor<'_> {
    type Value = Result<PmuConfig, BodyError>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a PMU object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (diag, prefix) = (self.diag, self.prefix);
        let mut seen = 0u32;
        let mut vendor: Option<Text> = None;
        let mut kind: Option<Text> = None;
        let mut nums: [Option<u8>; 3] = [None; 3]; // version, gp, fixed
        let mut width: Option<u8> = None;
        let mut full_width: Option<bool> = None;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let d = &mut *diag;
            d.reading = None;
            let Some(f) = PmuField::from_key(key.as_str()) else {
                return fail(
                    d,
                    BodyError::Unknown {
                        prefix: prefix.as_str(),
                        key,
                    },
                );
            };
            let (name, exp) = (prefix.field(f), f.expected());
            match f {
                PmuField::Vendor => {
                    vendor = Some(value(&mut map, d, &mut seen, f.bit(), name, exp, false)?)
                }
                PmuField::Kind => {
                    kind = Some(value(&mut map, d, &mut seen, f.bit(), name, exp, false)?)
                }
                PmuField::Version => {
                    nums[0] = Some(value(&mut map, d, &mut seen, f.bit(), name, exp, true)?)
                }
                PmuField::Gp => {
                    nums[1] = Some(value(&mut map, d, &mut seen, f.bit(), name, exp, true)?)
                }
                PmuField::Fixed => {
                    nums[2] = Some(value(&mut map, d, &mut seen, f.bit(), name, exp, true)?)
                }
                PmuField::Width => {
                    width = Some(value(&mut map, d, &mut seen, f.bit(), name, exp, true)?)
                }
                PmuField::FullWidth => {
                    full_width = Some(value(&mut map, d, &mut seen, f.bit(), name, exp, false)?)
                }
            }
        }
        diag.reading = None;

        let vendor_field = prefix.field(PmuField::Vendor);
        let Some(vendor) = vendor else {
            return fail(diag, BodyError::Missing(vendor_field));
        };
        let (vendor, allowed) = match vendor.0.as_str() {
            "none" => ("none", PmuField::Vendor.bit()),
            "intel" => ("intel", seen & !PmuField::Kind.bit()),
            "amd" => (
                "amd",
                PmuField::Vendor.bit() | PmuField::Kind.bit() | PmuField::Gp.bit(),
            ),
            _ => {
                return fail(
                    diag,
                    BodyError::Invalid {
                        field: vendor_field,
                        expected: PmuField::Vendor.expected(),
                    },
                );
            }
        };
        if let Some(f) = PmuField::ALL
            .into_iter()
            .find(|f| seen & f.bit() != 0 && allowed & f.bit() == 0)
        {
            return fail(
                diag,
                BodyError::NotForVendor {
                    field: prefix.field(f),
                    vendor,
                },
            );
        }
        let config = match vendor {
            "none" => PmuConfig::Off,
            "intel" => {
                PmuConfig::intel_with(nums[0].unwrap_or(2), nums[1], nums[2], width, full_width)
            }
            _ => {
                let kind = match kind.as_ref().map(|k| AmdKind::parse(&k.0)) {
                    None => AmdKind::Legacy,
                    Some(Ok(k)) => k,
                    Some(Err(error)) => {
                        return fail(
                            diag,
                            BodyError::Pmu {
                                prefix: prefix.as_str(),
                                error,
                            },
                        );
                    }
                };
                PmuConfig::amd_with(kind, nums[1])
            }
        };
        Ok(config.validate().map_err(|error| BodyError::Pmu {
            prefix: prefix.as_str(),
            error,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn create_err(body: &str) -> std::string::String {
        parse_create(body.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn minimal_and_full() {
        let c = parse_create(br#"{"name":"a","image":"hello"}"#).unwrap();
        assert_eq!(c.config, VmConfig::new("a", "hello", 16).unwrap());
        assert_eq!((c.pmu, c.start), (PmuConfig::Off, false));

        let c = parse_create(
            br#" {"name":"web-1","image":"uploaded","memory_mib":64,"cpu":3,
                  "cmdline":"x=1 \"q\"","on_crash":"reset","start":true,
                  "pmu":{"vendor":"amd","kind":"perfmon_v2","gp_counters":5}} "#,
        )
        .unwrap();
        assert_eq!(c.config.memory_mib, 64);
        assert_eq!(c.config.cpu, Some(3));
        assert_eq!(c.config.cmdline.as_str(), "x=1 \"q\"");
        assert_eq!(c.config.on_crash, OnCrash::Reset);
        assert!(c.start);
        assert_eq!(
            c.pmu,
            PmuConfig::Amd {
                kind: AmdKind::PerfMonV2,
                gp_counters: 5
            }
        );
        let c = parse_create(br#"{"name":"a","image":"hello","cpu":null}"#).unwrap();
        assert_eq!(c.config.cpu, None);
        assert!(!c.config.strict_mmio);
        let c = parse_create(br#"{"name":"a","image":"wild","strict_mmio":true}"#).unwrap();
        assert!(c.config.strict_mmio);
        assert!(parse_create(br#"{"name":"a","image":"wild","strict_mmio":1}"#).is_err());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"image":"hello"}"#, "name: required"),
            (r#"{"name":"a"}"#, "image: required"),
            (r#"{"name":"A","image":"hello"}"#, "name: expected"),
            (r#"{"name":"a","image":"../x"}"#, "image: no built-in image"),
            (
                r#"{"name":"a","image":"hello","memory_mib":0}"#,
                "memory_mib: expected an integer from 1 to 1024",
            ),
            (
                r#"{"name":"a","image":"hello","memory_mib":4096}"#,
                "memory_mib: expected",
            ),
            (
                r#"{"name":"a","image":"hello","memory_mib":-1}"#,
                "memory_mib: expected",
            ),
            (
                r#"{"name":"a","image":"hello","memory_mib":1.5}"#,
                "memory_mib: expected",
            ),
            (
                r#"{"name":"a","image":"hello","memory_mib":"16"}"#,
                "memory_mib: expected",
            ),
            (
                r#"{"name":"a","image":"hello","memory_mib":99999999999999999999999}"#,
                "memory_mib: expected",
            ),
            (
                r#"{"name":"a","image":"hello","memory_mib":null}"#,
                "memory_mib: expected",
            ),
            (r#"{"name":"a","image":"hello","cpu":64}"#, "cpu: expected"),
            (
                r#"{"name":"a","image":"hello","cpu":4294967296}"#,
                "cpu: expected",
            ),
            (
                r#"{"name":"a","image":"hello","cmdline":"a\nb"}"#,
                "cmdline: expected",
            ),
            (
                r#"{"name":"a","image":"hello","on_crash":"explode"}"#,
                "on_crash: expected",
            ),
            (
                r#"{"name":"a","image":"hello","start":1}"#,
                "start: expected true or false",
            ),
            (
                r#"{"name":"a","image":"hello","colour":1}"#,
                "\"colour\": unknown field",
            ),
            (
                r#"{"name":"a","name":"b","image":"hello"}"#,
                "name: given twice",
            ),
            (
                r#"{"name":"a","image":"hello","pmu":{}}"#,
                "pmu.vendor: required",
            ),
            (r#"{"name":"a","image":"hello","pmu":1}"#, "pmu: expected"),
            (
                r#"{"name":"a","image":"hello","pmu":{"vendor":"intel","width":64}}"#,
                "pmu.width: counter width out of range (got 64, allowed 32..=48)",
            ),
            (
                r#"{"name":"a","image":"hello","pmu":{"vendor":"intel","width":640}}"#,
                "pmu.width: expected an integer from 32 to 48",
            ),
            (
                r#"{"name":"a","image":"hello","pmu":{"vendor":"amd","version":2}}"#,
                "pmu.version: not a field of a amd PMU",
            ),
            (
                r#"{"name":"a","image":"hello","pmu":{"vendor":"amd","kind":"new"}}"#,
                "pmu.kind: unknown AMD PMU kind",
            ),
            (
                r#"{"name":"a","image":"hello","pmu":{"vendor":"arm"}}"#,
                "pmu.vendor: expected",
            ),
            (
                r#"{"name":"a","image":"hello","pmu":{"vendor":"none","x":1}}"#,
                "pmu.\"x\": unknown",
            ),
        ];
        for (body, want) in cases {
            let got = create_err(body);
            assert!(got.starts_with(want), "{body}: {got}");
        }
        for body in [
            "",
            "[]",
            "{",
            "{}x",
            "\"a\"",
            "{\"name\":\"a\",}",
            "nul",
            "{\"name\" \"a\"}",
        ] {
            let e = parse_create(body.as_bytes()).unwrap_err();
            assert!(
                matches!(
                    e,
                    BodyError::Syntax | BodyError::Invalid { .. } | BodyError::Missing(_)
                ),
                "{body}: {e:?}"
            );
        }
        assert_eq!(parse_create(b"[]"), Err(BodyError::Syntax));
        assert_eq!(parse_create(b"{} {}"), Err(BodyError::Missing("name")));
        assert_eq!(
            parse_create(br#"{"name":"a","image":"b","memory_mib":2} x"#),
            Err(BodyError::Syntax)
        );
    }

    #[test]
    fn long_unknown_keys_are_cut() {
        let body = std::format!("{{\"{}\":1}}", "\u{e9}".repeat(40));
        let msg = create_err(&body);
        assert!(msg.contains("...\": unknown field"), "{msg}");
    }

    #[test]
    fn pmu_defaults() {
        let p = |s: &str| parse_pmu(s.as_bytes());
        assert_eq!(p(r#"{"vendor":"none"}"#), Ok(PmuConfig::Off));
        assert_eq!(p(r#"{"vendor":"intel"}"#), Ok(PmuConfig::intel(2)));
        assert_eq!(
            p(r#"{"vendor":"intel","version":1}"#),
            Ok(PmuConfig::intel(1))
        );
        assert_eq!(
            p(
                r#"{"vendor":"intel","version":5,"fixed_counters":4,"gp_counters":8,"width":40,"full_width_writes":false}"#
            ),
            Ok(PmuConfig::Intel {
                version: 5,
                gp_counters: 8,
                fixed_counters: 4,
                width: 40,
                full_width_writes: false
            })
        );
        assert_eq!(
            p(r#"{"vendor":"amd"}"#),
            Ok(PmuConfig::amd(AmdKind::Legacy))
        );
        assert_eq!(
            p(r#"{"vendor":"amd","kind":"core_ext"}"#),
            Ok(PmuConfig::amd(AmdKind::CoreExt))
        );
        let e = p(r#"{"vendor":"intel","version":1,"fixed_counters":1}"#).unwrap_err();
        assert_eq!(e.field(), "fixed_counters");
        assert!(e.to_string().starts_with("fixed_counters: "), "{e}");
        let e = p(r#"{"vendor":"amd","gp_counters":5}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "gp_counters: counter count not allowed for this PMU (got 5, allowed 4..=4)"
        );
        let e = p(r#"{"vendor":"none","kind":"legacy"}"#).unwrap_err();
        assert_eq!(e.to_string(), "kind: not a field of a none PMU");
        let e = p(r#"{"vendor":"intel","kind":"legacy"}"#).unwrap_err();
        assert_eq!(e.field(), "kind");
    }
}
