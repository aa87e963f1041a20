//! `airlock admin <verb> --flag value ...`: the gateway's IAM admin API with
//! the verbs and flags of `aws iam` (`create-user --user-name alice`,
//! `put-user-policy --policy-document file://p.json`, ...). Responses are
//! printed as the JSON the API returned, like `aws iam --output json`.

use serde_json::{json, Map, Value};

use crate::commands::{api_client, tls_config, ConnOpts};
use crate::error::ClientError;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// One string.
    Str,
    /// A policy document: `file://path` or the JSON text itself.
    Doc,
    /// One or more strings.
    List,
    /// One or more policy documents.
    DocList,
    /// `Key=k,Value=v ...` or JSON.
    Tags,
    /// `ContextKeyName=k,ContextKeyValues=v1,v2,ContextKeyType=string ...` or JSON.
    Context,
}

struct Verb {
    name: &'static str,
    action: &'static str,
    params: &'static [(&'static str, &'static str, Kind)],
}

use Kind::*;

const USER: (&str, &str, Kind) = ("user-name", "UserName", Str);
const GROUP: (&str, &str, Kind) = ("group-name", "GroupName", Str);
const ROLE: (&str, &str, Kind) = ("role-name", "RoleName", Str);
const PNAME: (&str, &str, Kind) = ("policy-name", "PolicyName", Str);
const PDOC: (&str, &str, Kind) = ("policy-document", "PolicyDocument", Doc);
const PARN: (&str, &str, Kind) = ("policy-arn", "PolicyArn", Str);
const KEY: (&str, &str, Kind) = ("access-key-id", "AccessKeyId", Str);
const BOUNDARY: (&str, &str, Kind) = ("permissions-boundary", "PermissionsBoundary", Str);
const SIM: [(&str, &str, Kind); 6] = [
    ("action-names", "ActionNames", List),
    ("resource-arns", "ResourceArns", List),
    ("context-entries", "ContextEntries", Context),
    ("policy-input-list", "PolicyInputList", DocList),
    (
        "permissions-boundary-policy-input-list",
        "PermissionsBoundaryPolicyInputList",
        DocList,
    ),
    ("caller-arn", "CallerArn", Str),
];

const VERBS: &[Verb] = &[
    Verb {
        name: "create-user",
        action: "CreateUser",
        params: &[USER, ("tags", "Tags", Tags), BOUNDARY],
    },
    Verb {
        name: "get-user",
        action: "GetUser",
        params: &[USER],
    },
    Verb {
        name: "list-users",
        action: "ListUsers",
        params: &[],
    },
    Verb {
        name: "delete-user",
        action: "DeleteUser",
        params: &[USER],
    },
    Verb {
        name: "tag-user",
        action: "TagUser",
        params: &[USER, ("tags", "Tags", Tags)],
    },
    Verb {
        name: "untag-user",
        action: "UntagUser",
        params: &[USER, ("tag-keys", "TagKeys", List)],
    },
    Verb {
        name: "list-user-tags",
        action: "ListUserTags",
        params: &[USER],
    },
    Verb {
        name: "put-user-permissions-boundary",
        action: "PutUserPermissionsBoundary",
        params: &[USER, BOUNDARY],
    },
    Verb {
        name: "delete-user-permissions-boundary",
        action: "DeleteUserPermissionsBoundary",
        params: &[USER],
    },
    Verb {
        name: "create-access-key",
        action: "CreateAccessKey",
        params: &[USER],
    },
    Verb {
        name: "list-access-keys",
        action: "ListAccessKeys",
        params: &[USER],
    },
    Verb {
        name: "update-access-key",
        action: "UpdateAccessKey",
        params: &[USER, KEY, ("status", "Status", Str)],
    },
    Verb {
        name: "delete-access-key",
        action: "DeleteAccessKey",
        params: &[USER, KEY],
    },
    Verb {
        name: "put-user-policy",
        action: "PutUserPolicy",
        params: &[USER, PNAME, PDOC],
    },
    Verb {
        name: "get-user-policy",
        action: "GetUserPolicy",
        params: &[USER, PNAME],
    },
    Verb {
        name: "delete-user-policy",
        action: "DeleteUserPolicy",
        params: &[USER, PNAME],
    },
    Verb {
        name: "list-user-policies",
        action: "ListUserPolicies",
        params: &[USER],
    },
    Verb {
        name: "attach-user-policy",
        action: "AttachUserPolicy",
        params: &[USER, PARN],
    },
    Verb {
        name: "detach-user-policy",
        action: "DetachUserPolicy",
        params: &[USER, PARN],
    },
    Verb {
        name: "list-attached-user-policies",
        action: "ListAttachedUserPolicies",
        params: &[USER],
    },
    Verb {
        name: "create-group",
        action: "CreateGroup",
        params: &[GROUP],
    },
    Verb {
        name: "get-group",
        action: "GetGroup",
        params: &[GROUP],
    },
    Verb {
        name: "list-groups",
        action: "ListGroups",
        params: &[],
    },
    Verb {
        name: "delete-group",
        action: "DeleteGroup",
        params: &[GROUP],
    },
    Verb {
        name: "add-user-to-group",
        action: "AddUserToGroup",
        params: &[GROUP, USER],
    },
    Verb {
        name: "remove-user-from-group",
        action: "RemoveUserFromGroup",
        params: &[GROUP, USER],
    },
    Verb {
        name: "list-groups-for-user",
        action: "ListGroupsForUser",
        params: &[USER],
    },
    Verb {
        name: "put-group-policy",
        action: "PutGroupPolicy",
        params: &[GROUP, PNAME, PDOC],
    },
    Verb {
        name: "get-group-policy",
        action: "GetGroupPolicy",
        params: &[GROUP, PNAME],
    },
    Verb {
        name: "delete-group-policy",
        action: "DeleteGroupPolicy",
        params: &[GROUP, PNAME],
    },
    Verb {
        name: "list-group-policies",
        action: "ListGroupPolicies",
        params: &[GROUP],
    },
    Verb {
        name: "attach-group-policy",
        action: "AttachGroupPolicy",
        params: &[GROUP, PARN],
    },
    Verb {
        name: "detach-group-policy",
        action: "DetachGroupPolicy",
        params: &[GROUP, PARN],
    },
    Verb {
        name: "list-attached-group-policies",
        action: "ListAttachedGroupPolicies",
        params: &[GROUP],
    },
    Verb {
        name: "create-role",
        action: "CreateRole",
        params: &[
            ROLE,
            (
                "assume-role-policy-document",
                "AssumeRolePolicyDocument",
                Doc,
            ),
            ("description", "Description", Str),
            BOUNDARY,
        ],
    },
    Verb {
        name: "get-role",
        action: "GetRole",
        params: &[ROLE],
    },
    Verb {
        name: "list-roles",
        action: "ListRoles",
        params: &[],
    },
    Verb {
        name: "delete-role",
        action: "DeleteRole",
        params: &[ROLE],
    },
    Verb {
        name: "update-assume-role-policy",
        action: "UpdateAssumeRolePolicy",
        params: &[ROLE, PDOC],
    },
    Verb {
        name: "put-role-policy",
        action: "PutRolePolicy",
        params: &[ROLE, PNAME, PDOC],
    },
    Verb {
        name: "get-role-policy",
        action: "GetRolePolicy",
        params: &[ROLE, PNAME],
    },
    Verb {
        name: "delete-role-policy",
        action: "DeleteRolePolicy",
        params: &[ROLE, PNAME],
    },
    Verb {
        name: "list-role-policies",
        action: "ListRolePolicies",
        params: &[ROLE],
    },
    Verb {
        name: "attach-role-policy",
        action: "AttachRolePolicy",
        params: &[ROLE, PARN],
    },
    Verb {
        name: "detach-role-policy",
        action: "DetachRolePolicy",
        params: &[ROLE, PARN],
    },
    Verb {
        name: "list-attached-role-policies",
        action: "ListAttachedRolePolicies",
        params: &[ROLE],
    },
    Verb {
        name: "put-role-permissions-boundary",
        action: "PutRolePermissionsBoundary",
        params: &[ROLE, BOUNDARY],
    },
    Verb {
        name: "delete-role-permissions-boundary",
        action: "DeleteRolePermissionsBoundary",
        params: &[ROLE],
    },
    Verb {
        name: "create-policy",
        action: "CreatePolicy",
        params: &[PNAME, PDOC, ("description", "Description", Str)],
    },
    Verb {
        name: "get-policy",
        action: "GetPolicy",
        params: &[PARN],
    },
    Verb {
        name: "list-policies",
        action: "ListPolicies",
        params: &[],
    },
    Verb {
        name: "delete-policy",
        action: "DeletePolicy",
        params: &[PARN],
    },
    Verb {
        name: "simulate-custom-policy",
        action: "SimulateCustomPolicy",
        params: &SIM,
    },
    Verb {
        name: "simulate-principal-policy",
        action: "SimulatePrincipalPolicy",
        params: &[
            ("policy-source-arn", "PolicySourceArn", Str),
            SIM[0],
            SIM[1],
            SIM[2],
            SIM[3],
        ],
    },
];

fn usage() -> String {
    let mut s = String::from(
        "usage: airlock admin <verb> [--flag value ...] [--endpoint-url URL] [--region R] [--profile P]\n\nverbs (as `aws iam`):\n",
    );
    for v in VERBS {
        let flags: Vec<String> = v.params.iter().map(|(f, _, _)| format!("--{f}")).collect();
        let line = format!("  {:<34} {}", v.name, flags.join(" "));
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

/// `file://path` (as the AWS CLI reads it) or the text itself.
fn read_doc(v: &str) -> Result<String, ClientError> {
    match v.strip_prefix("file://") {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| ClientError::Usage(format!("cannot read {path}: {e}"))),
        None => Ok(v.to_string()),
    }
}

/// Splits `A=x,B=y` shorthand; a value may contain commas when the next
/// segment does not start a known key (`ContextKeyValues=a,b`).
fn shorthand(s: &str, keys: &[&str]) -> Result<Map<String, Value>, ClientError> {
    let mut out: Map<String, Value> = Map::new();
    let mut current: Option<String> = None;
    for part in s.split(',') {
        let starts_key = part
            .split_once('=')
            .filter(|(k, _)| keys.contains(k))
            .map(|(k, v)| (k.to_string(), v.to_string()));
        match (starts_key, &current) {
            (Some((k, v)), _) => {
                out.insert(k.clone(), json!([v]));
                current = Some(k);
            }
            (None, Some(k)) => {
                if let Some(Value::Array(a)) = out.get_mut(k) {
                    a.push(json!(part));
                }
            }
            (None, None) => {
                return Err(ClientError::Usage(format!(
                    "expected {} in {s:?}",
                    keys.join("=, ")
                )))
            }
        }
    }
    Ok(out)
}

fn first(m: &Map<String, Value>, k: &str) -> Value {
    m.get(k)
        .and_then(|v| v.as_array())
        .map(|a| {
            let parts: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
            json!(parts.join(","))
        })
        .unwrap_or(Value::Null)
}

fn json_or(
    values: &[String],
    f: impl Fn(&str) -> Result<Value, ClientError>,
) -> Result<Value, ClientError> {
    if values.len() == 1 && values[0].trim_start().starts_with('[') {
        return serde_json::from_str(&values[0])
            .map_err(|e| ClientError::Usage(format!("invalid JSON: {e}")));
    }
    values
        .iter()
        .map(|v| {
            if v.trim_start().starts_with('{') {
                serde_json::from_str(v)
                    .map_err(|e| ClientError::Usage(format!("invalid JSON: {e}")))
            } else {
                f(v)
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

fn value_for(kind: Kind, values: &[String], flag: &str) -> Result<Value, ClientError> {
    let one = || -> Result<&String, ClientError> {
        match values {
            [v] => Ok(v),
            _ => Err(ClientError::Usage(format!("--{flag} takes one value"))),
        }
    };
    Ok(match kind {
        Str => json!(one()?),
        Doc => json!(read_doc(one()?)?),
        List => json!(values),
        DocList => json!(values
            .iter()
            .map(|v| read_doc(v))
            .collect::<Result<Vec<_>, _>>()?),
        Tags => json_or(values, |v| {
            let m = shorthand(v, &["Key", "Value"])?;
            Ok(json!({"Key": first(&m, "Key"), "Value": first(&m, "Value")}))
        })?,
        Context => json_or(values, |v| {
            let m = shorthand(v, &["ContextKeyName", "ContextKeyValues", "ContextKeyType"])?;
            Ok(json!({
                "ContextKeyName": first(&m, "ContextKeyName"),
                "ContextKeyValues": m.get("ContextKeyValues").cloned().unwrap_or(json!([])),
                "ContextKeyType": m.get("ContextKeyType").map(|_| first(&m, "ContextKeyType")).unwrap_or(json!("string")),
            }))
        })?,
    })
}

/// Parses `<verb> --flag v...` into the action, its JSON body and the
/// connection options.
pub fn parse(args: &[String]) -> Result<(&'static str, Value, ConnOpts), ClientError> {
    let Some((verb_name, rest)) = args.split_first() else {
        return Err(ClientError::Usage(usage()));
    };
    if verb_name == "help" || verb_name == "--help" || verb_name == "-h" {
        return Err(ClientError::Usage(usage()));
    }
    let verb = VERBS
        .iter()
        .find(|v| v.name == verb_name)
        .ok_or_else(|| ClientError::Usage(format!("unknown verb {verb_name:?}\n\n{}", usage())))?;
    let mut conn = ConnOpts::default();
    let mut body = Map::new();
    let mut i = 0;
    while i < rest.len() {
        let flag = rest[i]
            .strip_prefix("--")
            .ok_or_else(|| ClientError::Usage(format!("expected a --flag, got {:?}", rest[i])))?;
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (flag, None),
        };
        let mut values = Vec::new();
        if let Some(v) = inline {
            values.push(v);
        }
        i += 1;
        if values.is_empty() {
            while i < rest.len() && !rest[i].starts_with("--") {
                values.push(rest[i].clone());
                i += 1;
            }
        }
        if values.is_empty() {
            return Err(ClientError::Usage(format!("--{flag} needs a value")));
        }
        let single = || values.first().cloned();
        match flag {
            "endpoint-url" => conn.endpoint_url = single(),
            "region" => conn.region = single(),
            "profile" => conn.profile = single(),
            _ => {
                let (_, member, kind) = verb
                    .params
                    .iter()
                    .find(|(f, _, _)| *f == flag)
                    .ok_or_else(|| {
                        ClientError::Usage(format!("{} does not take --{flag}", verb.name))
                    })?;
                body.insert(member.to_string(), value_for(*kind, &values, flag)?);
            }
        }
    }
    Ok((verb.action, Value::Object(body), conn))
}

/// Runs one admin verb; prints the response JSON (nothing for an empty one).
pub async fn run(args: &[String]) -> Result<i32, ClientError> {
    if matches!(
        args.first().map(String::as_str),
        Some("help" | "--help" | "-h")
    ) {
        print!("{}", usage());
        return Ok(0);
    }
    let (action, mut body, conn) = parse(args)?;
    let api = api_client(&conn, tls_config()?)?;
    let mut resp = api.call_json("iam", "AirlockIAM", action, &body).await?;
    // List answers come in pages; print them whole, as `aws iam` does.
    while let Some(marker) = next_marker(&resp) {
        body["Marker"] = marker;
        let page = api.call_json("iam", "AirlockIAM", action, &body).await?;
        resp = merge_page(resp, page);
    }
    if resp.as_object().is_some_and(|o| !o.is_empty()) {
        println!(
            "{}",
            serde_json::to_string_pretty(&resp).unwrap_or_else(|_| resp.to_string())
        );
    }
    Ok(0)
}

/// The `Marker` to ask for the next page with, if the answer was cut short.
fn next_marker(resp: &Value) -> Option<Value> {
    if resp.get("IsTruncated") != Some(&Value::Bool(true)) {
        return None;
    }
    resp.get("Marker").filter(|m| m.is_string()).cloned()
}

/// `page`'s list appended to `so_far`'s (the one array member a List
/// answer has), with `page`'s `IsTruncated` and `Marker`.
fn merge_page(mut so_far: Value, page: Value) -> Value {
    let Value::Object(page) = page else {
        return so_far;
    };
    for (k, v) in page {
        match (so_far.get_mut(&k), v) {
            (Some(Value::Array(items)), Value::Array(more)) => items.extend(more),
            (_, v) if k == "IsTruncated" || k == "Marker" => so_far[&k] = v,
            _ => {}
        }
    }
    if so_far.get("IsTruncated") != Some(&Value::Bool(true)) {
        if let Some(o) = so_far.as_object_mut() {
            o.remove("Marker");
        }
    }
    so_far
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_merged_until_the_last() {
        let first = json!({"Users": [{"UserName": "a"}], "IsTruncated": true, "Marker": "1"});
        assert_eq!(next_marker(&first), Some(json!("1")));
        let last = json!({"Users": [{"UserName": "b"}], "IsTruncated": false});
        let all = merge_page(first, last);
        assert_eq!(
            all,
            json!({"Users": [{"UserName": "a"}, {"UserName": "b"}], "IsTruncated": false})
        );
        assert_eq!(next_marker(&all), None);
    }

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_flags_lists_and_conn() {
        let (action, body, conn) = parse(&args(&[
            "simulate-custom-policy",
            "--policy-input-list",
            "{\"Version\":\"2012-10-17\"}",
            "--action-names",
            "ssm:StartSession",
            "ssm:TerminateSession",
            "--context-entries",
            "ContextKeyName=aws:username,ContextKeyValues=alice,bob,ContextKeyType=stringList",
            "--endpoint-url",
            "https://x",
        ]))
        .unwrap();
        assert_eq!(action, "SimulateCustomPolicy");
        assert_eq!(
            body["ActionNames"],
            json!(["ssm:StartSession", "ssm:TerminateSession"])
        );
        assert_eq!(
            body["ContextEntries"],
            json!([{"ContextKeyName": "aws:username", "ContextKeyValues": ["alice", "bob"], "ContextKeyType": "stringList"}])
        );
        assert_eq!(conn.endpoint_url.as_deref(), Some("https://x"));
    }

    #[test]
    fn tags_and_errors() {
        let (_, body, _) = parse(&args(&[
            "tag-user",
            "--user-name",
            "a",
            "--tags",
            "Key=team,Value=x",
            "Key=env,Value=dev",
        ]))
        .unwrap();
        assert_eq!(
            body["Tags"],
            json!([{"Key": "team", "Value": "x"}, {"Key": "env", "Value": "dev"}])
        );
        assert!(parse(&args(&["create-user", "--bogus", "x"])).is_err());
        assert!(parse(&args(&["nope"])).is_err());
        assert!(parse(&args(&["create-user", "--user-name"])).is_err());
    }
}
