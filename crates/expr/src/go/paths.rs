//! What a parsed template reads and calls, for validation before anything runs: the
//! functions it names and the paths it reads from the data root, following dot through
//! `with` and variables bound once to a path.

use std::collections::{BTreeSet, HashMap};

use super::parse::{Arg, Branch, Node, Pipe, Tree};

pub(crate) fn functions(tree: &Tree) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let lists = std::iter::once(&tree.root).chain(tree.defines.values());
    for list in lists {
        for node in list {
            node_functions(node, &mut out);
        }
    }
    out
}

fn node_functions(node: &Node, out: &mut BTreeSet<String>) {
    match node {
        Node::Action(p) => pipe_functions(p, out),
        Node::If(b) | Node::With(b) | Node::Range(b) => {
            pipe_functions(&b.pipe, out);
            for n in b.body.iter().chain(b.otherwise.iter().flatten()) {
                node_functions(n, out);
            }
        }
        Node::Template { pipe: Some(p), .. } => pipe_functions(p, out),
        _ => {}
    }
}

fn pipe_functions(p: &Pipe, out: &mut BTreeSet<String>) {
    for cmd in &p.cmds {
        for a in &cmd.args {
            arg_functions(a, out);
        }
    }
}

fn arg_functions(a: &Arg, out: &mut BTreeSet<String>) {
    match a {
        Arg::Func(name) => {
            out.insert(name.clone());
        }
        Arg::Chain(term, _) => arg_functions(term, out),
        Arg::Pipe(p) => pipe_functions(p, out),
        _ => {}
    }
}

/// A path from the root (`Some(["input"])`), or something else (`None`).
type Known = Option<Vec<String>>;

struct Walker {
    out: BTreeSet<String>,
    /// Variables and the root path each was bound to (`None`: not a root path).
    vars: Vec<(String, Known)>,
    /// Names assigned with `=` somewhere: their paths are not trusted.
    reassigned: HashMap<String, ()>,
}

pub(crate) fn field_paths(tree: &Tree) -> BTreeSet<String> {
    let mut w = Walker {
        out: BTreeSet::new(),
        vars: vec![("$".to_string(), Some(Vec::new()))],
        reassigned: HashMap::new(),
    };
    collect_reassigned(&tree.root, &mut w.reassigned);
    let root = Some(Vec::new());
    w.list(&tree.root, &root);
    // Inside a definition, dot and `$` are whatever the caller passed.
    for body in tree.defines.values() {
        w.vars = vec![("$".to_string(), None)];
        collect_reassigned(body, &mut w.reassigned);
        w.list(body, &None);
    }
    w.out
}

fn collect_reassigned(list: &[Node], out: &mut HashMap<String, ()>) {
    for node in list {
        let (pipe, children): (Option<&Pipe>, Vec<&Node>) = match node {
            Node::Action(p) => (Some(p), Vec::new()),
            Node::If(b) | Node::With(b) | Node::Range(b) => (
                Some(&b.pipe),
                b.body.iter().chain(b.otherwise.iter().flatten()).collect(),
            ),
            _ => (None, Vec::new()),
        };
        if let Some(p) = pipe
            && p.is_assign
        {
            for d in &p.decl {
                out.insert(d.clone(), ());
            }
        }
        for c in children {
            collect_reassigned(std::slice::from_ref(c), out);
        }
    }
}

impl Walker {
    fn record(&mut self, base: &Known, path: &[String]) {
        if let Some(base) = base {
            let full: Vec<&str> = base.iter().chain(path).map(String::as_str).collect();
            if !full.is_empty() {
                self.out.insert(full.join("."));
            }
        }
    }

    fn list(&mut self, list: &[Node], dot: &Known) {
        for node in list {
            self.node(node, dot);
        }
    }

    fn node(&mut self, node: &Node, dot: &Known) {
        match node {
            Node::Action(p) => {
                self.pipe(p, dot);
            }
            Node::If(b) => self.branch(b, dot, |_| dot.clone()),
            Node::With(b) => self.branch(b, dot, |value| value),
            Node::Range(b) => {
                let mark = self.vars.len();
                self.pipe_value(&b.pipe, dot);
                for d in &b.pipe.decl {
                    self.vars.push((d.clone(), None));
                }
                self.list(&b.body, &None);
                if let Some(o) = &b.otherwise {
                    self.list(o, dot);
                }
                self.vars.truncate(mark);
            }
            Node::Template { pipe: Some(p), .. } => {
                self.pipe(p, dot);
            }
            _ => {}
        }
    }

    fn branch(&mut self, b: &Branch, dot: &Known, inner: impl Fn(Known) -> Known) {
        let mark = self.vars.len();
        let value = self.pipe(&b.pipe, dot);
        self.list(&b.body, &inner(value));
        if let Some(o) = &b.otherwise {
            self.list(o, dot);
        }
        self.vars.truncate(mark);
    }

    /// Records the pipeline's reads, binds its variables; returns the root path its value
    /// is, when it is one.
    fn pipe(&mut self, p: &Pipe, dot: &Known) -> Known {
        let value = self.pipe_value(p, dot);
        for d in &p.decl {
            let known = if self.reassigned.contains_key(d) {
                None
            } else {
                value.clone()
            };
            if p.is_assign {
                if let Some(slot) = self.vars.iter_mut().rev().find(|(n, _)| n == d) {
                    slot.1 = None;
                }
            } else {
                self.vars.push((d.clone(), known));
            }
        }
        value
    }

    fn pipe_value(&mut self, p: &Pipe, dot: &Known) -> Known {
        let mut value = None;
        for (i, cmd) in p.cmds.iter().enumerate() {
            for a in &cmd.args {
                self.arg(a, dot);
            }
            if let [Arg::Func(name), rest @ ..] = cmd.args.as_slice()
                && name == "field"
            {
                // µTask's `field "a" "b"` reads `.a.b` from the root.
                let keys: Option<Vec<String>> = rest
                    .iter()
                    .map(|a| match a {
                        Arg::Str(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect();
                if let Some(keys) = keys {
                    self.record(&Some(Vec::new()), &keys);
                    if i == 0 && p.cmds.len() == 1 {
                        value = Some(keys);
                        continue;
                    }
                }
            }
            value = if p.cmds.len() == 1 && cmd.args.len() == 1 {
                self.path_of(&cmd.args[0], dot)
            } else {
                None
            };
        }
        value
    }

    fn path_of(&self, a: &Arg, dot: &Known) -> Known {
        match a {
            Arg::Dot => dot.clone(),
            Arg::Field(path) => dot
                .as_ref()
                .map(|d| d.iter().chain(path).cloned().collect()),
            Arg::Variable(name, path) => self
                .var(name)
                .map(|base| base.iter().chain(path).cloned().collect()),
            _ => None,
        }
    }

    fn var(&self, name: &str) -> Known {
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, k)| k.clone())
    }

    fn arg(&mut self, a: &Arg, dot: &Known) {
        match a {
            Arg::Field(path) => self.record(dot, path),
            Arg::Variable(name, path) => {
                let base = self.var(name);
                self.record(&base, path);
            }
            Arg::Chain(term, _) => self.arg(term, dot),
            Arg::Pipe(p) => {
                self.pipe(p, dot);
            }
            Arg::Func(name) if name == "field" => {}
            _ => {}
        }
    }
}
