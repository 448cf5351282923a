//! `aside plot`: loss curves of one or more training runs in one PNG.

use std::path::PathBuf;

use anyhow::{bail, Context};
use aside_trainer::plot::{line_chart, Series};
use clap::Args;

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Runs as LABEL=PATH, PATH a `loss.csv` written by `aside train` (or its log folder).
    #[arg(required = true)]
    pub runs: Vec<String>,
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    #[arg(long, default_value = "training loss")]
    pub title: String,
    /// Trailing mean over this many steps (1: raw).
    #[arg(long, default_value_t = 10)]
    pub smooth: usize,
    /// Plot only the first N steps (0: all).
    #[arg(long, default_value_t = 0)]
    pub max_steps: usize,
}

pub fn run(a: PlotArgs) -> anyhow::Result<()> {
    let mut series = Vec::new();
    for r in &a.runs {
        let Some((label, path)) = r.split_once('=') else {
            bail!("`{r}`: expected LABEL=PATH");
        };
        let mut path = PathBuf::from(path);
        if path.is_dir() {
            path = path.join("loss.csv");
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut points = Vec::new();
        for (i, line) in text.lines().enumerate().skip(1) {
            let mut cols = line.split(',');
            let (Some(step), _, Some(loss)) = (cols.next(), cols.next(), cols.next()) else {
                bail!(
                    "{} line {}: expected step,epoch,loss,...",
                    path.display(),
                    i + 1
                );
            };
            let step: f64 = step
                .parse()
                .with_context(|| format!("{} line {}: step", path.display(), i + 1))?;
            let loss: f64 = loss
                .parse()
                .with_context(|| format!("{} line {}: loss", path.display(), i + 1))?;
            if a.max_steps == 0 || step <= a.max_steps as f64 {
                points.push((step, loss));
            }
        }
        series.push(Series {
            label: label.to_owned(),
            points,
        });
    }
    line_chart(&a.output, &a.title, "step", "loss", &series, a.smooth)?;
    eprintln!("wrote {}", a.output.display());
    Ok(())
}
