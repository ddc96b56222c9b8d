//! Lengths on the command line: `4K`, `64K`, `1M`, `16M` (powers of two: K = 1024,
//! M = 1024^2) or plain token counts, comma-separated.

use crate::error::{Error, Result};

/// Parses `"4K,64K,1M,16M"`; an entry that is not a positive length is an error naming it.
pub fn parse_lengths(spec: &str) -> Result<Vec<i64>> {
    spec.split(',')
        .map(|s| parse_length(s.trim()))
        .collect::<Result<Vec<_>>>()
}

pub fn parse_length(s: &str) -> Result<i64> {
    let bad = || {
        Error::Invalid(format!(
            "length `{s}`: expected a positive number of tokens, optionally with K (x1024) or M (x1024^2), e.g. 4K, 16M"
        ))
    };
    let (digits, mult) = match s.chars().last() {
        Some('K') | Some('k') => (&s[..s.len() - 1], 1024),
        Some('M') | Some('m') => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    let n: i64 = digits.parse().map_err(|_| bad())?;
    if n <= 0 {
        return Err(bad());
    }
    n.checked_mul(mult).ok_or_else(bad)
}

/// `16777216` -> `16M`, `4096` -> `4K`, `1000` -> `1000`.
pub fn format_length(n: i64) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{}M", n >> 20)
    } else if n >= 1024 && n % 1024 == 0 {
        format!("{}K", n >> 10)
    } else {
        n.to_string()
    }
}

/// Depths `"0,0.25,0.5,0.75,1"`, each in [0, 1].
pub fn parse_depths(spec: &str) -> Result<Vec<f64>> {
    spec.split(',')
        .map(|s| {
            let s = s.trim();
            match s.parse::<f64>() {
                Ok(d) if (0.0..=1.0).contains(&d) => Ok(d),
                _ => Err(Error::Invalid(format!(
                    "depth `{s}`: expected a number in [0, 1]"
                ))),
            }
        })
        .collect()
}
