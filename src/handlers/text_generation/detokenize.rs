//! Turning tokens into text as they come: a piece is released only once it
//! decodes to whole characters (a byte-level token can end mid-character),
//! and text that could be the start of a stop string is held back until it
//! is known not to be one.

use tokenizers::Tokenizer;

/// The text of one generation, released piece by piece.
pub(super) struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    tokens: Vec<u32>,
    /// Tokens before this are text already decoded; decoding starts a few
    /// tokens earlier so tokenizers that join words with spaces see context.
    prefix_start: usize,
    read_start: usize,
    /// Decoded text not yet released (it may begin a stop string).
    held: String,
    stops: &'a [String],
}

/// What one token added.
#[derive(Debug, PartialEq)]
pub(super) enum Added {
    /// Text that can be sent (possibly empty).
    Text(String),
    /// A stop string appeared: the text before it, and the generation ends.
    Stopped(String),
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a Tokenizer, stops: &'a [String]) -> TextStream<'a> {
        TextStream {
            tokenizer,
            tokens: Vec::new(),
            prefix_start: 0,
            read_start: 0,
            held: String::new(),
            stops,
        }
    }

    pub fn push(&mut self, token: u32) -> Result<Added, String> {
        self.tokens.push(token);
        let prefix = self.decode(self.prefix_start, self.read_start)?;
        let whole = self.decode(self.prefix_start, self.tokens.len())?;
        if whole.len() <= prefix.len() || whole.ends_with('\u{FFFD}') {
            return Ok(Added::Text(String::new()));
        }
        let new = whole.get(prefix.len()..).unwrap_or_default();
        self.held.push_str(new);
        self.prefix_start = self.read_start;
        self.read_start = self.tokens.len();
        Ok(self.release())
    }

    /// What is still held at the end: released whole (a broken character
    /// decodes to U+FFFD, so even then the text is valid UTF-8).
    pub fn finish(&mut self) -> Result<String, String> {
        let rest = self.decode(self.prefix_start, self.tokens.len())?;
        let prefix = self.decode(self.prefix_start, self.read_start)?;
        let mut out = std::mem::take(&mut self.held);
        out.push_str(rest.get(prefix.len()..).unwrap_or_default());
        Ok(match first_stop(&out, self.stops) {
            Some(at) => out[..at].to_string(),
            None => out,
        })
    }

    /// Releases held text up to where a stop string might begin.
    fn release(&mut self) -> Added {
        if let Some(at) = first_stop(&self.held, self.stops) {
            let before = self.held[..at].to_string();
            self.held.clear();
            return Added::Stopped(before);
        }
        let keep = self
            .stops
            .iter()
            .map(|s| partial_stop(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let rest = self.held.split_off(cut);
        Added::Text(std::mem::replace(&mut self.held, rest))
    }

    fn decode(&self, from: usize, to: usize) -> Result<String, String> {
        self.tokenizer
            .decode(&self.tokens[from..to], false)
            .map_err(|e| format!("the tokenizer could not decode the tokens: {e}"))
    }
}

/// Where the earliest stop string starts in `text`.
fn first_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter_map(|s| text.find(s.as_str())).min()
}

/// The length of the longest end of `text` that is a proper start of `stop`.
fn partial_stop(text: &str, stop: &str) -> usize {
    (1..stop.len())
        .rev()
        .find(|&n| stop.is_char_boundary(n) && text.ends_with(&stop[..n]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_stop_is_held_back() {
        assert_eq!(partial_stop("hello wo", "world"), 2);
        assert_eq!(partial_stop("hello", "world"), 0);
        assert_eq!(partial_stop("abc€", "€x"), "€".len());
        assert_eq!(
            first_stop("a STOP b END", &["END".into(), "STOP".into()]),
            Some(2)
        );
    }
}
