//! The digest the `pmu` probe guest must print right after a reset, computed on the host from
//! the hypervisor's own vPMU model (`hv::vpmu::probe`). `scripts/reboot-stress` uses it.
//!
//! ```text
//! cargo run -q -p hermitage-hv --example pmu_digest -- amd none amd:legacy intel:2:4:3:48
//! none 0x...
//! amd:legacy 0x...
//! intel:2:4:3:48 0x...
//! ```
//!
//! The first word is the guest's CPU vendor (`amd` or `intel`); each further word a
//! configuration in the kernel command line's compact form (`vm_pmu=`).

use hv::features::Vendor;
use hv::vpmu::PmuConfig;
use hv::vpmu::probe::probe_digest;

fn main() {
    let mut args = std::env::args().skip(1);
    let vendor = match args.next().as_deref() {
        Some("amd") => Vendor::Amd,
        Some("intel") => Vendor::Intel,
        other => {
            eprintln!("pmu_digest: first argument must be amd or intel, not {other:?}");
            std::process::exit(2);
        }
    };
    for spec in args {
        let Some(config) = PmuConfig::parse_compact(&spec) else {
            eprintln!("pmu_digest: not a PMU configuration: {spec}");
            std::process::exit(2);
        };
        println!("{spec} {:#010x}", probe_digest(&config, vendor));
    }
}
