//! `{{args.NAME}}` substitution in metric specs (Argo's argument templating).

use std::collections::BTreeMap;

/// Replaces every `{{args.NAME}}` (spaces inside the braces allowed); an unknown name is an
/// error naming it and the arguments there are.
pub fn substitute(text: &str, args: &BTreeMap<String, String>) -> Result<String, String> {
    substitute_with(text, |name| {
        args.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = args.keys().map(String::as_str).collect();
            format!(
                "unknown argument {name:?} (arguments: {})",
                if known.is_empty() { "none".into() } else { known.join(", ") }
            )
        })
    })
}

/// Replaces every `{{args.NAME}}` with what `value` says for NAME (or fails with its error).
pub fn substitute_with(text: &str, value: impl Fn(&str) -> Result<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(format!("unclosed {{{{ in {text:?}"));
        };
        let inner = after[..end].trim();
        let Some(name) = inner.strip_prefix("args.") else {
            return Err(format!("{{{{{inner}}}}} is not an argument reference (write {{{{args.NAME}}}})"));
        };
        out.push_str(&value(name)?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_and_names_unknown_arguments() {
        let args = BTreeMap::from([
            ("service".to_string(), "booking".to_string()),
            ("track".to_string(), "canary".to_string()),
        ]);
        assert_eq!(
            substitute(r#"rate(x{service="{{args.service}}",track="{{ args.track }}"})"#, &args).unwrap(),
            r#"rate(x{service="booking",track="canary"})"#
        );
        assert_eq!(substitute("no templates", &args).unwrap(), "no templates");
        assert_eq!(
            substitute("{{args.env}}", &args).unwrap_err(),
            "unknown argument \"env\" (arguments: service, track)"
        );
        assert!(substitute("{{args.service", &args).unwrap_err().contains("unclosed"));
        assert!(substitute("{{service}}", &args).unwrap_err().contains("not an argument reference"));
    }
}
