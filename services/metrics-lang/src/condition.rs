//! Measurement conditions: a small expression language over `result`, in the expr-lang/CEL style
//! Argo Rollouts users write (`result[0] >= 0.95`, `default(result, 0) < 0.05`,
//! `result.status == "ok" and len(result.items) > 0`).
//!
//! A one-element list compares, adds and tests like its element, so `result < 0.01` works on a
//! Prometheus vector of one series as well as on a scalar.

use std::collections::BTreeMap;

use super::lexer::{Cursor, Tok, describe};

/// A value a provider measured, or one computed from it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// JSON null, or nothing.
    Null,
    /// true / false.
    Bool(bool),
    /// A number (NaN and infinities allowed).
    Num(f64),
    /// Text.
    Str(String),
    /// A list (a Prometheus vector, a range of samples, a JSON array).
    List(Vec<Value>),
    /// A JSON object.
    Map(BTreeMap<String, Value>),
}

impl Value {
    /// From JSON.
    pub fn from_json(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => Value::Num(n.as_f64().unwrap_or(f64::NAN)),
            serde_json::Value::String(s) => Value::Str(s.clone()),
            serde_json::Value::Array(a) => Value::List(a.iter().map(Value::from_json).collect()),
            serde_json::Value::Object(o) => {
                Value::Map(o.iter().map(|(k, v)| (k.clone(), Value::from_json(v))).collect())
            }
        }
    }

    /// True when the value carries no data: null, NaN, an empty list, or a list of those.
    pub fn is_no_data(&self) -> bool {
        match self {
            Value::Null => true,
            Value::Num(n) => n.is_nan(),
            Value::List(items) => items.iter().all(Value::is_no_data),
            _ => false,
        }
    }

    /// The text stored as a measurement's value.
    pub fn render(&self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Bool(b) => b.to_string(),
            Value::Num(n) => format_number(*n),
            Value::Str(s) => s.clone(),
            Value::List(items) => format!("[{}]", items.iter().map(Value::render).collect::<Vec<_>>().join(",")),
            Value::Map(_) => serde_json::to_string(&self.to_json()).unwrap_or_default(),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => (*b).into(),
            Value::Num(n) => {
                serde_json::Number::from_f64(*n).map(Into::into).unwrap_or_else(|| format_number(*n).into())
            }
            Value::Str(s) => s.clone().into(),
            Value::List(items) => items.iter().map(Value::to_json).collect::<Vec<_>>().into(),
            Value::Map(m) => m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect::<serde_json::Map<_, _>>().into(),
        }
    }

    fn kind(&self) -> String {
        match self {
            Value::Null => "null".into(),
            Value::Bool(_) => "a boolean".into(),
            Value::Num(_) => "a number".into(),
            Value::Str(_) => "a string".into(),
            Value::List(items) => format!("a list of {}", items.len()),
            Value::Map(_) => "an object".into(),
        }
    }

    /// A one-element list stands for its element.
    fn scalar(&self) -> &Value {
        match self {
            Value::List(items) if items.len() == 1 => items[0].scalar(),
            other => other,
        }
    }
}

/// Numbers as Prometheus prints them (`NaN`, `+Inf`), otherwise shortest round-trip form.
pub fn format_number(n: f64) -> String {
    if n.is_nan() {
        "NaN".into()
    } else if n.is_infinite() {
        if n > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{n}")
    }
}

/// One comparison of `result` with a number in a condition, read as `result OP value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    /// `<`, `<=`, `>`, `>=`, `==` or `!=`.
    pub op: &'static str,
    /// The number compared with.
    pub value: f64,
}

fn collect_thresholds(expr: &Expr, out: &mut Vec<Threshold>) {
    let Expr::Bin(op, left, right) = expr else { return };
    if matches!(op, BinOp::And | BinOp::Or) {
        collect_thresholds(left, out);
        collect_thresholds(right, out);
        return;
    }
    let number = |e: &Expr| match e {
        Expr::Lit(Value::Num(n)) => Some(*n),
        Expr::Neg(inner) => match inner.as_ref() {
            Expr::Lit(Value::Num(n)) => Some(-n),
            _ => None,
        },
        _ => None,
    };
    // `0.95 <= result` is `result >= 0.95`.
    let (op, value) = if is_result(left) {
        (*op, number(right))
    } else if is_result(right) {
        (mirrored(*op), number(left))
    } else {
        return;
    };
    let op = match op {
        BinOp::Lt => "<",
        BinOp::Le => "<=",
        BinOp::Gt => ">",
        BinOp::Ge => ">=",
        BinOp::Eq => "==",
        BinOp::Ne => "!=",
        _ => return,
    };
    if let Some(value) = value.filter(|v| v.is_finite()) {
        out.push(Threshold { op, value });
    }
}

/// `result`, its first sample (`result[0]`, Argo's form) or either as a number.
fn is_result(e: &Expr) -> bool {
    match e {
        Expr::Result => true,
        Expr::Index(inner, _) => matches!(inner.as_ref(), Expr::Result),
        Expr::Call(Func::AsFloat | Func::AsInt, args) => args.first().is_some_and(is_result),
        _ => false,
    }
}

fn mirrored(op: BinOp) -> BinOp {
    match op {
        BinOp::Lt => BinOp::Gt,
        BinOp::Le => BinOp::Ge,
        BinOp::Gt => BinOp::Lt,
        BinOp::Ge => BinOp::Le,
        other => other,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Func {
    Default,
    Len,
    IsNaN,
    IsInf,
    Abs,
    Min,
    Max,
    Sum,
    Avg,
    AsFloat,
    AsInt,
}

const FUNCTIONS: [(&str, Func, usize); 11] = [
    ("default", Func::Default, 2),
    ("len", Func::Len, 1),
    ("isNaN", Func::IsNaN, 1),
    ("isInf", Func::IsInf, 1),
    ("abs", Func::Abs, 1),
    ("min", Func::Min, 1),
    ("max", Func::Max, 1),
    ("sum", Func::Sum, 1),
    ("avg", Func::Avg, 1),
    ("asFloat", Func::AsFloat, 1),
    ("asInt", Func::AsInt, 1),
];

#[derive(Clone, Debug, PartialEq)]
enum Expr {
    Lit(Value),
    Result,
    Index(Box<Expr>, Box<Expr>),
    Field(Box<Expr>, String),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
    Call(Func, Vec<Expr>),
}

/// A parsed condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    source: String,
    expr: Expr,
}

impl Condition {
    /// Parses `source`; the error says what is wrong and where.
    pub fn parse(source: &str) -> Result<Condition, String> {
        let mut c = Cursor::new(source)?;
        if matches!(c.peek(), Tok::End) {
            return Err("empty condition".into());
        }
        let expr = parse_binary(&mut c, 0)?;
        c.expect_end()?;
        Ok(Condition { source: source.to_string(), expr })
    }

    /// The text it was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The numbers `result` is compared with (`result < 0.01`, `0.95 <= result`, each side of
    /// an `&&` or `||`), as `result OP number`: what a chart draws as threshold lines. A
    /// comparison of anything else with `result` (`len(result) > 0`) has no line.
    pub fn thresholds(&self) -> Vec<Threshold> {
        let mut out = Vec::new();
        collect_thresholds(&self.expr, &mut out);
        out
    }

    /// Evaluates to true or false with `result` bound; anything else is an error.
    pub fn eval(&self, result: &Value) -> Result<bool, String> {
        match eval(&self.expr, result)?.scalar() {
            Value::Bool(b) => Ok(*b),
            other => Err(format!("condition {:?} gave {}, not true or false", self.source, other.kind())),
        }
    }
}

fn binary_op(t: &Tok) -> Option<(BinOp, u8)> {
    let op = match t {
        Tok::Op("||") => BinOp::Or,
        Tok::Ident(w) if w == "or" => BinOp::Or,
        Tok::Op("&&") => BinOp::And,
        Tok::Ident(w) if w == "and" => BinOp::And,
        Tok::Op("==") => BinOp::Eq,
        Tok::Op("!=") => BinOp::Ne,
        Tok::Op("<") => BinOp::Lt,
        Tok::Op("<=") => BinOp::Le,
        Tok::Op(">") => BinOp::Gt,
        Tok::Op(">=") => BinOp::Ge,
        Tok::Op("+") => BinOp::Add,
        Tok::Op("-") => BinOp::Sub,
        Tok::Op("*") => BinOp::Mul,
        Tok::Op("/") => BinOp::Div,
        Tok::Op("%") => BinOp::Rem,
        _ => return None,
    };
    let precedence = match op {
        BinOp::Or => 1,
        BinOp::And => 2,
        BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 3,
        BinOp::Add | BinOp::Sub => 4,
        BinOp::Mul | BinOp::Div | BinOp::Rem => 5,
    };
    Some((op, precedence))
}

fn parse_binary(c: &mut Cursor, min: u8) -> Result<Expr, String> {
    c.nested(|c| parse_binary_here(c, min))
}

fn parse_binary_here(c: &mut Cursor, min: u8) -> Result<Expr, String> {
    let mut left = parse_unary(c)?;
    while let Some((op, precedence)) = binary_op(c.peek()) {
        if precedence <= min {
            break;
        }
        c.advance();
        c.deeper()?;
        // Comparisons do not chain (`a < b < c` is a mistake, not a range test).
        let right = parse_binary(c, if precedence == 3 { precedence + 1 } else { precedence })?;
        left = Expr::Bin(op, Box::new(left), Box::new(right));
        if precedence == 3
            && let Some((_, 3)) = binary_op(c.peek())
        {
            return Err(format!("comparisons do not chain (at {})", c.at()));
        }
    }
    Ok(left)
}

fn parse_unary(c: &mut Cursor) -> Result<Expr, String> {
    c.nested(parse_unary_here)
}

fn parse_unary_here(c: &mut Cursor) -> Result<Expr, String> {
    if c.eat("!")
        || matches!(c.peek(), Tok::Ident(w) if w == "not") && {
            c.advance();
            true
        }
    {
        return Ok(Expr::Not(Box::new(parse_unary(c)?)));
    }
    if c.eat("-") {
        return Ok(Expr::Neg(Box::new(parse_unary(c)?)));
    }
    let mut e = parse_primary(c)?;
    loop {
        if matches!(c.peek(), Tok::Op("[" | ".")) {
            c.deeper()?;
        }
        if c.eat("[") {
            let index = parse_binary(c, 0)?;
            c.expect("]")?;
            e = Expr::Index(Box::new(e), Box::new(index));
        } else if c.eat(".") {
            match c.advance() {
                Tok::Ident(name) => e = Expr::Field(Box::new(e), name),
                other => return Err(format!("expected a field name after '.', found {}", describe(&other))),
            }
        } else {
            return Ok(e);
        }
    }
}

fn parse_primary(c: &mut Cursor) -> Result<Expr, String> {
    let at = c.at();
    match c.advance() {
        Tok::Num(n) => Ok(Expr::Lit(Value::Num(n))),
        Tok::Str(s) => Ok(Expr::Lit(Value::Str(s))),
        Tok::Op("(") => {
            let e = parse_binary(c, 0)?;
            c.expect(")")?;
            Ok(e)
        }
        Tok::Ident(name) => match name.as_str() {
            "result" => Ok(Expr::Result),
            "true" => Ok(Expr::Lit(Value::Bool(true))),
            "false" => Ok(Expr::Lit(Value::Bool(false))),
            "nil" | "null" => Ok(Expr::Lit(Value::Null)),
            "NaN" => Ok(Expr::Lit(Value::Num(f64::NAN))),
            "Inf" => Ok(Expr::Lit(Value::Num(f64::INFINITY))),
            _ => {
                let Some((_, func, arity)) = FUNCTIONS.iter().find(|(n, _, _)| *n == name) else {
                    return Err(format!(
                        "unknown name {name:?} at {at} (conditions see `result` and the functions {})",
                        FUNCTIONS.iter().map(|f| f.0).collect::<Vec<_>>().join(", ")
                    ));
                };
                c.expect("(")?;
                let mut args = Vec::new();
                if !c.eat(")") {
                    loop {
                        args.push(parse_binary(c, 0)?);
                        if c.eat(")") {
                            break;
                        }
                        c.expect(",")?;
                    }
                }
                if args.len() != *arity {
                    return Err(format!("{name} takes {arity} argument(s), got {}", args.len()));
                }
                Ok(Expr::Call(*func, args))
            }
        },
        other => Err(format!("unexpected {} at {at}", describe(&other))),
    }
}

fn num(v: &Value, what: &str) -> Result<f64, String> {
    match v.scalar() {
        Value::Num(n) => Ok(*n),
        other => Err(format!("{what} needs a number, got {}", other.kind())),
    }
}

fn numbers(v: &Value, what: &str) -> Result<Vec<f64>, String> {
    match v {
        Value::List(items) => items.iter().map(|i| num(i, what)).collect(),
        other => Ok(vec![num(other, what)?]),
    }
}

fn eval(e: &Expr, result: &Value) -> Result<Value, String> {
    Ok(match e {
        Expr::Lit(v) => v.clone(),
        Expr::Result => result.clone(),
        Expr::Index(base, index) => {
            let base = eval(base, result)?;
            let index = eval(index, result)?;
            match (&base, index.scalar()) {
                (Value::List(items), Value::Num(i)) => {
                    let n = items.len() as f64;
                    let i = if *i < 0.0 { n + i } else { *i };
                    if i.fract() != 0.0 || i < 0.0 || i >= n {
                        return Err(format!("index {i} is out of range for {}", base.kind()));
                    }
                    items[i as usize].clone()
                }
                (Value::Map(m), Value::Str(k)) => m.get(k).cloned().unwrap_or(Value::Null),
                (b, i) => return Err(format!("cannot index {} with {}", b.kind(), i.kind())),
            }
        }
        Expr::Field(base, name) => match eval(base, result)?.scalar() {
            Value::Map(m) => m.get(name).cloned().unwrap_or(Value::Null),
            other => return Err(format!("{} has no field {name:?}", other.kind())),
        },
        Expr::Not(inner) => match eval(inner, result)?.scalar() {
            Value::Bool(b) => Value::Bool(!b),
            other => return Err(format!("'!' needs true or false, got {}", other.kind())),
        },
        Expr::Neg(inner) => Value::Num(-num(&eval(inner, result)?, "'-'")?),
        Expr::Bin(BinOp::And, a, b) | Expr::Bin(BinOp::Or, a, b) => {
            let is_and = matches!(e, Expr::Bin(BinOp::And, ..));
            let left = match eval(a, result)?.scalar() {
                Value::Bool(v) => *v,
                other => return Err(format!("'and'/'or' need true or false, got {}", other.kind())),
            };
            if left != is_and {
                return Ok(Value::Bool(left));
            }
            match eval(b, result)?.scalar() {
                Value::Bool(v) => Value::Bool(*v),
                other => return Err(format!("'and'/'or' need true or false, got {}", other.kind())),
            }
        }
        Expr::Bin(op, a, b) => {
            let left = eval(a, result)?;
            let right = eval(b, result)?;
            binary(*op, left.scalar(), right.scalar())?
        }
        Expr::Call(func, args) => {
            let values = args.iter().map(|a| eval(a, result)).collect::<Result<Vec<_>, _>>()?;
            call(*func, &values)?
        }
    })
}

fn binary(op: BinOp, a: &Value, b: &Value) -> Result<Value, String> {
    Ok(match op {
        BinOp::Eq => Value::Bool(a == b),
        BinOp::Ne => Value::Bool(a != b),
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let ordering = match (a, b) {
                (Value::Num(x), Value::Num(y)) => x.partial_cmp(y),
                (Value::Str(x), Value::Str(y)) => Some(x.cmp(y)),
                _ => return Err(format!("cannot compare {} with {}", a.kind(), b.kind())),
            };
            // NaN compares false with everything, as in Go and IEEE 754.
            Value::Bool(ordering.is_some_and(|o| match op {
                BinOp::Lt => o.is_lt(),
                BinOp::Le => o.is_le(),
                BinOp::Gt => o.is_gt(),
                _ => o.is_ge(),
            }))
        }
        BinOp::Add if matches!((a, b), (Value::Str(_), Value::Str(_))) => {
            let (Value::Str(x), Value::Str(y)) = (a, b) else { unreachable!() };
            Value::Str(format!("{x}{y}"))
        }
        _ => {
            let (x, y) = (num(a, "arithmetic")?, num(b, "arithmetic")?);
            Value::Num(match op {
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::Mul => x * y,
                BinOp::Div => x / y,
                _ => x % y,
            })
        }
    })
}

fn call(func: Func, args: &[Value]) -> Result<Value, String> {
    let first = &args[0];
    Ok(match func {
        Func::Default => {
            if first.is_no_data() {
                args[1].clone()
            } else {
                first.clone()
            }
        }
        Func::Len => match first {
            Value::List(items) => Value::Num(items.len() as f64),
            Value::Str(s) => Value::Num(s.chars().count() as f64),
            Value::Map(m) => Value::Num(m.len() as f64),
            other => return Err(format!("len needs a list, string or object, got {}", other.kind())),
        },
        Func::IsNaN => Value::Bool(num(first, "isNaN")?.is_nan()),
        Func::IsInf => Value::Bool(num(first, "isInf")?.is_infinite()),
        Func::Abs => Value::Num(num(first, "abs")?.abs()),
        Func::Min | Func::Max | Func::Sum | Func::Avg => {
            let xs = numbers(first, "min/max/sum/avg")?;
            if xs.is_empty() && func != Func::Sum {
                return Err("min/max/avg of an empty list".into());
            }
            Value::Num(match func {
                Func::Min => xs.iter().copied().fold(f64::INFINITY, f64::min),
                Func::Max => xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                Func::Sum => xs.iter().sum(),
                _ => xs.iter().sum::<f64>() / xs.len() as f64,
            })
        }
        Func::AsFloat | Func::AsInt => {
            let x = match first.scalar() {
                Value::Num(n) => *n,
                Value::Str(s) => s.trim().parse::<f64>().map_err(|_| format!("{s:?} is not a number"))?,
                Value::Bool(b) => f64::from(u8::from(*b)),
                other => return Err(format!("cannot convert {} to a number", other.kind())),
            };
            Value::Num(if func == Func::AsInt { x.trunc() } else { x })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(cond: &str, result: Value) -> Result<bool, String> {
        Condition::parse(cond)?.eval(&result)
    }

    fn list(xs: &[f64]) -> Value {
        Value::List(xs.iter().map(|x| Value::Num(*x)).collect())
    }

    #[test]
    fn thresholds_are_the_numbers_result_is_compared_with() {
        let t = |c: &str| {
            Condition::parse(c).unwrap().thresholds().into_iter().map(|t| (t.op, t.value)).collect::<Vec<_>>()
        };
        assert_eq!(t("result < 0.01"), [("<", 0.01)]);
        assert_eq!(t("0.95 <= result"), [(">=", 0.95)]);
        assert_eq!(t("result[0] >= 0.95 && asFloat(result) < 2"), [(">=", 0.95), ("<", 2.0)]);
        assert_eq!(t("result > -1 || result == 7"), [(">", -1.0), ("==", 7.0)]);
        assert_eq!(t("len(result) > 0"), []);
        assert_eq!(t("result + 1 > 2"), []);
        assert_eq!(t("isNaN(result)"), []);
    }

    #[test]
    fn argo_style_conditions() {
        assert!(check("result[0] >= 0.95", list(&[0.97])).unwrap());
        assert!(!check("result[0] >= 0.95", list(&[0.90])).unwrap());
        assert!(check("result < 0.01", list(&[0.001])).unwrap(), "a one-element vector compares as its element");
        assert!(check("result < 0.01", Value::Num(0.001)).unwrap());
        assert!(check("default(result, 0) < 0.05", Value::List(vec![])).unwrap());
        assert!(check("default(result, 0) < 0.05", Value::Num(f64::NAN)).unwrap());
        assert!(
            check("result.status == 'ok' and len(result.items) > 1", {
                Value::from_json(&serde_json::json!({"status": "ok", "items": [1, 2]}))
            })
            .unwrap()
        );
        assert!(check("!(result > 1) || false", Value::Num(0.5)).unwrap());
        assert!(check("not (result > 1)", Value::Num(0.5)).unwrap());
        assert!(check("result[-1] == 3 && max(result) == 3 && avg(result) == 2", list(&[1.0, 2.0, 3.0])).unwrap());
        assert!(check("asFloat(result) * 2 == 1.5", Value::Str("0.75".into())).unwrap());
        assert!(check("1 + 2 * 3 == 7 && (1 + 2) * 3 == 9 && 7 % 4 == 3 && -result == -2", Value::Num(2.0)).unwrap());
        assert!(check("isNaN(result)", Value::Num(f64::NAN)).unwrap());
    }

    #[test]
    fn nan_compares_false() {
        assert!(!check("result < 1", Value::Num(f64::NAN)).unwrap());
        assert!(!check("result >= 1", Value::Num(f64::NAN)).unwrap());
    }

    #[test]
    fn evaluation_errors_are_errors() {
        assert!(check("result[3] > 0", list(&[1.0])).unwrap_err().contains("out of range"));
        assert!(check("result < 1", list(&[1.0, 2.0])).unwrap_err().contains("cannot compare a list of 2"));
        assert!(check("result + 1", Value::Num(1.0)).unwrap_err().contains("not true or false"));
        assert!(check("result.x > 1", Value::Num(1.0)).unwrap_err().contains("no field"));
    }

    #[test]
    fn parse_errors_name_the_problem() {
        assert!(Condition::parse("result <").unwrap_err().contains("unexpected end of input"));
        assert!(Condition::parse("reslt < 1").unwrap_err().contains("unknown name \"reslt\""));
        assert!(Condition::parse("len(result, 2) > 1").unwrap_err().contains("takes 1 argument"));
        assert!(Condition::parse("0 < result < 1").unwrap_err().contains("do not chain"));
        assert!(Condition::parse("result < 1 )").unwrap_err().contains("unexpected \")\""));
        assert_eq!(Condition::parse("  ").unwrap_err(), "empty condition");
    }

    #[test]
    fn hostile_nesting_is_an_error_not_a_stack_overflow() {
        let parens = format!("{}result{} < 1", "(".repeat(1000), ")".repeat(1000));
        assert!(Condition::parse(&parens).unwrap_err().contains("nested more than"));
        let nots = format!("{}true", "!".repeat(5000));
        assert!(Condition::parse(&nots).unwrap_err().contains("nested more than"));
        let chain = format!("result < 1{}", " && true".repeat(900));
        assert!(Condition::parse(&chain).unwrap_err().contains("nested more than"));
        let indexes = format!("result{} == 0", "[0]".repeat(2000));
        assert!(Condition::parse(&indexes).unwrap_err().contains("nested more than"));
        let huge = format!("{}true", "!".repeat(100_000));
        assert!(Condition::parse(&huge).unwrap_err().contains("at most 8192"));
        // What people write stays well inside the limits.
        let deep_enough =
            format!("{}result{} < 1 && {}", "(".repeat(30), ")".repeat(30), "!false && ".repeat(20) + "true");
        assert!(Condition::parse(&deep_enough).unwrap().eval(&Value::Num(0.5)).unwrap());
    }

    #[test]
    fn no_data_detection() {
        assert!(Value::Null.is_no_data());
        assert!(Value::List(vec![]).is_no_data());
        assert!(list(&[f64::NAN]).is_no_data());
        assert!(!list(&[f64::NAN, 1.0]).is_no_data());
        assert!(!Value::Num(0.0).is_no_data());
        assert_eq!(list(&[0.5, f64::INFINITY]).render(), "[0.5,+Inf]");
    }
}
