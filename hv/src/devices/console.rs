//! The per-VM console log: every byte the guest sends to its UART, kept in a fixed ring.
//!
//! Why a ring addressed by absolute offsets: the control endpoint serves the console to clients
//! that poll (`GET /v1/vms/NAME/console?offset=N`). Each client remembers the offset it has read
//! up to; the ring never allocates and never blocks the vCPU, so when the guest writes faster
//! than clients read, the oldest bytes are dropped and the next read says how many were lost.
//! Offsets count bytes since the VM was created and survive guest resets.

use core::fmt;

/// Default console capacity: 64 KiB.
pub const CONSOLE_RING_SIZE: usize = 64 * 1024;

/// A fixed-capacity byte ring of the last `N` bytes written.
pub struct ConsoleRing<const N: usize = CONSOLE_RING_SIZE> {
    buf: [u8; N],
    /// Bytes written since creation; the next byte goes to absolute offset `total`.
    total: u64,
}

/// What one [`ConsoleRing::read`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConsoleRead {
    /// Bytes copied into the caller's buffer.
    pub copied: usize,
    /// The offset to pass to the next read.
    pub next_offset: u64,
    /// Bytes between the requested offset and the first byte copied that were overwritten
    /// before they could be read (0 if nothing was lost).
    pub dropped: u64,
}

impl<const N: usize> ConsoleRing<N> {
    /// An empty ring.
    pub const fn new() -> Self {
        assert!(N > 0, "a console ring needs room for at least one byte");
        ConsoleRing {
            buf: [0; N],
            total: 0,
        }
    }

    /// Capacity in bytes.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Bytes written since creation (the offset one past the newest byte).
    pub const fn total_written(&self) -> u64 {
        self.total
    }

    /// The offset of the oldest byte still held.
    pub const fn oldest(&self) -> u64 {
        self.total.saturating_sub(N as u64)
    }

    /// Append one byte, dropping the oldest if full.
    pub fn push(&mut self, byte: u8) {
        self.buf[(self.total % N as u64) as usize] = byte;
        self.total += 1;
    }

    /// Append bytes, dropping the oldest as needed.
    pub fn push_slice(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.push(b);
        }
    }

    /// Copy bytes starting at absolute `offset` into `out`.
    ///
    /// - `offset` older than the oldest byte held: copying starts at the oldest byte and
    ///   [`ConsoleRead::dropped`] says how many were lost.
    /// - `offset` at or past the end: nothing is copied and `next_offset` is the end
    ///   ([`total_written`](Self::total_written)), so a client with a stale or bogus offset
    ///   resynchronises instead of waiting for bytes that will never come.
    pub fn read(&self, offset: u64, out: &mut [u8]) -> ConsoleRead {
        let oldest = self.oldest();
        let start = offset.clamp(oldest, self.total);
        let dropped = start.saturating_sub(offset);
        let available = (self.total - start) as usize;
        let n = available.min(out.len());
        // At most two runs: up to the end of the backing array, then from its start.
        let pos = (start % N as u64) as usize;
        let first = n.min(N - pos);
        out[..first].copy_from_slice(&self.buf[pos..pos + first]);
        out[first..n].copy_from_slice(&self.buf[..n - first]);
        ConsoleRead {
            copied: n,
            next_offset: start + n as u64,
            dropped,
        }
    }
}

impl<const N: usize> Default for ConsoleRing<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Debug for ConsoleRing<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsoleRing")
            .field("capacity", &N)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_ring_reads_nothing() {
        let r = ConsoleRing::<8>::new();
        let mut out = [0; 4];
        assert_eq!(
            r.read(0, &mut out),
            ConsoleRead {
                copied: 0,
                next_offset: 0,
                dropped: 0
            }
        );
        assert_eq!(r.capacity(), 8);
        assert_eq!(ConsoleRing::<CONSOLE_RING_SIZE>::new().capacity(), 65536);
    }

    #[test]
    fn reads_in_pieces_by_offset() {
        let mut r = ConsoleRing::<8>::new();
        r.push_slice(b"hello");
        let mut out = [0; 3];
        let a = r.read(0, &mut out);
        assert_eq!((a.copied, a.next_offset, a.dropped), (3, 3, 0));
        assert_eq!(&out, b"hel");
        let b = r.read(a.next_offset, &mut out);
        assert_eq!((b.copied, b.next_offset, b.dropped), (2, 5, 0));
        assert_eq!(&out[..2], b"lo");
        // Caught up.
        assert_eq!(r.read(5, &mut out).copied, 0);
    }

    #[test]
    fn wrap_drops_oldest_and_reports_it() {
        let mut r = ConsoleRing::<8>::new();
        r.push_slice(b"0123456789ab"); // 12 bytes into 8: "0123" lost
        assert_eq!(r.total_written(), 12);
        assert_eq!(r.oldest(), 4);
        let mut out = [0; 16];
        let x = r.read(0, &mut out);
        assert_eq!((x.copied, x.next_offset, x.dropped), (8, 12, 4));
        assert_eq!(&out[..8], b"456789ab");
        // A read straddling the wrap point of the backing array.
        let x = r.read(6, &mut out[..4]);
        assert_eq!((x.copied, x.next_offset, x.dropped), (4, 10, 0));
        assert_eq!(&out[..4], b"6789");
    }

    #[test]
    fn offset_past_the_end_resynchronises() {
        let mut r = ConsoleRing::<8>::new();
        r.push_slice(b"abc");
        let mut out = [0; 4];
        let x = r.read(1000, &mut out);
        assert_eq!((x.copied, x.next_offset, x.dropped), (0, 3, 0));
    }

    #[test]
    fn long_run_matches_a_reference_log() {
        let mut r = ConsoleRing::<64>::new();
        let mut log = Vec::new();
        let mut offset = 0u64;
        let mut seen = Vec::new();
        let mut lost = 0u64;
        for i in 0..5000u32 {
            let b = (i * 7 % 251) as u8;
            r.push(b);
            log.push(b);
            if i % 37 == 0 {
                let mut out = [0; 20];
                let x = r.read(offset, &mut out);
                lost += x.dropped;
                seen.extend_from_slice(&out[..x.copied]);
                assert_eq!(
                    &out[..x.copied],
                    &log[(x.next_offset - x.copied as u64) as usize..x.next_offset as usize]
                );
                offset = x.next_offset;
            }
        }
        assert_eq!(seen.len() as u64 + lost, offset);
    }
}
