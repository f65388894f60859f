// One dispatch from an op body to its per-device launcher: ns::name_cuda(...) for a
// CUDA tensor (when the CUDA kernels are built), ns::name_cpu(...) otherwise. Every op
// family declares both launchers with the same parameters (see *_launch.h).
//
// On the meta device (shape propagation: the whole-sequence ops register their op
// bodies as Meta kernels, which is what FakeTensor / torch.compile trace) nothing is
// launched: the op body still allocates every output with its real shape.
//
// Every launch is a named range in torch.profiler ("dreamer_fast::launch::<name>"), so
// a profile of a fused op shows its own kernels beside the GEMMs it calls.
#pragma once

#include <ATen/record_function.h>

#include <vector>

#ifdef DREAMER_FAST_WITH_CUDA
#define DF_LAUNCH_FOR_DEVICE(ns, name, like, ...) \
  ((like).is_cuda() ? ns::name##_cuda(__VA_ARGS__) : ns::name##_cpu(__VA_ARGS__))
#else
#define DF_LAUNCH_FOR_DEVICE(ns, name, like, ...) ns::name##_cpu(__VA_ARGS__)
#endif

#define DF_DEVICE_LAUNCH(ns, name, like, ...)                                           \
  do {                                                                                  \
    if (!(like).is_meta()) {                                                            \
      RECORD_FUNCTION("dreamer_fast::launch::" #name, std::vector<c10::IValue>());      \
      DF_LAUNCH_FOR_DEVICE(ns, name, like, __VA_ARGS__);                                \
    }                                                                                   \
  } while (0)
