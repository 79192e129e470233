//! Executes a parse tree over a data root with Go's semantics: pipelines pass their
//! value as the last argument, `if`/`with`/`range` scope variables, a missing map key
//! reads as no value (`missingkey=default`, as µTask leaves it), function arguments are
//! checked against the types Go functions declare. Every node, command and iteration
//! costs a step of the [`Budget`]; output stops at [`MAX_RENDERED_BYTES`].

use super::funcs::{self, P};
use super::parse::{Arg, Branch, Command, Node, Number, Pipe, Tree};
use super::value::{Capped, IntType, Val};
use super::{Budget, MAX_DEPTH, Variables};
use crate::MAX_RENDERED_BYTES;

/// Why execution stopped: a budget ran out (`Stop`, never caught or decorated) or an
/// error, with the position of the command that failed once it is known.
#[derive(Debug)]
pub(crate) enum Fail {
    Stop(String),
    Error { pos: Option<usize>, message: String },
}

impl Fail {
    pub(crate) fn msg(message: impl Into<String>) -> Fail {
        Fail::Error {
            pos: None,
            message: message.into(),
        }
    }

    fn at(self, at: usize) -> Fail {
        match self {
            Fail::Error { pos: None, message } => Fail::Error {
                pos: Some(at),
                message,
            },
            other => other,
        }
    }
}

impl From<String> for Fail {
    fn from(message: String) -> Self {
        Fail::msg(message)
    }
}

pub(crate) type R<T> = Result<T, Fail>;

enum Flow {
    Normal,
    Break,
    Continue,
}

pub(crate) struct Exec<'t> {
    tree: &'t Tree,
    /// The data root: what `field` reads and what `$` is in the main template.
    pub(crate) root: Val,
    vars: Vec<(String, Val)>,
    pub(crate) budget: Budget,
    out: Capped,
    pub(crate) depth: usize,
    pub(crate) variables: Option<&'t Variables>,
}

impl<'t> Exec<'t> {
    pub(crate) fn new(
        tree: &'t Tree,
        root: Val,
        budget: Budget,
        variables: Option<&'t Variables>,
        depth: usize,
    ) -> Exec<'t> {
        let cap = MAX_RENDERED_BYTES;
        Exec {
            tree,
            vars: vec![("$".to_string(), root.clone())],
            root,
            budget,
            out: Capped::new(cap),
            depth,
            variables,
        }
    }

    /// Runs the main template; returns the text and what is left of the budget.
    pub(crate) fn run(mut self) -> (R<String>, Budget) {
        let dot = self.root.clone();
        let tree = self.tree;
        let result = self.walk_list(&dot, &tree.root).map(|_| self.out.text);
        (result, self.budget)
    }

    fn write(&mut self, s: &str) -> R<()> {
        self.out.push_str(s).map_err(|_| {
            Fail::Stop(format!(
                "rendering stopped: the rendered text is larger than {} MiB",
                MAX_RENDERED_BYTES >> 20
            ))
        })
    }

    fn walk_list(&mut self, dot: &Val, list: &[Node]) -> R<Flow> {
        for node in list {
            match self.walk(dot, node)? {
                Flow::Normal => {}
                other => return Ok(other),
            }
        }
        Ok(Flow::Normal)
    }

    fn walk(&mut self, dot: &Val, node: &Node) -> R<Flow> {
        self.budget.step()?;
        match node {
            Node::Text(t) => self.write(t)?,
            Node::Action(pipe) => {
                let v = self.pipeline(dot, pipe).map_err(|e| e.at(pipe.pos))?;
                if pipe.decl.is_empty() {
                    self.print(&v)?;
                }
            }
            Node::If(b) => return self.if_with(dot, b, false),
            Node::With(b) => return self.if_with(dot, b, true),
            Node::Range(b) => return self.range(dot, b),
            Node::Break => return Ok(Flow::Break),
            Node::Continue => return Ok(Flow::Continue),
            Node::Template { pos, name, pipe } => {
                let Some(body) = self.tree.defines.get(name) else {
                    return Err(Fail::Error {
                        pos: Some(*pos),
                        message: format!("template {name:?} not defined"),
                    });
                };
                let data = match pipe {
                    Some(p) => self.pipeline(dot, p).map_err(|e| e.at(*pos))?,
                    None => Val::Missing,
                };
                self.enter()?;
                let saved =
                    std::mem::replace(&mut self.vars, vec![("$".to_string(), data.clone())]);
                let result = self.walk_list(&data, body);
                self.vars = saved;
                self.depth -= 1;
                result?;
            }
        }
        Ok(Flow::Normal)
    }

    pub(crate) fn enter(&mut self) -> R<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Fail::Stop(format!(
                "rendering stopped: templates, evaluations and blocks nested deeper than {MAX_DEPTH}"
            )));
        }
        Ok(())
    }

    fn print(&mut self, v: &Val) -> R<()> {
        match v {
            Val::Missing | Val::Nil => self.write("<no value>"),
            Val::Str(s) | Val::Number(s) => {
                let s = s.clone();
                self.write(&s)
            }
            other => {
                let text = self.sprint_one(other)?;
                self.write(&text)
            }
        }
    }

    /// `fmt.Sprint` of one value, within what the rendering may still create.
    pub(crate) fn sprint_one(&mut self, v: &Val) -> R<String> {
        let mut out = Capped::new(self.budget.bytes_left());
        out.write_v(v).map_err(|_| self.budget.stop())?;
        self.budget.take(out.text.len())?;
        Ok(out.text)
    }

    fn if_with(&mut self, dot: &Val, b: &Branch, is_with: bool) -> R<Flow> {
        self.enter()?;
        let flow = self.if_with_inner(dot, b, is_with);
        self.depth -= 1;
        flow
    }

    fn if_with_inner(&mut self, dot: &Val, b: &Branch, is_with: bool) -> R<Flow> {
        let mark = self.vars.len();
        let result = (|| {
            let v = self.pipeline(dot, &b.pipe).map_err(|e| e.at(b.pipe.pos))?;
            if v.truth() {
                let inner = if is_with { v } else { dot.clone() };
                self.walk_list(&inner, &b.body)
            } else if let Some(other) = &b.otherwise {
                self.walk_list(dot, other)
            } else {
                Ok(Flow::Normal)
            }
        })();
        self.vars.truncate(mark);
        result
    }

    fn range(&mut self, dot: &Val, b: &Branch) -> R<Flow> {
        self.enter()?;
        let flow = self.range_inner(dot, b);
        self.depth -= 1;
        flow
    }

    fn range_inner(&mut self, dot: &Val, b: &Branch) -> R<Flow> {
        let mark = self.vars.len();
        let value = self.commands(dot, &b.pipe).map_err(|e| e.at(b.pipe.pos))?;
        let items: Vec<(Val, Val)> = match &value {
            Val::List(items) => {
                self.budget.take(items.len() * 16)?;
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (Val::int(i as i64), v.clone()))
                    .collect()
            }
            Val::Map(m) => {
                let m = m.borrow();
                self.budget.take(m.len() * 16)?;
                m.iter()
                    .map(|(k, v)| (Val::str(k.as_str()), v.clone()))
                    .collect()
            }
            Val::Int(n, _) => {
                if b.pipe.decl.len() > 1 {
                    return Err(Fail::Error {
                        pos: Some(b.pos),
                        message: format!("can't use {n} to iterate over more than one variable"),
                    });
                }
                let n = (*n).max(0);
                return self.range_ints(dot, b, n, mark);
            }
            Val::Missing | Val::Nil => Vec::new(),
            other => {
                let text = self.sprint_one(other)?;
                return Err(Fail::Error {
                    pos: Some(b.pos),
                    message: format!("range can't iterate over {text}"),
                });
            }
        };
        if items.is_empty() {
            return self.range_else(dot, b, mark);
        }
        for (key, elem) in items {
            match self.iteration(b, key, elem)? {
                Flow::Break => break,
                Flow::Normal | Flow::Continue => {}
            }
        }
        self.vars.truncate(mark);
        Ok(Flow::Normal)
    }

    fn range_ints(&mut self, dot: &Val, b: &Branch, n: i64, mark: usize) -> R<Flow> {
        if n == 0 {
            return self.range_else(dot, b, mark);
        }
        for i in 0..n {
            match self.iteration(b, Val::int(i), Val::int(i))? {
                Flow::Break => break,
                Flow::Normal | Flow::Continue => {}
            }
        }
        self.vars.truncate(mark);
        Ok(Flow::Normal)
    }

    fn range_else(&mut self, dot: &Val, b: &Branch, mark: usize) -> R<Flow> {
        let result = match &b.otherwise {
            Some(list) => self.walk_list(dot, list),
            None => Ok(Flow::Normal),
        };
        self.vars.truncate(mark);
        result.map(|f| match f {
            // `break` in a range's else belongs to an enclosing range.
            Flow::Break => Flow::Break,
            other => other,
        })
    }

    fn iteration(&mut self, b: &Branch, key: Val, elem: Val) -> R<Flow> {
        self.budget.step()?;
        let mark = self.vars.len();
        let bind = |this: &mut Self, name: &String, v: Val| {
            if b.pipe.is_assign {
                this.set_var(name, v);
            } else {
                this.vars.push((name.clone(), v));
            }
        };
        match b.pipe.decl.as_slice() {
            [] => {}
            [v] => bind(self, v, elem.clone()),
            [k, v, ..] => {
                bind(self, k, key);
                bind(self, v, elem.clone());
            }
        }
        let flow = self.walk_list(&elem, &b.body);
        self.vars.truncate(mark);
        flow
    }

    fn set_var(&mut self, name: &str, v: Val) {
        if let Some(slot) = self.vars.iter_mut().rev().find(|(n, _)| n == name) {
            slot.1 = v;
        }
    }

    fn var(&self, name: &str) -> R<Val> {
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| Fail::msg(format!("undefined variable: {name}")))
    }

    /// A pipeline's value, its variables declared or assigned.
    fn pipeline(&mut self, dot: &Val, pipe: &Pipe) -> R<Val> {
        let v = self.commands(dot, pipe)?;
        for name in &pipe.decl {
            if pipe.is_assign {
                self.set_var(name, v.clone());
            } else {
                self.vars.push((name.clone(), v.clone()));
            }
        }
        Ok(v)
    }

    /// A pipeline's value without its declarations (`range` binds them per item).
    fn commands(&mut self, dot: &Val, pipe: &Pipe) -> R<Val> {
        // Parenthesised pipelines nest here: they count toward the depth too.
        self.enter()?;
        let v = self.commands_inner(dot, pipe);
        self.depth -= 1;
        v
    }

    fn commands_inner(&mut self, dot: &Val, pipe: &Pipe) -> R<Val> {
        let mut value: Option<Val> = None;
        for cmd in &pipe.cmds {
            let v = self
                .command(dot, cmd, value.take())
                .map_err(|e| e.at(cmd.pos))?;
            value = Some(v.unwrapped());
        }
        Ok(value.unwrap_or(Val::Missing))
    }

    fn command(&mut self, dot: &Val, cmd: &Command, last: Option<Val>) -> R<Val> {
        self.budget.step()?;
        let rest = &cmd.args[1..];
        match &cmd.args[0] {
            Arg::Field(path) => self.field_chain(dot, dot.clone(), path, rest, last),
            Arg::Variable(name, path) => {
                let v = self.var(name)?;
                if path.is_empty() {
                    not_a_function(name, rest, &last)?;
                    Ok(v)
                } else {
                    self.field_chain(dot, v, path, rest, last)
                }
            }
            Arg::Chain(term, path) => {
                let v = self.arg_value(dot, term)?;
                self.field_chain(dot, v, path, rest, last)
            }
            Arg::Func(name) => self.call(dot, name, rest, last),
            Arg::Pipe(p) => {
                not_a_function("parenthesized pipeline", rest, &last)?;
                self.pipeline(dot, p)
            }
            Arg::Dot => {
                not_a_function(".", rest, &last)?;
                Ok(dot.clone())
            }
            Arg::Nil => Err(Fail::msg("nil is not a command")),
            Arg::Bool(b) => {
                not_a_function(&b.to_string(), rest, &last)?;
                Ok(Val::Bool(*b))
            }
            Arg::Str(s) => {
                not_a_function(s, rest, &last)?;
                Ok(Val::str(s.as_str()))
            }
            Arg::Number(n) => {
                not_a_function(&n.text, rest, &last)?;
                Ok(ideal(n))
            }
        }
    }

    /// `.a.b.c` read from `receiver`; arguments are only for the last name, and only a
    /// method takes them.
    fn field_chain(
        &mut self,
        dot: &Val,
        receiver: Val,
        path: &[String],
        args: &[Arg],
        last: Option<Val>,
    ) -> R<Val> {
        let mut v = receiver;
        for (i, name) in path.iter().enumerate() {
            let final_name = i + 1 == path.len();
            if final_name && (!args.is_empty() || last.is_some()) {
                if let Val::Time(t) = &v {
                    let mut vals = Vec::new();
                    for a in args {
                        vals.push(self.arg(dot, a, P::Any)?);
                    }
                    vals.extend(last);
                    return funcs::time_method(self, t, name, vals);
                }
                if let Val::Struct(st) = &v {
                    let st = st.clone();
                    let mut vals = Vec::new();
                    for a in args {
                        vals.push(self.arg(dot, a, P::Any)?);
                    }
                    vals.extend(last);
                    return funcs::struct_method(&st, name, vals);
                }
                if matches!(v, Val::Map(_)) {
                    return Err(Fail::msg(format!(
                        "{name} is not a method but has arguments"
                    )));
                }
            }
            v = self.field(v, name, i > 0)?;
        }
        Ok(v)
    }

    /// One field of `receiver`. A key the map lacks is no value (Go's default
    /// `missingkey`), so reading on through it gives no value too; a key holding null is
    /// a nil interface, which Go refuses to read through. `in_chain`: the receiver was
    /// read from a map, so Go names its type `interface {}` in errors.
    fn field(&mut self, receiver: Val, name: &str, in_chain: bool) -> R<Val> {
        self.budget.step()?;
        match &receiver {
            Val::Missing => Ok(Val::Missing),
            Val::Nil => Err(Fail::msg(format!(
                "nil pointer evaluating interface {{}}.{name}"
            ))),
            Val::Map(m) => Ok(m.borrow().get(name).cloned().unwrap_or(Val::Missing)),
            Val::Time(t) => funcs::time_method(self, t, name, Vec::new()),
            Val::Struct(st) => funcs::struct_method(st, name, Vec::new()),
            other => Err(Fail::msg(format!(
                "can't evaluate field {name} in type {}",
                if in_chain {
                    "interface {}"
                } else {
                    other.type_name()
                }
            ))),
        }
    }

    /// The value of an operand used as an argument, without type checks.
    fn arg_value(&mut self, dot: &Val, arg: &Arg) -> R<Val> {
        self.arg(dot, arg, P::Any)
    }

    /// An argument for a parameter of type `p`: constants take that type as Go's untyped
    /// constants do, other values must already have it.
    pub(crate) fn arg(&mut self, dot: &Val, arg: &Arg, p: P) -> R<Val> {
        let v = match arg {
            Arg::Dot => dot.clone(),
            Arg::Nil => {
                return if p.can_be_nil() {
                    Ok(Val::Nil)
                } else {
                    Err(Fail::msg(format!("cannot assign nil to {}", p.go_name())))
                };
            }
            Arg::Field(path) => self.field_chain(dot, dot.clone(), path, &[], None)?,
            Arg::Variable(name, path) => {
                let v = self.var(name)?;
                self.field_chain(dot, v, path, &[], None)?
            }
            Arg::Chain(term, path) => {
                let v = self.arg_value(dot, term)?;
                self.field_chain(dot, v, path, &[], None)?
            }
            Arg::Pipe(pipe) => self.pipeline(dot, pipe)?,
            Arg::Func(name) => self.call(dot, name, &[], None)?.unwrapped(),
            Arg::Bool(b) => {
                return match p {
                    P::Bool | P::Any => Ok(Val::Bool(*b)),
                    _ => Err(Fail::msg(format!("expected {}; found {b}", p.go_name()))),
                };
            }
            Arg::Str(s) => {
                return match p {
                    P::Str | P::Any => Ok(Val::str(s.as_str())),
                    _ => Err(Fail::msg(format!("expected {}; found {s:?}", p.go_name()))),
                };
            }
            Arg::Number(n) => return number_for(n, p),
        };
        p.check(v)
    }

    fn call(&mut self, dot: &Val, name: &str, args: &[Arg], last: Option<Val>) -> R<Val> {
        let argc = args.len() + usize::from(last.is_some());
        if name == "and" || name == "or" {
            if argc == 0 {
                return Err(Fail::msg(format!(
                    "wrong number of args for {name}: want at least 1 got 0"
                )));
            }
            // Go evaluates `and` and `or` lazily: stop at the first value that decides.
            let mut v = Val::Missing;
            for a in args {
                v = self.arg(dot, a, P::Any)?;
                if v.truth() == (name == "or") {
                    return Ok(v);
                }
            }
            if let Some(l) = last {
                v = l;
            }
            return Ok(v);
        }
        let Some(def) = funcs::lookup(name) else {
            return Err(Fail::msg(format!("function {name:?} not defined")));
        };
        let fixed = def.params.len();
        match def.variadic {
            Some(_) if argc < fixed => {
                return Err(Fail::msg(format!(
                    "wrong number of args for {name}: want at least {fixed} got {argc}"
                )));
            }
            None if argc != fixed => {
                return Err(Fail::msg(format!(
                    "wrong number of args for {name}: want {fixed} got {argc}"
                )));
            }
            _ => {}
        }
        let param = |i: usize| {
            def.params
                .get(i)
                .copied()
                .or(def.variadic)
                .unwrap_or(P::Any)
        };
        let mut vals = Vec::with_capacity(argc);
        for (i, a) in args.iter().enumerate() {
            vals.push(self.arg(dot, a, param(i))?);
        }
        if let Some(l) = last {
            vals.push(param(args.len()).check(l)?);
        }
        self.budget.step()?;
        (def.f)(self, vals).map_err(|e| match e {
            Fail::Error { pos, message } => Fail::Error {
                pos,
                message: format!("error calling {name}: {message}"),
            },
            stop => stop,
        })
    }
}

fn not_a_function(name: &str, args: &[Arg], last: &Option<Val>) -> R<()> {
    if !args.is_empty() || last.is_some() {
        return Err(Fail::msg(format!(
            "can't give argument to non-function {name}"
        )));
    }
    Ok(())
}

/// An untyped constant standing alone: a float when written as one, else an int
/// (`'a'` an `int32`).
pub(crate) fn ideal(n: &Number) -> Val {
    if n.looks_float() {
        return Val::Float(n.float.unwrap_or(f64::NAN));
    }
    match n.int {
        Some(i) if n.is_char => Val::Int(i, IntType::Rune),
        Some(i) => Val::int(i),
        None => Val::Float(n.float.unwrap_or(f64::NAN)),
    }
}

fn number_for(n: &Number, p: P) -> R<Val> {
    match p {
        P::Int => match n.int {
            Some(i) => Ok(Val::Int(i, IntType::Int)),
            None => Err(Fail::msg(format!("expected integer; found {}", n.text))),
        },
        P::Float => match n.float {
            Some(f) => Ok(Val::Float(f)),
            None => Err(Fail::msg(format!("expected float; found {}", n.text))),
        },
        P::Any => Ok(ideal(n)),
        _ => Err(Fail::msg(format!(
            "expected {}; found {}",
            p.go_name(),
            n.text
        ))),
    }
}
