//! The SWA+HSA passkey toy (issue 21): `configs/passkey-toy-hsa.json`, the DRT toy's recipe
//! with an `swa_hsa` model of the same size, trains on CPU, from scratch, to find a 3-token
//! passkey by retrieval, and keeps finding it at 16x and 256x its training length. A
//! shortened run, scored as [`passkey_util`] describes.

mod passkey_util;

use passkey_util::{train_and_check, Probe};

#[test]
fn passkey_toy_hsa_learns_and_extrapolates() {
    let probes = [
        Probe {
            times: 1,
            rows: 128,
            batch: 32,
        },
        Probe {
            times: 16,
            rows: 48,
            batch: 8,
        },
        Probe {
            times: 256,
            rows: 16,
            batch: 4,
        },
    ];
    train_and_check("configs/passkey-toy-hsa.json", 1000, &probes, 0.9);
}
