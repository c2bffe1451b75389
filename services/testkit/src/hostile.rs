//! Inputs for property tests of the parsers that take outside input (delivery config YAML,
//! condition and scrape expressions, migration file names and scripts, page tokens): a seed corpus
//! of nasty inputs, arbitrary text around it, and text in a parser's own alphabet so generated
//! inputs get past the first character. Each property runs [`CASES`] cases in CI.

use proptest::{prelude::*, test_runner::Config};

/// Cases per property (`PROPTEST_CASES` overrides it for a longer run by hand).
pub const CASES: u32 = 10_000;

/// The property-test configuration: [`CASES`] cases, no regression files written into the
/// source tree (a failure prints its minimal input).
pub fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(CASES);
    Config { cases, failure_persistence: None, ..Config::default() }
}

/// Inputs that have broken parsers elsewhere: empty, NUL and control bytes, bidirectional
/// overrides, huge and tiny numbers, unterminated quotes and comments, byte-order marks.
pub const SEEDS: &[&str] = &[
    "",
    " ",
    "\0",
    "\u{0}\u{1}\u{7f}",
    "\u{202E}",
    "\u{FEFF}",
    "\r\n\r\n",
    "'",
    "\"",
    "$$",
    "/*",
    "--",
    "{{",
    "}}",
    "{{args.",
    "1e999999",
    "-1e-999999",
    "18446744073709551616",
    "NaN",
    "inf",
    "0x",
    "[",
    "{",
    "&a [*a]",
    "<<: *x",
    "!!binary",
    "🙂",
];

/// Deep nesting of `open` … `close` around `inner` (`depth` up to 20,000).
pub fn nested(open: &'static str, close: &'static str, inner: &'static str) -> impl Strategy<Value = String> {
    (1usize..20_000).prop_map(move |depth| format!("{}{inner}{}", open.repeat(depth), close.repeat(depth)))
}

/// Arbitrary text, a seed, a seed spliced into text of `alphabet` (a regex character class body
/// such as `a-z0-9 ()<>=`), or text of `alphabet` alone.
pub fn text(alphabet: &'static str) -> impl Strategy<Value = String> {
    let own = || proptest::string::string_regex(&format!("[{alphabet}]{{0,80}}")).expect("a character class");
    prop_oneof![
        any::<String>(),
        prop::sample::select(SEEDS).prop_map(str::to_string),
        (own(), prop::sample::select(SEEDS), own()).prop_map(|(a, s, b)| format!("{a}{s}{b}")),
        own(),
    ]
}
