// Everything the level sources (csrc/cpu/level_<name>.cpp) use from headers,
// included before a level switches on its instruction set, so that no inline
// function or template of a header is compiled with it (the linker keeps one
// copy of each, and the AVX-512 one would then run on every CPU).
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <stdint.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "common/macros.h"
#include "common/online_softmax.h"
#include "common/philox.h"
#include "common/rope.h"
#include "cpu/dispatch.h"
