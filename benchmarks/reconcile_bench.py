"""What a reconciling run (`sync --full`) costs when nothing changed: wall time and lake requests, on a
local lake and on S3 (moto's server on loopback), so a change to reconciliation can be compared before
and after (`python -m benchmarks.reconcile_bench --rows 10000`, with PYTHONPATH pointing at the other
version's `src` for "before"). Prints one JSON line per lake with the median of `--repeat` runs."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import boto3
from moto.moto_server.threaded_moto_server import ThreadedMotoServer

from benchmarks.mirror_bench import _drain_log, _fixture
from encord_emulator.keys import generate_keypair


def _once(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.reconcile_once", *args],
        capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["exit"] != 0:
        raise RuntimeError(f"sync exited {result['exit']}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reconcile_bench")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    args = parser.parse_args()
    data, project = _fixture(args.rows)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        env["XDG_CACHE_HOME"] = str(work / "cache")
        key, pub = generate_keypair(work)
        (work / "key.pub").write_text(pub)
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.create_bucket(Bucket=bucket)
        emu = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.emulator_proc", "--data", str(data), "--project", project,
             "--pubkey", str(work / "key.pub"), "--latency-ms", str(args.latency_ms)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert emu.stdin is not None and emu.stdout is not None
        try:
            url = emu.stdout.readline().strip()
            for name, lake in (("local", str(work / "lake")), ("s3", f"s3://{bucket}/lake")):
                base = ["--project", project, "--lake", lake, "--ssh-key", str(key), "--encord-domain", url,
                        "--coco", "off"]  # fmt: skip
                _once(base, env)  # the first sync
                _drain_log(url)
                runs = [_once([*base, "--full"], env) for _ in range(args.repeat)]
                requests, initialised, _writes = _drain_log(url)
                seconds = statistics.median(r["seconds"] for r in runs)
                counts = {k: v for k, v in runs[-1].items() if k not in ("seconds", "exit")}
                line = {
                    "lake": name,
                    "rows": args.rows,
                    "full_sync_seconds": round(seconds, 2),
                    "encord_requests": requests // args.repeat,
                    "initialised": initialised,
                    **counts,
                }
                print(json.dumps(line), flush=True)
        finally:
            emu.stdin.close()
            emu.wait(timeout=30)
            moto.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
