//! The NIAH heatmap: depth (rows) x length (columns), each cell coloured from red (0%) to
//! green (100%) and labelled with its accuracy where a font is available.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::Result;
use crate::eval::grid::Report;
use crate::eval::lengths::format_length;

fn colour(acc: f64) -> RGBColor {
    let a = acc.clamp(0.0, 1.0);
    RGBColor(
        (220.0 * (1.0 - a) + 30.0 * a) as u8,
        (50.0 * (1.0 - a) + 170.0 * a) as u8,
        (50.0 * (1.0 - a) + 80.0 * a) as u8,
    )
}

/// Draws `report` into `out` (PNG), through a temporary file renamed when complete.
pub fn draw(report: &Report, out: &Path) -> Result<()> {
    let text = super::font::register_font().is_ok();
    let (nl, nd) = (report.lengths.len(), report.depths.len());
    let draw = |tmp: &Path| -> std::result::Result<(), Box<dyn std::error::Error>> {
        let (w, h) = (360.max(140 + 90 * nl as u32), 110 + 50 * nd as u32);
        let root = BitMapBackend::new(tmp, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut builder = ChartBuilder::on(&root);
        builder.margin(12);
        if text {
            builder
                .caption(
                    format!(
                        "{} accuracy (%), {}",
                        report.task_label(),
                        report.scoring.short()
                    ),
                    ("sans-serif", 20),
                )
                .x_label_area_size(36)
                .y_label_area_size(60);
        }
        let mut chart = builder.build_cartesian_2d(
            (0..nl as i32 - 1).into_segmented(),
            (0..nd as i32 - 1).into_segmented(),
        )?;
        let lengths = report.lengths.clone();
        let depths = report.depths.clone();
        let mut mesh = chart.configure_mesh();
        mesh.disable_mesh();
        if text {
            let lf = move |x: &SegmentValue<i32>| match x {
                SegmentValue::CenterOf(i) => lengths
                    .get(*i as usize)
                    .map(|&l| format_length(l))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            let df = move |y: &SegmentValue<i32>| match y {
                SegmentValue::CenterOf(i) => depths
                    .get(*i as usize)
                    .map(|d| format!("{d:.2}"))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            mesh.x_desc("length")
                .y_desc("depth")
                .x_labels(nl)
                .y_labels(nd)
                .x_label_formatter(&lf)
                .y_label_formatter(&df)
                .draw()?;
        } else {
            mesh.x_labels(0).y_labels(0).draw()?;
        }
        for c in &report.cells {
            let x = report
                .lengths
                .iter()
                .position(|&l| l == c.length)
                .unwrap_or(0) as i32;
            let y = report
                .depths
                .iter()
                .position(|&d| d == c.depth)
                .unwrap_or(0) as i32;
            chart.draw_series(std::iter::once(Rectangle::new(
                [
                    (SegmentValue::Exact(x), SegmentValue::Exact(y)),
                    (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1)),
                ],
                colour(c.accuracy).filled(),
            )))?;
            if text {
                let style = ("sans-serif", 16)
                    .into_font()
                    .color(&WHITE)
                    .pos(Pos::new(HPos::Center, VPos::Center));
                chart.draw_series(std::iter::once(Text::new(
                    format!("{:.0}", 100.0 * c.accuracy),
                    (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y)),
                    style,
                )))?;
            }
        }
        root.present()?;
        Ok(())
    };
    crate::util::write_via_temp(out, "png", draw)
}
