//! Condition operators (§2.3). Values of one key are ORed (for negated operators, "none of");
//! keys and operators are ANDed by the caller.

use std::net::IpAddr;

use base64::Engine as _;

use crate::evaluation::Context;
use crate::matching::{arn_condition_matches, glob, tokens, tokens_to_string, Tok};
use crate::policy::Condition;
use crate::variables;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qualifier {
    ForAnyValue,
    ForAllValues,
}

/// The positive form of an operator; negation lives in [`Operator::negated`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    StringEquals,
    StringEqualsIgnoreCase,
    StringLike,
    NumericEquals,
    NumericLessThan,
    NumericLessThanEquals,
    NumericGreaterThan,
    NumericGreaterThanEquals,
    DateEquals,
    DateLessThan,
    DateLessThanEquals,
    DateGreaterThan,
    DateGreaterThanEquals,
    Bool,
    BinaryEquals,
    IpAddress,
    /// ArnEquals and ArnLike behave identically.
    ArnLike,
    Null,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// The name as written in the policy.
    pub name: String,
    pub qualifier: Option<Qualifier>,
    pub kind: OpKind,
    pub negated: bool,
    pub if_exists: bool,
}

impl Operator {
    /// Parses `[ForAnyValue:|ForAllValues:]Name[IfExists]`; names are matched case-insensitively.
    pub fn parse(name: &str) -> Result<Operator, String> {
        let lower = name.to_ascii_lowercase();
        let (qualifier, rest) = if let Some(r) = lower.strip_prefix("foranyvalue:") {
            (Some(Qualifier::ForAnyValue), r)
        } else if let Some(r) = lower.strip_prefix("forallvalues:") {
            (Some(Qualifier::ForAllValues), r)
        } else {
            (None, lower.as_str())
        };
        let (base, if_exists) = match rest.strip_suffix("ifexists") {
            Some(b) => (b, true),
            None => (rest, false),
        };
        use OpKind::*;
        let (kind, negated) = match base {
            "stringequals" => (StringEquals, false),
            "stringnotequals" => (StringEquals, true),
            "stringequalsignorecase" => (StringEqualsIgnoreCase, false),
            "stringnotequalsignorecase" => (StringEqualsIgnoreCase, true),
            "stringlike" => (StringLike, false),
            "stringnotlike" => (StringLike, true),
            "numericequals" => (NumericEquals, false),
            "numericnotequals" => (NumericEquals, true),
            "numericlessthan" => (NumericLessThan, false),
            "numericlessthanequals" => (NumericLessThanEquals, false),
            "numericgreaterthan" => (NumericGreaterThan, false),
            "numericgreaterthanequals" => (NumericGreaterThanEquals, false),
            "dateequals" => (DateEquals, false),
            "datenotequals" => (DateEquals, true),
            "datelessthan" => (DateLessThan, false),
            "datelessthanequals" => (DateLessThanEquals, false),
            "dategreaterthan" => (DateGreaterThan, false),
            "dategreaterthanequals" => (DateGreaterThanEquals, false),
            "bool" => (Bool, false),
            "binaryequals" => (BinaryEquals, false),
            "ipaddress" => (IpAddress, false),
            "notipaddress" => (IpAddress, true),
            "arnequals" | "arnlike" => (ArnLike, false),
            "arnnotequals" | "arnnotlike" => (ArnLike, true),
            "null" => (Null, false),
            _ => return Err("unknown condition operator".to_string()),
        };
        if kind == Null && if_exists {
            return Err("Null has no IfExists form".to_string());
        }
        if kind == Null && qualifier.is_some() {
            return Err("Null takes no ForAnyValue/ForAllValues qualifier".to_string());
        }
        Ok(Operator {
            name: name.to_string(),
            qualifier,
            kind,
            negated,
            if_exists,
        })
    }
}

/// A policy value ready for comparison: token patterns for String/Arn operators (`None` when a
/// variable did not resolve), raw text otherwise.
enum PolicyValue<'a> {
    Pattern(Option<Vec<Tok>>),
    Raw(&'a str),
}

pub(crate) fn evaluate(cond: &Condition, ctx: &Context, variables_enabled: bool) -> bool {
    let op = &cond.operator;
    let present = ctx.get(&cond.key).filter(|v| !v.is_empty());
    if op.kind == OpKind::Null {
        let absent = present.is_none();
        return cond.values.iter().any(|v| {
            if v.eq_ignore_ascii_case("true") {
                absent
            } else {
                !absent
            }
        });
    }
    let Some(request_values) = present else {
        return if op.if_exists {
            true
        } else {
            match op.qualifier {
                Some(Qualifier::ForAllValues) => true,
                Some(Qualifier::ForAnyValue) => false,
                // A missing key: positive operators fail, negated ones hold.
                None => op.negated,
            }
        };
    };
    let policy_values: Vec<PolicyValue> = cond
        .values
        .iter()
        .map(|v| match op.kind {
            OpKind::StringEquals
            | OpKind::StringEqualsIgnoreCase
            | OpKind::StringLike
            | OpKind::ArnLike => {
                let wildcards = matches!(op.kind, OpKind::StringLike | OpKind::ArnLike);
                PolicyValue::Pattern(if variables_enabled {
                    variables::expand(v, ctx, wildcards)
                } else {
                    Some(tokens(v, wildcards))
                })
            }
            _ => PolicyValue::Raw(v),
        })
        .collect();
    let satisfies = |rv: &String| {
        let any = policy_values.iter().any(|pv| pair_matches(op.kind, rv, pv));
        any != op.negated
    };
    match op.qualifier {
        Some(Qualifier::ForAllValues) => request_values.iter().all(satisfies),
        Some(Qualifier::ForAnyValue) => request_values.iter().any(satisfies),
        None if op.negated => request_values.iter().all(satisfies),
        None => request_values.iter().any(satisfies),
    }
}

fn pair_matches(kind: OpKind, rv: &str, pv: &PolicyValue) -> bool {
    let raw = match pv {
        PolicyValue::Pattern(None) => return false,
        PolicyValue::Pattern(Some(t)) => {
            return match kind {
                OpKind::StringEquals => tokens_to_string(t) == rv,
                OpKind::StringEqualsIgnoreCase => {
                    tokens_to_string(t).to_lowercase() == rv.to_lowercase()
                }
                OpKind::StringLike => glob(t, rv, false),
                _ => arn_condition_matches(t, rv),
            }
        }
        PolicyValue::Raw(s) => *s,
    };
    match kind {
        OpKind::NumericEquals
        | OpKind::NumericLessThan
        | OpKind::NumericLessThanEquals
        | OpKind::NumericGreaterThan
        | OpKind::NumericGreaterThanEquals => {
            match (rv.trim().parse::<f64>(), raw.trim().parse::<f64>()) {
                (Ok(r), Ok(p)) if r.is_finite() && p.is_finite() => compare(kind, r, p),
                _ => false,
            }
        }
        OpKind::DateEquals
        | OpKind::DateLessThan
        | OpKind::DateLessThanEquals
        | OpKind::DateGreaterThan
        | OpKind::DateGreaterThanEquals => match (parse_date(rv), parse_date(raw)) {
            (Some(r), Some(p)) => compare(kind, r as f64, p as f64),
            _ => false,
        },
        OpKind::Bool => {
            let (r, p) = (rv.trim(), raw.trim());
            (r.eq_ignore_ascii_case("true") || r.eq_ignore_ascii_case("false"))
                && r.eq_ignore_ascii_case(p)
        }
        OpKind::BinaryEquals => {
            let engine = base64::engine::general_purpose::STANDARD;
            match (engine.decode(rv.trim()), engine.decode(raw.trim())) {
                (Ok(r), Ok(p)) => r == p,
                _ => rv == raw,
            }
        }
        OpKind::IpAddress => ip_in_cidr(rv, raw),
        _ => false,
    }
}

fn compare(kind: OpKind, r: f64, p: f64) -> bool {
    match kind {
        OpKind::NumericEquals | OpKind::DateEquals => r == p,
        OpKind::NumericLessThan | OpKind::DateLessThan => r < p,
        OpKind::NumericLessThanEquals | OpKind::DateLessThanEquals => r <= p,
        OpKind::NumericGreaterThan | OpKind::DateGreaterThan => r > p,
        OpKind::NumericGreaterThanEquals | OpKind::DateGreaterThanEquals => r >= p,
        _ => false,
    }
}

/// `addr` (optionally with a prefix, which is ignored) inside `cidr` (`a.b.c.d/n`, `::/n` or a
/// bare address meaning a full-length prefix). Families must agree.
pub(crate) fn ip_in_cidr(addr: &str, cidr: &str) -> bool {
    let addr = addr.trim();
    let ip = match addr
        .split_once('/')
        .map_or(addr, |(a, _)| a)
        .parse::<IpAddr>()
    {
        Ok(ip) => ip,
        Err(_) => return false,
    };
    let cidr = cidr.trim();
    let (net, len) = match cidr.split_once('/') {
        Some((a, l)) => match (a.parse::<IpAddr>(), l.parse::<u32>()) {
            (Ok(a), Ok(l)) => (a, Some(l)),
            _ => return false,
        },
        None => match cidr.parse::<IpAddr>() {
            Ok(a) => (a, None),
            Err(_) => return false,
        },
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let len = len.unwrap_or(32);
            if len > 32 {
                return false;
            }
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let len = len.unwrap_or(128);
            if len > 128 {
                return false;
            }
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// ISO 8601 (`2024-01-02`, `2024-01-02T03:04:05[.fff](Z|±hh:mm|±hhmm)`) or epoch seconds, as
/// milliseconds since the epoch.
pub(crate) fn parse_date(s: &str) -> Option<i64> {
    let s = s.trim();
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
        && !s.get(1..)?.contains('-')
    {
        let secs: f64 = s.parse().ok()?;
        if !secs.is_finite() || secs.abs() > 1e13 {
            return None;
        }
        return Some((secs * 1000.0) as i64);
    }
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = s.get(from..from + len)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let year = num(0, 4)?;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let (month, day) = (num(5, 2)?, num(8, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let mut millis = days * 86_400_000;
    let mut i = 10;
    if let Some(&sep) = b.get(10) {
        if sep != b'T' && sep != b't' && sep != b' ' {
            return None;
        }
        let (h, m) = (num(11, 2)?, num(14, 2)?);
        if b.get(13) != Some(&b':') || h > 23 || m > 59 {
            return None;
        }
        millis += (h * 3600 + m * 60) * 1000;
        i = 16;
        if b.get(16) == Some(&b':') {
            let sec = num(17, 2)?;
            if sec > 60 {
                return None;
            }
            millis += sec * 1000;
            i = 19;
            if b.get(19) == Some(&b'.') {
                i = 20;
                let start = i;
                while b.get(i).is_some_and(|c| c.is_ascii_digit()) {
                    i += 1;
                }
                let frac = s.get(start..i)?;
                if frac.is_empty() {
                    return None;
                }
                let ms = format!("{:0<3}", frac.get(..frac.len().min(3))?);
                millis += ms.parse::<i64>().ok()?;
            }
        }
        match b.get(i) {
            None => {}
            Some(b'Z') | Some(b'z') if i + 1 == b.len() => {}
            Some(&sign @ (b'+' | b'-')) => {
                let oh = num(i + 1, 2)?;
                let om = match b.get(i + 3) {
                    Some(b':') if i + 6 == b.len() => num(i + 4, 2)?,
                    Some(_) if i + 5 == b.len() => num(i + 3, 2)?,
                    None => 0,
                    _ => return None,
                };
                let offset = (oh * 3600 + om * 60) * 1000;
                millis += if sign == b'+' { -offset } else { offset };
            }
            _ => return None,
        }
    } else if i != b.len() {
        return None;
    }
    Some(millis)
}

/// Days since 1970-01-01 for a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse_date("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_date("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_date("86400"), Some(86_400_000));
        assert_eq!(parse_date("2024-03-01T12:00:00Z"), Some(1_709_294_400_000));
        assert_eq!(
            parse_date("2024-03-01T13:00:00+01:00"),
            Some(1_709_294_400_000)
        );
        assert_eq!(
            parse_date("2024-03-01T12:00:00.250Z"),
            Some(1_709_294_400_250)
        );
        assert_eq!(parse_date("2024-13-01"), None);
        assert_eq!(parse_date("yesterday"), None);
    }

    #[test]
    fn cidrs() {
        assert!(ip_in_cidr("10.1.2.3", "10.0.0.0/8"));
        assert!(!ip_in_cidr("11.1.2.3", "10.0.0.0/8"));
        assert!(ip_in_cidr("1.2.3.4", "0.0.0.0/0"));
        assert!(ip_in_cidr("2001:db8::1", "2001:db8::/32"));
        assert!(!ip_in_cidr("2001:db9::1", "2001:db8::/32"));
        assert!(!ip_in_cidr("10.0.0.1", "::/0"));
        assert!(!ip_in_cidr("10.0.0.1", "10.0.0.0/33"));
    }
}
