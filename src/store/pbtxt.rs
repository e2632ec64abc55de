//! Protobuf text format, as far as Triton's `config.pbtxt` uses it: fields
//! of scalars (numbers, enums, strings), nested messages and bracketed
//! lists, with `#` comments. Nesting is bounded, so a crafted file cannot
//! exhaust the stack. It knows no schema: `triton` reads the fields.

use crate::types::excerpt;

/// Nesting deeper than any Triton configuration has is refused.
const MAX_DEPTH: usize = 16;

/// A value of protobuf text format: a scalar (number, enum or string), a
/// message, or a bracketed list of either.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Scalar(String),
    Message(Vec<(String, Value)>),
    List(Vec<Value>),
}

impl Value {
    pub(super) fn as_scalar(&self) -> Option<&str> {
        match self {
            Value::Scalar(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn as_message(&self) -> Option<&[(String, Value)]> {
        match self {
            Value::Message(m) => Some(m),
            _ => None,
        }
    }
}

/// Every value of a field, repeated fields and lists flattened.
pub(super) fn all<'a>(fields: &'a [(String, Value)], key: &str) -> Vec<&'a Value> {
    fields
        .iter()
        .filter(|(k, _)| k == key)
        .flat_map(|(_, v)| match v {
            Value::List(items) => items.iter().collect(),
            other => vec![other],
        })
        .collect()
}

pub(super) fn text<'a>(fields: &'a [(String, Value)], key: &str) -> Option<&'a str> {
    all(fields, key).first().and_then(|v| v.as_scalar())
}

pub(super) fn message<'a>(
    fields: &'a [(String, Value)],
    key: &str,
) -> Option<&'a [(String, Value)]> {
    all(fields, key).first().and_then(|v| v.as_message())
}

pub(super) fn number(fields: &[(String, Value)], key: &str) -> Result<Option<u64>, String> {
    text(fields, key)
        .map(|t| {
            t.parse::<u64>()
                .map_err(|_| format!("{key} must be a whole number ≥ 0, got '{}'", excerpt(t)))
        })
        .transpose()
}

pub(super) fn numbers(fields: &[(String, Value)], key: &str) -> Result<Vec<u64>, String> {
    all(fields, key)
        .iter()
        .map(|v| {
            v.as_scalar()
                .and_then(|t| t.parse::<u64>().ok())
                .ok_or_else(|| format!("{key} must list whole numbers ≥ 0"))
        })
        .collect()
}

/// Parses protobuf text format into its fields, in order.
pub(super) fn parse(text: &str) -> Result<Vec<(String, Value)>, String> {
    let mut parser = Parser {
        tokens: tokenize(text)?,
        at: 0,
    };
    let fields = parser.fields(0)?;
    match parser.peek() {
        None => Ok(fields),
        Some(token) => Err(format!("unexpected '{}'", excerpt(token))),
    }
}

fn tokenize(text: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            c if c.is_whitespace() || c == ',' || c == ';' => {
                chars.next();
            }
            '{' | '}' | '[' | ']' | ':' | '<' | '>' => {
                tokens.push(c.to_string());
                chars.next();
            }
            '"' | '\'' => {
                chars.next();
                let mut string = String::from("\"");
                loop {
                    match chars.next() {
                        None => return Err("a string is not closed".into()),
                        Some('\\') => string.extend(chars.next()),
                        Some(end) if end == c => break,
                        Some(other) => string.push(other),
                    }
                }
                tokens.push(string);
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "{}[]:<>,;#\"'".contains(c) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(word);
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<String>,
    at: usize,
}

fn within_depth(depth: usize) -> Result<(), String> {
    match depth > MAX_DEPTH {
        true => Err(format!("settings nested deeper than {MAX_DEPTH} levels")),
        false => Ok(()),
    }
}

impl Parser {
    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.at).map(String::as_str)
    }

    fn next(&mut self) -> Result<String, String> {
        let token = self
            .tokens
            .get(self.at)
            .cloned()
            .ok_or("the file ends in the middle of a setting")?;
        self.at += 1;
        Ok(token)
    }

    /// Fields until the end of the input or a closing brace.
    fn fields(&mut self, depth: usize) -> Result<Vec<(String, Value)>, String> {
        within_depth(depth)?;
        let mut fields = Vec::new();
        while let Some(token) = self.peek() {
            if matches!(token, "}" | ">") {
                break;
            }
            let key = self.next()?;
            if !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("expected a setting name, got '{}'", excerpt(&key)));
            }
            if self.peek() == Some(":") {
                self.at += 1;
            }
            let value = self.value(depth)?;
            fields.push((key, value));
        }
        Ok(fields)
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        match self.next()?.as_str() {
            open @ ("{" | "<") => {
                let fields = self.fields(depth + 1)?;
                let close = self.next()?;
                if (open == "{" && close != "}") || (open == "<" && close != ">") {
                    return Err(format!("'{open}' closed by '{}'", excerpt(&close)));
                }
                Ok(Value::Message(fields))
            }
            "[" => {
                // A list's items may be lists: nested as deeply as messages.
                within_depth(depth + 1)?;
                let mut items = Vec::new();
                while self.peek() != Some("]") {
                    items.push(self.value(depth + 1)?);
                }
                self.at += 1;
                Ok(Value::List(items))
            }
            scalar if matches!(scalar, "}" | "]" | ">" | ":") => {
                Err(format!("expected a value, got '{scalar}'"))
            }
            scalar => Ok(Value::Scalar(
                scalar.strip_prefix('"').unwrap_or(scalar).to_string(),
            )),
        }
    }
}
