//! Shared by the integration tests: a fake hypervisor and a strict reader of our responses.
#![allow(dead_code)]

use net::api::{Backend, Conflict, CpuError, CpuInfo, CpuVirt, Failure, Health, SelfTest, Virt};

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
        }
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
}

/// One response as read back from the wire.
#[derive(Clone, Debug)]
pub struct Resp {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
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
/// line, `Content-Type: application/json`, a `Content-Length` that matches, a `Connection`
/// header, a JSON body; error statuses carry `{"error":{"code","message"}}` and nothing else.
/// Panics on anything else.
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
        assert_eq!(get("content-type").as_deref(), Some("application/json"));
        let len: usize = get("content-length")
            .expect("Content-Length")
            .parse()
            .unwrap();
        assert!(matches!(
            get("connection").as_deref(),
            Some("keep-alive" | "close")
        ));
        assert_eq!(get("allow").is_some(), status == 405, "Allow iff 405");
        let body = &bytes[head_len..head_len + len];
        let body: serde_json::Value = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("body not JSON ({e}): {:?}", String::from_utf8_lossy(body)));
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
        });
        bytes = &bytes[head_len + len..];
    }
    all
}
