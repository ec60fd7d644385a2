// Compile-time switches of the .cu launchers (torch types). The device
// helpers of the kernels are in device.cuh, which stays torch-free.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "device.cuh"

// The three activation dtypes of the ops as a compile-time type, so one
// templated kernel serves all of them (AT_DISPATCH_FLOATING_TYPES would also
// instantiate double, which no op accepts):
//   LS_FLOAT_TYPE_SWITCH(q.scalar_type(), "op", T, [&] { launch<T>(...); });
#define LS_FLOAT_TYPE_SWITCH(dtype, op_name, NAME, ...)                                  \
  [&] {                                                                                  \
    switch (dtype) {                                                                     \
      case at::kFloat: {                                                                 \
        using NAME = float;                                                              \
        return __VA_ARGS__();                                                            \
      }                                                                                  \
      case at::kHalf: {                                                                  \
        using NAME = at::Half;                                                           \
        return __VA_ARGS__();                                                            \
      }                                                                                  \
      case at::kBFloat16: {                                                              \
        using NAME = at::BFloat16;                                                       \
        return __VA_ARGS__();                                                            \
      }                                                                                  \
      default:                                                                           \
        TORCH_CHECK(false, op_name, " (cuda): dtype must be float32, float16 or bfloat16, " \
                    "got ", dtype);                                                      \
    }                                                                                    \
  }()
