#!/usr/bin/env python3
"""GPT-NeoX's preprocessing, as tools/datasets/preprocess_data.py does it, for comparison
with `lcm preprocess pile` (scripts/bench/preprocess.sh runs both and compares the bytes).

Kept to the shape of the original: documents are streamed from the shards in the main
process (zstandard + json, as lm_dataformat's Reader does), a multiprocessing Pool
tokenises them with HF `tokenizers` through `pool.imap(encode, docs, chunksize=25)`, the
EOD id is appended to each (`--append-eod`), empty texts are filtered out, and an
`MMapIndexedDatasetBuilder` writes `.bin` with numpy and `.idx` with struct + numpy.

  neox_preprocess.py --input a.jsonl.zst [b.jsonl ...] --output-prefix PREFIX
      [--tokenizer 20B_tokenizer.json] [--workers N]

Writes PREFIX_text_document.bin/.idx like the original (its key suffix and level).
"""
import argparse
import io
import json
import multiprocessing
import struct
import sys
import time

import numpy as np
import zstandard
from tokenizers import Tokenizer

# --- megatron/data/indexed_dataset.py (MMap variant) ---------------------------------
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16}
HDR_MAGIC = b"MMIDIDX\x00\x00"


def code(dtype):
    for k, v in DTYPES.items():
        if v == dtype:
            return k
    raise ValueError(dtype)


def best_fitting_dtype(vocab_size=None):
    if vocab_size is not None and vocab_size < 65500:
        return np.uint16
    return np.int32


class IndexWriter:
    def __init__(self, path, dtype):
        self._path, self._dtype = path, dtype

    def __enter__(self):
        self._file = open(self._path, "wb")
        self._file.write(HDR_MAGIC)
        self._file.write(struct.pack("<Q", 1))
        self._file.write(struct.pack("<B", code(self._dtype)))
        return self

    def _get_pointers(self, sizes):
        dtype_size = self._dtype().itemsize
        address = 0
        pointers = []
        for size in sizes:
            pointers.append(address)
            address += size * dtype_size
        return pointers

    def write(self, sizes, doc_idx):
        pointers = self._get_pointers(sizes)
        self._file.write(struct.pack("<Q", len(sizes)))
        self._file.write(struct.pack("<Q", len(doc_idx)))
        self._file.write(np.array(sizes, dtype=np.int32).tobytes(order="C"))
        self._file.write(np.array(pointers, dtype=np.int64).tobytes(order="C"))
        self._file.write(np.array(doc_idx, dtype=np.int64).tobytes(order="C"))

    def __exit__(self, *exc):
        self._file.close()


class MMapIndexedDatasetBuilder:
    def __init__(self, out_file, dtype=np.int64):
        self._data_file = open(out_file, "wb")
        self._dtype = dtype
        self._sizes = []
        self._doc_idx = [0]

    def add_item(self, np_array):
        assert np_array.dtype == self._dtype
        self._data_file.write(np_array.tobytes(order="C"))
        self._sizes.append(np_array.size)

    def end_document(self):
        self._doc_idx.append(len(self._sizes))

    def finalize(self, index_file):
        self._data_file.close()
        with IndexWriter(index_file, self._dtype) as index:
            index.write(self._sizes, self._doc_idx)


# --- tools/datasets/preprocess_data.py -------------------------------------------------
class Encoder:
    def __init__(self, args):
        self.args = args

    def initializer(self):
        Encoder.tokenizer = Tokenizer.from_file(self.args.tokenizer)
        Encoder.eod = Encoder.tokenizer.token_to_id("<|endoftext|>")

    def encode(self, text):
        doc_ids = []
        text_ids = Encoder.tokenizer.encode(text).ids  # HFTokenizer.tokenize
        if len(text_ids) > 0:
            doc_ids.append(text_ids)
        if self.args.append_eod:
            doc_ids[-1].append(Encoder.eod)
        return {"text": doc_ids}, len(text)


def stream_jsonl(fname):
    """lm_dataformat.Reader(fname).stream_data(): zstandard stream + one json per line."""
    with open(fname, "rb") as fh:
        if fname.endswith(".zst"):
            reader = io.BufferedReader(zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(fh))
        else:
            reader = fh
        for line in io.TextIOWrapper(reader, encoding="utf-8"):
            if line.strip():
                yield json.loads(line)["text"]


def yield_from_files(fnames):
    for fname in fnames:
        yield from filter(lambda x: x, stream_jsonl(fname))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--input", nargs="+", required=True)
    p.add_argument("--output-prefix", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--no-append-eod", dest="append_eod", action="store_false")
    args = p.parse_args()

    t0 = time.time()
    encoder = Encoder(args)
    vocab_size = Tokenizer.from_file(args.tokenizer).get_vocab_size()  # with added tokens
    fin = yield_from_files(args.input)
    pool = multiprocessing.Pool(args.workers, initializer=encoder.initializer)
    encoded_docs = pool.imap(encoder.encode, fin, chunksize=25)

    dtype = best_fitting_dtype(vocab_size)
    out = f"{args.output_prefix}_text_document"
    builder = MMapIndexedDatasetBuilder(out + ".bin", dtype=dtype)
    docs = tokens = nbytes = 0
    for doc, bytes_processed in encoded_docs:
        nbytes += bytes_processed
        for sentence in doc["text"]:
            builder.add_item(np.array(sentence, dtype=dtype))
            tokens += len(sentence)
        builder.end_document()
        docs += 1
    builder.finalize(out + ".idx")
    pool.close()
    pool.join()
    secs = time.time() - t0
    print(json.dumps({"documents": docs, "tokens": tokens, "chars": nbytes, "seconds": secs,
                      "tokens_per_s": tokens / secs, "workers": args.workers}))


if __name__ == "__main__":
    sys.exit(main())
