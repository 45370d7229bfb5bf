//! Admission webhook: port validation and clusterIP/nodePort allocation.
