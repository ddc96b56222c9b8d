//! Input shards: `.jsonl`, `.jsonl.zst` (the Pile's own shards) and `.parquet` with a
//! `text` column (the deduplicated Pile), read as a stream of batches of records so that
//! memory stays bounded whatever the shard size.
//!
//! Reading is split in two so that it parallelises: [`ShardReader`] (one thread) does the
//! I/O, zstd and line splitting, or parquet decoding, and hands out [`RawBatch`]es;
//! [`parse_line`] (on the workers) turns one JSON line into a [`Doc`].

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};

/// What kind of shard a path is, by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    Jsonl,
    JsonlZst,
    Parquet,
}

impl InputKind {
    pub fn of(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        if name.ends_with(".jsonl.zst") || name.ends_with(".json.zst") {
            Some(InputKind::JsonlZst)
        } else if name.ends_with(".jsonl") || name.ends_with(".json") {
            Some(InputKind::Jsonl)
        } else if name.ends_with(".parquet") {
            Some(InputKind::Parquet)
        } else {
            None
        }
    }

    /// The kind of a file that a directory or a pattern turns up: as [`InputKind::of`],
    /// but a plain `.json` only when named on its own. A folder of shards also holds
    /// `.json` files that are no documents: the `PREFIX.json` sidecar lcm writes beside
    /// a corpus, metadata, configs.
    pub fn of_found(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        if name.ends_with(".json") {
            return None;
        }
        Self::of(path)
    }
}

const KINDS: &str = ".jsonl, .jsonl.zst or .parquet";

/// The files an `--input` argument contributed, or the error that it contributed none
/// (`none` says how).
fn some_found(arg: &Path, found: Vec<PathBuf>, none: String) -> Result<Vec<PathBuf>> {
    if found.is_empty() {
        return Err(Error::input(arg, None, none));
    }
    Ok(found)
}

/// Expands the `--input` arguments, in order: a file is taken as it is, a directory
/// contributes its input files (recursively, sorted by path), and a pattern with `*`, `?`
/// or `[` its matches (sorted); a directory or pattern takes `.jsonl`, `.jsonl.zst` and
/// `.parquet` files, not plain `.json` ([`InputKind::of_found`]). Each argument must
/// contribute at least one file.
pub fn expand_inputs(args: &[String]) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    for arg in args {
        let path = Path::new(arg);
        if path.is_dir() {
            let mut found = vec![];
            walk(path, &mut found)?;
            found.sort();
            out.extend(some_found(
                path,
                found,
                format!("no {KINDS} files in this directory"),
            )?);
        } else if path.exists() {
            if InputKind::of(path).is_none() {
                return Err(Error::input(
                    path,
                    None,
                    format!("not an input file (expected a name ending in {KINDS})"),
                ));
            }
            out.push(path.to_path_buf());
        } else if arg.contains(['*', '?', '[']) {
            let paths = glob::glob(arg)
                .map_err(|e| Error::input(path, None, format!("bad pattern: {e}")))?;
            let mut found = vec![];
            for p in paths {
                let p = p.map_err(|e| Error::io(e.path().to_path_buf(), e.into()))?;
                if p.is_dir() {
                    walk(&p, &mut found)?;
                } else if InputKind::of_found(&p).is_some() {
                    found.push(p);
                }
            }
            found.sort();
            found.dedup();
            out.extend(some_found(
                path,
                found,
                format!("the pattern matches no {KINDS} files"),
            )?);
        } else {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ));
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for e in entries {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if InputKind::of_found(&p).is_some() {
            out.push(p);
        }
    }
    Ok(())
}

/// One document as read from a JSON line.
#[derive(Debug, serde::Deserialize)]
pub struct Doc<'a> {
    #[serde(borrow)]
    pub text: Cow<'a, str>,
    /// `meta.pile_set_name` when there is one; any other `meta` is ignored.
    #[serde(default, rename = "meta", deserialize_with = "set_name")]
    pub set_name: Option<String>,
}

fn set_name<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    let v: serde_json::Value = serde::Deserialize::deserialize(d)?;
    Ok(v.get("pile_set_name")
        .and_then(|s| s.as_str())
        .map(str::to_string))
}

/// Parses one JSON line (without its newline). The error is a message for `path:line:`.
pub fn parse_line(line: &[u8]) -> std::result::Result<Doc<'_>, String> {
    let s = std::str::from_utf8(line)
        .map_err(|e| format!("invalid UTF-8 at byte {} of the line", e.valid_up_to()))?;
    serde_json::from_str::<Doc>(s).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "not a JSON line"
        } else {
            "not a document with a string `text`"
        };
        // serde_json's own position is "line 1 column N" of this line: keep the column.
        format!("{what}: {e}").replace(" at line 1 column ", " at column ")
    })
}

/// Records read from a shard, for the workers.
pub enum Records {
    /// JSON lines in one buffer: line `i` is `buf[ends[i-1]..ends[i]]` (newline removed).
    Lines { buf: Vec<u8>, ends: Vec<usize> },
    /// Parquet `text` values; an error message for a null or a value that is not UTF-8.
    Texts(Vec<std::result::Result<String, String>>),
}

impl Records {
    pub fn len(&self) -> usize {
        match self {
            Records::Lines { ends, .. } => ends.len(),
            Records::Texts(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A batch of consecutive records of one shard.
pub struct RawBatch {
    /// 1-based line (jsonl) or row (parquet) number of the first record.
    pub first_line: u64,
    pub records: Records,
    /// Uncompressed bytes of input the batch covers.
    pub bytes: u64,
}

/// Counts bytes read from the underlying file (for progress against the file size).
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Limits on what one batch holds.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// A batch is closed once it holds this many bytes of text. Small enough that the
    /// last batches of a run leave no core idle for long, large enough that handing
    /// batches around costs nothing measurable (256 KiB: about 60K tokens).
    pub bytes: usize,
    /// A line longer than this is an error (guards memory against a file with no
    /// newlines); a 100 MB document is fine.
    pub max_line_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            bytes: 256 << 10,
            max_line_bytes: 1 << 30,
        }
    }
}

/// Streams one shard as batches.
pub struct ShardReader {
    path: PathBuf,
    inner: Inner,
    limits: BatchLimits,
    line: u64,
    done: bool,
}

enum Inner {
    Lines(Box<dyn BufRead + Send>),
    Parquet(Box<ParquetText>),
}

impl ShardReader {
    /// Opens `path`; `consumed` counts the bytes read from the file itself (compressed).
    pub fn open(path: &Path, limits: BatchLimits, consumed: Arc<AtomicU64>) -> Result<Self> {
        let kind = InputKind::of(path).ok_or_else(|| {
            Error::input(path, None, format!("not an input file (expected {KINDS})"))
        })?;
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len == 0 {
            return Err(Error::input(
                path,
                None,
                "empty file (0 bytes): truncated download?",
            ));
        }
        let counted = Counting {
            inner: file,
            count: consumed.clone(),
        };
        let inner = match kind {
            InputKind::Jsonl => Inner::Lines(Box::new(BufReader::with_capacity(1 << 20, counted))),
            InputKind::JsonlZst => {
                let mut d = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(
                    1 << 20,
                    counted,
                ))
                .map_err(|e| Error::input(path, None, format!("zstd: {e}")))?;
                // The Pile's shards are compressed with long windows.
                d.window_log_max(31)
                    .map_err(|e| Error::input(path, None, format!("zstd: {e}")))?;
                Inner::Lines(Box::new(BufReader::with_capacity(1 << 20, d)))
            }
            InputKind::Parquet => {
                consumed.fetch_add(len, Ordering::Relaxed);
                Inner::Parquet(Box::new(ParquetText::open(path)?))
            }
        };
        Ok(ShardReader {
            path: path.to_path_buf(),
            inner,
            limits,
            line: 0,
            done: false,
        })
    }

    /// The next batch, or `None` at the end of the shard. An error (corrupt or truncated
    /// compression, a line over the limit, an unreadable parquet page) ends the shard.
    pub fn next_batch(&mut self) -> Result<Option<RawBatch>> {
        if self.done {
            return Ok(None);
        }
        let first_line = self.line + 1;
        let batch = match &mut self.inner {
            Inner::Lines(r) => {
                let mut buf = Vec::with_capacity(self.limits.bytes + (64 << 10));
                let mut ends = vec![];
                let mut bytes = 0u64;
                while buf.len() < self.limits.bytes {
                    let limit = self.limits.max_line_bytes as u64 + 2;
                    let n = r
                        .by_ref()
                        .take(limit)
                        .read_until(b'\n', &mut buf)
                        .map_err(|e| read_error(&self.path, self.line + 1, e))?;
                    if n == 0 {
                        self.done = true;
                        break;
                    }
                    self.line += 1;
                    bytes += n as u64;
                    if buf.last() == Some(&b'\n') {
                        buf.pop();
                        if buf.last() == Some(&b'\r') {
                            buf.pop();
                        }
                    } else if n as u64 == limit {
                        return Err(Error::input(
                            &self.path,
                            Some(self.line),
                            format!(
                                "line longer than {} bytes (--max-line-mb)",
                                self.limits.max_line_bytes
                            ),
                        ));
                    }
                    ends.push(buf.len());
                }
                RawBatch {
                    first_line,
                    records: Records::Lines { buf, ends },
                    bytes,
                }
            }
            Inner::Parquet(p) => {
                let texts = p
                    .next(self.limits.bytes)
                    .map_err(|msg| Error::input(&self.path, Some(self.line + 1), msg))?;
                match texts {
                    None => {
                        self.done = true;
                        RawBatch {
                            first_line,
                            records: Records::Texts(vec![]),
                            bytes: 0,
                        }
                    }
                    Some(t) => {
                        self.line += t.len() as u64;
                        let bytes = t
                            .iter()
                            .map(|s| s.as_ref().map_or(0, |s| s.len() as u64))
                            .sum();

                        RawBatch {
                            first_line,
                            records: Records::Texts(t),
                            bytes,
                        }
                    }
                }
            }
        };
        if batch.records.is_empty() && self.done {
            return Ok(None);
        }
        Ok(Some(batch))
    }
}

fn read_error(path: &Path, line: u64, e: std::io::Error) -> Error {
    let msg = match e.kind() {
        std::io::ErrorKind::UnexpectedEof => format!("truncated input: {e}"),
        _ => format!("read failed (corrupt or truncated compressed data?): {e}"),
    };
    Error::input(path, Some(line), msg)
}

/// The `text` column of a parquet file, row group by row group, in bounded batches.
struct ParquetText {
    reader: parquet::file::serialized_reader::SerializedFileReader<File>,
    column: usize,
    max_def: i16,
    row_group: usize,
    current: Option<parquet::column::reader::ColumnReaderImpl<parquet::data_type::ByteArrayType>>,
}

impl ParquetText {
    fn open(path: &Path) -> Result<Self> {
        use parquet::file::reader::FileReader;
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let reader = parquet::file::serialized_reader::SerializedFileReader::new(file)
            .map_err(|e| Error::input(path, None, format!("not a readable parquet file: {e}")))?;
        let schema = reader.metadata().file_metadata().schema_descr_ptr();
        let column = (0..schema.num_columns())
            .find(|&i| schema.column(i).path().parts() == ["text"])
            .ok_or_else(|| {
                Error::input(path, None, "parquet file without a top-level `text` column")
            })?;
        let descr = schema.column(column);
        if descr.physical_type() != parquet::basic::Type::BYTE_ARRAY || descr.max_rep_level() != 0 {
            return Err(Error::input(
                path,
                None,
                "parquet `text` column is not a string (BYTE_ARRAY) column",
            ));
        }
        Ok(ParquetText {
            max_def: descr.max_def_level(),
            reader,
            column,
            row_group: 0,
            current: None,
        })
    }

    /// Up to about `bytes` of text, `None` at the end.
    #[allow(clippy::type_complexity)]
    fn next(
        &mut self,
        bytes: usize,
    ) -> std::result::Result<Option<Vec<std::result::Result<String, String>>>, String> {
        use parquet::file::reader::FileReader;
        let mut out = vec![];
        let mut have = 0usize;
        loop {
            if self.current.is_none() {
                if self.row_group >= self.reader.num_row_groups() {
                    return Ok((!out.is_empty()).then_some(out));
                }
                let rg = self
                    .reader
                    .get_row_group(self.row_group)
                    .map_err(|e| format!("parquet row group {}: {e}", self.row_group))?;
                let col = rg
                    .get_column_reader(self.column)
                    .map_err(|e| format!("parquet row group {}: {e}", self.row_group))?;
                self.current = Some(parquet::column::reader::get_typed_column_reader(col));
                self.row_group += 1;
            }
            let reader = self.current.as_mut().unwrap();
            let mut defs = vec![];
            let mut values = vec![];
            let (records, _, _) = reader
                .read_records(256, Some(&mut defs), None, &mut values)
                .map_err(|e| format!("parquet: {e}"))?;
            if records == 0 {
                self.current = None;
                continue;
            }
            let mut vals = values.into_iter();
            for r in 0..records {
                let present = self.max_def == 0 || defs.get(r).copied() == Some(self.max_def);
                if present {
                    let v = vals.next().ok_or("parquet: fewer values than records")?;
                    have += v.len();
                    out.push(String::from_utf8(v.data().to_vec()).map_err(|e| {
                        format!(
                            "`text` is not valid UTF-8 (at byte {})",
                            e.utf8_error().valid_up_to()
                        )
                    }));
                } else {
                    out.push(Err("`text` is null".to_string()));
                }
            }
            if have >= bytes {
                return Ok(Some(out));
            }
        }
    }
}
