//! The one progress bar style of the long-running commands that count tokens (`lcm eval`,
//! `lcm bench prefill`): an optional label (the bar's message), the bar, tokens done of
//! all, the rate and the time left.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `total` tokens; `set_message` puts a label in front of it.
pub fn tokens(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg}[{bar:30}] {human_pos}/{human_len} tokens {per_sec} ETA {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar
}
