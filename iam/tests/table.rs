//! Table-driven evaluator cases: each is (policies, optional boundary, request, expected decision).

use airlock_iam::{evaluate, Context, DecisionEffect, Policy, Request};

const A: DecisionEffect = DecisionEffect::Allowed;
const E: DecisionEffect = DecisionEffect::ExplicitDeny;
const I: DecisionEffect = DecisionEffect::ImplicitDeny;

const S3: &str = "s3:GetObject";
const OBJ: &str = "arn:aws:s3:::bucket/key";
const MI: &str = "arn:aws:ssm:us-east-1:123456789012:managed-instance/mi-0123456789abcdef0";
const SHELL_DOC: &str = "arn:aws:ssm:us-east-1:123456789012:document/SSM-SessionManagerRunShell";
const PF_DOC: &str = "arn:aws:ssm:us-east-1::document/AWS-StartPortForwardingSession";

struct Case {
    name: String,
    policies: Vec<String>,
    boundary: Option<Vec<String>>,
    action: String,
    resource: String,
    ctx: Vec<(String, String)>,
    expect: DecisionEffect,
}

/// Statement fragments.
fn st(effect: &str, action: &str, resource: &str) -> String {
    format!(
        r#"{{"Effect":"{effect}","Action":{},"Resource":{}}}"#,
        list(action),
        list(resource)
    )
}
fn allow(action: &str, resource: &str) -> String {
    st("Allow", action, resource)
}
fn deny(action: &str, resource: &str) -> String {
    st("Deny", action, resource)
}
/// `a|b` becomes a JSON array, a single item a JSON string.
fn list(s: &str) -> String {
    if s.contains('|') {
        let items: Vec<String> = s.split('|').map(|i| format!("\"{i}\"")).collect();
        format!("[{}]", items.join(","))
    } else {
        format!("\"{s}\"")
    }
}
fn stc(effect: &str, action: &str, resource: &str, cond: &str) -> String {
    format!(
        r#"{{"Effect":"{effect}","Action":{},"Resource":{},"Condition":{{{cond}}}}}"#,
        list(action),
        list(resource)
    )
}
/// A 2012-10-17 policy from statement fragments.
fn pol(stmts: &[String]) -> String {
    format!(
        r#"{{"Version":"2012-10-17","Statement":[{}]}}"#,
        stmts.join(",")
    )
}
fn pol_v(version: &str, stmts: &[String]) -> String {
    format!(
        r#"{{"Version":"{version}","Statement":[{}]}}"#,
        stmts.join(",")
    )
}
/// Allow everything under a condition block.
fn cond(c: &str) -> String {
    pol(&[stc("Allow", "*", "*", c)])
}

struct T(Vec<Case>);

impl T {
    #[allow(clippy::too_many_arguments)]
    fn full(
        &mut self,
        name: &str,
        policies: Vec<String>,
        boundary: Option<Vec<String>>,
        action: &str,
        resource: &str,
        ctx: &[(&str, &str)],
        expect: DecisionEffect,
    ) {
        self.0.push(Case {
            name: name.to_string(),
            policies,
            boundary,
            action: action.to_string(),
            resource: resource.to_string(),
            ctx: ctx
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            expect,
        });
    }
    fn add(
        &mut self,
        name: &str,
        policy: String,
        action: &str,
        resource: &str,
        ctx: &[(&str, &str)],
        e: DecisionEffect,
    ) {
        self.full(name, vec![policy], None, action, resource, ctx, e);
    }
    /// Condition-only case on s3:GetObject.
    fn c(&mut self, name: &str, c: &str, ctx: &[(&str, &str)], e: DecisionEffect) {
        self.add(name, cond(c), S3, OBJ, ctx, e);
    }
}

fn actions(t: &mut T) {
    let r = MI;
    let p = |a: &str| pol(&[allow(a, "*")]);
    t.add(
        "action exact",
        p("ssm:StartSession"),
        "ssm:StartSession",
        r,
        &[],
        A,
    );
    t.add(
        "action case-insensitive request",
        p("ssm:StartSession"),
        "SSM:startsession",
        r,
        &[],
        A,
    );
    t.add(
        "action case-insensitive pattern",
        p("IAM:LISTACCESSKEYS"),
        "iam:ListAccessKeys",
        r,
        &[],
        A,
    );
    t.add(
        "action other name",
        p("ssm:StartSession"),
        "ssm:TerminateSession",
        r,
        &[],
        I,
    );
    t.add(
        "action service star",
        p("ssm:*"),
        "ssm:TerminateSession",
        r,
        &[],
        A,
    );
    t.add(
        "action service star other service",
        p("ssm:*"),
        "ec2:DescribeInstances",
        r,
        &[],
        I,
    );
    t.add("action bare star", p("*"), "kms:Decrypt", r, &[], A);
    t.add(
        "action prefix star",
        p("ssm:Start*"),
        "ssm:StartSession",
        r,
        &[],
        A,
    );
    t.add(
        "action prefix star mismatch",
        p("ssm:Start*"),
        "ssm:TerminateSession",
        r,
        &[],
        I,
    );
    t.add(
        "action question mark",
        p("ssm:?tartSession"),
        "ssm:StartSession",
        r,
        &[],
        A,
    );
    t.add(
        "action question mark is one char",
        p("ssm:Start?ession"),
        "ssm:StartSSession",
        r,
        &[],
        I,
    );
    t.add(
        "action suffix star",
        p("ssm:*Session"),
        "ssm:ResumeSession",
        r,
        &[],
        A,
    );
    t.add(
        "action list second",
        p("ec2:*|ssm:StartSession"),
        "ssm:StartSession",
        r,
        &[],
        A,
    );
    t.add(
        "action star in service",
        p("*:StartSession"),
        "ssm:StartSession",
        r,
        &[],
        A,
    );
    t.add(
        "action no implicit suffix",
        p("ssm:StartSession"),
        "ssm:StartSessionX",
        r,
        &[],
        I,
    );
    t.add(
        "action question in service",
        p("s?m:*"),
        "ssm:DescribeSessions",
        r,
        &[],
        A,
    );
    t.add(
        "action middle star",
        p("ssm:*Instance*"),
        "ssm:DescribeInstanceInformation",
        r,
        &[],
        A,
    );
    // NotAction
    let na = |eff: &str, a: &str| {
        format!(
            r#"{{"Effect":"{eff}","NotAction":{},"Resource":"*"}}"#,
            list(a)
        )
    };
    t.add(
        "notaction grants others",
        pol(&[na("Allow", "iam:*")]),
        "ssm:StartSession",
        r,
        &[],
        A,
    );
    t.add(
        "notaction excludes listed",
        pol(&[na("Allow", "iam:*")]),
        "iam:CreateUser",
        r,
        &[],
        I,
    );
    t.add(
        "notaction case-insensitive",
        pol(&[na("Allow", "IAM:*")]),
        "iam:createuser",
        r,
        &[],
        I,
    );
    t.add(
        "notaction allow does not deny listed",
        pol(&[na("Allow", "iam:*"), allow("iam:CreateUser", "*")]),
        "iam:CreateUser",
        r,
        &[],
        A,
    );
    t.add(
        "notaction deny others",
        pol(&[na("Deny", "ssm:*"), allow("*", "*")]),
        "ec2:RunInstances",
        r,
        &[],
        E,
    );
    t.add(
        "notaction deny spares listed",
        pol(&[na("Deny", "ssm:*"), allow("*", "*")]),
        "ssm:StartSession",
        r,
        &[],
        A,
    );
    t.add(
        "notaction list",
        pol(&[na("Allow", "iam:*|kms:*")]),
        "kms:Decrypt",
        r,
        &[],
        I,
    );
}

fn resources(t: &mut T) {
    let a = "ssm:StartSession";
    let p = |r: &str| pol(&[allow(a, r)]);
    t.add("resource exact", p(MI), a, MI, &[], A);
    t.add(
        "resource id case-sensitive",
        p("arn:aws:ssm:us-east-1:123456789012:managed-instance/MI-0123456789ABCDEF0"),
        a,
        MI,
        &[],
        I,
    );
    t.add(
        "resource prefix segments case-insensitive",
        p("ARN:AWS:SSM:US-EAST-1:123456789012:managed-instance/mi-0123456789abcdef0"),
        a,
        MI,
        &[],
        A,
    );
    t.add(
        "resource region star",
        p("arn:aws:ssm:*:123456789012:managed-instance/*"),
        a,
        MI,
        &[],
        A,
    );
    t.add(
        "resource account star",
        p("arn:aws:ssm:us-east-1:*:managed-instance/*"),
        a,
        MI,
        &[],
        A,
    );
    t.add(
        "resource region question",
        p("arn:aws:ssm:us-east-?:123456789012:managed-instance/*"),
        a,
        MI,
        &[],
        A,
    );
    t.add(
        "resource region mismatch",
        p("arn:aws:ssm:eu-west-1:123456789012:managed-instance/*"),
        a,
        MI,
        &[],
        I,
    );
    t.add(
        "resource partition mismatch",
        p("arn:aws-cn:ssm:us-east-1:123456789012:managed-instance/*"),
        a,
        MI,
        &[],
        I,
    );
    t.add(
        "resource partition star",
        p("arn:*:ssm:us-east-1:123456789012:managed-instance/*"),
        a,
        MI,
        &[],
        A,
    );
    t.add(
        "resource no wildcard in service",
        p("arn:aws:*:us-east-1:123456789012:managed-instance/*"),
        a,
        MI,
        &[],
        I,
    );
    t.add(
        "resource service case-insensitive",
        p("arn:aws:SSM:us-east-1:123456789012:managed-instance/*"),
        a,
        MI,
        &[],
        A,
    );
    t.add(
        "resource empty-account document",
        p("arn:aws:ssm:*:*:document/AWS-StartPortForwardingSession"),
        a,
        PF_DOC,
        &[],
        A,
    );
    t.add(
        "resource account pattern vs empty account",
        p("arn:aws:ssm:us-east-1:123456789012:document/AWS-StartPortForwardingSession"),
        a,
        PF_DOC,
        &[],
        I,
    );
    t.add(
        "resource empty account pattern vs owned",
        p("arn:aws:ssm:us-east-1::document/*"),
        a,
        SHELL_DOC,
        &[],
        I,
    );
    t.add(
        "resource star crosses slash",
        p("arn:aws:s3:::bucket/*"),
        a,
        "arn:aws:s3:::bucket/a/b/c",
        &[],
        A,
    );
    t.add(
        "resource star crosses colon in last segment",
        p("arn:aws:logs:us-east-1:1:log-group:*"),
        a,
        "arn:aws:logs:us-east-1:1:log-group:g:log-stream:s",
        &[],
        A,
    );
    t.add(
        "resource question in id",
        p("arn:aws:s3:::bucket/k?y"),
        a,
        OBJ,
        &[],
        A,
    );
    t.add(
        "resource question needs a char",
        p("arn:aws:s3:::bucket/key?"),
        a,
        OBJ,
        &[],
        I,
    );
    t.add("resource bare star", p("*"), a, MI, &[], A);
    t.add("resource bare star vs star request", p("*"), a, "*", &[], A);
    t.add("resource arn vs star request", p(MI), a, "*", &[], I);
    t.add(
        "resource list second matches",
        p("arn:aws:s3:::other/*|arn:aws:s3:::bucket/*"),
        a,
        OBJ,
        &[],
        A,
    );
    t.add(
        "resource session prefix",
        p("arn:aws:ssm:*:*:session/bob-*"),
        a,
        "arn:aws:ssm:us-east-1:1:session/bob-0af",
        &[],
        A,
    );
    t.add(
        "resource session other user",
        p("arn:aws:ssm:*:*:session/bob-*"),
        a,
        "arn:aws:ssm:us-east-1:1:session/alice-0af",
        &[],
        I,
    );
    t.add(
        "resource too few segments",
        p("arn:aws:ssm:us-east-1:123456789012"),
        a,
        MI,
        &[],
        I,
    );
    t.add(
        "resource trailing star matches empty",
        p("arn:aws:ssm:*:*:session/*"),
        a,
        "arn:aws:ssm:us-east-1:1:session/",
        &[],
        A,
    );
    t.add(
        "resource non-arn exact",
        p("my-thing"),
        a,
        "my-thing",
        &[],
        A,
    );
    t.add(
        "resource star does not cross earlier segments",
        p("arn:aws:ssm:*:managed-instance/*"),
        a,
        MI,
        &[],
        I,
    );
    // NotResource
    let nr = |eff: &str, r: &str| {
        format!(
            r#"{{"Effect":"{eff}","Action":"ssm:StartSession","NotResource":{}}}"#,
            list(r)
        )
    };
    let prod = "arn:aws:ssm:us-east-1:1:managed-instance/mi-prod1";
    let dev = "arn:aws:ssm:us-east-1:1:managed-instance/mi-dev1";
    t.add(
        "notresource allows others",
        pol(&[nr("Allow", "arn:aws:ssm:*:*:managed-instance/mi-prod*")]),
        a,
        dev,
        &[],
        A,
    );
    t.add(
        "notresource excludes listed",
        pol(&[nr("Allow", "arn:aws:ssm:*:*:managed-instance/mi-prod*")]),
        a,
        prod,
        &[],
        I,
    );
    t.add(
        "notresource deny everything but dev",
        pol(&[
            nr("Deny", "arn:aws:ssm:*:*:managed-instance/mi-dev*"),
            allow("*", "*"),
        ]),
        a,
        prod,
        &[],
        E,
    );
    t.add(
        "notresource deny spares dev",
        pol(&[
            nr("Deny", "arn:aws:ssm:*:*:managed-instance/mi-dev*"),
            allow("*", "*"),
        ]),
        a,
        dev,
        &[],
        A,
    );
    t.add(
        "notresource star excludes all",
        pol(&[nr("Allow", "*")]),
        a,
        dev,
        &[],
        I,
    );
}

fn decisions(t: &mut T) {
    let a = "ssm:StartSession";
    t.full("no policies", vec![], None, a, MI, &[], I);
    t.add(
        "allow and deny same policy",
        pol(&[allow(a, "*"), deny(a, "*")]),
        a,
        MI,
        &[],
        E,
    );
    t.add(
        "deny first then allow",
        pol(&[deny(a, MI), allow("*", "*")]),
        a,
        MI,
        &[],
        E,
    );
    t.full(
        "deny in another policy",
        vec![pol(&[allow("*", "*")]), pol(&[deny("ssm:*", "*")])],
        None,
        a,
        MI,
        &[],
        E,
    );
    t.add(
        "deny other action",
        pol(&[allow("*", "*"), deny("ssm:TerminateSession", "*")]),
        a,
        MI,
        &[],
        A,
    );
    t.add(
        "deny other resource",
        pol(&[
            allow("*", "*"),
            deny(a, "arn:aws:ssm:*:*:managed-instance/mi-x"),
        ]),
        a,
        MI,
        &[],
        A,
    );
    t.add(
        "deny everything",
        pol(&[allow("*", "*"), deny("*", "*")]),
        a,
        MI,
        &[],
        E,
    );
    t.add(
        "empty statement effect irrelevant",
        pol(&[allow("ec2:*", "*"), allow(a, MI)]),
        a,
        MI,
        &[],
        A,
    );
    t.add(
        "single statement object",
        r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"ssm:StartSession","Resource":"*"}}"#.into(),
        a,
        MI,
        &[],
        A,
    );
    t.add(
        "deny with unmet condition",
        pol(&[
            allow("*", "*"),
            stc(
                "Deny",
                "*",
                "*",
                r#""StringEquals":{"aws:username":"mallory"}"#,
            ),
        ]),
        a,
        MI,
        &[("aws:username", "bob")],
        A,
    );
    t.add(
        "deny with met condition",
        pol(&[
            allow("*", "*"),
            stc(
                "Deny",
                "*",
                "*",
                r#""StringEquals":{"aws:username":"mallory"}"#,
            ),
        ]),
        a,
        MI,
        &[("aws:username", "mallory")],
        E,
    );
    t.full(
        "explicit deny beats admin allow",
        vec![
            pol(&[allow("*", "*")]),
            pol(&[deny(
                "ssm:StartSession",
                "arn:aws:ssm:*:*:managed-instance/*",
            )]),
        ],
        None,
        a,
        MI,
        &[],
        E,
    );
    t.full(
        "allow across policies",
        vec![pol(&[allow("ec2:*", "*")]), pol(&[allow(a, "*")])],
        None,
        a,
        MI,
        &[],
        A,
    );
}

fn boundaries(t: &mut T) {
    let a = "ssm:StartSession";
    let all = || vec![pol(&[allow("*", "*")])];
    t.full(
        "boundary allows",
        all(),
        Some(vec![pol(&[allow("ssm:*", "*")])]),
        a,
        MI,
        &[],
        A,
    );
    t.full(
        "boundary lacks allow",
        all(),
        Some(vec![pol(&[allow("ec2:*", "*")])]),
        a,
        MI,
        &[],
        I,
    );
    t.full(
        "boundary alone grants nothing",
        vec![],
        Some(all()),
        a,
        MI,
        &[],
        I,
    );
    t.full(
        "identity lacks allow with boundary",
        vec![pol(&[allow("ec2:*", "*")])],
        Some(all()),
        a,
        MI,
        &[],
        I,
    );
    t.full(
        "boundary explicit deny",
        all(),
        Some(vec![pol(&[allow("*", "*"), deny(a, "*")])]),
        a,
        MI,
        &[],
        E,
    );
    t.full(
        "boundary deny without allow",
        all(),
        Some(vec![pol(&[deny(a, "*")])]),
        a,
        MI,
        &[],
        E,
    );
    t.full("empty boundary set", all(), Some(vec![]), a, MI, &[], I);
    t.full(
        "identity deny with boundary allow",
        vec![pol(&[deny(a, "*")])],
        Some(all()),
        a,
        MI,
        &[],
        E,
    );
    t.full(
        "boundary resource intersection",
        all(),
        Some(vec![pol(&[allow(
            a,
            "arn:aws:ssm:*:*:managed-instance/mi-dev*",
        )])]),
        a,
        MI,
        &[],
        I,
    );
    t.full(
        "boundary condition met",
        all(),
        Some(vec![cond(
            r#""StringEquals":{"aws:ResourceTag/Environment":"dev"}"#,
        )]),
        a,
        MI,
        &[("aws:ResourceTag/Environment", "dev")],
        A,
    );
    t.full(
        "boundary condition unmet",
        all(),
        Some(vec![cond(
            r#""StringEquals":{"aws:ResourceTag/Environment":"dev"}"#,
        )]),
        a,
        MI,
        &[("aws:ResourceTag/Environment", "prod")],
        I,
    );
    t.full(
        "boundary allow split across policies",
        all(),
        Some(vec![pol(&[allow("ec2:*", "*")]), pol(&[allow(a, "*")])]),
        a,
        MI,
        &[],
        A,
    );
}

fn versions_and_variables(t: &mut T) {
    let a = "ssm:TerminateSession";
    let own = "arn:aws:ssm:*:*:session/${aws:username}-*";
    let bob_s = "arn:aws:ssm:us-east-1:123456789012:session/bob-0123456789abcdef0";
    let alice_s = "arn:aws:ssm:us-east-1:123456789012:session/alice-0123456789abcdef0";
    let bob = [("aws:username", "bob")];
    t.add(
        "var username own session",
        pol(&[allow(a, own)]),
        a,
        bob_s,
        &bob,
        A,
    );
    t.add(
        "var username other session",
        pol(&[allow(a, own)]),
        a,
        alice_s,
        &bob,
        I,
    );
    t.add(
        "var username absent for role",
        pol(&[allow(a, own)]),
        a,
        bob_s,
        &[("aws:userid", "AROA:bob")],
        I,
    );
    t.add(
        "var default used",
        pol(&[allow(
            a,
            "arn:aws:ssm:*:*:session/${aws:username, 'anon'}-*",
        )]),
        a,
        "arn:aws:ssm:us-east-1:1:session/anon-01",
        &[],
        A,
    );
    t.add(
        "var default ignored when present",
        pol(&[allow(
            a,
            "arn:aws:ssm:*:*:session/${aws:username, 'anon'}-*",
        )]),
        a,
        "arn:aws:ssm:us-east-1:1:session/anon-01",
        &bob,
        I,
    );
    t.add(
        "var userid",
        pol(&[allow(a, "arn:aws:s3:::home/${aws:userid}/*")]),
        a,
        "arn:aws:s3:::home/AIDA123/file",
        &[("aws:userid", "AIDA123")],
        A,
    );
    t.add(
        "var principal tag case-insensitive name",
        pol(&[allow(a, "arn:aws:s3:::team/${aws:principaltag/Team}/*")]),
        a,
        "arn:aws:s3:::team/red/x",
        &[("aws:PrincipalTag/team", "red")],
        A,
    );
    t.add(
        "var principal tag default",
        pol(&[allow(
            a,
            "arn:aws:s3:::team/${aws:PrincipalTag/team, 'company-wide'}/*",
        )]),
        a,
        "arn:aws:s3:::team/company-wide/x",
        &[],
        A,
    );
    t.add(
        "var value is literal not wildcard",
        pol(&[allow(a, "arn:aws:ssm:*:*:session/${aws:username}")]),
        a,
        "arn:aws:ssm:us-east-1:1:session/bob",
        &[("aws:username", "b*")],
        I,
    );
    t.add(
        "var value literal star matches itself",
        pol(&[allow(a, "arn:aws:ssm:*:*:session/${aws:username}")]),
        a,
        "arn:aws:ssm:us-east-1:1:session/b*",
        &[("aws:username", "b*")],
        A,
    );
    t.add(
        "escape star literal",
        pol(&[allow(a, "arn:aws:s3:::bucket/${*}")]),
        a,
        "arn:aws:s3:::bucket/*",
        &[],
        A,
    );
    t.add(
        "escape star not wildcard",
        pol(&[allow(a, "arn:aws:s3:::bucket/${*}")]),
        a,
        "arn:aws:s3:::bucket/x",
        &[],
        I,
    );
    t.add(
        "escape question literal",
        pol(&[allow(a, "arn:aws:s3:::b/file${?}")]),
        a,
        "arn:aws:s3:::b/file?",
        &[],
        A,
    );
    t.add(
        "escape question not wildcard",
        pol(&[allow(a, "arn:aws:s3:::b/file${?}")]),
        a,
        "arn:aws:s3:::b/filex",
        &[],
        I,
    );
    t.add(
        "escape dollar",
        pol(&[allow(a, "arn:aws:s3:::b/${$}{x}")]),
        a,
        "arn:aws:s3:::b/${x}",
        &[],
        A,
    );
    t.add(
        "var not expanded before fifth colon",
        pol(&[allow(a, "arn:aws:ssm:${aws:requestedregion}:*:session/*")]),
        a,
        bob_s,
        &[("aws:requestedregion", "us-east-1")],
        I,
    );
    t.add(
        "var multi-valued key does not resolve",
        pol(&[allow(a, "arn:aws:s3:::b/${aws:tagkeys}")]),
        a,
        "arn:aws:s3:::b/x",
        &[("aws:tagkeys", "x"), ("aws:tagkeys", "y")],
        I,
    );
    t.add(
        "var any single-valued key",
        pol(&[allow(a, "arn:aws:s3:::b/${ssm:resourceTag/owner}")]),
        a,
        "arn:aws:s3:::b/carol",
        &[("ssm:resourcetag/owner", "carol")],
        A,
    );
    t.add(
        "var unresolved entry skipped but others match",
        pol(&[allow(a, "arn:aws:s3:::b/${aws:username}|arn:aws:s3:::b/*")]),
        a,
        "arn:aws:s3:::b/x",
        &[],
        A,
    );
    // Versions
    let lit = "arn:aws:ssm:us-east-1:1:session/${aws:username}-1";
    t.add(
        "version 2008 variable literal",
        pol_v("2008-10-17", &[allow(a, own)]),
        a,
        lit,
        &bob,
        A,
    );
    t.add(
        "version 2008 variable not expanded",
        pol_v("2008-10-17", &[allow(a, own)]),
        a,
        "arn:aws:ssm:us-east-1:1:session/bob-1",
        &bob,
        I,
    );
    t.add(
        "version missing behaves as 2008",
        format!(r#"{{"Statement":[{}]}}"#, allow(a, own)),
        a,
        "arn:aws:ssm:us-east-1:1:session/bob-1",
        &bob,
        I,
    );
    t.add(
        "version 2008 condition literal",
        pol_v(
            "2008-10-17",
            &[stc(
                "Allow",
                "*",
                "*",
                r#""StringEquals":{"s3:prefix":"${aws:username}"}"#,
            )],
        ),
        S3,
        OBJ,
        &[("s3:prefix", "${aws:username}"), ("aws:username", "bob")],
        A,
    );
    t.add(
        "version 2012 condition expands",
        pol_v(
            "2012-10-17",
            &[stc(
                "Allow",
                "*",
                "*",
                r#""StringEquals":{"s3:prefix":"${aws:username}"}"#,
            )],
        ),
        S3,
        OBJ,
        &[("s3:prefix", "bob"), ("aws:username", "bob")],
        A,
    );
    t.add(
        "version 2008 escape literal",
        pol_v("2008-10-17", &[allow(a, "arn:aws:s3:::b/${*}")]),
        a,
        "arn:aws:s3:::b/${*}",
        &[],
        A,
    );
    // Variables in condition values
    t.c(
        "var in StringEquals",
        r#""StringEquals":{"aws:ResourceTag/owner":"${aws:username}"}"#,
        &[("aws:ResourceTag/owner", "bob"), ("aws:username", "bob")],
        A,
    );
    t.c(
        "var in StringEquals mismatch",
        r#""StringEquals":{"aws:ResourceTag/owner":"${aws:username}"}"#,
        &[("aws:ResourceTag/owner", "eve"), ("aws:username", "bob")],
        I,
    );
    t.c(
        "var in StringLike",
        r#""StringLike":{"ssm:resourceTag/aws:ssmmessages:session-id":"${aws:userid}*"}"#,
        &[
            ("ssm:resourceTag/aws:ssmmessages:session-id", "AROA1:dev-1"),
            ("aws:userid", "AROA1:dev"),
        ],
        A,
    );
    t.c(
        "var SourceIp",
        r#""StringEquals":{"my:ip":"${aws:SourceIp}"}"#,
        &[("my:ip", "10.0.0.1"), ("aws:SourceIp", "10.0.0.1")],
        A,
    );
    t.c(
        "var CurrentTime",
        r#""StringEquals":{"my:t":"${aws:CurrentTime}"}"#,
        &[
            ("my:t", "2024-01-01T00:00:00Z"),
            ("aws:CurrentTime", "2024-01-01T00:00:00Z"),
        ],
        A,
    );
    t.c(
        "var in ArnLike",
        r#""ArnLike":{"aws:PrincipalArn":"arn:aws:iam::*:user/${aws:username}"}"#,
        &[
            ("aws:PrincipalArn", "arn:aws:iam::1:user/bob"),
            ("aws:username", "bob"),
        ],
        A,
    );
    t.c(
        "var unresolved in StringEquals",
        r#""StringEquals":{"aws:ResourceTag/owner":"${aws:username}"}"#,
        &[("aws:ResourceTag/owner", "${aws:username}")],
        I,
    );
    t.c(
        "var not expanded in Numeric",
        r#""NumericEquals":{"my:n":"${my:m}"}"#,
        &[("my:n", "5"), ("my:m", "5")],
        I,
    );
    t.add(
        "var unresolved negated deny still applies",
        pol(&[
            allow("*", "*"),
            stc(
                "Deny",
                "*",
                "*",
                r#""StringNotEquals":{"aws:ResourceTag/team":"${aws:PrincipalTag/team}"}"#,
            ),
        ]),
        S3,
        OBJ,
        &[("aws:ResourceTag/team", "red")],
        E,
    );
    t.add(
        "var resolved negated deny spared",
        pol(&[
            allow("*", "*"),
            stc(
                "Deny",
                "*",
                "*",
                r#""StringNotEquals":{"aws:ResourceTag/team":"${aws:PrincipalTag/team}"}"#,
            ),
        ]),
        S3,
        OBJ,
        &[
            ("aws:ResourceTag/team", "red"),
            ("aws:PrincipalTag/team", "red"),
        ],
        A,
    );
}

fn strings(t: &mut T) {
    let k = |v: &str| [("ssm:resourceTag/env", v.to_string())];
    let _ = k;
    let env = "ssm:resourceTag/env";
    t.c(
        "StringEquals match",
        r#""StringEquals":{"ssm:resourceTag/env":"dev"}"#,
        &[(env, "dev")],
        A,
    );
    t.c(
        "StringEquals mismatch",
        r#""StringEquals":{"ssm:resourceTag/env":"dev"}"#,
        &[(env, "prod")],
        I,
    );
    t.c(
        "StringEquals case-sensitive value",
        r#""StringEquals":{"ssm:resourceTag/env":"dev"}"#,
        &[(env, "DEV")],
        I,
    );
    t.c(
        "StringEquals values ORed",
        r#""StringEquals":{"ssm:resourceTag/env":["dev","test"]}"#,
        &[(env, "test")],
        A,
    );
    t.c(
        "StringEquals absent key",
        r#""StringEquals":{"ssm:resourceTag/env":"dev"}"#,
        &[],
        I,
    );
    t.c(
        "StringEquals no wildcard",
        r#""StringEquals":{"ssm:resourceTag/env":"d*"}"#,
        &[(env, "dev")],
        I,
    );
    t.c(
        "StringEquals key case-insensitive",
        r#""StringEquals":{"SSM:ResourceTag/ENV":"dev"}"#,
        &[(env, "dev")],
        A,
    );
    t.c(
        "StringEquals number value",
        r#""StringEquals":{"my:n":5}"#,
        &[("my:n", "5")],
        A,
    );
    t.c(
        "StringEquals bool value",
        r#""StringEquals":{"my:b":true}"#,
        &[("my:b", "true")],
        A,
    );
    t.c(
        "StringEquals multi-valued request any",
        r#""StringEquals":{"my:k":"b"}"#,
        &[("my:k", "a"), ("my:k", "b")],
        A,
    );
    t.c(
        "StringNotEquals differs",
        r#""StringNotEquals":{"ssm:resourceTag/env":"prod"}"#,
        &[(env, "dev")],
        A,
    );
    t.c(
        "StringNotEquals equal",
        r#""StringNotEquals":{"ssm:resourceTag/env":"prod"}"#,
        &[(env, "prod")],
        I,
    );
    t.c(
        "StringNotEquals absent key true",
        r#""StringNotEquals":{"ssm:resourceTag/env":"prod"}"#,
        &[],
        A,
    );
    t.c(
        "StringNotEquals none of values",
        r#""StringNotEquals":{"ssm:resourceTag/env":["prod","stage"]}"#,
        &[(env, "stage")],
        I,
    );
    t.c(
        "StringNotEquals none of values passes",
        r#""StringNotEquals":{"ssm:resourceTag/env":["prod","stage"]}"#,
        &[(env, "dev")],
        A,
    );
    t.c(
        "StringEqualsIgnoreCase match",
        r#""StringEqualsIgnoreCase":{"ssm:resourceTag/env":"DeV"}"#,
        &[(env, "dev")],
        A,
    );
    t.c(
        "StringEqualsIgnoreCase mismatch",
        r#""StringEqualsIgnoreCase":{"ssm:resourceTag/env":"dev"}"#,
        &[(env, "prod")],
        I,
    );
    t.c(
        "StringNotEqualsIgnoreCase same",
        r#""StringNotEqualsIgnoreCase":{"ssm:resourceTag/env":"PROD"}"#,
        &[(env, "prod")],
        I,
    );
    t.c(
        "StringNotEqualsIgnoreCase differs",
        r#""StringNotEqualsIgnoreCase":{"ssm:resourceTag/env":"PROD"}"#,
        &[(env, "dev")],
        A,
    );
    t.c(
        "StringLike star",
        r#""StringLike":{"ssm:resourceTag/env":"de*"}"#,
        &[(env, "dev")],
        A,
    );
    t.c(
        "StringLike question",
        r#""StringLike":{"ssm:resourceTag/env":"d?v"}"#,
        &[(env, "dev")],
        A,
    );
    t.c(
        "StringLike case-sensitive",
        r#""StringLike":{"ssm:resourceTag/env":"DE*"}"#,
        &[(env, "dev")],
        I,
    );
    t.c(
        "StringLike mismatch",
        r#""StringLike":{"ssm:resourceTag/env":"prod*"}"#,
        &[(env, "dev")],
        I,
    );
    t.c(
        "StringLike absent",
        r#""StringLike":{"ssm:resourceTag/env":"*"}"#,
        &[],
        I,
    );
    t.c(
        "StringNotLike match",
        r#""StringNotLike":{"ssm:resourceTag/env":"prod*"}"#,
        &[(env, "prod-eu")],
        I,
    );
    t.c(
        "StringNotLike nonmatch",
        r#""StringNotLike":{"ssm:resourceTag/env":"prod*"}"#,
        &[(env, "dev")],
        A,
    );
    t.c(
        "StringNotLike absent",
        r#""StringNotLike":{"ssm:resourceTag/env":"prod*"}"#,
        &[],
        A,
    );
    t.c(
        "keys ANDed one fails",
        r#""StringEquals":{"a:x":"1","a:y":"2"}"#,
        &[("a:x", "1"), ("a:y", "3")],
        I,
    );
    t.c(
        "keys ANDed both hold",
        r#""StringEquals":{"a:x":"1","a:y":"2"}"#,
        &[("a:x", "1"), ("a:y", "2")],
        A,
    );
    t.c(
        "operators ANDed one fails",
        r#""StringEquals":{"a:x":"1"},"NumericLessThan":{"a:n":"3"}"#,
        &[("a:x", "1"), ("a:n", "4")],
        I,
    );
    t.c(
        "operators ANDed both hold",
        r#""StringEquals":{"a:x":"1"},"NumericLessThan":{"a:n":"3"}"#,
        &[("a:x", "1"), ("a:n", "2")],
        A,
    );
    t.c(
        "StringEqualsIfExists absent",
        r#""StringEqualsIfExists":{"ssm:resourceTag/env":"dev"}"#,
        &[],
        A,
    );
    t.c(
        "StringEqualsIfExists present mismatch",
        r#""StringEqualsIfExists":{"ssm:resourceTag/env":"dev"}"#,
        &[(env, "prod")],
        I,
    );
    t.c(
        "StringNotEqualsIfExists present equal",
        r#""StringNotEqualsIfExists":{"ssm:resourceTag/env":"prod"}"#,
        &[(env, "prod")],
        I,
    );
    t.c(
        "StringLikeIfExists absent",
        r#""StringLikeIfExists":{"ssm:resourceTag/env":"d*"}"#,
        &[],
        A,
    );
    t.c(
        "StringNotLikeIfExists present match",
        r#""StringNotLikeIfExists":{"ssm:resourceTag/env":"d*"}"#,
        &[(env, "dev")],
        I,
    );
    t.c(
        "StringEqualsIgnoreCaseIfExists absent",
        r#""StringEqualsIgnoreCaseIfExists":{"ssm:resourceTag/env":"X"}"#,
        &[],
        A,
    );
    t.c(
        "StringNotEqualsIgnoreCaseIfExists present",
        r#""StringNotEqualsIgnoreCaseIfExists":{"ssm:resourceTag/env":"X"}"#,
        &[(env, "y")],
        A,
    );
    t.c(
        "operator name case-insensitive",
        r#""stringequals":{"ssm:resourceTag/env":"dev"}"#,
        &[(env, "dev")],
        A,
    );
}

fn numeric_date_bool(t: &mut T) {
    let n = "my:n";
    t.c(
        "NumericEquals",
        r#""NumericEquals":{"my:n":"10"}"#,
        &[(n, "10")],
        A,
    );
    t.c(
        "NumericEquals decimal vs int",
        r#""NumericEquals":{"my:n":10}"#,
        &[(n, "10.0")],
        A,
    );
    t.c(
        "NumericEquals mismatch",
        r#""NumericEquals":{"my:n":"10"}"#,
        &[(n, "11")],
        I,
    );
    t.c(
        "NumericNotEquals",
        r#""NumericNotEquals":{"my:n":"10"}"#,
        &[(n, "11")],
        A,
    );
    t.c(
        "NumericNotEquals equal",
        r#""NumericNotEquals":{"my:n":"10"}"#,
        &[(n, "10")],
        I,
    );
    t.c(
        "NumericLessThan",
        r#""NumericLessThan":{"my:n":"10"}"#,
        &[(n, "9.5")],
        A,
    );
    t.c(
        "NumericLessThan edge",
        r#""NumericLessThan":{"my:n":"10"}"#,
        &[(n, "10")],
        I,
    );
    t.c(
        "NumericLessThanEquals edge",
        r#""NumericLessThanEquals":{"my:n":"10"}"#,
        &[(n, "10")],
        A,
    );
    t.c(
        "NumericGreaterThan",
        r#""NumericGreaterThan":{"my:n":"10"}"#,
        &[(n, "11")],
        A,
    );
    t.c(
        "NumericGreaterThan edge",
        r#""NumericGreaterThan":{"my:n":"10"}"#,
        &[(n, "10")],
        I,
    );
    t.c(
        "NumericGreaterThanEquals edge",
        r#""NumericGreaterThanEquals":{"my:n":"10"}"#,
        &[(n, "10")],
        A,
    );
    t.c(
        "Numeric not a number",
        r#""NumericLessThan":{"my:n":"10"}"#,
        &[(n, "ten")],
        I,
    );
    t.c(
        "Numeric negative",
        r#""NumericLessThan":{"my:n":"0"}"#,
        &[(n, "-3")],
        A,
    );
    t.c(
        "NumericLessThanIfExists absent",
        r#""NumericLessThanIfExists":{"my:n":"10"}"#,
        &[],
        A,
    );
    t.c(
        "NumericLessThanIfExists present fails",
        r#""NumericLessThanIfExists":{"my:n":"10"}"#,
        &[(n, "20")],
        I,
    );
    t.c(
        "Numeric absent",
        r#""NumericGreaterThanEquals":{"my:n":"0"}"#,
        &[],
        I,
    );
    let ct = "aws:CurrentTime";
    t.c(
        "DateLessThan ISO",
        r#""DateLessThan":{"aws:CurrentTime":"2025-01-01T00:00:00Z"}"#,
        &[(ct, "2024-06-01T12:00:00Z")],
        A,
    );
    t.c(
        "DateLessThan ISO after",
        r#""DateLessThan":{"aws:CurrentTime":"2025-01-01T00:00:00Z"}"#,
        &[(ct, "2025-06-01T12:00:00Z")],
        I,
    );
    t.c(
        "DateGreaterThan",
        r#""DateGreaterThan":{"aws:CurrentTime":"2024-01-01T00:00:00Z"}"#,
        &[(ct, "2024-06-01T00:00:00Z")],
        A,
    );
    t.c(
        "DateGreaterThan epoch context",
        r#""DateGreaterThan":{"aws:CurrentTime":"2024-01-01T00:00:00Z"}"#,
        &[(ct, "1704067201")],
        A,
    );
    t.c(
        "DateLessThan epoch policy",
        r#""DateLessThan":{"aws:CurrentTime":1704067200}"#,
        &[(ct, "2023-12-31T23:59:59Z")],
        A,
    );
    t.c(
        "DateEquals same instant offsets",
        r#""DateEquals":{"aws:CurrentTime":"2024-03-01T13:00:00+01:00"}"#,
        &[(ct, "2024-03-01T12:00:00Z")],
        A,
    );
    t.c(
        "DateNotEquals differs",
        r#""DateNotEquals":{"aws:CurrentTime":"2024-03-01"}"#,
        &[(ct, "2024-03-02T00:00:00Z")],
        A,
    );
    t.c(
        "DateNotEquals same",
        r#""DateNotEquals":{"aws:CurrentTime":"2024-03-01"}"#,
        &[(ct, "2024-03-01T00:00:00Z")],
        I,
    );
    t.c(
        "DateLessThanEquals edge",
        r#""DateLessThanEquals":{"aws:CurrentTime":"2024-03-01T00:00:00Z"}"#,
        &[(ct, "2024-03-01T00:00:00Z")],
        A,
    );
    t.c(
        "DateGreaterThanEquals edge",
        r#""DateGreaterThanEquals":{"aws:CurrentTime":"2024-03-01T00:00:00Z"}"#,
        &[(ct, "2024-03-01T00:00:00Z")],
        A,
    );
    t.c(
        "Date invalid context",
        r#""DateLessThan":{"aws:CurrentTime":"2025-01-01"}"#,
        &[(ct, "soon")],
        I,
    );
    t.c(
        "Date no wildcards",
        r#""DateEquals":{"aws:CurrentTime":"2024-*"}"#,
        &[(ct, "2024-01-01")],
        I,
    );
    t.c(
        "DateGreaterThanIfExists absent",
        r#""DateGreaterThanIfExists":{"aws:CurrentTime":"2024-01-01"}"#,
        &[],
        A,
    );
    t.c(
        "Date fractional seconds",
        r#""DateLessThan":{"aws:CurrentTime":"2024-03-01T00:00:00.500Z"}"#,
        &[(ct, "2024-03-01T00:00:00.250Z")],
        A,
    );
    let st = "aws:SecureTransport";
    t.c(
        "Bool true",
        r#""Bool":{"aws:SecureTransport":"true"}"#,
        &[(st, "true")],
        A,
    );
    t.c(
        "Bool json true",
        r#""Bool":{"aws:SecureTransport":true}"#,
        &[(st, "true")],
        A,
    );
    t.c(
        "Bool case-insensitive",
        r#""Bool":{"aws:SecureTransport":"True"}"#,
        &[(st, "TRUE")],
        A,
    );
    t.c(
        "Bool mismatch",
        r#""Bool":{"aws:SecureTransport":"true"}"#,
        &[(st, "false")],
        I,
    );
    t.c(
        "Bool absent",
        r#""Bool":{"aws:SecureTransport":"false"}"#,
        &[],
        I,
    );
    t.c(
        "Bool non-boolean context",
        r#""Bool":{"aws:SecureTransport":"yes"}"#,
        &[(st, "yes")],
        I,
    );
    t.c(
        "BoolIfExists absent",
        r#""BoolIfExists":{"aws:SecureTransport":"true"}"#,
        &[],
        A,
    );
    t.add(
        "deny insecure transport",
        pol(&[
            allow("*", "*"),
            stc(
                "Deny",
                "*",
                "*",
                r#""Bool":{"aws:SecureTransport":"false"}"#,
            ),
        ]),
        S3,
        OBJ,
        &[(st, "false")],
        E,
    );
    t.add(
        "deny insecure transport spares tls",
        pol(&[
            allow("*", "*"),
            stc(
                "Deny",
                "*",
                "*",
                r#""Bool":{"aws:SecureTransport":"false"}"#,
            ),
        ]),
        S3,
        OBJ,
        &[(st, "true")],
        A,
    );
    let b = "my:bin";
    t.c(
        "BinaryEquals",
        r#""BinaryEquals":{"my:bin":"QmluYXJ5"}"#,
        &[(b, "QmluYXJ5")],
        A,
    );
    t.c(
        "BinaryEquals mismatch",
        r#""BinaryEquals":{"my:bin":"QmluYXJ5"}"#,
        &[(b, "QmluYXJ6")],
        I,
    );
    t.c(
        "BinaryEquals absent",
        r#""BinaryEquals":{"my:bin":"QmluYXJ5"}"#,
        &[],
        I,
    );
    t.c(
        "BinaryEqualsIfExists absent",
        r#""BinaryEqualsIfExists":{"my:bin":"QmluYXJ5"}"#,
        &[],
        A,
    );
}

fn ips_arns_null(t: &mut T) {
    let ip = "aws:SourceIp";
    t.c(
        "IpAddress in v4",
        r#""IpAddress":{"aws:SourceIp":"203.0.113.0/24"}"#,
        &[(ip, "203.0.113.7")],
        A,
    );
    t.c(
        "IpAddress out v4",
        r#""IpAddress":{"aws:SourceIp":"203.0.113.0/24"}"#,
        &[(ip, "203.0.114.7")],
        I,
    );
    t.c(
        "IpAddress v4 odd prefix",
        r#""IpAddress":{"aws:SourceIp":"10.0.0.0/9"}"#,
        &[(ip, "10.127.255.255")],
        A,
    );
    t.c(
        "IpAddress v4 odd prefix out",
        r#""IpAddress":{"aws:SourceIp":"10.0.0.0/9"}"#,
        &[(ip, "10.128.0.0")],
        I,
    );
    t.c(
        "IpAddress v6 in",
        r#""IpAddress":{"aws:SourceIp":"2001:db8::/32"}"#,
        &[(ip, "2001:db8:1::5")],
        A,
    );
    t.c(
        "IpAddress v6 out",
        r#""IpAddress":{"aws:SourceIp":"2001:db8::/32"}"#,
        &[(ip, "2001:db9::5")],
        I,
    );
    t.c(
        "IpAddress family mismatch",
        r#""IpAddress":{"aws:SourceIp":"::/0"}"#,
        &[(ip, "10.0.0.1")],
        I,
    );
    t.c(
        "IpAddress bare address",
        r#""IpAddress":{"aws:SourceIp":"192.0.2.1"}"#,
        &[(ip, "192.0.2.1")],
        A,
    );
    t.c(
        "IpAddress list ORed",
        r#""IpAddress":{"aws:SourceIp":["10.0.0.0/8","192.0.2.0/24"]}"#,
        &[(ip, "192.0.2.9")],
        A,
    );
    t.c(
        "IpAddress absent",
        r#""IpAddress":{"aws:SourceIp":"0.0.0.0/0"}"#,
        &[],
        I,
    );
    t.c(
        "IpAddress garbage context",
        r#""IpAddress":{"aws:SourceIp":"0.0.0.0/0"}"#,
        &[(ip, "not-an-ip")],
        I,
    );
    t.c(
        "NotIpAddress in",
        r#""NotIpAddress":{"aws:SourceIp":"203.0.113.0/24"}"#,
        &[(ip, "203.0.113.7")],
        I,
    );
    t.c(
        "NotIpAddress out",
        r#""NotIpAddress":{"aws:SourceIp":"203.0.113.0/24"}"#,
        &[(ip, "198.51.100.1")],
        A,
    );
    t.c(
        "NotIpAddress none of",
        r#""NotIpAddress":{"aws:SourceIp":["10.0.0.0/8","192.0.2.0/24"]}"#,
        &[(ip, "10.1.1.1")],
        I,
    );
    t.c(
        "NotIpAddress absent",
        r#""NotIpAddress":{"aws:SourceIp":"10.0.0.0/8"}"#,
        &[],
        A,
    );
    t.c(
        "IpAddressIfExists absent",
        r#""IpAddressIfExists":{"aws:SourceIp":"10.0.0.0/8"}"#,
        &[],
        A,
    );
    t.c(
        "NotIpAddressIfExists present in",
        r#""NotIpAddressIfExists":{"aws:SourceIp":"10.0.0.0/8"}"#,
        &[(ip, "10.0.0.1")],
        I,
    );
    t.add(
        "deny outside corporate range",
        pol(&[
            allow("*", "*"),
            stc(
                "Deny",
                "*",
                "*",
                r#""NotIpAddress":{"aws:SourceIp":["192.0.2.0/24","2001:db8::/32"]}"#,
            ),
        ]),
        S3,
        OBJ,
        &[(ip, "198.51.100.3")],
        E,
    );
    let pa = "aws:PrincipalArn";
    t.c(
        "ArnEquals exact",
        r#""ArnEquals":{"aws:PrincipalArn":"arn:aws:iam::123456789012:user/bob"}"#,
        &[(pa, "arn:aws:iam::123456789012:user/bob")],
        A,
    );
    t.c(
        "ArnEquals accepts wildcards",
        r#""ArnEquals":{"aws:PrincipalArn":"arn:aws:iam::*:user/*"}"#,
        &[(pa, "arn:aws:iam::123456789012:user/bob")],
        A,
    );
    t.c(
        "ArnLike role prefix",
        r#""ArnLike":{"aws:PrincipalArn":"arn:aws:iam::123456789012:role/ops-*"}"#,
        &[(pa, "arn:aws:iam::123456789012:role/ops-admin")],
        A,
    );
    t.c(
        "ArnLike case-sensitive",
        r#""ArnLike":{"aws:PrincipalArn":"arn:aws:iam::123456789012:user/Bob"}"#,
        &[(pa, "arn:aws:iam::123456789012:user/bob")],
        I,
    );
    t.c(
        "ArnLike service segment case-sensitive",
        r#""ArnLike":{"aws:PrincipalArn":"arn:aws:IAM::123456789012:user/bob"}"#,
        &[(pa, "arn:aws:iam::123456789012:user/bob")],
        I,
    );
    t.c(
        "ArnLike star stays in segment",
        r#""ArnLike":{"aws:PrincipalArn":"arn:aws:*:user/bob"}"#,
        &[(pa, "arn:aws:iam::123456789012:user/bob")],
        A,
    );
    t.c(
        "ArnLike segment star no colon crossing",
        r#""ArnLike":{"aws:PrincipalArn":"arn:aws:iam:*:user/bob:x:y"}"#,
        &[(pa, "arn:aws:iam::123456789012:user/bob")],
        I,
    );
    t.c(
        "ArnNotEquals match",
        r#""ArnNotEquals":{"aws:PrincipalArn":"arn:aws:iam::123456789012:user/bob"}"#,
        &[(pa, "arn:aws:iam::123456789012:user/bob")],
        I,
    );
    t.c(
        "ArnNotLike nonmatch",
        r#""ArnNotLike":{"aws:PrincipalArn":"arn:aws:iam::*:role/*"}"#,
        &[(pa, "arn:aws:iam::123456789012:user/bob")],
        A,
    );
    t.c(
        "ArnNotLike absent",
        r#""ArnNotLike":{"aws:PrincipalArn":"arn:aws:iam::*:role/*"}"#,
        &[],
        A,
    );
    t.c(
        "ArnLike absent",
        r#""ArnLike":{"aws:PrincipalArn":"arn:aws:iam::*:role/*"}"#,
        &[],
        I,
    );
    t.c(
        "ArnLikeIfExists absent",
        r#""ArnLikeIfExists":{"aws:PrincipalArn":"arn:aws:iam::*:role/*"}"#,
        &[],
        A,
    );
    t.c(
        "ArnEqualsIfExists present mismatch",
        r#""ArnEqualsIfExists":{"aws:PrincipalArn":"arn:aws:iam::*:role/*"}"#,
        &[(pa, "arn:aws:iam::1:user/x")],
        I,
    );
    t.c(
        "ArnNotEqualsIfExists present nonmatch",
        r#""ArnNotEqualsIfExists":{"aws:PrincipalArn":"arn:aws:iam::*:role/*"}"#,
        &[(pa, "arn:aws:iam::1:user/x")],
        A,
    );
    t.c(
        "ArnNotLikeIfExists present match",
        r#""ArnNotLikeIfExists":{"aws:PrincipalArn":"arn:aws:iam::*:user/*"}"#,
        &[(pa, "arn:aws:iam::1:user/x")],
        I,
    );
    let tag = "aws:ResourceTag/owner";
    t.c(
        "Null true absent",
        r#""Null":{"aws:ResourceTag/owner":"true"}"#,
        &[],
        A,
    );
    t.c(
        "Null true present",
        r#""Null":{"aws:ResourceTag/owner":"true"}"#,
        &[(tag, "bob")],
        I,
    );
    t.c(
        "Null false present",
        r#""Null":{"aws:ResourceTag/owner":"false"}"#,
        &[(tag, "bob")],
        A,
    );
    t.c(
        "Null false absent",
        r#""Null":{"aws:ResourceTag/owner":"false"}"#,
        &[],
        I,
    );
    t.c(
        "Null json bool",
        r#""Null":{"aws:ResourceTag/owner":true}"#,
        &[],
        A,
    );
    t.c(
        "Null empty multi-valued is absent",
        r#""Null":{"aws:TagKeys":"true"}"#,
        &[("aws:TagKeys", "<empty>")],
        A,
    );
    t.c(
        "Null key case-insensitive",
        r#""Null":{"AWS:RESOURCETAG/OWNER":"false"}"#,
        &[(tag, "bob")],
        A,
    );
}

fn qualifiers(t: &mut T) {
    let tk = "aws:TagKeys";
    t.c(
        "ForAnyValue one matches",
        r#""ForAnyValue:StringEquals":{"aws:TagKeys":["env","team"]}"#,
        &[(tk, "x"), (tk, "team")],
        A,
    );
    t.c(
        "ForAnyValue none match",
        r#""ForAnyValue:StringEquals":{"aws:TagKeys":["env","team"]}"#,
        &[(tk, "x"), (tk, "y")],
        I,
    );
    t.c(
        "ForAnyValue absent false",
        r#""ForAnyValue:StringEquals":{"aws:TagKeys":["env"]}"#,
        &[],
        I,
    );
    t.c(
        "ForAnyValue empty false",
        r#""ForAnyValue:StringEquals":{"aws:TagKeys":["env"]}"#,
        &[(tk, "<empty>")],
        I,
    );
    t.c(
        "ForAnyValue IfExists absent",
        r#""ForAnyValue:StringEqualsIfExists":{"aws:TagKeys":["env"]}"#,
        &[],
        A,
    );
    t.c(
        "ForAllValues all match",
        r#""ForAllValues:StringEquals":{"aws:TagKeys":["env","team"]}"#,
        &[(tk, "env"), (tk, "team")],
        A,
    );
    t.c(
        "ForAllValues one outside",
        r#""ForAllValues:StringEquals":{"aws:TagKeys":["env","team"]}"#,
        &[(tk, "env"), (tk, "cost")],
        I,
    );
    t.c(
        "ForAllValues absent true",
        r#""ForAllValues:StringEquals":{"aws:TagKeys":["env"]}"#,
        &[],
        A,
    );
    t.c(
        "ForAllValues empty true",
        r#""ForAllValues:StringEquals":{"aws:TagKeys":["env"]}"#,
        &[(tk, "<empty>")],
        A,
    );
    t.c(
        "ForAllValues single value",
        r#""ForAllValues:StringEquals":{"aws:TagKeys":"env"}"#,
        &[(tk, "env")],
        A,
    );
    t.c(
        "ForAnyValue StringLike",
        r#""ForAnyValue:StringLike":{"aws:TagKeys":"team-*"}"#,
        &[(tk, "env"), (tk, "team-a")],
        A,
    );
    t.c(
        "ForAllValues StringLike fails",
        r#""ForAllValues:StringLike":{"aws:TagKeys":"team-*"}"#,
        &[(tk, "env"), (tk, "team-a")],
        I,
    );
    t.c(
        "ForAnyValue StringNotEquals some outside",
        r#""ForAnyValue:StringNotEquals":{"aws:TagKeys":["env","team"]}"#,
        &[(tk, "env"), (tk, "cost")],
        A,
    );
    t.c(
        "ForAnyValue StringNotEquals all inside",
        r#""ForAnyValue:StringNotEquals":{"aws:TagKeys":["env","team"]}"#,
        &[(tk, "env"), (tk, "team")],
        I,
    );
    t.c(
        "ForAllValues StringNotEquals all outside",
        r#""ForAllValues:StringNotEquals":{"aws:TagKeys":["env","team"]}"#,
        &[(tk, "a"), (tk, "b")],
        A,
    );
    t.c(
        "ForAllValues StringNotEquals one inside",
        r#""ForAllValues:StringNotEquals":{"aws:TagKeys":["env","team"]}"#,
        &[(tk, "a"), (tk, "env")],
        I,
    );
    t.c(
        "ForAnyValue StringEqualsIgnoreCase",
        r#""ForAnyValue:StringEqualsIgnoreCase":{"aws:TagKeys":"ENV"}"#,
        &[(tk, "env")],
        A,
    );
    t.c(
        "ForAllValues NumericLessThan",
        r#""ForAllValues:NumericLessThan":{"my:ports":"1024"}"#,
        &[("my:ports", "22"), ("my:ports", "80")],
        A,
    );
    t.c(
        "ForAllValues NumericLessThan fails",
        r#""ForAllValues:NumericLessThan":{"my:ports":"1024"}"#,
        &[("my:ports", "22"), ("my:ports", "8080")],
        I,
    );
    t.c(
        "ForAnyValue IpAddress",
        r#""ForAnyValue:IpAddress":{"my:ips":"10.0.0.0/8"}"#,
        &[("my:ips", "192.0.2.1"), ("my:ips", "10.2.3.4")],
        A,
    );
    t.c(
        "ForAnyValue ArnLike",
        r#""ForAnyValue:ArnLike":{"my:arns":"arn:aws:iam::*:role/x"}"#,
        &[("my:arns", "arn:aws:iam::1:role/x")],
        A,
    );
    t.c(
        "ForAllValues qualifier case-insensitive",
        r#""forallvalues:stringequals":{"aws:TagKeys":"env"}"#,
        &[(tk, "cost")],
        I,
    );
    t.add(
        "ForAllValues deny absent applies",
        pol(&[
            allow("*", "*"),
            stc(
                "Deny",
                "*",
                "*",
                r#""ForAllValues:StringEquals":{"aws:TagKeys":["secret"]}"#,
            ),
        ]),
        S3,
        OBJ,
        &[],
        E,
    );
}

fn ssm_scenarios(t: &mut T) {
    let a = "ssm:StartSession";
    let tagged = pol(&[stc(
        "Allow",
        a,
        "arn:aws:ssm:*:*:managed-instance/*",
        r#""StringLike":{"ssm:resourceTag/Environment":["dev"]}"#,
    )]);
    t.add(
        "ssm tag dev allowed",
        tagged.clone(),
        a,
        MI,
        &[("ssm:resourceTag/Environment", "dev")],
        A,
    );
    t.add(
        "ssm tag prod denied",
        tagged.clone(),
        a,
        MI,
        &[("ssm:resourceTag/Environment", "prod")],
        I,
    );
    t.add("ssm tag missing denied", tagged, a, MI, &[], I);
    let pf_only = pol(&[allow(
        a,
        "arn:aws:ssm:*:*:managed-instance/*|arn:aws:ssm:*::document/AWS-StartPortForwardingSession",
    )]);
    t.add(
        "ssm port-forward doc allowed",
        pf_only.clone(),
        a,
        PF_DOC,
        &[],
        A,
    );
    t.add(
        "ssm shell doc not allowed",
        pf_only.clone(),
        a,
        SHELL_DOC,
        &[],
        I,
    );
    t.add("ssm target allowed under pf policy", pf_only, a, MI, &[], A);
    let checked = pol(&[stc(
        "Allow",
        a,
        "arn:aws:ssm:*:*:managed-instance/*|arn:aws:ssm:*:*:document/AWS-StartPortForwardingSession",
        r#""BoolIfExists":{"ssm:SessionDocumentAccessCheck":"true"}"#,
    )]);
    let chk = "ssm:SessionDocumentAccessCheck";
    t.add(
        "ssm doc check true allows target",
        checked.clone(),
        a,
        MI,
        &[(chk, "true")],
        A,
    );
    t.add(
        "ssm doc check false fails",
        checked.clone(),
        a,
        MI,
        &[(chk, "false")],
        I,
    );
    t.add(
        "ssm doc check absent allows",
        checked.clone(),
        a,
        MI,
        &[],
        A,
    );
    t.add(
        "ssm doc check shell doc not listed",
        checked,
        a,
        SHELL_DOC,
        &[(chk, "true")],
        I,
    );
    let term = pol(&[allow(
        "ssm:TerminateSession|ssm:ResumeSession",
        "arn:aws:ssm:*:*:session/${aws:username}-*",
    )]);
    t.add(
        "ssm resume own session",
        term.clone(),
        "ssm:ResumeSession",
        "arn:aws:ssm:us-east-1:123456789012:session/dana-0123456789abcdef0",
        &[("aws:username", "dana")],
        A,
    );
    t.add(
        "ssm resume prefix-sharing user",
        term,
        "ssm:ResumeSession",
        "arn:aws:ssm:us-east-1:123456789012:session/danaX-0123456789abcdef0",
        &[("aws:username", "dana")],
        I,
    );
    t.add(
        "ssm aws:ResourceTag equivalent",
        pol(&[stc(
            "Allow",
            a,
            "*",
            r#""StringEquals":{"aws:ResourceTag/Environment":"dev"}"#,
        )]),
        a,
        MI,
        &[("aws:resourcetag/environment", "dev")],
        A,
    );
    t.add(
        "kms encryption context key case-insensitive",
        pol(&[stc(
            "Allow",
            "kms:Decrypt",
            "*",
            r#""StringEquals":{"kms:EncryptionContext:SessionId":"s-1"}"#,
        )]),
        "kms:Decrypt",
        "arn:aws:kms:us-east-1:123456789012:key/abc",
        &[("kms:encryptioncontext:sessionid", "s-1")],
        A,
    );
}

fn all_cases() -> Vec<Case> {
    let mut t = T(Vec::new());
    actions(&mut t);
    resources(&mut t);
    decisions(&mut t);
    boundaries(&mut t);
    versions_and_variables(&mut t);
    strings(&mut t);
    numeric_date_bool(&mut t);
    ips_arns_null(&mut t);
    qualifiers(&mut t);
    ssm_scenarios(&mut t);
    t.0
}

fn context(pairs: &[(String, String)]) -> Context {
    let mut ctx = Context::new();
    for (k, v) in pairs {
        if v == "<empty>" {
            ctx.set(k, Vec::new());
        } else {
            ctx.insert(k, v.clone());
        }
    }
    ctx
}

fn parse_all(docs: &[String], case: &str) -> Vec<Policy> {
    docs.iter()
        .enumerate()
        .map(|(i, d)| {
            Policy::parse_named(&format!("p{i}"), d)
                .unwrap_or_else(|e| panic!("case {case:?}: policy {i} does not parse: {e}\n{d}"))
        })
        .collect()
}

#[test]
fn table() {
    let cases = all_cases();
    let mut names = std::collections::HashSet::new();
    let mut failures = Vec::new();
    for case in &cases {
        assert!(
            names.insert(case.name.clone()),
            "duplicate case name {:?}",
            case.name
        );
        let policies = parse_all(&case.policies, &case.name);
        let refs: Vec<&Policy> = policies.iter().collect();
        let boundary = case.boundary.as_ref().map(|b| parse_all(b, &case.name));
        let brefs: Option<Vec<&Policy>> = boundary.as_ref().map(|b| b.iter().collect());
        let req = Request::new(
            case.action.clone(),
            case.resource.clone(),
            context(&case.ctx),
        );
        let got = evaluate(&refs, brefs.as_deref(), &req);
        if got.effect != case.expect {
            failures.push(format!(
                "{}: expected {:?}, got {:?}",
                case.name, case.expect, got.effect
            ));
        }
        match got.effect {
            DecisionEffect::ImplicitDeny => assert!(got.matched.is_empty(), "{}", case.name),
            _ => assert!(
                !got.matched.is_empty(),
                "{}: no deciding statement",
                case.name
            ),
        }
    }
    println!("{} table cases", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(cases.len() >= 150, "only {} cases", cases.len());
}
