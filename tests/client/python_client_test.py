"""Tests of client/python/accel_client.py and of the stub recipe in its README.

Generates the Python stubs with protoc and Debian's grpc_python_plugin into
--out-dir, then checks the numpy <-> Tensor conversions (every dtype, bfloat16
rounding, errors) and one call through a generated stub to an in-process
Python server. Exits 77 (skipped) when numpy, grpcio or the tools are missing.

    python3 tests/client/python_client_test.py --repo . --out-dir /tmp/stubs
"""

import argparse
import os
import shutil
import subprocess
import sys
import unittest
from concurrent import futures

ARGS = None


def generate_stubs(repo, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    subprocess.run(
        ["protoc", f"--python_out={out_dir}", f"--grpc_out={out_dir}",
         "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin",
         "-I", os.path.join(repo, "proto"),
         os.path.join(repo, "proto/accel/v1/tensor_ops.proto")],
        check=True)


class ConversionTest(unittest.TestCase):
    def test_every_dtype_round_trips(self):
        rng = np.random.default_rng(1)
        for name, np_dtype in [("float32", np.float32), ("float16", np.float16),
                               ("int8", np.int8), ("int32", np.int32), ("int64", np.int64)]:
            for shape in [(2, 3), (), (0, 4), (5,)]:
                array = (rng.standard_normal(shape) * 50).astype(np_dtype)
                tensor = ac.to_tensor(array)
                self.assertEqual(tensor.dtype, ac.dtype_value(name))
                self.assertEqual(list(tensor.shape), list(shape))
                self.assertEqual(len(tensor.data), array.size * array.itemsize)
                back = ac.from_tensor(tensor)
                self.assertEqual(back.dtype, np_dtype)
                self.assertEqual(back.shape, shape)
                np.testing.assert_array_equal(back, array)
                back[...] = 0  # a writable copy

    def test_bfloat16_rounds_to_nearest_even(self):
        bits = np.array([0x3DCCCCCD,  # 0.1f -> 0x3dcd
                         0x3F808000,  # tie, kept bit even -> 0x3f80
                         0x3F818000,  # tie, kept bit odd -> 0x3f82
                         0x3F80FFFF,  # rounds up -> 0x3f81
                         0x7F7FFFFF,  # max float rounds to infinity -> 0x7f80
                         0xFF800000,  # -inf stays -inf
                         0x7FC00001,  # NaN stays NaN
                         0x7F800001,  # signalling NaN -> quiet NaN, not infinity
                         0x80000000],  # -0 stays -0
                        dtype="<u4")
        values = bits.view("<f4")
        tensor = ac.to_tensor(values, "bfloat16")
        self.assertEqual(tensor.dtype, ac.BFLOAT16)
        got = np.frombuffer(tensor.data, dtype="<u2")
        self.assertEqual([hex(int(b)) for b in got],
                         ["0x3dcd", "0x3f80", "0x3f82", "0x3f81", "0x7f80", "0xff80",
                          "0x7fc0", "0x7fc0", "0x8000"])

    def test_bfloat16_widens_exactly(self):
        every = np.arange(65536, dtype=np.uint32).astype("<u2")
        tensor = pb.Tensor(dtype=ac.BFLOAT16, shape=[256, 256], data=every.tobytes())
        widened = ac.from_tensor(tensor)
        self.assertEqual(widened.dtype, np.float32)
        self.assertEqual(widened.shape, (256, 256))
        np.testing.assert_array_equal(widened.reshape(-1).view("<u4"),
                                      every.astype("<u4") << 16)
        # Narrowing the widened values gives the same bits back (NaNs aside).
        finite = ~np.isnan(widened.reshape(-1))
        np.testing.assert_array_equal(ac.float32_to_bfloat16_bits(widened.reshape(-1))[finite],
                                      every[finite])

    def test_float64_becomes_float32_and_casts_between_floats(self):
        self.assertEqual(ac.to_tensor(np.zeros(3)).dtype, ac.FLOAT32)
        half = ac.to_tensor(np.array([1.0, 65504.0], np.float32), "float16")
        np.testing.assert_array_equal(ac.from_tensor(half), [1.0, 65504.0])

    def test_refusals(self):
        with self.assertRaises(ValueError):
            ac.to_tensor(np.array([1.5]), "int8")
        with self.assertRaises(ValueError):
            ac.to_tensor(np.array([300]), "int8")
        with self.assertRaises(ValueError):
            ac.to_tensor(np.array([True]))
        with self.assertRaises(ValueError):
            ac.to_tensor(np.array([1], np.uint8))
        with self.assertRaisesRegex(ValueError, "output_name"):
            ac.from_tensor(pb.Tensor(dtype=ac.FLOAT32, shape=[2]))
        with self.assertRaises(ValueError):
            ac.from_tensor(pb.Tensor(dtype=0, shape=[]))

    def test_module_first_form_and_round_bf16(self):
        x = np.array([0.1, 1.0 / 3], np.float32)
        tensor = ac.to_tensor(pb, x, "BFLOAT16")
        self.assertEqual(tensor.dtype, ac.BFLOAT16)
        np.testing.assert_array_equal(ac.from_tensor(tensor), ac.round_bf16(x))
        self.assertEqual(ac.round_bf16(np.float32(0.1)).view("<u4"), 0x3DCD0000)
        self.assertEqual(ac.to_tensor(pb, x).dtype, ac.FLOAT32)
        with self.assertRaises(TypeError):
            ac.to_tensor(x, "bfloat16", dtype="float16")

    def test_refs(self):
        self.assertEqual(ac.ref("w").name, "w")
        self.assertEqual(ac.ref(np.ones(2, np.float32), "bfloat16").value.dtype, ac.BFLOAT16)
        self.assertEqual(ac.auth_metadata("t"), (("authorization", "Bearer t"),))


class StubTest(unittest.TestCase):
    def test_call_through_generated_stub(self):
        class Echo(pb_grpc.TensorOpsServicer):
            def RmsNorm(self, request, context):
                metadata = dict(context.invocation_metadata())
                if metadata.get("authorization") != "Bearer t":
                    context.abort(grpc.StatusCode.UNAUTHENTICATED, "token")
                return pb.RmsNormResponse(output=request.input.value)

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb_grpc.add_TensorOpsServicer_to_server(Echo(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.TensorOpsStub(channel)
                x = np.array([[0.1, 2.0, -3.0]], np.float32)
                response = stub.RmsNorm(pb.RmsNormRequest(input=ac.ref(x, "bf16")),
                                        metadata=ac.auth_metadata("t"), timeout=10)
                y = ac.from_tensor(response.output)
                np.testing.assert_allclose(y, x, rtol=1e-2)
                with self.assertRaises(grpc.RpcError) as raised:
                    stub.RmsNorm(pb.RmsNormRequest(), timeout=10)
                self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        finally:
            server.stop(None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", default=os.path.join(os.path.dirname(__file__), "../.."))
    parser.add_argument("--out-dir", required=True)
    ARGS, rest = parser.parse_known_args()
    try:
        import grpc
        import numpy as np
    except ImportError as e:
        print(f"SKIPPED: {e} (use Debian's /usr/bin/python3 with python3-grpcio and "
              "python3-numpy)")
        sys.exit(77)
    if not shutil.which("protoc") or not os.path.exists("/usr/bin/grpc_python_plugin"):
        print("SKIPPED: protoc or /usr/bin/grpc_python_plugin is missing")
        sys.exit(77)
    generate_stubs(os.path.abspath(ARGS.repo), ARGS.out_dir)
    sys.path[:0] = [ARGS.out_dir, os.path.join(os.path.abspath(ARGS.repo), "client/python")]
    from accel.v1 import tensor_ops_pb2 as pb
    from accel.v1 import tensor_ops_pb2_grpc as pb_grpc
    import accel_client as ac
    unittest.main(argv=[sys.argv[0]] + rest)
