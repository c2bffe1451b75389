//! The scrape provider's arithmetic: the Prometheus text format, and expressions over two
//! scrapes of one endpoint taken `span` apart:
//!
//! - `rate(sel)`, `increase(sel)`: per-second rate / increase of the counters `sel` matches,
//!   summed over series (a counter reset counts from zero; a series new in the window counts from
//!   zero);
//! - `quantile(q, sel)`: `histogram_quantile` over the increase of `sel`'s `_bucket` series;
//! - `sel` alone: the current value, summed;
//! - numbers, `+ - * /`, `ratio(a, b)` (= a / b).
//!
//! A selector is `name{label="value", other!="value"}`. A selector matching no series sums to 0,
//! but a name absent from the scrape is reported (a typo must not read as "no errors"); 0/0 is
//! NaN, which the analyzer treats as no data.

use std::collections::BTreeMap;

use super::lexer::{Cursor, Tok, describe};

/// One sample of a scrape.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels, sorted by name.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

/// One scrape of an endpoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Samples by metric name.
    pub families: BTreeMap<String, Vec<Sample>>,
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

fn parse_labels(text: &str) -> Result<(Vec<(String, String)>, usize), String> {
    // `text` starts after `{`; returns the labels and the bytes consumed up to and including `}`.
    let mut labels = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    loop {
        while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b',') {
            i += 1;
        }
        if i < bytes.len() && bytes[i] == b'}' {
            labels.sort();
            return Ok((labels, i + 1));
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' {
            i += 1;
        }
        let name = text[start..i].trim().to_string();
        if i + 1 >= bytes.len() || bytes[i + 1] != b'"' {
            return Err(format!("bad label {name:?}"));
        }
        i += 2;
        let mut value = String::new();
        loop {
            match text[i..].chars().next() {
                None => return Err("unterminated label value".into()),
                Some('"') => {
                    i += 1;
                    break;
                }
                Some('\\') => {
                    let c = text[i + 1..].chars().next().ok_or("unterminated escape")?;
                    value.push(if c == 'n' { '\n' } else { c });
                    i += 1 + c.len_utf8();
                }
                Some(c) => {
                    value.push(c);
                    i += c.len_utf8();
                }
            }
        }
        labels.push((name, value));
    }
}

/// Parses the Prometheus text exposition format.
pub fn parse_exposition(text: &str) -> Result<Snapshot, String> {
    let mut snapshot = Snapshot::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).unwrap_or(line.len());
        let name = &line[..name_end];
        let (labels, rest) = if line[name_end..].starts_with('{') {
            let (labels, used) = parse_labels(&line[name_end + 1..]).map_err(|e| format!("line {}: {e}", n + 1))?;
            (labels, &line[name_end + 1 + used..])
        } else {
            (Vec::new(), &line[name_end..])
        };
        let value_text = rest.split_whitespace().next().ok_or_else(|| format!("line {}: no value", n + 1))?;
        let value = parse_value(value_text).ok_or_else(|| format!("line {}: bad value {value_text:?}", n + 1))?;
        snapshot.families.entry(name.to_string()).or_default().push(Sample { name: name.to_string(), labels, value });
    }
    Ok(snapshot)
}

impl Snapshot {
    /// The snapshot in the text exposition format, each name's samples together (so it parses
    /// back into itself). Types are not kept by [`parse_exposition`]: every family is untyped.
    pub fn to_exposition(&self) -> String {
        let mut out = String::new();
        for sample in self.families.values().flatten() {
            out.push_str(&sample.name);
            if !sample.labels.is_empty() {
                out.push('{');
                for (i, (name, value)) in sample.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(name);
                    out.push_str("=\"");
                    for c in value.chars() {
                        match c {
                            '\\' => out.push_str("\\\\"),
                            '"' => out.push_str("\\\""),
                            '\n' => out.push_str("\\n"),
                            c => out.push(c),
                        }
                    }
                    out.push('"');
                }
                out.push('}');
            }
            out.push(' ');
            out.push_str(&render_value(sample.value));
            out.push('\n');
        }
        out
    }
}

fn render_value(value: f64) -> String {
    if value == f64::INFINITY {
        "+Inf".into()
    } else if value == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        value.to_string()
    }
}

/// `name{label="v", label!="v"}`.
#[derive(Clone, Debug, PartialEq)]
pub struct Selector {
    /// Metric name.
    pub name: String,
    /// (label, equal?, value).
    pub matchers: Vec<(String, bool, String)>,
}

impl Selector {
    fn matches(&self, sample: &Sample) -> bool {
        self.matchers.iter().all(|(label, equal, value)| {
            let actual = sample.labels.iter().find(|(l, _)| l == label).map(|(_, v)| v.as_str()).unwrap_or("");
            (actual == value) == *equal
        })
    }
}

/// A parsed scrape expression.
#[derive(Clone, Debug, PartialEq)]
pub enum ScrapeExpr {
    /// A number.
    Num(f64),
    /// Current value, summed.
    Value(Selector),
    /// Per-second rate over the span.
    Rate(Selector),
    /// Increase over the span.
    Increase(Selector),
    /// Histogram quantile over the span.
    Quantile(f64, Selector),
    /// Arithmetic.
    Bin(char, Box<ScrapeExpr>, Box<ScrapeExpr>),
}

impl ScrapeExpr {
    /// Parses an expression.
    pub fn parse(source: &str) -> Result<ScrapeExpr, String> {
        let mut c = Cursor::new(source)?;
        let e = sum(&mut c)?;
        c.expect_end()?;
        Ok(e)
    }

    /// True when it needs an earlier scrape (rates, increases, quantiles).
    pub fn needs_window(&self) -> bool {
        match self {
            ScrapeExpr::Num(_) | ScrapeExpr::Value(_) => false,
            ScrapeExpr::Rate(_) | ScrapeExpr::Increase(_) | ScrapeExpr::Quantile(..) => true,
            ScrapeExpr::Bin(_, a, b) => a.needs_window() || b.needs_window(),
        }
    }

    /// Evaluates over `now` and `then` (taken `span_secs` earlier). Names missing from the scrape
    /// are added to `missing`.
    pub fn eval(
        &self,
        now: &Snapshot,
        then: Option<&Snapshot>,
        span_secs: f64,
        missing: &mut Vec<String>,
    ) -> Result<f64, String> {
        Ok(match self {
            ScrapeExpr::Num(n) => *n,
            ScrapeExpr::Value(sel) => series(now, sel, missing).iter().map(|s| s.value).sum(),
            ScrapeExpr::Rate(sel) | ScrapeExpr::Increase(sel) => {
                let then = then.ok_or("rate and increase need two scrapes")?;
                let increase = increase(now, then, sel, missing);
                if matches!(self, ScrapeExpr::Rate(_)) { increase / span_secs } else { increase }
            }
            ScrapeExpr::Quantile(q, sel) => {
                let then = then.ok_or("quantile needs two scrapes")?;
                let bucket = Selector { name: format!("{}_bucket", sel.name), matchers: sel.matchers.clone() };
                let mut by_le: BTreeMap<String, (f64, f64)> = BTreeMap::new();
                for s in series(now, &bucket, missing) {
                    let Some((_, le)) = s.labels.iter().find(|(l, _)| l == "le") else { continue };
                    let Some(bound) = parse_value(le) else { continue };
                    let before = previous(then, s);
                    let inc = if s.value < before { s.value } else { s.value - before };
                    by_le.entry(le.clone()).or_insert((bound, 0.0)).1 += inc;
                }
                let mut buckets: Vec<(f64, f64)> = by_le.into_values().collect();
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                histogram_quantile(*q, &buckets)
            }
            ScrapeExpr::Bin(op, a, b) => {
                let (x, y) = (a.eval(now, then, span_secs, missing)?, b.eval(now, then, span_secs, missing)?);
                match op {
                    '+' => x + y,
                    '-' => x - y,
                    '*' => x * y,
                    _ => x / y,
                }
            }
        })
    }
}

fn series<'a>(snapshot: &'a Snapshot, sel: &Selector, missing: &mut Vec<String>) -> Vec<&'a Sample> {
    match snapshot.families.get(&sel.name) {
        Some(samples) => samples.iter().filter(|s| sel.matches(s)).collect(),
        None => {
            if !missing.contains(&sel.name) {
                missing.push(sel.name.clone());
            }
            Vec::new()
        }
    }
}

fn previous(then: &Snapshot, sample: &Sample) -> f64 {
    then.families
        .get(&sample.name)
        .and_then(|samples| samples.iter().find(|s| s.labels == sample.labels))
        .map(|s| s.value)
        .unwrap_or(0.0)
}

fn increase(now: &Snapshot, then: &Snapshot, sel: &Selector, missing: &mut Vec<String>) -> f64 {
    series(now, sel, missing)
        .into_iter()
        .map(|s| {
            let before = previous(then, s);
            if s.value < before { s.value } else { s.value - before }
        })
        .sum()
}

/// Prometheus' `histogram_quantile` over cumulative (upper bound, count) buckets.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    if buckets.len() < 2 || !buckets.last().is_some_and(|b| b.0.is_infinite()) {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    let total = buckets[buckets.len() - 1].1;
    if total == 0.0 || q.is_nan() {
        return f64::NAN;
    }
    let rank = q * total;
    let b = buckets.iter().position(|(_, count)| *count >= rank).unwrap_or(buckets.len() - 1);
    if b == buckets.len() - 1 {
        return buckets[buckets.len() - 2].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let (start, below) = if b == 0 { (0.0, 0.0) } else { (buckets[b - 1].0, buckets[b - 1].1) };
    let (end, count) = (buckets[b].0, buckets[b].1 - below);
    if count == 0.0 {
        return end;
    }
    start + (end - start) * ((rank - below) / count)
}

fn sum(c: &mut Cursor) -> Result<ScrapeExpr, String> {
    c.nested(sum_here)
}

fn sum_here(c: &mut Cursor) -> Result<ScrapeExpr, String> {
    let mut left = product(c)?;
    loop {
        let op = if c.eat("+") {
            '+'
        } else if c.eat("-") {
            '-'
        } else {
            return Ok(left);
        };
        c.deeper()?;
        left = ScrapeExpr::Bin(op, Box::new(left), Box::new(product(c)?));
    }
}

fn product(c: &mut Cursor) -> Result<ScrapeExpr, String> {
    c.nested(product_here)
}

fn product_here(c: &mut Cursor) -> Result<ScrapeExpr, String> {
    let mut left = primary(c)?;
    loop {
        let op = if c.eat("*") {
            '*'
        } else if c.eat("/") {
            '/'
        } else {
            return Ok(left);
        };
        c.deeper()?;
        left = ScrapeExpr::Bin(op, Box::new(left), Box::new(primary(c)?));
    }
}

fn selector(c: &mut Cursor) -> Result<Selector, String> {
    let at = c.at();
    let name = match c.advance() {
        Tok::Ident(name) => name,
        other => return Err(format!("expected a metric name at {at}, found {}", describe(&other))),
    };
    let mut matchers = Vec::new();
    if c.eat("{") {
        while !c.eat("}") {
            let label = match c.advance() {
                Tok::Ident(l) => l,
                other => return Err(format!("expected a label name in {name}{{…}}, found {}", describe(&other))),
            };
            let equal = if c.eat("=") {
                true
            } else if c.eat("!=") {
                false
            } else {
                return Err(format!("expected = or != after label {label:?}"));
            };
            let value = match c.advance() {
                Tok::Str(v) => v,
                other => {
                    return Err(format!("expected a quoted value for label {label:?}, found {}", describe(&other)));
                }
            };
            matchers.push((label, equal, value));
            if !c.eat(",") {
                c.expect("}")?;
                break;
            }
        }
    }
    Ok(Selector { name, matchers })
}

fn primary(c: &mut Cursor) -> Result<ScrapeExpr, String> {
    let at = c.at();
    match c.peek().clone() {
        Tok::Num(n) => {
            c.advance();
            Ok(ScrapeExpr::Num(n))
        }
        Tok::Op("(") => {
            c.advance();
            let e = sum(c)?;
            c.expect(")")?;
            Ok(e)
        }
        Tok::Ident(name) if matches!(name.as_str(), "rate" | "increase" | "quantile" | "ratio") => {
            c.advance();
            c.expect("(")?;
            let e = match name.as_str() {
                "rate" => ScrapeExpr::Rate(selector(c)?),
                "increase" => ScrapeExpr::Increase(selector(c)?),
                "quantile" => {
                    let q = match c.advance() {
                        Tok::Num(q) if (0.0..=1.0).contains(&q) => q,
                        other => {
                            return Err(format!("quantile needs a number in 0..=1 first, found {}", describe(&other)));
                        }
                    };
                    c.expect(",")?;
                    ScrapeExpr::Quantile(q, selector(c)?)
                }
                _ => {
                    let a = sum(c)?;
                    c.expect(",")?;
                    let b = sum(c)?;
                    ScrapeExpr::Bin('/', Box::new(a), Box::new(b))
                }
            };
            c.expect(")")?;
            Ok(e)
        }
        Tok::Ident(_) => {
            let sel = selector(c)?;
            if matches!(c.peek(), Tok::Op("(")) {
                return Err(format!("unknown function {:?} at {at} (rate, increase, quantile, ratio)", sel.name));
            }
            Ok(ScrapeExpr::Value(sel))
        }
        other => Err(format!("unexpected {} at {at}", describe(&other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"
# HELP req Requests.
# TYPE req counter
req{track="stable",class="2xx"} 100
req{track="stable",class="5xx"} 0
req{track="canary",class="2xx"} 10
lat_bucket{track="canary",le="0.1"} 10
lat_bucket{track="canary",le="0.5"} 10
lat_bucket{track="canary",le="+Inf"} 10
"#;
    const AFTER: &str = r#"
req{track="stable",class="2xx"} 160
req{track="stable",class="5xx"} 0
req{track="canary",class="2xx"} 25
req{track="canary",class="5xx"} 5
lat_bucket{track="canary",le="0.1"} 20
lat_bucket{track="canary",le="0.5"} 28
lat_bucket{track="canary",le="+Inf"} 30
"#;

    fn eval(expr: &str) -> (f64, Vec<String>) {
        let (now, then) = (parse_exposition(AFTER).unwrap(), parse_exposition(BEFORE).unwrap());
        let mut missing = Vec::new();
        let v = ScrapeExpr::parse(expr).unwrap().eval(&now, Some(&then), 10.0, &mut missing).unwrap();
        (v, missing)
    }

    #[test]
    fn rates_ratios_and_quantiles() {
        assert_eq!(eval(r#"rate(req{track="stable"})"#).0, 6.0);
        assert_eq!(eval(r#"increase(req{track="canary"})"#).0, 20.0, "a series new in the window counts from 0");
        assert_eq!(eval(r#"ratio(rate(req{track="canary",class="5xx"}), rate(req{track="canary"}))"#).0, 0.25);
        assert_eq!(eval(r#"rate(req{track="canary",class!="5xx"}) / rate(req{track="canary"})"#).0, 0.75);
        // 20 new observations: 10 ≤ 0.1, 8 in (0.1, 0.5], 2 above. p50 → rank 10 → 0.1; p75 → rank 15 in the
        // second bucket: 0.1 + 0.4 × 5/8.
        assert_eq!(eval(r#"quantile(0.5, lat{track="canary"})"#).0, 0.1);
        assert!((eval(r#"quantile(0.75, lat{track="canary"})"#).0 - 0.35).abs() < 1e-12);
        assert_eq!(eval(r#"quantile(0.99, lat{track="canary"})"#).0, 0.5, "in +Inf: the last finite bound");
        assert_eq!(eval("req{track=\"stable\"} + 1").0, 161.0);
    }

    #[test]
    fn no_traffic_is_nan_and_unknown_names_are_reported() {
        let (v, missing) = eval(r#"rate(req{track="preview",class="5xx"}) / rate(req{track="preview"})"#);
        assert!(v.is_nan());
        assert!(missing.is_empty());
        let (v, missing) = eval(r#"rate(reqs_total{track="canary"})"#);
        assert_eq!(v, 0.0);
        assert_eq!(missing, vec!["reqs_total".to_string()]);
    }

    #[test]
    fn counter_reset_counts_from_zero() {
        let now = parse_exposition("c 5").unwrap();
        let then = parse_exposition("c 100").unwrap();
        let v = ScrapeExpr::parse("increase(c)").unwrap().eval(&now, Some(&then), 1.0, &mut vec![]).unwrap();
        assert_eq!(v, 5.0);
    }

    #[test]
    fn parse_errors() {
        assert!(ScrapeExpr::parse("rate(req").unwrap_err().contains("expected \")\""));
        assert!(ScrapeExpr::parse("sum(req)").unwrap_err().contains("unknown function \"sum\""));
        assert!(ScrapeExpr::parse("quantile(1.5, x)").unwrap_err().contains("0..=1"));
        assert!(ScrapeExpr::parse("req{a=b}").unwrap_err().contains("quoted value"));
        assert!(!ScrapeExpr::parse("req + 1").unwrap().needs_window());
        assert!(ScrapeExpr::parse("1 / rate(x)").unwrap().needs_window());
    }

    #[test]
    fn hostile_nesting_is_an_error_not_a_stack_overflow() {
        let ratios = format!("{}x{}", "ratio(".repeat(500), ", 1)".repeat(500));
        assert!(ScrapeExpr::parse(&ratios).unwrap_err().contains("nested more than"));
        let parens = format!("{}x{}", "(".repeat(2000), ")".repeat(2000));
        assert!(ScrapeExpr::parse(&parens).unwrap_err().contains("nested more than"));
        let chain = format!("x{}", " + x".repeat(1500));
        assert!(ScrapeExpr::parse(&chain).unwrap_err().contains("nested more than"));
        assert!(ScrapeExpr::parse(&"(".repeat(100_000)).unwrap_err().contains("at most 8192"));
        assert!(ScrapeExpr::parse(&format!("{}x{}", "ratio(".repeat(10), ", 1)".repeat(10))).is_ok());
    }

    #[test]
    fn an_exposition_rendered_parses_back_into_itself() {
        let text = "# TYPE a counter\na{x=\"q\\\"uote\",y=\"back\\\\slash\\nline\"} 3\nb 1.5\nc_bucket{le=\"+Inf\"} +Inf\nd NaN\n";
        let snapshot = parse_exposition(text).unwrap();
        let rendered = snapshot.to_exposition();
        let again = parse_exposition(&rendered).unwrap();
        assert_eq!(again.families["a"], snapshot.families["a"], "{rendered}");
        assert_eq!(again.families["b"], snapshot.families["b"]);
        assert_eq!(again.families["c_bucket"], snapshot.families["c_bucket"]);
        assert!(again.families["d"][0].value.is_nan());
        assert!(rendered.contains("a{x=\"q\\\"uote\",y=\"back\\\\slash\\nline\"} 3\n"), "{rendered}");
    }

    #[test]
    fn exposition_with_escapes_and_timestamps() {
        let s = parse_exposition("m{a=\"x\\\"y\",b=\"2\"} 1.5 1700000000000\nn NaN\n").unwrap();
        assert_eq!(s.families["m"][0].labels, vec![("a".into(), "x\"y".into()), ("b".into(), "2".into())]);
        assert!(s.families["n"][0].value.is_nan());
        assert!(parse_exposition("m{a=1} 2").is_err());
    }
}
