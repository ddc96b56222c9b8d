//! Evaluation at long context: the segmented inference [`engine`] with its memory
//! [`plan`]ner, needle-in-a-haystack ([`niah`], run as a [`grid`]; drawn by
//! `report::heatmap`) and the loss by context length ([`ppl`]).

pub mod engine;
pub mod grid;
pub mod lengths;
pub mod niah;
pub mod plan;
pub mod ppl;

pub use engine::{Engine, PrefillOptions, PrefillStats};
