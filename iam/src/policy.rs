//! IAM JSON grammar (§2.1). Parsing goes through `serde_json::Value` (syntax errors carry
//! line/column) and then a validation pass that names the offending statement.

use serde_json::{Map, Value};

use crate::conditions::{OpKind, Operator};
use crate::error::Error;

/// Hard cap on document size; IAM's own limits are far lower (6 144 characters for managed policies).
pub const MAX_POLICY_BYTES: usize = 128 * 1024;

/// Policy language version. Variables are expanded only with [`Version::V2012_10_17`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V2012_10_17,
    /// Also the default when `Version` is absent.
    V2008_10_17,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionSpec {
    Action(Vec<String>),
    NotAction(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceSpec {
    Resource(Vec<String>),
    NotResource(Vec<String>),
}

/// One `Operator: { Key: values }` entry. `key` is stored lowercase (key names are case-insensitive).
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub operator: Operator,
    pub key: String,
    /// JSON strings, booleans and numbers, rendered as strings.
    pub values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sid: Option<String>,
    pub effect: Effect,
    pub action: ActionSpec,
    pub resource: ResourceSpec,
    /// ANDed together.
    pub conditions: Vec<Condition>,
    /// `Principal`/`NotPrincipal`, kept verbatim; identity evaluation ignores them.
    pub principal: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Caller-chosen name reported in [`crate::StatementRef`]; empty unless set.
    pub name: String,
    pub version: Version,
    pub id: Option<String>,
    pub statements: Vec<Statement>,
}

impl Policy {
    /// Parses an unnamed policy document.
    pub fn parse(text: &str) -> Result<Policy, Error> {
        Self::parse_named("", text)
    }

    /// Parses a policy document and gives it `name` (used in decisions and audit).
    pub fn parse_named(name: &str, text: &str) -> Result<Policy, Error> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(Error::TooLarge {
                size: text.len(),
                max: MAX_POLICY_BYTES,
            });
        }
        let value: Value = serde_json::from_str(text).map_err(|e| {
            let full = e.to_string();
            let problem = match full.rfind(" at line ") {
                Some(i) => full.get(..i).unwrap_or(&full).to_string(),
                None => full,
            };
            Error::Syntax {
                line: e.line(),
                column: e.column(),
                problem,
            }
        })?;
        let mut policy = from_value(&value)?;
        policy.name = name.to_string();
        Ok(policy)
    }
}

fn invalid(location: impl Into<String>, problem: impl Into<String>) -> Error {
    Error::Invalid {
        location: location.into(),
        problem: problem.into(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn from_value(value: &Value) -> Result<Policy, Error> {
    let obj = value.as_object().ok_or_else(|| {
        invalid(
            "policy",
            format!(
                "the document must be a JSON object, not {}",
                type_name(value)
            ),
        )
    })?;
    for key in obj.keys() {
        if !matches!(key.as_str(), "Version" | "Id" | "Statement") {
            return Err(invalid("policy", format!("unknown element \"{key}\"")));
        }
    }
    let version = match obj.get("Version") {
        None => Version::V2008_10_17,
        Some(Value::String(s)) if s == "2012-10-17" => Version::V2012_10_17,
        Some(Value::String(s)) if s == "2008-10-17" => Version::V2008_10_17,
        Some(Value::String(s)) => {
            return Err(invalid(
                "Version",
                format!("unsupported version \"{s}\" (expected 2012-10-17 or 2008-10-17)"),
            ))
        }
        Some(v) => {
            return Err(invalid(
                "Version",
                format!("must be a string, not {}", type_name(v)),
            ))
        }
    };
    let id = match obj.get("Id") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => {
            return Err(invalid(
                "Id",
                format!("must be a string, not {}", type_name(v)),
            ))
        }
    };
    let raw_statements: Vec<&Value> = match obj.get("Statement") {
        None => return Err(invalid("policy", "missing required element \"Statement\"")),
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v @ Value::Object(_)) => vec![v],
        Some(v) => {
            return Err(invalid(
                "Statement",
                format!(
                    "must be an object or an array of objects, not {}",
                    type_name(v)
                ),
            ))
        }
    };
    if raw_statements.is_empty() {
        return Err(invalid("Statement", "must contain at least one statement"));
    }
    let statements = raw_statements
        .iter()
        .enumerate()
        .map(|(i, v)| parse_statement(i, v))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Policy {
        name: String::new(),
        version,
        id,
        statements,
    })
}

fn parse_statement(index: usize, value: &Value) -> Result<Statement, Error> {
    let mut loc = format!("Statement[{index}]");
    let obj = value.as_object().ok_or_else(|| {
        invalid(
            loc.clone(),
            format!("a statement must be an object, not {}", type_name(value)),
        )
    })?;
    let sid = match obj.get("Sid") {
        None => None,
        Some(Value::String(s)) => {
            loc = format!("Statement[{index}] (Sid \"{s}\")");
            if !s.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(invalid(
                    loc,
                    "Sid may contain only the characters A-Z, a-z and 0-9",
                ));
            }
            Some(s.clone())
        }
        Some(v) => {
            return Err(invalid(
                loc,
                format!("Sid must be a string, not {}", type_name(v)),
            ))
        }
    };
    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "Sid"
                | "Effect"
                | "Action"
                | "NotAction"
                | "Resource"
                | "NotResource"
                | "Condition"
                | "Principal"
                | "NotPrincipal"
        ) {
            return Err(invalid(loc, format!("unknown element \"{key}\"")));
        }
    }
    let effect = match obj.get("Effect") {
        Some(Value::String(s)) if s == "Allow" => Effect::Allow,
        Some(Value::String(s)) if s == "Deny" => Effect::Deny,
        Some(Value::String(s)) => {
            return Err(invalid(
                loc,
                format!("Effect must be \"Allow\" or \"Deny\", not \"{s}\""),
            ))
        }
        Some(v) => {
            return Err(invalid(
                loc,
                format!("Effect must be a string, not {}", type_name(v)),
            ))
        }
        None => return Err(invalid(loc, "missing required element \"Effect\"")),
    };
    let action = match (obj.get("Action"), obj.get("NotAction")) {
        (Some(_), Some(_)) => return Err(invalid(loc, "has both Action and NotAction")),
        (None, None) => return Err(invalid(loc, "needs an Action or a NotAction")),
        (Some(v), None) => ActionSpec::Action(string_list(&loc, "Action", v)?),
        (None, Some(v)) => ActionSpec::NotAction(string_list(&loc, "NotAction", v)?),
    };
    let (ActionSpec::Action(list) | ActionSpec::NotAction(list)) = &action;
    for a in list {
        if a != "*" && !a.contains(':') {
            return Err(invalid(
                loc,
                format!("action \"{a}\" must be \"*\" or look like service:Name"),
            ));
        }
    }
    let resource = match (obj.get("Resource"), obj.get("NotResource")) {
        (Some(_), Some(_)) => return Err(invalid(loc, "has both Resource and NotResource")),
        (None, None) => return Err(invalid(loc, "needs a Resource or a NotResource")),
        (Some(v), None) => ResourceSpec::Resource(string_list(&loc, "Resource", v)?),
        (None, Some(v)) => ResourceSpec::NotResource(string_list(&loc, "NotResource", v)?),
    };
    if obj.contains_key("Principal") && obj.contains_key("NotPrincipal") {
        return Err(invalid(loc, "has both Principal and NotPrincipal"));
    }
    let principal = obj
        .get("Principal")
        .or_else(|| obj.get("NotPrincipal"))
        .cloned();
    let conditions = match obj.get("Condition") {
        None => Vec::new(),
        Some(Value::Object(ops)) => parse_conditions(&loc, ops)?,
        Some(v) => {
            return Err(invalid(
                loc,
                format!("Condition must be an object, not {}", type_name(v)),
            ))
        }
    };
    Ok(Statement {
        sid,
        effect,
        action,
        resource,
        conditions,
        principal,
    })
}

fn string_list(loc: &str, element: &str, v: &Value) -> Result<Vec<String>, Error> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => {
            if items.is_empty() {
                return Err(invalid(
                    loc,
                    format!("{element} must not be an empty array"),
                ));
            }
            items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(invalid(
                        loc,
                        format!(
                            "{element} entries must be strings, found {}",
                            type_name(other)
                        ),
                    )),
                })
                .collect()
        }
        other => Err(invalid(
            loc,
            format!(
                "{element} must be a string or an array of strings, not {}",
                type_name(other)
            ),
        )),
    }
}

fn scalar(loc: &str, op: &str, key: &str, v: &Value) -> Result<String, Error> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(invalid(
            loc,
            format!(
                "Condition {op} {key}: values must be strings, booleans or numbers, found {}",
                type_name(other)
            ),
        )),
    }
}

fn parse_conditions(loc: &str, ops: &Map<String, Value>) -> Result<Vec<Condition>, Error> {
    let mut out = Vec::new();
    for (op_name, keys) in ops {
        let operator = Operator::parse(op_name).map_err(|problem| {
            invalid(loc, format!("Condition operator \"{op_name}\": {problem}"))
        })?;
        let keys = keys.as_object().ok_or_else(|| {
            invalid(
                loc,
                format!(
                    "Condition {op_name} must map keys to values, not be {}",
                    type_name(keys)
                ),
            )
        })?;
        for (key, values) in keys {
            let values = match values {
                Value::Array(items) => items
                    .iter()
                    .map(|v| scalar(loc, op_name, key, v))
                    .collect::<Result<Vec<_>, _>>()?,
                v => vec![scalar(loc, op_name, key, v)?],
            };
            if operator.kind == OpKind::Null {
                for v in &values {
                    if !v.eq_ignore_ascii_case("true") && !v.eq_ignore_ascii_case("false") {
                        return Err(invalid(
                            loc,
                            format!(
                                "Condition Null {key}: value must be true or false, not \"{v}\""
                            ),
                        ));
                    }
                }
            }
            out.push(Condition {
                operator: operator.clone(),
                key: key.to_lowercase(),
                values,
            });
        }
    }
    Ok(out)
}
