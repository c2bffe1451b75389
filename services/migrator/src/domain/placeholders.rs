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

#[cfg(test)]
mod tests {
    use super::*;

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
