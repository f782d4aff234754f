//! The JSON documents of the VM and host routes, written by hand over `serde::Serializer`.
//!
//! Why by hand rather than `#[derive(Serialize)]`: the values are hv's own model types
//! ([`hv::vm::VmSummary`], [`hv::vpmu::PmuConfig`], [`hv::exit::ExitStats`],
//! [`hv::features::HostFeatures`]), which are `no_std` data without serde, and the wire names
//! come from hv's own `as_str` tables (exit kinds, reset triggers, states, AMD PMU kinds), so
//! there is one vocabulary and a new exit kind shows up in the JSON and the metrics by itself.
//! The shapes are listed in the README's API section and `net/openapi.yaml`.

use serde::ser::{Serialize, SerializeStruct, Serializer};

use hv::exit::{ExitKind, ResetTrigger};
use hv::features::{HostFeatures, Vendor, VirtKind};
use hv::vm::VmStats;
use hv::vpmu::PmuConfig;

use crate::api::{HostInfo, PmuInfo, TdxInfo, VmInfo};

/// A VM: `{"id":1,"name":"a","image":"hello","state":"running","reason":null,...}`.
#[derive(Clone, Copy, Debug)]
pub struct VmJson<'a>(pub &'a VmInfo);

impl Serialize for VmJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let vm = self.0;
        let sum = &vm.summary;
        let mut o = s.serialize_struct("Vm", 14)?;
        o.serialize_field("id", &vm.id)?;
        o.serialize_field("name", sum.name.as_str())?;
        o.serialize_field("image", sum.image.as_str())?;
        o.serialize_field("state", sum.state.as_str())?;
        o.serialize_field("reason", &sum.state.reason().map(Reason))?;
        o.serialize_field("memory_mib", &sum.memory_mib)?;
        o.serialize_field("cpu", &sum.cpu)?;
        o.serialize_field("running_on", &vm.running_on)?;
        o.serialize_field("on_crash", sum.on_crash.as_str())?;
        o.serialize_field("local_apic", &sum.local_apic)?;
        o.serialize_field("strict_mmio", &sum.strict_mmio)?;
        o.serialize_field("cmdline", sum.cmdline.as_str())?;
        o.serialize_field("pmu", &PmuJson(vm.pmu))?;
        o.serialize_field("console_bytes", &sum.console_bytes)?;
        // Every reset so far, whatever its trigger (by trigger: `stats.resets`); also the
        // `boot=N` the guest's next reset will pass it.
        let resets = sum
            .stats
            .resets
            .iter()
            .fold(0u64, |a, &r| a.saturating_add(r));
        o.serialize_field("resets", &resets)?;
        o.serialize_field("stats", &StatsJson(&sum.stats))?;
        o.end()
    }
}

/// A stop reason in words ([`hv::exit::StopReason`]'s `Display`).
struct Reason(hv::exit::StopReason);

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// A PMU configuration, in the same shape the PUT and POST bodies use:
/// `{"vendor":"none"}`, `{"vendor":"intel","version":2,...}`, `{"vendor":"amd","kind":...}`.
#[derive(Clone, Copy, Debug)]
pub struct PmuJson(pub PmuConfig);

impl Serialize for PmuJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            PmuConfig::Off => {
                let mut o = s.serialize_struct("Pmu", 1)?;
                o.serialize_field("vendor", "none")?;
                o.end()
            }
            PmuConfig::Intel {
                version,
                gp_counters,
                fixed_counters,
                width,
                full_width_writes,
            } => {
                let mut o = s.serialize_struct("Pmu", 6)?;
                o.serialize_field("vendor", "intel")?;
                o.serialize_field("version", &version)?;
                o.serialize_field("gp_counters", &gp_counters)?;
                o.serialize_field("fixed_counters", &fixed_counters)?;
                o.serialize_field("width", &width)?;
                o.serialize_field("full_width_writes", &full_width_writes)?;
                o.end()
            }
            PmuConfig::Amd { kind, gp_counters } => {
                let mut o = s.serialize_struct("Pmu", 3)?;
                o.serialize_field("vendor", "amd")?;
                o.serialize_field("kind", kind.as_str())?;
                o.serialize_field("gp_counters", &gp_counters)?;
                o.end()
            }
        }
    }
}

/// `{"exits":{...},"resets":{...},"halts":N,"run_time_us":N,"unhandled_port_reads":N,
/// "unhandled_port_writes":N,"unhandled_mmio_reads":N,"unhandled_mmio_writes":N}`: also the body of `GET /v1/vms/{id}/stats`.
#[derive(Clone, Copy, Debug)]
pub struct StatsJson<'a>(pub &'a VmStats);

impl Serialize for StatsJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let st = self.0;
        let mut o = s.serialize_struct("Stats", 6)?;
        o.serialize_field("exits", &Exits(st))?;
        o.serialize_field("resets", &Resets(st))?;
        o.serialize_field("halts", &st.halts)?;
        o.serialize_field("run_time_us", &st.run_time_us)?;
        o.serialize_field("unhandled_port_reads", &st.unhandled_port_reads)?;
        o.serialize_field("unhandled_port_writes", &st.unhandled_port_writes)?;
        o.serialize_field("unhandled_mmio_reads", &st.unhandled_mmio_reads)?;
        o.serialize_field("unhandled_mmio_writes", &st.unhandled_mmio_writes)?;
        o.end()
    }
}

/// `{"total":N,"cpuid":N,"io":N,...}`: one key per [`ExitKind`], named by its `as_str`.
struct Exits<'a>(&'a VmStats);

impl Serialize for Exits<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut o = s.serialize_struct("Exits", 1 + ExitKind::COUNT)?;
        o.serialize_field("total", &self.0.exits.total())?;
        for (kind, n) in self.0.exits.iter() {
            o.serialize_field(kind.as_str(), &n)?;
        }
        o.end()
    }
}

/// `{"api":N,"triple_fault":N,"port_cf9":N,"keyboard_controller":N}`.
struct Resets<'a>(&'a VmStats);

impl Serialize for Resets<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut o = s.serialize_struct("Resets", ResetTrigger::COUNT)?;
        for t in ResetTrigger::ALL {
            o.serialize_field(t.as_str(), &self.0.resets_by(t))?;
        }
        o.end()
    }
}

/// The API's vendor name: `"amd"`, `"intel"` or `"unknown"`.
pub const fn vendor_str(v: Vendor) -> &'static str {
    match v {
        Vendor::Amd => "amd",
        Vendor::Intel => "intel",
        Vendor::Other => "unknown",
    }
}

/// `GET /v1/host` (shape in [`HostInfo`]'s docs).
#[derive(Clone, Copy, Debug)]
pub struct HostJson<'a>(pub &'a HostInfo);

impl Serialize for HostJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let h = self.0;
        let mut o = s.serialize_struct("Host", 9)?;
        o.serialize_field("version", h.version)?;
        o.serialize_field("vendor", vendor_str(h.features.vendor))?;
        o.serialize_field("virt", h.features.virt.as_str())?;
        o.serialize_field("features", &Features(&h.features))?;
        o.serialize_field("tdx", &Tdx(h.tdx))?;
        o.serialize_field("memory", &Memory(h))?;
        o.serialize_field("uptime_ms", &h.uptime_ms)?;
        o.serialize_field("cpus", &h.cpus)?;
        o.serialize_field("vms", &h.vms)?;
        o.end()
    }
}

struct Features<'a>(&'a HostFeatures);

impl Serialize for Features<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let f = self.0;
        let mut o = s.serialize_struct("Features", 12)?;
        o.serialize_field("npt", &(f.nested_paging && f.vendor == Vendor::Amd))?;
        o.serialize_field("ept", &(f.nested_paging && f.vendor == Vendor::Intel))?;
        o.serialize_field("nrips", &f.nrips)?;
        o.serialize_field("vpid", &f.vpid)?;
        o.serialize_field("asids", &f.asids)?;
        o.serialize_field("x2apic", &f.x2apic)?;
        o.serialize_field("pmu_version", &f.pmu.version)?;
        o.serialize_field("pmu_gp_counters", &f.pmu.gp_counters)?;
        o.serialize_field("pmu_fixed_counters", &f.pmu.fixed_counters)?;
        o.serialize_field("under_hypervisor", &f.under_hypervisor)?;
        o.serialize_field("tme", &f.tme)?;
        o.serialize_field(
            "virt_unusable",
            &f.virt_unusable.filter(|_| f.virt == VirtKind::None),
        )?;
        o.end()
    }
}

struct Tdx(TdxInfo);

impl Serialize for Tdx {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = self.0;
        let n = 1 + usize::from(t.state.is_some()) + usize::from(t.reason.is_some());
        let mut o = s.serialize_struct("Tdx", n)?;
        o.serialize_field("supported", &t.supported)?;
        if let Some(st) = t.state {
            o.serialize_field("state", st)?;
        }
        if let Some(r) = t.reason {
            o.serialize_field("reason", r)?;
        }
        o.end()
    }
}

struct Memory<'a>(&'a HostInfo);

impl Serialize for Memory<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut o = s.serialize_struct("Memory", 2)?;
        o.serialize_field("total_bytes", &self.0.memory_total_bytes)?;
        o.serialize_field("free_bytes", &self.0.memory_free_bytes)?;
        o.end()
    }
}

/// `GET /v1/vms/{id}/pmu` ([`PmuInfo`]).
#[derive(Clone, Copy, Debug)]
pub struct PmuInfoJson<'a>(pub &'a PmuInfo);

impl Serialize for PmuInfoJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = self.0;
        let mut o = s.serialize_struct("PmuInfo", 6)?;
        o.serialize_field("config", &PmuJson(p.config))?;
        o.serialize_field("pending", &p.pending.map(PmuJson))?;
        o.serialize_field("model", &ModelJson(&p.state))?;
        o.serialize_field("registers", &RegistersJson(&p.state))?;
        o.serialize_field("backing", p.backing)?;
        o.serialize_field("probe_digest", &Hex32(p.probe_digest))?;
        o.end()
    }
}

struct ModelJson<'a>(&'a hv::vpmu::VpmuState);

impl Serialize for ModelJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let m = self.0.model();
        let mut o = s.serialize_struct("Model", 9)?;
        o.serialize_field("vendor", m.vendor().map_or("none", vendor_str))?;
        o.serialize_field("version", &m.intel_version())?;
        o.serialize_field("gp_counters", &m.gp_counters())?;
        o.serialize_field("fixed_counters", &m.fixed_counters())?;
        o.serialize_field("width", &m.counter_width())?;
        o.serialize_field("global_regs", &m.has_global_regs())?;
        o.serialize_field("global_ctrl_reset", &m.global_ctrl_reset())?;
        let note = match m.note() {
            None => None,
            Some(hv::vpmu::ModelNote::VendorMismatch { .. }) => Some("vendor_mismatch"),
            Some(hv::vpmu::ModelNote::Invalid(_)) => Some("invalid"),
        };
        o.serialize_field("note", &note)?;
        o.serialize_field("msrs", &Msrs(&m))?;
        o.end()
    }
}

struct Msrs<'a>(&'a hv::vpmu::Model);

impl Serialize for Msrs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.msrs())
    }
}

struct RegistersJson<'a>(&'a hv::vpmu::VpmuState);

impl Serialize for RegistersJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0.registers();
        let mut o = s.serialize_struct("Registers", 6)?;
        o.serialize_field("global_ctrl", &r.global_ctrl)?;
        o.serialize_field("global_status", &r.global_status)?;
        o.serialize_field("fixed_ctrl", &r.fixed_ctrl)?;
        o.serialize_field("counters", r.counters)?;
        o.serialize_field("event_selects", r.event_selects)?;
        o.serialize_field("fixed", r.fixed)?;
        o.end()
    }
}

/// A 32-bit value as `"0x0123abcd"`.
struct Hex32(u32);

impl Serialize for Hex32 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = *b"0x00000000";
        for i in 0..8 {
            text[2 + i] = DIGITS[((self.0 >> (28 - 4 * i)) & 0xF) as usize];
        }
        // ASCII by construction.
        s.serialize_str(core::str::from_utf8(&text).unwrap_or("0x????????"))
    }
}
