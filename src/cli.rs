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
    Status(crate::status::StatusArgs),
    /// Print the version.
    Version,
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
            Command::Status(args) => crate::status::run(args).await,
            Command::Version => {
                println!("portico {}", env!("CARGO_PKG_VERSION"));
                Ok(())
            }
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
