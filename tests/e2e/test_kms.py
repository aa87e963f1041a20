"""The KMS JSON 1.1 API of the gateway, driven by boto3's `kms` client and
the `aws kms` CLI: key lifecycle, aliases, encrypt/decrypt, data keys,
rotation, and the AWS error codes."""

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.exceptions import ClientError


def code(excinfo):
    return excinfo.value.response["Error"]["Code"]


@pytest.fixture
def kms(gateway):
    return gateway.client("kms")


def test_key_lifecycle_and_aliases(kms):
    meta = kms.create_key(Description="sessions")["KeyMetadata"]
    key_id, arn = meta["KeyId"], meta["Arn"]
    assert arn == f"arn:aws:kms:us-east-1:{meta['AWSAccountId']}:key/{key_id}"
    assert meta["KeyState"] == "Enabled" and meta["Enabled"] is True
    assert meta["KeySpec"] == "SYMMETRIC_DEFAULT"

    assert kms.describe_key(KeyId=arn)["KeyMetadata"]["KeyId"] == key_id
    assert {"KeyId": key_id, "KeyArn": arn} in kms.list_keys()["Keys"]

    kms.create_alias(AliasName="alias/sessions", TargetKeyId=key_id)
    with pytest.raises(ClientError) as e:
        kms.create_alias(AliasName="alias/sessions", TargetKeyId=key_id)
    assert code(e) == "AlreadyExistsException"
    with pytest.raises(ClientError) as e:
        kms.create_alias(AliasName="alias/aws/reserved", TargetKeyId=key_id)
    assert code(e) == "ValidationException"

    aliases = kms.list_aliases(KeyId=key_id)["Aliases"]
    assert [a["AliasName"] for a in aliases] == ["alias/sessions"]
    assert aliases[0]["AliasArn"].endswith(":alias/sessions")
    # Every key form names the same key.
    for ref in (key_id, arn, "alias/sessions", aliases[0]["AliasArn"]):
        assert kms.describe_key(KeyId=ref)["KeyMetadata"]["Arn"] == arn

    kms.delete_alias(AliasName="alias/sessions")
    with pytest.raises(ClientError) as e:
        kms.describe_key(KeyId="alias/sessions")
    assert code(e) == "NotFoundException"
    with pytest.raises(ClientError) as e:
        kms.describe_key(KeyId="00000000-0000-4000-8000-000000000000")
    assert code(e) == "NotFoundException"

    # Pagination walks every key exactly once, whatever keys the gateway
    # made for itself (the recordings key).
    for _ in range(2):
        kms.create_key()
    every = [k["KeyId"] for k in kms.list_keys()["Keys"]]
    assert key_id in every and len(every) >= 3
    seen, marker = [], None
    while True:
        page = kms.list_keys(Limit=2, **({"Marker": marker} if marker else {}))
        assert len(page["Keys"]) <= 2
        seen += [k["KeyId"] for k in page["Keys"]]
        if not page["Truncated"]:
            break
        marker = page["NextMarker"]
    assert seen == every


def test_encrypt_decrypt_and_context(kms):
    key = kms.create_key()["KeyMetadata"]
    ctx = {"aws:ssm:SessionId": "alice-0123", "aws:ssm:TargetId": "mi-0123"}
    out = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"hello", EncryptionContext=ctx)
    assert out["KeyId"] == key["Arn"]
    blob = out["CiphertextBlob"]

    got = kms.decrypt(CiphertextBlob=blob, EncryptionContext=dict(reversed(list(ctx.items()))))
    assert got["Plaintext"] == b"hello" and got["KeyId"] == key["Arn"]

    for wrong in ({}, {**ctx, "aws:ssm:SessionId": "bob-0123"}, {**ctx, "extra": "x"}):
        with pytest.raises(ClientError) as e:
            kms.decrypt(CiphertextBlob=blob, EncryptionContext=wrong)
        assert code(e) == "InvalidCiphertextException"
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(ClientError) as e:
        kms.decrypt(CiphertextBlob=bytes(tampered), EncryptionContext=ctx)
    assert code(e) == "InvalidCiphertextException"

    other = kms.create_key()["KeyMetadata"]
    with pytest.raises(ClientError) as e:
        kms.decrypt(CiphertextBlob=blob, EncryptionContext=ctx, KeyId=other["KeyId"])
    assert code(e) == "IncorrectKeyException"

    # ReEncrypt moves the ciphertext to another key and context.
    re = kms.re_encrypt(
        CiphertextBlob=blob, SourceEncryptionContext=ctx,
        DestinationKeyId=other["Arn"], DestinationEncryptionContext={"k": "v"},
    )
    assert re["SourceKeyId"] == key["Arn"] and re["KeyId"] == other["Arn"]
    assert kms.decrypt(CiphertextBlob=re["CiphertextBlob"], EncryptionContext={"k": "v"})["Plaintext"] == b"hello"


def test_data_keys(kms):
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    ctx = {"purpose": "test"}
    dk = kms.generate_data_key(KeyId=key, NumberOfBytes=64, EncryptionContext=ctx)
    assert len(dk["Plaintext"]) == 64
    assert kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)["Plaintext"] == dk["Plaintext"]
    assert len(kms.generate_data_key(KeyId=key, KeySpec="AES_128")["Plaintext"]) == 16
    assert len(kms.generate_data_key(KeyId=key, KeySpec="AES_256")["Plaintext"]) == 32

    np = kms.generate_data_key_without_plaintext(KeyId=key, KeySpec="AES_256")
    assert "Plaintext" not in np
    assert len(kms.decrypt(CiphertextBlob=np["CiphertextBlob"])["Plaintext"]) == 32

    for bad in ({}, {"NumberOfBytes": 32, "KeySpec": "AES_256"}, {"NumberOfBytes": 2000}, {"KeySpec": "AES_512"}):
        with pytest.raises(ClientError) as e:
            kms.generate_data_key(KeyId=key, **bad)
        assert code(e) == "ValidationException", bad


def test_rotation_keeps_old_ciphertexts(kms):
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    assert kms.get_key_rotation_status(KeyId=key)["KeyRotationEnabled"] is False
    kms.enable_key_rotation(KeyId=key, RotationPeriodInDays=90)
    status = kms.get_key_rotation_status(KeyId=key)
    assert status["KeyRotationEnabled"] is True and status["RotationPeriodInDays"] == 90

    old = kms.encrypt(KeyId=key, Plaintext=b"before")["CiphertextBlob"]
    kms.rotate_key_on_demand(KeyId=key)
    new = kms.encrypt(KeyId=key, Plaintext=b"after")["CiphertextBlob"]
    assert old[:21] != new[:21], "the new ciphertext must name the new material version"
    assert kms.decrypt(CiphertextBlob=old)["Plaintext"] == b"before"
    assert kms.decrypt(CiphertextBlob=new)["Plaintext"] == b"after"


def test_disabled_and_deleted_keys_refuse(kms):
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key, Plaintext=b"x")["CiphertextBlob"]
    kms.disable_key(KeyId=key)
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Disabled"
    for call in (
        lambda: kms.encrypt(KeyId=key, Plaintext=b"x"),
        lambda: kms.decrypt(CiphertextBlob=blob),
        lambda: kms.generate_data_key(KeyId=key, KeySpec="AES_256"),
    ):
        with pytest.raises(ClientError) as e:
            call()
        assert code(e) == "DisabledException"
    kms.enable_key(KeyId=key)
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"x"

    out = kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    assert out["KeyState"] == "PendingDeletion"
    with pytest.raises(ClientError) as e:
        kms.encrypt(KeyId=key, Plaintext=b"x")
    assert code(e) == "KMSInvalidStateException"
    with pytest.raises(ClientError) as e:
        kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=3)
    assert code(e) == "ValidationException"
    kms.cancel_key_deletion(KeyId=key)
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Disabled"


def test_bad_input_gets_aws_errors(gateway, kms):
    with pytest.raises(ClientError) as e:
        kms.decrypt(CiphertextBlob=b"\x01" * 10)
    assert code(e) == "InvalidCiphertextException"
    with pytest.raises(ClientError) as e:
        kms.encrypt(KeyId="not-a-key", Plaintext=b"x")
    assert code(e) == "NotFoundException"
    with pytest.raises(ClientError) as e:
        kms.encrypt(KeyId=kms.create_key()["KeyMetadata"]["KeyId"], Plaintext=b"x" * 5000)
    assert code(e) == "ValidationException"
    # Ciphertext for a key this gateway never had.
    blob = bytearray(kms.encrypt(KeyId=kms.create_key()["KeyMetadata"]["KeyId"], Plaintext=b"x")["CiphertextBlob"])
    blob[1:17] = bytes(16)
    with pytest.raises(ClientError) as e:
        kms.decrypt(CiphertextBlob=bytes(blob))
    assert code(e) == "AccessDeniedException"


def test_keys_survive_restart_and_root_key_stays_out_of_db(gateway, kms):
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key, Plaintext=b"persist", EncryptionContext={"a": "b"})["CiphertextBlob"]
    root = (gateway.data_dir / "root.key")
    assert root.stat().st_mode & 0o077 == 0
    db = (gateway.data_dir / "gateway.db").read_bytes()
    wal = gateway.data_dir / "gateway.db-wal"
    if wal.exists():
        db += wal.read_bytes()
    assert root.read_bytes() not in db
    gateway.stop()
    gateway.start()
    kms = gateway.client("kms")
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "b"})["Plaintext"] == b"persist"


def aws_cli():
    exe = Path(sys.executable).parent / "aws"
    return str(exe) if exe.exists() else shutil.which("aws")


def test_aws_cli(gateway, workdir):
    aws = aws_cli()
    assert aws, "aws CLI is not installed (scripts/test-all installs it)"

    def run(*args):
        out = subprocess.run(
            [aws, "kms", *args, "--endpoint-url", gateway.url, "--output", "json"],
            env=gateway.env(), capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout) if out.stdout.strip() else {}

    key = run("create-key", "--description", "cli")["KeyMetadata"]["KeyId"]
    run("create-alias", "--alias-name", "alias/cli", "--target-key-id", key)
    # fileb:// means raw bytes in both CLI v1 and v2.
    plain = Path(workdir) / "plain.bin"
    plain.write_bytes(b"from the cli")
    enc = run(
        "encrypt", "--key-id", "alias/cli", "--plaintext", f"fileb://{plain}",
        "--encryption-context", "purpose=cli",
    )
    blob = Path(workdir) / "blob.bin"
    blob.write_bytes(base64.b64decode(enc["CiphertextBlob"]))
    dec = run("decrypt", "--ciphertext-blob", f"fileb://{blob}", "--encryption-context", "purpose=cli")
    assert base64.b64decode(dec["Plaintext"]) == b"from the cli"

    wrong = subprocess.run(
        [aws, "kms", "decrypt", "--ciphertext-blob", f"fileb://{blob}", "--endpoint-url", gateway.url],
        env=gateway.env(), capture_output=True, text=True, timeout=60,
    )
    assert wrong.returncode != 0
    assert "InvalidCiphertextException" in wrong.stderr


def iam(gateway, action, **params):
    """Calls the gateway's IAM admin API (`AirlockIAM.*`, SigV4 service
    `iam`) with the admin key, as `airlock admin` does."""
    import urllib.request
    import ssl
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    key, secret = gateway.admin_keys()
    body = json.dumps(params).encode()
    req = AWSRequest(method="POST", url=gateway.url + "/", data=body, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": f"AirlockIAM.{action}"})
    SigV4Auth(Credentials(key, secret), "iam", "us-east-1").add_auth(req)
    ctx = ssl.create_default_context(cafile=gateway.ca_bundle) if gateway.url.startswith("https") else None
    http = urllib.request.Request(gateway.url + "/", data=body, headers=dict(req.headers), method="POST")
    with urllib.request.urlopen(http, context=ctx, timeout=30) as r:
        text = r.read().decode()
    return json.loads(text) if text.strip() else {}


def make_user(gateway, name, statements):
    iam(gateway, "CreateUser", UserName=name)
    iam(gateway, "PutUserPolicy", UserName=name, PolicyName=f"{name}-policy",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}))
    k = iam(gateway, "CreateAccessKey", UserName=name)["AccessKey"]
    return k["AccessKeyId"], k["SecretAccessKey"]


def test_encryption_context_condition_allows_only_own_sessions(gateway, kms):
    key = kms.create_key()["KeyMetadata"]
    ak, sk = make_user(gateway, "alice", [{
        "Effect": "Allow", "Action": ["kms:GenerateDataKey", "kms:Decrypt"], "Resource": key["Arn"],
        "Condition": {"StringLike": {"kms:EncryptionContext:aws:ssm:SessionId": "${aws:username}-*"}},
    }])
    alice = gateway.client("kms", key=ak, secret=sk)
    own = {"aws:ssm:SessionId": "alice-0123456789abcdef0", "aws:ssm:TargetId": "mi-0123456789abcdef0"}
    dk = alice.generate_data_key(KeyId=key["Arn"], NumberOfBytes=64, EncryptionContext=own)
    assert alice.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=own)["Plaintext"] == dk["Plaintext"]

    for ctx in ({**own, "aws:ssm:SessionId": "bob-0123456789abcdef0"}, {}):
        with pytest.raises(ClientError) as e:
            alice.generate_data_key(KeyId=key["Arn"], NumberOfBytes=64, EncryptionContext=ctx)
        assert code(e) == "AccessDeniedException"
        assert "kms:GenerateDataKey" in e.value.response["Error"]["Message"]
    # Another key is not covered at all.
    other = kms.create_key()["KeyMetadata"]
    with pytest.raises(ClientError) as e:
        alice.generate_data_key(KeyId=other["Arn"], NumberOfBytes=64, EncryptionContext=own)
    assert code(e) == "AccessDeniedException"
    # Decrypt is authorized against the key inside the ciphertext.
    theirs = kms.encrypt(KeyId=other["KeyId"], Plaintext=b"x", EncryptionContext=own)["CiphertextBlob"]
    with pytest.raises(ClientError) as e:
        alice.decrypt(CiphertextBlob=theirs, EncryptionContext=own)
    assert code(e) == "AccessDeniedException"
