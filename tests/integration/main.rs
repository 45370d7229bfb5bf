//! Portico's integration suite: everything here runs against a real kube-apiserver and etcd
//! started by `portico-testenv`, one shared control plane for the binary and one namespace per
//! test. Without the binaries every test returns early after the suite printed one line saying
//! it skipped and why.

mod allocation;
mod bootstrap;
mod controllers;
mod endpoints_webhook;
mod ha;
mod harness;
mod leader;
mod mirroring;
mod portico_run;
mod support;
mod webhook;
