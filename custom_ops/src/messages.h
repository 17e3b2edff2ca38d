// Building error messages: one place for the "throw Error(prefix + args...)" idiom and for
// printing a shape, shared by the decoders and the onnxruntime kernels.
#pragma once

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

namespace qwthn {

// Throws Error with the streamed concatenation of args.
template <typename Error, typename... Args>
[[noreturn]] void throw_message(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  throw Error(os.str());
}

// "[2, 3, 4]"
inline std::string dims_str(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

}  // namespace qwthn
