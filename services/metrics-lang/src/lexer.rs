//! The one tokenizer behind both small languages of the analyzer: measurement conditions
//! (`result[0] < 0.01 && default(result, 0) >= 0`) and scrape expressions
//! (`rate(requests_total{class="5xx"}) / rate(requests_total)`).

/// A token with the byte offset it starts at (for error messages).
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    /// What it is.
    pub kind: Tok,
    /// Byte offset in the source.
    pub at: usize,
}

/// Token kinds.
#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    /// A number literal.
    Num(f64),
    /// A name: letters, digits, `_`, `:` (metric names have colons).
    Ident(String),
    /// A string literal in double or single quotes.
    Str(String),
    /// Punctuation or an operator.
    Op(&'static str),
    /// End of input.
    End,
}

const OPERATORS: [&str; 23] = [
    "==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "+", "-", "*", "/", "%", "(", ")", "[", "]", "{", "}", ",", ".",
    "=",
];

/// Splits `source` into tokens; the last one is [`Tok::End`].
pub fn tokenize(source: &str) -> Result<Vec<Token>, String> {
    let bytes = source.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c.is_ascii_digit() || (c == '.' && bytes.get(i + 1).is_some_and(|b| b.is_ascii_digit())) {
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                i += 1;
            }
            if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
                let mut j = i + 1;
                if j < bytes.len() && (bytes[j] == b'+' || bytes[j] == b'-') {
                    j += 1;
                }
                if j < bytes.len() && bytes[j].is_ascii_digit() {
                    i = j;
                    while i < bytes.len() && bytes[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            }
            let text = &source[start..i];
            let value = text.parse::<f64>().map_err(|_| format!("bad number {text:?} at {start}"))?;
            tokens.push(Token { kind: Tok::Num(value), at: start });
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':') {
                i += 1;
            }
            tokens.push(Token { kind: Tok::Ident(source[start..i].to_string()), at: start });
            continue;
        }
        if c == '"' || c == '\'' {
            let mut text = String::new();
            i += 1;
            loop {
                match source[i..].chars().next() {
                    None => return Err(format!("unterminated string starting at {start}")),
                    Some(ch) if ch == c => {
                        i += 1;
                        break;
                    }
                    Some('\\') => {
                        let escaped = source[i + 1..].chars().next().ok_or("unterminated escape")?;
                        text.push(match escaped {
                            'n' => '\n',
                            't' => '\t',
                            other => other,
                        });
                        i += 1 + escaped.len_utf8();
                    }
                    Some(ch) => {
                        text.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            tokens.push(Token { kind: Tok::Str(text), at: start });
            continue;
        }
        let rest = &source[i..];
        // Word forms of the logical operators, as expr-lang accepts them, are mapped by the parser.
        match OPERATORS.iter().find(|op| rest.starts_with(**op)) {
            Some(op) => {
                tokens.push(Token { kind: Tok::Op(op), at: start });
                i += op.len();
            }
            None => return Err(format!("unexpected {:?} at {start}", rest.chars().next().unwrap_or(c))),
        }
    }
    tokens.push(Token { kind: Tok::End, at: source.len() });
    Ok(tokens)
}

/// Longest source either language accepts.
pub const MAX_SOURCE_BYTES: usize = 8192;
/// How deep an expression may nest (each parenthesis, operand of a chain, `!`, `-`, index or
/// call counts): the parsers and evaluators recurse, and a hostile `((((…` must be an error, not
/// a stack overflow.
pub const MAX_NESTING: usize = 100;

/// A cursor over tokens with the helpers both parsers need.
pub struct Cursor {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
}

impl Cursor {
    /// Tokenizes `source`.
    pub fn new(source: &str) -> Result<Cursor, String> {
        if source.len() > MAX_SOURCE_BYTES {
            return Err(format!("{} bytes long; at most {MAX_SOURCE_BYTES} are allowed", source.len()));
        }
        Ok(Cursor { tokens: tokenize(source)?, pos: 0, depth: 0 })
    }

    /// Runs `parse` one level deeper; the depth it reaches inside (through [`Cursor::deeper`])
    /// is given back when it returns.
    pub fn nested<T>(&mut self, parse: impl FnOnce(&mut Cursor) -> Result<T, String>) -> Result<T, String> {
        let depth = self.depth;
        let result = self.deeper().and_then(|()| parse(self));
        self.depth = depth;
        result
    }

    /// One more level (a node whose subtree grows: an operand added to a chain, a postfix).
    pub fn deeper(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(format!("nested more than {MAX_NESTING} levels deep (at {})", self.at()));
        }
        Ok(())
    }

    /// The next token, not consumed.
    pub fn peek(&self) -> &Tok {
        &self.tokens[self.pos].kind
    }

    /// Offset of the next token.
    pub fn at(&self) -> usize {
        self.tokens[self.pos].at
    }

    /// Consumes and returns the next token (the end stays the end).
    pub fn advance(&mut self) -> Tok {
        let t = self.tokens[self.pos].kind.clone();
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
        t
    }

    /// Consumes `op` when it comes next.
    pub fn eat(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Tok::Op(o) if *o == op) {
            self.advance();
            true
        } else {
            false
        }
    }

    /// Requires `op` next.
    pub fn expect(&mut self, op: &str) -> Result<(), String> {
        if self.eat(op) {
            Ok(())
        } else {
            Err(format!("expected {op:?} at {}, found {}", self.at(), describe(self.peek())))
        }
    }

    /// Requires the end of input.
    pub fn expect_end(&self) -> Result<(), String> {
        match self.peek() {
            Tok::End => Ok(()),
            other => Err(format!("unexpected {} at {}", describe(other), self.at())),
        }
    }
}

/// A token as a user would name it.
pub fn describe(t: &Tok) -> String {
    match t {
        Tok::Num(n) => format!("number {n}"),
        Tok::Ident(s) => format!("{s:?}"),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Op(o) => format!("{o:?}"),
        Tok::End => "end of input".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_of_both_languages() {
        let kinds: Vec<Tok> =
            tokenize(r#"rate(a:b_total{x="5xx"}) >= 1e-3 && !ok"#).unwrap().into_iter().map(|t| t.kind).collect();
        assert_eq!(
            kinds,
            vec![
                Tok::Ident("rate".into()),
                Tok::Op("("),
                Tok::Ident("a:b_total".into()),
                Tok::Op("{"),
                Tok::Ident("x".into()),
                Tok::Op("="),
                Tok::Str("5xx".into()),
                Tok::Op("}"),
                Tok::Op(")"),
                Tok::Op(">="),
                Tok::Num(1e-3),
                Tok::Op("&&"),
                Tok::Op("!"),
                Tok::Ident("ok".into()),
                Tok::End,
            ]
        );
    }

    #[test]
    fn errors_say_where() {
        assert_eq!(tokenize("result @ 1").unwrap_err(), "unexpected '@' at 7");
        assert!(tokenize("'open").unwrap_err().contains("unterminated"));
    }
}
