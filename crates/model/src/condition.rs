//! Step conditions: `skip` conditions decide before a step runs, `check` conditions after.
//! The comparison of rendered values is pure and lives here; rendering is the engine's.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A condition of a step: when all its assertions hold, the states of `then` are set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: ConditionKind,
    /// All must hold (AND).
    #[serde(rename = "if")]
    pub asserts: Vec<Assert>,
    /// Step name (or `this`) → state to set when the condition holds: DONE, PRUNE,
    /// TO_RETRY, RETRY_NOW, FATAL_ERROR, CLIENT_ERROR or a custom state of that step.
    pub then: BTreeMap<String, String>,
    /// Recorded with the step when the condition holds (templated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Stop evaluating later conditions once this one held.
    #[serde(default)]
    pub r#final: bool,
    /// On a foreach step's skip condition: `children` (the default) evaluates it on each child,
    /// with its `iterator`; `parent` on the foreach step itself, before it expands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreach: Option<ConditionForeach>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConditionForeach {
    /// On each item, with its `iterator` (the default).
    Children,
    /// On the foreach step itself, before it expands.
    Parent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConditionKind {
    /// Decided before the step runs: when it holds, the step does not run.
    Skip,
    /// Decided after the step ran, on its output and metadata.
    Check,
}

/// One comparison of a condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Assert {
    /// The templated value compared.
    pub value: String,
    pub operator: Operator,
    /// What `value` is compared with (templated).
    #[serde(default)]
    pub expected: String,
    /// Separates the items of `expected` for IN and NOTIN (default `,`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_separator: Option<String>,
}

/// How an assertion compares `value` with `expected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Operator {
    /// `value` is the text `expected`.
    Eq,
    /// `value` is not the text `expected`.
    Ne,
    /// Greater than, as numbers.
    Gt,
    /// Less than, as numbers.
    Lt,
    /// Greater than or equal, as numbers.
    Ge,
    /// Less than or equal, as numbers.
    Le,
    /// `value` matches the regular expression `expected`.
    Regexp,
    /// `value` does not match the regular expression `expected`.
    Notregexp,
    /// `value` is one of the items of `expected`.
    In,
    /// `value` is none of the items of `expected`.
    Notin,
}

impl Operator {
    /// Compares a rendered `value` with a rendered `expected`.
    /// GT/LT/GE/LE compare numbers; IN/NOTIN look for `value` in the `expected` list.
    pub fn holds(
        self,
        value: &str,
        expected: &str,
        separator: Option<&str>,
    ) -> Result<bool, String> {
        let num = |s: &str, what: &str| {
            s.trim()
                .parse::<f64>()
                .map_err(|_| format!("{what} {s:?} is not a number"))
        };
        Ok(match self {
            Operator::Eq => value == expected,
            Operator::Ne => value != expected,
            Operator::Gt => num(value, "value")? > num(expected, "expected")?,
            Operator::Lt => num(value, "value")? < num(expected, "expected")?,
            Operator::Ge => num(value, "value")? >= num(expected, "expected")?,
            Operator::Le => num(value, "value")? <= num(expected, "expected")?,
            Operator::Regexp | Operator::Notregexp => {
                let re = regex::Regex::new(expected)
                    .map_err(|e| format!("invalid regex {expected:?}: {e}"))?;
                re.is_match(value) == (self == Operator::Regexp)
            }
            Operator::In | Operator::Notin => {
                let sep = separator.unwrap_or(",");
                let found = expected.split(sep).any(|item| item.trim() == value.trim());
                found == (self == Operator::In)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators() {
        use Operator::*;
        assert!(Eq.holds("a", "a", None).unwrap());
        assert!(Ne.holds("a", "b", None).unwrap());
        assert!(Gt.holds("10", "9", None).unwrap());
        assert!(!Lt.holds("10", "9", None).unwrap());
        assert!(Ge.holds("1.5", "1.5", None).unwrap());
        assert!(Le.holds("-1", "0", None).unwrap());
        assert!(Gt.holds("x", "1", None).is_err());
        assert!(
            Regexp
                .holds("refs/heads/main", "^refs/heads/", None)
                .unwrap()
        );
        assert!(Notregexp.holds("v1", "^refs/", None).unwrap());
        assert!(Regexp.holds("a", "(", None).is_err());
        assert!(In.holds("b", "a, b ,c", None).unwrap());
        assert!(Notin.holds("d", "a|b", Some("|")).unwrap());
    }

    /// Each numeric operator on both sides of its edge and on it: `holds` must tell `<` from
    /// `<=` and `>` from `>=` (each line was a surviving mutant).
    #[test]
    fn numeric_operators_at_their_edges() {
        use Operator::*;
        let table = [
            // (value, expected): below, equal, above
            (Gt, [false, false, true]),
            (Ge, [false, true, true]),
            (Lt, [true, false, false]),
            (Le, [true, true, false]),
        ];
        for (op, want) in table {
            for ((value, expected), want) in [("1", "2"), (" 2 ", "2.0"), ("3", "2")]
                .into_iter()
                .zip(want)
            {
                assert_eq!(
                    op.holds(value, expected, None),
                    Ok(want),
                    "{op:?} {value} {expected}"
                );
            }
        }
        assert_eq!(Lt.holds("-0.5", "0", None), Ok(true));
        assert_eq!(
            Le.holds("1", "one", None),
            Err("expected \"one\" is not a number".into())
        );
        assert_eq!(
            Lt.holds("", "1", None),
            Err("value \"\" is not a number".into())
        );
        assert_eq!(Eq.holds("1", "1.0", None), Ok(false), "EQ compares text");
        assert_eq!(In.holds("a", "b,c", None), Ok(false));
        assert_eq!(Notin.holds("b", "b,c", None), Ok(false));
        assert_eq!(Notregexp.holds("refs/x", "^refs/", None), Ok(false));
    }
}
