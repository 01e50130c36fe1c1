//! Pure drawing: HTML escaping, linear and logarithmic scales with round ticks,
//! and inline SVG charts whose every point carries `data-series`, `data-t` (or
//! `data-x`) and `data-v` attributes, so that a test can count what was drawn.

use std::fmt::Write as _;

/// Text made safe for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// A number for display: at most 4 significant digits, no trailing zeros.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    if v == 0.0 {
        return "0".into();
    }
    let digits = (3 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
    let text = format!("{v:.digits$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// Colors of the runs, in order (then repeating).
pub const PALETTE: [&str; 8] =
    ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];

pub fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// Maps a data interval onto a pixel interval, linearly or logarithmically.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    pub lo: f64,
    pub hi: f64,
    pub from: f64,
    pub to: f64,
    pub log: bool,
}

impl Scale {
    /// A linear scale over `values` (padded to round ticks, always including
    /// `zero` when asked), onto `from..to` pixels.
    pub fn linear(values: impl IntoIterator<Item = f64>, zero: bool, from: f64, to: f64) -> Self {
        let (mut lo, mut hi) = bounds(values);
        if zero {
            lo = lo.min(0.0);
            hi = hi.max(0.0);
        }
        if hi - lo < 1e-12 {
            let pad = if hi.abs() > 1e-12 { hi.abs() * 0.1 } else { 1.0 };
            lo -= if zero && lo >= 0.0 { 0.0 } else { pad };
            hi += pad;
        }
        let step = tick_step(hi - lo);
        Scale {
            lo: (lo / step).floor() * step,
            hi: (hi / step).ceil() * step,
            from,
            to,
            log: false,
        }
    }

    /// A base-10 logarithmic scale over the positive `values`.
    pub fn log(values: impl IntoIterator<Item = f64>, from: f64, to: f64) -> Self {
        let (lo, hi) = bounds(values.into_iter().filter(|v| *v > 0.0));
        let (lo, hi) = if lo > 0.0 { (lo, hi) } else { (1.0, 10.0) };
        let lo = 10f64.powf(lo.log10().floor());
        let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
        Scale { lo, hi, from, to, log: true }
    }

    pub fn map(&self, v: f64) -> f64 {
        let share = if self.log {
            (v.max(self.lo * 1e-3).log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        self.from + share * (self.to - self.from)
    }

    /// Round values inside the scale to label.
    pub fn ticks(&self) -> Vec<f64> {
        if self.log {
            let mut out = Vec::new();
            let mut v = self.lo;
            while v <= self.hi * 1.0001 && out.len() < 20 {
                for m in [1.0, 2.0, 5.0] {
                    if v * m <= self.hi * 1.0001 {
                        out.push(v * m);
                    }
                }
                v *= 10.0;
            }
            return out;
        }
        let step = tick_step(self.hi - self.lo);
        let first = (self.lo / step).ceil() as i64;
        let last = (self.hi / step).floor() as i64;
        (first..=last).map(|k| k as f64 * step).collect()
    }
}

fn bounds(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for v in values.into_iter().filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        (0.0, 0.0)
    } else {
        (lo, hi)
    }
}

/// A round step (1, 2 or 5 × 10^k) giving about five ticks over `span`.
pub fn tick_step(span: f64) -> f64 {
    let raw = (span / 5.0).max(1e-12);
    let mag = 10f64.powf(raw.log10().floor());
    let m = raw / mag;
    let nice = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// One line of a chart.
pub struct Series {
    /// The name in `data-series` and the tooltip (e.g. `run A p99`).
    pub name: String,
    pub color: &'static str,
    pub dashed: bool,
    /// (x, y); points without a y are left out.
    pub points: Vec<(f64, f64)>,
}

/// A horizontal line across a chart (a threshold).
pub struct Rule {
    pub label: String,
    pub y: f64,
}

/// One point of a ladder chart (a capacity step).
pub struct Mark {
    /// Which search the step belongs to (`data-series`).
    pub series: String,
    /// The search's color when several are overlaid (else pass green, fail red).
    pub color: Option<&'static str>,
    pub step: usize,
    pub x: f64,
    pub y: Option<f64>,
    pub pass: bool,
    pub phase: String,
}

const W: f64 = 760.0;
const H: f64 = 300.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 44.0;

fn open(out: &mut String, id: &str, title: &str) {
    let _ = write!(
        out,
        "<svg id=\"{}\" class=\"chart\" role=\"img\" viewBox=\"0 0 {W} {H}\">\
         <title>{}</title>",
        escape(id),
        escape(title)
    );
}

fn axes(out: &mut String, x: &Scale, y: &Scale, x_label: &str, y_label: &str) {
    let (x0, x1, y0, y1) = (LEFT, W - RIGHT, H - BOTTOM, TOP);
    for t in y.ticks() {
        let py = y.map(t);
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{x0}\" x2=\"{x1}\" y1=\"{py:.1}\" y2=\"{py:.1}\"/>\
             <text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            x0 - 4.0,
            py + 4.0,
            num(t)
        );
    }
    for t in x.ticks() {
        let px = x.map(t);
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{y0}\" y2=\"{y1}\"/>\
             <text class=\"tick\" x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            y0 + 14.0,
            num(t)
        );
    }
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"{x0}\" x2=\"{x1}\" y1=\"{y0}\" y2=\"{y0}\"/>\
         <line class=\"axis\" x1=\"{x0}\" x2=\"{x0}\" y1=\"{y0}\" y2=\"{y1}\"/>\
         <text class=\"label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
         <text class=\"label\" transform=\"translate(14 {:.1}) rotate(-90)\" \
         text-anchor=\"middle\">{}</text>",
        (x0 + x1) / 2.0,
        H - 6.0,
        escape(x_label),
        (y0 + y1) / 2.0,
        escape(y_label)
    );
}

/// The values a chart's y scale spans: the data, and the thresholds that are
/// not far above it (a bound of 1,000 ms over data of 2 ms would flatten it).
fn y_values(data: Vec<f64>, rule_lines: &[Rule]) -> Vec<f64> {
    let top = data.iter().copied().filter(|v| v.is_finite()).fold(0.0, f64::max);
    let near = rule_lines.iter().map(|r| r.y).filter(|y| top <= 0.0 || *y <= top * 4.0);
    data.into_iter().chain(near.collect::<Vec<_>>()).collect()
}

fn rules(out: &mut String, y: &Scale, rules: &[Rule]) {
    let mut above = 0;
    for (k, r) in rules.iter().enumerate() {
        let text = escape(&format!("{} {}", r.label, num(r.y)));
        if r.y > y.hi || r.y < y.lo {
            // Off the chart: named at the top instead of drawn.
            above += 1;
            let _ = write!(
                out,
                "<g class=\"threshold off\" data-threshold=\"{}\" data-v=\"{}\">\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{} (off the chart)</text></g>",
                escape(&r.label),
                r.y,
                W - RIGHT - 2.0,
                TOP + 10.0 * above as f64,
                text
            );
            continue;
        }
        let py = y.map(r.y);
        let _ = write!(
            out,
            "<g class=\"threshold\" data-threshold=\"{}\" data-v=\"{}\">\
             <line x1=\"{LEFT}\" x2=\"{}\" y1=\"{py:.1}\" y2=\"{py:.1}\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text></g>",
            escape(&r.label),
            r.y,
            W - RIGHT,
            W - RIGHT - 2.0,
            py - 4.0 - 11.0 * k as f64,
            text
        );
    }
}

/// A line chart of `series` over x (seconds into the run), with `rules` as
/// horizontal lines. Each point is a `circle.pt` with `data-series`, `data-t`
/// and `data-v`.
pub fn line_chart(
    id: &str,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    rule_lines: &[Rule],
) -> String {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let x = Scale::linear(xs, true, LEFT, W - RIGHT);
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).collect();
    let y = Scale::linear(y_values(ys, rule_lines), true, H - BOTTOM, TOP);
    let mut out = String::new();
    open(&mut out, id, title);
    axes(&mut out, &x, &y, x_label, y_label);
    rules(&mut out, &y, rule_lines);
    for s in series {
        let name = escape(&s.name);
        let dash = if s.dashed { " stroke-dasharray=\"5 3\"" } else { "" };
        let path: Vec<String> = s
            .points
            .iter()
            .map(|(px, py)| format!("{:.1},{:.1}", x.map(*px), y.map(*py)))
            .collect();
        let _ = write!(
            out,
            "<g class=\"series\" data-series=\"{name}\"><polyline fill=\"none\" stroke=\"{}\" \
             stroke-width=\"1.6\"{dash} points=\"{}\"/>",
            s.color,
            path.join(" ")
        );
        for (px, py) in &s.points {
            let _ = write!(
                out,
                "<circle class=\"pt\" data-series=\"{name}\" data-t=\"{px}\" data-v=\"{py}\" \
                 cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" fill=\"{}\"><title>{name}: t={} s, {}</title>\
                 </circle>",
                x.map(*px),
                y.map(*py),
                s.color,
                num(*px),
                num(*py)
            );
        }
        out.push_str("</g>");
    }
    out.push_str("</svg>");
    out
}

/// Grouped bars: one group per category (p50, p90, …), one bar per series
/// (`rect.bar` with `data-series`, `data-k`, `data-v`).
pub fn bar_chart(
    id: &str,
    title: &str,
    y_label: &str,
    categories: &[&str],
    series: &[(String, &'static str, Vec<Option<f64>>)],
    rule_lines: &[Rule],
) -> String {
    let ys = series.iter().flat_map(|s| s.2.iter().flatten().copied()).collect();
    let y = Scale::linear(y_values(ys, rule_lines), true, H - BOTTOM, TOP);
    let mut out = String::new();
    open(&mut out, id, title);
    let x = Scale { lo: 0.0, hi: 1.0, from: LEFT, to: W - RIGHT, log: false };
    // Axes without x ticks: the categories label the groups.
    for t in y.ticks() {
        let py = y.map(t);
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{py:.1}\" y2=\"{py:.1}\"/>\
             <text class=\"tick\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 4.0,
            py + 4.0,
            num(t)
        );
    }
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{}\" y2=\"{}\"/>\
         <text class=\"label\" transform=\"translate(14 {:.1}) rotate(-90)\" \
         text-anchor=\"middle\">{}</text>",
        W - RIGHT,
        H - BOTTOM,
        H - BOTTOM,
        (H - BOTTOM + TOP) / 2.0,
        escape(y_label)
    );
    let groups = categories.len().max(1) as f64;
    let group_w = (x.to - x.from) / groups;
    let bar_w = (group_w * 0.8 / series.len().max(1) as f64).max(1.0);
    for (g, cat) in categories.iter().enumerate() {
        let gx = x.from + g as f64 * group_w + group_w * 0.1;
        let _ = write!(
            out,
            "<text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            gx + group_w * 0.4,
            H - BOTTOM + 14.0,
            escape(cat)
        );
        for (i, (name, color, values)) in series.iter().enumerate() {
            let Some(v) = values.get(g).copied().flatten() else { continue };
            let top = y.map(v);
            let _ = write!(
                out,
                "<rect class=\"bar\" data-series=\"{}\" data-k=\"{}\" data-v=\"{v}\" x=\"{:.1}\" \
                 y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\">\
                 <title>{}: {} = {} ms</title></rect>",
                escape(name),
                escape(cat),
                gx + i as f64 * bar_w,
                (bar_w - 1.0).max(1.0),
                (y.map(y.lo.max(0.0)) - top).max(0.0),
                escape(name),
                escape(cat),
                num(v)
            );
        }
    }
    rules(&mut out, &y, rule_lines);
    out.push_str("</svg>");
    out
}

/// A capacity ladder: x = the parameter's value of each step (log scale when
/// the values span more than a factor of 4), y = the step's median of the
/// main threshold, passing steps filled, failing ones as crosses
/// (`.step` with `data-step`, `data-x`, `data-v`, `data-pass`), the
/// threshold as a line and `held up to X` marked; several searches overlaid
/// when the marks name several series (`held`: value, color, label).
pub fn ladder_chart(
    id: &str,
    title: &str,
    x_label: &str,
    y_label: &str,
    marks: &[Mark],
    rule_lines: &[Rule],
    held: &[(f64, Option<&'static str>, String)],
) -> String {
    let xs: Vec<f64> = marks.iter().map(|m| m.x).collect();
    let (lo, hi) = bounds(xs.iter().copied());
    let x = if lo > 0.0 && hi / lo > 4.0 {
        Scale::log(xs.iter().copied(), LEFT + 10.0, W - RIGHT - 10.0)
    } else {
        Scale::linear(xs.iter().copied(), false, LEFT + 10.0, W - RIGHT - 10.0)
    };
    let ys = marks.iter().filter_map(|m| m.y).collect();
    let y = Scale::linear(y_values(ys, rule_lines), true, H - BOTTOM, TOP);
    let mut out = String::new();
    open(&mut out, id, title);
    axes(&mut out, &x, &y, x_label, y_label);
    rules(&mut out, &y, rule_lines);
    for (k, (h, color, label)) in held.iter().enumerate() {
        let px = x.map(*h);
        // The note on the side of the line with room for it.
        let (tx, anchor) = if px > W / 2.0 { (px - 4.0, "end") } else { (px + 4.0, "start") };
        let line = color.map(|c| format!(" style=\"stroke:{c}\"")).unwrap_or_default();
        let text = color.map(|c| format!(" style=\"fill:{c}\"")).unwrap_or_default();
        let _ = write!(
            out,
            "<g class=\"held\" data-v=\"{h}\"><line x1=\"{px:.1}\" x2=\"{px:.1}\" \
             y1=\"{}\" y2=\"{TOP}\"{line}/><text x=\"{tx:.1}\" y=\"{:.1}\" \
             text-anchor=\"{anchor}\"{text}>{}held up to {}</text></g>",
            H - BOTTOM,
            TOP + 24.0 + 13.0 * k as f64,
            escape(label),
            num(*h)
        );
    }
    // Each search's steps by value, joined by a faint line (the numbers on the
    // marks say the order they were tried in).
    let mut names: Vec<&str> = Vec::new();
    for m in marks {
        if !names.contains(&m.series.as_str()) {
            names.push(&m.series);
        }
    }
    for name in names {
        let mine: Vec<&Mark> = marks.iter().filter(|m| m.series == name).collect();
        let mut by_value: Vec<(f64, f64)> = mine.iter().filter_map(|m| Some((m.x, m.y?))).collect();
        by_value.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = by_value
            .iter()
            .map(|(vx, vy)| format!("{:.1},{:.1}", x.map(*vx), y.map(*vy)))
            .collect();
        let style = mine
            .first()
            .and_then(|m| m.color)
            .map(|c| format!(" style=\"stroke:{c}\""))
            .unwrap_or_default();
        let _ = write!(
            out,
            "<polyline class=\"ladder\" data-series=\"{}\" fill=\"none\"{style} points=\"{}\"/>",
            escape(name),
            path.join(" ")
        );
    }
    for m in marks {
        let px = x.map(m.x);
        // A step without a number (its runs could not be done) sits on the axis.
        let py = m.y.map_or(H - BOTTOM, |v| y.map(v));
        let v = m.y.map_or_else(|| "".to_owned(), |v| v.to_string());
        let verdict = if m.pass { "pass" } else { "fail" };
        let tip = format!(
            "step {} ({}): {} → {} {}",
            m.step,
            m.phase,
            num(m.x),
            m.y.map_or_else(|| "no result".to_owned(), num),
            verdict
        );
        let _ = write!(
            out,
            "<g class=\"step {verdict}\" data-series=\"{}\" data-step=\"{}\" data-x=\"{}\" \
             data-v=\"{v}\" data-pass=\"{}\"><title>{}</title>",
            escape(&m.series),
            m.step,
            m.x,
            m.pass,
            escape(&tip)
        );
        let fill = m.color.map(|c| format!(" style=\"fill:{c}\"")).unwrap_or_default();
        let stroke = m.color.map(|c| format!(" style=\"stroke:{c}\"")).unwrap_or_default();
        if m.pass {
            let _ = write!(out, "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"5\"{fill}/>");
        } else {
            let _ = write!(
                out,
                "<path d=\"M{:.1} {:.1}L{:.1} {:.1}M{:.1} {:.1}L{:.1} {:.1}\"{stroke}/>",
                px - 5.0,
                py - 5.0,
                px + 5.0,
                py + 5.0,
                px - 5.0,
                py + 5.0,
                px + 5.0,
                py - 5.0
            );
        }
        let _ = write!(
            out,
            "<text class=\"tick\" x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text></g>",
            py - 8.0,
            m.step
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_quotes_and_controls() {
        assert_eq!(
            escape("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
        assert_eq!(escape("a\u{0}b"), "a\u{FFFD}b");
        assert_eq!(escape("plain é"), "plain é");
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(2.0), "2");
        assert_eq!(num(2.038), "2.038");
        assert_eq!(num(12345.6), "12346");
        assert_eq!(num(0.000_123_4), "0.000123");
        assert_eq!(num(f64::NAN), "–");
    }

    #[test]
    fn scales_are_round_and_map_ends() {
        let s = Scale::linear([0.3, 9.2], true, 100.0, 0.0);
        assert_eq!((s.lo, s.hi), (0.0, 10.0));
        assert_eq!(s.map(0.0), 100.0);
        assert_eq!(s.map(10.0), 0.0);
        assert_eq!(s.ticks(), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(tick_step(7.0), 2.0);
        assert_eq!(tick_step(0.9), 0.2);
        // A constant series still gets a span.
        let flat = Scale::linear([5.0, 5.0], false, 0.0, 1.0);
        assert!(flat.lo < 5.0 && flat.hi > 5.0);
        // Nothing at all.
        let empty = Scale::linear(std::iter::empty(), true, 0.0, 1.0);
        assert!(empty.hi > empty.lo);
        let log = Scale::log([20.0, 640.0], 0.0, 300.0);
        assert_eq!((log.lo, log.hi), (10.0, 1000.0));
        assert!((log.map(100.0) - 150.0).abs() < 1e-9);
        assert!(log.ticks().contains(&200.0));
    }

    #[test]
    fn a_line_chart_has_one_point_per_input() {
        let series = vec![
            Series {
                name: "a <p99>".into(),
                color: color(0),
                dashed: false,
                points: (0..7).map(|i| (i as f64, i as f64 * 2.0)).collect(),
            },
            Series { name: "b".into(), color: color(1), dashed: true, points: vec![(0.0, 1.0)] },
        ];
        let rule = [Rule { label: "p99 max".into(), y: 10.0 }];
        let svg = line_chart("lat", "latency", "s", "ms", &series, &rule);
        assert_eq!(svg.matches("class=\"pt\" data-series=\"a &lt;p99&gt;\"").count(), 7);
        assert_eq!(svg.matches("class=\"pt\" data-series=\"b\"").count(), 1);
        assert_eq!(svg.matches("data-threshold=").count(), 1);
        assert!(!svg.contains("off the chart"));
        // A bound far above the data is named, not drawn.
        let far = [Rule { label: "p99 max".into(), y: 1000.0 }];
        let svg = line_chart("lat", "latency", "s", "ms", &series, &far);
        assert!(svg.contains("threshold off") && svg.contains("p99 max 1000 (off the chart)"));
        assert!(!svg.contains("<p99>"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }

    #[test]
    fn bars_and_ladders_have_a_mark_per_value() {
        let svg = bar_chart(
            "pct",
            "percentiles",
            "ms",
            &["p50", "p99"],
            &[
                ("x".into(), color(0), vec![Some(1.0), None]),
                ("y".into(), color(1), vec![Some(2.0), Some(3.0)]),
            ],
            &[],
        );
        assert_eq!(svg.matches("class=\"bar\"").count(), 3);
        let marks: Vec<Mark> = [(10.0, 1.0, true), (20.0, 2.0, true), (40.0, 30.0, false)]
            .iter()
            .enumerate()
            .map(|(i, (x, y, pass))| Mark {
                series: "one".into(),
                color: None,
                step: i + 1,
                x: *x,
                y: Some(*y),
                pass: *pass,
                phase: "step".into(),
            })
            .collect();
        let svg = ladder_chart(
            "cap",
            "ladder",
            "rate",
            "ms",
            &marks,
            &[],
            &[(20.0, None, String::new())],
        );
        assert_eq!(svg.matches("class=\"step ").count(), 3);
        assert_eq!(svg.matches("data-pass=\"false\"").count(), 1);
        assert!(svg.contains("held up to 20"));
    }
}
