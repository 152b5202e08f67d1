// safetensors writer/reader: round trips, the file layout, and corrupt input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "serialization/checksum.h"
#include "serialization/json.h"
#include "serialization/safetensors.h"

using namespace lowbit;

namespace {
SafetensorsFile sample() {
  SafetensorsFile f;
  StoredTensor a{"w.packed", "U8", {2, 3}, {1, 2, 3, 4, 5, 6}};
  StoredTensor b{"w.scale", "F32", {2, 1}, std::vector<uint8_t>(8, 0x3F)};
  StoredTensor c{"empty", "I32", {0}, {}};
  f.tensors = {a, b, c};
  f.metadata["lowbit"] = "{\"k\": \"v \\\" quoted\"}";
  return f;
}
}  // namespace

TEST(Safetensors, RoundTripAndLayout) {
  std::vector<uint8_t> bytes = serialize_safetensors(sample());
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u);  // data section aligned
  EXPECT_EQ(bytes.size(), 8 + n + 6 + 8);
  std::string header(reinterpret_cast<const char*>(bytes.data() + 8), n);
  EXPECT_NE(header.find("\"__metadata__\":{\"lowbit\":"), std::string::npos);
  EXPECT_NE(header.find("\"w.packed\":{\"dtype\":\"U8\",\"shape\":[2,3],\"data_offsets\":[0,6]}"), std::string::npos);
  SafetensorsFile back = parse_safetensors(bytes.data(), bytes.size());
  ASSERT_EQ(back.tensors.size(), 3u);
  EXPECT_EQ(back.metadata.at("lowbit"), sample().metadata.at("lowbit"));
  for (const auto& t : sample().tensors) {
    auto it = std::find_if(back.tensors.begin(), back.tensors.end(), [&](const StoredTensor& s) { return s.name == t.name; });
    ASSERT_NE(it, back.tensors.end());
    EXPECT_EQ(it->dtype, t.dtype);
    EXPECT_EQ(it->shape, t.shape);
    EXPECT_EQ(it->data, t.data);
  }
}

TEST(Safetensors, WriterRejectsInconsistentTensors) {
  SafetensorsFile f;
  f.tensors = {StoredTensor{"x", "F32", {3}, std::vector<uint8_t>(8)}};
  EXPECT_THROW(serialize_safetensors(f), std::invalid_argument);
  f.tensors = {StoredTensor{"x", "Q9", {1}, std::vector<uint8_t>(1)}};
  EXPECT_THROW(serialize_safetensors(f), std::invalid_argument);
  f.tensors = {StoredTensor{"x", "U8", {1}, {1}}, StoredTensor{"x", "U8", {1}, {2}}};
  EXPECT_THROW(serialize_safetensors(f), std::invalid_argument);
}

void expect_error(const std::vector<uint8_t>& bytes, const std::string& fragment) {
  try {
    parse_safetensors(bytes.data(), bytes.size());
    FAIL() << "no error for " << fragment;
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

std::vector<uint8_t> with_header(const std::string& header, size_t data_bytes) {
  std::vector<uint8_t> b(8 + header.size() + data_bytes, 0);
  uint64_t n = header.size();
  std::memcpy(b.data(), &n, 8);
  std::memcpy(b.data() + 8, header.data(), header.size());
  return b;
}

TEST(Safetensors, CorruptFilesGiveClearErrors) {
  expect_error({1, 2, 3}, "too short");
  expect_error(with_header("{}", 0).size() ? std::vector<uint8_t>{0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, '{', '}'}
                                           : std::vector<uint8_t>{},
               "larger than 100 MB");
  std::vector<uint8_t> b = with_header("{}", 0);
  b[0] = 40;
  expect_error(b, "runs past the end");
  expect_error(with_header("{\"x\":", 0), "not valid JSON");
  expect_error(with_header("[1,2]", 0), "does not start with '{'");
  expect_error(with_header("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4), "outside the 4-byte");
  expect_error(with_header("{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8), "do not match shape");
  expect_error(with_header("{\"x\":{\"dtype\":\"X1\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1), "unknown dtype");
  expect_error(with_header("{\"x\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,1]}}", 1), "non-negative");
  expect_error(with_header("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                           "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[1,3]}}", 3),
               "overlap");
  expect_error(with_header("{\"__metadata__\":{\"k\":1}}", 0), "not a string");
  expect_error(with_header("{\"x\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1), "bad data_offsets");
}

TEST(Safetensors, EveryTruncationAndRandomCorruptionIsHandled) {
  std::vector<uint8_t> good = serialize_safetensors(sample());
  for (size_t len = 0; len < good.size(); ++len) {
    try {
      parse_safetensors(good.data(), len);
    } catch (const std::invalid_argument&) {
    }
  }
  std::mt19937 rng(1);
  for (int trial = 0; trial < 2000; ++trial) {
    std::vector<uint8_t> b = good;
    b[rng() % b.size()] = uint8_t(rng());
    try {
      parse_safetensors(b.data(), b.size());
    } catch (const std::invalid_argument&) {
    }
  }
  SUCCEED();
}

TEST(Json, ParsesStringsNumbersAndRejectsGarbage) {
  JsonValue v = parse_json(" {\"a\": [1, -2, 3.5e1, true, false, null], \"s\": \"x\\n\\u00e9\\ud83d\\ude00\"} ");
  ASSERT_EQ(v.kind, JsonValue::Kind::kObject);
  EXPECT_EQ(v.find("a")->array[1].integer, -2);
  EXPECT_EQ(v.find("a")->array[2].number, 35.0);
  EXPECT_EQ(v.find("s")->str, "x\n\xC3\xA9\xF0\x9F\x98\x80");
  EXPECT_EQ(parse_json(json_quote("q\"\\\x01")).str, "q\"\\\x01");
  for (const char* bad : {"", "{", "{\"a\":1,}", "[1 2]", "\"abc", "{\"a\":1}x", "{\"a\":1,\"a\":2}", "01x", "\"\\q\""})
    EXPECT_THROW(parse_json(bad), std::invalid_argument) << bad;
  std::string deep(100, '[');
  EXPECT_THROW(parse_json(deep), std::invalid_argument);
}

// ---- strictness added for the reliability issue: every case failed (or crashed) before ----

TEST(Safetensors, DataSectionMustBeCoveredExactly) {
  // a gap before a tensor, trailing bytes, and a header length lowered by one (the data
  // section then starts a byte early: every tensor shifted, one byte left over)
  expect_error(with_header("{\"x\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[1,3]}}", 3), "gap");
  expect_error(with_header("{\"x\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 3), "after the last");
  std::vector<uint8_t> good = serialize_safetensors(sample());
  std::vector<uint8_t> b = good;
  b[0] = uint8_t(b[0] - 1);  // the header ends in padding spaces: still valid JSON
  expect_error(b, "after the last");
  b = good;
  b.push_back(0);
  expect_error(b, "after the last");
}

TEST(Safetensors, ShapesThatOverflowAreRejected) {
  // 2^31 * 2^31 elements of 8 bytes: the element count fits in 64 bits, the byte count does not
  expect_error(with_header("{\"x\":{\"dtype\":\"F64\",\"shape\":[2147483648,2147483648],\"data_offsets\":[0,0]}}", 0),
               "do not match shape");
  expect_error(with_header("{\"x\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,0]}}", 0),
               "overflows");
  SafetensorsFile f;
  f.tensors = {StoredTensor{"x", "F64", {int64_t(1) << 31, int64_t(1) << 31}, {}}};
  EXPECT_THROW(serialize_safetensors(f), std::invalid_argument);
}

TEST(Safetensors, HeaderMustBeUtf8AndStrict) {
  expect_error(with_header("{\"\xff\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0), "invalid UTF-8");
  expect_error(with_header("{\"\xc0\xae\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0), "invalid UTF-8");
  expect_error(with_header("{\"\\udc00\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0), "surrogate");
  expect_error(with_header("{\"x\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0],\"extra\":1}}", 0),
               "unknown field");
  expect_error(with_header(" {}", 0), "does not start with");
  EXPECT_THROW(parse_json("[1e999]"), std::invalid_argument);
}

TEST(Safetensors, ChecksumIsWrittenAndVerified) {
  std::vector<uint8_t> bytes = serialize_safetensors(sample(), true);
  SafetensorsFile back = parse_safetensors(bytes.data(), bytes.size());
  ASSERT_EQ(back.metadata.count(kChecksumKey), 1u);
  EXPECT_EQ(back.metadata.at(kChecksumKey), crc32c_label(content_checksum(sample())));
  // flipping any data byte, or a metadata byte, is caught
  const size_t data_start = bytes.size() - 14;
  for (size_t pos : {data_start, data_start + 5, bytes.size() - 1}) {
    std::vector<uint8_t> b = bytes;
    b[pos] ^= 0x01;
    expect_error(b, "checksum mismatch");
  }
  std::vector<uint8_t> b = bytes;
  const std::string header(reinterpret_cast<const char*>(b.data() + 8), data_start - 8);
  const size_t q = header.find("quoted");
  ASSERT_NE(q, std::string::npos);
  b[8 + q] = 'Q';
  expect_error(b, "checksum mismatch");
  // without a checksum the same content still reads (files from other writers)
  std::vector<uint8_t> plain = serialize_safetensors(sample(), false);
  EXPECT_EQ(parse_safetensors(plain.data(), plain.size()).metadata.count(kChecksumKey), 0u);
}

TEST(Checksum, Crc32cVectorsAndBothPathsAgree) {
  const std::string digits = "123456789";
  EXPECT_EQ(crc32c_extend(0, digits.data(), digits.size()), 0xE3069283u);  // the standard check value
  EXPECT_EQ(crc32c_extend_portable(0, digits.data(), digits.size()), 0xE3069283u);
  std::vector<uint8_t> zeros(32, 0);
  EXPECT_EQ(crc32c_extend(0, zeros.data(), zeros.size()), 0x8A9136AAu);  // RFC 3720 B.4
  std::mt19937 rng(3);
  std::vector<uint8_t> buf(4099);
  for (auto& v : buf) v = uint8_t(rng());
  for (size_t n : {size_t(0), size_t(1), size_t(7), size_t(8), size_t(9), size_t(4099)}) {
    EXPECT_EQ(crc32c_extend(0, buf.data(), n), crc32c_extend_portable(0, buf.data(), n)) << n;
    // extending in two pieces equals one pass
    EXPECT_EQ(crc32c_extend(crc32c_extend(0, buf.data(), n / 3), buf.data() + n / 3, n - n / 3),
              crc32c_extend(0, buf.data(), n));
  }
  EXPECT_EQ(crc32c_label(0xE3069283u), "crc32c:e3069283");
}
