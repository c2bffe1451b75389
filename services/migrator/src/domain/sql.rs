//! A PostgreSQL script split into statements, the way PostgreSQL's own lexer sees them: `--` and
//! nested `/* */` comments, `'…'` and `E'…'` strings, `"…"` identifiers, `$tag$…$tag$` bodies,
//! `BEGIN ATOMIC … END` function bodies and the data of `COPY … FROM STDIN`. Each statement is
//! classified: most run inside a transaction; some cannot (`CREATE INDEX CONCURRENTLY`, ...);
//! transaction control (`COMMIT`, ...) would end the migration's own transaction.

use std::time::Duration;

/// How a statement may run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatementKind {
    /// Inside a transaction.
    Transactional,
    /// Only outside a transaction block; the text says which command.
    NonTransactional(String),
    /// `BEGIN`, `COMMIT`, `ROLLBACK`, ...: ends or starts a transaction itself.
    TransactionControl(String),
}

/// One statement of a script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// Text as written, up to and including its `;` when it has one.
    pub text: String,
    /// 1-based line where it starts.
    pub line: usize,
    /// Classification.
    pub kind: StatementKind,
    /// For `COPY … FROM STDIN`: the data lines that follow it, without the `\.` line.
    pub copy_data: Option<String>,
}

/// Per-script settings given as `-- hopngo:name=value` comment lines (comments, so Flyway runs
/// the same file unchanged; the checksum covers them like any other line).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directives {
    /// `SET LOCAL lock_timeout` for the migration.
    pub lock_timeout: Option<Duration>,
    /// `SET LOCAL statement_timeout` for the migration.
    pub statement_timeout: Option<Duration>,
}

/// Reads the `-- hopngo:` directives of a script.
pub fn directives(text: &str) -> Result<Directives, String> {
    let mut d = Directives::default();
    for (i, line) in text.lines().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("-- hopngo:") else { continue };
        let (name, value) = rest
            .split_once('=')
            .ok_or_else(|| format!("line {}: directive {:?} is not name=value", i + 1, rest.trim()))?;
        let value = value.trim();
        let parse =
            || hopngo_kit::args::parse_duration(value).map_err(|e| format!("line {}: {}: {e}", i + 1, name.trim()));
        match name.trim() {
            "lockTimeout" => d.lock_timeout = Some(parse()?),
            "statementTimeout" => d.statement_timeout = Some(parse()?),
            other => {
                return Err(format!(
                    "line {}: unknown directive hopngo:{other} (known: lockTimeout, statementTimeout)",
                    i + 1
                ));
            }
        }
    }
    Ok(d)
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// Upper-cased leading words of a statement (comments and quoted text skipped), at most `n`.
fn leading_words(text: &str, n: usize) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if words.len() >= n {
            break;
        }
        match c {
            '-' if text[i..].starts_with("--") => {
                for (_, c) in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if text[i..].starts_with("/*") => {
                let end = text[i + 2..].find("*/").map(|e| i + 2 + e + 2).unwrap_or(text.len());
                while chars.peek().is_some_and(|(j, _)| *j < end) {
                    chars.next();
                }
            }
            c if is_ident_start(c) => {
                let mut end = i + c.len_utf8();
                while let Some((j, c)) = chars.peek().copied() {
                    if !is_ident_char(c) {
                        break;
                    }
                    end = j + c.len_utf8();
                    chars.next();
                }
                words.push(text[i..end].to_uppercase());
            }
            c if c.is_whitespace() => {}
            // Punctuation or a quote: the leading keywords are over.
            _ => break,
        }
    }
    words
}

fn classify(text: &str) -> StatementKind {
    let w = leading_words(text, 8);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    let non_tx = |what: &str| StatementKind::NonTransactional(what.to_string());
    match w.as_slice() {
        ["CREATE", "DATABASE", ..] => non_tx("CREATE DATABASE"),
        ["DROP", "DATABASE", ..] => non_tx("DROP DATABASE"),
        ["CREATE", "TABLESPACE", ..] => non_tx("CREATE TABLESPACE"),
        ["DROP", "TABLESPACE", ..] => non_tx("DROP TABLESPACE"),
        ["CREATE", "SUBSCRIPTION", ..] => non_tx("CREATE SUBSCRIPTION"),
        ["ALTER", "SYSTEM", ..] => non_tx("ALTER SYSTEM"),
        ["CREATE", "INDEX", "CONCURRENTLY", ..] | ["CREATE", "UNIQUE", "INDEX", "CONCURRENTLY", ..] => {
            non_tx("CREATE INDEX CONCURRENTLY")
        }
        ["DROP", "INDEX", "CONCURRENTLY", ..] => non_tx("DROP INDEX CONCURRENTLY"),
        ["REINDEX", rest @ ..] if rest.contains(&"CONCURRENTLY") => non_tx("REINDEX CONCURRENTLY"),
        ["REINDEX", "SCHEMA" | "DATABASE" | "SYSTEM", ..]
        | ["REINDEX", "VERBOSE", "SCHEMA" | "DATABASE" | "SYSTEM", ..] => non_tx("REINDEX SCHEMA/DATABASE/SYSTEM"),
        ["VACUUM", ..] => non_tx("VACUUM"),
        ["DISCARD", "ALL", ..] => non_tx("DISCARD ALL"),
        ["BEGIN", ..]
        | ["START", "TRANSACTION", ..]
        | ["COMMIT", ..]
        | ["END", ..]
        | ["ROLLBACK", ..]
        | ["ABORT", ..] => StatementKind::TransactionControl(w[0].to_string()),
        ["PREPARE", "TRANSACTION", ..] => StatementKind::TransactionControl("PREPARE TRANSACTION".into()),
        _ => StatementKind::Transactional,
    }
}

fn is_copy_from_stdin(text: &str) -> bool {
    let w = leading_words(text, 1);
    if w.first().map(String::as_str) != Some("COPY") {
        return false;
    }
    let upper = text.to_uppercase();
    upper.split_whitespace().collect::<Vec<_>>().windows(2).any(|p| p[0] == "FROM" && p[1].starts_with("STDIN"))
}

/// Splits a script into statements; an unterminated string, comment or body is an error naming
/// the line where it starts.
pub fn split(text: &str) -> Result<Vec<Statement>, String> {
    let mut statements: Vec<Statement> = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut line = 1;
    // Byte offset and line where the statement being read starts.
    let mut start: Option<(usize, usize)> = None;
    // Inside `BEGIN ATOMIC`: depth of CASE … END and the body's own END.
    let mut atomic_depth = 0usize;
    // Parentheses: psql does not split inside them either (`CREATE RULE … DO ALSO (a; b)`).
    let mut parens = 0usize;
    let mut prev_word = String::new();
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let open_line = line;
                let mut depth = 0;
                loop {
                    if i >= bytes.len() {
                        return Err(format!("line {open_line}: comment /* is not closed"));
                    }
                    if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        if bytes[i] == b'\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                }
            }
            b'\'' | b'"' => {
                start.get_or_insert((i, line));
                let quote = c;
                // E'…' strings take backslash escapes (E not part of a longer word).
                let escapes = quote == b'\''
                    && i > 0
                    && matches!(bytes[i - 1], b'E' | b'e')
                    && (i < 2 || !(bytes[i - 2].is_ascii_alphanumeric() || bytes[i - 2] == b'_'));
                let open_line = line;
                i += 1;
                loop {
                    let Some(&b) = bytes.get(i) else {
                        let what = if quote == b'"' { "quoted identifier" } else { "string" };
                        return Err(format!("line {open_line}: {what} is not closed"));
                    };
                    if b == b'\n' {
                        line += 1;
                    }
                    if escapes && b == b'\\' {
                        if bytes.get(i + 1) == Some(&b'\n') {
                            line += 1;
                        }
                        i += 2;
                        continue;
                    }
                    i += 1;
                    if b == quote {
                        if bytes.get(i) == Some(&quote) {
                            i += 1;
                            continue;
                        }
                        break;
                    }
                }
                prev_word.clear();
            }
            b'$' => {
                start.get_or_insert((i, line));
                // $tag$ … $tag$ (tag: identifier characters, not starting with a digit); `$1` is
                // a parameter and `a$b` part of a name.
                let tag_len = text[i + 1..].find(|ch: char| !(ch.is_alphanumeric() || ch == '_')).unwrap_or(0);
                let tag_ok = bytes.get(i + 1 + tag_len) == Some(&b'$')
                    && !text[i + 1..].starts_with(|ch: char| ch.is_ascii_digit())
                    && !text[..i].ends_with(is_ident_char);
                if tag_ok {
                    let tag = &text[i..i + tag_len + 2];
                    let body_start = i + tag.len();
                    let Some(close) = text[body_start..].find(tag) else {
                        return Err(format!("line {line}: dollar-quoted body {tag} is not closed"));
                    };
                    let end = body_start + close + tag.len();
                    line += text[i..end].matches('\n').count();
                    i = end;
                } else {
                    i += 1;
                }
                prev_word.clear();
            }
            b'(' => {
                start.get_or_insert((i, line));
                parens += 1;
                i += 1;
            }
            b')' => {
                parens = parens.saturating_sub(1);
                i += 1;
            }
            b';' if atomic_depth == 0 && parens == 0 => {
                let (s, l) = start.take().unwrap_or((i, line));
                i += 1;
                prev_word.clear();
                let body = &text[s..i];
                if leading_words(body, 1).is_empty()
                    && body.trim_matches(|c: char| c == ';' || c.is_whitespace()).is_empty()
                {
                    continue;
                }
                let mut statement =
                    Statement { text: body.to_string(), line: l, kind: classify(body), copy_data: None };
                if is_copy_from_stdin(body) {
                    // The data starts on the next line and ends at a line `\.`.
                    let data_start = text[i..].find('\n').map(|n| i + n + 1).unwrap_or(text.len());
                    let mut at = data_start;
                    let data_end = loop {
                        if at >= text.len() {
                            return Err(format!(
                                "line {l}: the data of COPY … FROM STDIN does not end with a line \\."
                            ));
                        }
                        let line_end = text[at..].find('\n').map(|n| at + n).unwrap_or(text.len());
                        if text[at..line_end].trim_end_matches('\r') == "\\." {
                            break (at, line_end);
                        }
                        at = line_end + 1;
                    };
                    statement.copy_data = Some(text[data_start..data_end.0].to_string());
                    line += text[i..data_end.1].matches('\n').count();
                    i = data_end.1;
                }
                statements.push(statement);
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or(' ');
                if is_ident_start(ch) {
                    start.get_or_insert((i, line));
                    let e = text[i..].find(|n: char| !is_ident_char(n)).map(|n| i + n).unwrap_or(text.len());
                    let word = text[i..e].to_uppercase();
                    if atomic_depth == 0 && prev_word == "BEGIN" && word == "ATOMIC" {
                        atomic_depth = 1;
                    } else if atomic_depth > 0 && word == "CASE" {
                        atomic_depth += 1;
                    } else if atomic_depth > 0 && word == "END" {
                        atomic_depth -= 1;
                    }
                    prev_word = word;
                    i = e;
                } else {
                    if !ch.is_whitespace() {
                        start.get_or_insert((i, line));
                    }
                    i += ch.len_utf8();
                }
            }
        }
    }
    if atomic_depth > 0 {
        let l = start.map(|(_, l)| l).unwrap_or(line);
        return Err(format!("line {l}: BEGIN ATOMIC body has no matching END"));
    }
    if let Some((s, l)) = start {
        let body = &text[s..];
        statements.push(Statement { text: body.to_string(), line: l, kind: classify(body), copy_data: None });
    }
    Ok(statements)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<StatementKind> {
        split(text).unwrap().into_iter().map(|s| s.kind).collect()
    }

    #[test]
    fn splits_on_semicolons_outside_quotes_comments_and_bodies() {
        let script = "-- a comment; with a semicolon\nCREATE TABLE t (a text DEFAULT ';');\n/* block; /* nested; */ still; */\nINSERT INTO t VALUES (E'it\\'s;'), ('a''b;');\nCREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;\nDO $$ BEGIN PERFORM 1; END $$;\nCREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; SELECT 2; END;\nSELECT \"odd;name\" FROM t\n";
        let statements = split(script).unwrap();
        let lines: Vec<usize> = statements.iter().map(|s| s.line).collect();
        assert_eq!(lines, vec![2, 4, 5, 6, 7, 8], "{statements:#?}");
        assert!(statements[0].text.starts_with("CREATE TABLE"));
        assert!(statements[4].text.ends_with("END;"));
        assert_eq!(statements[5].text, "SELECT \"odd;name\" FROM t\n");
    }

    #[test]
    fn classifies_non_transactional_and_transaction_control() {
        assert_eq!(
            kinds("CREATE INDEX CONCURRENTLY i ON t (a); create unique index concurrently j on t (b);"),
            vec![
                StatementKind::NonTransactional("CREATE INDEX CONCURRENTLY".into()),
                StatementKind::NonTransactional("CREATE INDEX CONCURRENTLY".into())
            ]
        );
        assert_eq!(kinds("VACUUM t;")[0], StatementKind::NonTransactional("VACUUM".into()));
        assert_eq!(kinds("/* x */ ALTER SYSTEM SET a = 1;")[0], StatementKind::NonTransactional("ALTER SYSTEM".into()));
        assert_eq!(
            kinds("REINDEX TABLE CONCURRENTLY t;")[0],
            StatementKind::NonTransactional("REINDEX CONCURRENTLY".into())
        );
        assert_eq!(kinds("CREATE INDEX i ON t (a);")[0], StatementKind::Transactional);
        assert_eq!(kinds("COMMIT;")[0], StatementKind::TransactionControl("COMMIT".into()));
        assert_eq!(kinds("begin;")[0], StatementKind::TransactionControl("BEGIN".into()));
        assert_eq!(kinds("DO $$ BEGIN COMMIT; END $$;")[0], StatementKind::Transactional);
    }

    #[test]
    fn copy_from_stdin_carries_its_data() {
        let script = "COPY t (a, b) FROM stdin;\n1\tx;y\n2\t'z\n\\.\nSELECT 1;\n";
        let statements = split(script).unwrap();
        assert_eq!(statements.len(), 2);
        assert_eq!(statements[0].copy_data.as_deref(), Some("1\tx;y\n2\t'z\n"));
        assert_eq!(statements[1].line, 5);
        assert!(split("COPY t FROM STDIN;\n1\n").unwrap_err().contains("does not end"));
    }

    #[test]
    fn unterminated_text_is_an_error_with_its_line() {
        assert_eq!(split("SELECT 1;\nSELECT 'abc;\n").unwrap_err(), "line 2: string is not closed");
        assert_eq!(split("\n\nSELECT $x$ abc").unwrap_err(), "line 3: dollar-quoted body $x$ is not closed");
        assert_eq!(split("/* open").unwrap_err(), "line 1: comment /* is not closed");
        assert!(split("SELECT $1, a$b FROM t;").is_ok());
        let rule =
            split("CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); DELETE FROM b);\nSELECT 1;")
                .unwrap();
        assert_eq!(rule.len(), 2);
    }

    #[test]
    fn empty_and_comment_only_scripts_have_no_statements() {
        assert!(split("").unwrap().is_empty());
        assert!(split("-- nothing\n/* here */\n;;\n").unwrap().is_empty());
    }

    #[test]
    fn directive_comments() {
        let d =
            directives("-- hopngo:lockTimeout=5s\n-- hopngo:statementTimeout = 10m\nALTER TABLE t ADD c int;").unwrap();
        assert_eq!(d.lock_timeout, Some(Duration::from_secs(5)));
        assert_eq!(d.statement_timeout, Some(Duration::from_secs(600)));
        assert!(directives("-- hopngo:lockTimeot=5s").unwrap_err().contains("unknown directive"));
        assert!(directives("-- hopngo:lockTimeout=soon").unwrap_err().contains("line 1"));
    }
}
