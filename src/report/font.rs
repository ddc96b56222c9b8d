//! The font of the PNG reports' labels, registered with plotters once per use.

use std::path::PathBuf;

use plotters::prelude::FontStyle;

use crate::error::{Error, Result};

/// Fonts tried for the labels, in order, unless `LCM_FONT` names one; DejaVu ships with
/// most Linux distributions.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers the first readable font as `sans-serif`; an error names every path tried.
pub(crate) fn register_font() -> Result<()> {
    let candidates: Vec<PathBuf> = match std::env::var_os("LCM_FONT") {
        Some(f) => vec![PathBuf::from(f)],
        None => FONTS.iter().map(PathBuf::from).collect(),
    };
    for p in &candidates {
        if let Ok(bytes) = std::fs::read(p) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(());
            }
        }
    }
    Err(Error::Invalid(format!(
        "no TrueType font for the labels (tried {}); set LCM_FONT to a .ttf file",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}
