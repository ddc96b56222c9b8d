//! `lcm bench kernels` entries of DRT chunk retrieval.

use tch::{Kind, Tensor};

use super::{KernelsBench, Row};
use crate::error::Result;

/// DRT chunk retrieval: `m` landmark queries, the last of `e` landmarks (training: m = e,
/// the causal C x C problem; inference: a segment's queries against the whole memory).
pub struct RetrievalShape {
    pub n: i64,
    pub m: i64,
    pub e: i64,
    pub d: i64,
    pub k: i64,
}

impl RetrievalShape {
    fn label(&self) -> String {
        format!(
            "N{} M{} E{} d{} K{}",
            self.n, self.m, self.e, self.d, self.k
        )
    }
    /// Index of the first query's landmark: query i sees keys `j < first + i`.
    fn first(&self) -> i64 {
        self.e - self.m
    }
    /// Score FLOPs over the visible (query, key) pairs only.
    fn flops(&self) -> f64 {
        let f = self.first() as f64;
        let m = self.m as f64;
        let pairs = m * f + m * (m - 1.0) / 2.0;
        2.0 * self.n as f64 * pairs * self.d as f64
    }
    /// q and k read once (bf16), indices and scores written (int64 + fp32).
    fn bytes(&self) -> f64 {
        ((self.n * (self.m + self.e) * self.d * 2) + self.n * self.m * self.k * 12) as f64
    }
}

/// The retrieval op (top-k and weights, no gradient) through the dispatch (the kernel on
/// bf16 CUDA), against the pure-tch path the models used before: the full score matrix
/// for training shapes, the blocked running top-k for inference.
pub(super) fn retrieval(bench: &KernelsBench, s: &RetrievalShape) -> Result<Vec<Row>> {
    use crate::ops::retrieval::{
        chunk_retrieval, chunk_retrieval_blocked, chunk_retrieval_blocked_reference,
        chunk_retrieval_reference, kernel_supports, RETRIEVAL_BLOCK,
    };
    let dev = bench.device;
    let _g = tch::no_grad_guard();
    let opts = (Kind::BFloat16, dev);
    // Rotate among input sets larger than L2 together (the keys are 400 MB at 16M tokens).
    let sets = if s.e >= 65536 { 2 } else { 4 };
    let inputs: Vec<(Tensor, Tensor)> = (0..sets)
        .map(|_| {
            (
                Tensor::randn([s.n, s.m, s.d], opts),
                Tensor::randn([s.n, s.e, s.d], opts),
            )
        })
        .collect();
    let training = s.m == s.e;
    let first = s.first();
    let run = |q: &Tensor, k: &Tensor| {
        if training {
            chunk_retrieval(q, k, s.k, false)
        } else {
            chunk_retrieval_blocked(q, k, first, s.k, RETRIEVAL_BLOCK)
        }
    };
    let reference = |q: &Tensor, k: &Tensor| {
        if training {
            chunk_retrieval_reference(q, k, s.k, false)
        } else {
            chunk_retrieval_blocked_reference(q, k, first, s.k, RETRIEVAL_BLOCK)
        }
    };
    let mut ms = None;
    if kernel_supports(&inputs[0].0, &inputs[0].1, s.k.min(s.m)) {
        let mut i = 0;
        ms = Some(bench.time_ms(bench.warmup, bench.runs, || {
            let (q, k) = &inputs[i % sets];
            i += 1;
            let _ = run(q, k);
        }));
    }
    let mut ref_ms = None;
    if !bench.no_reference {
        let mut i = 0;
        ref_ms = Some(bench.time_ms(1, (bench.runs / 5).max(3), || {
            let (q, k) = &inputs[i % sets];
            i += 1;
            let _ = reference(q, k);
        }));
    }
    let (flops, bytes) = (s.flops(), s.bytes());
    let row = bench.row("retr", s.label(), "fwd", ms, flops, bytes, ref_ms, None);
    Ok(vec![row])
}
