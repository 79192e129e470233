//! The parse tree of a Go template and the parser that builds it, with Go's rules:
//! `else if`/`else with` chains, `define`/`block` only at the top level, `break` and
//! `continue` only inside `range`, variables used only where declared, and every
//! function name known.

use std::collections::BTreeMap;

use super::SyntaxError;
use super::lex::{Keyword, Tok, Token, lex};

pub(crate) type List = Vec<Node>;

#[derive(Debug, Clone)]
pub(crate) enum Node {
    Text(String),
    Action(Pipe),
    If(Branch),
    With(Branch),
    Range(Branch),
    Break,
    Continue,
    Template {
        pos: usize,
        name: String,
        pipe: Option<Pipe>,
    },
}

/// `if`, `with` and `range`: the pipeline, its body, and what `else` holds (an
/// `else if` is an `if` alone in the else list, as Go builds it).
#[derive(Debug, Clone)]
pub(crate) struct Branch {
    pub(crate) pos: usize,
    pub(crate) pipe: Pipe,
    pub(crate) body: List,
    pub(crate) otherwise: Option<List>,
}

#[derive(Debug, Clone)]
pub(crate) struct Pipe {
    pub(crate) pos: usize,
    /// Variables declared (`$x :=`) or assigned (`$x =`) by this pipeline.
    pub(crate) decl: Vec<String>,
    pub(crate) is_assign: bool,
    pub(crate) cmds: Vec<Command>,
}

#[derive(Debug, Clone)]
pub(crate) struct Command {
    pub(crate) pos: usize,
    pub(crate) args: Vec<Arg>,
}

#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Dot,
    Nil,
    Bool(bool),
    Number(Number),
    Str(String),
    /// `.a.b`: a path from dot.
    Field(Vec<String>),
    /// `$x.a.b`: a variable and a path from it.
    Variable(String, Vec<String>),
    /// A function name.
    Func(String),
    /// `(pipeline).a.b`.
    Chain(Box<Arg>, Vec<String>),
    Pipe(Box<Pipe>),
}

/// A number literal with the readings Go gives it: an integer, a float, or both.
#[derive(Debug, Clone)]
pub(crate) struct Number {
    pub(crate) text: String,
    pub(crate) int: Option<i64>,
    pub(crate) float: Option<f64>,
    /// A character constant (`'a'`): an `int32` when it stands alone.
    pub(crate) is_char: bool,
}

impl Number {
    /// The value of an untyped constant: a float when written as one, an int otherwise.
    pub(crate) fn looks_float(&self) -> bool {
        !self.is_char && !is_hex_int(&self.text) && self.text.contains(['.', 'e', 'E', 'p', 'P'])
    }
}

fn is_hex_int(text: &str) -> bool {
    let t = text.trim_start_matches(['+', '-']);
    (t.starts_with("0x") || t.starts_with("0X")) && !t.contains(['.', 'p', 'P'])
}

/// A parsed template: its main body and the templates it defines.
#[derive(Debug, Clone)]
pub(crate) struct Tree {
    pub(crate) root: List,
    pub(crate) defines: BTreeMap<String, List>,
}

/// Control structures nested deeper than this are refused (the parser and the
/// evaluator recurse once per level).
const MAX_NESTING: usize = 100;

pub(crate) fn parse(
    src: &str,
    check_function: &dyn Fn(&str) -> Result<(), String>,
) -> Result<Tree, SyntaxError> {
    let tokens = lex(src)?;
    let mut p = Parser {
        src,
        tokens,
        at: 0,
        vars: vec!["$".to_string()],
        range_depth: 0,
        depth: 0,
        check_function,
        defines: BTreeMap::new(),
    };
    let root = p.top()?;
    Ok(Tree {
        root,
        defines: p.defines,
    })
}

struct Parser<'a> {
    src: &'a str,
    tokens: Vec<Token>,
    at: usize,
    vars: Vec<String>,
    range_depth: usize,
    depth: usize,
    check_function: &'a dyn Fn(&str) -> Result<(), String>,
    defines: BTreeMap<String, List>,
}

/// What ended a list: `{{end}}`, `{{else}}` (with the position of its `{{`), or the end
/// of the text.
enum Ending {
    End,
    Else(usize),
    Eof,
}

impl Parser<'_> {
    fn err(&self, pos: usize, message: impl Into<String>) -> SyntaxError {
        SyntaxError::at(self.src, pos, message)
    }

    fn peek(&self) -> &Token {
        &self.tokens[self.at.min(self.tokens.len() - 1)]
    }

    fn peek_at(&self, n: usize) -> &Token {
        &self.tokens[(self.at + n).min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if self.at < self.tokens.len() {
            self.at += 1;
        }
        t
    }

    fn expect_close(&mut self, context: &str) -> Result<(), SyntaxError> {
        let t = self.next();
        if t.tok != Tok::Close {
            return Err(self.err(
                t.pos,
                format!("unexpected {} in {context}", describe(&t.tok)),
            ));
        }
        Ok(())
    }

    /// The main template: lists until the end of the text, `define`s taken out.
    fn top(&mut self) -> Result<List, SyntaxError> {
        let mut root = Vec::new();
        loop {
            if self.peek().tok == Tok::Open
                && matches!(self.peek_at(1).tok, Tok::Keyword(Keyword::Define))
            {
                let open = self.next().pos;
                self.next();
                self.define(open)?;
                continue;
            }
            match self.item(&mut root)? {
                Some(Ending::Eof) => return Ok(root),
                Some(Ending::End) => {
                    return Err(self.err(self.tokens[self.at - 2].pos, "unexpected {{end}}"));
                }
                Some(Ending::Else(pos)) => return Err(self.err(pos, "unexpected {{else}}")),
                None => {}
            }
        }
    }

    /// `{{define "name"}} body {{end}}`.
    fn define(&mut self, open: usize) -> Result<(), SyntaxError> {
        let t = self.next();
        let Tok::Str(name) = t.tok else {
            return Err(self.err(t.pos, "expected a quoted template name in define"));
        };
        self.expect_close("define clause")?;
        let saved = std::mem::replace(&mut self.vars, vec!["$".to_string()]);
        let saved_range = std::mem::take(&mut self.range_depth);
        let (body, ending) = self.list()?;
        self.vars = saved;
        self.range_depth = saved_range;
        if !matches!(ending, Ending::End) {
            return Err(self.err(open, format!("unexpected end in define {name:?}")));
        }
        self.add_define(open, name, body)
    }

    fn add_define(&mut self, pos: usize, name: String, body: List) -> Result<(), SyntaxError> {
        // Go lets an empty definition be redefined; a second non-empty one is an error.
        if let Some(old) = self.defines.get(&name)
            && !is_empty_list(old)
            && !is_empty_list(&body)
        {
            return Err(self.err(
                pos,
                format!("template: multiple definition of template {name:?}"),
            ));
        }
        if !self
            .defines
            .get(&name)
            .is_some_and(|old| is_empty_list(&body) && !is_empty_list(old))
        {
            self.defines.insert(name, body);
        }
        Ok(())
    }

    /// Items up to `{{end}}`, `{{else}}` or the end of the text.
    fn list(&mut self) -> Result<(List, Ending), SyntaxError> {
        let mut list = Vec::new();
        loop {
            if let Some(ending) = self.item(&mut list)? {
                return Ok((list, ending));
            }
        }
    }

    /// One text or action into `list`, or what ends the list.
    fn item(&mut self, list: &mut List) -> Result<Option<Ending>, SyntaxError> {
        let t = self.next();
        match t.tok {
            Tok::Eof => Ok(Some(Ending::Eof)),
            Tok::Text(s) => {
                list.push(Node::Text(s));
                Ok(None)
            }
            Tok::Open => {
                let open = t.pos;
                let kw = match self.peek().tok {
                    Tok::Keyword(k) => Some(k),
                    _ => None,
                };
                match kw {
                    Some(Keyword::End) => {
                        self.next();
                        self.expect_close("end")?;
                        Ok(Some(Ending::End))
                    }
                    Some(Keyword::Else) => {
                        self.next();
                        // `{{else if ...}}` and `{{else with ...}}` keep their keyword for
                        // the caller, which reads it as a nested branch.
                        if !matches!(
                            self.peek().tok,
                            Tok::Keyword(Keyword::If) | Tok::Keyword(Keyword::With)
                        ) {
                            self.expect_close("else")?;
                        }
                        Ok(Some(Ending::Else(open)))
                    }
                    Some(k) => {
                        self.next();
                        self.keyword(k, open, list)?;
                        Ok(None)
                    }
                    None => {
                        let pipe = self.pipeline("command", true)?;
                        list.push(Node::Action(pipe));
                        Ok(None)
                    }
                }
            }
            other => Err(self.err(t.pos, format!("unexpected {}", describe(&other)))),
        }
    }

    fn keyword(&mut self, k: Keyword, open: usize, list: &mut List) -> Result<(), SyntaxError> {
        match k {
            Keyword::If => list.push(Node::If(self.branch(open, "if")?)),
            Keyword::With => list.push(Node::With(self.branch(open, "with")?)),
            Keyword::Range => list.push(Node::Range(self.branch(open, "range")?)),
            Keyword::Break | Keyword::Continue => {
                if self.range_depth == 0 {
                    let word = if k == Keyword::Break {
                        "break"
                    } else {
                        "continue"
                    };
                    return Err(self.err(open, format!("{{{{{word}}}}} outside {{{{range}}}}")));
                }
                self.expect_close(if k == Keyword::Break {
                    "break"
                } else {
                    "continue"
                })?;
                list.push(if k == Keyword::Break {
                    Node::Break
                } else {
                    Node::Continue
                });
            }
            Keyword::Template => {
                let t = self.next();
                let Tok::Str(name) = t.tok else {
                    return Err(
                        self.err(t.pos, "expected a quoted template name in template clause")
                    );
                };
                let pipe = if self.peek().tok == Tok::Close {
                    self.next();
                    None
                } else {
                    Some(self.pipeline("template clause", false)?)
                };
                list.push(Node::Template {
                    pos: open,
                    name,
                    pipe,
                });
            }
            Keyword::Block => {
                let t = self.next();
                let Tok::Str(name) = t.tok else {
                    return Err(self.err(t.pos, "expected a quoted template name in block clause"));
                };
                let pipe = self.pipeline("block clause", false)?;
                let saved = std::mem::replace(&mut self.vars, vec!["$".to_string()]);
                let saved_range = std::mem::take(&mut self.range_depth);
                self.enter(open)?;
                let (body, ending) = self.list()?;
                self.depth -= 1;
                self.vars = saved;
                self.range_depth = saved_range;
                if !matches!(ending, Ending::End) {
                    return Err(self.err(open, format!("unexpected end in block {name:?}")));
                }
                self.add_define(open, name.clone(), body)?;
                list.push(Node::Template {
                    pos: open,
                    name,
                    pipe: Some(pipe),
                });
            }
            Keyword::Define => {
                return Err(self.err(open, "{{define}} is only allowed at the top level"));
            }
            Keyword::Else | Keyword::End => unreachable!("handled by item"),
        }
        Ok(())
    }

    fn enter(&mut self, pos: usize) -> Result<(), SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(self.err(
                pos,
                format!("control structures nested deeper than {MAX_NESTING}"),
            ));
        }
        Ok(())
    }

    /// The rest of `{{if pipeline}} body [{{else}} body] {{end}}` (and `with`, `range`).
    fn branch(&mut self, open: usize, word: &'static str) -> Result<Branch, SyntaxError> {
        self.enter(open)?;
        let scope = self.vars.len();
        let pipe = self.pipeline(word, false)?;
        if word == "range" {
            self.range_depth += 1;
        }
        let (body, ending) = self.list()?;
        if word == "range" {
            self.range_depth -= 1;
        }
        let otherwise = match ending {
            Ending::End => None,
            Ending::Eof => {
                return Err(self.err(
                    open,
                    format!("unexpected EOF: {{{{{word}}}}} has no {{{{end}}}}"),
                ));
            }
            Ending::Else(else_pos) => {
                let chained = match self.peek().tok {
                    Tok::Keyword(Keyword::If) if word == "if" => Some("if"),
                    Tok::Keyword(Keyword::With) if word == "with" => Some("with"),
                    Tok::Keyword(_)
                        if matches!(self.peek().tok, Tok::Keyword(Keyword::If | Keyword::With)) =>
                    {
                        return Err(self.err(
                            else_pos,
                            format!(
                                "{{{{else {}}}}} in a {{{{{word}}}}}",
                                describe(&self.peek().tok)
                            ),
                        ));
                    }
                    _ => None,
                };
                if let Some(inner) = chained {
                    // `{{else if x}}…{{end}}` is `{{else}}{{if x}}…{{end}}{{end}}`: the
                    // nested branch consumes the single `{{end}}`.
                    self.next();
                    let nested = self.branch(else_pos, inner)?;
                    Some(vec![if inner == "if" {
                        Node::If(nested)
                    } else {
                        Node::With(nested)
                    }])
                } else {
                    let (list, ending) = self.list()?;
                    match ending {
                        Ending::End => {}
                        Ending::Else(pos) => {
                            return Err(self.err(
                                pos,
                                format!("expected end; found {{{{else}}}} in {{{{{word}}}}}"),
                            ));
                        }
                        Ending::Eof => {
                            return Err(self.err(
                                open,
                                format!("unexpected EOF: {{{{{word}}}}} has no {{{{end}}}}"),
                            ));
                        }
                    }
                    Some(list)
                }
            }
        };
        self.vars.truncate(scope);
        self.depth -= 1;
        Ok(Branch {
            pos: open,
            pipe,
            body,
            otherwise,
        })
    }

    /// A pipeline up to the closing delimiter (or the closing parenthesis when `in_paren`
    /// is false and the caller is a parenthesised pipeline: see [`Parser::operand`]).
    fn pipeline(&mut self, context: &str, allow_assign_only: bool) -> Result<Pipe, SyntaxError> {
        let _ = allow_assign_only;
        let pos = self.peek().pos;
        let mut pipe = Pipe {
            pos,
            decl: Vec::new(),
            is_assign: false,
            cmds: Vec::new(),
        };
        self.declarations(&mut pipe, context)?;
        loop {
            match self.peek().tok {
                Tok::Close => {
                    self.next();
                    break;
                }
                Tok::RParen if context == "parenthesized pipeline" => {
                    self.next();
                    break;
                }
                _ => {}
            }
            let cmd = self.command(context)?;
            pipe.cmds.push(cmd);
            match self.peek().tok {
                Tok::Pipe => {
                    self.next();
                    if matches!(self.peek().tok, Tok::Close | Tok::RParen) {
                        return Err(self.err(
                            self.peek().pos,
                            format!("missing command after | in {context}"),
                        ));
                    }
                }
                Tok::Close => {}
                Tok::RParen if context == "parenthesized pipeline" => {}
                _ => {
                    let t = self.peek().clone();
                    return Err(self.err(
                        t.pos,
                        format!("unexpected {} in {context}", describe(&t.tok)),
                    ));
                }
            }
        }
        if pipe.cmds.is_empty() {
            return Err(self.err(pos, format!("missing value for {context}")));
        }
        for (i, cmd) in pipe.cmds.iter().enumerate().skip(1) {
            if !matches!(
                cmd.args[0],
                Arg::Func(_) | Arg::Field(_) | Arg::Variable(_, _) | Arg::Chain(_, _)
            ) {
                return Err(self.err(
                    cmd.pos,
                    format!("non executable command in pipeline stage {}", i + 1),
                ));
            }
        }
        // Declared variables are visible from here on (Go declares them after the
        // pipeline, so `{{$x := $x}}` needs an outer `$x`).
        if !pipe.is_assign {
            self.vars.extend(pipe.decl.iter().cloned());
        }
        Ok(pipe)
    }

    /// `$x :=`, `$x =`, and in `range` `$i, $v :=`.
    fn declarations(&mut self, pipe: &mut Pipe, context: &str) -> Result<(), SyntaxError> {
        let Tok::Variable(first) = self.peek().tok.clone() else {
            return Ok(());
        };
        let second_is = |p: &Parser, n: usize| p.peek_at(n).tok.clone();
        match second_is(self, 1) {
            Tok::Declare | Tok::Assign => {
                let assign = second_is(self, 1) == Tok::Assign;
                let pos = self.peek().pos;
                self.at += 2;
                if assign && !self.vars.contains(&first) {
                    return Err(self.err(pos, format!("undefined variable {first:?}")));
                }
                pipe.decl.push(first);
                pipe.is_assign = assign;
            }
            Tok::Comma if context == "range" => {
                let Tok::Variable(second) = second_is(self, 2) else {
                    return Err(
                        self.err(self.peek_at(2).pos, "range can only initialize variables")
                    );
                };
                let op = second_is(self, 3);
                if !matches!(op, Tok::Declare | Tok::Assign) {
                    return Err(self.err(
                        self.peek_at(3).pos,
                        "expected := or = after range variables",
                    ));
                }
                let pos = self.peek().pos;
                self.at += 4;
                if op == Tok::Assign {
                    for v in [&first, &second] {
                        if !self.vars.contains(v) {
                            return Err(self.err(pos, format!("undefined variable {v:?}")));
                        }
                    }
                }
                pipe.decl.push(first);
                pipe.decl.push(second);
                pipe.is_assign = op == Tok::Assign;
            }
            Tok::Comma => {
                return Err(self.err(
                    self.peek_at(1).pos,
                    format!("too many declarations in {context}"),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    fn command(&mut self, context: &str) -> Result<Command, SyntaxError> {
        let pos = self.peek().pos;
        let mut args = Vec::new();
        loop {
            let t = self.peek().clone();
            match t.tok {
                Tok::Close | Tok::Pipe => break,
                Tok::RParen if context == "parenthesized pipeline" => break,
                _ => {}
            }
            if !args.is_empty() && !t.spaced {
                return Err(self.err(t.pos, format!("missing space before {}", describe(&t.tok))));
            }
            args.push(self.operand()?);
        }
        if args.is_empty() {
            return Err(self.err(pos, format!("empty command in {context}")));
        }
        if let Some(Arg::Func(name)) = args.first() {
            let first = match args.get(1) {
                Some(Arg::Str(t)) => Some(t.as_str()),
                _ => None,
            };
            if let Err(message) = super::funcs::check_call(name, first) {
                return Err(self.err(pos, message));
            }
        }
        Ok(Command { pos, args })
    }

    /// A term and the fields read from it (`$x.a.b`, `(pipe).a`).
    fn operand(&mut self) -> Result<Arg, SyntaxError> {
        let t = self.next();
        let term = match t.tok {
            Tok::Dot => Arg::Dot,
            Tok::Nil => Arg::Nil,
            Tok::Bool(b) => Arg::Bool(b),
            Tok::Str(s) => Arg::Str(s),
            Tok::Number(text) => Arg::Number(self.number(t.pos, text)?),
            Tok::Char(value, text) => Arg::Number(Number {
                text,
                int: Some(value),
                float: Some(value as f64),
                is_char: true,
            }),
            Tok::Field(name) => Arg::Field(vec![name]),
            Tok::Variable(name) => {
                if !self.vars.contains(&name) {
                    return Err(self.err(t.pos, format!("undefined variable {name:?}")));
                }
                Arg::Variable(name, Vec::new())
            }
            Tok::Ident(name) => {
                if let Err(message) = (self.check_function)(&name) {
                    return Err(self.err(t.pos, message));
                }
                Arg::Func(name)
            }
            Tok::LParen => {
                self.enter(t.pos)?;
                let pipe = self.pipeline("parenthesized pipeline", false)?;
                self.depth -= 1;
                Arg::Pipe(Box::new(pipe))
            }
            other => {
                return Err(self.err(t.pos, format!("unexpected {} in operand", describe(&other))));
            }
        };
        let mut fields = Vec::new();
        while let Tok::Field(name) = &self.peek().tok {
            if self.peek().spaced {
                break;
            }
            fields.push(name.clone());
            self.next();
        }
        if fields.is_empty() {
            return Ok(term);
        }
        match term {
            Arg::Field(mut first) => {
                first.extend(fields);
                Ok(Arg::Field(first))
            }
            Arg::Variable(name, _) => Ok(Arg::Variable(name, fields)),
            Arg::Pipe(_) | Arg::Func(_) => Ok(Arg::Chain(Box::new(term), fields)),
            _ => Err(self.err(
                t.pos,
                format!(
                    "unexpected . after term {:?}",
                    &self.src[t.pos..self.peek().pos]
                ),
            )),
        }
    }

    /// Reads a number literal as Go does: an integer when it is one (with `0x`, `0o`,
    /// `0b` or a leading `0` for octal), a float otherwise, both when a float is whole.
    fn number(&self, pos: usize, text: String) -> Result<Number, SyntaxError> {
        if text.ends_with('i') {
            return Err(self.err(pos, format!("complex number {text} is not supported")));
        }
        let bad = || self.err(pos, format!("illegal number syntax: {text:?}"));
        let (neg, body) = match text.strip_prefix('-') {
            Some(b) => (true, b),
            None => (false, text.strip_prefix('+').unwrap_or(&text)),
        };
        if body.starts_with('_') || body.ends_with('_') || body.contains("__") {
            return Err(bad());
        }
        let clean = body.replace('_', "");
        let lower = clean.to_ascii_lowercase();
        let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
            (16, d.to_string())
        } else if let Some(d) = lower.strip_prefix("0o") {
            (8, d.to_string())
        } else if let Some(d) = lower.strip_prefix("0b") {
            (2, d.to_string())
        } else if lower.len() > 1
            && lower.starts_with('0')
            && lower.bytes().all(|b| b.is_ascii_digit())
        {
            (8, lower[1..].to_string())
        } else {
            (10, lower.clone())
        };
        let mut int = if digits.bytes().all(|b| b.is_ascii_hexdigit()) && !digits.is_empty() {
            i128::from_str_radix(&digits, radix)
                .ok()
                .map(|v| if neg { -v } else { v })
                .and_then(|v| i64::try_from(v).ok())
        } else {
            None
        };
        let float = if radix == 10 {
            let f: Option<f64> = clean.parse().ok();
            f.map(|f| if neg { -f } else { f })
        } else {
            int.map(|i| i as f64)
        };
        if int.is_none() && float.is_none() {
            return Err(bad());
        }
        if int.is_none() && radix == 10 && !clean.contains(['.', 'e', 'E']) {
            // Too large for an int and written as one.
            return Err(self.err(pos, format!("integer overflow: {text}")));
        }
        if int.is_none()
            && let Some(f) = float
            && f.fract() == 0.0
            && f.abs() < 9.2e18
        {
            int = Some(f as i64);
        }
        Ok(Number {
            text,
            int,
            float,
            is_char: false,
        })
    }
}

fn is_empty_list(list: &List) -> bool {
    list.iter()
        .all(|n| matches!(n, Node::Text(t) if t.trim().is_empty()))
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Text(_) => "text".into(),
        Tok::Open => "{{".into(),
        Tok::Close => "}}".into(),
        Tok::Field(f) => format!("field .{f}"),
        Tok::Variable(v) => format!("variable {v}"),
        Tok::Ident(i) => format!("identifier {i}"),
        Tok::Keyword(k) => format!("keyword {}", format!("{k:?}").to_lowercase()),
        Tok::Bool(b) => format!("{b}"),
        Tok::Nil => "nil".into(),
        Tok::Dot => "dot".into(),
        Tok::Number(n) => format!("number {n}"),
        Tok::Char(_, t) => format!("character {t}"),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Pipe => "|".into(),
        Tok::LParen => "(".into(),
        Tok::RParen => "right paren".into(),
        Tok::Declare => ":=".into(),
        Tok::Assign => "=".into(),
        Tok::Comma => "comma".into(),
        Tok::Eof => "end of template".into(),
    }
}
