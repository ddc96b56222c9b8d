use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use lcm::data::stats::{corpus_stats, normalize_prefix, read_summary, Corpus};
use lcm::data::Tokenizer;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Documents, tokens, length distribution and per-set counts of a corpus (checks
    /// every index entry).
    #[command(after_help = "\
Examples:
  lcm corpus stats data/tokens/sample_train
  lcm corpus stats data/tokens/sample_train.idx --json")]
    Stats(StatsArgs),
    /// One document decoded back to text (or its token ids).
    #[command(after_help = "\
Examples:
  lcm corpus cat data/tokens/sample_train --doc 0
  lcm corpus cat data/tokens/sample_train --doc 12 --ids | head")]
    Cat(CatArgs),
}

#[derive(clap::Args)]
pub struct StatsArgs {
    /// Corpus prefix (PREFIX.bin/.idx or PREFIX.data), or the path of one of its files.
    prefix: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct CatArgs {
    /// Corpus prefix (PREFIX.bin/.idx or PREFIX.data), or the path of one of its files.
    prefix: PathBuf,
    /// Document number, from 0.
    #[arg(long)]
    doc: usize,
    /// Print the token ids, one a line, instead of the text.
    #[arg(long)]
    ids: bool,
    /// Tokenizer to decode with [default: the one PREFIX.json names, else the
    /// GPT-NeoX-20B tokenizer from scripts/setup.sh].
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Stats(a) => {
            let s = corpus_stats(&a.prefix)?;
            let text = if a.json {
                serde_json::to_string_pretty(&s)?
            } else {
                s.to_string()
            };
            // A closed pipe (`| head`) ends the output, not the process with a panic.
            let _ = writeln!(std::io::stdout().lock(), "{text}");
            Ok(())
        }
        Command::Cat(a) => {
            let prefix = normalize_prefix(&a.prefix);
            let summary = read_summary(&prefix);
            let eod = summary.as_ref().map_or(0, |s| s.tokenizer.eod_id);
            let corpus = Corpus::open(&prefix, eod)?;
            let doc = corpus.document(a.doc)?;
            let mut out = std::io::stdout().lock();
            if a.ids {
                for id in doc.iter() {
                    if writeln!(out, "{id}").is_err() {
                        break; // closed pipe (| head)
                    }
                }
                return Ok(());
            }
            let tok_path = a
                .tokenizer
                .or_else(|| {
                    summary
                        .as_ref()
                        .map(|s| s.tokenizer.path.clone())
                        .filter(|p| p.is_file())
                })
                .unwrap_or_else(lcm::info::default_tokenizer_path);
            let eod_token = summary.as_ref().map_or("<|endoftext|>".to_string(), |s| {
                s.tokenizer.eod_token.clone()
            });
            let tok = Tokenizer::load(&tok_path, &eod_token).context("--tokenizer")?;
            let text = tok.decode(&doc.to_vec())?;
            let _ = writeln!(out, "{text}");
            Ok(())
        }
    }
}
