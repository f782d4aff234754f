//! A polling writer for the 16550 UART on COM1, and the way out when booting fails.
//!
//! The loader prints its progress so that a boot that stops is visible; the kernel reprograms the
//! same port later. Register offsets: PC16550D data sheet (National Semiconductor), table 2.

use core::arch::asm;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU16, Ordering};

/// QEMU's `isa-debug-exit` device (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`): writing `v`
/// makes QEMU exit with status `2 * v + 1`. Elsewhere the port is unused.
const DEBUG_EXIT_PORT: u16 = 0xF4;
/// Written on a failed boot, so QEMU exits with status 5. Hermit itself writes 1 (status 3) on
/// success and 0 (status 1) on failure.
const BOOT_FAILED: u32 = 2;

static BASE: AtomicU16 = AtomicU16::new(0);

fn outb(port: u16, value: u8) {
    // SAFETY: only the UART and debug-exit ports are written; neither affects memory safety.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack)) }
}

fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: reading the UART line status register has no side effects.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack)) }
    value
}

/// Programs the UART at `base` for 115200 baud, 8N1, no interrupts.
pub fn init(base: u16) {
    outb(base + 1, 0x00); // IER: no interrupts
    outb(base + 3, 0x80); // LCR: DLAB on
    outb(base, 0x01); // DLL: divisor 1 = 115200 baud
    outb(base + 1, 0x00); // DLM
    outb(base + 3, 0x03); // LCR: 8 bits, no parity, one stop bit, DLAB off
    outb(base + 2, 0xC7); // FCR: FIFOs on and cleared
    outb(base + 4, 0x03); // MCR: DTR, RTS
    BASE.store(base, Ordering::Relaxed);
}

struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let base = BASE.load(Ordering::Relaxed);
        if base == 0 {
            return Ok(());
        }
        for byte in s.bytes() {
            if byte == b'\n' {
                self.write_str("\r")?;
            }
            // LSR bit 5: transmitter holding register empty. Bounded, so a missing UART
            // cannot hang the boot.
            for _ in 0..100_000 {
                if inb(base + 5) & 0x20 != 0 {
                    break;
                }
            }
            outb(base, byte);
        }
        Ok(())
    }
}

/// Writes formatted text to the serial port (used by [`println!`]).
pub fn print(args: fmt::Arguments<'_>) {
    Serial.write_fmt(args).ok();
}

macro_rules! println {
    ($($arg:tt)*) => {
        $crate::bare::serial::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use println;

/// Forwards `hermit-entry`'s log messages (ELF parsing and loading) to the serial port.
pub struct Logger;

/// The logger the loader installs.
pub static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        println!("hermitage-boot: [{}] {}", record.level(), record.args());
    }

    fn flush(&self) {}
}

/// Ends a failed boot: QEMU with `isa-debug-exit` exits with status 5; elsewhere the CPU halts
/// with interrupts off, leaving the message on the console.
pub fn exit_qemu_and_halt() -> ! {
    // SAFETY: writing the debug-exit port is harmless where no such device exists.
    unsafe {
        asm!("out dx, eax", in("dx") DEBUG_EXIT_PORT, in("eax") BOOT_FAILED, options(nomem, nostack))
    }
    loop {
        // SAFETY: `cli; hlt` stops this CPU; nothing else runs.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}
