// Lane vectors (GCC/Clang vector extensions) for the per-ISA kernel files.
//
// Include it INSIDE `namespace qwthn { namespace QWTHN_KERNEL_NS {`, after isa_begin.h: every
// ISA build then gets its own copies of these inline functions. Shared inline definitions would
// be merged by the linker, and AVX2 code could end up on the baseline path.
// No include guard: each per-ISA file includes it once.

template <typename T, int W>
struct Lanes {
  // element alignment (unaligned loads are fine) and may_alias (it views arrays of T)
  typedef T V __attribute__((vector_size(sizeof(T) * W), aligned(sizeof(T)), may_alias));
};

template <typename T, int W>
using Vec = typename Lanes<T, W>::V;

template <typename T, int W>
inline Vec<T, W> ld(const T* p) {
  return *reinterpret_cast<const Vec<T, W>*>(p);
}

template <typename T, int W>
inline void st(T* p, Vec<T, W> v) {
  *reinterpret_cast<Vec<T, W>*>(p) = v;
}

template <typename T>
constexpr int lanes() {
  return QWTHN_VECTOR_BYTES / static_cast<int>(sizeof(T));
}
