//! Property tests of the analysis languages, which read what people write in templates and what
//! metric endpoints serve: no input makes them panic, an error says what is wrong, and
//! conditions mean what they say.

use hopngo_metrics_lang::{
    condition::{Condition, Value},
    scrape::{ScrapeExpr, parse_exposition},
    template::substitute,
};
use hopngo_testkit::hostile::{config, nested, text};
use proptest::prelude::*;

const CONDITION_ALPHABET: &str = r#"a-z0-9 ().<>=!&|+*/%,\[\]"'_-"#;
const SCRAPE_ALPHABET: &str = r#"a-z_0-9 (){}=~!",.+*/-"#;
const EXPOSITION_ALPHABET: &str = "a-z_0-9 {}=\",.#\\n+-";

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_condition_parses_or_says_why_and_evaluates_without_panicking(source in text(CONDITION_ALPHABET)) {
        match Condition::parse(&source) {
            Ok(c) => {
                for result in [Value::Num(0.5), Value::Num(f64::NAN), Value::Null, Value::Str("x".into())] {
                    let _ = c.eval(&result);
                }
            }
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }

    #[test]
    fn deeply_nested_conditions_are_refused_or_parsed_not_a_stack_overflow(source in nested("(", ")", "result")) {
        let _ = Condition::parse(&source);
        let _ = Condition::parse(&source.replace('(', "!("));
    }

    #[test]
    fn a_comparison_means_what_it_says(
        op in prop::sample::select(vec!["<", "<=", ">", ">=", "==", "!="]),
        threshold in -1.0e6f64..1.0e6,
        result in -1.0e6f64..1.0e6,
    ) {
        let c = Condition::parse(&format!("result {op} {threshold}")).unwrap();
        let expected = match op {
            "<" => result < threshold,
            "<=" => result <= threshold,
            ">" => result > threshold,
            ">=" => result >= threshold,
            "==" => result == threshold,
            _ => result != threshold,
        };
        prop_assert_eq!(c.eval(&Value::Num(result)).unwrap(), expected);
    }

    #[test]
    fn a_scrape_expression_parses_or_says_why(source in text(SCRAPE_ALPHABET)) {
        if let Err(e) = ScrapeExpr::parse(&source) {
            prop_assert!(!e.is_empty());
        }
    }

    #[test]
    fn deeply_nested_scrape_expressions_do_not_overflow_the_stack(source in nested("(", ")", "up")) {
        let _ = ScrapeExpr::parse(&source);
    }

    #[test]
    fn any_metrics_page_is_read_or_refused(page in text(EXPOSITION_ALPHABET)) {
        let _ = parse_exposition(&page);
    }

    #[test]
    fn a_sample_line_reads_back_its_value(
        name in "m_[a-z0-9_]{0,20}",
        label in "[a-z_][a-z0-9_]{0,10}",
        value in "[a-zA-Z0-9 _.:/-]{0,20}",
        sample in -1.0e9f64..1.0e9,
    ) {
        let page = format!("# TYPE {name} gauge\n{name}{{{label}=\"{value}\"}} {sample}\n");
        let snapshot = parse_exposition(&page).unwrap();
        let mut missing = Vec::new();
        let expr = ScrapeExpr::parse(&name).unwrap();
        let read = expr.eval(&snapshot, None, 0.0, &mut missing).unwrap();
        prop_assert!(missing.is_empty());
        prop_assert!((read - sample).abs() <= sample.abs() * 1e-12, "{} != {}", read, sample);
    }

    #[test]
    fn substitution_never_panics_and_leaves_plain_text_alone(template in text("a-z{}. ")) {
        let args = std::collections::BTreeMap::from([("a".to_string(), "1".to_string())]);
        match substitute(&template, &args) {
            Ok(out) if !template.contains("{{") => prop_assert_eq!(out, template),
            _ => {}
        }
    }
}
