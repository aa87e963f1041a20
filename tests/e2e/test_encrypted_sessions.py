"""Session preferences (the SSM document API for Session documents) and
end-to-end encrypted sessions: the client's GenerateDataKey, the agent's
Decrypt, the challenge round trip, and a relay tap showing that what the
shell prints never crosses the gateway in clear."""

import json
import socket
import subprocess
import threading
import time

import pytest
from botocore.exceptions import ClientError

from conftest import REGION, airlock, binary


def code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def prefs(**inputs):
    return json.dumps({
        "schemaVersion": "1.0",
        "description": "Session Manager preferences",
        "sessionType": "Standard_Stream",
        "inputs": inputs,
    })


def test_session_document_api(gateway):
    ssm = gateway.client()
    out = ssm.create_document(
        Name="SSM-SessionManagerRunShell", DocumentType="Session", DocumentFormat="JSON",
        Content=prefs(kmsKeyId="", runAsEnabled=False, idleSessionTimeout="20", s3BucketName="audit"),
    )["DocumentDescription"]
    assert out["DocumentVersion"] == "1" and out["DocumentType"] == "Session"
    with pytest.raises(ClientError) as e:
        ssm.create_document(Name="SSM-SessionManagerRunShell", DocumentType="Session", Content=prefs())
    assert code(e) == "DocumentAlreadyExists"

    upd = ssm.update_document(
        Name="SSM-SessionManagerRunShell", DocumentVersion="$LATEST",
        Content=prefs(kmsKeyId="alias/sessions", runAsEnabled=True, runAsDefaultUser="nobody",
                      shellProfile={"linux": "cd /tmp", "windows": ""}, maxSessionDuration="60"),
    )["DocumentDescription"]
    assert upd["DocumentVersion"] == "2" and upd["LatestVersion"] == "2"
    with pytest.raises(ClientError) as e:
        ssm.update_document(Name="SSM-SessionManagerRunShell", DocumentVersion="$LATEST",
                            Content=prefs(kmsKeyId="alias/sessions", runAsEnabled=True, runAsDefaultUser="nobody",
                                          shellProfile={"linux": "cd /tmp", "windows": ""}, maxSessionDuration="60"))
    assert code(e) == "DuplicateDocumentContent"

    # As in AWS, an update adds a version; the default stays until moved.
    got = ssm.get_document(Name="SSM-SessionManagerRunShell")
    assert got["DocumentVersion"] == "1"
    assert json.loads(got["Content"])["inputs"]["s3BucketName"] == "audit"
    latest = ssm.get_document(Name="SSM-SessionManagerRunShell", DocumentVersion="$LATEST")
    assert json.loads(latest["Content"])["inputs"]["kmsKeyId"] == "alias/sessions"

    ssm.update_document_default_version(Name="SSM-SessionManagerRunShell", DocumentVersion="2")
    d = ssm.describe_document(Name="SSM-SessionManagerRunShell")["Document"]
    assert d["DefaultVersion"] == "2" and d["LatestVersion"] == "2"
    with pytest.raises(ClientError) as e:
        ssm.update_document_default_version(Name="SSM-SessionManagerRunShell", DocumentVersion="7")
    assert code(e) == "InvalidDocumentVersion"

    names = [x["Name"] for x in ssm.list_documents(Filters=[{"Key": "DocumentType", "Values": ["Session"]}])["DocumentIdentifiers"]]
    assert "SSM-SessionManagerRunShell" in names and "AWS-StartPortForwardingSession" in names
    own = [x["Name"] for x in ssm.list_documents(Filters=[{"Key": "Owner", "Values": ["Self"]}])["DocumentIdentifiers"]]
    assert own == ["SSM-SessionManagerRunShell"]
    assert json.loads(ssm.get_document(Name="AWS-StartPortForwardingSession")["Content"])["sessionType"] == "Port"

    for bad, err in (
        (prefs(idleSessionTimeout="0"), "InvalidDocumentContent"),
        (prefs(bogusSetting="x"), "InvalidDocumentContent"),
        (prefs(requireEncryption=True), "InvalidDocumentContent"),
        ("{not json", "InvalidDocumentContent"),
        (json.dumps({"schemaVersion": "2.2", "sessionType": "Standard_Stream"}), "InvalidDocumentSchemaVersion"),
    ):
        with pytest.raises(ClientError) as e:
            ssm.create_document(Name="Custom-Prefs", DocumentType="Session", Content=bad)
        assert code(e) == err, bad
    with pytest.raises(ClientError) as e:
        ssm.create_document(Name="AWS-Mine", DocumentType="Session", Content=prefs())
    assert code(e) == "ValidationException"

    ssm.delete_document(Name="SSM-SessionManagerRunShell")
    with pytest.raises(ClientError) as e:
        ssm.delete_document(Name="SSM-SessionManagerRunShell")
    assert code(e) == "InvalidDocument"
