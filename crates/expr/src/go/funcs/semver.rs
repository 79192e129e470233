//! Sprig's `semver` and `semverCompare`, with the semantics of Masterminds/semver v3
//! (the version µTask's Sprig uses): its loose version syntax (`v1.2`, `1`), its
//! precedence, and its constraint language (`^`, `~`, `x`/`*` wildcards, `>= 1.2, < 3`,
//! `||`, hyphen ranges `1.2 - 1.4.5`). The `semver` crate parses only strict versions and
//! reads constraints as Cargo does, so this follows Masterminds' own rules.

use std::cmp::Ordering;
use std::sync::LazyLock;

use regex::Regex;

use super::super::exec::{Fail, R};
use super::super::value::{GoStruct, IntType, Val};
use super::P::*;
use super::{FuncDef, def, s, text};

pub(super) fn defs() -> Vec<FuncDef> {
    vec![
        def("semver", &[Str], None, |_, a| {
            let v = Version::parse(text(&a[0])).map_err(Fail::msg)?;
            Ok(Val::Struct(GoStruct::Version(v).into()))
        }),
        def("semverCompare", &[Str, Str], None, |e, a| {
            e.budget.steps(text(&a[0]).len() as u64)?;
            let c = Constraints::parse(text(&a[0])).map_err(Fail::msg)?;
            let v = Version::parse(text(&a[1])).map_err(Fail::msg)?;
            Ok(Val::Bool(c.check(&v)))
        }),
    ]
}

/// A `*semver.Version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Version {
    major: u64,
    minor: u64,
    patch: u64,
    pre: String,
    metadata: String,
    original: String,
}

// Go's `\d` and `\s` are ASCII-only; spelled out so Rust's Unicode classes do not widen them.
const SEMVER_RE: &str = r"v?(0|[1-9][0-9]*)(?:\.(0|[1-9][0-9]*))?(?:\.(0|[1-9][0-9]*))?(?:-((?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?";
const CV_RE: &str = r"v?([0-9|x|X|\*]+)(\.[0-9|x|X|\*]+)?(\.[0-9|x|X|\*]+)?(-([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?(\+([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?";
const OPS: &str = r"=||!=|>|<|>=|=>|<=|=<|~|~>|\^";
const WS: &str = r"[\t\n\v\f\r ]";

static VERSION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!("^{SEMVER_RE}$")).expect("version regex"));
static CONSTRAINT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(r"^{WS}*({OPS}){WS}*({CV_RE}){WS}*$")).expect("constraint regex")
});
static RANGE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(r"{WS}*({CV_RE}){WS}+-{WS}+({CV_RE}){WS}*")).expect("range regex")
});
static FIND: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!(r"({OPS}){WS}*({CV_RE})")).expect("find regex"));
static VALID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"^({WS}*({OPS}){WS}*({CV_RE}){WS}*)((?:{WS}+|,{WS}*)({OPS}){WS}*({CV_RE}){WS}*)*$"
    ))
    .expect("valid regex")
});

const ALLOWED: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789";

fn only(s: &str, set: &str) -> bool {
    s.chars().all(|c| set.contains(c))
}

fn digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

impl Version {
    /// `semver.NewVersion`.
    pub(crate) fn parse(v: &str) -> Result<Version, String> {
        let m = VERSION
            .captures(v)
            .ok_or_else(|| "Invalid Semantic Version".to_string())?;
        let seg = |i: usize| -> Result<u64, String> {
            match m.get(i) {
                None => Ok(0),
                Some(g) => g.as_str().parse::<u64>().map_err(|_| {
                    format!(
                        "Error parsing version segment: strconv.ParseUint: parsing {:?}: value out of range",
                        g.as_str()
                    )
                }),
            }
        };
        let version = Version {
            major: seg(1)?,
            minor: seg(2)?,
            patch: seg(3)?,
            pre: m.get(4).map_or("", |g| g.as_str()).to_string(),
            metadata: m.get(5).map_or("", |g| g.as_str()).to_string(),
            original: v.to_string(),
        };
        if !version.pre.is_empty() {
            validate_prerelease(&version.pre)?;
        }
        if !version.metadata.is_empty() {
            validate_metadata(&version.metadata)?;
        }
        Ok(version)
    }

    /// `Version.String`: without a leading `v`, with missing parts as 0.
    pub(crate) fn string(&self) -> String {
        let mut out = format!("{}.{}.{}", self.major, self.minor, self.patch);
        if !self.pre.is_empty() {
            out.push('-');
            out.push_str(&self.pre);
        }
        if !self.metadata.is_empty() {
            out.push('+');
            out.push_str(&self.metadata);
        }
        out
    }

    fn compare(&self, o: &Version) -> Ordering {
        let by_numbers = (self.major, self.minor, self.patch).cmp(&(o.major, o.minor, o.patch));
        if by_numbers != Ordering::Equal {
            return by_numbers;
        }
        match (self.pre.is_empty(), o.pre.is_empty()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => compare_prerelease(&self.pre, &o.pre),
        }
    }

    fn v_prefix(&self) -> &'static str {
        if self.original.starts_with('v') {
            "v"
        } else {
            ""
        }
    }

    fn with_original(mut self, prefix: &str) -> Version {
        self.original = format!("{prefix}{}", self.string());
        self
    }
}

fn validate_prerelease(p: &str) -> Result<(), String> {
    for part in p.split('.') {
        if part.is_empty() {
            return Err("Invalid Metadata string".into());
        } else if digits(part) {
            if part.len() > 1 && part.starts_with('0') {
                return Err("Version segment starts with 0".into());
            }
        } else if !only(part, ALLOWED) {
            return Err("Invalid Prerelease string".into());
        }
    }
    Ok(())
}

fn validate_metadata(m: &str) -> Result<(), String> {
    for part in m.split('.') {
        if part.is_empty() || !only(part, ALLOWED) {
            return Err("Invalid Metadata string".into());
        }
    }
    Ok(())
}

fn compare_prerelease(a: &str, b: &str) -> Ordering {
    let (ap, bp): (Vec<&str>, Vec<&str>) = (a.split('.').collect(), b.split('.').collect());
    for i in 0..ap.len().max(bp.len()) {
        let d = compare_pre_part(
            ap.get(i).copied().unwrap_or(""),
            bp.get(i).copied().unwrap_or(""),
        );
        if d != Ordering::Equal {
            return d;
        }
    }
    Ordering::Equal
}

fn compare_pre_part(s: &str, o: &str) -> Ordering {
    if s == o {
        return Ordering::Equal;
    }
    if s.is_empty() {
        return Ordering::Less;
    }
    if o.is_empty() {
        return Ordering::Greater;
    }
    let (si, oi) = (s.parse::<u64>().ok(), o.parse::<u64>().ok());
    match (si, oi) {
        (None, None) => {
            if s > o {
                Ordering::Greater
            } else {
                Ordering::Less
            }
        }
        (_, None) => Ordering::Less,
        (None, _) => Ordering::Greater,
        (Some(si), Some(oi)) => {
            if si > oi {
                Ordering::Greater
            } else {
                Ordering::Less
            }
        }
    }
}

/// A method or field of a `*semver.Version` read in a template.
pub(crate) fn version_method(v: &Version, name: &str, args: Vec<Val>) -> R<Val> {
    let want = |n: usize| -> R<()> {
        if args.len() == n {
            Ok(())
        } else {
            Err(Fail::msg(format!(
                "wrong number of args for {name}: want {n} got {}",
                args.len()
            )))
        }
    };
    let other = |args: &[Val]| -> R<Version> {
        match args.first() {
            Some(Val::Struct(st)) => match &**st {
                GoStruct::Version(o) => Ok(o.clone()),
                GoStruct::Cert { .. } => Err(Fail::msg(format!(
                    "wrong type for value; expected *semver.Version; got {}",
                    args[0].type_name()
                ))),
            },
            Some(Val::Missing | Val::Nil) | None => {
                Err(Fail::msg("invalid value; expected *semver.Version"))
            }
            Some(o) => Err(Fail::msg(format!(
                "wrong type for value; expected *semver.Version; got {}",
                o.type_name()
            ))),
        }
    };
    let uint = |n: u64| match i64::try_from(n) {
        Ok(i) => Val::Int(i, IntType::Uint64),
        Err(_) => Val::Number(n.to_string().into()),
    };
    let version = |v: Version| Val::Struct(GoStruct::Version(v).into());
    Ok(match name {
        "Major" => want(0).map(|_| uint(v.major))?,
        "Minor" => want(0).map(|_| uint(v.minor))?,
        "Patch" => want(0).map(|_| uint(v.patch))?,
        "Prerelease" => want(0).map(|_| s(v.pre.as_str()))?,
        "Metadata" => want(0).map(|_| s(v.metadata.as_str()))?,
        "Original" => want(0).map(|_| s(v.original.as_str()))?,
        "String" => want(0).map(|_| s(v.string()))?,
        "IncPatch" | "IncMinor" | "IncMajor" => {
            want(0)?;
            let mut n = v.clone();
            n.pre.clear();
            n.metadata.clear();
            match name {
                "IncPatch" if !v.pre.is_empty() => {}
                "IncPatch" => n.patch = v.patch.wrapping_add(1),
                "IncMinor" => {
                    n.patch = 0;
                    n.minor = v.minor.wrapping_add(1);
                }
                _ => {
                    n.patch = 0;
                    n.minor = 0;
                    n.major = v.major.wrapping_add(1);
                }
            }
            version(n.with_original(v.v_prefix()))
        }
        "SetPrerelease" | "SetMetadata" => {
            want(1)?;
            let Val::Str(t) = &args[0] else {
                return Err(Fail::msg(format!(
                    "wrong type for value; expected string; got {}",
                    args[0].type_name()
                )));
            };
            let mut n = v.clone();
            if name == "SetPrerelease" {
                if !t.is_empty() {
                    validate_prerelease(t).map_err(Fail::msg)?;
                }
                n.pre = t.to_string();
            } else {
                if !t.is_empty() {
                    validate_metadata(t).map_err(Fail::msg)?;
                }
                n.metadata = t.to_string();
            }
            version(n.with_original(v.v_prefix()))
        }
        "Compare" => {
            want(1)?;
            Val::int(match v.compare(&other(&args)?) {
                Ordering::Less => -1,
                Ordering::Equal => 0,
                Ordering::Greater => 1,
            })
        }
        "LessThan" | "LessThanEqual" | "GreaterThan" | "GreaterThanEqual" | "Equal" => {
            want(1)?;
            let c = v.compare(&other(&args)?);
            Val::Bool(match name {
                "LessThan" => c.is_lt(),
                "LessThanEqual" => c.is_le(),
                "GreaterThan" => c.is_gt(),
                "GreaterThanEqual" => c.is_ge(),
                _ => c.is_eq(),
            })
        }
        other => {
            return Err(Fail::msg(format!(
                "can't evaluate field {other} in type *semver.Version"
            )));
        }
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    TildeOrEqual,
    NotEqual,
    Greater,
    Less,
    GreaterEqual,
    LessEqual,
    Tilde,
    Caret,
}

#[derive(Debug)]
struct Constraint {
    con: Version,
    op: Op,
    minor_dirty: bool,
    patch_dirty: bool,
    dirty: bool,
}

/// `semver.Constraints`: alternatives (`||`) of constraints that must all hold.
#[derive(Debug)]
struct Constraints(Vec<Vec<Constraint>>);

fn is_x(s: &str) -> bool {
    matches!(s, "x" | "X" | "*")
}

impl Constraints {
    /// `semver.NewConstraint`.
    fn parse(c: &str) -> Result<Constraints, String> {
        let c = rewrite_range(c);
        let mut ors = Vec::new();
        for part in c.split("||") {
            if !VALID.is_match(part) {
                return Err(format!("improper constraint: {part}"));
            }
            let found: Vec<&str> = FIND.find_iter(part).map(|m| m.as_str()).collect();
            let found = if found.is_empty() { vec![part] } else { found };
            ors.push(
                found
                    .into_iter()
                    .map(Constraint::parse)
                    .collect::<Result<Vec<_>, _>>()?,
            );
        }
        Ok(Constraints(ors))
    }

    fn check(&self, v: &Version) -> bool {
        self.0.iter().any(|all| all.iter().all(|c| c.check(v)))
    }
}

/// Hyphen ranges `a - b` become `>= a, <= b`.
fn rewrite_range(i: &str) -> String {
    let mut out = i.to_string();
    for m in RANGE.captures_iter(i) {
        let (Some(whole), Some(a), Some(b)) = (m.get(0), m.get(1), m.get(11)) else {
            continue;
        };
        let t = format!(">= {}, <= {} ", a.as_str(), b.as_str());
        out = out.replacen(whole.as_str(), &t, 1);
    }
    out
}

impl Constraint {
    fn parse(c: &str) -> Result<Constraint, String> {
        if c.is_empty() {
            return Ok(Constraint {
                con: Version::parse("0.0.0").map_err(|_| "constraint Parser Error")?,
                op: Op::TildeOrEqual,
                minor_dirty: false,
                patch_dirty: false,
                dirty: true,
            });
        }
        let m = CONSTRAINT
            .captures(c)
            .ok_or_else(|| format!("improper constraint: {c}"))?;
        let g = |i: usize| m.get(i).map_or("", |g| g.as_str());
        let op = match g(1) {
            "" | "=" => Op::TildeOrEqual,
            "!=" => Op::NotEqual,
            ">" => Op::Greater,
            "<" => Op::Less,
            ">=" | "=>" => Op::GreaterEqual,
            "<=" | "=<" => Op::LessEqual,
            "~" | "~>" => Op::Tilde,
            _ => Op::Caret,
        };
        let (mut minor_dirty, mut patch_dirty, mut dirty) = (false, false, false);
        let ver = if is_x(g(3)) || g(3).is_empty() {
            dirty = true;
            format!("0.0.0{}", g(6))
        } else if is_x(g(4).trim_start_matches('.')) || g(4).is_empty() {
            minor_dirty = true;
            dirty = true;
            format!("{}.0.0{}", g(3), g(6))
        } else if is_x(g(5).trim_start_matches('.')) || g(5).is_empty() {
            dirty = true;
            patch_dirty = true;
            format!("{}{}.0{}", g(3), g(4), g(6))
        } else {
            g(2).to_string()
        };
        let con = Version::parse(&ver).map_err(|_| "constraint Parser Error".to_string())?;
        Ok(Constraint {
            con,
            op,
            minor_dirty,
            patch_dirty,
            dirty,
        })
    }

    fn check(&self, v: &Version) -> bool {
        let c = &self.con;
        // A prerelease version only satisfies constraints that name a prerelease (an
        // exact `!=` excepted, as in Masterminds/semver).
        if !v.pre.is_empty() && c.pre.is_empty() && (self.op != Op::NotEqual || self.dirty) {
            return false;
        }
        match self.op {
            Op::NotEqual => {
                if self.dirty {
                    if c.major != v.major {
                        return true;
                    }
                    if c.minor != v.minor && !self.minor_dirty {
                        return true;
                    } else if self.minor_dirty {
                        return false;
                    } else if c.patch != v.patch && !self.patch_dirty {
                        return true;
                    } else if self.patch_dirty {
                        if !v.pre.is_empty() || !c.pre.is_empty() {
                            return compare_prerelease(&v.pre, &c.pre) != Ordering::Equal;
                        }
                        return false;
                    }
                }
                v.compare(c) != Ordering::Equal
            }
            Op::Greater => {
                if !self.dirty {
                    return v.compare(c).is_gt();
                }
                if v.major > c.major {
                    true
                } else if v.major < c.major || self.minor_dirty {
                    false
                } else if self.patch_dirty {
                    v.minor > c.minor
                } else {
                    v.compare(c).is_gt()
                }
            }
            Op::Less => v.compare(c).is_lt(),
            Op::GreaterEqual => v.compare(c).is_ge(),
            Op::LessEqual => {
                if !self.dirty {
                    return v.compare(c).is_le();
                }
                !(v.major > c.major
                    || (v.major == c.major && v.minor > c.minor && !self.minor_dirty))
            }
            Op::Tilde => self.tilde(v),
            Op::TildeOrEqual => {
                if self.dirty {
                    self.tilde(v)
                } else {
                    v.compare(c).is_eq()
                }
            }
            Op::Caret => {
                if v.compare(c).is_lt() {
                    return false;
                }
                if c.major > 0 || self.minor_dirty {
                    return v.major == c.major;
                }
                if v.major > 0 {
                    return false;
                }
                if c.minor > 0 || self.patch_dirty {
                    return v.minor == c.minor;
                }
                if v.minor > 0 {
                    return false;
                }
                c.patch == v.patch
            }
        }
    }

    fn tilde(&self, v: &Version) -> bool {
        let c = &self.con;
        if v.compare(c).is_lt() {
            return false;
        }
        if c.major == 0 && c.minor == 0 && c.patch == 0 && !self.minor_dirty && !self.patch_dirty {
            return true;
        }
        if v.major != c.major {
            return false;
        }
        v.minor == c.minor || self.minor_dirty
    }
}
