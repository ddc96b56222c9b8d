//! The SWA+HSA passkey toy (issue 21): `configs/passkey-toy-hsa.json`, the DRT toy's recipe
//! with an `swa_hsa` model of the same size, trains on CPU, from scratch, to find a 3-token
//! passkey by retrieval, and keeps finding it at 16x and 256x its training length. A
//! shortened run, scored as [`passkey_util`] describes.

mod passkey_util;

use passkey_util::{probe, train_and_check};

#[test]
fn passkey_toy_hsa_learns_and_extrapolates() {
    let probes = [probe(1, 128, 32), probe(16, 48, 8), probe(256, 16, 4)];
    train_and_check("configs/passkey-toy-hsa.json", 1000, &probes, 0.9);
}
