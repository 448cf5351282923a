//! Line charts as PNG files: axes with ticks and labels, one coloured line per series
//! (optionally smoothed), a legend. Text is drawn with a built-in 5×7 pixel font so no
//! font file is needed.

use std::path::Path;

use anyhow::Context;

/// One line: `(x, y)` points in x order.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

const W: usize = 960;
const H: usize = 560;
const LEFT: usize = 80;
const RIGHT: usize = 20;
const TOP: usize = 40;
const BOTTOM: usize = 60;

const COLOURS: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Canvas {
            px: vec![255; W * H * 3],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            let i = (y as usize * W + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3], thick: i64) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let (x, y) = (x0 + t * (x1 - x0), y0 + t * (y1 - y0));
            for dx in 0..thick {
                for dy in 0..thick {
                    self.set(x.round() as i64 + dx, y.round() as i64 + dy, c);
                }
            }
        }
    }

    fn rect(&mut self, x: usize, y: usize, w: usize, h: usize, c: [u8; 3]) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx as i64, yy as i64, c);
            }
        }
    }

    /// Text with its top-left corner at (x, y), `scale` pixels per font pixel.
    fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: [u8; 3]) {
        for (i, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        for sx in 0..scale {
                            for sy in 0..scale {
                                self.set(
                                    x + (i as i64 * 6 + col) * scale + sx,
                                    y + row as i64 * scale + sy,
                                    c,
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

fn text_width(s: &str, scale: usize) -> usize {
    s.chars().count() * 6 * scale
}

/// Trailing mean over `window` points (1: none).
fn smooth(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let w = window.max(1);
    (0..points.len())
        .map(|i| {
            let from = (i + 1).saturating_sub(w);
            let s = &points[from..=i];
            (
                points[i].0,
                s.iter().map(|p| p.1).sum::<f64>() / s.len() as f64,
            )
        })
        .collect()
}

/// "Nice" tick positions covering [lo, hi].
fn ticks(lo: f64, hi: f64, want: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / want.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

fn label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_owned()
    }
}

/// Draws `series` (each smoothed with a trailing mean over `smooth_window` points)
/// and writes a PNG.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    smooth_window: usize,
) -> anyhow::Result<()> {
    let lines: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| smooth(&s.points, smooth_window))
        .collect();
    let all = lines
        .iter()
        .flatten()
        .filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    y0 = y0.min(0.0);
    if y1 - y0 < 1e-12 {
        y1 = y0 + 1.0;
    }
    y1 += 0.05 * (y1 - y0);
    let (pw, ph) = ((W - LEFT - RIGHT) as f64, (H - TOP - BOTTOM) as f64);
    let sx = |x: f64| LEFT as f64 + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| TOP as f64 + (1.0 - (y - y0) / (y1 - y0)) * ph;
    let mut c = Canvas::new();
    let grey = [220, 220, 220];
    let black = [0, 0, 0];
    for t in ticks(y0, y1, 6) {
        let y = sy(t);
        c.line((LEFT as f64, y), ((W - RIGHT) as f64, y), grey, 1);
        let l = label(t);
        c.text(
            LEFT as i64 - 8 - text_width(&l, 2) as i64,
            y as i64 - 7,
            &l,
            2,
            black,
        );
    }
    for t in ticks(x0, x1, 8) {
        let x = sx(t);
        c.line((x, TOP as f64), (x, (H - BOTTOM) as f64), grey, 1);
        let l = label(t);
        c.text(
            x as i64 - text_width(&l, 2) as i64 / 2,
            (H - BOTTOM + 8) as i64,
            &l,
            2,
            black,
        );
    }
    c.line(
        (LEFT as f64, TOP as f64),
        (LEFT as f64, (H - BOTTOM) as f64),
        black,
        1,
    );
    c.line(
        (LEFT as f64, (H - BOTTOM) as f64),
        ((W - RIGHT) as f64, (H - BOTTOM) as f64),
        black,
        1,
    );
    c.text(((W - text_width(title, 2)) / 2) as i64, 12, title, 2, black);
    c.text(
        ((W - text_width(x_label, 2)) / 2) as i64,
        (H - 24) as i64,
        x_label,
        2,
        black,
    );
    c.text(8, 12, y_label, 2, black);
    for (i, pts) in lines.iter().enumerate() {
        let col = COLOURS[i % COLOURS.len()];
        for w in pts.windows(2) {
            c.line((sx(w[0].0), sy(w[0].1)), (sx(w[1].0), sy(w[1].1)), col, 2);
        }
    }
    // Legend in the right-hand corner (top or bottom) that covers fewer points.
    let lw = series
        .iter()
        .map(|s| text_width(&s.label, 2))
        .max()
        .unwrap_or(0)
        + 40;
    let lh = 22 * series.len() + 8;
    let lx = W - RIGHT - lw - 10;
    let covered = |top: usize| {
        lines
            .iter()
            .flatten()
            .filter(|&&(x, y)| {
                let (px, py) = (sx(x), sy(y));
                px >= lx as f64 && py >= top as f64 && py <= (top + lh) as f64
            })
            .count()
    };
    let bottom = (H - BOTTOM).saturating_sub(lh + 8);
    let ly = if covered(TOP + 8) <= covered(bottom) {
        TOP + 8
    } else {
        bottom
    };
    if !series.is_empty() && series.len() > 1 || series.len() == 1 && !series[0].label.is_empty() {
        c.rect(lx, ly, lw, lh, [250, 250, 250]);
        for (i, s) in series.iter().enumerate() {
            let y = ly + 8 + 22 * i;
            c.rect(lx + 6, y + 5, 24, 4, COLOURS[i % COLOURS.len()]);
            c.text((lx + 36) as i64, y as i64, &s.label, 2, black);
        }
    }
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), W as u32, H as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header()?;
    w.write_image_data(&c.px)?;
    Ok(())
}

/// 5×7 glyphs, one byte per row (low five bits, MSB on the left). Lowercase letters
/// are drawn as capitals; unknown characters as a box.
fn glyph(ch: char) -> [u8; 7] {
    let ch = ch.to_ascii_uppercase();
    match ch {
        ' ' => [0; 7],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '@' => [0x0E, 0x11, 0x17, 0x15, 0x17, 0x10, 0x0E],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        '×' | '*' => [0, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0],
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_of_the_expected_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.png");
        let s = Series {
            label: "iaa-l lr 1e-3".into(),
            points: (0..50)
                .map(|i| (i as f64, 3.0 / (1.0 + i as f64)))
                .collect(),
        };
        line_chart(&p, "loss", "step", "loss", &[s.clone(), s], 5).unwrap();
        let d = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&p).unwrap()));
        let r = d.read_info().unwrap();
        assert_eq!((r.info().width, r.info().height), (W as u32, H as u32));
    }

    #[test]
    fn ticks_cover_the_range_with_round_numbers() {
        assert_eq!(
            ticks(0.0, 1.0, 5),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        assert_eq!(ticks(0.0, 100.0, 4), vec![0.0, 25.0, 50.0, 75.0, 100.0]);
    }
}
