//! oxcd's Jepsen-style harness: histories of concurrent operations against real clusters under
//! injected faults, and the checkers that judge them.

pub mod checker;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod proxy;
pub mod report;
pub mod runner;
pub mod workload;
