// The cells kernel file itself (not a copy), compiled as C++ against the host emulation
// of CUDA (cuda_emu.h, through common/cuda_common.cuh) for dreamer_fast._cuda_emu.
#include "cells/cells_cuda_kernels.cu"
