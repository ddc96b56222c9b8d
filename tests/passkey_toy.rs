//! The passkey toy (issue 7): `configs/passkey-toy.json` (DRT) trains on CPU, from
//! scratch, to find a 3-token passkey by retrieval, and keeps finding it at 16x its
//! training length. A shortened run, scored as [`passkey_util`] describes.

mod passkey_util;

use passkey_util::{probe, train_and_check};

#[test]
fn passkey_toy_learns_and_extrapolates() {
    let probes = [probe(1, 128, 32), probe(16, 48, 8)];
    train_and_check("configs/passkey-toy.json", 1000, &probes, 0.9);
}
