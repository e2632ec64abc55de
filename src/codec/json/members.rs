//! The envelope of a JSON body: an object's members or an array's items as
//! slices of the body, left unparsed, so that a tensor inside
//! (`inputs[].data`, `instances`) is read once, by the scanner, straight from
//! the body. Finding where a value ends jumps from bracket to bracket and
//! quote to quote with `memchr` rather than reading every number, as
//! `serde_json`'s `RawValue` walk did (8–16 ns a number, before the scanner
//! read each one again). A nested envelope is read where it stands
//! ([`visit_members`], [`UnreadValue`]) rather than sliced level by level,
//! so that no level reads what its inner levels read again.
//!
//! It checks only the structure between the values it hands out. Whoever
//! takes a value parses all of it and so checks it: the scanner for a
//! tensor, `serde_json` for the rest ([`parse_member`], [`check_member`]).

use std::borrow::Cow;

use memchr::{memchr2, memchr3};
use serde::Deserialize;

/// A member's key, unescaped, and its value's bytes.
pub type Member<'a> = (Cow<'a, str>, &'a [u8]);

/// The members of the object that is the whole of `json`, in order. The
/// structure is checked as they are read: an error ends the iteration.
pub fn object_members(json: &[u8]) -> Members<'_> {
    Members(Walk::new(json, OBJECT))
}

/// The items of the array that is the whole of `json`, in order.
pub fn array_items(json: &[u8]) -> Items<'_> {
    Items(Walk::new(json, LIST))
}

/// Reads the object that is the whole of `json` member by member, each
/// value handed to `visit` where it stands (see [`UnreadValue`]).
pub fn visit_members<'a>(
    json: &'a [u8],
    visit: impl FnMut(Cow<'a, str>, UnreadValue<'a, '_>) -> Result<(), String>,
) -> Result<(), String> {
    let mut cursor = Cursor {
        bytes: json,
        pos: 0,
    };
    read_members(&mut cursor, Sequence::whole(OBJECT), "", visit)
}

/// A value met in an object or a list, not yet read: its reader takes it
/// as a slice of the body ([`UnreadValue::bytes`]) or goes into it where it
/// stands ([`UnreadValue::members`], [`UnreadValue::items`]). Going in
/// crosses a nested envelope (v2's `inputs[]`) once, where slicing it first
/// found each level's end by reading what it holds again. A value its
/// reader leaves unread is stepped over.
pub struct UnreadValue<'a, 'c> {
    cursor: &'c mut Cursor<'a>,
    /// Names the enclosing value in structural errors ("'inputs': ...").
    within: &'c str,
}

impl<'a> UnreadValue<'a, '_> {
    /// The value's bytes, its structure checked only as far as its end.
    pub fn bytes(self) -> Result<&'a [u8], String> {
        self.cursor.value().map_err(|e| within(self.within, e))
    }

    /// The value as a string, unescaped: read once, where `bytes` and then
    /// [`read_string`] read a plain string twice. Its errors are left for
    /// the caller to label with the member's name.
    pub fn string(self) -> Result<Cow<'a, str>, String> {
        self.cursor.quoted("a string")
    }

    /// Reads the value as an object, member by member; `name` labels its
    /// structural errors ("'parameters': expected an object ({...})").
    pub fn members(
        self,
        name: &str,
        visit: impl FnMut(Cow<'a, str>, UnreadValue<'a, '_>) -> Result<(), String>,
    ) -> Result<(), String> {
        read_members(self.cursor, Sequence::nested(OBJECT), name, visit)
    }

    /// Reads the value as a list, item by item; `name` as for `members`.
    pub fn items(
        self,
        name: &str,
        mut visit: impl FnMut(UnreadValue<'a, '_>) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut sequence = Sequence::nested(LIST);
        while sequence.another(self.cursor).map_err(|e| within(name, e))? {
            in_place(self.cursor, name, &mut visit)?;
        }
        Ok(())
    }
}

fn read_members<'a>(
    cursor: &mut Cursor<'a>,
    mut sequence: Sequence,
    name: &str,
    mut visit: impl FnMut(Cow<'a, str>, UnreadValue<'a, '_>) -> Result<(), String>,
) -> Result<(), String> {
    while sequence.another(cursor).map_err(|e| within(name, e))? {
        let key = cursor.key().map_err(|e| within(name, e))?;
        cursor.expect(b':').map_err(|e| within(name, e))?;
        in_place(cursor, name, |value| visit(key, value))?;
    }
    Ok(())
}

/// Hands the value ahead of `cursor` to `visit`, then steps over it if
/// `visit` left it unread.
fn in_place<'a>(
    cursor: &mut Cursor<'a>,
    name: &str,
    visit: impl FnOnce(UnreadValue<'a, '_>) -> Result<(), String>,
) -> Result<(), String> {
    let start = cursor.pos;
    visit(UnreadValue {
        cursor,
        within: name,
    })?;
    if cursor.pos == start {
        cursor.value().map_err(|e| within(name, e))?;
    }
    Ok(())
}

/// A structural error, labelled with the value it was found in.
#[cold]
fn within(name: &str, error: String) -> String {
    match name {
        "" => error,
        _ => format!("{name}: {error}"),
    }
}

pub struct Members<'a>(Walk<'a>);

impl<'a> Iterator for Members<'a> {
    type Item = Result<Member<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next(|cursor| {
            let key = cursor.key()?;
            cursor.expect(b':')?;
            Ok((key, cursor.value()?))
        })
    }
}

pub struct Items<'a>(Walk<'a>);

impl<'a> Iterator for Items<'a> {
    type Item = Result<&'a [u8], String>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next(Cursor::value)
    }
}

/// A whole body's object or list, read as an iterator of slices.
struct Walk<'a> {
    cursor: Cursor<'a>,
    sequence: Sequence,
}

impl<'a> Walk<'a> {
    fn new(bytes: &'a [u8], brackets: Brackets) -> Self {
        Walk {
            cursor: Cursor { bytes, pos: 0 },
            sequence: Sequence::whole(brackets),
        }
    }

    fn next<T>(
        &mut self,
        read: impl FnOnce(&mut Cursor<'a>) -> Result<T, String>,
    ) -> Option<Result<T, String>> {
        let element = match self.sequence.another(&mut self.cursor) {
            Ok(true) => read(&mut self.cursor),
            Ok(false) => return None,
            Err(e) => Err(e),
        };
        if element.is_err() {
            self.sequence.state = State::Done;
        }
        Some(element)
    }
}

/// An object's or a list's brackets, and what it is called in errors.
#[derive(Clone, Copy)]
struct Brackets {
    open: u8,
    close: u8,
    what: &'static str,
}

const OBJECT: Brackets = Brackets {
    open: b'{',
    close: b'}',
    what: "an object ({...})",
};
const LIST: Brackets = Brackets {
    open: b'[',
    close: b']',
    what: "a list ([...])",
};

/// Where a cursor is in an object or a list: the structure between its
/// elements, without a buffer of its own.
struct Sequence {
    brackets: Brackets,
    /// The body's outermost value, after which nothing may follow.
    whole: bool,
    state: State,
}

#[derive(PartialEq)]
enum State {
    Before,
    Inside,
    Done,
}

impl Sequence {
    fn whole(brackets: Brackets) -> Self {
        Sequence {
            brackets,
            whole: true,
            state: State::Before,
        }
    }

    fn nested(brackets: Brackets) -> Self {
        Sequence {
            whole: false,
            ..Sequence::whole(brackets)
        }
    }

    /// Steps to the next element; false at the end of a well-formed value.
    #[inline(always)]
    fn another(&mut self, cursor: &mut Cursor<'_>) -> Result<bool, String> {
        let Brackets { open, close, what } = self.brackets;
        let ended = match self.state {
            State::Before => {
                self.state = State::Inside;
                cursor.open(open, what)?;
                cursor.closes(close)
            }
            State::Inside => cursor.separator(close)?,
            State::Done => return Ok(false),
        };
        if ended {
            self.state = State::Done;
            if self.whole {
                cursor.finish()?;
            }
        }
        Ok(!ended)
    }
}

/// A member's value parsed as `T`; the error names the member.
pub fn parse_member<'a, T: Deserialize<'a>>(name: &str, value: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(value).map_err(|e| format!("'{name}': {e}"))
}

/// Checks that a member nobody reads is valid JSON, as a full parse would have.
pub fn check_member(name: &str, value: &[u8]) -> Result<(), String> {
    parse_member::<serde::de::IgnoredAny>(name, value).map(|_| ())
}

#[cold]
#[inline(never)]
fn expected(what: &str) -> String {
    format!("expected {what}")
}

#[cold]
#[inline(never)]
fn trailing(at: usize) -> String {
    format!("trailing characters at byte {at}")
}

#[cold]
#[inline(never)]
fn not_closed(what: &str, start: usize) -> String {
    format!("the {what} at byte {start} is not closed")
}

/// Keeps a member read from the body, refusing a second one of the same
/// name (as serde's derived readers do).
pub fn once<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), String> {
    match slot.replace(value) {
        None => Ok(()),
        Some(_) => Err(format!("duplicate field `{name}`")),
    }
}

/// [`once`] for a member that serde reads as it stands.
pub fn parse_once<'a, T: Deserialize<'a>>(
    slot: &mut Option<T>,
    name: &str,
    value: &'a [u8],
) -> Result<(), String> {
    once(slot, name, parse_member(name, value)?)
}

/// A JSON string's text, borrowed from the body unless it has escapes.
pub fn read_string(value: &[u8]) -> Result<Cow<'_, str>, String> {
    if plain_ascii_end(value, 0) == Some(value.len()) {
        return Ok(Cow::Borrowed(ascii_text(&value[1..value.len() - 1])));
    }
    let plain = value.len() >= 2
        && value[0] == b'"'
        && value[value.len() - 1] == b'"'
        && !value[1..value.len() - 1]
            .iter()
            .any(|&b| b == b'\\' || b == b'"' || b < 0x20);
    match plain {
        true => std::str::from_utf8(&value[1..value.len() - 1])
            .map(Cow::Borrowed)
            .map_err(|_| "a string is not valid UTF-8".to_string()),
        false => serde_json::from_slice::<String>(value)
            .map(Cow::Owned)
            .map_err(|e| e.to_string()),
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// The steps between values are small and taken a dozen times a request:
/// they are inlined, and every error is worded out of line (`#[cold]`), so
/// that the formatting's registers and stack do not weigh on the way
/// through (about 60 instructions a step before).
impl<'a> Cursor<'a> {
    #[inline]
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    #[inline]
    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.bytes.get(self.pos).copied()
    }

    #[cold]
    #[inline(never)]
    fn unexpected(&self, wanted: &str) -> String {
        match self.bytes.get(self.pos) {
            Some(&b) => format!(
                "expected {wanted} at byte {}, found '{}'",
                self.pos, b as char
            ),
            None => format!("expected {wanted} at byte {}, found the end", self.pos),
        }
    }

    #[inline]
    fn open(&mut self, byte: u8, what: &str) -> Result<(), String> {
        if self.peek() != Some(byte) {
            return Err(expected(what));
        }
        self.pos += 1;
        Ok(())
    }

    #[inline]
    fn expect(&mut self, byte: u8) -> Result<(), String> {
        if self.peek() != Some(byte) {
            return Err(self.unexpected_byte(byte));
        }
        self.pos += 1;
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn unexpected_byte(&self, byte: u8) -> String {
        self.unexpected(&format!("'{}'", byte as char))
    }

    /// Steps over `close` if it comes next (an empty object or list).
    #[inline]
    fn closes(&mut self, close: u8) -> bool {
        let closes = self.peek() == Some(close);
        self.pos += usize::from(closes);
        closes
    }

    /// After a value: `,` (more follow) or `close` (the last one).
    #[inline]
    fn separator(&mut self, close: u8) -> Result<bool, String> {
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                Ok(false)
            }
            Some(b) if b == close => {
                self.pos += 1;
                Ok(true)
            }
            _ => Err(self.unexpected_separator(close)),
        }
    }

    #[cold]
    #[inline(never)]
    fn unexpected_separator(&self, close: u8) -> String {
        self.unexpected(&format!("',' or '{}'", close as char))
    }

    fn finish(&mut self) -> Result<(), String> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(trailing(self.pos)),
        }
    }

    fn key(&mut self) -> Result<Cow<'a, str>, String> {
        self.quoted("a key in quotes")
    }

    /// The string ahead of the cursor, unescaped; `wanted` names it in the
    /// error when something else is there.
    fn quoted(&mut self, wanted: &str) -> Result<Cow<'a, str>, String> {
        if self.peek() != Some(b'"') {
            return Err(self.unexpected(wanted));
        }
        let start = self.pos;
        if let Some(end) = plain_ascii_end(self.bytes, start) {
            self.pos = end;
            return Ok(Cow::Borrowed(ascii_text(&self.bytes[start + 1..end - 1])));
        }
        self.pos = string_end(self.bytes, start)?;
        read_string(&self.bytes[start..self.pos])
    }

    fn value(&mut self) -> Result<&'a [u8], String> {
        let first = self.peek();
        let start = self.pos;
        self.pos = match first {
            Some(b'"') => match plain_ascii_end(self.bytes, start) {
                Some(end) => end,
                None => string_end(self.bytes, start)?,
            },
            Some(b'[') => nested_end(self.bytes, start, b'[', b']')?,
            Some(b'{') => nested_end(self.bytes, start, b'{', b'}')?,
            _ => scalar_end(self.bytes, start),
        };
        if self.pos == start {
            return Err(self.unexpected("a value"));
        }
        Ok(&self.bytes[start..self.pos])
    }
}

/// How far [`plain_ascii_end`] looks before leaving a string to `memchr`,
/// which is faster on long ones and slower to start on short ones.
const SHORT_STRING: usize = 32;

/// Just past the string that opens at `start` if it is short and plain:
/// printable ASCII, nothing to unescape and nothing to validate as UTF-8,
/// as keys, names and datatypes are. `None` sends the string the long way.
/// Eight bytes at a time: a byte at a time cost more than the `memchr`
/// and UTF-8 check it saves on a six-byte key. Inlined into its three
/// callers: called, it saved six registers to read a four-letter key.
#[inline(always)]
fn plain_ascii_end(bytes: &[u8], start: usize) -> Option<usize> {
    let text = bytes.get(start..)?.strip_prefix(b"\"")?;
    let mut offset = 0;
    while offset < SHORT_STRING {
        let word = match text.get(offset..offset + 8) {
            Some(eight) => u64::from_le_bytes(eight.try_into().ok()?),
            None => last_word(text.get(offset..)?),
        };
        let stops = special_bytes(word);
        if stops != 0 {
            let at = offset + (stops.trailing_zeros() / 8) as usize;
            return (text.get(at) == Some(&b'"')).then_some(start + at + 2);
        }
        offset += 8;
    }
    None
}

/// The body's last few bytes as a word, zeros after them: a zero stops a
/// string like any control byte.
fn last_word(tail: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word[..tail.len()].copy_from_slice(tail);
    u64::from_le_bytes(word)
}

/// The high bit of each byte of `word` that ends a plain string: `"`,
/// `\`, a control byte or one past ASCII. Borrows can mark bytes above
/// the first one marked, never below, so the lowest mark is exact.
fn special_bytes(word: u64) -> u64 {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let quote = zero_byte(word ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(word ^ (ONES * u64::from(b'\\')));
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    quote | backslash | control | (word & HIGH)
}

/// The text of bytes [`plain_ascii_end`] found to be ASCII, without
/// checking them again: `from_utf8` cost 50 instructions a key, as much
/// as finding its end.
fn ascii_text(bytes: &[u8]) -> &str {
    debug_assert!(bytes.is_ascii());
    // SAFETY: `plain_ascii_end` read every byte and found each below 0x80;
    // ASCII is valid UTF-8.
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

/// Just past the string that opens at `start`.
fn string_end(bytes: &[u8], start: usize) -> Result<usize, String> {
    let mut pos = start + 1;
    loop {
        let Some(found) = memchr2(b'"', b'\\', &bytes[pos..]) else {
            return Err(not_closed("string", start));
        };
        pos += found;
        match bytes[pos] {
            b'"' => return Ok(pos + 1),
            // An escape: the byte after the backslash is never the end.
            _ => pos += 2,
        }
        if pos > bytes.len() {
            return Err(not_closed("string", start));
        }
    }
}

/// Just past the list or object that opens at `start` (with `open`, which
/// the caller has seen). Only its own kind of bracket is counted: in valid
/// JSON they balance whatever is nested inside, and invalid JSON fails when
/// the value is parsed.
fn nested_end(bytes: &[u8], start: usize, open: u8, close: u8) -> Result<usize, String> {
    let mut depth = 1usize;
    let mut pos = start + 1;
    while let Some(found) = next_bracket_or_quote(bytes, pos, open, close) {
        pos = found;
        match bytes[pos] {
            b'"' => pos = string_end(bytes, pos)?,
            b if b == open => {
                depth += 1;
                pos += 1;
            }
            _ => {
                depth -= 1;
                pos += 1;
                if depth == 0 {
                    return Ok(pos);
                }
            }
        }
    }
    Err(not_closed(if open == b'[' { "'['" } else { "'{'" }, start))
}

/// How far [`next_bracket_or_quote`] looks byte by byte before `memchr3`,
/// whose setup costs more than the whole of a short value (`[1,4]`, `{}`).
const NEAR: usize = 16;

/// Where the next `open`, `close` or `"` at or after `pos` is.
fn next_bracket_or_quote(bytes: &[u8], pos: usize, open: u8, close: u8) -> Option<usize> {
    let rest = &bytes[pos..];
    let near = &rest[..rest.len().min(NEAR)];
    if let Some(at) = near
        .iter()
        .position(|&b| b == open || b == close || b == b'"')
    {
        return Some(pos + at);
    }
    let far = rest.get(NEAR..)?;
    memchr3(open, close, b'"', far).map(|at| pos + NEAR + at)
}

/// Just past a number or literal: up to the next separator or whitespace.
fn scalar_end(bytes: &[u8], start: usize) -> usize {
    bytes[start..]
        .iter()
        .position(|b| matches!(b, b',' | b']' | b'}' | b':' | b' ' | b'\n' | b'\r' | b'\t'))
        .map_or(bytes.len(), |n| start + n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(json: &str) -> Result<Vec<(String, String)>, String> {
        object_members(json.as_bytes())
            .map(|member| {
                let (k, v) = member?;
                Ok((k.into_owned(), String::from_utf8(v.to_vec()).unwrap()))
            })
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn members_are_slices_of_the_body_in_order() {
        let json = r#" { "id" : "a\"]}" , "inputs":[{"data": [[1, 2], [3, "]"]]}],
            "n": -1.5e3, "t": true, "o": {"x": {"y": "}"}}, "e": [], "s": "\\"} "#;
        assert_eq!(
            members(json).unwrap(),
            pairs(&[
                ("id", r#""a\"]}""#),
                ("inputs", r#"[{"data": [[1, 2], [3, "]"]]}]"#),
                ("n", "-1.5e3"),
                ("t", "true"),
                ("o", r#"{"x": {"y": "}"}}"#),
                ("e", "[]"),
                ("s", r#""\\""#),
            ])
        );
        assert_eq!(members("{}").unwrap(), pairs(&[]));
        assert_eq!(
            members(r#"{"k\u00e9y": 1}"#).unwrap(),
            pairs(&[("kéy", "1")])
        );
    }

    /// Brackets and quotes on either side of where the byte-by-byte look
    /// gives way to `memchr3`.
    #[test]
    fn nested_values_end_where_they_close_near_or_far() {
        for pad in 0..40 {
            let filler = "1,".repeat(pad / 2) + if pad % 2 == 1 { r#""]}[{","# } else { "" };
            let list = format!(r#"[{filler}["]",{{}}],2]"#);
            let object = format!(r#"{{"a":[{filler}0],"s":"}}"}}"#);
            let json = format!(r#"{{"l":{list},"o":{object},"z":1}}"#);
            assert_eq!(
                members(&json).unwrap(),
                pairs(&[("l", &list), ("o", &object), ("z", "1")]),
                "{json}"
            );
            let open = format!(r#"{{"l":[{filler}[2]"#);
            assert_eq!(
                members(&open).unwrap_err(),
                "the '[' at byte 5 is not closed"
            );
        }
    }

    #[test]
    fn array_items_are_slices_of_the_body() {
        let items = array_items(br#"[ [1, [2]], {"a": "]"}, "x" , 3 ]"#);
        let items: Vec<&[u8]> = items.collect::<Result<_, _>>().unwrap();
        assert_eq!(items, [&b"[1, [2]]"[..], br#"{"a": "]"}"#, br#""x""#, b"3"]);
        assert_eq!(array_items(b"[]").count(), 0);
    }

    #[test]
    fn broken_structure_is_refused_with_its_place() {
        for (json, message) in [
            ("[1]", "expected an object ({...})"),
            ("", "expected an object ({...})"),
            (r#"{"a" 1}"#, "expected ':' at byte 5, found '1'"),
            (
                r#"{"a": 1 "b": 2}"#,
                "expected ',' or '}' at byte 8, found '\"'",
            ),
            (r#"{"a": [1, 2}"#, "the '[' at byte 6 is not closed"),
            (r#"{"a": "x}"#, "the string at byte 6 is not closed"),
            (r#"{"a": "x\"#, "the string at byte 6 is not closed"),
            (r#"{"a": 1"#, "expected ',' or '}' at byte 7, found the end"),
            (r#"{"a": }"#, "expected a value at byte 6, found '}'"),
            (
                r#"{"a": 1,}"#,
                "expected a key in quotes at byte 8, found '}'",
            ),
            (r#"{a: 1}"#, "expected a key in quotes at byte 1, found 'a'"),
            (r#"{"a": 1} x"#, "trailing characters at byte 9"),
        ] {
            assert_eq!(members(json), Err(message.to_string()), "{json}");
        }
        let items: Vec<_> = array_items(b"[1 2]").collect();
        assert_eq!(
            items,
            [
                Ok(&b"1"[..]),
                Err("expected ',' or ']' at byte 3, found '2'".to_string())
            ]
        );
    }

    /// Reads `json` with the visitors, going into `inputs[]` and each
    /// input's `parameters` and taking the rest as bytes, or leaving the
    /// members named `skip` unread.
    fn visited(json: &str) -> Result<Vec<String>, String> {
        let mut seen = Vec::new();
        visit_members(json.as_bytes(), |key, value| match key.as_ref() {
            "inputs" => value.items("'inputs'", |input| {
                input.members("an input", |key, value| {
                    let text = match key.as_ref() {
                        "parameters" => {
                            let mut inner = Vec::new();
                            value.members("'parameters'", |key, value| {
                                inner.push(format!("{key}={}", text(value.bytes()?)));
                                Ok(())
                            })?;
                            inner.join(" ")
                        }
                        _ => text(value.bytes()?),
                    };
                    seen.push(format!("{key}: {text}"));
                    Ok(())
                })
            }),
            "skip" => Ok(()),
            _ => {
                seen.push(format!("{key} = {}", text(value.bytes()?)));
                Ok(())
            }
        })?;
        Ok(seen)
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn visitors_go_into_nested_values_where_they_stand() {
        let json = r#" { "id": "a\"]}", "inputs": [ {"name": "x", "data": [[1, 2], [3, "]"]],
            "parameters": {"size": 16, "o": {"k": "}"}}}, {} ], "skip": [1, {"a": "]"}],
            "skip": "x", "n": -1.5e3 } "#;
        assert_eq!(
            visited(json).unwrap(),
            [
                r#"id = "a\"]}""#,
                r#"name: "x""#,
                r#"data: [[1, 2], [3, "]"]]"#,
                r#"parameters: size=16 o={"k": "}"}"#,
                "n = -1.5e3",
            ]
        );
        assert_eq!(visited("{}").unwrap(), Vec::<String>::new());
        assert_eq!(visited(r#"{"inputs": []}"#).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn visitors_name_the_value_a_broken_structure_is_in() {
        for (json, message) in [
            (r#"{"inputs": {}}"#, "'inputs': expected a list ([...])"),
            (
                r#"{"inputs": [{"a": 1} {"b": 2}]}"#,
                "'inputs': expected ',' or ']' at byte 21, found '{'",
            ),
            (
                r#"{"inputs": [{"a": 1 "b": 2}]}"#,
                "an input: expected ',' or '}' at byte 20, found '\"'",
            ),
            (
                r#"{"inputs": [{"parameters": [1]}]}"#,
                "'parameters': expected an object ({...})",
            ),
            (
                r#"{"inputs": [{"a": }]}"#,
                "an input: expected a value at byte 18, found '}'",
            ),
            (r#"{"skip": [1, 2}"#, "the '[' at byte 9 is not closed"),
            (
                r#"{"inputs": [{"a": 1}]"#,
                "expected ',' or '}' at byte 21, found the end",
            ),
            (r#"{"inputs": []} []"#, "trailing characters at byte 15"),
        ] {
            assert_eq!(visited(json), Err(message.to_string()), "{json}");
        }
    }

    /// The eight-at-a-time reader agrees with the long way wherever it
    /// answers: every byte value at every place of a short string, and
    /// strings that end at, before and past each word's edge.
    #[test]
    fn short_plain_strings_end_where_the_long_way_says() {
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for length in 0..=40 {
            cases.push(format!("\"{}\" , 1", "k".repeat(length)).into_bytes());
            cases.push(format!("\"{}", "k".repeat(length)).into_bytes());
        }
        for place in 0..12 {
            for byte in 0..=255u8 {
                let mut case = b"\"abcdefghijkl\":1".to_vec();
                case[1 + place] = byte;
                cases.push(case);
            }
        }
        for case in &cases {
            let Some(end) = plain_ascii_end(case, 0) else {
                continue;
            };
            assert_eq!(Ok(end), string_end(case, 0), "{case:?}");
            let text: String = serde_json::from_slice(&case[..end]).unwrap();
            assert_eq!(read_string(&case[..end]).unwrap(), text, "{case:?}");
        }
        let answered = |case: &[u8]| plain_ascii_end(case, 0).is_some();
        assert!(answered(b"\"name\": 1"));
        assert!(answered(b"\"\""));
        assert!(!answered(b"\"caf\xc3\xa9\""), "UTF-8 goes the long way");
        assert!(!answered(b"\"a\\nb\""), "escapes go the long way");
        assert!(!answered(b"x\"\""), "only a string that opens here");
        assert!(!answered(format!("\"{}\"", "k".repeat(32)).as_bytes()));
        assert!(answered(format!("\"{}\"", "k".repeat(31)).as_bytes()));
    }

    #[test]
    fn values_are_checked_by_whoever_parses_them() {
        assert_eq!(parse_member::<Vec<i64>>("shape", b"[1, 2]"), Ok(vec![1, 2]));
        let wrong = parse_member::<Vec<i64>>("shape", b"[1, x]").unwrap_err();
        assert!(wrong.starts_with("'shape': expected value"), "{wrong}");
        assert!(check_member("extra", br#"{"a": [1, 2]}"#).is_ok());
        assert!(check_member("extra", br#"{"a": [1, 2}]}"#).is_err());
        assert_eq!(read_string(br#""plain""#).unwrap(), Cow::Borrowed("plain"));
        assert_eq!(read_string(br#""a\nb""#).unwrap(), "a\nb");
        assert!(read_string(b"\"tab\there\"").is_err());
        assert!(read_string(b"3").is_err());
    }
}
