//! `lcm plot`: a PNG from a metrics file; clear errors for files it cannot use.

use lcm::report::loss::{plot_loss, read_metrics};

#[test]
fn draws_a_png_from_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("metrics.jsonl");
    let lines: Vec<String> = (1..=20)
        .map(|s| {
            format!(
                "{{\"step\":{s},\"loss\":{},\"eval_loss\":{}}}",
                5.0 / s as f64,
                if s % 5 == 0 { "4.0" } else { "null" }
            )
        })
        .collect();
    std::fs::write(&m, lines.join("\n")).unwrap();
    let c = read_metrics(&m).unwrap();
    assert_eq!((c.train.len(), c.eval.len()), (20, 4));
    let out = dir.path().join("loss.png");
    plot_loss(&c, "test", &out).unwrap();
    let png = std::fs::read(&out).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        png.len() > 5_000,
        "an image with content, got {} bytes",
        png.len()
    );
    assert!(!dir.path().join("loss.tmp.png").exists());
    // Without a font (a bare GPU machine) the curves are still drawn, without text.
    std::env::set_var("LCM_FONT", dir.path().join("no-such-font.ttf"));
    let bare = dir.path().join("bare.png");
    plot_loss(&c, "test", &bare).unwrap();
    std::env::remove_var("LCM_FONT");
    let bare = std::fs::read(&bare).unwrap();
    assert_eq!(&bare[..8], b"\x89PNG\r\n\x1a\n");
    assert_ne!(bare, png, "no labels, a different picture");
}

#[test]
fn bad_metrics_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("metrics.jsonl");
    std::fs::write(&m, "{\"step\":1,\"loss\":2.0}\nnot json\n").unwrap();
    let err = read_metrics(&m).err().unwrap().to_string();
    assert!(err.contains("metrics.jsonl:2"), "{err}");
    std::fs::write(&m, "").unwrap();
    let err = read_metrics(&m).err().unwrap().to_string();
    assert!(err.contains("no loss values"), "{err}");
}

/// A plot that cannot be written (its path is a folder) fails naming it and leaves no
/// temporary file; the temporaries a killed `lcm plot` left are swept by the next one.
#[test]
fn a_failed_plot_leaves_no_temporary_and_stale_ones_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("metrics.jsonl");
    std::fs::write(&m, "{\"step\":1,\"loss\":2.0}\n{\"step\":2,\"loss\":1.0}\n").unwrap();
    let c = read_metrics(&m).unwrap();
    let folder = dir.path().join("out.png");
    std::fs::create_dir(&folder).unwrap();
    let err = plot_loss(&c, "test", &folder).err().unwrap().to_string();
    assert!(err.contains(folder.to_str().unwrap()), "{err}");
    let names = |d: &std::path::Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(dir.path()), ["metrics.jsonl", "out.png"]);
    // No process has pid 999999999 (above Linux's pid_max): a stale temporary.
    let stale = dir.path().join(".loss.png.tmp-999999999.png");
    std::fs::write(&stale, b"half a png").unwrap();
    plot_loss(&c, "test", &dir.path().join("loss.png")).unwrap();
    assert_eq!(names(dir.path()), ["loss.png", "metrics.jsonl", "out.png"]);
}
