//! Monotonicity properties of the evaluator and robustness of the parser.

use airlock_iam::{evaluate, Context, DecisionEffect, Policy, Request};
use proptest::prelude::*;

fn action() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        Just("ssm:*".to_string()),
        Just("ssm:StartSession".to_string()),
        Just("ssm:Start*".to_string()),
        Just("ssm:TerminateSession".to_string()),
        Just("ec2:?escribe*".to_string()),
        Just("kms:Decrypt".to_string()),
    ]
}

fn resource() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        Just("arn:aws:ssm:*:*:managed-instance/*".to_string()),
        Just("arn:aws:ssm:us-east-1:123456789012:managed-instance/mi-1".to_string()),
        Just("arn:aws:ssm:*:*:session/${aws:username}-*".to_string()),
        Just("arn:aws:ssm:*::document/AWS-*".to_string()),
        Just("arn:aws:kms:*:*:key/*".to_string()),
    ]
}

fn condition() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some(
            r#""StringEquals":{"ssm:resourceTag/env":"dev"}"#.to_string()
        )),
        Just(Some(r#""StringNotLike":{"aws:username":"a*"}"#.to_string())),
        Just(Some(
            r#""IpAddress":{"aws:SourceIp":"10.0.0.0/8"}"#.to_string()
        )),
        Just(Some(
            r#""ForAllValues:StringEquals":{"aws:TagKeys":["env"]}"#.to_string()
        )),
        Just(Some(
            r#""ForAnyValue:StringLike":{"aws:TagKeys":"e*"}"#.to_string()
        )),
        Just(Some(r#""Null":{"ssm:resourceTag/env":"true"}"#.to_string())),
        Just(Some(
            r#""BoolIfExists":{"aws:SecureTransport":"true"}"#.to_string()
        )),
        Just(Some(
            r#""NumericLessThanIfExists":{"my:n":"5"}"#.to_string()
        )),
    ]
}

fn statement(effect: Option<&'static str>) -> impl Strategy<Value = String> {
    let eff = match effect {
        Some(e) => Just(e).boxed(),
        None => prop_oneof![Just("Allow"), Just("Deny")].boxed(),
    };
    (
        eff,
        any::<bool>(),
        action(),
        any::<bool>(),
        resource(),
        condition(),
    )
        .prop_map(|(e, not_a, a, not_r, r, c)| {
            let ak = if not_a { "NotAction" } else { "Action" };
            let rk = if not_r { "NotResource" } else { "Resource" };
            let cond = c
                .map(|c| format!(r#","Condition":{{{c}}}"#))
                .unwrap_or_default();
            format!(r#"{{"Effect":"{e}","{ak}":"{a}","{rk}":"{r}"{cond}}}"#)
        })
}

fn policy_doc(effect: Option<&'static str>) -> impl Strategy<Value = String> {
    prop::collection::vec(statement(effect), 1..4).prop_map(|s| {
        format!(
            r#"{{"Version":"2012-10-17","Statement":[{}]}}"#,
            s.join(",")
        )
    })
}

fn request() -> impl Strategy<Value = Request> {
    (
        prop_oneof![
            Just("ssm:StartSession"),
            Just("ssm:TerminateSession"),
            Just("ec2:DescribeInstances"),
            Just("kms:Decrypt")
        ],
        prop_oneof![
            Just("arn:aws:ssm:us-east-1:123456789012:managed-instance/mi-1"),
            Just("arn:aws:ssm:us-east-1:123456789012:session/bob-1"),
            Just("arn:aws:ssm:us-east-1::document/AWS-StartSSHSession"),
            Just("arn:aws:kms:us-east-1:123456789012:key/k"),
        ],
        proptest::option::of(prop_oneof![Just("bob"), Just("alice")]),
        proptest::option::of(prop_oneof![Just("dev"), Just("prod")]),
        proptest::option::of(prop_oneof![Just("10.1.2.3"), Just("192.0.2.1")]),
        prop::collection::vec(prop_oneof![Just("env"), Just("team")], 0..3),
    )
        .prop_map(|(a, r, user, env, ip, keys)| {
            let mut ctx = Context::new();
            if let Some(u) = user {
                ctx.insert("aws:username", u);
            }
            if let Some(e) = env {
                ctx.insert("ssm:resourceTag/env", e);
            }
            if let Some(ip) = ip {
                ctx.insert("aws:SourceIp", ip);
            }
            ctx.set("aws:TagKeys", keys.into_iter().map(String::from).collect());
            Request::new(a, r, ctx)
        })
}

fn parse(docs: &[String]) -> Vec<Policy> {
    docs.iter()
        .map(|d| Policy::parse(d).unwrap_or_else(|e| panic!("generated policy invalid: {e}\n{d}")))
        .collect()
}

proptest! {
    #[test]
    fn adding_deny_never_allows(
        docs in prop::collection::vec(policy_doc(None), 0..3),
        boundary in proptest::option::of(prop::collection::vec(policy_doc(None), 0..2)),
        extra in policy_doc(Some("Deny")),
        to_boundary in any::<bool>(),
        req in request(),
    ) {
        let base = parse(&docs);
        let bnd = boundary.as_ref().map(|b| parse(b));
        let extra = parse(&[extra]);
        let refs: Vec<&Policy> = base.iter().collect();
        let brefs: Option<Vec<&Policy>> = bnd.as_ref().map(|b| b.iter().collect());
        let before = evaluate(&refs, brefs.as_deref(), &req);

        let (mut refs2, mut brefs2) = (refs.clone(), brefs.clone());
        match (&mut brefs2, to_boundary) {
            (Some(b), true) => b.push(&extra[0]),
            _ => refs2.push(&extra[0]),
        }
        let after = evaluate(&refs2, brefs2.as_deref(), &req);
        if before.effect != DecisionEffect::Allowed {
            prop_assert_ne!(after.effect, DecisionEffect::Allowed);
        }
        if before.effect == DecisionEffect::ExplicitDeny {
            prop_assert_eq!(after.effect, DecisionEffect::ExplicitDeny);
        }
    }

    #[test]
    fn adding_allow_never_lifts_explicit_deny(
        docs in prop::collection::vec(policy_doc(None), 0..3),
        boundary in proptest::option::of(prop::collection::vec(policy_doc(None), 0..2)),
        extra in policy_doc(Some("Allow")),
        to_boundary in any::<bool>(),
        req in request(),
    ) {
        let base = parse(&docs);
        let bnd = boundary.as_ref().map(|b| parse(b));
        let extra = parse(&[extra]);
        let refs: Vec<&Policy> = base.iter().collect();
        let brefs: Option<Vec<&Policy>> = bnd.as_ref().map(|b| b.iter().collect());
        let before = evaluate(&refs, brefs.as_deref(), &req);
        let (mut refs2, mut brefs2) = (refs.clone(), brefs.clone());
        match (&mut brefs2, to_boundary) {
            (Some(b), true) => b.push(&extra[0]),
            _ => refs2.push(&extra[0]),
        }
        let after = evaluate(&refs2, brefs2.as_deref(), &req);
        if before.effect == DecisionEffect::ExplicitDeny {
            prop_assert_eq!(after.effect, DecisionEffect::ExplicitDeny);
        }
        if before.effect == DecisionEffect::Allowed {
            prop_assert_eq!(after.effect, DecisionEffect::Allowed);
        }
    }

    #[test]
    fn parse_never_panics_on_arbitrary_text(s in "\\PC{0,300}") {
        let _ = Policy::parse(&s);
    }

    #[test]
    fn parse_never_panics_on_jsonish_text(
        s in prop::collection::vec(prop_oneof![
            Just("{"), Just("}"), Just("["), Just("]"), Just(","), Just(":"),
            Just("\"Version\""), Just("\"2012-10-17\""), Just("\"Statement\""), Just("\"Effect\""),
            Just("\"Allow\""), Just("\"Deny\""), Just("\"Action\""), Just("\"NotAction\""),
            Just("\"Resource\""), Just("\"Condition\""), Just("\"StringLike\""), Just("\"ForAllValues:NullIfExists\""),
            Just("\"*\""), Just("\"${aws:username}\""), Just("true"), Just("1e999"), Just("-0"), Just("null"),
        ], 0..60)
    ) {
        let doc = s.concat();
        if let Ok(p) = Policy::parse(&doc) {
            let req = Request::new("ssm:StartSession", "arn:aws:ssm:us-east-1:1:session/x", Context::new().with("aws:username", "x"));
            let _ = evaluate(&[&p], Some(&[&p]), &req);
        }
    }

    #[test]
    fn parse_never_panics_on_arbitrary_json(v in arb_json()) {
        let doc = v.to_string();
        if let Ok(p) = Policy::parse(&doc) {
            let req = Request::new("a:b", "*", Context::new());
            let _ = evaluate(&[&p], None, &req);
        }
    }
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        prop_oneof![
            Just("2012-10-17"),
            Just("Allow"),
            Just("Deny"),
            Just("*"),
            Just("ssm:*"),
            Just("arn:aws:ssm:*:*:session/${aws:username}-*"),
            Just("10.0.0.0/8"),
            Just("x")
        ]
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let key = prop_oneof![
            Just("Version"),
            Just("Statement"),
            Just("Effect"),
            Just("Action"),
            Just("NotAction"),
            Just("Resource"),
            Just("NotResource"),
            Just("Condition"),
            Just("Sid"),
            Just("StringEquals"),
            Just("ForAnyValue:IpAddress"),
            Just("Null"),
            Just("DateLessThanIfExists"),
            Just("aws:username")
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..5).prop_map(|m| {
                Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}
