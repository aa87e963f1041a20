"""Issue 3: IAM-style authorization end to end. Users, keys and policies are
made with `airlock admin` (as an operator would with `aws iam`); the users
then call the gateway with boto3 and the airlock CLI using their own keys."""

import json
import re
import urllib.error
from pathlib import Path

import botocore.exceptions
import pytest

from conftest import Agent, airlock

ACCOUNT = "123456789012"
REGION = "us-east-1"
SHELL_DOC = "arn:aws:ssm:*:*:document/SSM-SessionManagerRunShell"


def admin(gateway, *args, expect_ok=True):
    out = airlock(gateway, "admin", *args)
    if expect_ok:
        assert out.returncode == 0, (args, out.stdout, out.stderr)
    text = out.stdout.decode()
    return (json.loads(text) if text.strip() else {}), out


def policy_file(workdir, name, statements):
    path = Path(workdir) / f"{name}.json"
    path.write_text(json.dumps({"Version": "2012-10-17", "Statement": statements}, indent=2))
    return f"file://{path}"


def make_user(gateway, workdir, name, statements=None):
    """Creates a user (with an inline policy if given) and its first key."""
    admin(gateway, "create-user", "--user-name", name)
    if statements is not None:
        admin(gateway, "put-user-policy", "--user-name", name, "--policy-name", f"{name}-policy",
              "--policy-document", policy_file(workdir, name, statements))
    key, _ = admin(gateway, "create-access-key", "--user-name", name)
    k = key["AccessKey"]
    assert k["UserName"] == name and k["Status"] == "Active"
    assert len(k["SecretAccessKey"]) == 40
    return k["AccessKeyId"], k["SecretAccessKey"]


def denied(excinfo):
    err = excinfo.value.response["Error"]
    assert err["Code"] == "AccessDeniedException", err
    return err["Message"]


def tag(gateway, agent, env):
    gateway.client().add_tags_to_resource(
        ResourceType="ManagedInstance", ResourceId=agent.instance_id,
        Tags=[{"Key": "Environment", "Value": env}])


@pytest.fixture
def two_agents(gateway, workdir):
    dev = Agent(gateway, workdir, name="dev")
    prod = Agent(gateway, workdir, name="prod")
    tag(gateway, dev, "dev")
    tag(gateway, prod, "prod")
    yield dev, prod
    dev.stop()
    prod.stop()


def test_tag_scoped_user_shell_on_dev_denied_on_prod(gateway, workdir, two_agents):
    dev, prod = two_agents
    key, secret = make_user(gateway, workdir, "alice", [
        {"Sid": "DevTargets", "Effect": "Allow", "Action": "ssm:StartSession",
         "Resource": "arn:aws:ssm:*:*:managed-instance/*",
         "Condition": {"StringEquals": {"ssm:resourceTag/Environment": "dev"}}},
        {"Sid": "ShellDocument", "Effect": "Allow", "Action": "ssm:StartSession", "Resource": SHELL_DOC},
        {"Sid": "OwnSessions", "Effect": "Allow",
         "Action": ["ssm:TerminateSession", "ssm:ResumeSession"],
         "Resource": "arn:aws:ssm:*:*:session/${aws:username}-*"},
    ])
    # A real shell through the airlock CLI with alice's key.
    env = gateway.env(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret)
    out = airlock(gateway, "start-session", "--target", dev.instance_id,
                  stdin=b"echo iam-$((40+2)); exit 0\n", env=env)
    assert "iam-42" in out.stdout.decode(errors="replace"), out.stderr
    assert out.returncode == 0, out.stderr

    ssm = gateway.client(key=key, secret=secret)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ssm.start_session(Target=prod.instance_id)
    target_arn = f"arn:aws:ssm:{REGION}:{ACCOUNT}:managed-instance/{prod.instance_id}"
    assert denied(e) == (
        f"User: arn:aws:iam::{ACCOUNT}:user/alice is not authorized to perform: ssm:StartSession "
        f"on resource: {target_arn} because no identity-based policy allows the ssm:StartSession action")
    # Nothing else is allowed either.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ssm.describe_instance_information()
    denied(e)

    # Every decision is in the audit log, with the deciding statement.
    events = [e for e in map(json.loads, (gateway.data_dir / "audit.log").read_text().splitlines())
              if e["event"] == "authorization"]
    mine = [e for e in events if e["principal"] == f"arn:aws:iam::{ACCOUNT}:user/alice"]
    allowed = [e for e in mine if e["action"] == "ssm:StartSession" and e["decision"] == "allowed"]
    assert {e["statement"] for e in allowed} == {"alice-policy#DevTargets", "alice-policy#ShellDocument"}
    refused = [e for e in mine if e["resource"] == target_arn]
    assert refused and refused[0]["decision"] == "implicitDeny"
    assert refused[0]["source_ip"] == "127.0.0.1" and refused[0]["request_id"]


def test_port_forwarding_only_user_cannot_open_shell(gateway, workdir, agent):
    key, secret = make_user(gateway, workdir, "pf", [
        {"Effect": "Allow", "Action": "ssm:StartSession",
         "Resource": ["arn:aws:ssm:*:*:managed-instance/*",
                      f"arn:aws:ssm:{REGION}::document/AWS-StartPortForwardingSession"]},
        {"Effect": "Allow", "Action": "ssm:TerminateSession",
         "Resource": "arn:aws:ssm:*:*:session/${aws:username}-*"},
    ])
    ssm = gateway.client(key=key, secret=secret)
    started = ssm.start_session(Target=agent.instance_id, DocumentName="AWS-StartPortForwardingSession",
                                Parameters={"portNumber": ["22"], "localPortNumber": ["0"]})
    assert started["SessionId"].startswith("pf-")
    ssm.terminate_session(SessionId=started["SessionId"])
    # Default document and the explicit shell document are both refused.
    for kwargs in ({}, {"DocumentName": "SSM-SessionManagerRunShell"}):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ssm.start_session(Target=agent.instance_id, **kwargs)
        assert "document/SSM-SessionManagerRunShell" in denied(e)
    env = gateway.env(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret)
    out = airlock(gateway, "start-session", "--target", agent.instance_id, stdin=b"exit 0\n", env=env)
    assert out.returncode == 254
    assert b"AccessDeniedException" in out.stderr


def test_users_terminate_only_their_own_sessions(gateway, workdir, agent):
    statements = [
        {"Effect": "Allow", "Action": "ssm:StartSession",
         "Resource": ["arn:aws:ssm:*:*:managed-instance/*", SHELL_DOC]},
        {"Effect": "Allow", "Action": "ssm:TerminateSession",
         "Resource": "arn:aws:ssm:*:*:session/${aws:username}-*"},
    ]
    bob_key, bob_secret = make_user(gateway, workdir, "bob", statements)
    carol_key, carol_secret = make_user(gateway, workdir, "carol", statements)
    bob = gateway.client(key=bob_key, secret=bob_secret)
    carol = gateway.client(key=carol_key, secret=carol_secret)
    bob_session = bob.start_session(Target=agent.instance_id)["SessionId"]
    assert re.fullmatch(r"bob-[0-9a-f]{17}", bob_session)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        carol.terminate_session(SessionId=bob_session)
    assert denied(e).endswith(
        f"ssm:TerminateSession on resource: arn:aws:ssm:{REGION}:{ACCOUNT}:session/{bob_session} "
        "because no identity-based policy allows the ssm:TerminateSession action")
    assert bob.terminate_session(SessionId=bob_session)["SessionId"] == bob_session


def test_explicit_deny_beats_admin_allow(gateway, workdir, agent):
    key, secret = make_user(gateway, workdir, "dave")
    admin(gateway, "attach-user-policy", "--user-name", "dave",
          "--policy-arn", "arn:aws:iam::aws:policy/AdministratorAccess")
    admin(gateway, "create-group", "--group-name", "no-shell")
    admin(gateway, "add-user-to-group", "--group-name", "no-shell", "--user-name", "dave")
    admin(gateway, "put-group-policy", "--group-name", "no-shell", "--policy-name", "deny-start",
          "--policy-document", policy_file(workdir, "deny", [
              {"Sid": "NoSessions", "Effect": "Deny", "Action": "ssm:StartSession", "Resource": "*"}]))
    ssm = gateway.client(key=key, secret=secret)
    assert ssm.describe_instance_information()["InstanceInformationList"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ssm.start_session(Target=agent.instance_id)
    assert denied(e).endswith("with an explicit deny in an identity-based policy")
    attached, _ = admin(gateway, "list-attached-user-policies", "--user-name", "dave")
    assert attached["AttachedPolicies"] == [
        {"PolicyName": "AdministratorAccess", "PolicyArn": "arn:aws:iam::aws:policy/AdministratorAccess"}]


def test_disabled_key_stops_working_at_once(gateway, workdir, agent):
    key, secret = make_user(gateway, workdir, "erin", [
        {"Effect": "Allow", "Action": "ssm:DescribeInstanceInformation", "Resource": "*"}])
    ssm = gateway.client(key=key, secret=secret)
    assert ssm.describe_instance_information()["InstanceInformationList"]
    admin(gateway, "update-access-key", "--user-name", "erin", "--access-key-id", key, "--status", "Inactive")
    listed, _ = admin(gateway, "list-access-keys", "--user-name", "erin")
    assert listed["AccessKeyMetadata"][0]["Status"] == "Inactive"
    assert "SecretAccessKey" not in listed["AccessKeyMetadata"][0]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ssm.describe_instance_information()
    assert e.value.response["Error"]["Code"] == "UnrecognizedClientException"
    admin(gateway, "update-access-key", "--user-name", "erin", "--access-key-id", key, "--status", "Active")
    assert ssm.describe_instance_information()["InstanceInformationList"]


def test_simulate_policies_and_admin_api_is_authorized(gateway, workdir):
    doc = policy_file(workdir, "sim", [
        {"Sid": "Own", "Effect": "Allow", "Action": "ssm:TerminateSession",
         "Resource": "arn:aws:ssm:*:*:session/${aws:username}-*"},
        {"Sid": "NoProd", "Effect": "Deny", "Action": "ssm:StartSession", "Resource": "*",
         "Condition": {"StringEquals": {"ssm:resourceTag/Environment": "prod"}}},
    ])
    out, _ = admin(gateway, "simulate-custom-policy", "--policy-input-list", doc,
                   "--action-names", "ssm:TerminateSession", "ssm:StartSession",
                   "--resource-arns", f"arn:aws:ssm:{REGION}:{ACCOUNT}:session/frank-0123",
                   "--context-entries",
                   "ContextKeyName=aws:username,ContextKeyValues=frank,ContextKeyType=string",
                   "ContextKeyName=ssm:resourceTag/Environment,ContextKeyValues=prod,ContextKeyType=string")
    results = {r["EvalActionName"]: r for r in out["EvaluationResults"]}
    assert results["ssm:TerminateSession"]["EvalDecision"] == "allowed"
    assert results["ssm:TerminateSession"]["MatchedStatements"][0]["Sid"] == "Own"
    assert results["ssm:StartSession"]["EvalDecision"] == "explicitDeny"
    assert results["ssm:StartSession"]["MatchedStatements"][0]["Sid"] == "NoProd"

    # A principal simulation reads the user's stored policies.
    frank_key, frank_secret = make_user(gateway, workdir, "frank", [
        {"Effect": "Allow", "Action": "ssm:DescribeSessions", "Resource": "*"}])
    out, _ = admin(gateway, "simulate-principal-policy",
                   "--policy-source-arn", f"arn:aws:iam::{ACCOUNT}:user/frank",
                   "--action-names", "ssm:DescribeSessions", "iam:CreateUser")
    decisions = [r["EvalDecision"] for r in out["EvaluationResults"]]
    assert decisions == ["allowed", "implicitDeny"]

    # Malformed policies name the line and the problem.
    bad = Path(workdir) / "bad.json"
    bad.write_text('{\n  "Version": "2012-10-17",\n  "Statement": [\n    {"Effect": "Allow", "Action": "*"\n  ]\n}\n')
    _, res = admin(gateway, "put-user-policy", "--user-name", "frank", "--policy-name", "bad",
                   "--policy-document", f"file://{bad}", expect_ok=False)
    assert res.returncode == 254
    assert b"MalformedPolicyDocument" in res.stderr and b"line 5" in res.stderr, res.stderr

    # The admin API itself is policy-checked: frank may not create users.
    env = gateway.env(AWS_ACCESS_KEY_ID=frank_key, AWS_SECRET_ACCESS_KEY=frank_secret)
    res = airlock(gateway, "admin", "create-user", "--user-name", "mallory", env=env)
    assert res.returncode == 254
    assert (f"User: arn:aws:iam::{ACCOUNT}:user/frank is not authorized to perform: iam:CreateUser "
            f"on resource: arn:aws:iam::{ACCOUNT}:user/mallory").encode() in res.stderr, res.stderr


def test_agent_acts_as_its_role_with_short_lived_credentials(gateway, agent, workdir):
    # The agent traded its registration key for role credentials ...
    log = (Path(workdir) / "agent.log").read_text(errors="replace")
    assert "role credentials obtained" in log
    assert "SecretAccessKey" not in log
    # ... and its control channel was authorized against its role.
    events = [e for e in map(json.loads, (gateway.data_dir / "audit.log").read_text().splitlines())
              if e["event"] == "authorization"]
    ctrl = [e for e in events if e["action"] == "ssmmessages:CreateControlChannel"]
    assert ctrl, events
    assert ctrl[-1]["principal"] == (
        f"arn:aws:sts::{ACCOUNT}:assumed-role/AirlockManagedInstance/{agent.instance_id}")
    assert ctrl[-1]["decision"] == "allowed"
    assert ctrl[-1]["statement"].startswith("arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore#")


def test_activation_needs_pass_role_on_its_role(gateway, workdir):
    """An activation hands its role to every agent it registers, so creating
    one is passing the role: ssm:CreateActivation alone is not enough."""
    key, secret = make_user(gateway, workdir, "ops", [
        {"Effect": "Allow", "Action": "ssm:CreateActivation", "Resource": "*"},
    ])
    ssm = gateway.client(key=key, secret=secret)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ssm.create_activation(IamRole="AirlockManagedInstance")
    assert "iam:PassRole on resource: arn:aws:iam::" in denied(e)
    admin(gateway, "put-user-policy", "--user-name", "ops", "--policy-name", "pass",
          "--policy-document", policy_file(workdir, "pass", [
              {"Effect": "Allow", "Action": "iam:PassRole",
               "Resource": "arn:aws:iam::*:role/AirlockManagedInstance",
               "Condition": {"StringEquals": {"iam:PassedToService": "ssm.amazonaws.com"}}}]))
    assert ssm.create_activation(IamRole="AirlockManagedInstance")["ActivationId"]


def test_list_calls_come_in_pages_and_the_cli_follows_them(gateway):
    """The admin API pages List answers (100 by default, MaxItems, Marker);
    `airlock admin list-users` prints every page as one list."""
    from test_console import iam

    for i in range(120):
        iam(gateway, "CreateUser", UserName=f"user-{i:03}")
    first = iam(gateway, "ListUsers")
    assert len(first["Users"]) == 100 and first["IsTruncated"] is True, first.keys()
    small = iam(gateway, "ListUsers", MaxItems=7)
    assert len(small["Users"]) == 7 and small["IsTruncated"]
    rest = iam(gateway, "ListUsers", MaxItems=1000, Marker=small["Marker"])
    assert rest["IsTruncated"] is False and "Marker" not in rest
    names = [u["UserName"] for u in small["Users"] + rest["Users"]]
    assert len(names) == 121 and len(set(names)) == 121
    listed, _ = admin(gateway, "list-users")
    assert sorted(u["UserName"] for u in listed["Users"]) == sorted(names)
    assert listed["IsTruncated"] is False
    for bad in ({"Marker": "nope"}, {"MaxItems": 0}):
        with pytest.raises(urllib.error.HTTPError) as e:
            iam(gateway, "ListUsers", **bad)
        assert e.value.code == 400
        assert json.loads(e.value.read())["__type"] == "ValidationError"
