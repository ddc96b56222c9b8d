//! What a model keeps between the segments of a long sequence (segmented inference, the
//! engine behind `lcm eval`): per self-attention layer the keys of its window
//! ([`KvCache`]), per Mamba2 block its conv inputs and SSM state ([`Mamba2State`]), the
//! chunk memory that grows with the length ([`ChunkStore`]), and for DRT each group's last
//! retrieval, which serves the next segment's first chunk.
//!
//! Memory per token is constant except the chunk memory: a sliding-window layer keeps
//! `window` positions and a Mamba2 block one state whatever the length. The chunk memory
//! lives on the compute device or, with [`Placement::Host`], in (pinned) host memory with
//! only the landmarks on the device; then each segment's retrieved chunks are gathered on
//! the host, once per distinct chunk, and copied over in one transfer.

use tch::{Device, Kind, Tensor};

pub use super::layers::KvCache;
use super::mamba2::Mamba2State;
use crate::ops::Retrieval;

/// Where the chunk memory's keys and values live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On the compute device, with everything else.
    Device,
    /// In host memory (pinned when the compute device is a GPU); landmarks stay on the
    /// device (`--offload cpu`).
    Host,
}

/// Chunk keys/values `(N, chunks, rows, Hkv, hd)` and landmarks `(N, chunks, ...)`, appended
/// segment by segment into buffers that grow by doubling (or are reserved up front by the
/// memory planner, so that a 16M-token sample never copies its memory).
#[derive(Debug)]
pub struct ChunkStore {
    k: Tensor,
    v: Tensor,
    landmarks: Tensor,
    len: i64,
    placement: Placement,
    device: Device,
}

impl ChunkStore {
    /// Room for `capacity` chunks of `rows` positions, landmarks of shape `lmk` per chunk.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        batch: i64,
        capacity: i64,
        rows: i64,
        kv_heads: i64,
        head_dim: i64,
        lmk: &[i64],
        kind: Kind,
        device: Device,
        placement: Placement,
    ) -> Self {
        let capacity = capacity.max(1);
        let kv_shape = [batch, capacity, rows, kv_heads, head_dim];
        let host = match placement {
            Placement::Host => Device::Cpu,
            Placement::Device => device,
        };
        let alloc = |shape: &[i64], dev: Device| {
            if dev == Device::Cpu && device.is_cuda() {
                crate::cuda::pinned_empty(shape, kind)
            } else {
                Tensor::zeros(shape, (kind, dev))
            }
        };
        let mut lmk_shape = vec![batch, capacity];
        lmk_shape.extend_from_slice(lmk);
        ChunkStore {
            k: alloc(&kv_shape, host),
            v: alloc(&kv_shape, host),
            landmarks: Tensor::zeros(lmk_shape.as_slice(), (kind, device)),
            len: 0,
            placement,
            device,
        }
    }

    /// Chunks stored.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn placement(&self) -> Placement {
        self.placement
    }

    fn capacity(&self) -> i64 {
        self.k.size()[1]
    }

    /// Bytes of the keys and values (wherever they live) and of the landmarks.
    pub fn bytes(&self) -> (i64, i64) {
        let b = |t: &Tensor| t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        (b(&self.k) + b(&self.v), b(&self.landmarks))
    }

    fn grow(&mut self, needed: i64) {
        let cap = (2 * self.capacity()).max(needed);
        let enlarge = |t: &Tensor| {
            let mut shape = t.size();
            shape[1] = cap;
            let big = if t.device() == Device::Cpu && self.device.is_cuda() {
                crate::cuda::pinned_empty(&shape, t.kind())
            } else {
                Tensor::zeros(shape.as_slice(), (t.kind(), t.device()))
            };
            big.narrow(1, 0, self.len).copy_(&t.narrow(1, 0, self.len));
            big
        };
        self.k = enlarge(&self.k);
        self.v = enlarge(&self.v);
        self.landmarks = enlarge(&self.landmarks);
    }

    /// Appends `k`/`v (N, c, rows, Hkv, hd)` and `landmarks (N, c, ...)`.
    pub fn append(&mut self, k: &Tensor, v: &Tensor, landmarks: &Tensor) {
        let c = k.size()[1];
        if self.len + c > self.capacity() {
            self.grow(self.len + c);
        }
        self.k.narrow(1, self.len, c).copy_(k);
        self.v.narrow(1, self.len, c).copy_(v);
        self.landmarks.narrow(1, self.len, c).copy_(landmarks);
        self.len += c;
    }

    /// Forgets the chunks after the first `len` (a rollback: [`InferenceState::restore`]).
    /// The buffers stay; the next [`ChunkStore::append`] writes over the forgotten chunks.
    pub fn truncate(&mut self, len: i64) {
        assert!(
            (0..=self.len).contains(&len),
            "truncate to {len} chunks of {}",
            self.len
        );
        self.len = len;
    }

    /// Every landmark so far, `(N, len, ...)`, on the compute device.
    pub fn landmarks(&self) -> Tensor {
        self.landmarks.narrow(1, 0, self.len)
    }

    /// For the chunks `indices` names (int64, any shape `(N, ...)`, entries in `0..len`;
    /// empty slots must be clamped by the caller): the memory on the compute device as rows
    /// `(M, rows, Hkv, hd)` (k and v), and each entry's row, shaped as `indices`: what
    /// [`crate::ops::gca_gathered`] reads without a gathered copy. An offloaded store sends
    /// only the distinct chunks named ([`ChunkStore::compact`]).
    pub fn memory_rows(&self, indices: &Tensor) -> (Tensor, Tensor, Tensor) {
        let (k, v, local) = match self.placement {
            Placement::Device => (
                self.k.shallow_clone(),
                self.v.shallow_clone(),
                indices.shallow_clone(),
            ),
            Placement::Host => self.compact(indices),
        };
        let n = indices.size()[0];
        let u = k.size()[1];
        let base = (Tensor::arange(n, (Kind::Int64, self.device)) * u).view([n, 1]);
        let rows = (local.reshape([n, -1]) + base).reshape(indices.size().as_slice());
        let flat = |t: &Tensor| {
            let mut shape = vec![n * u];
            shape.extend_from_slice(&t.size()[2..]);
            t.reshape(shape.as_slice())
        };
        (flat(&k), flat(&v), rows)
    }

    /// The distinct chunks `indices` names, gathered into `(k, v)` of shape
    /// `(N, U, rows, Hkv, hd)` on the compute device, and `indices` renumbered into them.
    /// An offloaded store gathers on the host into pinned memory and sends the lot in one
    /// asynchronous copy; the reference per-chunk copies were the reference's bottleneck.
    pub fn compact(&self, indices: &Tensor) -> (Tensor, Tensor, Tensor) {
        let home = self.k.device();
        let flat = indices.reshape([-1]).to_device(home);
        let (distinct, inverse, _) = flat.internal_unique2(true, true, false);
        let local = inverse
            .reshape(indices.size().as_slice())
            .to_device(self.device);
        let fetch = |t: &Tensor| {
            let mut shape = t.size();
            shape[1] = distinct.size()[0];
            if home == self.device {
                return t.index_select(1, &distinct);
            }
            let staging = if self.device.is_cuda() {
                crate::cuda::pinned_empty(&shape, t.kind())
            } else {
                Tensor::empty(shape.as_slice(), (t.kind(), home))
            };
            let staging = t.index_select_out(&staging, 1, &distinct);
            staging.to_device_(self.device, t.kind(), true, false)
        };
        (fetch(&self.k), fetch(&self.v), local)
    }
}

/// Everything a model carries from one inference segment to the next.
#[derive(Debug)]
pub struct InferenceState {
    /// Positions consumed (DRT counts its landmarks).
    pub positions: i64,
    /// One per self-attention layer, in the order the model runs them.
    pub attn: Vec<KvCache>,
    /// One per Mamba2 block, in the order the model runs them (RAMba).
    pub mamba: Vec<Mamba2State>,
    /// The chunk memory (none for the baselines).
    pub store: Option<ChunkStore>,
    /// DRT: per retrieval group, the last landmark's choice `(N, 1, K)`, which serves the
    /// next segment's first chunk (the reference gives that chunk nothing: seed-report 9.4).
    pub carried: Vec<Option<Retrieval>>,
}

impl InferenceState {
    /// A fresh state for `layers` self-attention layers and `groups` DRT groups (no
    /// Mamba2 blocks: a model with some pushes their states onto `mamba`).
    pub fn new(layers: usize, groups: usize, store: Option<ChunkStore>) -> Self {
        InferenceState {
            positions: 0,
            attn: (0..layers).map(|_| KvCache::default()).collect(),
            mamba: Vec::new(),
            store,
            carried: (0..groups).map(|_| None).collect(),
        }
    }

    /// Bytes held per layer: the window caches and the Mamba2 states.
    pub fn cache_bytes(&self) -> i64 {
        let b = |t: &Tensor| t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        self.attn.iter().map(KvCache::bytes).sum::<i64>()
            + self
                .mamba
                .iter()
                .map(|m| b(&m.conv) + b(&m.ssm))
                .sum::<i64>()
    }

    /// What [`InferenceState::restore`] needs to undo the segments fed after this call:
    /// positions, the window caches, Mamba2 states and carried retrievals (sharing their
    /// tensors, which a segment replaces rather than writes into) and the chunk memory's
    /// length (a segment only appends to it). Generation feeds its unfinished chunk padded
    /// to a whole one and then rolls back ([`crate::eval::generate`]).
    pub fn snapshot(&self) -> StateSnapshot {
        StateSnapshot {
            positions: self.positions,
            attn: self.attn.iter().map(KvCache::snapshot).collect(),
            mamba: self
                .mamba
                .iter()
                .map(|m| Mamba2State {
                    conv: m.conv.shallow_clone(),
                    ssm: m.ssm.shallow_clone(),
                })
                .collect(),
            store_len: self.store.as_ref().map(ChunkStore::len),
            carried: self
                .carried
                .iter()
                .map(|r| {
                    r.as_ref().map(|r| Retrieval {
                        weights: r.weights.shallow_clone(),
                        indices: r.indices.shallow_clone(),
                    })
                })
                .collect(),
        }
    }

    /// Back to the state [`InferenceState::snapshot`] saw.
    pub fn restore(&mut self, snapshot: StateSnapshot) {
        self.positions = snapshot.positions;
        self.attn = snapshot.attn;
        self.mamba = snapshot.mamba;
        self.carried = snapshot.carried;
        if let (Some(store), Some(len)) = (self.store.as_mut(), snapshot.store_len) {
            store.truncate(len);
        }
    }
}

/// An [`InferenceState`] as it was ([`InferenceState::snapshot`]).
#[derive(Debug)]
pub struct StateSnapshot {
    positions: i64,
    attn: Vec<KvCache>,
    mamba: Vec<Mamba2State>,
    store_len: Option<i64>,
    carried: Vec<Option<Retrieval>>,
}

/// How to size and place a state: the batch, the tokens it will see (to reserve the chunk
/// memory once), where the memory lives, and the dtype of the activations.
#[derive(Debug, Clone, Copy)]
pub struct StateOptions {
    pub batch: i64,
    pub capacity_tokens: i64,
    pub placement: Placement,
    pub kind: Kind,
    pub device: Device,
}
