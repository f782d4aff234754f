//! Shared by the integration tests: a fake hypervisor and a strict reader of our responses.
#![allow(dead_code)]

use hv::devices::ConsoleRing;
use hv::exit::{ExitKind, StopReason};
use hv::vm::{VmConfig, VmEvent, VmState, VmStats, VmSummary};
use hv::vpmu::PmuConfig;
use net::api::{
    Backend, Conflict, ConsoleRead, CpuError, CpuInfo, CpuVirt, Failure, Health, HostInfo,
    SelfTest, TdxInfo, Virt, VmAction, VmError, VmInfo,
};

/// Console capacity of fake VMs: small, so tests can overrun it.
pub const FAKE_CONSOLE: usize = 16;
/// Most fake VMs.
pub const FAKE_MAX_VMS: usize = 4;
/// Fake memory for guests, MiB.
pub const FAKE_MEMORY_MIB: u32 = 64;

/// One fake VM.
#[derive(Debug)]
pub struct FakeVm {
    pub id: u32,
    pub config: VmConfig,
    pub state: VmState,
    pub pmu: PmuConfig,
    pub console: ConsoleRing<FAKE_CONSOLE>,
    pub stats: VmStats,
    pub image: Option<Vec<u8>>,
    /// Console input queued and not yet read by the "guest" (at most `CONSOLE_INPUT_MAX`).
    pub input: Vec<u8>,
}

impl FakeVm {
    pub fn info(&self) -> VmInfo {
        let summary = VmSummary {
            name: self.config.name.clone(),
            image: self.config.image.clone(),
            state: self.state,
            memory_mib: self.config.memory_mib,
            cpu: self.config.cpu,
            on_crash: self.config.on_crash,
            local_apic: self.config.local_apic,
            strict_mmio: self.config.strict_mmio,
            cmdline: self.config.cmdline.clone(),
            console_bytes: self.console.total_written(),
            stats: self.stats,
        };
        let mut info = VmInfo::new(self.id, summary);
        info.pmu = self.pmu;
        info.running_on = (self.state == VmState::Running).then_some(self.config.cpu.unwrap_or(0));
        info
    }
}

/// One fake CPU.
#[derive(Clone, Debug)]
pub struct FakeCpu {
    pub online: bool,
    pub users: u32,
    pub last_error: Option<&'static str>,
    /// The next online/offline fails with this.
    pub fail: Option<Failure>,
}

/// A fake hypervisor with `n` online CPUs (APIC id = 2 * id) that records the commands it ran.
#[derive(Debug)]
pub struct Fake {
    pub cpus: Vec<FakeCpu>,
    pub virt: Virt,
    pub log: Vec<String>,
    pub rebooting: bool,
    pub vms: Vec<FakeVm>,
    pub next_vm_id: u32,
}

impl Fake {
    pub fn new(n: usize) -> Self {
        let cpu = FakeCpu {
            online: true,
            users: 1,
            last_error: None,
            fail: None,
        };
        Fake {
            cpus: vec![cpu; n],
            virt: Virt::Vmx,
            log: Vec::new(),
            rebooting: false,
            vms: Vec::new(),
            next_vm_id: 1,
        }
    }

    pub fn vm_mut(&mut self, id: u32) -> Result<&mut FakeVm, VmError> {
        self.vms
            .iter_mut()
            .find(|v| v.id == id)
            .ok_or(VmError::NotFound)
    }

    /// Make a VM's guest write `bytes` to its console and exit a few times.
    pub fn guest_output(&mut self, id: u32, bytes: &[u8]) {
        let vm = self.vm_mut(id).unwrap();
        vm.console.push_slice(bytes);
        for _ in 0..bytes.len() {
            vm.stats.exits.record(ExitKind::Io);
        }
    }

    /// Make a running VM stop by itself.
    pub fn guest_exit(&mut self, id: u32, reason: StopReason) {
        let vm = self.vm_mut(id).unwrap();
        vm.state = hv::vm::apply(vm.state, VmEvent::Exited(reason)).unwrap().0;
    }

    fn info(&self, id: u32) -> Result<CpuInfo<'_>, CpuError> {
        let c = self.cpus.get(id as usize).ok_or(CpuError::NotFound)?;
        let mut info = CpuInfo::new(id, id * 2);
        info.online = c.online;
        info.virt = if c.online && c.users > 0 {
            CpuVirt::Vmx
        } else {
            CpuVirt::Off
        };
        info.users = c.users;
        info.selftest = c.online.then_some(SelfTest::Passed);
        info.last_error = c.last_error;
        Ok(info)
    }

    fn transition(&mut self, id: u32, online: bool) -> Result<CpuInfo<'_>, CpuError> {
        self.log.push(format!(
            "{} {id}",
            if online { "online" } else { "offline" }
        ));
        let online_count = self.cpus.iter().filter(|c| c.online).count();
        let c = self.cpus.get_mut(id as usize).ok_or(CpuError::NotFound)?;
        if c.online == online {
            let why = if online {
                Conflict::AlreadyOnline
            } else {
                Conflict::AlreadyOffline
            };
            return Err(CpuError::Conflict(why));
        }
        if !online && online_count == 1 {
            return Err(CpuError::Conflict(Conflict::LastOnline));
        }
        if let Some(f) = c.fail.take() {
            c.last_error = Some("injected failure");
            return Err(CpuError::Failed(f));
        }
        c.online = online;
        c.users = u32::from(online);
        self.info(id)
    }
}

impl Backend for Fake {
    fn health(&self) -> Health<'_> {
        Health::new(net::api::VERSION, self.cpus.len() as u32, self.virt)
    }

    fn cpus(&self, each: &mut dyn FnMut(&CpuInfo<'_>)) {
        for id in 0..self.cpus.len() as u32 {
            each(&self.info(id).unwrap());
        }
    }

    fn cpu(&self, id: u32) -> Result<CpuInfo<'_>, CpuError> {
        self.info(id)
    }

    fn cpu_online(&mut self, id: u32) -> Result<CpuInfo<'_>, CpuError> {
        self.transition(id, true)
    }

    fn cpu_offline(&mut self, id: u32) -> Result<CpuInfo<'_>, CpuError> {
        self.transition(id, false)
    }

    fn reboot(&mut self) -> Result<(), CpuError> {
        if self.rebooting {
            return Err(CpuError::Conflict(Conflict::Rebooting));
        }
        self.rebooting = true;
        Ok(())
    }

    fn host(&self) -> HostInfo {
        let mut f = net::api::UNKNOWN_FEATURES;
        f.vendor = hv::features::Vendor::Intel;
        f.virt = hv::features::VirtKind::Vmx;
        f.nested_paging = true;
        f.vpid = true;
        f.asids = 65535;
        f.x2apic = true;
        f.pmu.version = 2;
        f.pmu.gp_counters = 4;
        f.pmu.fixed_counters = 3;
        let mut h = HostInfo::new(f, TdxInfo::unsupported("TME not enumerated"));
        h.memory_total_bytes = u64::from(FAKE_MEMORY_MIB) << 20;
        let used: u32 = self.vms.iter().map(|v| v.config.memory_mib).sum();
        h.memory_free_bytes = u64::from(FAKE_MEMORY_MIB - used) << 20;
        h.uptime_ms = 12_345;
        h.cpus = self.cpus.len() as u32;
        h.vms = self.vms.len() as u32;
        h
    }

    fn vms(&self, each: &mut dyn FnMut(&VmInfo)) {
        for vm in &self.vms {
            each(&vm.info());
        }
    }

    fn vm(&self, id: u32) -> Result<VmInfo, VmError> {
        self.vms
            .iter()
            .find(|v| v.id == id)
            .map(FakeVm::info)
            .ok_or(VmError::NotFound)
    }

    fn vm_create(
        &mut self,
        config: VmConfig,
        pmu: PmuConfig,
        start: bool,
    ) -> Result<VmInfo, VmError> {
        self.log.push(format!("create {}", config.name));
        config.validate().expect("net validates");
        pmu.validate().expect("net validates");
        if self.vms.iter().any(|v| v.config.name == config.name) {
            return Err(VmError::NameTaken);
        }
        if self.vms.len() == FAKE_MAX_VMS {
            return Err(VmError::TooMany);
        }
        if !matches!(config.image.as_str(), "hello" | "spinner" | "uploaded") {
            return Err(VmError::UnknownImage);
        }
        if matches!(pmu, PmuConfig::Amd { .. }) {
            return Err(VmError::Unsupported("an AMD PMU on an Intel host"));
        }
        if config.cpu.is_some_and(|c| c as usize >= self.cpus.len()) {
            return Err(VmError::Unsupported("no such CPU to pin to"));
        }
        let used: u32 = self.vms.iter().map(|v| v.config.memory_mib).sum();
        if used + config.memory_mib > FAKE_MEMORY_MIB {
            return Err(VmError::NoMemory);
        }
        if start && config.image == hv::vm::ImageRef::Uploaded {
            return Err(VmError::NoImage {
                event: VmEvent::Start,
            });
        }
        let id = self.next_vm_id;
        self.next_vm_id += 1;
        let state = if start {
            VmState::Running
        } else {
            VmState::Created
        };
        self.vms.push(FakeVm {
            id,
            config,
            state,
            pmu,
            console: ConsoleRing::new(),
            stats: VmStats::default(),
            image: None,
            input: Vec::new(),
        });
        self.vm(id)
    }

    fn vm_action(&mut self, id: u32, action: VmAction) -> Result<VmInfo, VmError> {
        self.log.push(format!("{} {id}", action.as_str()));
        let vm = self.vm_mut(id)?;
        let event = action.event();
        let runs = matches!(event, VmEvent::Start | VmEvent::Reset(_));
        if runs && vm.config.image == hv::vm::ImageRef::Uploaded && vm.image.is_none() {
            return Err(VmError::NoImage { event });
        }
        let (state, _effect) = hv::vm::apply(vm.state, event)?;
        vm.state = state;
        if let VmEvent::Reset(t) = action.event() {
            vm.stats.resets[t.index()] += 1;
        }
        self.vm(id)
    }

    fn vm_delete(&mut self, id: u32) -> Result<(), VmError> {
        self.log.push(format!("delete {id}"));
        let vm = self.vm_mut(id)?;
        hv::vm::apply(vm.state, VmEvent::Delete)?;
        self.vms.retain(|v| v.id != id);
        Ok(())
    }

    fn vm_console(&self, id: u32, offset: u64, buf: &mut [u8]) -> Result<ConsoleRead, VmError> {
        let vm = self
            .vms
            .iter()
            .find(|v| v.id == id)
            .ok_or(VmError::NotFound)?;
        Ok(vm.console.read(offset, buf))
    }

    fn vm_console_input(
        &mut self,
        id: u32,
        bytes: &[u8],
    ) -> Result<net::api::ConsoleInput, VmError> {
        self.log.push(format!("input {id} {}", bytes.len()));
        let vm = self.vm_mut(id)?;
        if !matches!(vm.state, VmState::Running | VmState::Paused) {
            return Err(VmError::InputWhile { from: vm.state });
        }
        let free = net::api::CONSOLE_INPUT_MAX - vm.input.len();
        if bytes.len() > free {
            return Err(VmError::InputFull {
                free: free as u32,
                needed: bytes.len() as u32,
            });
        }
        vm.input.extend_from_slice(bytes);
        Ok(net::api::ConsoleInput::new(
            bytes.len() as u32,
            vm.input.len() as u32,
        ))
    }

    fn vm_set_pmu(&mut self, id: u32, pmu: PmuConfig) -> Result<VmInfo, VmError> {
        let vm = self.vm_mut(id)?;
        if matches!(pmu, PmuConfig::Amd { .. }) {
            return Err(VmError::Unsupported("an AMD PMU on an Intel host"));
        }
        vm.pmu = pmu;
        self.vm(id)
    }

    fn vm_pmu(&self, id: u32) -> Result<net::api::PmuInfo, VmError> {
        let vm = self.vm(id)?;
        let vendor = hv::features::Vendor::Intel;
        Ok(net::api::PmuInfo {
            config: vm.pmu,
            pending: None,
            state: hv::vpmu::VpmuState::reset(&vm.pmu, vendor),
            backing: "none",
            probe_digest: hv::vpmu::probe::probe_digest(&vm.pmu, vendor),
        })
    }

    fn vm_upload_allowed(&self, id: u32) -> Result<(), VmError> {
        let vm = self
            .vms
            .iter()
            .find(|v| v.id == id)
            .ok_or(VmError::NotFound)?;
        match vm.state {
            VmState::Running | VmState::Paused => Err(VmError::UploadWhile { from: vm.state }),
            _ => Ok(()),
        }
    }

    fn vm_image(&mut self, id: u32, image: &[u8]) -> Result<VmInfo, VmError> {
        self.vm_upload_allowed(id)?;
        let vm = self.vm_mut(id)?;
        if !image.starts_with(b"\x7fELF") {
            return Err(VmError::BadImage("not an ELF file"));
        }
        vm.image = Some(image.to_vec());
        vm.config.image = hv::vm::ImageRef::Uploaded;
        self.vm(id)
    }

    fn vm_initrd(&mut self, id: u32, initrd: &[u8]) -> Result<VmInfo, VmError> {
        self.vm_upload_allowed(id)?;
        self.vm_mut(id)?;
        // As the kernel: an initrd must fit the VM's RAM with its image.
        if initrd.starts_with(b"MZ") {
            return Err(VmError::BadImage("initrd too large for the VM's RAM"));
        }
        self.vm(id)
    }
}

/// One response as read back from the wire.
#[derive(Clone, Debug)]
pub struct Resp {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    /// The body as JSON (`Null` for 204 and for non-JSON bodies).
    pub body: serde_json::Value,
    /// The body's bytes.
    pub raw: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn keep_alive(&self) -> bool {
        match self.header("connection") {
            Some("keep-alive") => true,
            Some("close") => false,
            other => panic!("bad Connection header {other:?}"),
        }
    }

    /// `error.code` of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error: {self:?}"))
    }

    pub fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap()
    }
}

/// Reads back every response in `bytes`, checking that each is well formed: HTTP/1.1 status
/// line, `Content-Type: application/json` (or octet-stream for the console, the Prometheus
/// type for metrics), a `Content-Length` that matches (none, and no body, for 204), a
/// `Connection` header, a JSON body where JSON is announced; error statuses carry
/// `{"error":{"code","message"}}` and nothing else. Panics on anything else.
pub fn read_responses(mut bytes: &[u8]) -> Vec<Resp> {
    let mut all = Vec::new();
    while !bytes.is_empty() {
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut slots);
        let head_len = match r.parse(bytes) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "bad response head {other:?}: {:?}",
                String::from_utf8_lossy(bytes)
            ),
        };
        assert_eq!(r.version, Some(1));
        let status = r.code.unwrap();
        let reason = r.reason.unwrap().to_string();
        let headers: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect();
        let get = |name: &str| {
            let mut it = headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
            let v = it.next().map(|(_, v)| v.clone());
            assert!(it.next().is_none(), "duplicate {name}");
            v
        };
        let ctype = get("content-type");
        if status == 204 {
            assert_eq!(ctype, None);
            assert_eq!(get("content-length"), None);
        } else if status >= 400 {
            assert_eq!(ctype.as_deref(), Some("application/json"));
        } else {
            assert!(
                matches!(
                    ctype.as_deref(),
                    Some(
                        "application/json"
                            | "application/octet-stream"
                            | "text/plain; version=0.0.4; charset=utf-8"
                    )
                ),
                "{ctype:?}"
            );
        }
        assert_eq!(
            get("www-authenticate").is_some(),
            status == 401,
            "WWW-Authenticate iff 401"
        );
        let len: usize = if status == 204 {
            0
        } else {
            get("content-length")
                .expect("Content-Length")
                .parse()
                .unwrap()
        };
        assert!(matches!(
            get("connection").as_deref(),
            Some("keep-alive" | "close")
        ));
        assert_eq!(get("allow").is_some(), status == 405, "Allow iff 405");
        let raw = bytes[head_len..head_len + len].to_vec();
        let body: serde_json::Value = if ctype.as_deref() == Some("application/json") {
            serde_json::from_slice(&raw).unwrap_or_else(|e| {
                panic!("body not JSON ({e}): {:?}", String::from_utf8_lossy(&raw))
            })
        } else {
            serde_json::Value::Null
        };
        if status >= 400 {
            let obj = body.as_object().expect("object");
            assert_eq!(obj.len(), 1, "{body}");
            let err = body["error"].as_object().expect("error object");
            let code = err["code"].as_str().expect("code");
            assert!(!code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!(err["message"].is_string());
            assert!(
                err.keys()
                    .all(|k| ["code", "message", "reason"].contains(&k.as_str()))
            );
        }
        all.push(Resp {
            status,
            reason,
            headers,
            body,
            raw,
        });
        bytes = &bytes[head_len + len..];
    }
    all
}
