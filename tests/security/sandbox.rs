//! Attack tests: sandbox (see main.rs).
