// One dispatch from an op body to its per-device launcher: ns::name_cuda(...) for a
// CUDA tensor (when the CUDA kernels are built), ns::name_cpu(...) otherwise. Every op
// family declares both launchers with the same parameters (see *_launch.h).
#pragma once

//
// On the meta device (shape propagation: the whole-sequence ops register their op
// bodies as Meta kernels, which is what FakeTensor / torch.compile trace) nothing is
// launched: the op body still allocates every output with its real shape.
#ifdef DREAMER_FAST_WITH_CUDA
#define DF_DEVICE_LAUNCH(ns, name, like, ...)                \
  ((like).is_meta() ? void()                                 \
   : (like).is_cuda() ? ns::name##_cuda(__VA_ARGS__)          \
                      : ns::name##_cpu(__VA_ARGS__))
#else
#define DF_DEVICE_LAUNCH(ns, name, like, ...) \
  ((like).is_meta() ? void() : ns::name##_cpu(__VA_ARGS__))
#endif
