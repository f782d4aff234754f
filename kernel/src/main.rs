//! The Hermitage image: Hermit boots us on every CPU; we detect what the host offers, bring
//! each CPU into the hypervisor's service, and serve the control endpoint.
//!
//! This file only wires things together; decisions live in the `hv`, `net` and backend crates,
//! and the few instructions that need `unsafe` live in `hw.rs` and `nic/`.
#![no_std]
#![no_main]

extern crate alloc;
#[macro_use]
extern crate hermit;

mod arch;
mod backend;
mod bench;
mod cpus;
mod endpoint;
mod hw;
mod nic;
mod percpu;
mod tdx;
mod trace;
mod virt;
mod vms;

use alloc::string::String;
use alloc::vec::Vec;

/// Our arguments are the words after `--` on the kernel command line (Hermit's convention).
fn args(argc: i32, argv: *const *const u8) -> Vec<String> {
    hw::args(argc, argv)
}

#[unsafe(no_mangle)]
extern "C" fn runtime_entry(argc: i32, argv: *const *const u8, _env: *const *const u8) -> ! {
    backend::mark_boot();
    let args = args(argc, argv);
    // Never the token itself on the console: `api_token=<redacted>`.
    let shown: Vec<&str> = args.iter().map(|a| net::auth::redact(a)).collect();
    println!(
        "hermitage {} starting: args={:?}",
        env!("CARGO_PKG_VERSION"),
        shown
    );
    let config = match hv::config::BootConfig::parse(args.iter().map(String::as_str)) {
        Ok(c) => c,
        Err(e) => {
            println!("hermitage: bad command line: {e}");
            hw::power_off(2)
        }
    };

    trace::init();
    bench::init(&config);
    // The `minimal` image, the baseline of `scripts/bench`: no CPU bring-up, virt layer, TDX
    // or VMs; straight to the endpoint, where only `/v1/health` means anything.
    if cfg!(feature = "minimal") {
        println!("hermitage: minimal image (feature `minimal`): endpoint only");
        serve(config)
    }

    // The instruction decoder (iced-x86) builds its tables on the heap at its first decode;
    // do it here, once, rather than inside the first guest exit with interrupts off.
    hv::emulate::warm_up();
    let up = cpus::bring_up_all();
    let features = cpus::detect_here();
    println!(
        "hermitage: {up}/{} cpus up; host: {features}",
        cpus::count()
    );
    backend::init(features);
    arch::host_pmu::init(config.vpmu_backing, &features);
    virt::init(features.virt);
    tdx::init(config.tdx);

    vms::start_from_cmdline(
        config.vms.iter().map(|s| s.as_str()),
        config.vm_pmu,
        cpus::count(),
    );
    if config.crash_test {
        virt::crash("crash_test on the command line");
    }
    if config.exit_after_boot {
        println!("hermitage: exit_after_boot set, powering off");
        hw::power_off(0)
    }
    serve(config)
}

fn serve(config: hv::config::BootConfig) -> ! {
    let nic = match nic::Nic::probe() {
        Ok(nic) => nic,
        Err(e) => {
            println!("hermitage: no control endpoint: {e}");
            loop {
                hermit::syscalls::sys_usleep(1_000_000);
            }
        }
    };
    endpoint::run(nic, config)
}
