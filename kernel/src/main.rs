//! The Hermitage image.
#![no_std]
#![no_main]

extern crate alloc;
#[macro_use]
extern crate hermit;

#[unsafe(no_mangle)]
extern "C" fn runtime_entry(_argc: i32, _argv: *const *const u8, _env: *const *const u8) -> ! {
    println!("hermitage: hello, cpus={}", hermit::syscalls::sys_get_processor_count());
    hermit::syscalls::sys_exit(0)
}
