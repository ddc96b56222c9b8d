//! The passkey toy with keys drawn from the haystack's own ids (issue 20: the references'
//! keys are random ids of the text's vocabulary). `configs/passkey-toy-random.json` draws
//! the keys apart from the haystack first, where retrieval and copy are learned by what the
//! key ids are, then from a range that overlaps the haystack's, then from the haystack's
//! own ids alone, where only the key's place after the needle tells it from the text. A
//! shortened run (the curriculum through the third stage and 400 steps of the haystack's
//! ids), scored on the haystack's ids as [`passkey_util`] describes.

mod passkey_util;

use passkey_util::{probe, train_and_check};

#[test]
fn passkey_toy_with_haystack_keys_learns_and_extrapolates() {
    let probes = [probe(1, 128, 32), probe(16, 48, 8), probe(256, 16, 4)];
    train_and_check("configs/passkey-toy-random.json", 2400, &probes, 0.9);
}
