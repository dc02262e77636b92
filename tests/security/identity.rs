//! Attack tests: identity (see main.rs).
