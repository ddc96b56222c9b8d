//! Corpus data: the Megatron/GPT-NeoX indexed format (writer and zero-copy reader), input
//! shard readers (jsonl, jsonl.zst, parquet), the tokenizer, and the preprocessing
//! pipeline behind `lcm preprocess pile`.

pub mod fast;
pub mod indexed;
pub mod inputs;
pub mod preprocess;
pub mod stats;
pub mod tokenizer;

pub use indexed::{IndexedCorpus, RawCorpus, TokenDtype, Tokens};
pub use tokenizer::Tokenizer;
