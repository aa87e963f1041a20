//! Parse errors name the place and the problem; AccessDenied messages match AWS's wording.

use airlock_iam::{
    access_denied_message, evaluate, Context, DecisionEffect, Error, Policy, PolicyKind, Request,
};

fn invalid(doc: &str) -> (String, String) {
    match Policy::parse(doc) {
        Err(Error::Invalid { location, problem }) => (location, problem),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn syntax_error_names_line_and_column() {
    let doc = "{\n  \"Version\": \"2012-10-17\",\n  \"Statement\": [\n    {\"Effect\": \"Allow\",}\n  ]\n}";
    match Policy::parse(doc) {
        Err(Error::Syntax {
            line,
            column,
            problem,
        }) => {
            assert_eq!(line, 4);
            assert!(column > 0);
            assert!(!problem.contains("at line"), "{problem}");
        }
        other => panic!("expected Syntax, got {other:?}"),
    }
    let msg = Policy::parse("{\"Version\":")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("line 1"), "{msg}");
}

#[test]
fn semantic_errors_name_the_statement() {
    let (loc, problem) = invalid(
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"},
        {"Sid":"Two","Effect":"Allow","Action":"*","NotAction":"x:y","Resource":"*"}]}"#,
    );
    assert_eq!(loc, "Statement[1] (Sid \"Two\")");
    assert!(problem.contains("both Action and NotAction"));

    let (loc, problem) =
        invalid(r#"{"Statement":{"Effect":"Permit","Action":"*","Resource":"*"}}"#);
    assert_eq!(loc, "Statement[0]");
    assert!(problem.contains("Permit"));

    let (_, problem) = invalid(r#"{"Statement":{"Effect":"Allow","Action":"*"}}"#);
    assert!(problem.contains("Resource"));
    let (_, problem) = invalid(r#"{"Statement":{"Effect":"Allow","Resource":"*"}}"#);
    assert!(problem.contains("Action"));
    let (_, problem) = invalid(
        r#"{"Statement":{"Effect":"Allow","Action":"*","Resource":"*","NotResource":"*"}}"#,
    );
    assert!(problem.contains("both Resource and NotResource"));
    let (_, problem) = invalid(
        r#"{"Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"StringEqualz":{"a":"b"}}}}"#,
    );
    assert!(problem.contains("StringEqualz"));
    let (_, problem) = invalid(
        r#"{"Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"NullIfExists":{"a":"true"}}}}"#,
    );
    assert!(problem.contains("IfExists"));
    let (_, problem) = invalid(
        r#"{"Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"StringEquals":{"a":{"b":1}}}}}"#,
    );
    assert!(problem.contains("an object"));
    let (_, problem) = invalid(r#"{"Version":"2020-01-01","Statement":[]}"#);
    assert!(problem.contains("2020-01-01"));
    let (_, problem) = invalid(r#"{"Statement":[]}"#);
    assert!(problem.contains("at least one"));
    let (_, problem) = invalid(
        r#"{"Statement":{"Sid":"has space","Effect":"Allow","Action":"*","Resource":"*"}}"#,
    );
    assert!(problem.contains("Sid"));
    let (_, problem) =
        invalid(r#"{"Statement":{"Effect":"Allow","Action":"StartSession","Resource":"*"}}"#);
    assert!(problem.contains("service:Name"));
    let (_, problem) = invalid(r#"{"Statment":[]}"#);
    assert!(problem.contains("Statment"));
    let (loc, _) = invalid("[]");
    assert_eq!(loc, "policy");
}

#[test]
fn too_large_is_rejected() {
    let big = " ".repeat(airlock_iam::MAX_POLICY_BYTES + 1);
    assert!(matches!(Policy::parse(&big), Err(Error::TooLarge { .. })));
}

#[test]
fn principal_and_values_parse() {
    let p = Policy::parse(
        r#"{"Version":"2012-10-17","Id":"x","Statement":{"Sid":"S1","Effect":"Allow","Principal":{"AWS":"*"},
        "Action":["ssm:*"],"Resource":"*","Condition":{"NumericLessThan":{"a:n":[1,2.5]},"Bool":{"a:b":false}}}}"#,
    )
    .expect("parses");
    assert_eq!(p.id.as_deref(), Some("x"));
    let st = &p.statements[0];
    assert!(st.principal.is_some());
    assert_eq!(st.conditions.len(), 2);
    assert!(st
        .conditions
        .iter()
        .any(|c| c.values == vec!["1".to_string(), "2.5".to_string()]));
    assert!(st
        .conditions
        .iter()
        .any(|c| c.values == vec!["false".to_string()]));
}

#[test]
fn decision_reports_statements_and_messages() {
    let id = Policy::parse_named(
        "inline/ops",
        r#"{"Version":"2012-10-17","Statement":[
            {"Sid":"All","Effect":"Allow","Action":"*","Resource":"*"},
            {"Sid":"NoProd","Effect":"Deny","Action":"ssm:StartSession","Resource":"arn:aws:ssm:*:*:managed-instance/mi-prod"}]}"#,
    )
    .expect("parses");
    let principal = "arn:aws:iam::123456789012:user/bob";
    let prod = "arn:aws:ssm:us-east-1:123456789012:managed-instance/mi-prod";
    let req = Request::new("ssm:StartSession", prod, Context::new());
    let d = evaluate(&[&id], None, &req);
    assert_eq!(d.effect, DecisionEffect::ExplicitDeny);
    assert_eq!(d.matched.len(), 1);
    assert_eq!(d.matched[0].policy_name, "inline/ops");
    assert_eq!(d.matched[0].sid.as_deref(), Some("NoProd"));
    assert_eq!(d.matched[0].index, 1);
    assert_eq!(
        access_denied_message(principal, "ssm:StartSession", prod, &d),
        format!("User: {principal} is not authorized to perform: ssm:StartSession on resource: {prod} with an explicit deny in an identity-based policy")
    );

    let d = evaluate(&[], None, &req);
    assert_eq!(
        access_denied_message(principal, "ssm:StartSession", prod, &d),
        format!("User: {principal} is not authorized to perform: ssm:StartSession on resource: {prod} because no identity-based policy allows the ssm:StartSession action")
    );
    assert_eq!(
        access_denied_message(principal, "ssm:DescribeSessions", "", &d),
        format!("User: {principal} is not authorized to perform: ssm:DescribeSessions because no identity-based policy allows the ssm:DescribeSessions action")
    );

    let boundary = Policy::parse_named("pb", r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"ec2:*","Resource":"*"}}"#)
        .expect("parses");
    let dev = Request::new(
        "ssm:StartSession",
        "arn:aws:ssm:us-east-1:123456789012:managed-instance/mi-dev",
        Context::new(),
    );
    let d = evaluate(&[&id], Some(&[&boundary]), &dev);
    assert_eq!(d.effect, DecisionEffect::ImplicitDeny);
    assert_eq!(d.denied_by, Some(PolicyKind::PermissionsBoundary));
    assert!(
        access_denied_message(principal, "ssm:StartSession", &dev.resource, &d)
            .ends_with("because no permissions boundary allows the ssm:StartSession action")
    );
    assert_eq!(DecisionEffect::ExplicitDeny.as_str(), "explicitDeny");
}
