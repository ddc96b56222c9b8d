//! The Megatron / GPT-NeoX indexed dataset (`PREFIX.bin` + `PREFIX.idx`, "MMIDIDX"
//! version 1): a streaming writer that produces exactly the bytes of GPT-NeoX's
//! `MMapIndexedDatasetBuilder`, and a memory-mapped reader whose tokens are zero-copy.
//!
//! `.bin` holds the token ids of every sequence, concatenated, little-endian, no header.
//! `.idx`, little-endian: magic `MMIDIDX\0\0` (9 bytes), version u64 = 1, dtype code u8,
//! sequence count N u64, document-index length D u64, then N i32 sizes, N i64 byte
//! pointers into `.bin`, and D i64 `doc_idx` entries (`doc_idx[0] = 0`, last = N). The
//! arrays start at byte 34 and so are unaligned: the reader decodes them one entry at a
//! time instead of casting. The `.bin` is page-aligned by the mapping and every sequence
//! starts at a multiple of the item size, so its tokens are viewed in place.
//!
//! The writer here makes one sequence per document, as `preprocess_data.py` does with one
//! JSON key: then `doc_idx = [0, 1, ..., N]`.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};

#[cfg(not(target_endian = "little"))]
compile_error!(
    "the corpus formats are little-endian and are viewed in place: little-endian targets only"
);

pub const MAGIC: &[u8; 9] = b"MMIDIDX\x00\x00";
pub const VERSION: u64 = 1;
/// Byte offset of the sizes array in `.idx`.
pub const HEADER_LEN: usize = 34;

/// Token storage type of a corpus. GPT-NeoX picks uint16 when the vocabulary has fewer
/// than 65,500 ids, int32 otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenDtype {
    Uint16,
    Int32,
}

impl TokenDtype {
    /// `__best_fitting_dtype` of GPT-NeoX's indexed_dataset.py.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size < 65_500 {
            TokenDtype::Uint16
        } else {
            TokenDtype::Int32
        }
    }

    /// The dtype code stored in `.idx`.
    pub fn code(self) -> u8 {
        match self {
            TokenDtype::Uint16 => 8,
            TokenDtype::Int32 => 4,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            8 => Some(TokenDtype::Uint16),
            4 => Some(TokenDtype::Int32),
            _ => None,
        }
    }

    /// Bytes per token.
    pub fn size(self) -> usize {
        match self {
            TokenDtype::Uint16 => 2,
            TokenDtype::Int32 => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TokenDtype::Uint16 => "uint16",
            TokenDtype::Int32 => "int32",
        }
    }

    /// Appends `ids` to `out` as little-endian tokens of this type. Fails (returning the
    /// first id that does not fit) rather than truncate.
    pub fn extend_le(self, out: &mut Vec<u8>, ids: &[u32]) -> std::result::Result<(), u32> {
        match self {
            TokenDtype::Uint16 => {
                out.reserve(ids.len() * 2);
                for &id in ids {
                    let v = u16::try_from(id).map_err(|_| id)?;
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            TokenDtype::Int32 => {
                out.reserve(ids.len() * 4);
                for &id in ids {
                    let v = i32::try_from(id).map_err(|_| id)?;
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        Ok(())
    }
}

/// `PREFIX.bin`, `PREFIX.idx` and the other names used for a corpus prefix.
pub fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The `.idx` header (34 bytes) for `n` sequences, one per document.
pub fn write_index_header(w: &mut impl Write, dtype: TokenDtype, n: u64) -> std::io::Result<()> {
    w.write_all(MAGIC)?;
    w.write_all(&VERSION.to_le_bytes())?;
    w.write_all(&[dtype.code()])?;
    w.write_all(&n.to_le_bytes())?;
    w.write_all(&(n + 1).to_le_bytes())
}

/// The pointers (byte offsets) and `doc_idx` that follow the sizes, streamed.
fn write_index_tail(
    w: &mut impl Write,
    dtype: TokenDtype,
    n: u64,
    sizes: impl Iterator<Item = std::io::Result<i32>>,
) -> std::io::Result<()> {
    let mut address: i64 = 0;
    for s in sizes {
        w.write_all(&address.to_le_bytes())?;
        address += s? as i64 * dtype.size() as i64;
    }
    for i in 0..=n {
        w.write_all(&(i as i64).to_le_bytes())?;
    }
    Ok(())
}

/// The whole `.idx` for `sizes` (one sequence per document): exactly what GPT-NeoX's
/// `MMapIndexedDataset.Index.writer` writes.
pub fn write_index(w: &mut impl Write, dtype: TokenDtype, sizes: &[i32]) -> std::io::Result<()> {
    let n = sizes.len() as u64;
    write_index_header(w, dtype, n)?;
    for s in sizes {
        w.write_all(&s.to_le_bytes())?;
    }
    write_index_tail(w, dtype, n, sizes.iter().map(|&s| Ok(s)))
}

/// Streaming writer of a corpus. Tokens go to `PREFIX.bin.tmp`, per-document sizes to a
/// spool file `PREFIX.sizes.tmp` (4 bytes a document, so memory stays flat), and
/// [`IndexedWriter::finish`] writes `PREFIX.idx.tmp` and renames `.bin` then `.idx` into
/// place: until then no file under the final names exists, so an interrupted run never
/// leaves a pair that looks complete.
pub struct IndexedWriter {
    prefix: PathBuf,
    dtype: TokenDtype,
    bin_tmp: PathBuf,
    sizes_tmp: PathBuf,
    bin: BufWriter<File>,
    sizes: BufWriter<File>,
    bin_bytes: u64,
    sequences: u64,
}

/// A point the writer can be reopened at (see [`IndexedWriter::resume`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub bin_bytes: u64,
    pub sequences: u64,
}

impl IndexedWriter {
    /// Starts a new corpus at `prefix`, replacing leftovers of an earlier run.
    pub fn create(prefix: &Path, dtype: TokenDtype) -> Result<Self> {
        let bin_tmp = with_suffix(prefix, ".bin.tmp");
        let sizes_tmp = with_suffix(prefix, ".sizes.tmp");
        let bin = File::create(&bin_tmp).map_err(|e| Error::io(&bin_tmp, e))?;
        let sizes = File::create(&sizes_tmp).map_err(|e| Error::io(&sizes_tmp, e))?;
        Ok(Self::from_files(
            prefix,
            dtype,
            bin,
            sizes,
            Checkpoint::default(),
        ))
    }

    /// Reopens the temporary files of an interrupted run and cuts them back to `at`, the
    /// last checkpoint that was made durable.
    pub fn resume(prefix: &Path, dtype: TokenDtype, at: Checkpoint) -> Result<Self> {
        let bin_tmp = with_suffix(prefix, ".bin.tmp");
        let sizes_tmp = with_suffix(prefix, ".sizes.tmp");
        let open = |path: &Path, len: u64| -> Result<File> {
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| Error::io(path, e))?;
            let have = f.metadata().map_err(|e| Error::io(path, e))?.len();
            if have < len {
                return Err(Error::corpus(
                    path,
                    format!("resume: {have} bytes, the checkpoint needs {len}; start over without --resume"),
                ));
            }
            f.set_len(len).map_err(|e| Error::io(path, e))?;
            f.seek(SeekFrom::End(0)).map_err(|e| Error::io(path, e))?;
            Ok(f)
        };
        let bin = open(&bin_tmp, at.bin_bytes)?;
        let sizes = open(&sizes_tmp, at.sequences * 4)?;
        Ok(Self::from_files(prefix, dtype, bin, sizes, at))
    }

    fn from_files(
        prefix: &Path,
        dtype: TokenDtype,
        bin: File,
        sizes: File,
        at: Checkpoint,
    ) -> Self {
        IndexedWriter {
            prefix: prefix.to_path_buf(),
            dtype,
            bin_tmp: with_suffix(prefix, ".bin.tmp"),
            sizes_tmp: with_suffix(prefix, ".sizes.tmp"),
            bin: BufWriter::with_capacity(1 << 20, bin),
            sizes: BufWriter::with_capacity(1 << 16, sizes),
            bin_bytes: at.bin_bytes,
            sequences: at.sequences,
        }
    }

    pub fn dtype(&self) -> TokenDtype {
        self.dtype
    }

    /// Appends documents: `tokens` holds their ids already encoded as little-endian
    /// `dtype` (EOD included), `sizes` their lengths in tokens.
    pub fn append(&mut self, tokens: &[u8], sizes: &[i32]) -> Result<()> {
        debug_assert_eq!(
            sizes.iter().map(|&s| s as usize).sum::<usize>() * self.dtype.size(),
            tokens.len()
        );
        self.bin
            .write_all(tokens)
            .map_err(|e| Error::io(&self.bin_tmp, e))?;
        let mut buf = Vec::with_capacity(sizes.len() * 4);
        for s in sizes {
            buf.extend_from_slice(&s.to_le_bytes());
        }
        self.sizes
            .write_all(&buf)
            .map_err(|e| Error::io(&self.sizes_tmp, e))?;
        self.bin_bytes += tokens.len() as u64;
        self.sequences += sizes.len() as u64;
        Ok(())
    }

    /// Appends one document of `ids` (EOD included).
    pub fn add_document(&mut self, ids: &[u32]) -> Result<()> {
        let mut bytes = Vec::new();
        self.dtype.extend_le(&mut bytes, ids).map_err(|id| {
            Error::Invalid(format!("token id {id} does not fit {}", self.dtype.name()))
        })?;
        let size = i32::try_from(ids.len())
            .map_err(|_| Error::Invalid(format!("a document of {} tokens", ids.len())))?;
        self.append(&bytes, &[size])
    }

    /// Flushes and syncs both files; what is returned can be handed to
    /// [`IndexedWriter::resume`] after a crash.
    pub fn checkpoint(&mut self) -> Result<Checkpoint> {
        for (w, path) in [
            (&mut self.bin, &self.bin_tmp),
            (&mut self.sizes, &self.sizes_tmp),
        ] {
            w.flush().map_err(|e| Error::io(path, e))?;
            w.get_ref().sync_data().map_err(|e| Error::io(path, e))?;
        }
        Ok(Checkpoint {
            bin_bytes: self.bin_bytes,
            sequences: self.sequences,
        })
    }

    /// Writes the index and moves `.bin` and `.idx` into place (in that order).
    pub fn finish(mut self) -> Result<Checkpoint> {
        let at = self.checkpoint()?;
        let idx_tmp = with_suffix(&self.prefix, ".idx.tmp");
        let spool_len = std::fs::metadata(&self.sizes_tmp)
            .map_err(|e| Error::io(&self.sizes_tmp, e))?
            .len();
        if spool_len != at.sequences * 4 {
            return Err(Error::corpus(
                &self.sizes_tmp,
                format!("{spool_len} bytes of sizes for {} sequences", at.sequences),
            ));
        }
        // Two streaming passes over the spool (already i32 little-endian): the sizes as
        // they are, then the pointers computed from them. Memory stays flat.
        let write = || -> std::io::Result<()> {
            let mut w = BufWriter::with_capacity(1 << 20, File::create(&idx_tmp)?);
            write_index_header(&mut w, self.dtype, at.sequences)?;
            std::io::copy(&mut File::open(&self.sizes_tmp)?, &mut w)?;
            let mut r = BufReader::with_capacity(1 << 20, File::open(&self.sizes_tmp)?);
            let sizes = std::iter::from_fn(|| {
                let mut b = [0u8; 4];
                match r.read_exact(&mut b) {
                    Ok(()) => Some(Ok(i32::from_le_bytes(b))),
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => None,
                    Err(e) => Some(Err(e)),
                }
            });
            write_index_tail(&mut w, self.dtype, at.sequences, sizes)?;
            w.flush()?;
            w.get_ref().sync_all()
        };
        write().map_err(|e| Error::io(&idx_tmp, e))?;
        let bin = with_suffix(&self.prefix, ".bin");
        let idx = with_suffix(&self.prefix, ".idx");
        std::fs::rename(&self.bin_tmp, &bin).map_err(|e| Error::io(&bin, e))?;
        std::fs::rename(&idx_tmp, &idx).map_err(|e| Error::io(&idx, e))?;
        let _ = std::fs::remove_file(&self.sizes_tmp);
        Ok(at)
    }
}

/// Token ids viewed in place in a mapped corpus.
#[derive(Clone, Copy, Debug)]
pub enum Tokens<'a> {
    Uint16(&'a [u16]),
    Int32(&'a [i32]),
}

impl<'a> Tokens<'a> {
    pub fn len(&self) -> usize {
        match self {
            Tokens::Uint16(t) => t.len(),
            Tokens::Int32(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> u32 {
        match self {
            Tokens::Uint16(t) => t[i] as u32,
            Tokens::Int32(t) => t[i] as u32,
        }
    }

    pub fn slice(&self, r: Range<usize>) -> Tokens<'a> {
        match *self {
            Tokens::Uint16(t) => Tokens::Uint16(&t[r]),
            Tokens::Int32(t) => Tokens::Int32(&t[r]),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + 'a {
        let (a, b) = match *self {
            Tokens::Uint16(t) => (Some(t.iter().map(|&x| x as u32)), None),
            Tokens::Int32(t) => (None, Some(t.iter().map(|&x| x as u32))),
        };
        a.into_iter().flatten().chain(b.into_iter().flatten())
    }

    pub fn to_vec(&self) -> Vec<u32> {
        self.iter().collect()
    }

    /// The largest id (None when there are no tokens): a parallel scan of the mapped ids,
    /// a fraction of a second per GB. An int32 id below 0 counts as larger than any other.
    pub fn max(&self) -> Option<u32> {
        use rayon::prelude::*;
        const BLOCK: usize = 1 << 20;
        match *self {
            Tokens::Uint16(t) => t
                .par_chunks(BLOCK)
                .filter_map(|c| c.iter().max().map(|&x| x as u32))
                .max(),
            Tokens::Int32(t) => t
                .par_chunks(BLOCK)
                .filter_map(|c| c.iter().map(|&x| x as u32).max())
                .max(),
        }
    }

    /// The raw little-endian bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        // SAFETY: u16/i32 slices are plain old data; any byte view of them is valid.
        unsafe {
            match *self {
                Tokens::Uint16(t) => {
                    std::slice::from_raw_parts(t.as_ptr() as *const u8, t.len() * 2)
                }
                Tokens::Int32(t) => {
                    std::slice::from_raw_parts(t.as_ptr() as *const u8, t.len() * 4)
                }
            }
        }
    }
}

/// Views a mapped byte slice as tokens. The mapping is page-aligned and `bytes` starts at
/// a multiple of the item size, so this is a cast, not a copy.
fn view(dtype: TokenDtype, bytes: &[u8]) -> Tokens<'_> {
    // SAFETY: u16 and i32 have no invalid bit patterns; align_to returns the aligned
    // middle part, which the asserts require to be the whole slice.
    unsafe {
        match dtype {
            TokenDtype::Uint16 => {
                let (a, t, b) = bytes.align_to::<u16>();
                assert!(a.is_empty() && b.is_empty(), "misaligned token slice");
                Tokens::Uint16(t)
            }
            TokenDtype::Int32 => {
                let (a, t, b) = bytes.align_to::<i32>();
                assert!(a.is_empty() && b.is_empty(), "misaligned token slice");
                Tokens::Int32(t)
            }
        }
    }
}

/// The largest id among the first `len` bytes of `path`, a file of `dtype` ids (a
/// corpus being written, up to its last checkpoint).
pub fn max_id_in_file(path: &Path, len: u64, dtype: TokenDtype) -> Result<Option<u32>> {
    let m = Mapped::open(path)?;
    let bytes = m.bytes();
    if (bytes.len() as u64) < len || !len.is_multiple_of(dtype.size() as u64) {
        return Err(Error::corpus(
            path,
            format!("{} bytes, the checkpoint needs {len}", bytes.len()),
        ));
    }
    Ok(view(dtype, &bytes[..len as usize]).max())
}

/// A file mapped read-only, or an empty slice for an empty file (which cannot be mapped).
struct Mapped(Option<Mmap>);

impl Mapped {
    fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        if len == 0 {
            return Ok(Mapped(None));
        }
        // SAFETY: the corpus is read-only input; as with any mmap, a concurrent writer
        // truncating the file would fault. Corpora are written to temporary names and
        // renamed, so a finished file is never modified in place.
        let m = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
        Ok(Mapped(Some(m)))
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_deref().unwrap_or(&[])
    }
}

/// A memory-mapped Megatron/GPT-NeoX corpus. Opening checks the header, the index length
/// and the `.bin` length against the last pointer (O(1)); [`IndexedCorpus::verify`]
/// checks every entry.
pub struct IndexedCorpus {
    idx_path: PathBuf,
    bin_path: PathBuf,
    idx: Mapped,
    bin: Mapped,
    dtype: TokenDtype,
    n: usize,
    d: usize,
}

impl IndexedCorpus {
    pub fn open(prefix: &Path) -> Result<Self> {
        let idx_path = with_suffix(prefix, ".idx");
        let bin_path = with_suffix(prefix, ".bin");
        let idx = Mapped::open(&idx_path)?;
        let bin = Mapped::open(&bin_path)?;
        let b = idx.bytes();
        let bad = |msg: String| Err(Error::corpus(&idx_path, msg));
        if b.len() < HEADER_LEN {
            return bad(format!(
                "{} bytes, shorter than the 34-byte header",
                b.len()
            ));
        }
        if &b[..9] != MAGIC {
            return bad("not a Megatron/GPT-NeoX index (bad magic)".into());
        }
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let version = u64_at(9);
        if version != VERSION {
            return bad(format!("index version {version}, expected {VERSION}"));
        }
        let Some(dtype) = TokenDtype::from_code(b[17]) else {
            return bad(format!(
                "dtype code {} is not supported (8 = uint16, 4 = int32)",
                b[17]
            ));
        };
        let (n, d) = (u64_at(18), u64_at(26));
        let want = n
            .checked_mul(12)
            .and_then(|x| d.checked_mul(8).and_then(|y| x.checked_add(y)))
            .and_then(|x| x.checked_add(HEADER_LEN as u64));
        if want != Some(b.len() as u64) {
            return bad(format!(
                "{} bytes, but {n} sequences and {d} doc_idx entries need {}",
                b.len(),
                want.map(|w| w.to_string())
                    .unwrap_or_else(|| "more than 2^64".into())
            ));
        }
        if d == 0 {
            return bad("empty doc_idx (it always holds at least 0)".into());
        }
        let c = IndexedCorpus {
            idx_path: idx_path.clone(),
            bin_path: bin_path.clone(),
            idx,
            bin,
            dtype,
            n: n as usize,
            d: d as usize,
        };
        let expect_bin = if c.n == 0 {
            0
        } else {
            let last = c.n - 1;
            c.pointer(last) + c.size(last) as u64 * dtype.size() as u64
        };
        if expect_bin != c.bin.bytes().len() as u64 {
            return Err(Error::corpus(
                &bin_path,
                format!(
                    "{} bytes, the index describes {expect_bin}: incomplete or mismatched pair",
                    c.bin.bytes().len()
                ),
            ));
        }
        if c.doc_idx(0) != 0 || c.doc_idx(c.d - 1) != n {
            return Err(Error::corpus(
                &idx_path,
                format!("doc_idx must run from 0 to {n}"),
            ));
        }
        Ok(c)
    }

    pub fn dtype(&self) -> TokenDtype {
        self.dtype
    }

    pub fn num_sequences(&self) -> usize {
        self.n
    }

    /// Documents: doc_idx entries less one.
    pub fn num_documents(&self) -> usize {
        self.d - 1
    }

    pub fn num_tokens(&self) -> u64 {
        (self.bin.bytes().len() / self.dtype.size()) as u64
    }

    /// Length in tokens of sequence `i` (decoded from the unaligned array).
    pub fn size(&self, i: usize) -> u32 {
        assert!(i < self.n, "sequence {i} of {}", self.n);
        let o = HEADER_LEN + 4 * i;
        i32::from_le_bytes(self.idx.bytes()[o..o + 4].try_into().unwrap()) as u32
    }

    /// Byte offset of sequence `i` in `.bin`.
    pub fn pointer(&self, i: usize) -> u64 {
        assert!(i < self.n, "sequence {i} of {}", self.n);
        let o = HEADER_LEN + 4 * self.n + 8 * i;
        i64::from_le_bytes(self.idx.bytes()[o..o + 8].try_into().unwrap()) as u64
    }

    pub fn doc_idx(&self, j: usize) -> u64 {
        assert!(j < self.d, "doc_idx {j} of {}", self.d);
        let o = HEADER_LEN + 12 * self.n + 8 * j;
        i64::from_le_bytes(self.idx.bytes()[o..o + 8].try_into().unwrap()) as u64
    }

    /// Tokens of sequence `i`, in place.
    pub fn sequence(&self, i: usize) -> Tokens<'_> {
        let start = self.pointer(i) as usize;
        let len = self.size(i) as usize * self.dtype.size();
        view(self.dtype, &self.bin.bytes()[start..start + len])
    }

    /// The sequences of document `j`.
    pub fn document_sequences(&self, j: usize) -> Range<usize> {
        assert!(j + 1 < self.d, "document {j} of {}", self.d - 1);
        self.doc_idx(j) as usize..self.doc_idx(j + 1) as usize
    }

    /// Tokens of document `j`, in place (its sequences are contiguous in `.bin`, as every
    /// writer of this format lays them out; [`IndexedCorpus::verify`] checks it).
    pub fn document(&self, j: usize) -> Tokens<'_> {
        let r = self.document_sequences(j);
        if r.is_empty() {
            return view(self.dtype, &[]);
        }
        let start = self.pointer(r.start) as usize;
        let last = r.end - 1;
        let end = self.pointer(last) as usize + self.size(last) as usize * self.dtype.size();
        view(self.dtype, &self.bin.bytes()[start..end])
    }

    /// All tokens of the corpus, in place.
    pub fn tokens(&self) -> Tokens<'_> {
        view(self.dtype, self.bin.bytes())
    }

    /// Checks every entry: sizes non-negative, pointers contiguous from 0, doc_idx
    /// non-decreasing from 0 to N.
    pub fn verify(&self) -> Result<()> {
        let mut address = 0u64;
        for i in 0..self.n {
            let s = i32::from_le_bytes(
                self.idx.bytes()[HEADER_LEN + 4 * i..HEADER_LEN + 4 * i + 4]
                    .try_into()
                    .unwrap(),
            );
            if s < 0 {
                return Err(Error::corpus(
                    &self.idx_path,
                    format!("sequence {i}: size {s}"),
                ));
            }
            if self.pointer(i) != address {
                return Err(Error::corpus(
                    &self.idx_path,
                    format!(
                        "sequence {i}: pointer {} where {address} was expected",
                        self.pointer(i)
                    ),
                ));
            }
            address += s as u64 * self.dtype.size() as u64;
        }
        if address != self.bin.bytes().len() as u64 {
            return Err(Error::corpus(
                &self.bin_path,
                format!(
                    "{} bytes, the sizes add up to {address}",
                    self.bin.bytes().len()
                ),
            ));
        }
        let mut prev = 0;
        for j in 0..self.d {
            let v = self.doc_idx(j);
            if v < prev || v > self.n as u64 {
                return Err(Error::corpus(
                    &self.idx_path,
                    format!("doc_idx[{j}] = {v} (previous {prev}, {} sequences)", self.n),
                ));
            }
            prev = v;
        }
        Ok(())
    }
}

/// The reference system's flat format (`PREFIX.data`): uint16 tokens, documents separated
/// by (ending with) the EOD id, no index. Mapped zero-copy like the indexed corpus.
pub struct RawCorpus {
    bin: Mapped,
}

impl RawCorpus {
    pub fn open(path: &Path) -> Result<Self> {
        let bin = Mapped::open(path)?;
        if bin.bytes().len() % 2 != 0 {
            return Err(Error::corpus(
                path,
                format!(
                    "{} bytes: not a whole number of uint16 tokens",
                    bin.bytes().len()
                ),
            ));
        }
        Ok(RawCorpus { bin })
    }

    pub fn tokens(&self) -> Tokens<'_> {
        view(TokenDtype::Uint16, self.bin.bytes())
    }

    /// Document boundaries: each document ends with (and includes) an `eod`; trailing
    /// tokens without one form a last document.
    pub fn documents(&self, eod: u32) -> Vec<Range<usize>> {
        let Tokens::Uint16(t) = self.tokens() else {
            unreachable!()
        };
        let mut out = vec![];
        let mut start = 0;
        for (i, &x) in t.iter().enumerate() {
            if x as u32 == eod {
                out.push(start..i + 1);
                start = i + 1;
            }
        }
        if start < t.len() {
            out.push(start..t.len());
        }
        out
    }
}
