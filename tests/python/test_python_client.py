"""Proves that another language can call accel-server: Python's grpcio with
stubs generated from proto/accel/v1/tensor_ops.proto, numpy for the data
and for an independent float64 reference."""
import grpc
import numpy as np
import pytest


@pytest.fixture()
def api(stubs, server_target):
    pb2, pb2_grpc = stubs
    channel = grpc.insecure_channel(server_target)
    grpc.channel_ready_future(channel).result(timeout=10)
    yield pb2, pb2_grpc.TensorOpsStub(channel), channel
    channel.close()


def test_rmsnorm_bf16_with_residual_matches_numpy(api):
    import accel_client as ac
    pb2, stub, _ = api
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 4095), dtype=np.float32)
    r = rng.standard_normal((3, 4095), dtype=np.float32)
    w = rng.standard_normal(4095, dtype=np.float32)
    req = pb2.RmsNormRequest(
        input=pb2.TensorRef(value=ac.to_tensor(pb2, x, "BFLOAT16")),
        residual=pb2.TensorRef(value=ac.to_tensor(pb2, r, "BFLOAT16")),
        weight=pb2.TensorRef(value=ac.to_tensor(pb2, w)),
        return_residual=True)
    resp = stub.RmsNorm(req)
    assert resp.output.dtype == pb2.BFLOAT16
    xb, rb = ac.round_bf16(x).astype(np.float64), ac.round_bf16(r).astype(np.float64)
    s = ac.round_bf16((xb + rb).astype(np.float32)).astype(np.float64)
    want = s / np.sqrt((s * s).mean(-1, keepdims=True) + 1e-6) * w
    got = ac.from_tensor(resp.output)
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)
    np.testing.assert_array_equal(ac.from_tensor(resp.residual), s.astype(np.float32))


def test_put_linear_get_and_errors(api):
    import accel_client as ac
    pb2, stub, _ = api
    rng = np.random.default_rng(8)
    w = rng.standard_normal((17, 64), dtype=np.float32)
    x = rng.standard_normal((5, 64), dtype=np.float32)
    info = stub.PutTensor(iter([pb2.PutTensorRequest(name="py.w", dtype=pb2.FLOAT32, shape=[17, 64],
                                                     data=w.tobytes()[:1000]),
                                pb2.PutTensorRequest(data=w.tobytes()[1000:])]))
    assert info.nbytes == w.nbytes and list(info.shape) == [17, 64]
    resp = stub.Linear(pb2.LinearRequest(input=pb2.TensorRef(value=ac.to_tensor(pb2, x)),
                                         weight="py.w"))
    np.testing.assert_allclose(ac.from_tensor(resp.output), x.astype(np.float64) @ w.T.astype(np.float64),
                               rtol=1e-5, atol=1e-4)
    chunks = list(stub.GetTensor(pb2.GetTensorRequest(name="py.w", chunk_bytes=4096)))
    assert chunks[0].info.name == "py.w"
    assert b"".join(c.data for c in chunks) == w.tobytes()

    with pytest.raises(grpc.RpcError) as err:
        stub.Linear(pb2.LinearRequest(input=pb2.TensorRef(value=ac.to_tensor(pb2, x[:, :63])),
                                      weight="py.w"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.DeleteTensor(pb2.DeleteTensorRequest(name="py.absent"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    stub.DeleteTensor(pb2.DeleteTensorRequest(name="py.w"))


def test_stream_answers_by_id(api):
    import accel_client as ac
    pb2, stub, _ = api
    g = np.linspace(-4, 4, 64, dtype=np.float32)
    reqs = [pb2.StreamRequest(id=i, swiglu=pb2.SwiGluRequest(
        gate=pb2.TensorRef(value=ac.to_tensor(pb2, g, "FLOAT16")),
        up=pb2.TensorRef(value=ac.to_tensor(pb2, g * i, "FLOAT16")))) for i in range(1, 9)]
    answers = {r.id: r for r in stub.Stream(iter(reqs))}
    assert sorted(answers) == list(range(1, 9))
    g64 = g.astype(np.float64)
    for i, r in answers.items():
        assert r.code == 0, r.message
        want = g64 / (1 + np.exp(-g64)) * (g64 * i)
        np.testing.assert_allclose(ac.from_tensor(r.swiglu.output), want, rtol=1e-3, atol=1e-2)


def test_health_and_reflection_need_no_proto(api):
    _, _, channel = api
    # grpc.health.v1.Health/Check {service: ""} -> {status: SERVING (1)}.
    check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                request_serializer=lambda b: b, response_deserializer=lambda b: b)
    assert check(b"") == b"\x08\x01"
    # Reflection's list_services (field 7): what grpcurl uses with no protos.
    reflect = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                    request_serializer=lambda b: b,
                                    response_deserializer=lambda b: b)
    responses = list(reflect(iter([b"\x3a\x00"])))
    assert any(b"accel.v1.TensorOps" in r for r in responses)
