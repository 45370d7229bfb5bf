use std::path::{Path, PathBuf};

/// Where the apiserver and etcd binaries live.
#[derive(Debug, Clone)]
pub struct Assets {
    /// Path of the kube-apiserver binary.
    pub kube_apiserver: PathBuf,
    /// Path of the etcd binary.
    pub etcd: PathBuf,
}

/// The binaries are not there: the one-line reason callers print when they skip.
#[derive(Debug, Clone, thiserror::Error)]
#[error("KUBEBUILDER_ASSETS={dir} has no {binary}{hint}")]
pub struct MissingAssets {
    /// The directory that was searched.
    pub dir: String,
    /// The binary that is missing.
    pub binary: &'static str,
    hint: &'static str,
}

/// The envtest convention's default location.
pub const DEFAULT_ASSETS_DIR: &str = "/usr/local/kubebuilder/bin";

const HINT: &str = " (install kube-apiserver and etcd there, e.g. `setup-envtest use -p path` on a machine that \
                    can download them, or point KUBEBUILDER_ASSETS elsewhere)";

impl Assets {
    /// Finds kube-apiserver in `$KUBEBUILDER_ASSETS` and etcd there or on `PATH`.
    pub fn discover() -> Result<Self, MissingAssets> {
        let dir = std::env::var("KUBEBUILDER_ASSETS")
            .ok()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| DEFAULT_ASSETS_DIR.to_owned());
        Self::in_dir(Path::new(&dir))
    }

    /// Finds the binaries in `dir` (etcd may also come from `PATH`).
    pub fn in_dir(dir: &Path) -> Result<Self, MissingAssets> {
        let missing = |binary| MissingAssets {
            dir: dir.display().to_string(),
            binary,
            hint: HINT,
        };
        let kube_apiserver = dir.join("kube-apiserver");
        if !is_executable(&kube_apiserver) {
            return Err(missing("kube-apiserver"));
        }
        let etcd = Some(dir.join("etcd"))
            .filter(|p| is_executable(p))
            .or_else(|| find_on_path("etcd"))
            .ok_or_else(|| missing("etcd (nor is it on PATH)"))?;
        Ok(Assets { kube_apiserver, etcd })
    }
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
        let err = Assets::in_dir(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with(&format!(
            "KUBEBUILDER_ASSETS={} has no kube-apiserver",
            dir.path().display()
        )));
    }
}
