// Opens the instruction-set region of a file compiled once per ISA (kernel.cc, mpo.cc).
//
// CMake compiles such files twice: QWTHN_KERNEL_NS names the build's namespace (baseline, avx2)
// and QWTHN_VECTOR_BYTES its lane-vector width. The AVX2 build switches the target with a pragma
// here, included after the standard headers, so only the file's own functions are compiled for
// AVX2; inline library code shared with the baseline build stays baseline (no AVX2 instruction
// can leak into code that runs on older CPUs). kernel_dispatch.cc picks the build at run time.
// No include guard: include once per file, paired with isa_end.h at its end.
#ifndef QWTHN_KERNEL_NS
#define QWTHN_KERNEL_NS baseline
#endif
#ifndef QWTHN_VECTOR_BYTES
#define QWTHN_VECTOR_BYTES 16
#endif
#if defined(QWTHN_TARGET_AVX2)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#endif
