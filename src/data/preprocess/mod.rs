//! `lcm preprocess pile`: input shards to a token corpus, in parallel, deterministic.
//!
//! One reader thread streams the shards in order (I/O, zstd, line splitting, parquet
//! decoding) as numbered batches of about 256 KiB; `workers` threads parse the JSON and
//! tokenise; the calling thread writes the results back in batch order. The output is
//! therefore the same bytes whatever the number of workers, and those of GPT-NeoX's
//! `preprocess_data.py --append-eod` for the same documents and tokenizer. A fixed number
//! of permits circulates between the reader and the writer, so memory is bounded by
//! `permits x batch size` whatever the size of the shards.
//!
//! Each finished shard is a checkpoint: the output files are synced and
//! `PREFIX.resume.tmp` records how far they go. `--resume` cuts the temporary files back
//! to the last checkpoint and goes on from the next shard. Output is written under
//! temporary names and renamed at the end (`.bin` before `.idx`), so no interrupted run
//! leaves files that look complete. A failure removes the temporary files unless a finished
//! shard makes them resumable (then `PREFIX.resume.tmp` exists and `--resume` goes on).
//!
//! Here the pipeline; [`resume`] holds the resume rules, [`summary`] the record
//! `PREFIX.json`.
//!
//! One run at a time writes a prefix: a lock on `.NAME.lock` beside it (see
//! [`crate::lock::OutputLock`]) refuses a second one, naming the process that holds it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{bounded, unbounded};

mod resume;
mod summary;

use resume::State;
pub use resume::{temporaries, Fingerprint};
pub use summary::{Counts, InputSummary, Skipped, Summary, TokenizerSummary, MAX_EXAMPLES};

use crate::data::indexed::{with_suffix, Checkpoint, IndexedWriter, TokenDtype};
use crate::data::inputs::{parse_line, BatchLimits, InputKind, RawBatch, Records, ShardReader};
use crate::data::tokenizer::Tokenizer;
use crate::error::{Error, Result};

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Megatron / GPT-NeoX `PREFIX.bin` + `PREFIX.idx`.
    Indexed,
    /// The reference system's flat little-endian uint16 file, `PREFIX.data`.
    Raw,
}

impl Format {
    /// The files that make a finished corpus, in the order they are renamed into place.
    pub fn outputs(self, prefix: &Path) -> Vec<PathBuf> {
        match self {
            Format::Indexed => vec![with_suffix(prefix, ".bin"), with_suffix(prefix, ".idx")],
            Format::Raw => vec![with_suffix(prefix, ".data")],
        }
    }
}

pub struct Options {
    /// Input shards, in order (see [`crate::data::inputs::expand_inputs`]).
    pub inputs: Vec<PathBuf>,
    /// Output prefix: `PREFIX.bin`/`.idx` (or `.data`) and `PREFIX.json`.
    pub output: PathBuf,
    pub format: Format,
    pub workers: usize,
    /// Keep the shards an interrupted run finished.
    pub resume: bool,
    /// Replace an existing finished corpus.
    pub force: bool,
    /// Count and skip recoverable bad records instead of failing.
    pub skip_bad_lines: bool,
    pub limits: BatchLimits,
}

const NO_SET: &str = "(none)";

/// Progress, reported after every batch written.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Bytes of the input files read so far (compressed, as on disk) and in all.
    pub file_bytes_read: u64,
    pub file_bytes_total: u64,
    /// Uncompressed input bytes written out so far.
    pub input_bytes: u64,
    pub documents: u64,
    pub tokens: u64,
    pub shards_done: usize,
    pub shards_total: usize,
    /// Shards skipped because a resumed run had finished them.
    pub shards_resumed: usize,
    pub seconds: f64,
}

/// The lock file of the corpus at `prefix`: `.NAME.lock` in its folder.
pub fn lock_path(prefix: &Path) -> PathBuf {
    let name = prefix.file_name().unwrap_or_default().to_string_lossy();
    prefix.with_file_name(format!(".{name}.lock"))
}

/// Runs the pipeline; returns what `PREFIX.json` records.
pub fn run(
    opts: &Options,
    tok: &Tokenizer,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Summary> {
    if opts.inputs.is_empty() {
        return Err(Error::Invalid("no input files".into()));
    }
    let dtype = match opts.format {
        Format::Indexed => TokenDtype::for_vocab(tok.vocab_size()),
        Format::Raw if tok.vocab_size() <= 1 << 16 => TokenDtype::Uint16,
        Format::Raw => {
            return Err(Error::Invalid(format!(
                "--format raw stores uint16 ids; this tokenizer has {} ids",
                tok.vocab_size()
            )))
        }
    };
    let prefix = &opts.output;
    if prefix.file_name().is_none() {
        return Err(Error::Invalid(format!(
            "--output {}: not a prefix (name the files' stem, e.g. data/tokens/train)",
            prefix.display()
        )));
    }
    if let Some(dir) = prefix.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let _lock = crate::lock::OutputLock::acquire(
        &lock_path(prefix),
        &format!("corpus prefix {}", prefix.display()),
    )?;
    let fingerprint = Fingerprint::of(opts, tok, dtype)?;

    let json_path = with_suffix(prefix, ".json");
    let finals = opts.format.outputs(prefix);
    if let Some(done) = resume::settle_finished(opts, &fingerprint, &json_path, &finals)? {
        return Ok(done);
    }

    let state_path = with_suffix(prefix, ".resume.tmp");
    let state = resume::state_to_continue(opts, prefix, &state_path, &fingerprint)?;
    // What interrupted atomic writes of the state and the summary left.
    crate::util::sweep_atomic_temps(&state_path);
    crate::util::sweep_atomic_temps(&json_path);
    let sink = match (&state, opts.format) {
        (Some(st), Format::Indexed) => {
            IndexedWriter::resume(prefix, dtype, st.checkpoint).map(Sink::Indexed)
        }
        (None, Format::Indexed) => IndexedWriter::create(prefix, dtype).map(Sink::Indexed),
        (st, Format::Raw) => {
            RawWriter::open(prefix, st.as_ref().map(|s| s.checkpoint)).map(Sink::Raw)
        }
    };
    let result = sink.and_then(|sink| {
        write_corpus(
            opts,
            tok,
            progress,
            Run {
                dtype,
                fingerprint,
                state,
                sink,
                json_path,
                finals,
                state_path: state_path.clone(),
            },
        )
    });
    if result.is_err() && !state_path.exists() {
        // Nothing resumable: no temporary stays behind.
        for p in resume::temporaries(prefix) {
            let _ = std::fs::remove_file(p);
        }
    }
    result
}

/// What [`run`] settled before writing.
struct Run {
    dtype: TokenDtype,
    fingerprint: Fingerprint,
    state: Option<State>,
    sink: Sink,
    json_path: PathBuf,
    finals: Vec<PathBuf>,
    state_path: PathBuf,
}

/// The writing part of [`run`]: shards to the sink, checkpoints, the summary.
fn write_corpus(
    opts: &Options,
    tok: &Tokenizer,
    progress: &mut dyn FnMut(&Progress),
    run: Run,
) -> Result<Summary> {
    let Run {
        dtype,
        fingerprint,
        state,
        mut sink,
        json_path,
        finals,
        state_path,
    } = run;

    let start_shard = state.as_ref().map_or(0, |s| s.shards_done);
    let mut inputs: Vec<InputSummary> = state.as_ref().map_or(vec![], |s| s.inputs.clone());
    let mut examples: Vec<String> = state
        .as_ref()
        .map_or(vec![], |s| s.bad_line_examples.clone());
    let mut sets: BTreeMap<String, Counts> =
        state.as_ref().map_or(BTreeMap::new(), |s| s.sets.clone());
    let mut checkpoint = state
        .as_ref()
        .map_or(Checkpoint::default(), |s| s.checkpoint);
    let mut max_id = match &state {
        None => None,
        Some(st) if st.max_tracked => st.max_token_id,
        Some(st) => {
            let tmp = match opts.format {
                Format::Indexed => with_suffix(&opts.output, ".bin.tmp"),
                Format::Raw => with_suffix(&opts.output, ".data.tmp"),
            };
            crate::data::indexed::max_id_in_file(&tmp, st.checkpoint.bin_bytes, dtype)?
        }
    };

    let file_bytes_total: u64 = fingerprint.inputs.iter().map(|i| i.1).sum();
    let done_bytes: u64 = fingerprint.inputs[..start_shard].iter().map(|i| i.1).sum();
    let consumed = Arc::new(AtomicU64::new(done_bytes));
    let mut prog = Progress {
        file_bytes_total,
        file_bytes_read: done_bytes,
        shards_total: opts.inputs.len(),
        shards_done: start_shard,
        shards_resumed: start_shard,
        documents: checkpoint.sequences,
        tokens: checkpoint.bin_bytes / dtype.size() as u64,
        ..Default::default()
    };
    let started = Instant::now();
    progress(&prog);

    let workers = opts.workers.max(1);
    let permits = 4 * workers + 4;
    let (job_tx, job_rx) = bounded::<Job>(permits);
    let (done_tx, done_rx) = unbounded::<Done>();
    let (permit_tx, permit_rx) = bounded::<()>(permits);
    for _ in 0..permits {
        permit_tx.send(()).unwrap();
    }

    let result: Result<()> = std::thread::scope(|s| {
        // Owned here so that an early return drops them: the reader and the workers then
        // see their channels close and stop.
        let permit_tx = permit_tx;
        let done_rx = done_rx;
        // Reader: shards in order, batches numbered.
        {
            let consumed = consumed.clone();
            let inputs = &opts.inputs;
            let limits = opts.limits;
            let skip = opts.skip_bad_lines;
            s.spawn(move || {
                let mut seq = 0u64;
                for (shard, path) in inputs.iter().enumerate().skip(start_shard) {
                    let mut send =
                        |batch: Result<RawBatch>, last: bool, empty_file: bool| -> bool {
                            if permit_rx.recv().is_err() {
                                return false;
                            }
                            let ok = job_tx
                                .send(Job {
                                    seq,
                                    shard,
                                    last,
                                    empty_file,
                                    batch,
                                })
                                .is_ok();
                            seq += 1;
                            ok
                        };
                    let empty = || RawBatch {
                        first_line: 1,
                        records: Records::Lines {
                            buf: vec![],
                            ends: vec![],
                        },
                        bytes: 0,
                    };
                    let is_empty = std::fs::metadata(path)
                        .map(|m| m.len() == 0)
                        .unwrap_or(false);
                    if is_empty && skip {
                        if !send(Ok(empty()), true, true) {
                            return;
                        }
                        continue;
                    }
                    let mut reader = match ShardReader::open(path, limits, consumed.clone()) {
                        Ok(r) => r,
                        Err(e) => {
                            send(Err(e), true, false);
                            return;
                        }
                    };
                    loop {
                        match reader.next_batch() {
                            Ok(Some(b)) => {
                                if !send(Ok(b), false, false) {
                                    return;
                                }
                            }
                            Ok(None) => {
                                if !send(Ok(empty()), true, false) {
                                    return;
                                }
                                break;
                            }
                            Err(e) => {
                                send(Err(e), true, false);
                                return;
                            }
                        }
                    }
                }
            });
        }
        // Workers: parse and tokenise.
        for _ in 0..workers {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            let inputs = &opts.inputs;
            let skip = opts.skip_bad_lines;
            s.spawn(move || {
                for job in job_rx {
                    let out = job
                        .batch
                        .and_then(|b| encode_batch(&inputs[job.shard], b, tok, dtype, skip));
                    let done = Done {
                        seq: job.seq,
                        shard: job.shard,
                        last: job.last,
                        empty_file: job.empty_file,
                        out,
                    };
                    if done_tx.send(done).is_err() {
                        return;
                    }
                }
            });
        }
        drop(job_rx);
        drop(done_tx);

        // Writer: in batch order.
        let mut pending: BTreeMap<u64, Done> = BTreeMap::new();
        let mut next = 0u64;
        let mut shard_sum: Option<InputSummary> = None;
        for done in done_rx.iter() {
            pending.insert(done.seq, done);
            while let Some(d) = pending.remove(&next) {
                next += 1;
                let _ = permit_tx.send(());
                let out = d.out?;
                let path = &opts.inputs[d.shard];
                let sum = shard_sum.get_or_insert_with(|| InputSummary {
                    path: path.clone(),
                    kind: InputKind::of(path).unwrap_or(InputKind::Jsonl),
                    file_bytes: fingerprint.inputs[d.shard].1,
                    counts: Counts::default(),
                    skipped: Skipped::default(),
                });
                sink.append(&out.tokens, &out.sizes)?;
                max_id = max_id.max(out.max_id);
                sum.counts.add(&out.counts);
                sum.skipped.add(&out.skipped);
                sum.skipped.empty_files += d.empty_file as u64;
                for (k, v) in &out.sets {
                    sets.entry(k.clone()).or_default().add(v);
                }
                for (line, msg) in out.bad {
                    if examples.len() < MAX_EXAMPLES {
                        examples.push(format!("{}:{line}: {msg}", path.display()));
                    }
                }
                prog.input_bytes += out.input_bytes;
                prog.documents += out.counts.documents;
                prog.tokens += out.counts.tokens;
                if d.last {
                    inputs.push(shard_sum.take().unwrap());
                    checkpoint = sink.checkpoint()?;
                    let st = State {
                        fingerprint: fingerprint.clone(),
                        checkpoint,
                        shards_done: d.shard + 1,
                        inputs: inputs.clone(),
                        bad_line_examples: examples.clone(),
                        sets: sets.clone(),
                        max_token_id: max_id,
                        max_tracked: true,
                    };
                    crate::util::write_atomic(
                        &state_path,
                        &serde_json::to_vec_pretty(&st).unwrap(),
                    )?;
                    prog.shards_done = d.shard + 1;
                }
                prog.file_bytes_read = consumed.load(Ordering::Relaxed);
                prog.seconds = started.elapsed().as_secs_f64();
                progress(&prog);
            }
        }
        if inputs.len() != opts.inputs.len() {
            return Err(Error::Invalid(format!(
                "internal: {} of {} shards written",
                inputs.len(),
                opts.inputs.len()
            )));
        }
        Ok(())
    });
    result?;

    let mut counts = Counts::default();
    let mut skipped = Skipped::default();
    for i in &inputs {
        counts.add(&i.counts);
        skipped.add(&i.skipped);
    }
    let summary = Summary {
        format: opts.format,
        files: finals.clone(),
        dtype,
        append_eod: true,
        tokenizer: TokenizerSummary {
            path: tok.path().to_path_buf(),
            sha256: tok.sha256().to_string(),
            vocab_size: tok.vocab_size(),
            eod_token: tok.eod_token().to_string(),
            eod_id: tok.eod(),
        },
        counts,
        sets,
        skipped,
        bad_line_examples: examples,
        inputs,
        fingerprint,
        max_token_id: max_id,
    };
    sink.finish()?;
    crate::util::write_atomic(
        &json_path,
        (serde_json::to_string_pretty(&summary).unwrap() + "\n").as_bytes(),
    )?;
    let _ = std::fs::remove_file(&state_path);
    prog.seconds = started.elapsed().as_secs_f64();
    prog.file_bytes_read = file_bytes_total;
    progress(&prog);
    Ok(summary)
}

struct Job {
    seq: u64,
    shard: usize,
    last: bool,
    empty_file: bool,
    batch: Result<RawBatch>,
}

struct Done {
    seq: u64,
    shard: usize,
    last: bool,
    empty_file: bool,
    out: Result<BatchOut>,
}

#[derive(Default)]
struct BatchOut {
    tokens: Vec<u8>,
    sizes: Vec<i32>,
    counts: Counts,
    skipped: Skipped,
    sets: BTreeMap<String, Counts>,
    bad: Vec<(u64, String)>,
    input_bytes: u64,
    /// The largest id written (None for a batch without tokens).
    max_id: Option<u32>,
}

/// Parses and tokenises one batch. A bad record fails the batch unless `skip`.
fn encode_batch(
    path: &Path,
    b: RawBatch,
    tok: &Tokenizer,
    dtype: TokenDtype,
    skip: bool,
) -> Result<BatchOut> {
    let mut out = BatchOut {
        input_bytes: b.bytes,
        ..Default::default()
    };
    let mut ids: Vec<u32> = Vec::new();
    let bad = |out: &mut BatchOut, line: u64, msg: String| -> Result<()> {
        if !skip {
            return Err(Error::input(
                path,
                Some(line),
                format!("{msg} (--skip-bad-lines skips such records)"),
            ));
        }
        out.skipped.bad_lines += 1;
        if out.bad.len() < MAX_EXAMPLES {
            out.bad.push((line, msg));
        }
        Ok(())
    };
    let mut doc = |out: &mut BatchOut, line: u64, text: &str, set: Option<&str>| -> Result<()> {
        if text.is_empty() {
            out.skipped.empty_documents += 1;
            return Ok(());
        }
        ids.clear();
        if let Err(msg) = tok.encode_into(text, &mut ids) {
            return bad(out, line, msg);
        }
        ids.push(tok.eod());
        out.max_id = out.max_id.max(ids.iter().copied().max());
        let size = i32::try_from(ids.len()).map_err(|_| {
            Error::input(
                path,
                Some(line),
                format!("{} tokens in one document", ids.len()),
            )
        })?;
        dtype.extend_le(&mut out.tokens, &ids).map_err(|id| {
            Error::input(
                path,
                Some(line),
                format!("token id {id} does not fit {}", dtype.name()),
            )
        })?;
        out.sizes.push(size);
        let c = Counts {
            documents: 1,
            tokens: ids.len() as u64,
            text_bytes: text.len() as u64,
        };
        out.counts.add(&c);
        let set = set.unwrap_or(NO_SET);
        match out.sets.get_mut(set) {
            Some(s) => s.add(&c),
            None => {
                out.sets.insert(set.to_string(), c);
            }
        }
        Ok(())
    };
    match &b.records {
        Records::Lines { buf, ends } => {
            let mut start = 0;
            for (i, &end) in ends.iter().enumerate() {
                let line_no = b.first_line + i as u64;
                let line = &buf[start..end];
                start = end;
                if line.iter().all(u8::is_ascii_whitespace) {
                    out.skipped.blank_lines += 1;
                    continue;
                }
                match parse_line(line) {
                    Ok(d) => doc(&mut out, line_no, &d.text, d.set_name.as_deref())?,
                    Err(msg) => bad(&mut out, line_no, msg)?,
                }
            }
        }
        Records::Texts(texts) => {
            for (i, t) in texts.iter().enumerate() {
                let line_no = b.first_line + i as u64;
                match t {
                    Ok(text) => doc(&mut out, line_no, text, None)?,
                    Err(msg) => bad(&mut out, line_no, msg.clone())?,
                }
            }
        }
    }
    Ok(out)
}

enum Sink {
    Indexed(IndexedWriter),
    Raw(RawWriter),
}

impl Sink {
    fn append(&mut self, tokens: &[u8], sizes: &[i32]) -> Result<()> {
        match self {
            Sink::Indexed(w) => w.append(tokens, sizes),
            Sink::Raw(w) => w.append(tokens, sizes.len() as u64),
        }
    }

    fn checkpoint(&mut self) -> Result<Checkpoint> {
        match self {
            Sink::Indexed(w) => w.checkpoint(),
            Sink::Raw(w) => w.checkpoint(),
        }
    }

    fn finish(self) -> Result<()> {
        match self {
            Sink::Indexed(w) => w.finish().map(|_| ()),
            Sink::Raw(w) => w.finish(),
        }
    }
}

/// `PREFIX.data.tmp`, renamed to `PREFIX.data` when finished.
struct RawWriter {
    tmp: PathBuf,
    done: PathBuf,
    w: BufWriter<File>,
    at: Checkpoint,
}

impl RawWriter {
    fn open(prefix: &Path, resume: Option<Checkpoint>) -> Result<Self> {
        let tmp = with_suffix(prefix, ".data.tmp");
        let (f, at) = match resume {
            None => (
                File::create(&tmp).map_err(|e| Error::io(&tmp, e))?,
                Checkpoint::default(),
            ),
            Some(at) => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .open(&tmp)
                    .map_err(|e| Error::io(&tmp, e))?;
                let have = f.metadata().map_err(|e| Error::io(&tmp, e))?.len();
                if have < at.bin_bytes {
                    return Err(Error::corpus(
                        &tmp,
                        "shorter than its checkpoint; run without --resume",
                    ));
                }
                f.set_len(at.bin_bytes).map_err(|e| Error::io(&tmp, e))?;
                f.seek(SeekFrom::End(0)).map_err(|e| Error::io(&tmp, e))?;
                (f, at)
            }
        };
        Ok(RawWriter {
            done: with_suffix(prefix, ".data"),
            tmp,
            w: BufWriter::with_capacity(1 << 20, f),
            at,
        })
    }

    fn append(&mut self, tokens: &[u8], docs: u64) -> Result<()> {
        self.w
            .write_all(tokens)
            .map_err(|e| Error::io(&self.tmp, e))?;
        self.at.bin_bytes += tokens.len() as u64;
        self.at.sequences += docs;
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<Checkpoint> {
        self.w.flush().map_err(|e| Error::io(&self.tmp, e))?;
        self.w
            .get_ref()
            .sync_data()
            .map_err(|e| Error::io(&self.tmp, e))?;
        Ok(self.at)
    }

    fn finish(mut self) -> Result<()> {
        self.checkpoint()?;
        std::fs::rename(&self.tmp, &self.done).map_err(|e| Error::io(&self.done, e))
    }
}
