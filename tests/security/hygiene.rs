//! Attack tests: hygiene (see main.rs).
