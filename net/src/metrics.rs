//! `GET /v1/metrics`: the Prometheus text exposition format (version 0.0.4), and the HTTP
//! counters it reports.
//!
//! Why text built by hand: the format is a few lines per sample, and the values are already
//! counters in hv's model ([`hv::vm::VmStats`]), so a metrics library would add nothing but
//! allocation. Families are written in full, each with its `# HELP` and `# TYPE` lines before
//! its samples (the format requires one family's samples to be together), label values escaped
//! as the format says (`\\`, `\"`, `\n`).
//!
//! Families:
//!
//! | name | type | labels |
//! |------|------|--------|
//! | `hermitage_uptime_seconds` | gauge | |
//! | `hermitage_memory_total_bytes`, `hermitage_memory_free_bytes` | gauge | |
//! | `hermitage_cpu_online` | gauge (0/1) | `cpu` |
//! | `hermitage_cpu_virt_enabled` | gauge (0/1) | `cpu`, `virt` (`svm`/`vmx`/`off`) |
//! | `hermitage_cpu_virt_users` | gauge | `cpu` |
//! | `hermitage_vm_state` | gauge (1 for the current state, 0 for the others) | `vm`, `name`, `state` |
//! | `hermitage_vm_memory_bytes` | gauge | `vm`, `name` |
//! | `hermitage_vm_exits_total` | counter | `vm`, `name`, `reason` (an [`hv::exit::ExitKind`]) |
//! | `hermitage_vm_resets_total` | counter | `vm`, `name`, `trigger` (a [`hv::exit::ResetTrigger`]) |
//! | `hermitage_vm_halts_total` | counter | `vm`, `name` |
//! | `hermitage_vm_run_time_seconds_total` | counter | `vm`, `name` |
//! | `hermitage_vm_console_bytes_total` | counter | `vm`, `name` |
//! | `hermitage_http_responses_total` | counter | `code` |
//! | `hermitage_http_connections_rejected_total` | counter | |
//! | `hermitage_http_timeouts_total` | counter | |

use alloc::vec::Vec;
use core::fmt::{self, Write};

use hv::exit::{ExitKind, ResetTrigger};

use crate::api::{Backend, CpuVirt, VmInfo};
use crate::http::Status;

/// The `Content-Type` of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Responses sent, by status, and connections refused or timed out. Owned by the
/// [`crate::server::Endpoint`]; plain counters, since the endpoint runs on one thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpStats {
    responses: [u64; Status::ALL.len()],
    /// Connections refused with 503 `too_many_connections`.
    pub rejected_connections: u64,
    /// Connections closed for idleness.
    pub timeouts: u64,
}

impl HttpStats {
    /// Count one response.
    pub fn record(&mut self, status: Status) {
        let c = &mut self.responses[status.index()];
        *c = c.saturating_add(1);
    }

    /// Responses sent with `status`.
    pub fn responses(&self, status: Status) -> u64 {
        self.responses[status.index()]
    }
}

/// A label value, escaped for the exposition format.
struct Label<'a>(&'a str);

impl fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Writes into a byte vector.
struct Out<'a>(&'a mut Vec<u8>);

impl Write for Out<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn family(w: &mut Out<'_>, name: &str, kind: &str, help: &str) -> fmt::Result {
    writeln!(w, "# HELP {name} {help}")?;
    writeln!(w, "# TYPE {name} {kind}")
}

/// Appends the whole exposition to `out`.
pub fn render<B: Backend + ?Sized>(backend: &B, http: &HttpStats, out: &mut Vec<u8>) {
    let mut vms: Vec<VmInfo> = Vec::new();
    backend.vms(&mut |vm| vms.push(vm.clone()));
    // Writing into a Vec cannot fail.
    let _ = write_all(backend, &vms, http, &mut Out(out));
}

fn write_all<B: Backend + ?Sized>(
    backend: &B,
    vms: &[VmInfo],
    http: &HttpStats,
    w: &mut Out<'_>,
) -> fmt::Result {
    let host = backend.host();
    family(w, "hermitage_uptime_seconds", "gauge", "Time since boot.")?;
    writeln!(
        w,
        "hermitage_uptime_seconds {}.{:03}",
        host.uptime_ms / 1000,
        host.uptime_ms % 1000
    )?;
    family(
        w,
        "hermitage_memory_total_bytes",
        "gauge",
        "Memory the hypervisor manages.",
    )?;
    writeln!(
        w,
        "hermitage_memory_total_bytes {}",
        host.memory_total_bytes
    )?;
    family(w, "hermitage_memory_free_bytes", "gauge", "Free memory.")?;
    writeln!(w, "hermitage_memory_free_bytes {}", host.memory_free_bytes)?;

    family(
        w,
        "hermitage_cpu_online",
        "gauge",
        "Whether the CPU is online.",
    )?;
    let mut r = Ok(());
    backend.cpus(&mut |c| {
        r = r.and_then(|()| {
            writeln!(
                w,
                "hermitage_cpu_online{{cpu=\"{}\"}} {}",
                c.id,
                u8::from(c.online)
            )
        });
    });
    r?;
    family(
        w,
        "hermitage_cpu_virt_enabled",
        "gauge",
        "Whether hardware virtualization is on on the CPU, by kind.",
    )?;
    backend.cpus(&mut |c| {
        for (virt, name) in [
            (CpuVirt::Svm, "svm"),
            (CpuVirt::Vmx, "vmx"),
            (CpuVirt::Off, "off"),
        ] {
            r = r.and_then(|()| {
                writeln!(
                    w,
                    "hermitage_cpu_virt_enabled{{cpu=\"{}\",virt=\"{name}\"}} {}",
                    c.id,
                    u8::from(c.virt == virt)
                )
            });
        }
    });
    r?;
    family(
        w,
        "hermitage_cpu_virt_users",
        "gauge",
        "Users holding a reference on virtualization on the CPU.",
    )?;
    backend.cpus(&mut |c| {
        r = r.and_then(|()| {
            writeln!(
                w,
                "hermitage_cpu_virt_users{{cpu=\"{}\"}} {}",
                c.id, c.users
            )
        });
    });
    r?;

    const STATES: [&str; 5] = ["created", "running", "paused", "stopped", "crashed"];
    family(
        w,
        "hermitage_vm_state",
        "gauge",
        "1 for the VM's current state, 0 for the others.",
    )?;
    for vm in vms {
        let now = vm.summary.state.as_str();
        for st in STATES {
            writeln!(
                w,
                "hermitage_vm_state{{{},state=\"{st}\"}} {}",
                VmLabels(vm),
                u8::from(now == st)
            )?;
        }
    }
    family(w, "hermitage_vm_memory_bytes", "gauge", "Guest memory.")?;
    for vm in vms {
        let bytes = u64::from(vm.summary.memory_mib) << 20;
        writeln!(w, "hermitage_vm_memory_bytes{{{}}} {bytes}", VmLabels(vm))?;
    }
    family(
        w,
        "hermitage_vm_exits_total",
        "counter",
        "VM exits, by reason.",
    )?;
    for vm in vms {
        for (kind, n) in vm.summary.stats.exits.iter() {
            let reason: &str = ExitKind::as_str(kind);
            writeln!(
                w,
                "hermitage_vm_exits_total{{{},reason=\"{reason}\"}} {n}",
                VmLabels(vm)
            )?;
        }
    }
    family(
        w,
        "hermitage_vm_resets_total",
        "counter",
        "VM resets, by trigger.",
    )?;
    for vm in vms {
        for t in ResetTrigger::ALL {
            writeln!(
                w,
                "hermitage_vm_resets_total{{{},trigger=\"{}\"}} {}",
                VmLabels(vm),
                t.as_str(),
                vm.summary.stats.resets_by(t)
            )?;
        }
    }
    family(
        w,
        "hermitage_vm_halts_total",
        "counter",
        "HLTs that put the vCPU to sleep.",
    )?;
    for vm in vms {
        writeln!(
            w,
            "hermitage_vm_halts_total{{{}}} {}",
            VmLabels(vm),
            vm.summary.stats.halts
        )?;
    }
    family(
        w,
        "hermitage_vm_run_time_seconds_total",
        "counter",
        "Time spent in the guest.",
    )?;
    for vm in vms {
        let us = vm.summary.stats.run_time_us;
        writeln!(
            w,
            "hermitage_vm_run_time_seconds_total{{{}}} {}.{:06}",
            VmLabels(vm),
            us / 1_000_000,
            us % 1_000_000
        )?;
    }
    family(
        w,
        "hermitage_vm_console_bytes_total",
        "counter",
        "Bytes the guest wrote to its console.",
    )?;
    for vm in vms {
        writeln!(
            w,
            "hermitage_vm_console_bytes_total{{{}}} {}",
            VmLabels(vm),
            vm.summary.console_bytes
        )?;
    }

    family(
        w,
        "hermitage_http_responses_total",
        "counter",
        "API responses sent, by status code.",
    )?;
    for s in Status::ALL {
        let n = http.responses(s);
        if n > 0 {
            writeln!(
                w,
                "hermitage_http_responses_total{{code=\"{}\"}} {n}",
                s.code()
            )?;
        }
    }
    family(
        w,
        "hermitage_http_connections_rejected_total",
        "counter",
        "API connections refused because too many were open.",
    )?;
    writeln!(
        w,
        "hermitage_http_connections_rejected_total {}",
        http.rejected_connections
    )?;
    family(
        w,
        "hermitage_http_timeouts_total",
        "counter",
        "API connections closed for idleness.",
    )?;
    writeln!(w, "hermitage_http_timeouts_total {}", http.timeouts)
}

/// `vm="1",name="a"`.
struct VmLabels<'a>(&'a VmInfo);

impl fmt::Display for VmLabels<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vm=\"{}\",name=\"{}\"",
            self.0.id,
            Label(&self.0.summary.name)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn label_escaping() {
        assert_eq!(Label("a\\b\"c\nd").to_string(), "a\\\\b\\\"c\\nd");
        assert_eq!(Label("plain-1_x").to_string(), "plain-1_x");
    }

    #[test]
    fn status_index_matches_all() {
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
        }
        let mut h = HttpStats::default();
        h.record(Status::NotFound);
        h.record(Status::NotFound);
        assert_eq!(h.responses(Status::NotFound), 2);
        assert_eq!(h.responses(Status::Ok), 0);
    }
}
