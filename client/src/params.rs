//! `--parameters` in the two forms the AWS CLI accepts: shorthand
//! (`k=v,k2=v2`, `k=[a,b]`, `k=a,b` appending to `k`) and JSON
//! (`{"k":["v"]}` or `{"k":"v"}`). The result is SSM's map of string lists.

use std::collections::BTreeMap;

pub type Parameters = BTreeMap<String, Vec<String>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Error parsing parameter '--parameters': {0}")]
pub struct ParamError(pub String);

pub fn parse_parameters(input: &str) -> Result<Parameters, ParamError> {
    let trimmed = input.trim();
    if trimmed.starts_with('{') {
        return parse_json(trimmed);
    }
    parse_shorthand(trimmed)
}

fn parse_json(input: &str) -> Result<Parameters, ParamError> {
    let value: serde_json::Value =
        serde_json::from_str(input).map_err(|e| ParamError(format!("Invalid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| ParamError("expected a JSON object".into()))?;
    let mut out = Parameters::new();
    for (k, v) in obj {
        let list = match v {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| match i {
                    serde_json::Value::String(s) => Ok(s.clone()),
                    serde_json::Value::Number(n) => Ok(n.to_string()),
                    serde_json::Value::Bool(b) => Ok(b.to_string()),
                    _ => Err(ParamError(format!(
                        "value of {k} must be a string or list of strings"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?,
            serde_json::Value::Number(n) => vec![n.to_string()],
            serde_json::Value::Bool(b) => vec![b.to_string()],
            _ => {
                return Err(ParamError(format!(
                    "value of {k} must be a string or list of strings"
                )))
            }
        };
        out.insert(k.clone(), list);
    }
    Ok(out)
}

/// Splits on commas outside quotes and brackets.
fn split_top_level(input: &str) -> Result<Vec<String>, ParamError> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut depth = 0usize;
    for c in input.chars() {
        match quote {
            Some(q) => {
                cur.push(c);
                if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' => {
                    quote = Some(c);
                    cur.push(c);
                }
                '[' => {
                    depth += 1;
                    cur.push(c);
                }
                ']' => {
                    depth = depth
                        .checked_sub(1)
                        .ok_or_else(|| ParamError("unbalanced ']'".into()))?;
                    cur.push(c);
                }
                ',' if depth == 0 => parts.push(std::mem::take(&mut cur)),
                _ => cur.push(c),
            },
        }
    }
    if quote.is_some() {
        return Err(ParamError("unterminated quote".into()));
    }
    if depth != 0 {
        return Err(ParamError("unbalanced '['".into()));
    }
    parts.push(cur);
    Ok(parts)
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner.to_string();
        }
    }
    s.to_string()
}

/// True when `=` appears before any quote or bracket, i.e. the segment starts a new key.
fn key_split(seg: &str) -> Option<(&str, &str)> {
    let idx = seg.find(['=', '"', '\'', '['])?;
    if seg[idx..].starts_with('=') {
        Some((&seg[..idx], &seg[idx + 1..]))
    } else {
        None
    }
}

fn parse_shorthand(input: &str) -> Result<Parameters, ParamError> {
    let mut out = Parameters::new();
    if input.is_empty() {
        return Ok(out);
    }
    let mut last_key: Option<String> = None;
    for seg in split_top_level(input)? {
        match key_split(&seg) {
            Some((k, v)) => {
                let key = k.trim().to_string();
                if key.is_empty() {
                    return Err(ParamError(format!("missing key in '{seg}'")));
                }
                let v = v.trim();
                let values =
                    if let Some(inner) = v.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                        if inner.trim().is_empty() {
                            Vec::new()
                        } else {
                            split_top_level(inner)?.iter().map(|s| unquote(s)).collect()
                        }
                    } else {
                        vec![unquote(v)]
                    };
                out.entry(key.clone()).or_default().extend(values);
                last_key = Some(key);
            }
            None => {
                let key = last_key
                    .as_ref()
                    .ok_or_else(|| ParamError(format!("expected key=value, got '{seg}'")))?;
                out.entry(key.clone()).or_default().push(unquote(&seg));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &[&str])]) -> Parameters {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn shorthand_pairs() {
        assert_eq!(
            parse_parameters("portNumber=80,localPortNumber=8080").unwrap(),
            p(&[("portNumber", &["80"]), ("localPortNumber", &["8080"])])
        );
    }

    #[test]
    fn shorthand_lists_and_appends() {
        assert_eq!(
            parse_parameters("commands=[\"echo a, b\",ls],x=1,2").unwrap(),
            p(&[("commands", &["echo a, b", "ls"]), ("x", &["1", "2"])])
        );
    }

    #[test]
    fn shorthand_value_with_equals_in_quotes() {
        assert_eq!(
            parse_parameters("cmd='a=b'").unwrap(),
            p(&[("cmd", &["a=b"])])
        );
    }

    #[test]
    fn json_forms_with_commas_in_values() {
        assert_eq!(
            parse_parameters(r#"{"commands":["echo a,b=c", "ls"],"portNumber":"22"}"#).unwrap(),
            p(&[("commands", &["echo a,b=c", "ls"]), ("portNumber", &["22"])])
        );
    }

    #[test]
    fn errors() {
        assert!(parse_parameters("noequals").is_err());
        assert!(parse_parameters("{not json").is_err());
        assert!(parse_parameters(r#"{"a":{"b":1}}"#).is_err());
        assert!(parse_parameters("a=[1,2").is_err());
    }
}
