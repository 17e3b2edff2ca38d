// Reading a fuzzer's bytes as the fields of a target's input format (see each *_fuzzer.cc).
//
// Fields are little-endian int64 / float64 (so seeds written from real encodings with Python's
// struct module read back as those encodings), and bytes. Reading past the end gives zeros, so
// every byte string is some input. Counts are clamped to what the remaining bytes can hold: the
// harness never claims an array is longer than it is (that would be a bug of the harness, not
// of the code under test).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

namespace qwthn_fuzz {

class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  size_t remaining() const { return size_ - pos_; }

  int64_t i64() {
    uint64_t v = 0;
    for (int b = 0; b < 8 && pos_ < size_; ++b) v |= uint64_t{data_[pos_++]} << (8 * b);
    return static_cast<int64_t>(v);
  }

  double f64() {
    const uint64_t bits = static_cast<uint64_t>(i64());
    double v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
  }

  uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }

  // `declared` elements of `width` int64 each, as many as the remaining bytes hold.
  int64_t clamp(int64_t declared, int64_t width = 1) const {
    if (declared <= 0 || width <= 0) return declared;
    return std::min<int64_t>(declared, static_cast<int64_t>(remaining() / 8) / width);
  }

  std::vector<int64_t> i64s(int64_t n) {
    std::vector<int64_t> v(static_cast<size_t>(std::max<int64_t>(n, 0)));
    for (int64_t& x : v) x = i64();
    return v;
  }

  std::vector<double> f64s(int64_t n) {
    std::vector<double> v(static_cast<size_t>(std::max<int64_t>(n, 0)));
    for (double& x : v) x = f64();
    return v;
  }

  // A length-prefixed int64 list (negative lengths read as empty).
  std::vector<int64_t> list() { return i64s(clamp(i64())); }

  // n small finite values (signed byte / scale) from the next bytes, cycling through the rest
  // when they run out; zeros when none remain. Kernels get numbers in a sane range, so the
  // oracles stay tight.
  template <typename T>
  std::vector<T> values(size_t n, double scale) {
    std::vector<T> v(n, T(0));
    const size_t avail = remaining();
    for (size_t i = 0; i < n && avail > 0; ++i) {
      v[i] = static_cast<T>(static_cast<int8_t>(data_[pos_ + i % avail]) / scale);
    }
    pos_ += std::min(n, avail);
    return v;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// Stops the run with a crash libFuzzer reports (and keeps the input) when an oracle fails.
[[noreturn]] inline void oracle_failed(const char* what) {
  std::fprintf(stderr, "qwthn fuzz oracle failed: %s\n", what);
  __builtin_trap();
}

}  // namespace qwthn_fuzz
