"""numpy <-> accel.v1.Tensor conversion for Python clients of accel-serve.

Pure Python on numpy; no generated code is committed. Generate the stubs
first (see README.md) and put their output folder on sys.path, so that
`from accel.v1 import tensor_ops_pb2` works:

    import grpc, numpy as np
    from accel.v1 import tensor_ops_pb2 as pb, tensor_ops_pb2_grpc as pb_grpc
    import accel_client

    stub = pb_grpc.TensorOpsStub(grpc.insecure_channel("localhost:50051"))
    x = np.random.randn(2, 4096).astype(np.float32)
    req = pb.RmsNormRequest(input=accel_client.ref(x, "bfloat16"),
                            weight=accel_client.ref("model.norm.weight"))
    y = accel_client.from_tensor(stub.RmsNorm(req).output)  # float32 array

bfloat16 has no numpy dtype: to_tensor rounds float data to bfloat16 (round
to nearest, ties to even, NaN kept NaN: the server's own rounding) with
integer bit operations, and from_tensor widens bfloat16 to float32, which is
exact.
"""

import types

import numpy as np

# accel.v1.DType values (proto/accel/v1/tensor_ops.proto).
DTYPE_UNSPECIFIED = 0
FLOAT32 = 1
FLOAT16 = 2
BFLOAT16 = 3
INT8 = 4
INT32 = 5
INT64 = 6

_NAMES = {
    "float32": FLOAT32, "fp32": FLOAT32, "float16": FLOAT16, "fp16": FLOAT16,
    "half": FLOAT16, "bfloat16": BFLOAT16, "bf16": BFLOAT16, "int8": INT8,
    "int32": INT32, "int64": INT64,
}

# Wire layout of each dtype (little-endian); BFLOAT16 travels as raw uint16 bits.
_WIRE = {
    FLOAT32: np.dtype("<f4"), FLOAT16: np.dtype("<f2"), BFLOAT16: np.dtype("<u2"),
    INT8: np.dtype("i1"), INT32: np.dtype("<i4"), INT64: np.dtype("<i8"),
}

_FLOATS = (FLOAT32, FLOAT16, BFLOAT16)


def _pb():
    # Imported lazily so that the conversion helpers work (and can be tested)
    # wherever the stubs have been generated onto sys.path.
    from accel.v1 import tensor_ops_pb2
    return tensor_ops_pb2


def dtype_value(dtype):
    """An accel.v1.DType value from a value, a name ("bfloat16") or a numpy dtype."""
    if isinstance(dtype, (int, np.integer)):
        if int(dtype) not in _WIRE:
            raise ValueError(f"not a tensor dtype: {dtype}")
        return int(dtype)
    if isinstance(dtype, str) and dtype.lower() in _NAMES:
        return _NAMES[dtype.lower()]
    np_dtype = np.dtype(dtype)
    for value, wire in _WIRE.items():
        if value != BFLOAT16 and np_dtype.kind == wire.kind and np_dtype.itemsize == wire.itemsize:
            return value
    if np_dtype == np.float64:
        return FLOAT32
    raise ValueError(f"numpy dtype {np_dtype} has no accel dtype "
                     "(float32, float16, int8, int32, int64; bfloat16 by name)")


def float32_to_bfloat16_bits(values):
    """bfloat16 bit patterns (uint16) of float values: round to nearest even."""
    bits = np.ascontiguousarray(values, dtype="<f4").view("<u4").astype(np.uint64)
    # Add 0x7fff plus the lowest kept bit, then truncate (as the C++ side does);
    # uint64 so that the carry out of 0xffff.... cannot wrap.
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    # A NaN stays a NaN (quieted), never rounds to infinity.
    rounded[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)
    return rounded.astype("<u2")


def bfloat16_bits_to_float32(bits):
    """float32 values of bfloat16 bit patterns (exact)."""
    return (np.asarray(bits, dtype="<u2").astype("<u4") << 16).view("<f4")


def round_bf16(values):
    """float32 values rounded to the nearest bfloat16 (for numpy references)."""
    values = np.asarray(values, dtype=np.float32)
    return bfloat16_bits_to_float32(float32_to_bfloat16_bits(values)).reshape(values.shape)


def to_tensor(*args, dtype=None):
    """An accel.v1.Tensor holding an array: to_tensor(array, dtype=None).

    dtype: None to keep the array's type (float64 becomes FLOAT32), or a DType
    value or name ("bfloat16", "BFLOAT16", ...). Float data is cast to a float
    dtype (bfloat16 by round to nearest even); integer data to an integer
    dtype, which must hold every value. Float -> integer is refused: quantize
    on the server instead.

    The generated module may be passed first, to_tensor(tensor_ops_pb2, array,
    dtype=None), when it is not importable as accel.v1.tensor_ops_pb2.
    """
    pb = None
    if args and isinstance(args[0], types.ModuleType):
        pb, args = args[0], args[1:]
    if not 1 <= len(args) <= 2 or (len(args) == 2 and dtype is not None):
        raise TypeError("usage: to_tensor([pb2_module,] array, dtype=None)")
    array = np.asarray(args[0])
    if len(args) == 2:
        dtype = args[1]
    target = dtype_value(array.dtype if dtype is None else dtype)
    is_float = array.dtype.kind == "f"
    if target in _FLOATS:
        if not is_float and array.dtype.kind not in "iu":
            raise ValueError(f"cannot send {array.dtype} data as a float tensor")
        if target == BFLOAT16:
            wire = float32_to_bfloat16_bits(array.astype(np.float32))
        else:
            wire = array.astype(_WIRE[target])
    else:
        if is_float or array.dtype.kind not in "iu":
            raise ValueError(f"cannot send {array.dtype} data as an integer tensor")
        wire = array.astype(_WIRE[target])
        if not np.array_equal(wire, array):
            raise ValueError(f"values out of range for {_WIRE[target]}")
    data = np.ascontiguousarray(wire).tobytes()
    return (pb or _pb()).Tensor(dtype=target, shape=list(array.shape), data=data)


def from_tensor(tensor):
    """A numpy array (a copy) of an accel.v1.Tensor; BFLOAT16 widened to float32."""
    dtype = int(tensor.dtype)
    if dtype not in _WIRE:
        raise ValueError(f"tensor has no valid dtype ({dtype})")
    shape = tuple(int(d) for d in tensor.shape)
    wire = _WIRE[dtype]
    expected = int(np.prod(shape, dtype=np.int64)) * wire.itemsize
    if len(tensor.data) != expected:
        hint = " (a result kept resident with output_name has no data)" if not tensor.data else ""
        raise ValueError(f"tensor of shape {list(shape)} needs {expected} data bytes, "
                         f"found {len(tensor.data)}{hint}")
    values = np.frombuffer(tensor.data, dtype=wire).reshape(shape)
    if dtype == BFLOAT16:
        return bfloat16_bits_to_float32(values).reshape(shape)
    return values.astype(wire.newbyteorder("="), copy=True)


def ref(value, dtype=None):
    """An accel.v1.TensorRef: a resident tensor's name (str), or an array sent inline."""
    if isinstance(value, str):
        return _pb().TensorRef(name=value)
    return _pb().TensorRef(value=to_tensor(value, dtype))


def auth_metadata(token):
    """gRPC call metadata for a server started with --auth_token."""
    return (("authorization", f"Bearer {token}"),)
