//! Two SVG plots, written by hand (a plotting crate would be the larger part of the suite): the
//! RR latency CDF and the stack's standing against the kernel per scenario.
use std::fmt::Write;

use super::{Better, Results};

const COLORS: [&str; 4] = ["#444444", "#1f77b4", "#d62728", "#2ca02c"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Latency CDF of the median run per backend in scenario `key`; x is log-scaled µs.
pub fn cdf_svg(r: &Results, key: &str) -> Option<String> {
    let sc = r.scenarios.iter().find(|s| s.key == key)?;
    let series: Vec<_> = sc
        .series
        .iter()
        .filter_map(|s| Some((&s.backend, s.cdf.as_ref()?)))
        .collect();
    if series.is_empty() {
        return None;
    }
    let (w, h, l, b, t, rgt) = (720.0, 420.0, 70.0, 50.0, 40.0, 20.0);
    let xs = series
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .filter(|v| *v > 0.0);
    let (mut lo, mut hi) = (f64::MAX, 0.0f64);
    for x in xs {
        lo = lo.min(x);
        hi = hi.max(x);
    }
    if hi <= 0.0 {
        return None;
    }
    let (llo, lhi) = ((lo * 0.8).log10().floor(), (hi * 1.2).log10().ceil());
    let px = |v: f64| l + (v.max(1e-3).log10() - llo) / (lhi - llo) * (w - l - rgt);
    let py = |q: f64| h - b - q * (h - b - t);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
    let _ = write!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{} — latency CDF (median run)</text>"#,
        w / 2.0,
        esc(&sc.title)
    );
    let mut d = llo;
    while d <= lhi {
        let v = 10f64.powf(d);
        let x = px(v);
        let _ = write!(
            s,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{v}</text>"##,
            t,
            h - b,
            h - b + 16.0
        );
        d += 1.0;
    }
    for q in [0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0] {
        let y = py(q);
        let _ = write!(
            s,
            r##"<line x1="{l}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{q}</text>"##,
            w - rgt,
            l - 6.0,
            y + 4.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">round-trip latency, µs (log scale)</text><text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">fraction of requests</text>"#,
        w / 2.0,
        h - 12.0,
        h / 2.0,
        h / 2.0
    );
    for (i, (name, c)) in series.iter().enumerate() {
        let pts: Vec<String> = c
            .iter()
            .filter(|p| p.1 > 0.0)
            .map(|p| format!("{:.1},{:.1}", px(p.1), py(p.0)))
            .collect();
        let col = COLORS[i % COLORS.len()];
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{col}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        let _ = write!(
            s,
            r#"<rect x="{}" y="{}" width="14" height="4" fill="{col}"/><text x="{}" y="{}">{}</text>"#,
            l + 12.0,
            t + 12.0 + 16.0 * i as f64,
            l + 32.0,
            t + 17.0 + 16.0 * i as f64,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    Some(s)
}

/// One bar per scenario metric and stack mode: how the stack stands against the kernel, as a
/// factor where above 1 means the stack is better (kernel/stack for latency and CPU).
pub fn ratio_svg(r: &Results) -> Option<String> {
    let mut bars: Vec<(String, f64)> = Vec::new();
    for sc in &r.scenarios {
        let Some(k) = sc.series.iter().find(|s| s.backend == "kernel") else {
            continue;
        };
        for col in &sc.columns {
            if col.metric == "failed" || col.metric == "loss" {
                continue;
            }
            for st in sc.series.iter().filter(|s| s.backend != "kernel") {
                let (Some(kv), Some(sv)) = (k.stat(col.metric), st.stat(col.metric)) else {
                    continue;
                };
                if kv.0 <= 0.0 || sv.0 <= 0.0 {
                    continue;
                }
                let f = match col.better {
                    Better::Higher => sv.0 / kv.0,
                    Better::Lower => kv.0 / sv.0,
                };
                bars.push((format!("{} · {} · {}", sc.key, col.title, st.backend), f));
            }
        }
    }
    if bars.is_empty() {
        return None;
    }
    let (w, row, l, t) = (760.0, 20.0, 330.0, 50.0);
    let h = t + row * bars.len() as f64 + 40.0;
    let max = bars.iter().map(|b| b.1).fold(2.0f64, f64::max).min(10.0);
    let span = w - l - 60.0;
    let px = |f: f64| l + f.min(max) / max * span;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>"#
    );
    let _ = write!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">The stack against the kernel (median; &gt; 1: the stack is better)</text>"#,
        w / 2.0
    );
    for (i, (name, f)) in bars.iter().enumerate() {
        let y = t + row * i as f64;
        let col = if *f >= 1.0 { "#2ca02c" } else { "#d62728" };
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{l}" y="{}" width="{:.1}" height="{}" fill="{col}"/><text x="{:.1}" y="{}">{f:.2}×</text>"#,
            l - 6.0,
            y + 13.0,
            esc(name),
            y + 3.0,
            px(*f) - l,
            row - 6.0,
            px(*f) + 4.0,
            y + 13.0
        );
    }
    let x1 = px(1.0);
    let _ = write!(
        s,
        r##"<line x1="{x1}" y1="{}" x2="{x1}" y2="{}" stroke="#000" stroke-dasharray="4 3"/><text x="{x1}" y="{}" text-anchor="middle">1× (kernel)</text>"##,
        t - 6.0,
        h - 30.0,
        h - 14.0
    );
    s.push_str("</svg>\n");
    Some(s)
}
