//! Role trust policies: may a service principal assume a role?

use serde_json::{json, Value};

use crate::evaluation::{evaluate, Context, Request};
use crate::policy::Policy;

/// Whether the trust policy `doc` lets the service principal `service`
/// (`ssm.amazonaws.com`) perform `action` (`sts:AssumeRole`) given
/// `context`: some statement naming it allows, none denies. Trust statements
/// name principals instead of resources, so the ones that concern `service`
/// (its `Principal` names it or `*`; its `NotPrincipal` leaves it out) are
/// evaluated as identity statements over every resource, conditions
/// included. A malformed document trusts nobody.
pub fn trust_allows_service(doc: &str, service: &str, action: &str, context: &Context) -> bool {
    let Ok(parsed) = serde_json::from_str::<Value>(doc) else {
        return false;
    };
    let statements = match parsed.get("Statement") {
        Some(Value::Array(list)) => list.clone(),
        Some(one @ Value::Object(_)) => vec![one.clone()],
        _ => return false,
    };
    let concerned: Vec<Value> = statements
        .into_iter()
        .filter_map(|mut st| {
            let applies = match (st.get("Principal"), st.get("NotPrincipal")) {
                (Some(p), None) => names(p, service),
                (None, Some(np)) => !names(np, service),
                _ => false,
            };
            let obj = st.as_object_mut()?;
            obj.remove("Principal");
            obj.remove("NotPrincipal");
            obj.insert("Resource".into(), Value::String("*".into()));
            applies.then_some(st)
        })
        .collect();
    if concerned.is_empty() {
        return false;
    }
    let version = parsed
        .get("Version")
        .cloned()
        .unwrap_or_else(|| Value::String("2012-10-17".into()));
    let Ok(policy) =
        Policy::parse(&json!({"Version": version, "Statement": concerned}).to_string())
    else {
        return false;
    };
    evaluate(
        &[&policy],
        None,
        &Request::new(action, "*", context.clone()),
    )
    .is_allowed()
}

/// Whether a `Principal` value names `service` (or everyone).
fn names(principal: &Value, service: &str) -> bool {
    let listed = |v: &Value, want: &str| match v {
        Value::String(s) => s == want,
        Value::Array(list) => list.iter().any(|s| s.as_str() == Some(want)),
        _ => false,
    };
    match principal {
        Value::String(s) => s == "*",
        Value::Object(m) => {
            m.get("Service").is_some_and(|s| listed(s, service))
                || m.get("AWS").is_some_and(|a| listed(a, "*"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSM: &str = "ssm.amazonaws.com";

    fn ok(doc: &str, ctx: &Context) -> bool {
        trust_allows_service(doc, SSM, "sts:AssumeRole", ctx)
    }

    #[test]
    fn the_default_ssm_trust_and_its_variants() {
        let none = Context::new();
        assert!(ok(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ssm.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
            &none
        ));
        assert!(ok(
            r#"{"Statement":{"Effect":"Allow","Principal":{"Service":["ec2.amazonaws.com","ssm.amazonaws.com"]},"Action":"sts:*"}}"#,
            &none
        ));
        assert!(ok(
            r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"sts:AssumeRole"}}"#,
            &none
        ));
    }

    #[test]
    fn other_principals_actions_denies_and_conditions() {
        let none = Context::new();
        assert!(!ok(
            r#"{"Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
            &none
        ));
        assert!(!ok(
            r#"{"Statement":[{"Effect":"Allow","Principal":{"Service":"ssm.amazonaws.com"},"Action":"sts:TagSession"}]}"#,
            &none
        ));
        assert!(!ok(
            r#"{"Statement":[
            {"Effect":"Allow","Principal":{"Service":"ssm.amazonaws.com"},"Action":"sts:AssumeRole"},
            {"Effect":"Deny","NotPrincipal":{"Service":"ec2.amazonaws.com"},"Action":"*"}]}"#,
            &none
        ));
        assert!(!ok("not json", &none));
        assert!(!ok(r#"{"Statement":[]}"#, &none));
        let conditioned = r#"{"Statement":[{"Effect":"Allow","Principal":{"Service":"ssm.amazonaws.com"},
            "Action":"sts:AssumeRole","Condition":{"StringEquals":{"aws:SourceAccount":"123456789012"}}}]}"#;
        assert!(ok(
            conditioned,
            &Context::new().with("aws:SourceAccount", "123456789012")
        ));
        assert!(!ok(
            conditioned,
            &Context::new().with("aws:SourceAccount", "999999999999")
        ));
    }
}
