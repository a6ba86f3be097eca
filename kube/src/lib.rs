//! Kubernetes objects as kube-apiserver keeps them in etcd: the value envelope (`envelope`),
//! protobuf to kubectl's JSON (`object`) and back (`encode`), against Kubernetes' own types
//! (`types`), and what a kubelet reports (`kubelet_reports`). oxcdctl's `registry` reads with
//! it; the `oxcd-kube` shim reads and writes.

pub mod encode;
pub mod envelope;
pub mod kubelet_reports;
pub mod object;
mod types;
