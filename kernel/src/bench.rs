//! Benchmark support: the exit-cost floor `scripts/bench` compares real exits with.
//!
//! With `bench_floor` on the kernel command line, a CPUID exit for leaf 0x400000FF (in the
//! hypervisor range, otherwise unused) is answered with zeros right after the exit is decoded,
//! skipping the vPMU, the exit handler and the statistics. The `bench` guest times that leaf
//! next to leaf 0: the difference is what our exit handling adds to the emulator's VMRUN and
//! #VMEXIT, the arming of the preemption tick and the decode, which every exit pays.

#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicBool, Ordering};

use hv::exit::{Exit, RegUpdate};
use hv::vcpu::run::VcpuBackend;

/// The CPUID leaf the floor answers.
pub const FLOOR_LEAF: u32 = 0x4000_00FF;

static FLOOR: AtomicBool = AtomicBool::new(false);

pub fn init(config: &hv::config::BootConfig) {
    FLOOR.store(config.bench_floor, Ordering::Relaxed);
}

/// Answer `exit` if it is the floor's CPUID (and the floor is on); true if it did.
#[inline]
pub fn floor_exit<B: VcpuBackend>(vcpu: &mut B, exit: &Exit) -> bool {
    match *exit {
        Exit::Cpuid {
            leaf: FLOOR_LEAF,
            next_rip,
            ..
        } if FLOOR.load(Ordering::Relaxed) => {
            let zero = RegUpdate {
                rax: Some(0),
                rbx: Some(0),
                rcx: Some(0),
                rdx: Some(0),
                ..RegUpdate::default()
            };
            vcpu.apply(next_rip, &zero);
            true
        }
        _ => false,
    }
}
