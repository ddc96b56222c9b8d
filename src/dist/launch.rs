//! The launch environment a worker reads: the variables torchrun sets (`RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`), which
//! `lcm launch` sets too and a Slurm script exports from `SLURM_PROCID` and friends.

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub rank: u64,
    pub world: u64,
    /// This worker's index on its node: it binds `cuda:LOCAL_RANK`.
    pub local_rank: u64,
    pub local_world: u64,
    pub master_addr: String,
    pub master_port: u16,
}

impl Launch {
    /// The launch described by the process environment, or None when `WORLD_SIZE` is unset
    /// (a plain single-process run).
    pub fn from_env() -> Result<Option<Launch>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// As [`Launch::from_env`], with the variables from `get`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let Some(world) = get("WORLD_SIZE") else {
            return Ok(None);
        };
        let num = |key: &str, value: &str| -> Result<u64> {
            value.trim().parse::<u64>().map_err(|_| {
                Error::Invalid(format!(
                    "environment variable {key}={value:?} is not a non-negative integer"
                ))
            })
        };
        let required = |key: &str| -> Result<String> {
            get(key).ok_or_else(|| {
                Error::Invalid(format!(
                    "WORLD_SIZE is set but {key} is not: a data-parallel worker needs RANK, \
                     WORLD_SIZE, MASTER_ADDR and MASTER_PORT (torchrun and `lcm launch` set them)"
                ))
            })
        };
        let world = num("WORLD_SIZE", &world)?;
        let rank = num("RANK", &required("RANK")?)?;
        if world == 0 || rank >= world {
            return Err(Error::Invalid(format!(
                "RANK={rank} must be below WORLD_SIZE={world} (and WORLD_SIZE at least 1)"
            )));
        }
        let local_rank = match get("LOCAL_RANK") {
            Some(v) => num("LOCAL_RANK", &v)?,
            None => rank,
        };
        let local_world = match get("LOCAL_WORLD_SIZE") {
            Some(v) => num("LOCAL_WORLD_SIZE", &v)?,
            None => world,
        };
        let master_addr = required("MASTER_ADDR")?;
        let port = required("MASTER_PORT")?;
        let master_port = port
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "MASTER_PORT={port:?} is not a port number (1-65535)"
                ))
            })?;
        Ok(Some(Launch {
            rank,
            world,
            local_rank,
            local_world,
            master_addr,
            master_port,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn torchrun_variables_make_a_launch() {
        let l = Launch::from_vars(vars(&[
            ("WORLD_SIZE", "16"),
            ("RANK", "9"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "8"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (l.rank, l.world, l.local_rank, l.local_world),
            (9, 16, 1, 8)
        );
        assert_eq!((l.master_addr.as_str(), l.master_port), ("node0", 29500));
        assert_eq!(Launch::from_vars(vars(&[])).unwrap(), None);
    }

    #[test]
    fn a_bad_or_missing_variable_is_named() {
        let err = Launch::from_vars(vars(&[("WORLD_SIZE", "2"), ("RANK", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("MASTER_ADDR"), "{err}");
        let err = Launch::from_vars(vars(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("RANK=2"), "{err}");
        let err = Launch::from_vars(vars(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "0"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "http"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("MASTER_PORT"), "{err}");
    }
}
