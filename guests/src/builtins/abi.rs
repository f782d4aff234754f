//! What the built-in guests and the hypervisor agree on: ports they use and exit codes.
//!
//! Plain constants with no `crate::` paths: `build.rs` includes this file with `#[path]` to
//! generate the guests, and the library exports it for the hypervisor's tests.

/// 16550 UART data register (transmit holding register on write).
pub const UART_DATA: u16 = 0x3F8;
/// 16550 UART line status register; bit 5 (THRE) set = ready for the next byte.
pub const UART_LSR: u16 = 0x3FD;
pub const UART_LSR_THRE: u8 = 1 << 5;
/// What the hypervisor's UART LSR reads: THRE | TEMT.
pub const UART_LSR_IDLE: u8 = 0x60;
/// isa-debug-exit style port: a 32-bit `out` stops the VM with that exit code.
pub const DEBUG_EXIT_PORT: u16 = 0xF4;

/// Exit code: the guest did what it should (`hello`, `spinner ticks=K`, `exerciser` all passed).
pub const EXIT_OK: u32 = 0;
/// Exit code: `exerciser` had at least one failed check.
pub const EXIT_CHECKS_FAILED: u32 = 1;
/// Exit code: any guest took an exception it did not expect (it prints which first).
pub const EXIT_UNEXPECTED_EXCEPTION: u32 = 2;
/// Exit code: `resetter` asked for a reset and is still running.
pub const EXIT_STILL_ALIVE: u32 = 3;

/// `spinner` prints one tick every `1 << SPINNER_TICK_SHIFT` loop iterations.
pub const SPINNER_TICK_SHIFT: u32 = 24;
