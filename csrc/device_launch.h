// One dispatch from an op body to its per-device launcher: ns::name_cuda(...) for a
// CUDA tensor (when the CUDA kernels are built), ns::name_cpu(...) otherwise. Every op
// family declares both launchers with the same parameters (see *_launch.h).
#pragma once

#ifdef DREAMER_FAST_WITH_CUDA
#define DF_DEVICE_LAUNCH(ns, name, like, ...) \
  ((like).is_cuda() ? ns::name##_cuda(__VA_ARGS__) : ns::name##_cpu(__VA_ARGS__))
#else
#define DF_DEVICE_LAUNCH(ns, name, like, ...) ns::name##_cpu(__VA_ARGS__)
#endif
