//! Glob matching for actions and resources (§2.2). Patterns are token lists so that characters
//! produced by variable expansion or `${*}` escapes stay literal.

use crate::evaluation::Context;
use crate::variables;

/// One pattern element: a literal character, `*` (any run, possibly empty) or `?` (one character).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tok {
    Lit(char),
    Any,
    One,
}

/// Tokens for a pattern without variables; `wildcards` decides whether `*`/`?` are special.
pub(crate) fn tokens(s: &str, wildcards: bool) -> Vec<Tok> {
    s.chars().map(|c| tok(c, wildcards)).collect()
}

pub(crate) fn tok(c: char, wildcards: bool) -> Tok {
    match c {
        '*' if wildcards => Tok::Any,
        '?' if wildcards => Tok::One,
        c => Tok::Lit(c),
    }
}

fn char_eq(a: char, b: char, ignore_case: bool) -> bool {
    a == b || (ignore_case && a.to_lowercase().eq(b.to_lowercase()))
}

/// Linear-backtracking glob (no exponential blow-up): remembers only the last `*`.
pub(crate) fn glob(pattern: &[Tok], text: &str, ignore_case: bool) -> bool {
    let text: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while let Some(&tc) = text.get(ti) {
        match pattern.get(pi) {
            Some(Tok::Any) => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some(Tok::One) => {
                pi += 1;
                ti += 1;
                continue;
            }
            Some(Tok::Lit(pc)) if char_eq(*pc, tc, ignore_case) => {
                pi += 1;
                ti += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    while let Some(Tok::Any) = pattern.get(pi) {
        pi += 1;
    }
    pi == pattern.len()
}

pub(crate) fn tokens_to_string(t: &[Tok]) -> String {
    t.iter()
        .map(|t| match t {
            Tok::Lit(c) => *c,
            Tok::Any => '*',
            Tok::One => '?',
        })
        .collect()
}

/// `service:Name` patterns, case-insensitive, with `*` and `?`.
pub fn action_matches(pattern: &str, action: &str) -> bool {
    glob(&tokens(pattern, true), action, true)
}

/// Resource pattern against an ARN without variables (see [`resource_matches_in`]).
pub fn resource_matches(pattern: &str, resource: &str) -> bool {
    resource_matches_with(pattern, resource, |s| Some(tokens(s, true)))
}

/// Resource matching with variable expansion after the 5th colon when `ctx` is given.
pub(crate) fn resource_matches_in(pattern: &str, resource: &str, ctx: Option<&Context>) -> bool {
    match ctx {
        None => resource_matches(pattern, resource),
        Some(ctx) => resource_matches_with(pattern, resource, |s| variables::expand(s, ctx, true)),
    }
}

/// Segment-wise ARN match: `arn`, partition, region and account compare case-insensitively with
/// wildcards, the service compares case-insensitively without wildcards, and the resource id
/// compares case-sensitively with `*` crossing `/` and `:`. `last` expands the resource-id part;
/// `None` means an unresolved variable, so the entry matches nothing.
fn resource_matches_with(
    pattern: &str,
    resource: &str,
    last: impl Fn(&str) -> Option<Vec<Tok>>,
) -> bool {
    if pattern == "*" {
        return true;
    }
    let p: Vec<&str> = pattern.splitn(6, ':').collect();
    let r: Vec<&str> = resource.splitn(6, ':').collect();
    if p.len() < 6 || r.len() < 6 {
        // A malformed ARN pattern matches nothing (its `*` must not swallow segment colons);
        // a non-ARN pattern (e.g. `my-thing*`) is a whole-string, case-sensitive glob.
        if pattern
            .get(..4)
            .is_some_and(|s| s.eq_ignore_ascii_case("arn:"))
        {
            return false;
        }
        return match last(pattern) {
            Some(t) => glob(&t, resource, false),
            None => false,
        };
    }
    for i in 0..5 {
        let (ps, rs) = (
            p.get(i).copied().unwrap_or(""),
            r.get(i).copied().unwrap_or(""),
        );
        let ok = if i == 2 {
            ps.eq_ignore_ascii_case(rs)
        } else {
            glob(&tokens(ps, true), rs, true)
        };
        if !ok {
            return false;
        }
    }
    match last(p.get(5).copied().unwrap_or("")) {
        Some(t) => glob(&t, r.get(5).copied().unwrap_or(""), false),
        None => false,
    }
}

/// ArnEquals/ArnLike: six segments, each matched case-sensitively with wildcards; when either
/// side is not a six-segment ARN, a whole-string case-sensitive glob.
pub(crate) fn arn_condition_matches(pattern: &[Tok], value: &str) -> bool {
    let mut segs: Vec<Vec<Tok>> = vec![Vec::new()];
    for t in pattern {
        match t {
            Tok::Lit(':') if segs.len() < 6 => segs.push(Vec::new()),
            t => {
                if let Some(last) = segs.last_mut() {
                    last.push(*t);
                }
            }
        }
    }
    let vals: Vec<&str> = value.splitn(6, ':').collect();
    if segs.len() < 6 || vals.len() < 6 {
        return glob(pattern, value, false);
    }
    segs.iter().zip(vals.iter()).all(|(p, v)| glob(p, v, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_basics() {
        assert!(glob(&tokens("a*c", true), "abbbc", false));
        assert!(glob(&tokens("a?c", true), "abc", false));
        assert!(!glob(&tokens("a?c", true), "ac", false));
        assert!(glob(&tokens("*", true), "", false));
        assert!(!glob(&tokens("A*", true), "abc", false));
        assert!(glob(&tokens("A*", true), "abc", true));
        assert!(!glob(&tokens("a*", false), "abc", false));
        assert!(glob(&tokens("a*", false), "a*", false));
        assert!(glob(&tokens("*a*b*c*", true), "xxaxxbxxcxx", false));
    }

    #[test]
    fn arn_segments() {
        assert!(resource_matches(
            "arn:aws:ssm:*:*:document/*",
            "arn:aws:ssm:us-east-1::document/AWS-StartSSHSession"
        ));
        assert!(resource_matches(
            "ARN:AWS:SSM:US-EAST-1:*:x",
            "arn:aws:ssm:us-east-1:1:x"
        ));
        assert!(!resource_matches(
            "arn:aws:ssm:*:*:X",
            "arn:aws:ssm:us-east-1:1:x"
        ));
        assert!(!resource_matches(
            "arn:aws:*:*:*:x",
            "arn:aws:ssm:us-east-1:1:x"
        ));
    }
}
