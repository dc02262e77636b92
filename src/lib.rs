//! The `meridian` binary's library: command line, admin API client, process wiring for `dev` and
//! `coordinator`.
//!
//! The domain lives in the `coordinator`, `agent`, `protocol` and `certs` crates; this crate only assembles
//! processes and speaks to people.

pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod context;
pub mod dev;
pub(crate) mod gateway_source;
pub mod master_key_env;
pub mod output;
pub mod server;
