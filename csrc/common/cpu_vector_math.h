// Lets the compiler vectorise the exp / tanh / erf / log1p calls of the shared math
// headers in the CPU launchers' loops, through glibc's vector math library (libmvec).
//
// The declarations below add `omp declare simd` variants to the libm functions (glibc
// only declares them itself under -ffast-math, which we avoid: it would change NaN and
// infinity semantics). Together with -fno-math-errno and -fopenmp-simd, GCC then calls
// e.g. _ZGVbN4v_expf on four lanes at once. CMake enables this (DREAMER_FAST_LIBMVEC)
// only after checking that the toolchain links such a loop against libmvec; otherwise
// the same code compiles to scalar calls. CUDA code never sees this header.
#pragma once

#include <cmath>

#if defined(DREAMER_FAST_LIBMVEC) && !defined(__CUDACC__)
extern "C" {
#pragma omp declare simd notinbranch
float expf(float) noexcept;
#pragma omp declare simd notinbranch
double exp(double) noexcept;
#pragma omp declare simd notinbranch
float tanhf(float) noexcept;
#pragma omp declare simd notinbranch
double tanh(double) noexcept;
#pragma omp declare simd notinbranch
float erff(float) noexcept;
#pragma omp declare simd notinbranch
double erf(double) noexcept;
#pragma omp declare simd notinbranch
float log1pf(float) noexcept;
#pragma omp declare simd notinbranch
double log1p(double) noexcept;
}
#endif
