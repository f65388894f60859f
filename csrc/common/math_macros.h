// Qualifiers shared by the math headers that both the CPU launchers and the CUDA
// kernels include (scan_math.h, cells_math.h, dense_math.h, heads_math.h).
#pragma once

#if defined(__CUDACC__)
#define DF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DF_HOST_DEVICE inline
#endif

// Outputs never alias inputs; telling the compiler lets it vectorise the column
// loops without runtime overlap checks.
#define DF_RESTRICT __restrict__

// Marks a CPU column loop without cross-iteration dependences as SIMD: with
// -fopenmp-simd GCC then vectorises it even where its cost model gives up (several
// output streams, libmvec calls). Expands to nothing in CUDA code.
// DF_SIMD_SUM(a, b) does the same for a loop that also sums into a and b (the lanes
// keep partial sums, so the order of the additions changes: the results may differ
// from a sequential sum in the last bits).
#define DF_PRAGMA(x) _Pragma(#x)
#if defined(__CUDACC__)
#define DF_SIMD
#define DF_SIMD_SUM(...)
#else
#define DF_SIMD _Pragma("omp simd")
#define DF_SIMD_SUM(...) DF_PRAGMA(omp simd reduction(+ : __VA_ARGS__))
#endif
