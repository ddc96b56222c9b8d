use std::path::PathBuf;

use anyhow::Result;
use lcm::report::loss::{plot_loss, read_metrics};

#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  lcm plot runs/drt-tiny/metrics.jsonl --out runs/drt-tiny/loss.png"
)]
pub struct Args {
    /// A metrics.jsonl file written by `lcm pretrain`.
    metrics: PathBuf,
    /// The PNG to write (default: loss.png beside the metrics file).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Title of the plot (default: the metrics file's folder).
    #[arg(long)]
    title: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let curves = read_metrics(&args.metrics)?;
    let out = args
        .out
        .unwrap_or_else(|| args.metrics.with_file_name("loss.png"));
    let title = args.title.unwrap_or_else(|| {
        args.metrics
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "loss".into())
    });
    plot_loss(&curves, &title, &out)?;
    println!("{} ({} points)", out.display(), curves.train.len());
    Ok(())
}
