//! Policy variables (§2.3): `${key}`, `${key, 'default'}` and the `${*}`/`${?}`/`${$}` escapes.
//! Only single-valued context keys resolve; a value with an unresolved variable yields `None`,
//! and the caller treats that entry as matching nothing.

use crate::evaluation::Context;
use crate::matching::{tok, Tok};

/// Expands `s` into pattern tokens. Text around variables keeps wildcard meaning when
/// `wildcards` is set; expanded values and escapes are always literal.
pub(crate) fn expand(s: &str, ctx: &Context, wildcards: bool) -> Option<Vec<Tok>> {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s;
    loop {
        let Some(start) = rest.find("${") else {
            out.extend(rest.chars().map(|c| tok(c, wildcards)));
            return Some(out);
        };
        let (before, from) = rest.split_at(start);
        out.extend(before.chars().map(|c| tok(c, wildcards)));
        let body = from.get(2..).unwrap_or("");
        let Some(end) = body.find('}') else {
            // Unterminated: literal text.
            out.extend(from.chars().map(|c| tok(c, wildcards)));
            return Some(out);
        };
        let inner = body.get(..end).unwrap_or("");
        rest = body.get(end + 1..).unwrap_or("");
        match inner {
            "*" | "?" | "$" => out.extend(inner.chars().map(Tok::Lit)),
            _ => {
                let value = resolve(inner, ctx)?;
                out.extend(value.chars().map(Tok::Lit));
            }
        }
    }
}

fn resolve(inner: &str, ctx: &Context) -> Option<String> {
    let (name, default) = match inner.split_once(',') {
        Some((name, d)) => {
            let d = d.trim();
            let d = d
                .strip_prefix('\'')
                .and_then(|d| d.strip_suffix('\''))
                .map(str::to_string);
            // A malformed default makes the variable unresolvable.
            (name, Some(d?))
        }
        None => (inner, None),
    };
    match ctx.get(name.trim()) {
        Some([one]) => Some(one.clone()),
        _ => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::tokens_to_string;

    #[test]
    fn expands() {
        let ctx = Context::new()
            .with("aws:username", "bob")
            .with("aws:PrincipalTag/team", "red");
        let t = expand("a/${aws:username}/${aws:principaltag/TEAM}", &ctx, true);
        assert_eq!(
            t.map(|t| tokens_to_string(&t)).as_deref(),
            Some("a/bob/red")
        );
        assert_eq!(expand("${aws:nope}", &ctx, true), None);
        let d = expand("${aws:nope, 'x y'}", &ctx, true).map(|t| tokens_to_string(&t));
        assert_eq!(d.as_deref(), Some("x y"));
        assert_eq!(expand("${*}", &ctx, true), Some(vec![Tok::Lit('*')]));
        assert_eq!(expand("${oops", &ctx, false).map(|t| t.len()), Some(6));
    }
}
