//! Workloads: what the clients of a test do and how their operations are recorded.

pub mod register;
