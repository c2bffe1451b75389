//! Property tests of the delivery config reader: whatever document a person applies, it is read
//! and validated or refused with problems that name a path (or, for broken YAML, a line), never
//! a panic; deep nesting cannot exhaust the stack.

use hopngo_delivery::DeliveryConfig;
use hopngo_testkit::hostile::{config, nested, text};
use proptest::prelude::*;

const YAML_ALPHABET: &str = r##"a-z0-9 :\-\[\]{},&*!|>'"#\n"##;
const VALUE_ALPHABET: &str = r#"a-z0-9 .:"'\-"#;

/// A small valid document with `value` placed where a person could write anything.
fn with_value(value: &str) -> String {
    format!(
        "environments: [{{name: staging}}]\nservices:\n  - name: booking\n    strategy: {{canary: {{steps: [{{setWeight: 50}}, {{pause: {{duration: {value}}}}}]}}}}\n"
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_document_is_read_and_validated_or_refused_with_a_problem(document in text(YAML_ALPHABET)) {
        match DeliveryConfig::parse(&document) {
            Ok(config) => {
                for problem in config.validate() {
                    prop_assert!(!problem.message.is_empty());
                }
            }
            Err(problem) => prop_assert!(!problem.message.is_empty()),
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow(document in nested("[", "]", "1")) {
        let refused = DeliveryConfig::parse(&format!("services: {document}")).is_err();
        prop_assert!(refused);
    }

    #[test]
    fn a_value_anywhere_is_taken_or_named_by_its_path(value in text(VALUE_ALPHABET)) {
        let quoted = serde_json::to_string(&value).unwrap();
        match DeliveryConfig::parse(&with_value(&quoted)) {
            Ok(config) => {
                for problem in config.validate() {
                    prop_assert!(problem.path.starts_with("services[0]"), "{}: {}", problem.path, problem.message);
                }
            }
            // Text YAML cannot hold (a raw DEL, say) is a syntax error at a line and column.
            Err(problem) => prop_assert!(
                problem.path.contains("services") || problem.message.contains(" line "),
                "{}: {}",
                problem.path,
                problem.message
            ),
        }
    }
}
