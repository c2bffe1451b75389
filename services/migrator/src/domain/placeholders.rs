//! `${name}` placeholders, replaced as Flyway's `PlaceholderReplacingReader` does: everywhere in
//! the text (comments, strings and `$$` bodies too), names matched without regard to case, an
//! unknown name is an error.

use std::collections::BTreeMap;

/// Placeholder values by lower-cased name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placeholders(BTreeMap<String, String>);

impl Placeholders {
    /// From user values and the built-ins (`flyway:defaultSchema`, `flyway:user`, ...); user
    /// values win.
    pub fn new<'a>(
        builtins: impl IntoIterator<Item = (&'a str, String)>,
        values: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Placeholders {
        let mut map: BTreeMap<String, String> = builtins.into_iter().map(|(k, v)| (k.to_lowercase(), v)).collect();
        map.extend(values.into_iter().map(|(k, v)| (k.to_lowercase(), v.clone())));
        Placeholders(map)
    }

    /// With one more value (`flyway:filename` differs per script).
    pub fn with(&self, name: &str, value: String) -> Placeholders {
        let mut map = self.0.clone();
        map.insert(name.to_lowercase(), value);
        Placeholders(map)
    }

    /// Replaces every `${name}` in `text`.
    pub fn replace(&self, text: &str) -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                return Err(format!("placeholder ${{{after}... is not closed with }}"));
            };
            let name = &after[..end];
            match self.0.get(&name.to_lowercase()) {
                Some(value) => out.push_str(value),
                None if name.contains("flyway:") => {
                    return Err(format!("Failed to populate value for default placeholder: ${{{name}}}"));
                }
                None => {
                    return Err(format!("No value provided for placeholder: ${{{name}}}.  Check your configuration!"));
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// How a placeholder value is shown: never (values are often credentials).
pub const REDACTED: &str = "***";

/// Values shorter than this are too common (`1`, `on`) to cut out of a message without garbling
/// it; they are still never returned as values.
const REDACT_FROM_TEXT_MIN: usize = 4;

/// `text` (a database's error, a quoted statement) with every caller-given placeholder value
/// replaced by [`REDACTED`].
pub fn redact(text: &str, values: &BTreeMap<String, String>) -> String {
    let mut secrets: Vec<&str> =
        values.values().map(String::as_str).filter(|v| v.chars().count() >= REDACT_FROM_TEXT_MIN).collect();
    // Longest first, so a value containing another is cut whole.
    secrets.sort_by_key(|v| std::cmp::Reverse(v.len()));
    secrets.iter().fold(text.to_string(), |text, secret| text.replace(secret, REDACTED))
}

/// The values of `values` hidden, the names kept.
pub fn redacted(values: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    values.keys().map(|k| (k.clone(), REDACTED.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_cut_out_of_messages() {
        let values: BTreeMap<String, String> =
            [("password".to_string(), "hunter22".to_string()), ("flag".to_string(), "on".to_string())].into();
        assert_eq!(
            redact("syntax error at or near \"hunter22\" (flag on)", &values),
            "syntax error at or near \"***\" (flag on)"
        );
        assert_eq!(redacted(&values).get("password").map(String::as_str), Some(REDACTED));
    }

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn replaces_everywhere_case_insensitively() {
        let v = values(&[("Owner", "app"), ("empty", "")]);
        let p = Placeholders::new([("flyway:defaultSchema", "public".to_string())], &v);
        assert_eq!(
            p.replace("GRANT ALL ON ${flyway:defaultschema}.t TO ${OWNER}; -- ${owner}${empty}\n$$ ${owner} $$")
                .unwrap(),
            "GRANT ALL ON public.t TO app; -- app\n$$ app $$"
        );
        assert_eq!(p.replace("no placeholders $1 $$ { }").unwrap(), "no placeholders $1 $$ { }");
    }

    #[test]
    fn unknown_and_unclosed_are_errors() {
        let p = Placeholders::default();
        assert_eq!(
            p.replace("SELECT '${nope}'").unwrap_err(),
            "No value provided for placeholder: ${nope}.  Check your configuration!"
        );
        assert!(p.replace("SELECT ${flyway:nothing}").unwrap_err().contains("default placeholder"));
        assert!(p.replace("SELECT ${open").unwrap_err().contains("not closed"));
    }
}
