use std::path::{Path, PathBuf};

/// Where the control-plane binaries live.
#[derive(Debug, Clone)]
pub struct Assets {
    /// Path of the kube-apiserver binary.
    pub kube_apiserver: PathBuf,
    /// Path of the etcd binary.
    pub etcd: PathBuf,
    /// Path of kube-controller-manager, when the directory has one (the side-by-side benches
    /// need it; nothing else does).
    pub kube_controller_manager: Option<PathBuf>,
    /// kubectl, from the directory (`scripts/build-k8s` puts PyPI's there), else from `PATH`.
    pub kubectl: Option<PathBuf>,
}

/// The binaries are not there: the one-line reason callers print when they skip.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{source_name}{dir} has no {binary} ({hint})")]
pub struct MissingAssets {
    /// The directory that was searched.
    pub dir: String,
    /// The binary that is missing.
    pub binary: &'static str,
    source_name: &'static str,
    hint: &'static str,
}

/// The Kubernetes release `scripts/build-k8s` builds and the suite is proven against, as
/// `tests/k8s/VERSION` says (`1.37.2`).
pub fn pinned_version() -> &'static str {
    include_str!("../../k8s/VERSION").trim()
}

/// Overrides the release whose cached build is used (`1.34.4`); `scripts/build-k8s` reads it
/// too.
pub const VERSION_ENV: &str = "PORTICO_K8S_VERSION";

impl Assets {
    /// The binaries of the envtest convention's `KUBEBUILDER_ASSETS` when it is set, else those
    /// `scripts/build-k8s` put in its cache for [`pinned_version`] (or `PORTICO_K8S_VERSION`).
    /// etcd may also come from `PATH`.
    pub fn discover() -> Result<Self, MissingAssets> {
        match std::env::var("KUBEBUILDER_ASSETS").ok().filter(|d| !d.is_empty()) {
            Some(dir) => Self::in_dir(
                Path::new(&dir),
                "KUBEBUILDER_ASSETS=",
                "point it at a directory with kube-apiserver",
            ),
            None => Self::in_dir(
                &cache_dir(),
                "scripts/build-k8s's cache ",
                "run scripts/build-k8s, or set KUBEBUILDER_ASSETS",
            ),
        }
    }

    fn in_dir(dir: &Path, source_name: &'static str, hint: &'static str) -> Result<Self, MissingAssets> {
        let missing = |binary| MissingAssets {
            dir: dir.display().to_string(),
            binary,
            source_name,
            hint,
        };
        let kube_apiserver = dir.join("kube-apiserver");
        if !is_executable(&kube_apiserver) {
            return Err(missing("kube-apiserver"));
        }
        let etcd = Some(dir.join("etcd"))
            .filter(|p| is_executable(p))
            .or_else(|| find_on_path("etcd"))
            .ok_or_else(|| missing("etcd (nor is it on PATH)"))?;
        let kube_controller_manager = Some(dir.join("kube-controller-manager")).filter(|p| is_executable(p));
        let kubectl = Some(dir.join("kubectl"))
            .filter(|p| is_executable(p))
            .or_else(|| find_on_path("kubectl"));
        Ok(Assets {
            kube_apiserver,
            etcd,
            kube_controller_manager,
            kubectl,
        })
    }
}

/// `scripts/build-k8s`'s directory for the selected release:
/// `${PORTICO_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/portico/k8s}/v<version>`.
pub fn cache_dir() -> PathBuf {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = var("PORTICO_K8S_CACHE").unwrap_or_else(|| {
        var("XDG_CACHE_HOME")
            .or_else(|| var("HOME").map(|h| h.join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("portico/k8s")
    });
    let version = std::env::var(VERSION_ENV).unwrap_or_default();
    let version = match version.trim().trim_start_matches('v') {
        "" => pinned_version(),
        v => v,
    };
    base.join(format!("v{version}"))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_missing_binary_and_directory() {
        let dir = tempfile::tempdir().unwrap();
        let err = Assets::in_dir(dir.path(), "KUBEBUILDER_ASSETS=", "x").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with(&format!(
            "KUBEBUILDER_ASSETS={} has no kube-apiserver",
            dir.path().display()
        )));
    }

    #[test]
    fn the_pinned_release_is_what_the_go_module_requires() {
        let go_mod = include_str!("../../k8s/go.mod");
        let wanted = format!("k8s.io/kubernetes v{}", pinned_version());
        let required = go_mod.lines().any(|l| {
            let l = l.trim().trim_start_matches("require ");
            l == wanted || l.starts_with(&format!("{wanted} "))
        });
        assert!(required, "tests/k8s/go.mod does not require {wanted}");
        let staging = format!(
            "k8s.io/api => k8s.io/api v0.{}",
            pinned_version().trim_start_matches("1.")
        );
        assert!(
            go_mod.lines().any(|l| l.trim() == staging),
            "tests/k8s/go.mod does not pin the staging modules: `{staging}`"
        );
    }
}
