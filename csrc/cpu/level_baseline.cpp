// The CPU kernels at the baseline level: the compiler's flags only (x86-64:
// SSE2; the only level on other architectures). Correct everywhere, not fast.
#include "cpu/level_includes.h"

#define LS_LEVEL baseline
#define LS_LEVEL_ID CpuLevel::kBaseline
#define LS_LEVEL_TABLE kBaselineKernels
#include "cpu/level_kernels.h"
