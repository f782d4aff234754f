//! Where a vCPU's VMCS lives, and what the next VM entry must do about it.
//!
//! Why: a VMCS is *active* on at most one logical processor at a time, and while it is, that
//! processor may keep (part of) its data cached inside the CPU; only VMCLEAR on that processor
//! writes it back and makes the VMCS *inactive* with launch state *clear*. VMLAUNCH needs launch
//! state clear, VMRESUME needs launched; VMPTRLD of a VMCS active on another processor is
//! undefined (SDM vol. 3C "Virtual Machine Control Structures", sections "VMCS Life Cycle" /
//! "Software Use of the VMCS and Related Structures": "a VMCS should be made active on only one
//! logical processor at a time ... software should execute VMCLEAR before migrating it").
//! Getting this wrong corrupts guests silently, and the moves that trigger it (a CPU taken
//! offline, a VM placed elsewhere) cannot be exercised in Bochs (one CPU there), so the rules
//! are a pure function here, tested on the host:
//!
//! - [`plan_entry`]: given where the VMCS is and which CPU wants to enter, VMPTRLD or not,
//!   VMLAUNCH or VMRESUME, whether to rewrite the host-state area and flush translations, or
//!   refuse because the VMCS is still active on another CPU (it must be VMCLEARed there first);
//! - [`Residency::entered`] / [`Residency::cleared`]: the state after an entry attempt and
//!   after VMCLEAR (the per-CPU VMCLEAR before VMXOFF, and the one before a VMCS is freed).
#![forbid(unsafe_code)]

/// Where a VMCS is, as the hypervisor tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Residency {
    /// Not active on any CPU, launch state clear: a fresh VMCS (after its first VMCLEAR) or one
    /// VMCLEARed since its last run. The next entry, on any CPU, is VMPTRLD + VMLAUNCH.
    #[default]
    Clear,
    /// Active on `cpu` (VMPTRLD ran there, no VMCLEAR since). `launched` once a VMLAUNCH there
    /// succeeded (the guest ran): the next entry there is VMRESUME.
    Active {
        /// The CPU it is active on.
        cpu: usize,
        /// Launch state "launched".
        launched: bool,
    },
}

/// What to do before entering the guest (in this order: VMPTRLD, host state, flush, enter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryPlan {
    /// VMPTRLD: the VMCS is not the current VMCS of this CPU.
    pub load: bool,
    /// Write the host-state area: first entry on this CPU since the VMCS became active here,
    /// or another VMCS was current in between (the host values are this CPU's: TR, GDTR, IDTR,
    /// GS base differ between CPUs).
    pub write_host: bool,
    /// Flush translations tagged with this vCPU's EPTP and VPID (INVEPT/INVVPID): first entry
    /// on this CPU since the VMCS was cleared. The CPU may still hold translations made for
    /// this EPTP/VPID by an earlier stay here, or by a freed vCPU whose tables sat at the same
    /// address.
    pub flush: bool,
    /// VMLAUNCH (launch state clear) rather than VMRESUME.
    pub launch: bool,
}

/// Why the vCPU cannot be entered on this CPU now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResidencyError {
    /// The VMCS is still active on another CPU: it must be VMCLEARed there first. The kernel
    /// never moves a VM before its old CPU cleared it (VMCLEAR before VMXOFF), so this is a bug
    /// guard: the VM stops instead of corrupting its VMCS.
    ActiveElsewhere {
        /// Where it is active.
        cpu: usize,
    },
}

/// Decide how to enter on CPU `here`. `current_here` says whether the VMCS is this CPU's
/// current VMCS right now (VMPTRST): another VMCS (a second vCPU, the self-test) may have been
/// loaded since this one ran, which leaves it active but not current.
pub const fn plan_entry(
    r: Residency,
    here: usize,
    current_here: bool,
) -> Result<EntryPlan, ResidencyError> {
    match r {
        Residency::Clear => Ok(EntryPlan {
            load: true,
            write_host: true,
            flush: true,
            launch: true,
        }),
        Residency::Active { cpu, .. } if cpu != here => {
            Err(ResidencyError::ActiveElsewhere { cpu })
        }
        Residency::Active { launched, .. } => Ok(EntryPlan {
            load: !current_here,
            write_host: !current_here,
            flush: false,
            launch: !launched,
        }),
    }
}

impl Residency {
    /// After an entry attempt on `here` following [`plan_entry`]: active there; launched if
    /// the guest ran (`launched_ok`: a VM exit), or as before if VMLAUNCH/VMRESUME itself
    /// failed (VMfail: nothing changed). A VM-entry failure *after* guest state was loaded
    /// (exit reason bit 31) leaves the launch state in doubt; the kernel VMCLEARs the VMCS then
    /// ([`Residency::cleared`]), so the next entry is a VMLAUNCH whatever the CPU did.
    pub const fn entered(self, here: usize, launched_ok: bool) -> Self {
        let was = match self {
            Residency::Active { cpu, launched } if cpu == here => launched,
            _ => false,
        };
        Residency::Active {
            cpu: here,
            launched: was || launched_ok,
        }
    }

    /// After VMCLEAR (on the CPU it was active on).
    pub const fn cleared(self) -> Self {
        Residency::Clear
    }

    /// The CPU whose VMCLEAR this VMCS needs before it may be freed or run elsewhere.
    pub const fn needs_clear_on(self) -> Option<usize> {
        match self {
            Residency::Clear => None,
            Residency::Active { cpu, .. } => Some(cpu),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: usize = 0;
    const B: usize = 1;

    /// A recording fake of one CPU-and-VMCS world: which VMCS is current/active on each CPU
    /// and the launch state the hardware keeps, driven by what the plan says to do.
    #[derive(Default)]
    struct Hw {
        /// Per CPU: the current VMCS is ours.
        current: [bool; 2],
        /// The CPU on which ours is active (hardware truth).
        active_on: Option<usize>,
        /// Hardware launch state of ours.
        launched: bool,
    }

    impl Hw {
        /// Execute one entry on `cpu` by the plan; panics where the hardware would misbehave.
        fn enter(&mut self, r: Residency, cpu: usize) -> Result<Residency, ResidencyError> {
            let plan = plan_entry(r, cpu, self.current[cpu])?;
            if plan.load {
                assert!(
                    self.active_on.is_none() || self.active_on == Some(cpu),
                    "VMPTRLD of a VMCS active on another CPU"
                );
                self.current = [false; 2];
                self.current[cpu] = true;
                self.active_on = Some(cpu);
            }
            assert!(self.current[cpu], "entry without a current VMCS");
            // VMLAUNCH needs clear, VMRESUME needs launched: else VMfailValid.
            assert_eq!(plan.launch, !self.launched, "launch/resume mismatch");
            self.launched = true;
            Ok(r.entered(cpu, true))
        }

        fn clear(&mut self, r: Residency, cpu: usize) -> Residency {
            assert_eq!(r.needs_clear_on(), Some(cpu));
            self.current[cpu] = false;
            self.active_on = None;
            self.launched = false;
            r.cleared()
        }

        /// Another VMCS (second vCPU, self-test) becomes current on `cpu`.
        fn other_loaded(&mut self, cpu: usize) {
            self.current[cpu] = false;
        }
    }

    #[test]
    fn fresh_vmcs_is_loaded_launched_flushed_and_given_host_state() {
        let p = plan_entry(Residency::Clear, A, false).unwrap();
        assert_eq!(
            p,
            EntryPlan {
                load: true,
                write_host: true,
                flush: true,
                launch: true
            }
        );
    }

    #[test]
    fn second_entry_on_same_cpu_resumes_without_reloading() {
        let r = Residency::Clear.entered(A, true);
        let p = plan_entry(r, A, true).unwrap();
        assert_eq!(
            p,
            EntryPlan {
                load: false,
                write_host: false,
                flush: false,
                launch: false
            }
        );
    }

    #[test]
    fn another_vmcs_loaded_in_between_means_vmptrld_and_host_state_but_resume() {
        let r = Residency::Clear.entered(A, true);
        let p = plan_entry(r, A, false).unwrap();
        assert!(p.load && p.write_host && !p.launch && !p.flush);
    }

    #[test]
    fn moving_without_vmclear_is_refused() {
        let r = Residency::Clear.entered(A, true);
        assert_eq!(
            plan_entry(r, B, false),
            Err(ResidencyError::ActiveElsewhere { cpu: A })
        );
    }

    #[test]
    fn after_vmclear_the_next_cpu_launches() {
        let r = Residency::Clear.entered(A, true).cleared();
        let p = plan_entry(r, B, false).unwrap();
        assert!(p.load && p.launch && p.flush && p.write_host);
    }

    #[test]
    fn failed_vmlaunch_keeps_launch_state_clear() {
        let r = Residency::Clear.entered(A, false);
        assert_eq!(
            r,
            Residency::Active {
                cpu: A,
                launched: false
            }
        );
        assert!(plan_entry(r, A, true).unwrap().launch);
        // ...and a failed VMRESUME keeps it launched.
        let r = r.entered(A, true).entered(A, false);
        assert!(!plan_entry(r, A, true).unwrap().launch);
    }

    #[test]
    fn freeing_needs_clear_only_while_active() {
        assert_eq!(Residency::Clear.needs_clear_on(), None);
        assert_eq!(Residency::Clear.entered(B, false).needs_clear_on(), Some(B));
    }

    /// Random walks: enter on either CPU, VMCLEAR (offline of the CPU it is on), another VMCS
    /// loaded. Whenever the plan lets an entry go ahead, the fake hardware agrees; a refusal
    /// happens exactly when the VMCS is active on the other CPU.
    #[test]
    fn random_sequences_never_misuse_the_hardware() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2_000 {
            let mut hw = Hw::default();
            let mut r = Residency::Clear;
            for _ in 0..50 {
                let cpu = (next() % 2) as usize;
                match next() % 4 {
                    0 | 1 => match hw.enter(r, cpu) {
                        Ok(n) => r = n,
                        Err(ResidencyError::ActiveElsewhere { cpu: on }) => {
                            assert_eq!(hw.active_on, Some(on));
                            assert_ne!(on, cpu);
                        }
                    },
                    2 => {
                        if let Some(on) = r.needs_clear_on() {
                            r = hw.clear(r, on);
                        }
                    }
                    _ => hw.other_loaded(cpu),
                }
                // Bookkeeping and hardware agree.
                assert_eq!(r.needs_clear_on(), hw.active_on);
            }
        }
    }
}
