//! envtest-style local control plane.
