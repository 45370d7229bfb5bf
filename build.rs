//! Build facts for `portico version`: the commit, when it was made, the compiler, and the
//! Kubernetes API version k8s-openapi was compiled for. Each comes from the environment when
//! the build sets it (container builds have no `.git`), else from git and rustc.

use std::process::Command;

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    // UTC, so git's and date's local-time formats are what the trailing `Z` says.
    let out = Command::new(cmd).args(args).env("TZ", "UTC").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    for var in ["PORTICO_GIT_COMMIT", "PORTICO_BUILD_DATE", "SOURCE_DATE_EPOCH"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    // A new commit re-runs this script; an edit of the working tree does not (no "-dirty").
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo::rerun-if-changed={path}");
        }
    }
    let commit = std::env::var("PORTICO_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| run("git", &["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // Reproducible: the commit's own time rather than the clock.
    let date = std::env::var("PORTICO_BUILD_DATE")
        .ok()
        .filter(|d| !d.is_empty())
        .or_else(|| {
            let epoch = std::env::var("SOURCE_DATE_EPOCH").ok()?;
            run("date", &["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%dT%H:%M:%SZ"])
        })
        .or_else(|| {
            run(
                "git",
                &[
                    "log",
                    "-1",
                    "--date=format-local:%Y-%m-%dT%H:%M:%SZ",
                    "--format=%cd",
                ],
            )
        })
        .unwrap_or_else(|| "unknown".into());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc = run(&rustc, &["--version"]).unwrap_or_else(|| "unknown".into());
    // k8s-openapi's build script publishes the enabled version as links metadata:
    // 0x00_01_MM_00 for 1.MM.
    let kubernetes = std::env::vars()
        .find(|(k, _)| k.starts_with("DEP_K8S_OPENAPI") && k.ends_with("_VERSION"))
        .and_then(|(_, v)| v.parse::<u32>().ok())
        .map(|v| format!("{}.{}", (v >> 16) & 0xff, (v >> 8) & 0xff))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo::rustc-env=PORTICO_GIT_COMMIT={commit}");
    println!("cargo::rustc-env=PORTICO_BUILD_DATE={date}");
    println!("cargo::rustc-env=PORTICO_RUSTC_VERSION={rustc}");
    println!("cargo::rustc-env=PORTICO_KUBERNETES_API={kubernetes}");
    println!(
        "cargo::rustc-env=PORTICO_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
}
