//! Local APIC (in progress).
