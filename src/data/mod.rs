//! Corpus data: the Megatron/GPT-NeoX indexed format (writer and zero-copy reader), input
//! shard readers (jsonl, jsonl.zst, parquet), the tokenizer, the preprocessing pipeline
//! behind `lcm preprocess pile`, and the synthetic retrieval tasks (passkey, s-niah, ...)
//! that training mixes in and `lcm eval niah` asks.

pub mod fast;
pub mod indexed;
pub mod inputs;
pub mod preprocess;
pub mod stats;
pub mod synthetic;
pub mod tokenizer;

pub use indexed::{IndexedCorpus, RawCorpus, TokenDtype, Tokens};
pub use tokenizer::Tokenizer;
