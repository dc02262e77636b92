//! Attack tests: escalation (see main.rs).
