//! Synthetic rows with several phrasings (`data.synthetic.variants`): each row uses one
//! phrasing whole (its needle, question and key length and range), all are drawn, and a
//! bad variant is named in the error.

use lcm::data::synthetic::{PasskeyConfig, Phrasing};
use lcm::util::SplitMix64;

fn config() -> PasskeyConfig {
    PasskeyConfig {
        variants: vec![Phrasing {
            needle: vec![5, 6, 7],
            question: vec![8],
            key_len: 5,
            key_lo: 30,
            key_hi: 40,
        }],
        ..PasskeyConfig::passkey(3, (10, 20), vec![1, 2], vec![3, 4])
    }
}

/// The phrasing a row was written with, checked whole: (needle, question, key range, key_len).
fn phrasing_of(window: &[u32], answer: &[bool]) -> usize {
    let answer_len = answer.iter().filter(|&&a| a).count();
    let n = window.len();
    let key = &window[n - answer_len..];
    let (needle, question, lo, hi): (&[u32], &[u32], u32, u32) = match answer_len {
        3 => (&[1, 2], &[3, 4], 10, 20),
        5 => (&[5, 6, 7], &[8], 30, 40),
        other => panic!("answer of {other} tokens"),
    };
    assert!(key.iter().all(|&k| (lo..hi).contains(&k)), "key {key:?}");
    let q = n - answer_len - question.len();
    assert_eq!(&window[q..n - answer_len], question);
    let p = window
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle planted");
    assert_eq!(
        &window[p + needle.len()..p + needle.len() + answer_len],
        key
    );
    if answer_len == 3 {
        0
    } else {
        1
    }
}

/// A 40-target row (41 tokens of haystack id 50) written by `cfg` with rng `seed`: the
/// window and the answer flags (`answer[t]` marks target t, which predicts window[t + 1]).
fn row(cfg: &PasskeyConfig, seed: u64) -> (Vec<u32>, Vec<bool>) {
    let mut rng = SplitMix64::new(seed);
    let mut window = vec![50u32; 41];
    let (mut ignore, mut answer) = (vec![false; 40], vec![false; 40]);
    cfg.insert(&mut window, &mut ignore, &mut answer, &mut rng);
    (window, answer)
}

#[test]
fn each_row_uses_one_phrasing_and_both_are_drawn() {
    let cfg = config();
    cfg.validate(40, 64).unwrap();
    let mut seen = [0usize; 2];
    for seed in 0..200u64 {
        let (window, answer) = row(&cfg, seed);
        let mut ans_tokens = vec![false; 41];
        for (t, &a) in answer.iter().enumerate() {
            ans_tokens[t + 1] = a;
        }
        seen[phrasing_of(&window, &ans_tokens)] += 1;
    }
    assert!(seen.iter().all(|&c| c > 60), "phrasings drawn {seen:?}");
}

#[test]
fn phrased_zero_is_the_config_without_variants() {
    let cfg = config();
    let own = cfg.phrased(0);
    assert!(own.variants.is_empty());
    assert_eq!((own.needle.clone(), own.key_len), (vec![1, 2], 3));
    let other = cfg.phrased(1);
    assert_eq!(
        (other.needle, other.key_len, other.key_lo),
        (vec![5, 6, 7], 5, 30)
    );
}

#[test]
fn a_variant_outside_the_vocabulary_is_named() {
    let mut cfg = config();
    cfg.variants[0].key_hi = 100;
    let err = cfg.validate(40, 64).unwrap_err().to_string();
    assert!(err.contains("data.synthetic.variants[0].key_hi"), "{err}");
}

/// With `answer_weight` the loss is the text targets' mean plus `w` times the answers' mean
/// (each computed here by hand); without it, one mean over every target.
#[test]
fn answer_weight_separates_the_answers_mean() {
    use lcm::train::sampler::{Batch, IGNORE};
    use lcm::train::trainer::{lm_loss, training_loss};
    use tch::{Kind, Tensor};

    tch::manual_seed(0);
    let logits = Tensor::randn([2, 6, 11], (Kind::Float, tch::Device::Cpu));
    let targets =
        Tensor::from_slice(&[1i64, 2, IGNORE, 4, 5, 6, 7, IGNORE, 9, 10, 0, 3]).view([2, 6]);
    let answer = Tensor::from_slice(&[
        false, false, false, false, true, true, false, false, false, false, false, true,
    ])
    .view([2, 6]);
    let batch = Batch {
        inputs: Tensor::zeros([2, 6], (Kind::Int64, tch::Device::Cpu)),
        targets: targets.shallow_clone(),
        answer: answer.shallow_clone(),
    };
    let logp = logits.log_softmax(-1, Kind::Float).view([12, 11]);
    let t: Vec<i64> = Vec::try_from(targets.view([-1])).unwrap();
    let a: Vec<bool> = Vec::try_from(answer.view([-1])).unwrap();
    let (mut text, mut nt, mut ans, mut na) = (0.0, 0.0, 0.0, 0.0);
    for i in 0..12 {
        if t[i] == IGNORE {
            continue;
        }
        let nll = -logp.double_value(&[i as i64, t[i]]);
        if a[i] {
            ans += nll;
            na += 1.0;
        } else {
            text += nll;
            nt += 1.0;
        }
    }
    let weighted =
        training_loss(&logits, &batch.targets, &batch.answer, Some(3.0)).double_value(&[]);
    let want = text / nt + 3.0 * ans / na;
    assert!((weighted - want).abs() < 1e-5, "{weighted} vs {want}");
    let plain = training_loss(&logits, &batch.targets, &batch.answer, None).double_value(&[]);
    assert!((plain - (text + ans) / (nt + na)).abs() < 1e-5);
    assert_eq!(plain, lm_loss(&logits, &targets).double_value(&[]));
}

/// With `end_jitter` the answer ends 0..=J tokens before the row's end, every offset drawn,
/// the haystack after it untouched and no target there marked as an answer.
#[test]
fn end_jitter_moves_the_question_across_alignments() {
    let mut cfg = config();
    cfg.variants.clear();
    cfg.end_jitter = Some(7);
    cfg.validate(40, 64).unwrap();
    let mut seen = [0usize; 8];
    for seed in 0..400u64 {
        let (window, answer) = row(&cfg, seed);
        let last = answer.iter().rposition(|&a| a).expect("an answer");
        let jitter = 40 - (last + 1);
        assert!(jitter <= 7, "jitter {jitter}");
        seen[jitter] += 1;
        assert!(
            window[last + 2..].iter().all(|&t| t == 50),
            "haystack after the answer"
        );
        let key = &window[last - 1..last + 2];
        assert!(key.iter().all(|&k| (10..20).contains(&k)), "key {key:?}");
        assert_eq!(
            &window[last - 3..last - 1],
            &[3, 4],
            "question before the key"
        );
        assert_eq!(answer.iter().filter(|&&a| a).count(), 3);
    }
    assert!(seen.iter().all(|&c| c > 20), "offsets drawn {seen:?}");
    // A jitter larger than the row's room is cut to it: facts, question and answer stay
    // inside the row and min_gap holds.
    cfg.end_jitter = Some(40);
    cfg.min_gap = 30;
    cfg.validate(40, 64).unwrap();
    for seed in 0..100u64 {
        let (window, answer) = row(&cfg, seed);
        let last = answer.iter().rposition(|&a| a).unwrap();
        let needle = window.windows(2).position(|w| w == [1, 2]).unwrap();
        // The answer starts at last - 1; the fact (needle + 3-token key) ends min_gap before.
        let answer_start = last - 1;
        assert!(
            needle + 5 + 30 <= answer_start,
            "needle at {needle}, answer ends {last}"
        );
    }
}

/// `edge_rate` puts the fact at token 0 (NIAH's depth 0) or right before the question
/// (depth 1) in about that fraction of rows, half each, the rest placed as before; 0 leaves
/// the rows exactly as they were.
#[test]
fn edge_rate_plants_the_fact_at_either_edge() {
    let mut cfg = config();
    cfg.variants.clear();
    // Needle [1, 2] + 3 key ids end right before the question [3, 4] at the row's end.
    let place = |cfg: &PasskeyConfig, seed| {
        let (window, answer) = row(cfg, seed);
        let p = window.windows(2).position(|w| w == [1, 2]).unwrap();
        let q = answer.iter().position(|&a| a).unwrap() + 1 - 2;
        match p {
            0 => 0,
            _ if p + 5 == q => 2,
            _ => 1,
        }
    };
    let count = |cfg: &PasskeyConfig| {
        let mut c = [0; 3];
        (0..400u64).for_each(|s| c[place(cfg, s)] += 1);
        c
    };
    let [start, _, end] = count(&cfg);
    assert!(
        start + end < 60,
        "{start} + {end} of 400 at an edge without edge_rate"
    );
    let before: Vec<_> = (0..50u64).map(|s| row(&cfg, s)).collect();
    cfg.edge_rate = 0.0;
    assert!((0..50u64).all(|s| row(&cfg, s) == before[s as usize]));
    cfg.edge_rate = 0.5;
    cfg.validate(40, 64).unwrap();
    let [start, middle, end] = count(&cfg);
    assert!((60..=140).contains(&start), "{start} of 400 at the start");
    assert!(
        (60..=140).contains(&end),
        "{end} of 400 before the question"
    );
    assert!(middle > 120, "{middle} of 400 elsewhere");
    cfg.edge_rate = 1.0;
    assert_eq!(count(&cfg)[1], 0);
    cfg.edge_rate = 1.5;
    let err = cfg.validate(40, 64).unwrap_err().to_string();
    assert!(err.contains("edge_rate"), "{err}");
}
