//! Attack tests: amplification (see main.rs).
