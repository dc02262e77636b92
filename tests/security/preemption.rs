//! Attack tests: preemption (see main.rs).
