//! Evaluation at long context: the segmented inference [`engine`] with its memory
//! [`plan`]ner, needle-in-a-haystack ([`niah`], run as a [`grid`]; drawn by
//! `report::heatmap`), the loss by context length ([`ppl`]) and free-running
//! [`generate`]ion on the engine's caches.

pub mod engine;
pub mod generate;
pub mod grid;
pub mod lengths;
pub mod niah;
pub mod plan;
pub mod ppl;

pub use engine::{Engine, PrefillOptions, PrefillStats};
pub use generate::{GenerateOptions, Generator, Sampling};
