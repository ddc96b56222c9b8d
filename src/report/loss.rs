//! `lcm plot`: the loss curve of a metrics file as a PNG.

use std::path::Path;

use plotters::prelude::*;

use super::font::register_font;
use crate::error::{Error, Result};

/// Training loss (and eval loss, where recorded) by step, from a metrics.jsonl file.
pub struct Curves {
    pub train: Vec<(f64, f64)>,
    pub eval: Vec<(f64, f64)>,
}

pub fn read_metrics(path: &Path) -> Result<Curves> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut c = Curves {
        train: vec![],
        eval: vec![],
    };
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::Invalid(format!("{}:{}: not JSON: {e}", path.display(), i + 1)))?;
        let num = |k: &str| v.get(k).and_then(|x| x.as_f64());
        let step = num("step")
            .ok_or_else(|| Error::Invalid(format!("{}:{}: no `step`", path.display(), i + 1)))?;
        if let Some(l) = num("loss") {
            c.train.push((step, l));
        }
        if let Some(l) = num("eval_loss") {
            c.eval.push((step, l));
        }
    }
    if c.train.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no loss values to plot",
            path.display()
        )));
    }
    Ok(c)
}

/// Draws the curves into `out` (PNG), through a temporary file and a rename. Without a
/// font (a bare GPU machine has none) the curves are still drawn, without any text.
pub fn plot_loss(c: &Curves, title: &str, out: &Path) -> Result<()> {
    let text = match register_font() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("warning: {e}; drawing the plot without labels");
            false
        }
    };
    let draw = |tmp: &Path| -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(tmp, (900, 540)).into_drawing_area();
        root.fill(&WHITE)?;
        let all = c.train.iter().chain(&c.eval);
        let (x0, x1) = all
            .clone()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (y0, y1) = all.fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let pad = ((y1 - y0) * 0.05).max(1e-3);
        let mut builder = ChartBuilder::on(&root);
        builder.margin(12);
        if text {
            builder
                .caption(title, ("sans-serif", 22))
                .x_label_area_size(40)
                .y_label_area_size(60);
        }
        let mut chart = builder.build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("step").y_desc("loss (nats/token)");
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw()?;
        let train = chart.draw_series(LineSeries::new(c.train.iter().copied(), &BLUE))?;
        if text {
            train
                .label("train")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        }
        if !c.eval.is_empty() {
            let eval =
                chart.draw_series(LineSeries::new(c.eval.iter().copied(), RED.stroke_width(2)))?;
            if text {
                eval.label("eval")
                    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
            }
        }
        if text {
            chart
                .configure_series_labels()
                .border_style(BLACK)
                .background_style(WHITE)
                .draw()?;
        }
        root.present()?;
        Ok(())
    };
    crate::util::write_via_temp(out, "png", draw)
}
