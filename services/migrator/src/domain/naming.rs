//! Script file names as Flyway's `ResourceNameParser` reads them, and the abbreviations Flyway
//! applies to the history table's `description` and `script` columns.
//!
//! `V<version>__<description>.sql` (versioned), `U<version>__…` (undo), `B<version>__…` (baseline
//! migration), `R__<description>.sql` (repeatable), `<event>[__<description>].sql` (SQL callback).
//! Unlike Flyway's default (`validateMigrationNaming=false`, which skips a bad name silently), a
//! `.sql` file whose name does not parse is an error.

use super::version::Version;

/// Flyway's SQL callback events (`Event.getId()`): a script named after one is a callback.
pub const CALLBACK_EVENTS: &[&str] = &[
    "beforeClean",
    "afterClean",
    "afterCleanError",
    "beforeMigrate",
    "beforeRepeatables",
    "beforeEachMigrate",
    "beforeEachMigrateStatement",
    "afterEachMigrateStatement",
    "afterEachMigrateStatementError",
    "afterEachMigrate",
    "afterEachMigrateError",
    "afterMigrate",
    "afterMigrateApplied",
    "afterVersioned",
    "afterMigrateError",
    "beforeUndo",
    "beforeEachUndo",
    "beforeEachUndoStatement",
    "afterEachUndoStatement",
    "afterEachUndoStatementError",
    "afterEachUndo",
    "afterEachUndoError",
    "afterUndo",
    "afterUndoError",
    "beforeValidate",
    "afterValidate",
    "afterValidateError",
    "beforeBaseline",
    "afterBaseline",
    "afterBaselineError",
    "beforeRepair",
    "afterRepair",
    "afterRepairError",
    "beforeInfo",
    "afterInfo",
    "afterInfoError",
    "createSchema",
    "beforeConnect",
];

/// What a script is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScriptKind {
    /// `V`: applied once, in version order.
    Versioned(Version),
    /// `U`: reverses the `V` script of the same version.
    Undo(Version),
    /// `B`: on an empty history, replaces the `V` scripts at or below its version.
    Baseline(Version),
    /// `R`: applied after the versioned ones, again whenever its checksum changes.
    Repeatable,
    /// Named after a callback event.
    Callback(&'static str),
}

/// A parsed script name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptName {
    /// Kind (with the version for versioned kinds).
    pub kind: ScriptKind,
    /// Description: the part after the first `__`, `_` read as a space.
    pub description: String,
}

/// The suffix every migration script has (matched without regard to case).
pub const SQL_SUFFIX: &str = ".sql";
const SEPARATOR: &str = "__";

/// Whether a file is a migration script at all (other files in a location are not read).
pub fn is_script(file_name: &str) -> bool {
    file_name.len() > SQL_SUFFIX.len()
        && file_name.is_char_boundary(file_name.len() - SQL_SUFFIX.len())
        && file_name[file_name.len() - SQL_SUFFIX.len()..].eq_ignore_ascii_case(SQL_SUFFIX)
}

enum Prefix {
    Versioned,
    Undo,
    Baseline,
    Repeatable,
    Callback(&'static str),
}

fn prefixes() -> Vec<(&'static str, Prefix)> {
    let mut all =
        vec![("V", Prefix::Versioned), ("U", Prefix::Undo), ("B", Prefix::Baseline), ("R", Prefix::Repeatable)];
    all.extend(CALLBACK_EVENTS.iter().map(|e| (*e, Prefix::Callback(e))));
    // Longest first, so `beforeEachMigrateStatement` is not read as `beforeEachMigrate`.
    all.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    all
}

/// Parses a script's file name (a name that [`is_script`]). The error is Flyway's message.
pub fn parse(file_name: &str) -> Result<ScriptName, String> {
    let stem = &file_name[..file_name.len() - SQL_SUFFIX.len()];
    let suffix = &file_name[file_name.len() - SQL_SUFFIX.len()..];
    let Some((prefix, kind)) = prefixes().into_iter().find(|(p, _)| stem.starts_with(p)) else {
        return Err(format!("Unrecognised migration name format: {file_name}"));
    };
    let rest = &stem[prefix.len()..];
    let (version, raw_description) = match rest.find(SEPARATOR) {
        Some(i) => (&rest[..i], &rest[i + SEPARATOR.len()..]),
        None => (rest, ""),
    };
    let example = if raw_description.is_empty() { "description" } else { raw_description };
    let description = raw_description.replace('_', " ");
    let versioned = |make: fn(Version) -> ScriptKind| {
        if version.is_empty() {
            return Err(format!(
                "Invalid versioned migration name format: {file_name} (It must contain a version and should look like this: {prefix}1.2{SEPARATOR}{example}{suffix})"
            ));
        }
        Version::parse(version).map(make).map_err(|_| {
            format!(
                "Invalid versioned migration name format: {file_name} (could not recognise version number {version})"
            )
        })
    };
    let unversioned = |kind: ScriptKind| {
        if version.is_empty() {
            Ok(kind)
        } else {
            Err(format!(
                "Invalid repeatable migration / callback name format: {file_name} (It cannot contain a version and should look like this: {prefix}{SEPARATOR}{example}{suffix})"
            ))
        }
    };
    let kind = match kind {
        Prefix::Versioned => versioned(ScriptKind::Versioned)?,
        Prefix::Undo => versioned(ScriptKind::Undo)?,
        Prefix::Baseline => versioned(ScriptKind::Baseline)?,
        Prefix::Repeatable => unversioned(ScriptKind::Repeatable)?,
        Prefix::Callback(event) => unversioned(ScriptKind::Callback(event))?,
    };
    Ok(ScriptName { kind, description })
}

/// `AbbreviationUtils.abbreviateDescription`: at most 200 characters, the last three `...`.
pub fn abbreviate_description(description: &str) -> String {
    if description.chars().count() <= 200 {
        return description.to_string();
    }
    let head: String = description.chars().take(197).collect();
    format!("{head}...")
}

/// `AbbreviationUtils.abbreviateScript`: at most 1000 characters; a longer path keeps its end,
/// `"..." + script.substring(3, 1000)` as Flyway writes it.
pub fn abbreviate_script(script: &str) -> String {
    if script.chars().count() <= 1000 {
        return script.to_string();
    }
    let tail: String = script.chars().skip(3).take(997).collect();
    format!("...{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(name: &str) -> ScriptKind {
        parse(name).unwrap().kind
    }

    #[test]
    fn flyway_names() {
        let n = parse("V1_2_3__add_table.sql").unwrap();
        assert_eq!(n.kind, ScriptKind::Versioned(Version::parse("1.2.3").unwrap()));
        assert_eq!(n.description, "add table");
        assert_eq!(parse("V1__my__desc.sql").unwrap().description, "my  desc");
        assert_eq!(parse("V1.sql").unwrap().description, "");
        assert!(matches!(kind("R__views.sql"), ScriptKind::Repeatable));
        assert!(matches!(kind("U3__drop.sql"), ScriptKind::Undo(_)));
        assert!(matches!(kind("B5__snapshot.sql"), ScriptKind::Baseline(_)));
        assert_eq!(kind("afterMigrate.sql"), ScriptKind::Callback("afterMigrate"));
        assert_eq!(kind("afterMigrate__grants.sql"), ScriptKind::Callback("afterMigrate"));
        assert_eq!(kind("beforeEachMigrateStatement.sql"), ScriptKind::Callback("beforeEachMigrateStatement"));
        assert!(matches!(kind("V2__x.SQL"), ScriptKind::Versioned(_)));
    }

    #[test]
    fn bad_names_are_errors_with_flyway_messages() {
        assert_eq!(parse("init.sql").unwrap_err(), "Unrecognised migration name format: init.sql");
        assert_eq!(parse("v1__lower.sql").unwrap_err(), "Unrecognised migration name format: v1__lower.sql");
        assert_eq!(
            parse("V1_init.sql").unwrap_err(),
            "Invalid versioned migration name format: V1_init.sql (could not recognise version number 1_init)"
        );
        assert_eq!(
            parse("V__x.sql").unwrap_err(),
            "Invalid versioned migration name format: V__x.sql (It must contain a version and should look like this: V1.2__x.sql)"
        );
        assert_eq!(
            parse("R1__x.sql").unwrap_err(),
            "Invalid repeatable migration / callback name format: R1__x.sql (It cannot contain a version and should look like this: R__x.sql)"
        );
        assert!(parse("Vx__y.sql").is_err());
    }

    #[test]
    fn only_sql_files_are_scripts() {
        assert!(is_script("V1__a.sql") && is_script("V1__a.SQL"));
        assert!(!is_script("V1__a.sql.conf") && !is_script("README.md") && !is_script(".sql"));
    }

    #[test]
    fn abbreviations() {
        let long = "d".repeat(250);
        let a = abbreviate_description(&long);
        assert_eq!(a.len(), 200);
        assert!(a.ends_with("..."));
        assert_eq!(abbreviate_description("short"), "short");
        let path = format!("abcdef/{}", "x".repeat(1200));
        let s = abbreviate_script(&path);
        assert_eq!(s.chars().count(), 1000);
        assert!(s.starts_with("...def/"));
    }
}
