//! Property tests of what the migrator reads from script locations (file names, bytes, SQL,
//! placeholders, directives): no input makes it panic, and what it reads back is what was meant.

use hopngo_migrator::domain::{
    checksum::decode,
    naming::{self, ScriptKind},
    placeholders::Placeholders,
    sql::{directives, split},
    version::Version,
};
use hopngo_testkit::hostile::{config, nested, text};
use proptest::prelude::*;

const NAME_ALPHABET: &str = "VURBa-z0-9_.";
const SQL_ALPHABET: &str = r#"a-zA-Z0-9 ;'"$\-*/()\n\\."#;

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_script_file_name_is_read_or_refused(stem in text(NAME_ALPHABET), suffix in prop::sample::select(vec![".sql", ".SQL", ".Sql"])) {
        let name = format!("{stem}{suffix}");
        // `.sql` alone names no script.
        prop_assert_eq!(naming::is_script(&name), !stem.is_empty());
        if naming::is_script(&name)
            && let Err(e) = naming::parse(&name)
        {
            prop_assert!(!e.is_empty());
        }
        let _ = naming::is_script(&stem);
    }

    #[test]
    fn a_versioned_name_reads_back_its_version_and_description(
        parts in prop::collection::vec(0u32..100_000, 1..5),
        words in prop::collection::vec("[a-z]{1,8}", 0..4),
    ) {
        let version: Vec<String> = parts.iter().map(u32::to_string).collect();
        let name = format!("V{}__{}.sql", version.join("_"), words.join("_"));
        let parsed = naming::parse(&name).unwrap();
        prop_assert_eq!(parsed.description, words.join(" "));
        match parsed.kind {
            ScriptKind::Versioned(v) => prop_assert_eq!(v.text(), version.join(".")),
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn versions_order_as_numbers(a in 0u64..1_000_000_000, b in 0u64..1_000_000_000, minor in 0u32..1000) {
        let (va, vb) = (Version::parse(&format!("{a}.{minor}")).unwrap(), Version::parse(&format!("{b}.{minor}")).unwrap());
        prop_assert_eq!(va.cmp(&vb), a.cmp(&b));
        prop_assert_eq!(Version::parse(&format!("{a}.0.0")).unwrap(), Version::parse(&a.to_string()).unwrap());
    }

    #[test]
    fn any_version_text_is_read_or_refused(raw in text("0-9._a")) {
        if let Ok(v) = Version::parse(&raw) {
            prop_assert_eq!(Version::parse(v.text()).unwrap(), v);
        }
    }

    #[test]
    fn script_bytes_decode_exactly_when_they_are_utf8(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        prop_assert_eq!(decode(&bytes).is_ok(), std::str::from_utf8(&bytes).is_ok());
    }

    #[test]
    fn any_script_is_split_or_refused_at_a_line(script in text(SQL_ALPHABET)) {
        match split(&script) {
            Ok(statements) => {
                let lines: Vec<usize> = statements.iter().map(|s| s.line).collect();
                prop_assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{:?}", lines);
            }
            Err(e) => prop_assert!(e.contains("line"), "{}", e),
        }
        let _ = directives(&script);
    }

    #[test]
    fn nested_blocks_and_comments_do_not_overflow_the_stack(script in nested("/*", "*/", "x")) {
        let _ = split(&format!("SELECT 1; {script} SELECT 2;"));
    }

    #[test]
    fn simple_statements_are_split_one_per_semicolon(values in prop::collection::vec(any::<i64>(), 1..20)) {
        let script: String = values.iter().map(|v| format!("SELECT {v};\n")).collect();
        let statements = split(&script).unwrap();
        prop_assert_eq!(statements.len(), values.len());
        for (i, (s, v)) in statements.iter().zip(&values).enumerate() {
            prop_assert_eq!(s.text.trim(), format!("SELECT {v};"));
            prop_assert_eq!(s.line, i + 1);
        }
    }

    #[test]
    fn placeholders_are_replaced_or_refused_and_plain_text_is_left_alone(script in text(r"a-z${}:")) {
        let placeholders = Placeholders::new([("flyway:user", "hopngo".to_string())], std::iter::empty());
        match placeholders.replace(&script) {
            Ok(out) if !script.contains("${") => prop_assert_eq!(out, script),
            Ok(_) => {}
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }
}
