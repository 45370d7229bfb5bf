//! Command-line interface: subcommands and their flags (each with an environment fallback).

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Portico: a Kubernetes Service control plane.
#[derive(Debug, Parser)]
#[command(name = "portico", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "PORTICO_LOG_FORMAT", global = true)]
    pub log_format: LogFormat,
    /// Log filter, in `RUST_LOG` syntax.
    #[arg(long, default_value = "info", env = "PORTICO_LOG", global = true)]
    pub log_level: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a local control plane (etcd + kube-apiserver), run Portico on it and apply a sample.
    Dev(crate::dev::DevArgs),
    /// Run the controllers against a cluster (KUBECONFIG or in-cluster configuration).
    Run(crate::run::RunArgs),
    /// Print the CustomResourceDefinitions Portico uses, as YAML.
    Crds,
    /// Show allocation ranges, repair findings and controller health.
    Status(crate::install_report::StatusArgs),
    /// Print the version, the commit and toolchain it was built from, and the Kubernetes API.
    Version(crate::version::VersionArgs),
}

/// Output format of the commands that report (`status`, `version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
    Yaml,
}

/// `value` as `output` asks: text from `text`, or the value serialized.
pub fn render<T: serde::Serialize>(
    value: &T,
    output: Output,
    text: impl FnOnce(&T) -> String,
) -> anyhow::Result<String> {
    Ok(match output {
        Output::Text => text(value),
        Output::Json => serde_json::to_string_pretty(value)? + "\n",
        Output::Yaml => serde_saphyr::to_string(value)?,
    })
}

impl Command {
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Dev(args) => crate::dev::run(args).await,
            Command::Run(args) => crate::run::run(args).await,
            Command::Crds => {
                let crd = portico_allocation::crd();
                print!("---\n{}", serde_saphyr::to_string(&crd)?);
                Ok(())
            }
            Command::Status(args) => crate::install_report::run(args).await,
            Command::Version(args) => crate::version::run(args),
        }
    }
}

pub fn init_tracing(args: &LogArgs) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every boolean flag of every subcommand, by name.
    fn boolean_flags() -> Vec<(String, String, String)> {
        let cli = Cli::command();
        let mut flags = Vec::new();
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                let is_bool =
                    arg.get_value_parser().type_id() == clap::builder::ValueParser::bool().type_id();
                if let (true, Some(long)) = (is_bool, arg.get_long()) {
                    flags.push((
                        sub.get_name().to_owned(),
                        long.to_owned(),
                        arg.get_id().to_string(),
                    ));
                }
            }
        }
        flags
    }

    /// kube-controller-manager takes `--leader-elect` and `--leader-elect=false` alike; so does
    /// every boolean flag here.
    #[test]
    fn every_boolean_flag_takes_a_bare_and_an_explicit_form() {
        let flags = boolean_flags();
        for name in ["leader-elect", "webhook", "install-crds", "allocation", "once"] {
            assert!(
                flags.iter().any(|(_, l, _)| l == name),
                "{name} not found in {flags:?}"
            );
        }
        for (sub, long, id) in flags {
            for (form, want) in [
                (format!("--{long}"), true),
                (format!("--{long}=true"), true),
                (format!("--{long}=false"), false),
            ] {
                let m = Cli::command()
                    .try_get_matches_from(["portico", &sub, &form])
                    .unwrap_or_else(|e| panic!("portico {sub} {form}: {e}"));
                let got = m
                    .subcommand_matches(&sub)
                    .and_then(|m| m.get_one::<bool>(&id).copied());
                assert_eq!(got, Some(want), "portico {sub} {form}");
            }
        }
    }
}
