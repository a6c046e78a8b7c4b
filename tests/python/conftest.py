"""Fixtures for the Python client test: stubs generated from our proto at
test time (with Debian's protoc and grpc_python_plugin) and a real
accel-server binary on port 0."""
import os
import re
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


@pytest.fixture(scope="session")
def stubs():
    out = tempfile.mkdtemp(prefix="accel_stubs_")
    subprocess.run(
        ["protoc", f"--python_out={out}", f"--grpc_out={out}",
         "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin",
         "-I", os.path.join(REPO, "proto"), "accel/v1/tensor_ops.proto"],
        check=True)
    sys.path.insert(0, out)
    sys.path.insert(0, os.path.join(REPO, "client", "python"))
    from accel.v1 import tensor_ops_pb2, tensor_ops_pb2_grpc  # noqa: E402
    return tensor_ops_pb2, tensor_ops_pb2_grpc


@pytest.fixture(scope="session")
def server_target():
    binary = os.environ.get("ACCEL_SERVER_BINARY",
                            os.path.join(REPO, "build", "server", "accel-server"))
    proc = subprocess.Popen(
        [binary, "--grpc_address=127.0.0.1:0", "--metrics_address=127.0.0.1:0",
         "--max_resident_bytes=268435456"],
        stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.match(r"listening grpc=(\S+) metrics=(\S+)", line)
    assert match, f"unexpected start-up line {line!r}"
    yield match.group(1)
    proc.terminate()
    assert proc.wait(timeout=30) == 0
