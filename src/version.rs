//! `portico version`: what was built, from what, for which Kubernetes API (as `kubectl version`
//! says which API it speaks).

use clap::Args;
use serde::Serialize;

/// Flags of `portico version`.
#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = crate::cli::Output::Text)]
    pub output: crate::cli::Output,
}

/// The build's facts (field names as `kubectl version -o json` spells its own).
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Info {
    pub version: &'static str,
    pub git_commit: &'static str,
    pub build_date: &'static str,
    pub rustc_version: &'static str,
    /// The Kubernetes API version the client types were generated for (k8s-openapi's feature).
    pub kubernetes_api_version: &'static str,
    pub platform: &'static str,
}

impl Info {
    pub fn of_this_build() -> Self {
        Info {
            version: env!("CARGO_PKG_VERSION"),
            git_commit: env!("PORTICO_GIT_COMMIT"),
            build_date: env!("PORTICO_BUILD_DATE"),
            rustc_version: env!("PORTICO_RUSTC_VERSION"),
            kubernetes_api_version: env!("PORTICO_KUBERNETES_API"),
            platform: env!("PORTICO_TARGET"),
        }
    }

    fn text(&self) -> String {
        format!(
            "portico {}\n  commit:          {}\n  built:           {}\n  rustc:           {}\n  \
             kubernetes API:  {} (the k8s-openapi types it was compiled with)\n  \
             platform:        {}\n",
            self.version,
            self.git_commit,
            self.build_date,
            self.rustc_version,
            self.kubernetes_api_version,
            self.platform
        )
    }
}

pub fn run(args: VersionArgs) -> anyhow::Result<()> {
    print!(
        "{}",
        crate::cli::render(&Info::of_this_build(), args.output, Info::text)?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fact_is_known_in_a_build_from_git() {
        let info = Info::of_this_build();
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
        // The binary crate enables k8s-openapi's v1_33 feature.
        assert_eq!(info.kubernetes_api_version, "1.33");
        assert!(info.rustc_version.starts_with("rustc 1."), "{info:?}");
        assert!(!info.platform.is_empty());
        // The tests run from a git checkout (CI clones), so the commit and its date are known.
        assert!(
            info.git_commit.len() >= 7 && info.git_commit != "unknown",
            "{info:?}"
        );
        assert!(info.build_date.ends_with('Z'), "{info:?}");
    }

    #[test]
    fn json_output_is_machine_readable() {
        let info = Info::of_this_build();
        let text = crate::cli::render(&info, crate::cli::Output::Json, Info::text).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["version"], info.version);
        assert_eq!(v["kubernetesApiVersion"], "1.33");
        assert_eq!(v["gitCommit"], info.git_commit);
        let text = crate::cli::render(&info, crate::cli::Output::Text, Info::text).unwrap();
        assert!(text.starts_with(&format!("portico {}\n", info.version)), "{text}");
    }
}
