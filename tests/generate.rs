//! `lcm generate` and the [`Generator`] behind it: greedy generation on the segmented
//! engine's caches equals the argmax of the full forward over the prompt and the tokens so
//! far, token for token, for every arch (prompts that end mid-chunk, inside the first chunk,
//! on a chunk boundary, prefilled in several segments); each step's logits are the full
//! forward's; a snapshot restored forgets the tokens after it; sampling follows its seed,
//! top-k and top-p; the binary streams ids that repeat run to run and the text it streams
//! decodes them (the NeoX tokenizer from set-up), and it fails with clear errors.

mod model_util;
mod run_util;

use std::path::Path;

use lcm::eval::generate::choose;
use lcm::eval::{Engine, GenerateOptions, Generator, Sampling};
use lcm::model::Placement;
use lcm::util::SplitMix64;
use model_util::{tiny, ARCHS, VOCAB};
use run_util::{lcm, ok, tiny_config, write_config};
use tch::{Device, Tensor};

/// Random prompt ids in [0, VOCAB - 1) (never DRT's landmark id, VOCAB - 1).
fn prompt(len: usize, seed: u64) -> Vec<i64> {
    let mut rng = SplitMix64::new(seed);
    (0..len)
        .map(|_| rng.below(VOCAB as u64 - 1) as i64)
        .collect()
}

/// The full forward's logits `(T, V)` over `ids`, padded at the end to a multiple of the
/// chunk size (causal: the padding changes nothing before it).
fn full_logits(engine: &Engine, ids: &[i64]) -> Tensor {
    let m = engine.model.length_multiple() as usize;
    let mut padded = ids.to_vec();
    padded.resize(ids.len().div_ceil(m) * m, 0);
    let x = Tensor::from_slice(&padded).view([1, -1]);
    let logits = tch::no_grad(|| engine.model.forward(&x, false));
    logits.get(0).narrow(0, 0, ids.len() as i64)
}

/// The argmax of `logits (V,)` with DRT's landmark id left out (the generator never
/// chooses it: it is no text token).
fn argmax_text(engine: &Engine, logits: &Tensor) -> i64 {
    let l = logits.copy();
    if let Some(d) = &engine.config().drt {
        let _ = l.get(d.landmark_id).fill_(f64::NEG_INFINITY);
    }
    l.argmax(0, false).int64_value(&[])
}

#[test]
fn greedy_generation_is_the_argmax_of_the_full_forward() {
    // Chunks of 4, a window of 5: 10 new tokens cross two chunk boundaries. Prompts of 7
    // (mid-chunk), 3 (inside the first chunk), 8 (whole chunks) and 11 prefilled in
    // segments of 4.
    for arch in ARCHS {
        tch::manual_seed(11);
        let engine = Engine::random(&tiny(arch), Device::Cpu).unwrap();
        for (len, segment) in [(7, 16384), (3, 16384), (8, 16384), (11, 4)] {
            let start = prompt(len, len as u64);
            let opts = GenerateOptions {
                segment,
                placement: Placement::Device,
                max_new_tokens: 10,
            };
            let mut g = Generator::new(&engine, &start, Sampling::greedy(), &opts).unwrap();
            let mut ids = start.clone();
            let mut step_logits = Vec::new();
            for _ in 0..10 {
                step_logits.push(Tensor::from_slice(g.logits()));
                ids.push(g.next_token().unwrap());
            }
            let full = full_logits(&engine, &ids);
            for (i, step) in step_logits.iter().enumerate() {
                let pos = (len + i - 1) as i64;
                let want = full.get(pos);
                let diff = (&want - step).abs().max().double_value(&[])
                    / want.abs().max().double_value(&[]);
                assert!(
                    diff <= 2e-5,
                    "{arch}, prompt {len}: step {i}'s logits differ from the full forward's by {diff:e}"
                );
                assert_eq!(
                    ids[len + i],
                    argmax_text(&engine, &want),
                    "{arch}, prompt {len}: token {i} is not the full forward's argmax ({ids:?})"
                );
            }
        }
    }
}

#[test]
fn the_chunk_memory_is_offloadable_and_never_keeps_a_peeked_chunk() {
    // After N generated tokens a DRT's memory holds exactly the whole chunks so far: the
    // padded chunks that gave the logits in between were rolled back. Offloaded to the host,
    // the tokens are the same.
    tch::manual_seed(12);
    let engine = Engine::random(&tiny("drt"), Device::Cpu).unwrap();
    let start = prompt(6, 1);
    let run = |placement| {
        let opts = GenerateOptions {
            segment: 16384,
            placement,
            max_new_tokens: 9,
        };
        let mut g = Generator::new(&engine, &start, Sampling::greedy(), &opts).unwrap();
        let ids = (0..9).map(|_| g.next_token().unwrap()).collect::<Vec<_>>();
        // 15 tokens: 3 whole chunks, 3 pending.
        assert_eq!(g.state().store.as_ref().unwrap().len(), 3);
        ids
    };
    assert_eq!(run(Placement::Device), run(Placement::Host));
}

/// A snapshot taken after the prompt, then tokens forced past two chunk boundaries (fed for
/// real), then a restore: the logits and greedy tokens are those of a generator that never
/// saw the forced tokens, and a DRT's memory holds only the chunks it had (every arch).
#[test]
fn a_restored_generator_forgets_what_came_after_its_snapshot() {
    for arch in ARCHS {
        tch::manual_seed(14);
        let engine = Engine::random(&tiny(arch), Device::Cpu).unwrap();
        let start = prompt(6, 2);
        let opts = GenerateOptions {
            segment: 4,
            placement: Placement::Device,
            max_new_tokens: 12,
        };
        let mut fresh = Generator::new(&engine, &start, Sampling::greedy(), &opts).unwrap();
        let want: Vec<i64> = (0..7).map(|_| fresh.next_token().unwrap()).collect();

        let mut g = Generator::new(&engine, &start, Sampling::greedy(), &opts).unwrap();
        let chunks = |g: &Generator| g.state().store.as_ref().map(|s| s.len());
        let before = (g.logits().to_vec(), chunks(&g));
        let snapshot = g.snapshot();
        for id in prompt(9, 3) {
            g.push(id).unwrap();
        }
        assert_ne!(
            g.logits(),
            before.0.as_slice(),
            "{arch}: the forced tokens ran"
        );
        g.restore(snapshot);
        assert_eq!((g.logits().to_vec(), chunks(&g)), before, "{arch}");
        let got: Vec<i64> = (0..7).map(|_| g.next_token().unwrap()).collect();
        assert_eq!(got, want, "{arch}: greedy tokens after the restore");
    }
}

#[test]
fn sampling_follows_its_seed_top_k_and_top_p() {
    let logits: Vec<f32> = vec![1.0, 3.0, 2.9, f32::NEG_INFINITY, 0.5, 2.0];
    let greedy = Sampling::greedy();
    assert_eq!(choose(&logits, &greedy, &mut SplitMix64::new(0)), 1);
    let warm = Sampling {
        temperature: 1.0,
        top_k: None,
        top_p: None,
        seed: 0,
    };
    let draws = |s: &Sampling, seed: u64| {
        let mut rng = SplitMix64::new(seed);
        (0..400)
            .map(|_| choose(&logits, s, &mut rng))
            .collect::<Vec<_>>()
    };
    // The same seed, the same draws; a masked id never comes; every other one does.
    assert_eq!(draws(&warm, 3), draws(&warm, 3));
    assert_ne!(draws(&warm, 3), draws(&warm, 4));
    let all = draws(&warm, 3);
    assert!(!all.contains(&3));
    for id in [0, 1, 2, 4, 5] {
        assert!(all.contains(&id), "id {id} never drawn at temperature 1");
    }
    // Top-2: only the two largest logits.
    let k2 = Sampling {
        top_k: Some(2),
        ..warm
    };
    let d = draws(&k2, 5);
    assert!(d.iter().all(|&i| i == 1 || i == 2) && d.contains(&1) && d.contains(&2));
    // A small nucleus holds the most likely token alone; a cold temperature is greedy.
    let p = Sampling {
        top_p: Some(0.1),
        ..warm
    };
    assert!(draws(&p, 6).iter().all(|&i| i == 1));
    let cold = Sampling {
        temperature: 1e-4,
        ..warm
    };
    assert!(draws(&cold, 7).iter().all(|&i| i == 1));
    // Bad settings are refused.
    for bad in [
        Sampling {
            temperature: -1.0,
            ..warm
        },
        Sampling {
            top_p: Some(0.0),
            ..warm
        },
        Sampling {
            top_p: Some(1.5),
            ..warm
        },
        Sampling {
            top_k: Some(0),
            ..warm
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?} accepted");
    }
}

#[test]
fn a_prompt_outside_the_vocabulary_or_empty_is_refused() {
    tch::manual_seed(13);
    let engine = Engine::random(&tiny("drt"), Device::Cpu).unwrap();
    let opts = GenerateOptions::default();
    let err = |p: &[i64]| {
        Generator::new(&engine, p, Sampling::greedy(), &opts)
            .err()
            .expect("refused")
            .to_string()
    };
    assert!(err(&[]).contains("empty"));
    assert!(err(&[1, VOCAB]).contains("vocabulary"));
    assert!(err(&[1, VOCAB - 1]).contains("landmark"));
}

/// A tiny DRT (chunks of 7, vocabulary 65, landmark 64) trained 2 steps on random ids.
fn checkpoint(dir: &Path) -> String {
    let run = dir.join("run");
    let file = write_config(dir, "cfg", &tiny_config(&run, 2, false));
    ok(lcm(&["pretrain", "--config", file.to_str().unwrap()]));
    run.to_str().unwrap().to_string()
}

fn generate(ckpt: &str, prompt: &Path, extra: &[&str]) -> Vec<i64> {
    let mut args = vec![
        "generate",
        "--checkpoint",
        ckpt,
        "--prompt-file",
        prompt.to_str().unwrap(),
        "--ids",
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    let out = lcm(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lcm generate failed: {err}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().expect("an id per line"))
        .collect()
}

fn fails(args: &[&str]) -> String {
    let out = lcm(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn lcm_generate_streams_reproducible_ids() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(dir.path());
    // 17 prompt tokens: two chunks of 7 and 3 pending; 16 new ones cross two boundaries.
    let ids: Vec<i64> = (0..17).map(|i| 10 + (i * 13) % 54).collect();
    let file = dir.path().join("prompt.txt");
    let text: Vec<String> = ids.iter().map(i64::to_string).collect();
    std::fs::write(&file, text.join(" ") + "\n").unwrap();

    let greedy = ["--temperature", "0", "--max-new-tokens", "16"];
    let a = generate(&ckpt, &file, &greedy);
    assert_eq!(a.len(), 16);
    assert_eq!(
        a,
        generate(&ckpt, &file, &greedy),
        "greedy differs run to run"
    );
    assert!(a.iter().all(|&id| (0..64).contains(&id)), "{a:?}");
    // The binary's greedy tokens are the full forward's argmax.
    let engine = Engine::load(Path::new(&ckpt), Device::Cpu).unwrap();
    let mut all = ids.clone();
    all.extend(&a);
    let full = full_logits(&engine, &all);
    for (i, &id) in a.iter().enumerate() {
        let want = argmax_text(&engine, &full.get((ids.len() + i - 1) as i64));
        assert_eq!(id, want, "token {i}");
    }

    let sampled = [
        "--temperature",
        "1.5",
        "--top-k",
        "30",
        "--top-p",
        "0.95",
        "--seed",
        "9",
        "--max-new-tokens",
        "12",
    ];
    let s = generate(&ckpt, &file, &sampled);
    assert_eq!(s.len(), 12);
    assert_eq!(s, generate(&ckpt, &file, &sampled), "a seeded draw differs");
    let other = generate(
        &ckpt,
        &file,
        &sampled.map(|a| if a == "9" { "10" } else { a }),
    );
    assert_ne!(s, other, "another seed, the same 12 draws");

    // Errors name what is wrong.
    // A prompt file (None: absent) and what its error must name.
    let files: [(&str, Option<&str>, &[&str]); 3] = [
        ("no-such-prompt.txt", None, &["no-such-prompt.txt"]),
        ("empty.txt", Some(" \n"), &["empty.txt", "empty"]),
        ("bad.txt", Some("12 x3"), &["bad.txt", "x3"]),
    ];
    for (name, content, names) in files {
        let path = dir.path().join(name);
        if let Some(c) = content {
            std::fs::write(&path, c).unwrap();
        }
        let args = ["generate", "--checkpoint", &ckpt, "--prompt-file"];
        let e = fails(&[&args[..], &[path.to_str().unwrap(), "--ids"]].concat());
        for n in names {
            assert!(
                e.contains(n),
                "prompt file {name}: the error does not say `{n}`: {e}"
            );
        }
    }
    let e = fails(&["generate", "--checkpoint", &ckpt, "--prompt", "99", "--ids"]);
    assert!(e.contains("vocabulary of 65"), "{e}");
    for (flag, value) in [
        ("--temperature", "-1"),
        ("--top-p", "1.5"),
        ("--top-p", "0"),
    ] {
        let args = [
            "generate",
            "--checkpoint",
            &ckpt,
            "--prompt",
            "1",
            "--ids",
            flag,
            value,
        ];
        let e = fails(&args);
        assert!(
            e.contains(flag),
            "{flag} {value}: the error does not name the flag: {e}"
        );
    }
    let nowhere = dir.path().join("no-run");
    let e = fails(&[
        "generate",
        "--checkpoint",
        nowhere.to_str().unwrap(),
        "--prompt",
        "1",
        "--ids",
    ]);
    assert!(e.contains("no-run"), "{e}");
    let help = ok(lcm(&["generate", "--help"]));
    assert!(help.contains("lcm generate --checkpoint") && help.contains("--top-p"));
}

#[test]
fn lcm_generate_streams_the_decoded_text_of_its_ids() {
    // A tiny DRT over the NeoX vocabulary (2 steps on ids 10..64), a text prompt through
    // the NeoX tokenizer: the streamed text is the decoding of the ids --ids prints.
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut cfg = tiny_config(&run, 2, false);
    cfg["model"]["vocab_size"] = 50278.into();
    cfg["model"]["drt"]["landmark_id"] = 50277.into();
    let file = write_config(dir.path(), "cfg", &cfg);
    ok(lcm(&["pretrain", "--config", file.to_str().unwrap()]));
    let tok_path = lcm::info::default_tokenizer_path();
    let tok = lcm::data::Tokenizer::load(&tok_path, "<|endoftext|>").unwrap_or_else(|e| {
        panic!("the NeoX tokenizer (run scripts/setup.sh): {e}");
    });
    let prompt = "The pass key is 71432. Remember it. What is the pass key? The pass key is";
    let mut prompt_ids = Vec::new();
    tok.encode_into(prompt, &mut prompt_ids).unwrap();
    let ids_file = dir.path().join("prompt-ids.txt");
    let ids_text: Vec<String> = prompt_ids.iter().map(u32::to_string).collect();
    std::fs::write(&ids_file, ids_text.join("\n")).unwrap();
    let common = [
        "--temperature",
        "1",
        "--seed",
        "4",
        "--max-new-tokens",
        "20",
    ];
    let ids = generate(run.to_str().unwrap(), &ids_file, &common);
    assert_eq!(ids.len(), 20);
    let mut args = vec![
        "generate",
        "--checkpoint",
        run.to_str().unwrap(),
        "--prompt",
        prompt,
        "--tokenizer",
        tok_path.to_str().unwrap(),
        "--device",
        "cpu",
    ];
    args.extend_from_slice(&common);
    let out = lcm(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        tok.decode(&ids).unwrap() + "\n"
    );
}
