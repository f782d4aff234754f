//! Tracing (cargo feature `trace`, off by default): VM exits, resets, CPU state changes and API
//! requests as compact binary `defmt` records on COM2 (0x2F8), decoded on the host by
//! `scripts/trace` with the image's ELF (which keeps defmt's `.defmt` section of interned
//! format strings: only indices and raw arguments go over the wire).
//!
//! Without the feature every function here is an empty `#[inline(always)]` one, so the exit
//! path compiles to what it was before.
//!
//! Locking: a record is framed between `acquire` and `release`; `acquire` turns interrupts off
//! on this CPU and takes one global spin flag, held for one record only (about 10 to 20 bytes
//! written to the UART: under QEMU each is an emulated port write, on hardware a 16550's FIFO
//! of 16 bytes). No CPU holds it across a guest run or a blocking call, so another CPU waits at
//! most one record; a per-CPU buffer would need a drain thread, which is more code for no gain
//! at these sizes.

#[cfg(feature = "trace")]
mod imp {
    use core::sync::atomic::{AtomicBool, Ordering};

    use hermit_sync::SpinMutex;

    use crate::hw;

    static TAKEN: AtomicBool = AtomicBool::new(false);
    static INTERRUPTS_WERE_ON: AtomicBool = AtomicBool::new(false);
    /// Only touched between acquire and release, so never contended.
    static ENCODER: SpinMutex<defmt::Encoder> = SpinMutex::new(defmt::Encoder::new());

    defmt::timestamp!("{=u64:us}", hw::monotonic_micros());

    #[defmt::global_logger]
    struct Com2Logger;

    // SAFETY: `acquire` excludes every other CPU (the flag) and this CPU's interrupt handlers
    // (interrupts off) until `release`, as the trait requires; nothing logs from an interrupt.
    unsafe impl defmt::Logger for Com2Logger {
        fn acquire() {
            let on = hw::interrupts_save_disable();
            while TAKEN
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                core::hint::spin_loop();
            }
            INTERRUPTS_WERE_ON.store(on, Ordering::Relaxed);
            ENCODER.lock().start_frame(hw::com2_write);
        }

        unsafe fn flush() {}

        unsafe fn release() {
            ENCODER.lock().end_frame(hw::com2_write);
            let on = INTERRUPTS_WERE_ON.load(Ordering::Relaxed);
            TAKEN.store(false, Ordering::Release);
            hw::interrupts_restore(on);
        }

        unsafe fn write(bytes: &[u8]) {
            ENCODER.lock().write(bytes, hw::com2_write);
        }
    }

    pub fn init() {
        hw::com2_init();
        defmt::println!("trace start");
    }

    pub fn exit(vm: u32, kind: hv::exit::ExitKind) {
        use hv::exit::ExitKind as K;
        match kind {
            K::Cpuid => defmt::println!("vm {=u32} exit cpuid", vm),
            K::Io => defmt::println!("vm {=u32} exit io", vm),
            K::Msr => defmt::println!("vm {=u32} exit msr", vm),
            K::Hlt => defmt::println!("vm {=u32} exit hlt", vm),
            K::Npf => defmt::println!("vm {=u32} exit npf", vm),
            K::TripleFault => defmt::println!("vm {=u32} exit triple_fault", vm),
            K::VirtInsn => defmt::println!("vm {=u32} exit virt_insn", vm),
            K::Intr => defmt::println!("vm {=u32} exit intr", vm),
            K::Exception => defmt::println!("vm {=u32} exit exception", vm),
            K::Other => defmt::println!("vm {=u32} exit other", vm),
        }
    }

    pub fn reset(vm: u32, trigger: Option<hv::exit::ResetTrigger>) {
        match trigger {
            None => defmt::println!("vm {=u32} reset (start)", vm),
            Some(t) => defmt::println!("vm {=u32} reset {=str}", vm, t.as_str()),
        }
    }

    pub fn cpu(id: u32, online: bool, ok: bool) {
        defmt::println!("cpu {=u32} online={=bool} ok={=bool}", id, online, ok);
    }

    /// One `Endpoint::serve` call's output: the status of the first response in it.
    pub fn api(response: &[u8]) {
        // "HTTP/1.1 200 OK": the status is bytes 9..12.
        let status = response
            .get(9..12)
            .and_then(|s| core::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u16>().ok());
        if let Some(status) = status {
            defmt::println!(
                "api response {=u16} ({=usize} bytes)",
                status,
                response.len()
            );
        }
    }
}

#[cfg(feature = "trace")]
pub use imp::*;

#[cfg(not(feature = "trace"))]
mod off {
    #[inline(always)]
    pub fn init() {}
    #[inline(always)]
    pub fn exit(_vm: u32, _kind: hv::exit::ExitKind) {}
    #[inline(always)]
    pub fn reset(_vm: u32, _trigger: Option<hv::exit::ResetTrigger>) {}
    #[inline(always)]
    pub fn cpu(_id: u32, _online: bool, _ok: bool) {}
    #[inline(always)]
    pub fn api(_response: &[u8]) {}
}

#[cfg(not(feature = "trace"))]
pub use off::*;
