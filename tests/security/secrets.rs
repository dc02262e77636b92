//! Attack tests: secrets (see main.rs).
