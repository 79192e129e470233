//! Splits template text into tokens the way Go's `text/template/parse` lexer does: text
//! between `{{ }}` actions, trim markers (`{{- ` and ` -}}`, the space is required),
//! comments (`{{/* */}}`), and inside actions fields, variables, identifiers, keywords,
//! numbers, quoted, raw and character strings.

use super::SyntaxError;

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Tok {
    /// Text outside actions, already trimmed by neighbouring trim markers.
    Text(String),
    Open,
    Close,
    /// `.name` (without the dot).
    Field(String),
    /// `$name` or `$` (with the dollar).
    Variable(String),
    Ident(String),
    Keyword(Keyword),
    Bool(bool),
    Nil,
    Dot,
    /// A number literal as written (`0x1F`, `1_000`, `1e3`).
    Number(String),
    /// A character constant's value (`'a'` is 97).
    Char(i64, String),
    /// A quoted or raw string's value.
    Str(String),
    Pipe,
    LParen,
    RParen,
    Declare,
    Assign,
    Comma,
    Eof,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Keyword {
    Block,
    Break,
    Continue,
    Define,
    Else,
    End,
    If,
    Range,
    Template,
    With,
}

/// A token, where it starts (byte offset), and whether space came right before it
/// (`(x).a` reads a field of the parenthesis, `(x) .a` is a second argument).
#[derive(Clone, Debug)]
pub(crate) struct Token {
    pub(crate) tok: Tok,
    pub(crate) pos: usize,
    pub(crate) spaced: bool,
}

/// Go's notion of space inside actions and next to trim markers.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_alnum(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

pub(crate) fn lex(src: &str) -> Result<Vec<Token>, SyntaxError> {
    let mut lx = Lexer {
        src,
        pos: 0,
        out: Vec::new(),
        trim_next_text: false,
    };
    lx.run()?;
    Ok(lx.out)
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    out: Vec<Token>,
    /// The last action ended with ` -}}`: the next text loses its leading space.
    trim_next_text: bool,
}

impl Lexer<'_> {
    fn err(&self, pos: usize, message: impl Into<String>) -> SyntaxError {
        SyntaxError::at(self.src, pos, message)
    }

    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn push(&mut self, tok: Tok, pos: usize, spaced: bool) {
        self.out.push(Token { tok, pos, spaced });
    }

    fn emit_text(&mut self, mut text: &str, pos: usize, trim_right: bool) {
        if std::mem::take(&mut self.trim_next_text) {
            text = text.trim_start_matches(is_space);
        }
        if trim_right {
            text = text.trim_end_matches(is_space);
        }
        if !text.is_empty() {
            self.push(Tok::Text(text.to_string()), pos, false);
        }
    }

    fn run(&mut self) -> Result<(), SyntaxError> {
        loop {
            let start = self.pos;
            let Some(found) = self.rest().find("{{") else {
                let text = &self.src[start..];
                self.emit_text(text, start, false);
                self.push(Tok::Eof, self.src.len(), false);
                return Ok(());
            };
            let open = start + found;
            let after = &self.src[open + 2..];
            let trim_left = after.starts_with('-') && after[1..].starts_with(is_space);
            let text = &self.src[start..open];
            self.emit_text(text, start, trim_left);
            self.pos = open + 2 + if trim_left { 2 } else { 0 };
            if self.rest().starts_with("/*") {
                self.comment(open)?;
                continue;
            }
            self.push(Tok::Open, open, false);
            self.action()?;
        }
    }

    /// `/* ... */` up to the closing delimiter, which must follow at once.
    fn comment(&mut self, open: usize) -> Result<(), SyntaxError> {
        let Some(end) = self.rest()[2..].find("*/") else {
            return Err(self.err(open, "unclosed comment"));
        };
        self.pos += 2 + end + 2;
        if self.rest().starts_with("}}") {
            self.pos += 2;
        } else if self.rest().starts_with(" -}}")
            || (self.rest().starts_with(is_space) && self.rest()[1..].starts_with("-}}"))
        {
            self.pos += 4;
            self.trim_next_text = true;
        } else {
            return Err(self.err(open, "comment ends before closing delimiter"));
        }
        Ok(())
    }

    /// Closing delimiter here (with its trim marker when there is one)?
    fn at_close(&self) -> Option<(usize, bool)> {
        let r = self.rest();
        if r.starts_with("}}") {
            return Some((2, false));
        }
        let mut chars = r.chars();
        if let Some(c) = chars.next()
            && is_space(c)
            && chars.as_str().starts_with("-}}")
        {
            return Some((c.len_utf8() + 3, true));
        }
        None
    }

    fn action(&mut self) -> Result<(), SyntaxError> {
        let mut spaced = true;
        let mut parens = 0usize;
        loop {
            if let Some((len, trim)) = self.at_close() {
                if parens > 0 {
                    return Err(self.err(self.pos, "unclosed left paren"));
                }
                self.push(Tok::Close, self.pos, spaced);
                self.pos += len;
                self.trim_next_text = trim;
                return Ok(());
            }
            let start = self.pos;
            let Some(c) = self.peek() else {
                return Err(self.err(start, "unclosed action"));
            };
            if is_space(c) {
                self.pos += c.len_utf8();
                spaced = true;
                continue;
            }
            let tok = match c {
                '=' => {
                    self.pos += 1;
                    Tok::Assign
                }
                ':' => {
                    if !self.rest().starts_with(":=") {
                        return Err(self.err(start, "expected :="));
                    }
                    self.pos += 2;
                    Tok::Declare
                }
                '|' => {
                    self.pos += 1;
                    Tok::Pipe
                }
                ',' => {
                    self.pos += 1;
                    Tok::Comma
                }
                '(' => {
                    self.pos += 1;
                    parens += 1;
                    Tok::LParen
                }
                ')' => {
                    if parens == 0 {
                        return Err(self.err(start, "unexpected right paren"));
                    }
                    self.pos += 1;
                    parens -= 1;
                    Tok::RParen
                }
                '"' => self.quoted()?,
                '`' => self.raw()?,
                '\'' => self.char_constant()?,
                '$' => {
                    self.pos += 1;
                    let name = self.word();
                    Tok::Variable(format!("${name}"))
                }
                '.' => {
                    let next = self.rest()[1..].chars().next();
                    match next {
                        Some(d) if d.is_ascii_digit() => self.number()?,
                        Some(a) if is_alnum(a) => {
                            self.pos += 1;
                            Tok::Field(self.word().to_string())
                        }
                        _ => {
                            self.pos += 1;
                            Tok::Dot
                        }
                    }
                }
                '+' | '-' | '0'..='9' => self.number()?,
                c if is_alnum(c) => {
                    let word = self.word();
                    match word {
                        "true" => Tok::Bool(true),
                        "false" => Tok::Bool(false),
                        "nil" => Tok::Nil,
                        "block" => Tok::Keyword(Keyword::Block),
                        "break" => Tok::Keyword(Keyword::Break),
                        "continue" => Tok::Keyword(Keyword::Continue),
                        "define" => Tok::Keyword(Keyword::Define),
                        "else" => Tok::Keyword(Keyword::Else),
                        "end" => Tok::Keyword(Keyword::End),
                        "if" => Tok::Keyword(Keyword::If),
                        "range" => Tok::Keyword(Keyword::Range),
                        "template" => Tok::Keyword(Keyword::Template),
                        "with" => Tok::Keyword(Keyword::With),
                        w => Tok::Ident(w.to_string()),
                    }
                }
                other => {
                    return Err(self.err(
                        start,
                        format!("unrecognized character in action: {other:?}"),
                    ));
                }
            };
            // A word must end at a delimiter: `.a-b` is not a field followed by `-b`.
            if matches!(
                tok,
                Tok::Ident(_)
                    | Tok::Field(_)
                    | Tok::Variable(_)
                    | Tok::Bool(_)
                    | Tok::Nil
                    | Tok::Keyword(_)
            ) && let Some(n) = self.peek()
                && !(is_space(n) || matches!(n, '.' | ',' | '|' | ':' | '=' | ')' | '(' | '}'))
            {
                return Err(self.err(self.pos, format!("bad character {n:?}")));
            }
            self.push(tok, start, spaced);
            spaced = false;
        }
    }

    fn word(&mut self) -> &str {
        let start = self.pos;
        let len = self
            .rest()
            .find(|c: char| !is_alnum(c))
            .unwrap_or(self.rest().len());
        self.pos += len;
        &self.src[start..start + len]
    }

    fn number(&mut self) -> Result<Tok, SyntaxError> {
        let start = self.pos;
        let bytes = self.src.as_bytes();
        let mut i = self.pos;
        let at = |i: usize| bytes.get(i).copied().unwrap_or(0);
        if matches!(at(i), b'+' | b'-') {
            i += 1;
        }
        let mut digits: &[u8] = b"0123456789_";
        let mut exp: &[u8] = b"eE";
        if at(i) == b'0' {
            match at(i + 1) {
                b'x' | b'X' => {
                    i += 2;
                    digits = b"0123456789abcdefABCDEF_";
                    exp = b"pP";
                }
                b'o' | b'O' => {
                    i += 2;
                    digits = b"01234567_";
                    exp = b"";
                }
                b'b' | b'B' => {
                    i += 2;
                    digits = b"01_";
                    exp = b"";
                }
                _ => {}
            }
        }
        while digits.contains(&at(i)) {
            i += 1;
        }
        if at(i) == b'.' {
            i += 1;
            while digits.contains(&at(i)) {
                i += 1;
            }
        }
        if !exp.is_empty() && exp.contains(&at(i)) {
            i += 1;
            if matches!(at(i), b'+' | b'-') {
                i += 1;
            }
            while at(i).is_ascii_digit() || at(i) == b'_' {
                i += 1;
            }
        }
        if at(i) == b'i' {
            i += 1;
        }
        let next = self.src[i..].chars().next();
        if next.is_some_and(is_alnum)
            || i == start
            || (i == start + 1 && matches!(at(start), b'+' | b'-'))
        {
            return Err(self.err(
                start,
                format!(
                    "bad number syntax: {:?}",
                    &self.src[start..i + next.map_or(0, char::len_utf8)]
                ),
            ));
        }
        self.pos = i;
        Ok(Tok::Number(self.src[start..i].to_string()))
    }

    fn quoted(&mut self) -> Result<Tok, SyntaxError> {
        let start = self.pos;
        let mut chars = self.rest().char_indices().skip(1);
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' if chars.next().is_none() => break,
                '\\' => {}
                '\n' => break,
                '"' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let Some(end) = end else {
            return Err(self.err(start, "unterminated quoted string"));
        };
        let body = &self.rest()[1..end];
        let value = unquote(body, '"').map_err(|m| self.err(start, m))?;
        self.pos += end + 1;
        Ok(Tok::Str(value))
    }

    fn raw(&mut self) -> Result<Tok, SyntaxError> {
        let start = self.pos;
        let Some(end) = self.rest()[1..].find('`') else {
            return Err(self.err(start, "unterminated raw quoted string"));
        };
        // Go drops carriage returns from raw strings.
        let value = self.rest()[1..1 + end].replace('\r', "");
        self.pos += end + 2;
        Ok(Tok::Str(value))
    }

    fn char_constant(&mut self) -> Result<Tok, SyntaxError> {
        let start = self.pos;
        let mut chars = self.rest().char_indices().skip(1);
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '\n' => break,
                '\'' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let Some(end) = end else {
            return Err(self.err(start, "unterminated character constant"));
        };
        let text = self.rest()[..=end].to_string();
        let value = unquote(&self.rest()[1..end], '\'').map_err(|m| self.err(start, m))?;
        let mut cs = value.chars();
        let (Some(c), None) = (cs.next(), cs.next()) else {
            return Err(self.err(start, format!("malformed character constant: {text}")));
        };
        self.pos += end + 1;
        Ok(Tok::Char(c as i64, text))
    }
}

/// The value of a Go quoted string's body (escapes `\n`, `\x41`, `\101`, `\u00e9`…).
fn unquote(body: &str, quote: char) -> Result<String, String> {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    let bad = || format!("invalid syntax in quoted text {quote}{body}{quote}");
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let e = chars.next().ok_or_else(bad)?;
        let simple = match e {
            'a' => Some('\x07'),
            'b' => Some('\x08'),
            'f' => Some('\x0c'),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            'v' => Some('\x0b'),
            '\\' => Some('\\'),
            '"' if quote == '"' => Some('"'),
            '\'' if quote == '\'' => Some('\''),
            _ => None,
        };
        if let Some(s) = simple {
            out.push(s);
            continue;
        }
        let (len, radix) = match e {
            'x' => (2, 16),
            'u' => (4, 16),
            'U' => (8, 16),
            '0'..='7' => (2, 8),
            _ => return Err(bad()),
        };
        let mut digits = String::new();
        if radix == 8 {
            digits.push(e);
        }
        for _ in 0..len {
            digits.push(chars.next().ok_or_else(bad)?);
        }
        let n = u32::from_str_radix(&digits, radix).map_err(|_| bad())?;
        if e == 'x' || radix == 8 {
            if n > 255 {
                return Err(bad());
            }
            // A byte escape: Go strings may hold any bytes, ours hold UTF-8, so bytes
            // above 0x7f become the character of that code point.
            out.push(char::from_u32(n).ok_or_else(bad)?);
        } else {
            out.push(char::from_u32(n).ok_or_else(bad)?);
        }
    }
    Ok(out)
}
