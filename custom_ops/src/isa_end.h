// Closes the region opened by isa_begin.h. No include guard (see there).
#if defined(QWTHN_TARGET_AVX2)
#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
#endif
