#include "kernel.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <complex>
#include <cstring>
#include <sstream>
#include <type_traits>
#include <vector>

#include "isa_begin.h"

namespace qwthn {
namespace QWTHN_KERNEL_NS {

namespace {

using cd = std::complex<double>;

// How a gate is applied to the state.
enum Kind : int {
  kMat1,   // 2x2 on target `a`, optionally only where the control mask is set
  kDiag1,  // diagonal on `a`: entries d[bit a]
  kDiag2,  // diagonal on (a, b): entries d[2 * bit a + bit b]
  kMat2,   // general 4x4 on (a, b), local index 2 * bit a + bit b
  kPhase,  // fused run of weight/constant-only diagonal gates: one phase per basis state
  kPair,   // two adjacent uncontrolled real 2x2 gates on different qubits, one pass
};

// Generator of a parameterised 2x2 gate, used by the fused adjoint kernel.
enum Gen1 : int { kGenNone = 0, kGenX = 1, kGenY = 2 };

// The derivative of a parameterised gate: U(t) = exp(-i t/2 G) with G = coef * proj * Pauli,
// so dL/dt = coef * Im <lambda| proj Pauli |psi_after> (see backward()).
struct Generator {
  uint64_t flip = 0, yz = 0, proj = 0;
  int n_y = 0;
  double coef = 0.0;
};

struct Step {
  int gate;       // index into DecodedCircuit::gates
  Kind kind;
  int a, b;
  uint64_t cmask;  // control mask (kMat1)
  bool dynamic;    // matrix depends on an input (per-sample)
  size_t off;      // offset (in reals, before the W lanes) in the static or dynamic table
  int n_reals;     // 8 or 32
  bool has_grad;
  Generator gen;
  bool real = false;         // kMat1: real matrix for every angle (ry, cry, h, x, cx)
  int gen1 = kGenNone;       // kMat1 with a gradient: X (rx, crx) or Y (ry, cry)
  std::vector<Step> members;  // kPhase / kPair: the fused gates, in circuit order
};

int n_reals_of(Kind k) { return k == kMat2 ? 32 : 8; }

// The gate's matrix entries (complex, in double): 4 for kMat1 (row-major 2x2), 2 or 4 for the
// diagonal kinds, 16 for kMat2.
void gate_entries(int op, double t, cd* m) {
  const double c = std::cos(t / 2), s = std::sin(t / 2);
  const cd I(0, 1);
  const double r = 1 / std::sqrt(2.0);
  switch (op) {
    case kRX: case kCRX: m[0] = c; m[1] = -I * s; m[2] = -I * s; m[3] = c; break;
    case kRY: case kCRY: m[0] = c; m[1] = -s; m[2] = s; m[3] = c; break;
    case kH: m[0] = r; m[1] = r; m[2] = r; m[3] = -r; break;
    case kX: case kCX: m[0] = 0; m[1] = 1; m[2] = 1; m[3] = 0; break;
    case kY: case kCY: m[0] = 0; m[1] = -I; m[2] = I; m[3] = 0; break;
    case kRZ: m[0] = cd(c, -s); m[1] = cd(c, s); break;
    case kP: m[0] = 1; m[1] = std::polar(1.0, t); break;
    case kZ: m[0] = 1; m[1] = -1; break;
    case kS: m[0] = 1; m[1] = I; break;
    case kSdg: m[0] = 1; m[1] = -I; break;
    case kT: m[0] = 1; m[1] = cd(r, r); break;
    case kTdg: m[0] = 1; m[1] = cd(r, -r); break;
    case kCZ: m[0] = 1; m[1] = 1; m[2] = 1; m[3] = -1; break;
    case kCRZ: m[0] = 1; m[1] = 1; m[2] = cd(c, -s); m[3] = cd(c, s); break;
    case kCP: m[0] = 1; m[1] = 1; m[2] = 1; m[3] = std::polar(1.0, t); break;
    case kRZZ: m[0] = cd(c, -s); m[1] = cd(c, s); m[2] = cd(c, s); m[3] = cd(c, -s); break;
    case kSwap:
      for (int i = 0; i < 16; ++i) m[i] = 0;
      m[0] = m[6] = m[9] = m[15] = 1;
      break;
    case kRXX: case kRYY: {
      for (int i = 0; i < 16; ++i) m[i] = 0;
      m[0] = m[5] = m[10] = m[15] = c;
      const cd v = -I * s, w = op == kRXX ? v : -v;  // Y(x)Y anti-diagonal is (-1, 1, 1, -1)
      m[3] = w; m[12] = w; m[6] = v; m[9] = v;
      break;
    }
    default: throw CircuitError("internal error: no matrix for opcode " + std::to_string(op));
  }
}

Step make_step(const DecodedCircuit& c, int g) {
  const DecodedGate& d = c.gates[g];
  Step st{};
  st.gate = g;
  st.a = d.w0;
  st.b = d.w1;
  st.cmask = 0;
  st.dynamic = d.kind == kInput;
  const uint64_t A = uint64_t{1} << d.w0;
  const uint64_t B = d.w1 >= 0 ? uint64_t{1} << d.w1 : 0;
  switch (d.opcode) {
    case kRX: case kRY: case kH: case kX: case kY: st.kind = kMat1; break;
    case kCX: case kCY: case kCRX: case kCRY:
      st.kind = kMat1; st.a = d.w1; st.b = d.w0; st.cmask = A; break;
    case kRZ: case kP: case kZ: case kS: case kSdg: case kT: case kTdg: st.kind = kDiag1; break;
    case kCZ: case kCRZ: case kCP: case kRZZ: st.kind = kDiag2; break;
    default: st.kind = kMat2; break;
  }
  st.n_reals = n_reals_of(st.kind);
  st.has_grad = d.kind == kInput || d.kind == kWeight;
  Generator& G = st.gen;
  G.coef = 1.0;
  switch (d.opcode) {
    case kRX: G.flip = A; break;
    case kRY: G.flip = A; G.yz = A; G.n_y = 1; break;
    case kRZ: G.yz = A; break;
    case kP: G.proj = A; G.coef = -2.0; break;
    case kCRX: G.proj = A; G.flip = B; break;
    case kCRY: G.proj = A; G.flip = B; G.yz = B; G.n_y = 1; break;
    case kCRZ: G.proj = A; G.yz = B; break;
    case kCP: G.proj = A | B; G.coef = -2.0; break;
    case kRZZ: G.yz = A | B; break;
    case kRXX: G.flip = A | B; break;
    case kRYY: G.flip = A | B; G.yz = A | B; G.n_y = 2; break;
    default: st.has_grad = false; break;
  }
  st.real = d.opcode == kRY || d.opcode == kCRY || d.opcode == kH || d.opcode == kX ||
            d.opcode == kCX;
  if (st.has_grad && st.kind == kMat1) {
    st.gen1 = (d.opcode == kRX || d.opcode == kCRX) ? kGenX : kGenY;
  }
  return st;
}

// Write the gate's entries for lane s into table (layout [(entry * 2 + re/im) * W + s]).
template <typename T, int W>
void fill_lane(const Step& st, int op, double theta, T* table, int s) {
  cd m[16];
  gate_entries(op, theta, m);
  const int n = st.n_reals / 2;
  for (int e = 0; e < n; ++e) {
    table[(2 * e) * W + s] = static_cast<T>(m[e].real());
    table[(2 * e + 1) * W + s] = static_cast<T>(m[e].imag());
  }
}

inline int parity(uint64_t v) { return __builtin_parityll(v); }

// ---- gate kernels over one tile: re/im [N * W] --------------------------------------------
// Lanes are handled as GCC/Clang vector types (one V = the W lanes of one amplitude), so every
// kernel is explicitly vectorised whatever the target ISA (two SSE registers per V by default,
// one AVX register in the AVX2 build).

#include "simd.h"  // inside this build's namespace: Vec, ld, st, lanes

// 2x2 complex coefficients as lane vectors: m00 m01 m10 m11 as (re, im).
template <typename T, int W>
struct Coef2 {
  Vec<T, W> v[8];
  Coef2(const T* cf, bool adjoint) {
    static constexpr int order[4] = {0, 1, 2, 3}, transposed[4] = {0, 2, 1, 3};
    for (int e = 0; e < 4; ++e) {
      const int from = adjoint ? transposed[e] : order[e];
      v[2 * e] = ld<T, W>(cf + (2 * from) * W);
      const Vec<T, W> imag = ld<T, W>(cf + (2 * from + 1) * W);
      v[2 * e + 1] = adjoint ? -imag : imag;
    }
  }
};

template <typename T, int W, bool REAL>
inline void mul2(const Coef2<T, W>& c, Vec<T, W> ar, Vec<T, W> ai, Vec<T, W> br, Vec<T, W> bi,
                 Vec<T, W>& r0, Vec<T, W>& i0, Vec<T, W>& r1, Vec<T, W>& i1) {
  const Vec<T, W>* m = c.v;
  if (REAL) {
    r0 = m[0] * ar + m[2] * br;
    i0 = m[0] * ai + m[2] * bi;
    r1 = m[4] * ar + m[6] * br;
    i1 = m[4] * ai + m[6] * bi;
  } else {
    r0 = m[0] * ar - m[1] * ai + m[2] * br - m[3] * bi;
    i0 = m[0] * ai + m[1] * ar + m[2] * bi + m[3] * br;
    r1 = m[4] * ar - m[5] * ai + m[6] * br - m[7] * bi;
    i1 = m[4] * ai + m[5] * ar + m[6] * bi + m[7] * br;
  }
}

inline uint64_t insert_zero(uint64_t k, int bit) {
  return ((k >> bit) << (bit + 1)) | (k & ((uint64_t{1} << bit) - 1));
}

template <typename T, int W, bool REAL>
void mat1(T* __restrict re, T* __restrict im, int nq, int t, uint64_t cmask,
          const Coef2<T, W>& m) {
  using V = Vec<T, W>;
  const uint64_t half = (uint64_t{1} << nq) >> 1, tb = uint64_t{1} << t;
  for (uint64_t k = 0; k < half; ++k) {
    const uint64_t x0 = insert_zero(k, t);
    if ((x0 & cmask) != cmask) continue;
    const uint64_t o0 = x0 * W, o1 = (x0 | tb) * W;
    V r0, i0, r1, i1;
    mul2<T, W, REAL>(m, ld<T, W>(re + o0), ld<T, W>(im + o0), ld<T, W>(re + o1),
                     ld<T, W>(im + o1), r0, i0, r1, i1);
    st<T, W>(re + o0, r0);
    st<T, W>(im + o0, i0);
    st<T, W>(re + o1, r1);
    st<T, W>(im + o1, i1);
  }
}

// Adjoint step of a 2x2 gate with its gradient, in one pass: out = Im <lam|G|psi> (G = X or Y
// on the target, restricted to the control), then psi <- U^dag psi, lam <- U^dag lam
// (m holds U^dag).
template <typename T, int W, bool REAL, int GEN>
void mat1_back(T* __restrict re, T* __restrict im, T* __restrict lr, T* __restrict li, int nq,
               int t, uint64_t cmask, const Coef2<T, W>& m, T* out) {
  using V = Vec<T, W>;
  V acc = V{} ;
  const uint64_t half = (uint64_t{1} << nq) >> 1, tb = uint64_t{1} << t;
  for (uint64_t k = 0; k < half; ++k) {
    const uint64_t x0 = insert_zero(k, t);
    if ((x0 & cmask) != cmask) continue;
    const uint64_t o0 = x0 * W, o1 = (x0 | tb) * W;
    const V ar = ld<T, W>(re + o0), ai = ld<T, W>(im + o0);
    const V br = ld<T, W>(re + o1), bi = ld<T, W>(im + o1);
    const V cr = ld<T, W>(lr + o0), ci = ld<T, W>(li + o0);
    const V dr = ld<T, W>(lr + o1), di = ld<T, W>(li + o1);
    if (GEN == kGenX) acc += (cr * bi - ci * br) + (dr * ai - di * ar);
    if (GEN == kGenY) acc += (dr * ar + di * ai) - (cr * br + ci * bi);
    V r0, i0, r1, i1;
    mul2<T, W, REAL>(m, ar, ai, br, bi, r0, i0, r1, i1);
    st<T, W>(re + o0, r0);
    st<T, W>(im + o0, i0);
    st<T, W>(re + o1, r1);
    st<T, W>(im + o1, i1);
    mul2<T, W, REAL>(m, cr, ci, dr, di, r0, i0, r1, i1);
    st<T, W>(lr + o0, r0);
    st<T, W>(li + o0, i0);
    st<T, W>(lr + o1, r1);
    st<T, W>(li + o1, i1);
  }
  st<T, W>(out, acc);
}

template <typename T, int W, bool ADJ>
void apply_diag(T* __restrict re, T* __restrict im, int nq, int a, int b,
                const T* __restrict cf) {
  using V = Vec<T, W>;
  V dr[4], di[4];
  const int n = b < 0 ? 2 : 4;
  for (int j = 0; j < n; ++j) {
    dr[j] = ld<T, W>(cf + (2 * j) * W);
    di[j] = ld<T, W>(cf + (2 * j + 1) * W);
    if (ADJ) di[j] = -di[j];
  }
  const uint64_t N = uint64_t{1} << nq;
  for (uint64_t x = 0; x < N; ++x) {
    const int idx = b < 0 ? static_cast<int>((x >> a) & 1)
                          : static_cast<int>(((x >> a) & 1) * 2 + ((x >> b) & 1));
    const V vr = ld<T, W>(re + x * W), vi = ld<T, W>(im + x * W);
    st<T, W>(re + x * W, dr[idx] * vr - di[idx] * vi);
    st<T, W>(im + x * W, dr[idx] * vi + di[idx] * vr);
  }
}

// psi[x] *= phase[x] (same for all lanes), or by its conjugate.
template <typename T, int W, bool ADJ>
void apply_phase(T* __restrict re, T* __restrict im, int nq, const T* __restrict ph_re,
                 const T* __restrict ph_im) {
  using V = Vec<T, W>;
  const uint64_t N = uint64_t{1} << nq;
  for (uint64_t x = 0; x < N; ++x) {
    const T pr = ph_re[x], pi = ADJ ? -ph_im[x] : ph_im[x];
    const V vr = ld<T, W>(re + x * W), vi = ld<T, W>(im + x * W);
    st<T, W>(re + x * W, pr * vr - pi * vi);
    st<T, W>(im + x * W, pr * vi + pi * vr);
  }
}

// Un-apply a phase step from psi and lam, writing w[x] = Im(conj(lam[x]) psi[x]) (unchanged by
// a common phase, so before or after is the same).
template <typename T, int W>
void phase_back(T* __restrict re, T* __restrict im, T* __restrict lr, T* __restrict li,
                T* __restrict w, int nq, const T* __restrict ph_re, const T* __restrict ph_im) {
  using V = Vec<T, W>;
  const uint64_t N = uint64_t{1} << nq;
  for (uint64_t x = 0; x < N; ++x) {
    const T pr = ph_re[x], pi = -ph_im[x];
    const uint64_t o = x * W;
    const V ar = ld<T, W>(re + o), ai = ld<T, W>(im + o);
    const V cr = ld<T, W>(lr + o), ci = ld<T, W>(li + o);
    st<T, W>(w + o, cr * ai - ci * ar);
    st<T, W>(re + o, pr * ar - pi * ai);
    st<T, W>(im + o, pr * ai + pi * ar);
    st<T, W>(lr + o, pr * cr - pi * ci);
    st<T, W>(li + o, pr * ci + pi * cr);
  }
}

// For each of up to 8 diagonal gates j: out[j] = sum_{x: x & proj_j == proj_j}
// (-1)^{|x & yz_j|} w[x], all in one pass over w.
template <typename T, int W>
void signed_sums(const T* __restrict w, int nq, const Step* members, int count, T* out) {
  using V = Vec<T, W>;
  V acc[8];
  uint64_t yz[8], proj[8];
  for (int j = 0; j < count; ++j) {
    acc[j] = V{};
    yz[j] = members[j].gen.yz;
    proj[j] = members[j].gen.proj;
  }
  const uint64_t N = uint64_t{1} << nq;
  for (uint64_t x = 0; x < N; ++x) {
    const V wx = ld<T, W>(w + x * W);
    for (int j = 0; j < count; ++j) {
      const T sign = (x & proj[j]) != proj[j] ? T(0) : parity(x & yz[j]) ? T(-1) : T(1);
      acc[j] += sign * wx;
    }
  }
  for (int j = 0; j < count; ++j) st<T, W>(out + j * W, acc[j]);
}

// Runs body(r, i) on every quadruple of amplitudes {x, x|s, x|f, x|f|s} of the two-qubit
// subspace on bits f and s: their lane vectors are loaded into r[4], i[4] and stored back after.
template <typename T, int W, typename F>
inline void for_each_quad(T* __restrict re, T* __restrict im, int nq, int f, int s, F&& body) {
  using V = Vec<T, W>;
  const int lo = std::min(f, s), hi = std::max(f, s);
  const uint64_t bf = uint64_t{1} << f, bs = uint64_t{1} << s;
  const uint64_t quarter = (uint64_t{1} << nq) >> 2;
  for (uint64_t k = 0; k < quarter; ++k) {
    const uint64_t x = insert_zero(insert_zero(k, lo), hi);
    const uint64_t o[4] = {x * W, (x | bs) * W, (x | bf) * W, (x | bf | bs) * W};
    V r[4], i[4];
    for (int j = 0; j < 4; ++j) {
      r[j] = ld<T, W>(re + o[j]);
      i[j] = ld<T, W>(im + o[j]);
    }
    body(r, i);
    for (int j = 0; j < 4; ++j) {
      st<T, W>(re + o[j], r[j]);
      st<T, W>(im + o[j], i[j]);
    }
  }
}

// Two real 2x2 gates on different qubits (A on ta, B on tb) in one pass over the state; they
// commute, so the adjoint pair is the pair of adjoints.
template <typename T, int W>
void mat1_pair(T* __restrict re, T* __restrict im, int nq, int ta, int tb, const Coef2<T, W>& A,
               const Coef2<T, W>& B) {
  using V = Vec<T, W>;
  // Quad order {x, x|A, x|B, x|A|B}: A pairs (0,1), (2,3); B pairs (0,2), (1,3).
  for_each_quad<T, W>(re, im, nq, tb, ta, [&](V* r, V* i) {
    mul2<T, W, true>(A, r[0], i[0], r[1], i[1], r[0], i[0], r[1], i[1]);
    mul2<T, W, true>(A, r[2], i[2], r[3], i[3], r[2], i[2], r[3], i[3]);
    mul2<T, W, true>(B, r[0], i[0], r[2], i[2], r[0], i[0], r[2], i[2]);
    mul2<T, W, true>(B, r[1], i[1], r[3], i[3], r[1], i[1], r[3], i[3]);
  });
}

template <typename T, int W, bool ADJ>
void apply_mat2(T* __restrict re, T* __restrict im, int nq, int a, int b,
                const T* __restrict cf) {
  using V = Vec<T, W>;
  V mr[16], mi[16];
  for (int i = 0; i < 4; ++i) {
    for (int j = 0; j < 4; ++j) {
      const int from = ADJ ? j * 4 + i : i * 4 + j;
      mr[i * 4 + j] = ld<T, W>(cf + (2 * from) * W);
      const V imag = ld<T, W>(cf + (2 * from + 1) * W);
      mi[i * 4 + j] = ADJ ? -imag : imag;
    }
  }
  // Quad order {x, x|b, x|a, x|a|b}: local index 2 * bit a + bit b.
  for_each_quad<T, W>(re, im, nq, a, b, [&](V* vr, V* vi) {
    V sr[4], si[4];
    for (int i = 0; i < 4; ++i) {
      sr[i] = V{};
      si[i] = V{};
      for (int j = 0; j < 4; ++j) {
        sr[i] += mr[i * 4 + j] * vr[j] - mi[i * 4 + j] * vi[j];
        si[i] += mr[i * 4 + j] * vi[j] + mi[i * 4 + j] * vr[j];
      }
    }
    for (int i = 0; i < 4; ++i) {
      vr[i] = sr[i];
      vi[i] = si[i];
    }
  });
}

// Apply a gate (or its adjoint) to a tile. kPhase steps take the plan's phase table as cf;
// kPair steps take their members' coefficients as cf and cf2.
template <typename T, int W>
void apply_step(const Step& st, bool adjoint, T* re, T* im, int nq, const T* cf,
                const T* cf2 = nullptr) {
  switch (st.kind) {
    case kPair: {
      const Coef2<T, W> A(cf, adjoint), B(cf2, adjoint);
      mat1_pair<T, W>(re, im, nq, st.members[0].a, st.members[1].a, A, B);
      break;
    }
    case kMat1: {
      const Coef2<T, W> m(cf, adjoint);
      st.real ? mat1<T, W, true>(re, im, nq, st.a, st.cmask, m)
              : mat1<T, W, false>(re, im, nq, st.a, st.cmask, m);
      break;
    }
    case kDiag1:
      adjoint ? apply_diag<T, W, true>(re, im, nq, st.a, -1, cf)
              : apply_diag<T, W, false>(re, im, nq, st.a, -1, cf);
      break;
    case kDiag2:
      adjoint ? apply_diag<T, W, true>(re, im, nq, st.a, st.b, cf)
              : apply_diag<T, W, false>(re, im, nq, st.a, st.b, cf);
      break;
    case kMat2:
      adjoint ? apply_mat2<T, W, true>(re, im, nq, st.a, st.b, cf)
              : apply_mat2<T, W, false>(re, im, nq, st.a, st.b, cf);
      break;
    case kPhase: {
      const T* ph_im = cf + (size_t{1} << nq);
      adjoint ? apply_phase<T, W, true>(re, im, nq, cf, ph_im)
              : apply_phase<T, W, false>(re, im, nq, cf, ph_im);
      break;
    }
  }
}

template <typename T, int W>
void mat1_back_step(const Step& st, T* re, T* im, T* lr, T* li, int nq, const T* cf, T* out) {
  const Coef2<T, W> m(cf, true);
  if (st.real) {
    st.gen1 == kGenX ? mat1_back<T, W, true, kGenX>(re, im, lr, li, nq, st.a, st.cmask, m, out)
                     : mat1_back<T, W, true, kGenY>(re, im, lr, li, nq, st.a, st.cmask, m, out);
  } else {
    st.gen1 == kGenX ? mat1_back<T, W, false, kGenX>(re, im, lr, li, nq, st.a, st.cmask, m, out)
                     : mat1_back<T, W, false, kGenY>(re, im, lr, li, nq, st.a, st.cmask, m, out);
  }
}

// out = sum_{y: y & proj == proj} conj(lam[y]) * i^n_y * (-1)^{|(y^flip) & yz|} * psi[y ^ flip]
template <typename T, int W>
void pauli_inner(const T* __restrict lr, const T* __restrict li, const T* __restrict pr,
                 const T* __restrict pi, int nq, uint64_t flip, uint64_t yz, int n_y,
                 uint64_t proj, T* out_re, T* out_im) {
  using V = Vec<T, W>;
  V ar = V{}, ai = V{};
  const uint64_t N = uint64_t{1} << nq;
  for (uint64_t y = 0; y < N; ++y) {
    if ((y & proj) != proj) continue;
    const uint64_t x = y ^ flip;
    const V a = ld<T, W>(lr + y * W), b = ld<T, W>(li + y * W);
    const V c = ld<T, W>(pr + x * W), d = ld<T, W>(pi + x * W);
    const V zr = a * c + b * d, zi = a * d - b * c;
    if (parity(x & yz)) {
      ar -= zr;
      ai -= zi;
    } else {
      ar += zr;
      ai += zi;
    }
  }
  switch (n_y & 3) {
    case 0: st<T, W>(out_re, ar); st<T, W>(out_im, ai); break;
    case 1: st<T, W>(out_re, -ai); st<T, W>(out_im, ar); break;
    case 2: st<T, W>(out_re, -ar); st<T, W>(out_im, -ai); break;
    default: st<T, W>(out_re, ai); st<T, W>(out_im, -ar); break;
  }
}

// lam += g * O psi for one Pauli string O (g per lane)
template <typename T, int W>
void add_observable(T* __restrict lr, T* __restrict li, const T* __restrict pr,
                    const T* __restrict pi, int nq, const Observable& o, const T* g) {
  using V = Vec<T, W>;
  const uint64_t N = uint64_t{1} << nq;
  const V gv = ld<T, W>(g), zero = V{};
  V cr, ci;  // g * i^n_y
  switch (o.n_y & 3) {
    case 0: cr = gv; ci = zero; break;
    case 1: cr = zero; ci = gv; break;
    case 2: cr = -gv; ci = zero; break;
    default: cr = zero; ci = -gv; break;
  }
  for (uint64_t y = 0; y < N; ++y) {
    const uint64_t x = y ^ o.flip;
    const T sign = parity(x & o.yz) ? T(-1) : T(1);
    const V vr = sign * ld<T, W>(pr + x * W), vi = sign * ld<T, W>(pi + x * W);
    st<T, W>(lr + y * W, ld<T, W>(lr + y * W) + (cr * vr - ci * vi));
    st<T, W>(li + y * W, ld<T, W>(li + y * W) + (cr * vi + ci * vr));
  }
}

// ---- per-call plan ------------------------------------------------------------------------

template <typename T, int W>
struct Plan {
  const DecodedCircuit* c = nullptr;
  int nq = 0;
  std::vector<Step> steps;  // prefix steps first, then the rest, in circuit order
  size_t n_prefix = 0;
  std::vector<T> static_table;  // [(entry * 2 + re/im) * W + lane] per static gate
  std::vector<T> phase_table;   // per kPhase step: re [N] then im [N]
  size_t dynamic_reals = 0;

  double theta(const DecodedGate& d, const T* weights) const {
    return d.kind == kWeight ? static_cast<double>(weights[d.index])
                             : d.kind == kConst ? d.value : 0.0;
  }

  Plan(const DecodedCircuit& circ, const T* weights) : c(&circ), nq(circ.n_qubits) {
    std::vector<char> touched(nq, 0);
    std::vector<Step> prefix, rest;
    for (int g = 0; g < static_cast<int>(circ.gates.size()); ++g) {
      Step st = make_step(circ, g);
      const DecodedGate& d = circ.gates[g];
      if (d.w1 < 0 && !touched[d.w0]) {
        prefix.push_back(st);
      } else {
        rest.push_back(st);
        if (d.w1 >= 0) touched[d.w0] = touched[d.w1] = 1;
      }
    }
    n_prefix = prefix.size();
    steps = prefix;
    // Fuse runs of consecutive weight/constant-only diagonal gates into one phase step.
    const auto fusable = [](const Step& st) {
      return (st.kind == kDiag1 || st.kind == kDiag2) && !st.dynamic;
    };
    for (size_t i = 0; i < rest.size();) {
      size_t j = i;
      while (j < rest.size() && fusable(rest[j])) ++j;
      if (j - i >= 2) {
        Step ph{};
        ph.gate = rest[i].gate;
        ph.kind = kPhase;
        ph.members.assign(rest.begin() + i, rest.begin() + j);
        for (const Step& m : ph.members) ph.has_grad = ph.has_grad || m.has_grad;
        steps.push_back(ph);
        i = j;
      } else {
        steps.push_back(rest[i]);
        i += 1;
      }
    }
    // Pair adjacent uncontrolled real 2x2 gates on different qubits (e.g. RY layers).
    const auto pairable = [](const Step& st) {
      return st.kind == kMat1 && st.cmask == 0 && st.real;
    };
    std::vector<Step> paired(steps.begin(), steps.begin() + n_prefix);
    for (size_t i = n_prefix; i < steps.size();) {
      if (i + 1 < steps.size() && pairable(steps[i]) && pairable(steps[i + 1]) &&
          steps[i].a != steps[i + 1].a) {
        Step pr{};
        pr.gate = steps[i].gate;
        pr.kind = kPair;
        pr.members = {steps[i], steps[i + 1]};
        paired.push_back(pr);
        i += 2;
      } else {
        paired.push_back(steps[i]);
        i += 1;
      }
    }
    steps = std::move(paired);
    size_t static_reals = 0;
    const uint64_t N = uint64_t{1} << nq;
    const auto place = [&](Step& st) {
      if (st.dynamic) {
        st.off = dynamic_reals;
        dynamic_reals += st.n_reals;
      } else {
        st.off = static_reals;
        static_reals += st.n_reals;
      }
    };
    for (Step& st : steps) {
      if (st.kind == kPhase) {
        st.off = phase_table.size();
        phase_table.resize(phase_table.size() + 2 * N);
      } else if (st.kind == kPair) {
        for (Step& m : st.members) place(m);
      } else {
        place(st);
      }
    }
    static_table.assign(static_reals * W, T(0));
    std::vector<cd> phase(N);
    for (const Step& st : steps) {
      if (st.kind == kPhase) {
        std::fill(phase.begin(), phase.end(), cd(1.0));
        for (const Step& m : st.members) {
          const DecodedGate& d = circ.gates[m.gate];
          cd e[16];
          gate_entries(d.opcode, theta(d, weights), e);
          for (uint64_t x = 0; x < N; ++x) {
            const int idx = m.kind == kDiag1
                                ? static_cast<int>((x >> m.a) & 1)
                                : static_cast<int>(((x >> m.a) & 1) * 2 + ((x >> m.b) & 1));
            phase[x] *= e[idx];
          }
        }
        T* out = phase_table.data() + st.off;
        for (uint64_t x = 0; x < N; ++x) {
          out[x] = static_cast<T>(phase[x].real());
          out[N + x] = static_cast<T>(phase[x].imag());
        }
      } else {
        for_each_gate(st, [&](const Step& g) {
          if (g.dynamic) return;
          const DecodedGate& d = circ.gates[g.gate];
          T* table = static_table.data() + g.off * W;
          for (int s = 0; s < W; ++s) fill_lane<T, W>(g, d.opcode, theta(d, weights), table, s);
        });
      }
    }
  }

  // Visit a step's gate-matrix steps (the step itself, or a pair's members).
  template <typename F>
  static void for_each_gate(const Step& st, F&& fn) {
    if (st.kind == kPair) {
      for (const Step& m : st.members) fn(m);
    } else if (st.kind != kPhase) {
      fn(st);
    }
  }

  const T* coef(const Step& st, const T* dyn) const {
    if (st.kind == kPhase) return phase_table.data() + st.off;
    if (st.kind == kPair) return coef(st.members[0], dyn);
    return (st.dynamic ? dyn : static_table.data()) + st.off * W;
  }
  const T* coef2(const Step& st, const T* dyn) const {
    return st.kind == kPair ? coef(st.members[1], dyn) : nullptr;
  }
};

// Per-worker scratch buffers for one tile.
template <typename T, int W>
struct Tile {
  std::vector<T> re, im, lre, lim, w, dyn, v;
  Tile(int nq, size_t dynamic_reals, bool adjoint)
      : re(size_t{W} << nq), im(size_t{W} << nq), dyn(dynamic_reals * W),
        v(static_cast<size_t>(nq) * 4 * W) {
    if (adjoint) {
      lre.resize(size_t{W} << nq);
      lim.resize(size_t{W} << nq);
      w.resize(size_t{W} << nq);
    }
  }
};

// Simulate samples [b0, b0 + W) (lanes past the batch repeat the last sample) into tile.re/im.
template <typename T, int W>
void run_tile(const Plan<T, W>& plan, const T* inputs, int64_t batch, int64_t b0,
              Tile<T, W>& tile) {
  const DecodedCircuit& c = *plan.c;
  const int nq = plan.nq;
  for (const Step& step : plan.steps) {
    Plan<T, W>::for_each_gate(step, [&](const Step& st) {
      if (!st.dynamic) return;
      const DecodedGate& d = c.gates[st.gate];
      T* table = tile.dyn.data() + st.off * W;
      for (int s = 0; s < W; ++s) {
        const int64_t b = std::min<int64_t>(b0 + s, batch - 1);
        fill_lane<T, W>(st, d.opcode, static_cast<double>(inputs[b * c.n_inputs + d.index]),
                        table, s);
      }
    });
  }
  // Product state of the prefix: per qubit a 2-vector, then outer products.
  T* v = tile.v.data();  // [q][re0, im0, re1, im1][W]
  for (int q = 0; q < nq; ++q) {
    for (int s = 0; s < W; ++s) {
      v[(q * 4 + 0) * W + s] = 1;
      v[(q * 4 + 1) * W + s] = 0;
      v[(q * 4 + 2) * W + s] = 0;
      v[(q * 4 + 3) * W + s] = 0;
    }
  }
  for (size_t i = 0; i < plan.n_prefix; ++i) {
    const Step& st = plan.steps[i];
    const T* cf = plan.coef(st, tile.dyn.data());
    T* vq = v + static_cast<size_t>(st.a) * 4 * W;
    for (int s = 0; s < W; ++s) {
      const T ar = vq[s], ai = vq[W + s], br = vq[2 * W + s], bi = vq[3 * W + s];
      T m[8];
      if (st.kind == kMat1) {
        for (int e = 0; e < 8; ++e) m[e] = cf[e * W + s];
      } else {  // diagonal: d0 0 0 d1
        m[0] = cf[s]; m[1] = cf[W + s]; m[2] = m[3] = m[4] = m[5] = 0;
        m[6] = cf[2 * W + s]; m[7] = cf[3 * W + s];
      }
      vq[s] = m[0] * ar - m[1] * ai + m[2] * br - m[3] * bi;
      vq[W + s] = m[0] * ai + m[1] * ar + m[2] * bi + m[3] * br;
      vq[2 * W + s] = m[4] * ar - m[5] * ai + m[6] * br - m[7] * bi;
      vq[3 * W + s] = m[4] * ai + m[5] * ar + m[6] * bi + m[7] * br;
    }
  }
  T* re = tile.re.data();
  T* im = tile.im.data();
  for (int s = 0; s < W; ++s) {
    re[s] = v[s]; im[s] = v[W + s];
    re[W + s] = v[2 * W + s]; im[W + s] = v[3 * W + s];
  }
  for (int q = 1; q < nq; ++q) {
    const T* vq = v + static_cast<size_t>(q) * 4 * W;
    const uint64_t size = uint64_t{1} << q;
    for (uint64_t x = 0; x < size; ++x) {
      T* __restrict r0 = re + x * W;
      T* __restrict i0 = im + x * W;
      T* __restrict r1 = re + (x + size) * W;
      T* __restrict i1 = im + (x + size) * W;
#if defined(__GNUC__) && !defined(__clang__)
      #pragma GCC ivdep
#endif
      for (int s = 0; s < W; ++s) {
        const T ar = r0[s], ai = i0[s];
        r1[s] = ar * vq[2 * W + s] - ai * vq[3 * W + s];
        i1[s] = ar * vq[3 * W + s] + ai * vq[2 * W + s];
        r0[s] = ar * vq[s] - ai * vq[W + s];
        i0[s] = ar * vq[W + s] + ai * vq[s];
      }
    }
  }
  for (size_t i = plan.n_prefix; i < plan.steps.size(); ++i) {
    const Step& st = plan.steps[i];
    apply_step<T, W>(st, false, re, im, nq, plan.coef(st, tile.dyn.data()),
                     plan.coef2(st, tile.dyn.data()));
  }
}

template <typename T>
void check_inputs(const DecodedCircuit& c, const T* inputs, int64_t batch, int64_t n_in_cols) {
  if (batch < 1) throw CircuitError("inputs: the batch is empty (batch size " +
                                    std::to_string(batch) + "); pass at least one sample");
  if (n_in_cols != c.n_inputs) {
    throw CircuitError("inputs must have shape [batch, n_inputs=" + std::to_string(c.n_inputs) +
                       "], got " + std::to_string(n_in_cols) + " columns");
  }
  for (int64_t i = 0; i < batch * n_in_cols; ++i) {
    if (!std::isfinite(inputs[i])) {
      std::ostringstream os;
      os << "inputs contain a non-finite value (" << inputs[i] << " at sample " << i / n_in_cols
         << ", column " << i % n_in_cols << ")";
      throw CircuitError(os.str());
    }
  }
}

template <typename T>
void check_weights(const DecodedCircuit& c, const T* weights, int64_t n_weights_given) {
  if (n_weights_given != c.n_weights) {
    throw CircuitError("weights must have shape [n_weights=" + std::to_string(c.n_weights) +
                       "], got " + std::to_string(n_weights_given) + " values");
  }
  for (int64_t i = 0; i < n_weights_given; ++i) {
    if (!std::isfinite(weights[i])) {
      std::ostringstream os;
      os << "weights contain a non-finite value (" << weights[i] << " at index " << i << ")";
      throw CircuitError(os.str());
    }
  }
}

template <typename T>
void check_args(const DecodedCircuit& c, const T* inputs, int64_t batch, int64_t n_in_cols,
                const T* weights, int64_t n_weights_given) {
  check_inputs(c, inputs, batch, n_in_cols);
  check_weights(c, weights, n_weights_given);
}

constexpr int64_t kTilesPerChunk = 4;  // unit of work per thread; fixed so results do not
                                       // depend on the thread count

template <typename T>
void run_forward(const Plan<T, lanes<T>()>& plan, const T* inputs, int64_t batch, T* out,
                 const Parallel& par) {
  constexpr int W = lanes<T>();
  const DecodedCircuit& c = *plan.c;
  const int64_t tiles = (batch + W - 1) / W;
  const int64_t chunks = (tiles + kTilesPerChunk - 1) / kTilesPerChunk;
  const size_t n_obs = c.observables.size();
  PerWorker<Tile<T, W>> tiles_of(par, chunks);
  parallel_chunks(par, chunks, [&](int worker, int64_t chunk) {
    Tile<T, W>& tile = tiles_of.get(worker, c.n_qubits, plan.dynamic_reals, false);
    T vr[W], vi[W];
    const int64_t end = std::min(tiles, (chunk + 1) * kTilesPerChunk);
    for (int64_t t = chunk * kTilesPerChunk; t < end; ++t) {
      const int64_t b0 = t * W;
      run_tile(plan, inputs, batch, b0, tile);
      for (size_t k = 0; k < n_obs; ++k) {
        const Observable& o = c.observables[k];
        pauli_inner<T, W>(tile.re.data(), tile.im.data(), tile.re.data(), tile.im.data(),
                          c.n_qubits, o.flip, o.yz, o.n_y, 0, vr, vi);
        for (int s = 0; s < W && b0 + s < batch; ++s) out[(b0 + s) * n_obs + k] = vr[s];
      }
    }
  });
}

// This build's PreparedCircuit: a copy of the circuit and its plan for one set of weights.
template <typename P>
class Prepared final : public PreparedCircuit {
 public:
  template <typename T>
  Prepared(const DecodedCircuit& c, const T* weights) : circuit_(c), plan_(circuit_, weights) {}

  void forward(const float* inputs, int64_t batch, int64_t n_in_cols, float* out,
               const Parallel& par) const override {
    run<float>(inputs, batch, n_in_cols, out, par);
  }
  void forward(const double* inputs, int64_t batch, int64_t n_in_cols, double* out,
               const Parallel& par) const override {
    run<double>(inputs, batch, n_in_cols, out, par);
  }

 private:
  template <typename T>
  void run(const T* inputs, int64_t batch, int64_t n_in_cols, T* out, const Parallel& par) const {
    if constexpr (std::is_same_v<P, Plan<T, lanes<T>()>>) {
      check_inputs(circuit_, inputs, batch, n_in_cols);
      run_forward(plan_, inputs, batch, out, par);
    } else {
      throw CircuitError("prepared circuit used with another dtype than it was prepared for");
    }
  }

  DecodedCircuit circuit_;  // before plan_, which points into it
  P plan_;
};

}  // namespace

template <typename T>
void forward(const DecodedCircuit& c, const T* inputs, int64_t batch, int64_t n_in_cols,
             const T* weights, int64_t n_weights_given, T* out, const Parallel& par) {
  check_args(c, inputs, batch, n_in_cols, weights, n_weights_given);
  run_forward(Plan<T, lanes<T>()>(c, weights), inputs, batch, out, par);
}

template <typename T>
std::shared_ptr<const PreparedCircuit> prepare(const DecodedCircuit& c, const T* weights,
                                               int64_t n_weights_given) {
  check_weights(c, weights, n_weights_given);
  return std::make_shared<const Prepared<Plan<T, lanes<T>()>>>(c, weights);
}

template <typename T>
void backward(const DecodedCircuit& c, const T* inputs, int64_t batch, int64_t n_in_cols,
              const T* weights, int64_t n_weights_given, const T* grad_out, T* grad_inputs,
              T* grad_weights, const Parallel& par) {
  constexpr int W = lanes<T>();
  check_args(c, inputs, batch, n_in_cols, weights, n_weights_given);
  const Plan<T, W> plan(c, weights);
  const int64_t tiles = (batch + W - 1) / W;
  const int64_t chunks = (tiles + kTilesPerChunk - 1) / kTilesPerChunk;
  const size_t n_obs = c.observables.size();
  const int nq = c.n_qubits;
  const int64_t P = c.n_weights;
  std::fill(grad_inputs, grad_inputs + batch * c.n_inputs, T(0));
  // One weight-gradient accumulator per chunk, summed in chunk order at the end: the result
  // does not depend on the number of threads or on scheduling.
  std::vector<double> chunk_acc(static_cast<size_t>(chunks * P), 0.0);
  PerWorker<Tile<T, W>> tiles_of(par, chunks);
  parallel_chunks(par, chunks, [&](int worker, int64_t chunk) {
    Tile<T, W>& tile = tiles_of.get(worker, nq, plan.dynamic_reals, true);
    double* gw = chunk_acc.data() + chunk * P;
    T g[W], gr[W], gi[W];
    std::vector<T> sums(8 * W);
    const auto record = [&](const DecodedGate& d, double coef, const T* value, int64_t b0,
                            int valid) {
      if (d.kind == kInput) {
        for (int s = 0; s < valid; ++s) {
          grad_inputs[(b0 + s) * c.n_inputs + d.index] += static_cast<T>(coef * value[s]);
        }
      } else if (d.kind == kWeight) {
        double sum = 0;
        for (int s = 0; s < valid; ++s) sum += value[s];
        gw[d.index] += coef * sum;
      }
    };
    const int64_t end = std::min(tiles, (chunk + 1) * kTilesPerChunk);
    for (int64_t t = chunk * kTilesPerChunk; t < end; ++t) {
      const int64_t b0 = t * W;
      const int valid = static_cast<int>(std::min<int64_t>(W, batch - b0));
      run_tile(plan, inputs, batch, b0, tile);
      T* re = tile.re.data();
      T* im = tile.im.data();
      T* lr = tile.lre.data();
      T* li = tile.lim.data();
      std::fill(tile.lre.begin(), tile.lre.end(), T(0));
      std::fill(tile.lim.begin(), tile.lim.end(), T(0));
      for (size_t k = 0; k < n_obs; ++k) {
        for (int s = 0; s < W; ++s) g[s] = s < valid ? grad_out[(b0 + s) * n_obs + k] : T(0);
        add_observable<T, W>(lr, li, re, im, nq, c.observables[k], g);
      }
      // Adjoint sweep: at step i, psi is the state after it and lam the adjoint state there;
      // dL/dtheta = coef * Im <lam| G |psi> for U = exp(-i theta/2 G).
      const T* dyn = tile.dyn.data();
      // One adjoint step: gradient of the gate, then un-apply it from psi and lam.
      const auto sweep = [&](const Step& st, const T* cf, bool last) {
        if (st.kind == kPhase) {
          phase_back<T, W>(re, im, lr, li, tile.w.data(), nq, cf, cf + (size_t{1} << nq));
          for (size_t j = 0; j < st.members.size(); j += 8) {
            const int count = static_cast<int>(std::min<size_t>(8, st.members.size() - j));
            signed_sums<T, W>(tile.w.data(), nq, st.members.data() + j, count, sums.data());
            for (int q = 0; q < count; ++q) {
              const Step& m = st.members[j + q];
              if (m.has_grad) record(c.gates[m.gate], m.gen.coef, sums.data() + q * W, b0, valid);
            }
          }
          return;
        }
        if (st.kind == kMat1 && st.has_grad) {
          mat1_back_step<T, W>(st, re, im, lr, li, nq, cf, gi);
          record(c.gates[st.gate], st.gen.coef, gi, b0, valid);
          return;
        }
        if (st.has_grad) {
          const Generator& G = st.gen;
          pauli_inner<T, W>(lr, li, re, im, nq, G.flip, G.yz, G.n_y, G.proj, gr, gi);
          record(c.gates[st.gate], G.coef, gi, b0, valid);
        }
        if (last) return;  // the state before the first gate is not needed
        apply_step<T, W>(st, true, re, im, nq, cf);
        apply_step<T, W>(st, true, lr, li, nq, cf);
      };
      // Adjoint sweep: at each gate, psi is the state after it and lam the adjoint state there;
      // dL/dtheta = coef * Im <lam| G |psi> for U = exp(-i theta/2 G).
      for (size_t i = plan.steps.size(); i-- > 0;) {
        const Step& st = plan.steps[i];
        if (st.kind == kPair) {
          sweep(st.members[1], plan.coef(st.members[1], dyn), false);
          sweep(st.members[0], plan.coef(st.members[0], dyn), i == 0);
        } else {
          sweep(st, plan.coef(st, dyn), i == 0);
        }
      }
    }
  });
  for (int64_t w = 0; w < P; ++w) {
    double sum = 0;
    for (int64_t k = 0; k < chunks; ++k) sum += chunk_acc[k * P + w];
    grad_weights[w] = static_cast<T>(sum);
  }
}

QWTHN_KERNEL_INSTANTIATIONS(float)
QWTHN_KERNEL_INSTANTIATIONS(double)

}  // namespace QWTHN_KERNEL_NS
}  // namespace qwthn

#include "isa_end.h"
