//! Pure bitmap allocators for Service ClusterIPs and NodePorts.
#![forbid(unsafe_code)]

pub mod field;
