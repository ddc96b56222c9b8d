use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use lcm::data::tokenizer::Tokenizer;
use lcm::eval::{Engine, GenerateOptions, Generator, Sampling};

use super::{parse_device, parse_offload, EngineArgs};

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("input").required(true).args(["prompt", "prompt_file"]))]
#[command(after_help = "Examples:
  lcm generate --checkpoint models/drt-niah-c8 --prompt 'The pass key is 71432. Remember it.'
  lcm generate --checkpoint runs/drt-tiny --prompt-file book.txt --max-new-tokens 200
  lcm generate --checkpoint runs/drt-tiny --prompt-file q.txt --temperature 0.8 --top-p 0.95 --seed 3
  lcm generate --checkpoint runs/passkey-toy --ids --prompt '12 40 33 7' --max-new-tokens 8

The prompt, of any length, is prefilled segment by segment (as `lcm eval`); the tokens
then come one at a time from the caches and stream to stdout. Temperature 0 (the default)
is greedy: each token is the argmax of the full forward over everything before it.")]
pub struct Args {
    /// A checkpoint folder (step-*), a run folder (its newest checkpoint) or an exported model.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The prompt as text (token ids with --ids).
    #[arg(long)]
    prompt: Option<String>,
    /// A file holding the prompt (text; token ids with --ids).
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Softmax temperature; 0 is greedy (the argmax).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f64,
    /// Sample only among the K most likely tokens.
    #[arg(long, value_name = "K")]
    top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities sum to P, in (0, 1].
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    top_p: Option<f64>,
    /// Seed of the sampling draws (the same seed gives the same tokens).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after the tokenizer's end-of-document token.
    #[arg(long)]
    stop_at_eod: bool,
    /// Token ids in and out: the prompt is ids separated by spaces, commas or newlines, and
    /// each generated id is printed on its own line (no tokenizer needed).
    #[arg(long)]
    ids: bool,
    /// tokenizer.json [default: the NeoX tokenizer from set-up].
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
}

/// The prompt's text and where it came from (for errors).
fn prompt_text(args: &Args) -> Result<(String, String)> {
    match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => Ok((p.clone(), "--prompt".into())),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("--prompt-file {}", f.display()))?;
            Ok((text, format!("--prompt-file {}", f.display())))
        }
        (None, None) => bail!("give the prompt with --prompt or --prompt-file"),
    }
}

fn parse_ids(text: &str, origin: &str) -> Result<Vec<i64>> {
    text.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<i64>()
                .ok()
                .filter(|&id| id >= 0)
                .with_context(|| format!("{origin}: `{s}` is not a token id (--ids)"))
        })
        .collect()
}

pub fn run(args: Args) -> Result<()> {
    let sampling = Sampling {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        bail!(
            "--temperature {}: expected a number >= 0 (0 = greedy)",
            args.temperature
        );
    }
    if let Some(p) = args.top_p {
        if !(p > 0.0 && p <= 1.0) {
            bail!("--top-p {p}: expected a value in (0, 1]");
        }
    }
    if args.top_k == Some(0) {
        bail!("--top-k 0: expected at least 1");
    }
    let device = parse_device(args.engine.device.as_deref())?;
    let placement = parse_offload(args.engine.offload.as_deref())?;
    let (text, origin) = prompt_text(&args)?;
    let tokenizer = if args.ids && !args.stop_at_eod {
        None
    } else {
        let tok = match &args.tokenizer {
            Some(path) => Tokenizer::load(path, "<|endoftext|>").context("--tokenizer"),
            None => Tokenizer::load(&lcm::info::default_tokenizer_path(), "<|endoftext|>").context(
                "the default tokenizer (scripts/setup.sh fetches it; or give --tokenizer, \
                     or token ids with --ids)",
            ),
        };
        Some(tok?)
    };
    let prompt: Vec<i64> = match (&tokenizer, args.ids) {
        (Some(tok), false) => {
            let mut ids = Vec::new();
            tok.encode_into(&text, &mut ids)
                .map_err(|e| anyhow::anyhow!("{origin}: tokenizing failed: {e}"))?;
            ids.into_iter().map(i64::from).collect()
        }
        _ => parse_ids(&text, &origin)?,
    };
    if prompt.is_empty() {
        bail!("{origin}: the prompt is empty (generation needs at least one token)");
    }
    let engine = Engine::load(&args.checkpoint, device)
        .with_context(|| format!("loading {}", args.checkpoint.display()))?;
    let vocab = engine.config().vocab_size;
    if let Some(&id) = prompt.iter().find(|&&id| id >= vocab) {
        if args.ids {
            bail!("{origin}: token id {id} is outside the model's vocabulary of {vocab}");
        }
        bail!(
            "{origin}: the tokenizer gives id {id}, outside the model's vocabulary of {vocab} \
             (is --tokenizer the one the model was trained with?)"
        );
    }
    let opts = GenerateOptions {
        segment: args.engine.segment,
        placement,
        max_new_tokens: args.max_new_tokens,
    };
    let mut generator =
        Generator::new(&engine, &prompt, sampling, &opts).with_context(|| origin.clone())?;
    if let (Some(tok), false) = (&tokenizer, args.ids) {
        generator.limit_vocab(tok.vocab_size() as i64);
    }
    let eod = tokenizer
        .as_ref()
        .filter(|_| args.stop_at_eod)
        .map(|t| t.eod() as i64);
    let mut out = std::io::stdout().lock();
    let mut stream = TextStream::default();
    for _ in 0..args.max_new_tokens {
        let id = generator.next_token()?;
        let piece = match &tokenizer {
            Some(tok) if !args.ids => {
                stream.ids.push(id as u32);
                stream.take_new(tok, false)?
            }
            _ => format!("{id}\n"),
        };
        if !emit(&mut out, &piece)? {
            return Ok(());
        }
        if Some(id) == eod {
            break;
        }
    }
    if let (Some(tok), false) = (&tokenizer, args.ids) {
        let rest = stream.take_new(tok, true)?;
        emit(&mut out, &(rest + "\n"))?;
    }
    Ok(())
}

/// Writes and flushes `piece` (the tokens stream as they come); false once stdout is closed
/// (`| head`), which ends the generation quietly.
fn emit(out: &mut impl Write, piece: &str) -> Result<bool> {
    match out.write_all(piece.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to stdout"),
    }
}

/// The generated text as it grows: the whole id list is decoded each time and the new
/// suffix printed. A suffix ending in an unfinished UTF-8 character (a byte-level token
/// that a later one completes) waits for it.
#[derive(Default)]
struct TextStream {
    ids: Vec<u32>,
    printed: String,
}

impl TextStream {
    /// The text not yet printed; `last` prints everything, unfinished characters too.
    fn take_new(&mut self, tok: &Tokenizer, last: bool) -> Result<String> {
        let text = tok.decode(&self.ids)?;
        if !last && text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        // The decoded text only grows at its end; where an earlier character changed, the
        // part after the common prefix is printed again.
        let common = self
            .printed
            .char_indices()
            .zip(text.chars())
            .find(|((_, a), b)| a != b)
            .map_or(self.printed.len().min(text.len()), |((i, _), _)| i);
        let piece = text[common..].to_string();
        self.printed = text;
        Ok(piece)
    }
}
