//! Two safe tools the web page offers the model, so tool calling can be tried end to end in a
//! browser: `calculator` (arithmetic read by the small recursive-descent parser below — the text is
//! never handed to an interpreter) and `current_time` (the server's UTC clock).
//!
//! `GET /demo/tools` lists them as an OpenAI `tools` array; `POST /demo/tools/{name}` takes a call's
//! arguments (the JSON object the model wrote) and answers `{"result": "…"}`, or `{"error": "…"}`
//! with status 400 when the call cannot be carried out — which the page sends back to the model as
//! the tool's result, as a client would.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// The tools' OpenAI function specifications.
pub fn specs() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "calculator",
            "description": "Evaluates an arithmetic expression: numbers, + - * / % ^, parentheses, sqrt(), abs(), pi, e.",
            "parameters": {"type": "object",
                "properties": {"expression": {"type": "string", "maxLength": 100, "description": "e.g. (3 + 4) * 2^3"}},
                "required": ["expression"], "additionalProperties": false}}},
        {"type": "function", "function": {
            "name": "current_time",
            "description": "The current date and time in UTC.",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": false}}}
    ])
}

pub async fn list() -> Json<Value> {
    Json(specs())
}

pub async fn call(Path(name): Path<String>, body: axum::body::Bytes) -> Response {
    let arguments: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return failed(format!("the arguments are not JSON: {e}")),
    };
    match run(&name, &arguments) {
        Ok(result) => Json(json!({ "result": result })).into_response(),
        Err(message) => failed(message),
    }
}

fn failed(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}

/// Carries out one call: the tool's answer as text, or why it could not.
pub fn run(name: &str, arguments: &Value) -> Result<String, String> {
    match name {
        "calculator" => {
            let expression = arguments
                .get("expression")
                .and_then(Value::as_str)
                .ok_or("calculator needs {\"expression\": \"…\"}")?;
            calculate(expression).map(format_number)
        }
        "current_time" => Ok(utc_now()),
        other => Err(format!("no demo tool named {other:?} (try calculator or current_time)")),
    }
}

/// Longest expression and deepest nesting the calculator reads (bounds its work and its stack).
const MAX_CHARS: usize = 1000;
const MAX_DEPTH: usize = 64;

/// The value of an arithmetic expression. Grammar (`^` binds tighter than a sign and is
/// right-associative, so `-2^2 = -4` and `2^3^2 = 512`, as in mathematics):
/// ```text
/// sum     = product (("+" | "-") product)*
/// product = signed (("*" | "/" | "%") signed)*
/// signed  = ("+" | "-") signed | power
/// power   = atom ("^" signed)?
/// atom    = number | "pi" | "e" | ("sqrt" | "abs") "(" sum ")" | "(" sum ")"
/// ```
pub fn calculate(expression: &str) -> Result<f64, String> {
    if expression.chars().count() > MAX_CHARS {
        return Err(format!("the expression is longer than {MAX_CHARS} characters"));
    }
    let chars: Vec<char> = expression.chars().map(normalize).collect();
    let mut parser = Parser { chars, at: 0, depth: 0 };
    let value = parser.sum()?;
    parser.skip_space();
    if let Some(c) = parser.peek() {
        return Err(format!("unexpected {c:?} at column {}", parser.at + 1));
    }
    if !value.is_finite() {
        return Err("the result is not a finite number".into());
    }
    Ok(value)
}

/// The typographic operators people type, as their ASCII twins.
fn normalize(c: char) -> char {
    match c {
        '×' | '·' => '*',
        '÷' => '/',
        '−' => '-',
        '（' => '(',
        '）' => ')',
        _ => c,
    }
}

struct Parser {
    chars: Vec<char>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
    }

    /// Consumes `c` (after spaces) when it comes next.
    fn eat(&mut self, c: char) -> bool {
        self.skip_space();
        if self.peek() == Some(c) {
            self.at += 1;
            return true;
        }
        false
    }

    /// Runs `parse` one nesting level deeper, refusing to go past [`MAX_DEPTH`].
    fn nested(&mut self, parse: fn(&mut Self) -> Result<f64, String>) -> Result<f64, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        let value = parse(self);
        self.depth -= 1;
        value
    }

    fn sum(&mut self) -> Result<f64, String> {
        self.nested(Self::terms)
    }

    fn terms(&mut self) -> Result<f64, String> {
        let mut value = self.product()?;
        loop {
            if self.eat('+') {
                value += self.product()?;
            } else if self.eat('-') {
                value -= self.product()?;
            } else {
                return Ok(value);
            }
        }
    }

    fn product(&mut self) -> Result<f64, String> {
        let mut value = self.signed()?;
        loop {
            if self.eat('*') {
                // `**` is power, as in Python.
                if self.eat('*') {
                    value = value.powf(self.signed()?);
                } else {
                    value *= self.signed()?;
                }
            } else if self.eat('/') {
                let at = self.at;
                let divisor = self.signed()?;
                if divisor == 0.0 {
                    return Err(format!("division by zero at column {}", at + 1));
                }
                value /= divisor;
            } else if self.eat('%') {
                let divisor = self.signed()?;
                if divisor == 0.0 {
                    return Err("remainder of a division by zero".into());
                }
                value %= divisor;
            } else {
                return Ok(value);
            }
        }
    }

    fn signed(&mut self) -> Result<f64, String> {
        if self.eat('-') {
            return Ok(-self.signed_nested()?);
        }
        if self.eat('+') {
            return self.signed_nested();
        }
        self.power()
    }

    /// A sign's operand, counting toward the depth bound (`------…1` nests too).
    fn signed_nested(&mut self) -> Result<f64, String> {
        self.nested(Self::signed)
    }

    fn power(&mut self) -> Result<f64, String> {
        let base = self.atom()?;
        if self.eat('^') {
            return Ok(base.powf(self.signed_nested()?));
        }
        Ok(base)
    }

    fn atom(&mut self) -> Result<f64, String> {
        self.skip_space();
        let start = self.at;
        match self.peek() {
            Some('(') => {
                self.at += 1;
                let value = self.sum()?;
                if !self.eat(')') {
                    return Err(format!("expected ')' at column {} to close column {}", self.at + 1, start + 1));
                }
                Ok(value)
            }
            Some(c) if c.is_ascii_digit() || c == '.' => self.number(),
            Some(c) if c.is_alphabetic() => {
                while self.peek().is_some_and(char::is_alphanumeric) {
                    self.at += 1;
                }
                let name: String = self.chars[start..self.at].iter().collect::<String>().to_lowercase();
                match name.as_str() {
                    "pi" => Ok(std::f64::consts::PI),
                    "e" => Ok(std::f64::consts::E),
                    "sqrt" | "abs" => {
                        if !self.eat('(') {
                            return Err(format!("expected '(' after {name} at column {}", self.at + 1));
                        }
                        let argument = self.sum()?;
                        if !self.eat(')') {
                            return Err(format!("expected ')' at column {}", self.at + 1));
                        }
                        if name == "abs" {
                            Ok(argument.abs())
                        } else if argument < 0.0 {
                            Err(format!("sqrt of a negative number ({argument})"))
                        } else {
                            Ok(argument.sqrt())
                        }
                    }
                    _ => Err(format!("unknown name {name:?} at column {}", start + 1)),
                }
            }
            Some(c) => Err(format!("expected a number at column {}, found {c:?}", start + 1)),
            None => Err(format!("expected a number at column {} (the expression ended)", start + 1)),
        }
    }

    fn number(&mut self) -> Result<f64, String> {
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_digit() || c == '.') {
            self.at += 1;
        }
        // An exponent: 1e3, 2.5E-4.
        if matches!(self.peek(), Some('e' | 'E'))
            && self.chars.get(self.at + 1).is_some_and(|c| c.is_ascii_digit() || *c == '-' || *c == '+')
        {
            self.at += 2;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.at += 1;
            }
        }
        let text: String = self.chars[start..self.at].iter().collect();
        text.parse().map_err(|_| format!("{text:?} at column {} is not a number", start + 1))
    }
}

/// Whole numbers without a fraction, others with up to 12 significant decimals.
fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{}", v as i64);
    }
    let text = format!("{v:.12}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Now in UTC as ISO 8601 (`2026-11-30T23:59:07Z`).
fn utc_now() -> String {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    iso8601(seconds)
}

/// Seconds since 1970-01-01 as an ISO 8601 UTC time; the date from the day count by the civil
/// calendar algorithm (eras of 400 years, years starting in March so the leap day comes last).
pub fn iso8601(seconds: u64) -> String {
    let (days, rest) = ((seconds / 86_400) as i64, seconds % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest / 60 % 60, rest % 60)
}
