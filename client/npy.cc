#include "client/npy.h"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "accel/kernels/convert.h"
#include "accel/util/status_macros.h"

namespace accel {
namespace {

using kernels::DType;

constexpr std::string_view kMagic = "\x93NUMPY";
// numpy aligns the data to 64 bytes (since 1.14) so that it can be memory
// mapped with any alignment a SIMD type needs; we do the same.
constexpr size_t kHeaderAlignment = 64;
// A header longer than this means a corrupt or hostile file, not an array.
constexpr size_t kMaxHeaderBytes = size_t{1} << 20;
// NumPy's own maximum number of dimensions (NPY_MAXDIMS in NumPy 2).
constexpr size_t kMaxNpyRank = 64;

// ------------------------------------------------------------ Header parsing

// The subset of Python literals that np.save writes in a header: a dict of
// strings, booleans, None, integers and tuples (lists are accepted too, so
// that a structured descr reaches a clear error instead of a parse error).
struct PyValue {
  enum class Kind { kString, kBool, kNone, kInt, kTuple, kList, kDict };
  Kind kind = Kind::kNone;
  std::string str;
  bool boolean = false;
  int64_t integer = 0;
  std::vector<PyValue> items;                            // tuple and list
  std::vector<std::pair<std::string, PyValue>> entries;  // dict (string keys)
};

class PyLiteralParser {
 public:
  explicit PyLiteralParser(std::string_view text) : text_(text) {}

  absl::StatusOr<PyValue> ParseAll() {
    ASSIGN_OR_RETURN(PyValue value, ParseValue(0));
    SkipSpace();
    if (pos_ != text_.size()) return Error("unexpected text after the dictionary");
    return value;
  }

 private:
  // Nesting depth bound: a header has depth 2; a deeper one is hostile.
  static constexpr int kMaxDepth = 16;

  void SkipSpace() {
    while (pos_ < text_.size() &&
           (absl::ascii_isspace(static_cast<unsigned char>(text_[pos_])) || text_[pos_] == '\0')) {
      ++pos_;
    }
  }

  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(what, " at offset ", pos_, " of the header"));
  }

  bool Consume(char c) {
    SkipSpace();
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  absl::StatusOr<PyValue> ParseValue(int depth) {
    if (depth > kMaxDepth) return Error("nesting too deep");
    SkipSpace();
    if (pos_ >= text_.size()) return Error("unexpected end");
    const char c = text_[pos_];
    if (c == '\'' || c == '"') return ParseString();
    if (c == '(') return ParseSequence(')', PyValue::Kind::kTuple, depth);
    if (c == '[') return ParseSequence(']', PyValue::Kind::kList, depth);
    if (c == '{') return ParseDict(depth);
    if (c == '-' || absl::ascii_isdigit(static_cast<unsigned char>(c))) return ParseInt();
    for (std::string_view word : {"True", "False", "None"}) {
      if (text_.substr(pos_, word.size()) == word) {
        pos_ += word.size();
        PyValue value;
        value.kind = word == "None" ? PyValue::Kind::kNone : PyValue::Kind::kBool;
        value.boolean = word == "True";
        return value;
      }
    }
    return Error(absl::StrCat("unexpected character '", std::string(text_.substr(pos_, 1)), "'"));
  }

  absl::StatusOr<PyValue> ParseString() {
    const char quote = text_[pos_++];
    PyValue value;
    value.kind = PyValue::Kind::kString;
    while (pos_ < text_.size() && text_[pos_] != quote) {
      // Descr strings never need escapes; keep the escaped character as is.
      if (text_[pos_] == '\\' && pos_ + 1 < text_.size()) ++pos_;
      value.str.push_back(text_[pos_++]);
    }
    if (pos_ >= text_.size()) return Error("unterminated string");
    ++pos_;
    return value;
  }

  absl::StatusOr<PyValue> ParseInt() {
    const size_t start = pos_;
    const bool negative = text_[pos_] == '-';
    if (negative) ++pos_;
    if (pos_ >= text_.size() || !absl::ascii_isdigit(static_cast<unsigned char>(text_[pos_]))) {
      return Error("expected digits");
    }
    int64_t magnitude = 0;
    while (pos_ < text_.size() && absl::ascii_isdigit(static_cast<unsigned char>(text_[pos_]))) {
      if (__builtin_mul_overflow(magnitude, 10, &magnitude) ||
          __builtin_add_overflow(magnitude, text_[pos_] - '0', &magnitude)) {
        pos_ = start;
        return Error("integer out of range");
      }
      ++pos_;
    }
    // Python 2 wrote long integers with an 'L' suffix: (3L, 4L).
    if (pos_ < text_.size() && (text_[pos_] == 'L' || text_[pos_] == 'l')) ++pos_;
    PyValue value;
    value.kind = PyValue::Kind::kInt;
    value.integer = negative ? -magnitude : magnitude;
    return value;
  }

  absl::StatusOr<PyValue> ParseSequence(char close, PyValue::Kind kind, int depth) {
    ++pos_;  // the opening bracket
    PyValue value;
    value.kind = kind;
    while (!Consume(close)) {
      if (!value.items.empty() && !Consume(',')) return Error("expected ',' in a sequence");
      if (Consume(close)) break;  // a trailing comma, as in (3,)
      ASSIGN_OR_RETURN(PyValue item, ParseValue(depth + 1));
      value.items.push_back(std::move(item));
    }
    return value;
  }

  absl::StatusOr<PyValue> ParseDict(int depth) {
    ++pos_;  // '{'
    PyValue value;
    value.kind = PyValue::Kind::kDict;
    while (!Consume('}')) {
      if (!value.entries.empty() && !Consume(',')) return Error("expected ',' in the dictionary");
      if (Consume('}')) break;  // np.save writes a trailing ", }"
      ASSIGN_OR_RETURN(PyValue key, ParseValue(depth + 1));
      if (key.kind != PyValue::Kind::kString) return Error("dictionary keys must be strings");
      if (!Consume(':')) return Error("expected ':' after a dictionary key");
      ASSIGN_OR_RETURN(PyValue item, ParseValue(depth + 1));
      value.entries.emplace_back(std::move(key.str), std::move(item));
    }
    return value;
  }

  std::string_view text_;
  size_t pos_ = 0;
};

// Printable form of a few leading bytes, for "found ..." in messages.
std::string Printable(std::string_view bytes, size_t max_len = 16) {
  std::string out;
  for (unsigned char c : bytes.substr(0, max_len)) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppendFormat(&out, "\\x%02x", c);
    }
  }
  if (bytes.size() > max_len) out += "...";
  return out;
}

// Maps a descr string to a DType, or explains why it is not supported.
absl::StatusOr<DType> DescrToDType(const std::string& descr) {
  if (descr.size() < 2) {
    return absl::InvalidArgumentError(absl::StrCat("unsupported dtype '", descr, "'"));
  }
  const char order = descr[0];
  const std::string kind_size =
      (order == '<' || order == '>' || order == '|' || order == '=') ? descr.substr(1) : descr;
  static constexpr std::pair<std::string_view, DType> kTypes[] = {
      {"f4", DType::kFloat32}, {"f2", DType::kFloat16}, {"i1", DType::kInt8},
      {"i4", DType::kInt32},   {"i8", DType::kInt64},
  };
  for (const auto& [name, dtype] : kTypes) {
    if (kind_size != name) continue;
    // Byte order is meaningless for one-byte types ('|i1', '<i1' alike).
    if (order == '>' && kernels::ItemSize(dtype) > 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "big-endian dtype '", descr,
          "' is not supported; save it little-endian, e.g. a.astype('<", kind_size, "')"));
    }
    return dtype;
  }
  std::string hint;
  if (kind_size == "f8") {
    hint = "; float64 is not supported: save a.astype(np.float32)";
  } else if (kind_size == "u1") {
    hint =
        "; uint8 is not supported (accel has no unsigned types): save a.astype(np.int8) or "
        "a.astype(np.int32)";
  } else if (kind_size == "b1") {
    hint = "; bool is not supported: save a.astype(np.int8)";
  } else if (kind_size == "V2") {
    hint =
        "; a bfloat16 array (ml_dtypes) cannot be read: save a.astype(np.float32) and pass "
        "--dtype bfloat16";
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unsupported dtype '", descr,
      "' (supported: '<f4' float32, '<f2' float16, '|i1' int8, '<i4' int32, '<i8' int64)", hint));
}

struct NpyHeader {
  DType dtype = DType::kUnspecified;
  kernels::Shape shape;
  size_t data_offset = 0;
  size_t data_bytes = 0;
};

absl::StatusOr<NpyHeader> ParseHeaderOnly(std::string_view bytes) {
  if (bytes.size() < kMagic.size() + 2 || bytes.substr(0, kMagic.size()) != kMagic) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a .npy file: expected the magic string \\x93NUMPY, found '",
                     Printable(bytes, 8), "' (", bytes.size(), " bytes in all)"));
  }
  const int major = static_cast<unsigned char>(bytes[6]);
  const int minor = static_cast<unsigned char>(bytes[7]);
  size_t length_bytes;
  if (major == 1) {
    length_bytes = 2;
  } else if (major == 2 || major == 3) {
    length_bytes = 4;
  } else {
    return absl::InvalidArgumentError(absl::StrFormat(
        "unsupported .npy format version %d.%d (versions 1.0, 2.0 and 3.0 are read)", major,
        minor));
  }
  const size_t prefix = kMagic.size() + 2 + length_bytes;
  if (bytes.size() < prefix) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "truncated .npy file: %d bytes, too short for a version %d.0 preamble of %d bytes",
        bytes.size(), major, prefix));
  }
  size_t header_len = 0;
  for (size_t i = 0; i < length_bytes; ++i) {
    header_len |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
  }
  if (header_len > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "corrupt .npy header: it declares %d bytes (more than %d)", header_len, kMaxHeaderBytes));
  }
  if (bytes.size() - prefix < header_len) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "truncated .npy file: the header declares %d bytes but only %d follow the preamble",
        header_len, bytes.size() - prefix));
  }
  const std::string_view header_text = bytes.substr(prefix, header_len);

  auto parsed = PyLiteralParser(header_text).ParseAll();
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed .npy header: ", parsed.status().message(), ": '",
                     Printable(header_text, 120), "'"));
  }
  if (parsed->kind != PyValue::Kind::kDict) {
    return absl::InvalidArgumentError(absl::StrCat(
        "malformed .npy header: expected a dictionary, found '", Printable(header_text, 120), "'"));
  }

  const PyValue* descr = nullptr;
  const PyValue* fortran_order = nullptr;
  const PyValue* shape = nullptr;
  for (const auto& [key, value] : parsed->entries) {
    if (key == "descr") {
      descr = &value;
    } else if (key == "fortran_order") {
      fortran_order = &value;
    } else if (key == "shape") {
      shape = &value;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("malformed .npy header: unexpected key '", key,
                       "' (expected exactly 'descr', 'fortran_order' and 'shape')"));
    }
  }
  if (descr == nullptr || fortran_order == nullptr || shape == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "malformed .npy header: missing key '",
        descr == nullptr ? "descr" : (fortran_order == nullptr ? "fortran_order" : "shape"),
        "' in '", Printable(header_text, 120), "'"));
  }

  NpyHeader header;
  if (descr->kind != PyValue::Kind::kString) {
    return absl::InvalidArgumentError(
        "unsupported dtype: the file holds a structured array (its 'descr' is not a type string)");
  }
  ASSIGN_OR_RETURN(header.dtype, DescrToDType(descr->str));

  if (fortran_order->kind != PyValue::Kind::kBool) {
    return absl::InvalidArgumentError(
        "malformed .npy header: 'fortran_order' must be True or False");
  }
  if (fortran_order->boolean) {
    return absl::InvalidArgumentError(
        "the array is in Fortran (column-major) order; only C order is supported: save "
        "np.ascontiguousarray(a)");
  }

  if (shape->kind != PyValue::Kind::kTuple && shape->kind != PyValue::Kind::kList) {
    return absl::InvalidArgumentError("malformed .npy header: 'shape' must be a tuple of integers");
  }
  if (shape->items.size() > kMaxNpyRank) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "malformed .npy header: %d dimensions (at most %d)", shape->items.size(), kMaxNpyRank));
  }
  int64_t num_elements = 1;
  for (const PyValue& extent : shape->items) {
    if (extent.kind != PyValue::Kind::kInt || extent.integer < 0) {
      return absl::InvalidArgumentError(
          "malformed .npy header: 'shape' must be a tuple of non-negative integers");
    }
    header.shape.push_back(extent.integer);
  }
  // Overflow is only possible when no extent is 0; check the product the way
  // it will be used (in bytes) against the largest tensor anything accepts.
  bool too_large = false;
  for (int64_t extent : header.shape) {
    if (extent == 0) {
      num_elements = 0;
      too_large = false;
      break;
    }
    if (!too_large && (__builtin_mul_overflow(num_elements, extent, &num_elements) ||
                       num_elements > kernels::kMaxElements)) {
      too_large = true;
    }
  }
  if (too_large) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape ", kernels::ShapeToString(header.shape), " has too many elements"));
  }
  header.data_offset = prefix + header_len;
  header.data_bytes = static_cast<size_t>(num_elements) * kernels::ItemSize(header.dtype);

  const size_t available = bytes.size() - header.data_offset;
  if (available != header.data_bytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s .npy file: dtype '%s' and shape %s need %d data bytes, found %d",
                        available < header.data_bytes ? "truncated" : "corrupt", descr->str,
                        kernels::ShapeToString(header.shape), header.data_bytes, available));
  }
  return header;
}

absl::Status Annotate(const absl::Status& status, std::string_view source) {
  return absl::Status(status.code(), absl::StrCat(std::string(source), ": ", status.message()));
}

// ---------------------------------------------------------------- Writing

absl::StatusOr<std::string> MakeHeader(DType dtype, const kernels::Shape& shape,
                                       std::string_view data) {
  const char* descr = NpyDescr(dtype);
  if (descr == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot write a tensor of dtype ", kernels::DTypeName(dtype), " as .npy"));
  }
  for (int64_t extent : shape) {
    if (extent < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot write shape ", kernels::ShapeToString(shape), " as .npy"));
    }
  }
  const size_t expected =
      static_cast<size_t>(kernels::NumElements(shape)) * kernels::ItemSize(dtype);
  if (data.size() != expected) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "a %s tensor of shape %s has %d bytes, but %d were given", kernels::DTypeName(dtype),
        kernels::ShapeToString(shape), expected, data.size()));
  }

  // Python's tuple syntax: (), (3,), (3, 4).
  std::string shape_text = absl::StrCat("(", absl::StrJoin(shape, ", "));
  if (shape.size() == 1) shape_text += ",";
  shape_text += ")";
  std::string dict =
      absl::StrCat("{'descr': '", descr, "', 'fortran_order': False, 'shape': ", shape_text, ", }");

  // Version 1.0 when the header length fits 16 bits, as np.save does.
  for (int major : {1, 2}) {
    const size_t prefix = kMagic.size() + 2 + (major == 1 ? 2 : 4);
    const size_t unpadded = prefix + dict.size() + 1;  // +1: the closing '\n'
    const size_t padded = (unpadded + kHeaderAlignment - 1) / kHeaderAlignment * kHeaderAlignment;
    const size_t header_len = padded - prefix;
    if (major == 1 && header_len > 0xffff) continue;
    std::string out(kMagic);
    out.push_back(static_cast<char>(major));
    out.push_back(0);
    for (size_t i = 0; i < prefix - kMagic.size() - 2; ++i) {
      out.push_back(static_cast<char>((header_len >> (8 * i)) & 0xff));
    }
    out += dict;
    out.append(padded - unpadded, ' ');
    out.push_back('\n');
    return out;
  }
  return absl::InvalidArgumentError("shape too long for a .npy header");
}

// Widens `n` bfloat16 values at `src` to little-endian float32 bytes at `dst`.
void WidenBFloat16(const char* src, char* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    const float f = kernels::BFloat16ToFloat(h);
    std::memcpy(dst + 4 * i, &f, 4);
  }
}

struct FileCloser {
  void operator()(std::FILE* f) const {
    if (f != nullptr) std::fclose(f);
  }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

absl::Status ErrnoStatus(int err, absl::string_view what, absl::string_view path) {
  const std::string message = absl::StrCat(path, ": cannot ", what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    default:
      return absl::UnknownError(message);
  }
}

}  // namespace

const char* NpyDescr(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
    case DType::kBFloat16:  // widened on write: NumPy has no bfloat16
      return "<f4";
    case DType::kFloat16:
      return "<f2";
    case DType::kInt8:
      return "|i1";
    case DType::kInt32:
      return "<i4";
    case DType::kInt64:
      return "<i8";
    case DType::kUnspecified:
      return nullptr;
  }
  return nullptr;
}

absl::StatusOr<NpyArray> ParseNpy(std::string_view bytes, std::string_view source) {
  auto header = ParseHeaderOnly(bytes);
  if (!header.ok()) return Annotate(header.status(), source);
  NpyArray array;
  array.dtype = header->dtype;
  array.shape = std::move(header->shape);
  array.data.assign(bytes.substr(header->data_offset));
  return array;
}

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  File file(std::fopen(path.c_str(), "rb"));
  if (file == nullptr) return ErrnoStatus(errno, "open it", path);
  std::string contents;
  // Read in large blocks rather than by file size, so pipes and /dev/stdin work.
  constexpr size_t kBlock = size_t{1} << 20;
  while (true) {
    const size_t old_size = contents.size();
    contents.resize(old_size + kBlock);
    const size_t got = std::fread(contents.data() + old_size, 1, kBlock, file.get());
    contents.resize(old_size + got);
    if (got < kBlock) break;
  }
  if (std::ferror(file.get())) return ErrnoStatus(errno, "read it", path);

  auto header = ParseHeaderOnly(contents);
  if (!header.ok()) return Annotate(header.status(), path);
  // Drop the header in place instead of copying the data out: a weight file
  // can be as large as the memory we have.
  contents.erase(0, header->data_offset);
  NpyArray array;
  array.dtype = header->dtype;
  array.shape = std::move(header->shape);
  array.data = std::move(contents);
  return array;
}

absl::StatusOr<std::string> SerializeNpy(DType dtype, const kernels::Shape& shape,
                                         std::string_view data) {
  ASSIGN_OR_RETURN(std::string out, MakeHeader(dtype, shape, data));
  if (dtype == DType::kBFloat16) {
    const size_t header_size = out.size();
    const size_t n = data.size() / 2;
    out.resize(header_size + 4 * n);
    WidenBFloat16(data.data(), out.data() + header_size, n);
  } else {
    out.append(data);
  }
  return out;
}

absl::Status WriteNpy(const std::string& path, DType dtype, const kernels::Shape& shape,
                      std::string_view data) {
  auto header = MakeHeader(dtype, shape, data);
  if (!header.ok()) return Annotate(header.status(), path);
  File file(std::fopen(path.c_str(), "wb"));
  if (file == nullptr) return ErrnoStatus(errno, "create it", path);
  auto write = [&](const char* bytes, size_t n) {
    return std::fwrite(bytes, 1, n, file.get()) == n;
  };
  bool ok = write(header->data(), header->size());
  if (dtype == DType::kBFloat16) {
    constexpr size_t kChunkElements = size_t{1} << 18;
    std::vector<char> widened(4 * kChunkElements);
    const size_t n = data.size() / 2;
    for (size_t i = 0; ok && i < n; i += kChunkElements) {
      const size_t m = std::min(kChunkElements, n - i);
      WidenBFloat16(data.data() + 2 * i, widened.data(), m);
      ok = write(widened.data(), 4 * m);
    }
  } else if (ok) {
    ok = write(data.data(), data.size());
  }
  if (!ok) return ErrnoStatus(errno, "write it", path);
  const int err = std::fclose(file.release()) == 0 ? 0 : errno;
  if (err != 0) return ErrnoStatus(err, "write it", path);
  return absl::OkStatus();
}

}  // namespace accel
