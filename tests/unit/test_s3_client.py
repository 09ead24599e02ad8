"""The CLI's and the reader's S3 client: botocore's retries configured, `AWS_RETRY_MODE` /
`AWS_MAX_ATTEMPTS` honoured, and a bad value refused by the CLI naming it (no request is made)."""

from __future__ import annotations

import pytest

from encord_mirror.adapters.aws.s3 import S3ClientConfigError, s3_client
from encord_mirror.cli.main import main
from encord_mirror.reader import LakeReadError, open_lake

ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # boto3 finds credentials and region in the environment, so building a client opens no socket
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)


def test_the_s3_client_retries_in_standard_mode_ten_times_by_default() -> None:
    client = s3_client(ENV)
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 10}
    assert client.meta.config.connect_timeout == 10 and client.meta.config.read_timeout == 60


def test_botocores_own_variables_override_the_retries() -> None:
    client = s3_client({**ENV, "AWS_RETRY_MODE": "adaptive", "AWS_MAX_ATTEMPTS": "4"})
    assert client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 4}


@pytest.mark.parametrize(
    ("name", "value"), [("AWS_RETRY_MODE", "eager"), ("AWS_MAX_ATTEMPTS", "0"), ("AWS_MAX_ATTEMPTS", "x")]
)
def test_a_bad_retry_setting_is_refused_naming_it(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(S3ClientConfigError, match=name):
        s3_client({**ENV, name: value})
    for key, setting in {**ENV, name: value}.items():
        monkeypatch.setenv(key, setting)
    assert main(["coco", "latest", "--lake", "s3://bucket/lake", "--project", "p"]) == 2
    assert f"{name}={value!r}" in capsys.readouterr().err
    with pytest.raises(LakeReadError, match=name):
        open_lake("s3://bucket/lake")
