//! The assembler side of the built-in guests: a two-pass wrapper around iced-x86's
//! `CodeAssembler` and the runtime every guest shares (entry, GDT/IDT, serial output, numbers,
//! command-line arguments, exception handling, exit).
//!
//! Why two passes: in 32-bit mode iced cannot use a label as a memory operand or immediate
//! (its label operands are RIP-relative, 64-bit only). So data is referred to by absolute
//! address: pass 1 assembles with placeholder addresses and records where every named label
//! landed, pass 2 assembles the same program with those addresses. Every address-carrying
//! encoding used here has a fixed size (`mov r32, imm32`, `mov [disp32], imm32`, `dd` data), so
//! pass 2 lays out exactly like pass 1; `assemble` checks that.

use std::collections::HashMap;
use std::error::Error;

use iced_x86::BlockEncoderOptions;
use iced_x86::code_asm::*;

use crate::guest_abi as gabi;
use crate::mb_abi;

/// `Asm` methods that branch to a named label.
macro_rules! branches {
    ($($jcc:ident),*) => {$(
        pub fn $jcc(&mut self, target: &str) -> Result {
            let label = self.label(target);
            Ok(self.a.$jcc(label)?)
        }
    )*};
}

pub type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

/// Where things live in a guest's memory (all in the one loaded segment).
pub mod layout {
    use crate::mb_abi::IMAGE_BASE;

    /// The file part (header, code, read-only data) must end before the BSS.
    pub const BSS: u32 = IMAGE_BASE + 0x2000;
    pub const BSS_LEN: u32 = 0x1000;
    pub const STACK_TOP: u32 = BSS + BSS_LEN;
    /// Variables in the BSS (zeroed by the loader).
    pub const VAR_MB_INFO: u32 = BSS;
    /// Command line address, or 0 when there is none.
    pub const VAR_CMDLINE: u32 = BSS + 0x04;
    /// Where an exception resumes; 0: exceptions are unexpected.
    pub const VAR_RESUME: u32 = BSS + 0x08;
    /// Vector of the last expected exception, or `NO_FAULT`.
    pub const VAR_FAULT_VECTOR: u32 = BSS + 0x0C;
    pub const VAR_PASS: u32 = BSS + 0x10;
    pub const VAR_FAIL: u32 = BSS + 0x14;
    /// 16 bytes for any guest's use.
    pub const VAR_SCRATCH: u32 = BSS + 0x20;
    /// Interrupt hook: called (all registers saved, `eax` = vector) from every interrupt
    /// stub of a guest that asked for interrupt vectors; 0: none.
    pub const VAR_IRQ_HOOK: u32 = BSS + 0x30;
    /// Per interrupt vector 32.. a 32-bit count of arrivals (`IRQ_VECTORS` of them).
    pub const VAR_IRQ_COUNTS: u32 = BSS + 0x80;
    pub const NO_FAULT: u32 = u32::MAX;
    /// Our own GDT's selectors (the Multiboot spec leaves GDTR undefined at entry).
    pub const CODE_SELECTOR: u16 = 0x08;
    pub const DATA_SELECTOR: u16 = 0x10;
}

/// Vectors that push an error code (SDM Vol. 3A, Table 6-1).
const ERROR_CODE_VECTORS: [u8; 10] = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];
const EXCEPTION_VECTORS: u8 = 32;
/// Interrupt vectors 32..32+IRQ_VECTORS get stubs and gates when a guest asks for them
/// ([`Asm::interrupts`]): the PIC's 16 (at 0x20 and 0x28) and the local APIC's few.
pub const IRQ_VECTORS: u8 = 32;
/// Placeholder for addresses in pass 1: large, so that no encoding could get shorter.
const PLACEHOLDER: u32 = mb_abi::IMAGE_BASE;

/// An assembler for one guest, in one pass.
pub struct Asm {
    pub a: CodeAssembler,
    labels: HashMap<String, CodeLabel>,
    /// Label addresses from the previous pass.
    known: HashMap<String, u32>,
    rodata: Vec<(String, Vec<u8>)>,
    fresh: usize,
    /// The guest takes interrupts: emit the interrupt stubs and their IDT gates.
    irqs: bool,
}

/// A guest's program: emits `main` (entered with the runtime set up; must not return).
pub type Program = fn(&mut Asm) -> Result;

/// The assembled guest: its segment bytes and where things are.
pub struct Assembled {
    /// The file part of the segment, loaded at `IMAGE_BASE`.
    pub bytes: Vec<u8>,
    pub entry: u32,
    pub text: (u32, u32),
    pub rodata: (u32, u32),
    /// Named labels (functions, data), sorted by address.
    pub symbols: Vec<(String, u32)>,
}

pub fn assemble(program: Program) -> Result<Assembled> {
    let mut known = HashMap::new();
    let mut previous: Option<Vec<u8>> = None;
    for _pass in 0..2 {
        let mut asm = Asm::new(known.clone())?;
        asm.emit_guest(program)?;
        let (bytes, addresses) = asm.finish()?;
        if let Some(previous) = &previous {
            if previous.len() != bytes.len() || addresses != known {
                return Err("guest layout changed between passes".into());
            }
        }
        previous = Some(bytes);
        known = addresses;
    }
    let bytes = previous.expect("two passes ran");
    if bytes.len() as u32 > layout::BSS - mb_abi::IMAGE_BASE {
        return Err(format!(
            "guest is {} bytes, more than fits before its BSS",
            bytes.len()
        )
        .into());
    }
    let at = |name: &str| known[name];
    let mut symbols: Vec<(String, u32)> = known
        .iter()
        .filter(|(n, _)| !n.starts_with('.'))
        .map(|(n, &a)| (n.clone(), a))
        .collect();
    symbols.sort_by(|x, y| (x.1, &x.0).cmp(&(y.1, &y.0)));
    Ok(Assembled {
        entry: at("_start"),
        text: (at("_start"), at(".text_end")),
        rodata: (at(".text_end"), at(".rodata_end")),
        bytes,
        symbols,
    })
}

impl Asm {
    fn new(known: HashMap<String, u32>) -> Result<Self> {
        Ok(Self {
            a: CodeAssembler::new(32)?,
            labels: HashMap::new(),
            known,
            rodata: Vec::new(),
            fresh: 0,
            irqs: false,
        })
    }

    /// The label called `name`, created on first use.
    pub fn label(&mut self, name: &str) -> CodeLabel {
        if let Some(label) = self.labels.get(name) {
            return *label;
        }
        let label = self.a.create_label();
        self.labels.insert(name.to_owned(), label);
        label
    }

    /// Places label `name` here. A zero-byte instruction carries it, so labels may follow each
    /// other freely.
    pub fn here(&mut self, name: &str) -> Result {
        let mut label = self.label(name);
        self.a.set_label(&mut label)?;
        self.a.zero_bytes()?;
        self.labels.insert(name.to_owned(), label);
        Ok(())
    }

    /// A new unique label name (for local jump targets); names starting with '.' stay out of
    /// the symbol table.
    pub fn fresh(&mut self, what: &str) -> String {
        self.fresh += 1;
        format!(".{what}.{}", self.fresh)
    }

    /// The address of label `name` (as found by the previous pass).
    pub fn addr(&self, name: &str) -> u32 {
        self.known.get(name).copied().unwrap_or(PLACEHOLDER)
    }

    /// Read-only data placed after the code; returns its address.
    pub fn data(&mut self, name: &str, bytes: Vec<u8>) -> u32 {
        if !self.rodata.iter().any(|(n, _)| n == name) {
            self.rodata.push((name.to_owned(), bytes));
        }
        self.addr(name)
    }

    /// A NUL-terminated string in read-only data (shared between uses); returns its address.
    pub fn str(&mut self, text: &str) -> u32 {
        let mut bytes = text.as_bytes().to_vec();
        bytes.push(0);
        self.data(&format!(".str:{text}"), bytes)
    }

    /// Prints `text` on the serial port; changes no register or flag the caller cares about
    /// (flags are clobbered).
    pub fn print(&mut self, text: &str) -> Result {
        let text = self.str(text);
        self.a.push(esi)?;
        self.a.mov(esi, text)?;
        self.call("puts")?;
        Ok(self.a.pop(esi)?)
    }

    /// Prints `eax` in decimal.
    pub fn print_dec_eax(&mut self) -> Result {
        self.call("put_dec")
    }

    /// Prints `eax` as `0x` and 8 hex digits.
    pub fn print_hex_eax(&mut self) -> Result {
        self.call("put_hex")
    }

    pub fn call(&mut self, name: &str) -> Result {
        let label = self.label(name);
        Ok(self.a.call(label)?)
    }

    branches!(jmp, jz, jnz, je, jne, jb, ja, jc, jnc, jae, jbe, jns);

    /// Stops the VM with `code` through the debug-exit port.
    pub fn exit(&mut self, code: u32) -> Result {
        self.a.mov(eax, code)?;
        self.jmp("exit")
    }

    /// Looks up `key` (e.g. `"boot="`) in the command line: CF clear and `eax` = N for a word
    /// `keyN`, or CF set and `eax` = 0. Clobbers `esi` and `edi`.
    pub fn find_arg(&mut self, key: &str) -> Result {
        let key = self.str(key);
        self.a.mov(esi, dword_ptr(layout::VAR_CMDLINE))?;
        self.a.mov(edi, key)?;
        self.call("find_arg")
    }

    /// Runs what `instruction` emits with exceptions expected: on one, execution resumes after
    /// it with `[VAR_FAULT_VECTOR]` = the vector (else it stays `NO_FAULT`). Clobbers `ebp`.
    pub fn guarded(&mut self, instruction: impl FnOnce(&mut Self) -> Result) -> Result {
        let resume = self.fresh("resume");
        let at = self.addr(&resume);
        self.a.mov(ebp, at)?;
        self.call("guard")?;
        instruction(self)?;
        self.here(&resume)?;
        self.call("unguard")
    }

    /// This guest takes external interrupts: vectors 32..32+[`IRQ_VECTORS`] get IDT gates to
    /// stubs that count each arrival in `[VAR_IRQ_COUNTS + 4 * (vector - 32)]` and call the
    /// routine at `[VAR_IRQ_HOOK]` (if not 0) with `eax` = vector, all registers saved. The
    /// hook sends the EOI. Call from the program, before `sti`.
    pub fn interrupts(&mut self) {
        self.irqs = true;
    }

    /// Takes the spinlock at `addr` (a dword, 0 = free): XCHG until it was free, PAUSE while
    /// it is held. For serialising output between CPUs. Clobbers flags only.
    pub fn spin_lock(&mut self, addr: u32) -> Result {
        let (again, taken) = (self.fresh("lock_again"), self.fresh("lock_taken"));
        self.a.push(eax)?;
        self.here(&again)?;
        self.a.mov(eax, 1u32)?;
        self.a.xchg(dword_ptr(addr), eax)?;
        self.a.test(eax, eax)?;
        self.jz(&taken)?;
        self.a.pause()?;
        self.jmp(&again)?;
        self.here(&taken)?;
        Ok(self.a.pop(eax)?)
    }

    /// Releases the spinlock at `addr` (a plain store: x86 stores are not reordered with
    /// earlier loads or stores, SDM Vol. 3A 9.2.2).
    pub fn spin_unlock(&mut self, addr: u32) -> Result {
        Ok(self.a.mov(dword_ptr(addr), 0u32)?)
    }

    /// Prints a line break.
    pub fn newline(&mut self) -> Result {
        self.call("newline")
    }

    fn finish(mut self) -> Result<(Vec<u8>, HashMap<String, u32>)> {
        self.here(".text_end")?;
        for (name, bytes) in std::mem::take(&mut self.rodata) {
            self.here(&name)?;
            self.a.db(&bytes)?;
        }
        self.here(".rodata_end")?;
        let result = self.a.assemble_options(
            u64::from(mb_abi::IMAGE_BASE),
            BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
        )?;
        let mut addresses = HashMap::new();
        for (name, label) in &self.labels {
            let ip = result
                .label_ip(label)
                .map_err(|e| format!("label {name}: {e}"))?;
            addresses.insert(name.clone(), u32::try_from(ip)?);
        }
        Ok((result.inner.code_buffer, addresses))
    }

    /// The whole guest: multiboot header, entry, runtime, program, data.
    fn emit_guest(&mut self, program: Program) -> Result {
        self.multiboot_header()?;
        self.entry()?;
        self.here("main")?;
        program(self)?;
        self.runtime()?;
        self.descriptor_tables()
    }

    /// Spec 3.1.1: at the very start of the segment, so at file offset = segment offset.
    fn multiboot_header(&mut self) -> Result {
        let flags = mb_abi::HEADER_FLAG_MEMORY_INFO;
        let checksum = 0u32.wrapping_sub(mb_abi::HEADER_MAGIC.wrapping_add(flags));
        let mut header = Vec::new();
        for word in [mb_abi::HEADER_MAGIC, flags, checksum, 0] {
            header.extend_from_slice(&word.to_le_bytes());
        }
        self.here(".multiboot")?;
        self.a.db(&header)?;
        Ok(())
    }

    /// Entered per Multiboot: eax = magic, ebx = info, flat CS/DS, GDTR/IDTR undefined.
    fn entry(&mut self) -> Result {
        self.here("_start")?;
        self.a.cli()?;
        self.a.cld()?;
        self.a.mov(esp, layout::STACK_TOP)?;
        // The command line is ours only if a Multiboot loader says it gave one.
        self.a.xor(esi, esi)?;
        self.a.cmp(eax, mb_abi::BOOTLOADER_MAGIC)?;
        let no_info = self.fresh("no_info");
        self.jne(&no_info)?;
        self.a.mov(dword_ptr(layout::VAR_MB_INFO), ebx)?;
        self.a.test(
            dword_ptr(ebx + mb_abi::INFO_FLAGS as i32),
            mb_abi::INFO_FLAG_CMDLINE,
        )?;
        self.jz(&no_info)?;
        self.a
            .mov(esi, dword_ptr(ebx + mb_abi::INFO_CMDLINE as i32))?;
        self.here(&no_info)?;
        self.a.mov(dword_ptr(layout::VAR_CMDLINE), esi)?;
        // Our own GDT, then a far return to reload CS with its code selector.
        let gdtr = self.addr("gdtr");
        self.a.lgdt(ptr(gdtr))?;
        self.a.push(u32::from(layout::CODE_SELECTOR))?;
        let reload = self.addr(".reload_cs");
        self.a.push(reload)?;
        self.a.retf()?;
        self.here(".reload_cs")?;
        self.a.mov(eax, u32::from(layout::DATA_SELECTOR))?;
        for segment in [ds, es, fs, gs, ss] {
            self.a.mov(segment, ax)?;
        }
        let idtr = self.addr("idtr");
        self.a.lidt(ptr(idtr))?;
        self.jmp("main")
    }

    /// Routines every guest may call. Each preserves all registers but its outputs.
    fn runtime(&mut self) -> Result {
        // putc: al = byte. Polls LSR.THRE, as a driver for a real 16550 must.
        self.here("putc")?;
        self.a.push(edx)?;
        self.a.push(eax)?;
        self.a.mov(dx, u32::from(gabi::UART_LSR))?;
        let wait = self.fresh("wait");
        self.here(&wait)?;
        self.a.in_(al, dx)?;
        self.a.test(al, u32::from(gabi::UART_LSR_THRE))?;
        self.jz(&wait)?;
        self.a.pop(eax)?;
        self.a.mov(dx, u32::from(gabi::UART_DATA))?;
        self.a.out(dx, al)?;
        self.a.pop(edx)?;
        self.a.ret()?;

        // puts: esi = NUL-terminated string, or 0 for nothing.
        self.here("puts")?;
        self.a.push(eax)?;
        self.a.push(esi)?;
        let (next, done) = (self.fresh("next"), self.fresh("done"));
        self.a.test(esi, esi)?;
        self.jz(&done)?;
        self.here(&next)?;
        self.a.mov(al, byte_ptr(esi))?;
        self.a.test(al, al)?;
        self.jz(&done)?;
        self.call("putc")?;
        self.a.inc(esi)?;
        self.jmp(&next)?;
        self.here(&done)?;
        self.a.pop(esi)?;
        self.a.pop(eax)?;
        self.a.ret()?;

        // put_dec: eax, unsigned decimal.
        self.here("put_dec")?;
        self.a.pushad()?;
        self.a.mov(ecx, 10u32)?;
        self.a.xor(ebx, ebx)?;
        let (divide, digit) = (self.fresh("divide"), self.fresh("digit"));
        self.here(&divide)?;
        self.a.xor(edx, edx)?;
        self.a.div(ecx)?;
        self.a.push(edx)?;
        self.a.inc(ebx)?;
        self.a.test(eax, eax)?;
        self.jnz(&divide)?;
        self.here(&digit)?;
        self.a.pop(eax)?;
        self.a.add(al, i32::from(b'0'))?;
        self.call("putc")?;
        self.a.dec(ebx)?;
        self.jnz(&digit)?;
        self.a.popad()?;
        self.a.ret()?;

        // put_hex: eax as 0x and 8 lower-case hex digits.
        self.here("put_hex")?;
        self.a.pushad()?;
        self.a.mov(edx, eax)?;
        let prefix = self.str("0x");
        self.a.mov(esi, prefix)?;
        self.call("puts")?;
        self.a.mov(ecx, 8u32)?;
        let (nibble, decimal) = (self.fresh("nibble"), self.fresh("decimal"));
        self.here(&nibble)?;
        self.a.rol(edx, 4)?;
        self.a.mov(al, dl)?;
        self.a.and(al, 0xF)?;
        self.a.cmp(al, 10)?;
        self.jb(&decimal)?;
        self.a.add(al, i32::from(b'a' - 10 - b'0'))?;
        self.here(&decimal)?;
        self.a.add(al, i32::from(b'0'))?;
        self.call("putc")?;
        self.a.dec(ecx)?;
        self.jnz(&nibble)?;
        self.a.popad()?;
        self.a.ret()?;

        // exit: eax = code. If the VM goes on anyway, halt with interrupts off.
        self.here("exit")?;
        self.a.out(u32::from(gabi::DEBUG_EXIT_PORT), eax)?;
        let halt = self.fresh("halt");
        self.here(&halt)?;
        self.a.cli()?;
        self.a.hlt()?;
        self.jmp(&halt)?;

        // guard: ebp = where to resume after an exception. unguard: exceptions unexpected again.
        self.here("guard")?;
        self.a
            .mov(dword_ptr(layout::VAR_FAULT_VECTOR), layout::NO_FAULT)?;
        self.a.mov(dword_ptr(layout::VAR_RESUME), ebp)?;
        self.a.ret()?;
        self.here("unguard")?;
        self.a.mov(dword_ptr(layout::VAR_RESUME), 0u32)?;
        self.a.ret()?;

        // newline
        self.here("newline")?;
        self.print("\n")?;
        self.a.ret()?;

        self.find_arg_routine()?;
        self.exception_handlers()?;
        self.interrupt_handlers()
    }

    /// Stubs for vectors 32.. (see [`Asm::interrupts`]): push the vector, count it, call the
    /// hook, return with IRET.
    fn interrupt_handlers(&mut self) -> Result {
        if !self.irqs {
            return Ok(());
        }
        for vector in EXCEPTION_VECTORS..EXCEPTION_VECTORS + IRQ_VECTORS {
            self.here(&format!("irq_{vector}"))?;
            self.a.push(i32::from(vector))?;
            self.jmp("irq_common")?;
        }
        self.here("irq_common")?;
        self.a.pushad()?;
        self.a.mov(eax, dword_ptr(esp + 32))?;
        self.a.inc(dword_ptr(
            eax * 4 + (layout::VAR_IRQ_COUNTS as i32 - 4 * i32::from(EXCEPTION_VECTORS)),
        ))?;
        self.a.mov(ecx, dword_ptr(layout::VAR_IRQ_HOOK))?;
        let no_hook = self.fresh("no_hook");
        self.a.test(ecx, ecx)?;
        self.jz(&no_hook)?;
        self.a.call(ecx)?;
        self.here(&no_hook)?;
        self.a.popad()?;
        self.a.add(esp, 4)?;
        self.a.iretd()?;
        Ok(())
    }

    /// find_arg: esi = command line or 0, edi = NUL-terminated key (with its '='). Finds the
    /// key at the start of a space-separated word and parses the decimal digits after it.
    /// Out: CF clear and eax = value; or CF set and eax = 0 when the key is absent.
    fn find_arg_routine(&mut self) -> Result {
        let [scan, compare, next, matched, digit, found, absent, out] = [
            "scan", "compare", "next", "matched", "digit", "found", "absent", "out",
        ]
        .map(|n| self.fresh(n));
        self.here("find_arg")?;
        self.a.push(ebx)?;
        self.a.push(ecx)?;
        self.a.push(edx)?;
        self.a.push(esi)?;
        self.a.test(esi, esi)?;
        self.jz(&absent)?;
        self.a.mov(bl, i32::from(b' '))?; // the character before the current one
        self.here(&scan)?;
        self.a.cmp(byte_ptr(esi), 0)?;
        self.je(&absent)?;
        self.a.cmp(bl, i32::from(b' '))?;
        self.jne(&next)?;
        self.a.xor(ecx, ecx)?;
        self.here(&compare)?;
        self.a.mov(dl, byte_ptr(edi + ecx))?;
        self.a.test(dl, dl)?;
        self.jz(&matched)?;
        self.a.cmp(dl, byte_ptr(esi + ecx))?;
        self.jne(&next)?;
        self.a.inc(ecx)?;
        self.jmp(&compare)?;
        self.here(&next)?;
        self.a.mov(bl, byte_ptr(esi))?;
        self.a.inc(esi)?;
        self.jmp(&scan)?;
        self.here(&matched)?;
        self.a.add(esi, ecx)?;
        self.a.xor(eax, eax)?;
        self.here(&digit)?;
        self.a.movzx(edx, byte_ptr(esi))?;
        self.a.sub(edx, i32::from(b'0'))?;
        self.a.cmp(edx, 9)?;
        self.ja(&found)?;
        self.a.imul_3(eax, eax, 10)?;
        self.a.add(eax, edx)?;
        self.a.inc(esi)?;
        self.jmp(&digit)?;
        self.here(&found)?;
        self.a.clc()?;
        self.jmp(&out)?;
        self.here(&absent)?;
        self.a.xor(eax, eax)?;
        self.a.stc()?;
        self.here(&out)?;
        self.a.pop(esi)?;
        self.a.pop(edx)?;
        self.a.pop(ecx)?;
        self.a.pop(ebx)?;
        self.a.ret()?;
        Ok(())
    }

    /// One stub per vector 0..31 pushes (a dummy error code and) the vector. The common part
    /// resumes at `[VAR_RESUME]` if a guarded instruction is running, recording the vector;
    /// otherwise it reports the exception and exits with `EXIT_UNEXPECTED_EXCEPTION`.
    fn exception_handlers(&mut self) -> Result {
        for vector in 0..EXCEPTION_VECTORS {
            self.here(&format!("exception_{vector}"))?;
            if !ERROR_CODE_VECTORS.contains(&vector) {
                self.a.push(0)?;
            }
            self.a.push(i32::from(vector))?;
            self.jmp("exception_common")?;
        }
        // Stack: vector, error code, eip, cs, eflags.
        self.here("exception_common")?;
        self.a.push(eax)?;
        self.a.mov(eax, dword_ptr(layout::VAR_RESUME))?;
        self.a.test(eax, eax)?;
        self.jz("exception_unexpected")?;
        self.a.mov(dword_ptr(esp + 12), eax)?;
        self.a.mov(eax, dword_ptr(esp + 4))?;
        self.a.mov(dword_ptr(layout::VAR_FAULT_VECTOR), eax)?;
        self.a.mov(dword_ptr(layout::VAR_RESUME), 0u32)?;
        self.a.pop(eax)?;
        self.a.add(esp, 8)?;
        self.a.iretd()?;

        self.here("exception_unexpected")?;
        self.print("guest: unexpected exception ")?;
        self.a.mov(eax, dword_ptr(esp + 4))?;
        self.print_dec_eax()?;
        self.print(" error=")?;
        self.a.mov(eax, dword_ptr(esp + 8))?;
        self.print_hex_eax()?;
        self.print(" eip=")?;
        self.a.mov(eax, dword_ptr(esp + 12))?;
        self.print_hex_eax()?;
        self.newline()?;
        self.exit(gabi::EXIT_UNEXPECTED_EXCEPTION)
    }

    /// GDT (null, flat 32-bit code, flat data) and IDT (interrupt gates to the stubs) as
    /// read-only data, with their pseudo-descriptors. SDM Vol. 3A 3.4.5, 6.11.
    fn descriptor_tables(&mut self) -> Result {
        let gdt: Vec<u8> = [0u64, 0x00CF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF]
            .iter()
            .flat_map(|d| d.to_le_bytes())
            .collect();
        let gdt_len = gdt.len();
        let gdt_addr = self.data("gdt", gdt);
        self.data("gdtr", pseudo_descriptor(gdt_len, gdt_addr));

        let mut idt = Vec::new();
        let vectors = EXCEPTION_VECTORS + if self.irqs { IRQ_VECTORS } else { 0 };
        for vector in 0..vectors {
            let handler = if vector < EXCEPTION_VECTORS {
                self.addr(&format!("exception_{vector}"))
            } else {
                self.addr(&format!("irq_{vector}"))
            };
            let gate = u64::from(handler & 0xFFFF)
                | u64::from(layout::CODE_SELECTOR) << 16
                | 0x8E00 << 32 // present, DPL 0, 32-bit interrupt gate
                | u64::from(handler >> 16) << 48;
            idt.extend_from_slice(&gate.to_le_bytes());
        }
        let idt_len = idt.len();
        let idt_addr = self.data("idt", idt);
        self.data("idtr", pseudo_descriptor(idt_len, idt_addr));
        Ok(())
    }
}

/// The 6-byte operand of LGDT/LIDT: limit (length - 1), base.
pub fn pseudo_descriptor(len: usize, base: u32) -> Vec<u8> {
    let mut bytes = (len.saturating_sub(1) as u16).to_le_bytes().to_vec();
    bytes.extend_from_slice(&base.to_le_bytes());
    bytes
}
